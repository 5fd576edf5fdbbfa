"""What a layer rule is, and the records it produces.

A rule (one module per layer kind: linear.py, conv.py, flatten.py, pool.py) owns, in one place:
its spec keys and parsing (``parse``), its validated ``Layer`` record (``resolve``), its
forward definitions (``forward``, returning ``Node``s whose ``Input``s carry the local
partials), its lowering to the kernel IR (``lower_forward``, ``lower_step``) and the NumPy/torch code of its
IR nodes with the helpers it calls (``array_code``, ``helpers``), how explain
describes it (``describe``), its torch.nn equivalent (``torch_module``, ``torch_params``,
``torch_merge``), its cost in derive inspect's eager model (``dense_cost``, ``view``) and how
float32 rounds it (``rounding``, for verify's kink margin).  The engine (derive/derivation/engine.py)
walks the layers and never asks which kind a layer is; no module outside derive/layers does either
(the independent reference, derive/verify/reference.py, and the Triton emitters aside).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from derive.tables.arrays import Helper

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Param:
    """A learnable tensor as the generated code sees it."""

    name: str
    shape: Shape
    layer: int
    role: str  # "weight", "bias" or "slope"
    fan_in: int = 1


@dataclass(frozen=True)
class Layer:
    """A validated layer of any kind, with its resolved names and shapes (1-based ``index``).

    ``source`` is the quantity it reads (the network input, f_{l-1} by default, or the spec's
    ``input``; the first of ``inputs`` for add and concat); ``activation`` is None
    for layers that have none (flatten, pooling): their output f_l is the layer's only quantity.
    ``padded`` names the zero-padded source (x_pad, f1_pad) of a windowed layer with padding.
    """

    index: int
    kind: str
    spec: object
    in_shape: Shape
    out_shape: Shape
    source: str
    params: tuple[Param, ...] = ()
    weight: str | None = None
    bias: str | None = None
    activation: str | None = None
    slope_value: float | None = None  # leaky_relu's constant slope
    slope_param: str | None = None  # prelu's learnable slope
    slope_init: float | None = None
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: int = 0
    padded: str | None = None
    inputs: tuple[str, ...] = ()  # every quantity read, for a kind with several (add, concat)
    in_shapes: tuple[Shape, ...] = ()  # and their shapes, in the same order

    @property
    def sources(self) -> tuple[str, ...]:
        """The quantities this layer reads: its ``inputs``, or its one ``source``."""
        return self.inputs or (self.source,)

    @property
    def vector(self) -> bool:
        """The layer works on vectors or volumes (index notation), not on one scalar per sample."""
        return self.out_shape != ()

    @property
    def padded_shape(self) -> Shape:
        """The source's shape with ``padding`` added to both spatial sides."""
        c, h, w = self.in_shape
        return (c, h + 2 * self.padding, w + 2 * self.padding)

    @property
    def fan_in(self) -> int:
        return self.params[0].fan_in if self.params else 1


@dataclass(frozen=True)
class Input:
    """Something a forward definition depends on, with the local partial the backward pass contracts.

    ``local`` is ∂(the definition's element)/∂``target``, ``target`` an element of ``name`` at fresh
    indices; ``rename`` maps the fresh indices back to the printed ones once the contraction is done.
    ``role`` is "weight", "bias" or "source" (the layer's input, only differentiated when a layer lies
    below).
    """

    name: str
    role: str
    target: sp.Expr
    local: sp.Expr
    rename: dict = field(default_factory=dict)
    lhs: sp.Expr | None = None  # the gradient's element as printed; default: target renamed


@dataclass(frozen=True)
class Node:
    """One forward definition ``lhs = rhs``, element-wise, and what its backward pass needs.

    ``out`` is the output element at the indices the inputs' local partials use, and ``limits``
    their ranges: the engine forms Σ_limits ∂L/∂out · local for every input.
    """

    name: str
    lhs: sp.Expr
    rhs: sp.Expr
    shape: Shape
    out: tuple = ()  # index tuple of the output element the locals are written against
    limits: tuple = ()
    inputs: tuple[Input, ...] = ()


class NoTorchEquivalent(Exception):
    """torch.nn has no module for the layer (the message says why): to_torch is refused."""


class LayerRule:
    """The interface every layer kind implements (see the module docstring)."""

    kind: str = ""
    spec_type: type = object
    keys: tuple[str, ...] = ("type",)
    has_activation = True
    multi_input = False  # the spec names its inputs (``inputs``, two or more) instead of one ``input``
    windowed = False  # a kernel slides over windows (explain recalls the lecture's conv neuron)
    step_comment = "formula"  # a rule-lowered step's generated comment: its "formula", or its "chain" of factors
    # the functions its generated NumPy/torch code defines, each written once for both (tables/arrays.py); their
    # names are refused as spec names
    helpers: tuple[Helper, ...] = ()
    ir_nodes: tuple[type, ...] = ()  # the IR nodes it lowers to whose NumPy/torch code it gives (array_code)
    expandable = False  # explain --expand substitutes its δ's away: a chain of these is the lecture's long product
    view = False  # its output is its input reshaped: no arithmetic and no copy (derive inspect's eager model)
    # How a float32 evaluation of it rounds, for verify's bound on the kinks (verify/margin.py): "dot", a
    # sum of weight × input terms plus its bias; "max" or "mean" over windows; "sum" of its inputs; "exact",
    # values only moved.  None (the default) makes verify refuse the kind until its rule says.
    rounding: str | None = None
    # how the torch.nn model joins a multi_input layer's inputs: a torch expression of the list _hs of their
    # tensors (the rule's own code, never text from a spec), printed into the generated model
    torch_merge: str | None = None

    @property
    def api(self) -> tuple:
        """What the Python API exports for this kind (derive.network, derive): its spec type, or the
        functions that build one."""
        return (self.spec_type,)

    def parse(self, path: str, table: dict):
        raise NotImplementedError

    def resolve(self, path: str, index: int, spec, in_shape: Shape, claim, source: str) -> Layer:
        """The validated Layer reading ``source`` of shape ``in_shape`` (for a ``multi_input`` rule:
        tuples of both, one per input, in the spec's order)."""
        raise NotImplementedError

    def forward(self, layer: Layer, sym: dict) -> list[Node]:
        """The layer's definitions up to its pre-activation a_l (or its output f_l without an activation)."""
        raise NotImplementedError

    def lower_forward(self, node_name: str, layer: Layer, net):
        """The kernel-IR expression of a definition, or None when generic elementwise lowering applies."""
        return None

    def lower_step(self, step, layer: Layer, net, lower):
        """The kernel-IR expression of a backward step this layer's rule made, or None (generic lowering).

        ``lower`` turns an element expression into an array expression (for rules that build on it)."""
        return None

    def array_code(self, node, args: list[str]) -> str:
        """The NumPy and torch code of ``node``, one of its ``ir_nodes``, written once over ``xp.``, the
        primitives and its helpers (tables/arrays.py); ``args`` are the node's arguments as printed, its
        last (the layer number) left off."""
        raise NotImplementedError

    def describe(self, layer: Layer) -> str:
        raise NotImplementedError

    def explain_sentence(self, layer: Layer) -> str | None:
        """The sentence explain prints beside the layer's forward definition (None: nothing to add)."""
        return self.describe(layer)

    def gradient_notes(self, net, layer: Layer, param: str) -> list[tuple]:
        """Lines explain prints after a parameter's gradient (pieces: str, display.Tex, display.Code)."""
        return []

    # ``layer`` below is a Layer or the targets' LayerIR: both have the kind, shapes, names and geometry.

    def torch_module(self, layer) -> str:
        """The torch.nn module computing the layer up to its activation, as constructor text (the torch
        target's ``to_torch``); "" where the layer only joins its inputs (``torch_merge``).

        Raises NoTorchEquivalent where torch.nn has none."""
        raise NoTorchEquivalent(f"layer {layer.index} ({layer.kind}) has no torch.nn equivalent in this target yet")

    def torch_params(self, layer) -> tuple[tuple[str, str, tuple], ...]:
        """(derive's parameter, the torch module's attribute, torch's shape of it) for each of its parameters."""
        return ()

    def dense_cost(self, layer) -> tuple[int, int, int] | None:
        """Per sample, its multiply-adds, and its weight's and bias's elements (derive inspect's eager model);
        None for a layer without weights (one read and one write each way)."""
        return None

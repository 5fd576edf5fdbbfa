"""The kernel IR: what the generators print.  Small frozen dataclasses plus a few SymPy nodes.

Expressions are over whole arrays (a Symbol per named array), with the batch axis
implicit.  The nodes below are the only non-elementwise operations a dense network
needs; each printer gives each node exactly one spelling, and a strict printer fails
on anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

Shape = tuple[int, ...]


class IRNode(sp.Function):
    """Base class: an array operation, never evaluated by SymPy."""

    is_real = True


class MatVec(IRNode):
    """a[b, j] = Σ_k W[j, k] · f[b, k]   (numpy: f @ W.T)."""

    nargs = 2


class VecMat(IRNode):
    """g[b, j] = Σ_i d[b, i] · W[i, j]   (numpy: d @ W)."""

    nargs = 2


class Outer(IRNode):
    """G[j, k] = Σ_b d[b, j] · f[b, k]: a weight gradient summed over the batch (numpy: d.T @ f)."""

    nargs = 2


class BatchSum(IRNode):
    """Σ_b e[b, ...]: a parameter gradient summed over the batch."""

    nargs = 1


class RowSum(IRNode):
    """Σ_j e[b, j] over a vector of width n: RowSum(e, n) (padded columns excluded)."""

    nargs = 2


class Col(IRNode):
    """A per-sample scalar used as a length-1 vector: x[:, None]."""

    nargs = 1


class First(IRNode):
    """f[:, 0]: a width-1 output vector as one scalar per sample."""

    nargs = 1


class FirstColumn(IRNode):
    """W[:, 0]: the one column of the weight a scalar feeds into a vector layer."""

    nargs = 1


class ZerosLike(IRNode):
    """An array of zeros shaped like its argument (a gradient that is zero everywhere)."""

    nargs = 1


class OneHot(IRNode):
    """OneHot(y, n, z): [y = j] for a class index y over the n columns of the logits z (z gives the dtype)."""

    nargs = 3


class Softmax(IRNode):
    nargs = 1


class LogSumExp(IRNode):
    nargs = 1


@dataclass(frozen=True)
class Array:
    """A named array in the generated code: per-sample (batched) or a parameter."""

    name: str
    shape: Shape
    batched: bool
    dtype: str = "float"  # "float" or "int" (class indices)


@dataclass(frozen=True)
class Assign:
    """``name = expr``; ``comment`` is the chain-rule step it implements."""

    name: str
    expr: sp.Expr
    shape: Shape
    batched: bool
    comment: str = ""


@dataclass(frozen=True)
class LayerIR:
    """One layer as a target sees it: what a per-layer table (Triton, torch) needs to emit or rebuild it.

    ``kind`` is the layer rule's name (linear, conv2d, locally_connected, flatten, max_pool2d,
    avg_pool2d); ``source`` the array its input is read from (the network input or f_{l-1});
    ``activation`` None for layers without one (flatten, pooling).
    """

    index: int
    kind: str
    in_shape: Shape
    out_shape: Shape
    source: str
    output: str  # the array it produces (f_l)
    weight: str | None = None
    bias: str | None = None
    activation: str | None = None
    slope: float | None = None  # leaky_relu's constant slope
    slope_param: str | None = None  # prelu's learnable slope
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: int = 0
    inputs: tuple[str, ...] = ()  # add, concat: every array it reads (``source`` is the first)

    @property
    def sources(self) -> tuple[str, ...]:
        return self.inputs or (self.source,)


@dataclass(frozen=True)
class KernelIR:
    name: str
    source: str  # the spec it came from, for the generated header
    input: Array
    target: Array
    params: tuple[Array, ...]
    slope_inits: tuple[tuple[str, float], ...]
    fan_ins: tuple[tuple[str, int], ...]
    forward: tuple[Assign, ...]
    output: Assign  # ŷ as forward() returns it
    loss: Assign  # the per-sample loss ℓ
    backward: tuple[Assign, ...]
    grads: tuple[tuple[str, str], ...]  # (param, gradient array)
    loss_type: str
    reduction: str
    layers: tuple[LayerIR, ...] = ()  # every layer, in forward order
    optimizer: str = "sgd"
    schedule: str = "constant"
    hyper: tuple[tuple[str, float], ...] = ()
    state: tuple[str, ...] = ()  # per-parameter optimizer state
    update_scalars: tuple[Assign, ...] = ()  # host scalars, once per step (η_t, bias corrections)
    updates: tuple[Assign, ...] = ()  # the elementwise update of one parameter θ with gradient g

    def graph_reason(self) -> str | None:
        """Why this network is a graph rather than a chain (a layer reading several quantities, or
        one other than the previous layer's output), or None for a chain."""
        prev = self.input.name
        for li in self.layers:
            if len(li.sources) > 1:
                return f"layer {li.index} ({li.kind}) reads {', '.join(li.sources)}"
            if li.source != prev:
                return f"layer {li.index} reads {li.source}, not the previous layer's output {prev}"
            prev = li.output
        return None

    def check(self) -> "KernelIR":
        """Every array an assignment reads is assigned before it (or is the input, the target, a parameter,
        the batch scale), and every parameter has its gradient; a loud error naming the array otherwise.
        Called when the IR is built."""
        from derive.errors import DerivationError

        defined = {self.input.name, self.target.name, "_scale"} | {p.name for p in self.params}
        for a in (*self.forward, self.output, self.loss, *self.backward):
            unbound = sorted(x.name for x in a.expr.free_symbols if isinstance(x, sp.Symbol) and x.name not in defined)
            if unbound:
                raise DerivationError(f"{self.name}: {a.name} reads {', '.join(unbound)}, assigned nowhere before it")
            defined.add(a.name)
        missing = [p.name for p in self.params if p.name not in dict(self.grads)]
        if missing:
            raise DerivationError(f"{self.name}: no gradient for {', '.join(missing)}")
        return self

    def grads_by_param(self) -> tuple[tuple[str, str], ...]:
        """(param, gradient array) in the order of ``params``."""
        g = dict(self.grads)
        return tuple((p.name, g[p.name]) for p in self.params)

    def arrays(self) -> dict[str, Array]:
        out = {self.input.name: self.input, self.target.name: self.target}
        out.update({p.name: p for p in self.params})
        for a in (*self.forward, self.output, self.loss, *self.backward):
            out[a.name] = Array(a.name, a.shape, a.batched)
        return out


# ---- volumes (conv2d, locally_connected, flatten); per-sample arrays are (c, h, w) -------------------
# Geometry travels as Integer arguments: stride s, kernel kh × kw, and the layer's number l
# (the Triton printer names each layer's helper kernels after it).


class Pad(IRNode):
    """Pad(x, P): x zero-padded by P on both spatial sides (x_pad)."""

    nargs = 2


class Crop(IRNode):
    """Crop(g, P): the inverse of Pad for gradients, g[:, :, P:-P, P:-P] (∂L/∂x from ∂L/∂x_pad)."""

    nargs = 2


class ConvForward(IRNode):
    """ConvForward(x, W, b, s, kh, kw, l): a[o,i,j] = Σ_{c,p,q} W[o,c,p,q]·x[c, i·s+p, j·s+q] + b[o] (b may be 0)."""

    nargs = 7


class LocalForward(IRNode):
    """LocalForward(x, W, b, s, kh, kw, l): a[o,i,j] = Σ_{c,p,q} W[o,i,j,c,p,q]·x[c, i·s+p, j·s+q] + b[o,i,j]."""

    nargs = 7


class ConvWeightGrad(IRNode):
    """ConvWeightGrad(δ, x, s, kh, kw, l): Σ_b Σ_{i,j} δ[o,i,j]·x[c, i·s+p, j·s+q]."""

    nargs = 6


class LocalWeightGrad(IRNode):
    """LocalWeightGrad(δ, x, s, kh, kw, l): Σ_b δ[o,i,j]·x[c, i·s+p, j·s+q] (no sum over positions)."""

    nargs = 6


class ConvBiasGrad(IRNode):
    """ConvBiasGrad(δ, l): Σ_b Σ_{i,j} δ[o,i,j]."""

    nargs = 2


class ConvInputGrad(IRNode):
    """ConvInputGrad(δ, W, s, H, W_, l): ∂L/∂x[c,h,w] = Σ_{o,i,j} δ[o,i,j]·W[o,c,h−i·s,w−j·s]·[window in range],
    for an input of spatial size H × W_ (the padded input when the layer pads)."""

    nargs = 6


class LocalInputGrad(IRNode):
    """LocalInputGrad(δ, W, s, H, W_, l): as ConvInputGrad with W[o,i,j,c,h−i·s,w−j·s]."""

    nargs = 6


class Flatten(IRNode):
    """Flatten(f): (c, h, w) -> c·h·w in C order, per sample."""

    nargs = 1


class Unflatten(IRNode):
    """Unflatten(g, C, H, W): the inverse of Flatten."""

    nargs = 4


# ---- pooling: geometry as Integer arguments kh, kw, sh, sw, P and the layer number l ----------------


class MaxPool2d(IRNode):
    """MaxPool2d(f, kh, kw, sh, sw, P, l): f[c,i,j] = max_{p,q} f_prev[c, i·sh+p−P, j·sw+q−P], padding −∞."""

    nargs = 7


class AvgPool2d(IRNode):
    """AvgPool2d(f, kh, kw, sh, sw, P, l): the window mean, padded zeros counted (count_include_pad)."""

    nargs = 7


class MaxPool2dGrad(IRNode):
    """MaxPool2dGrad(g, f, kh, kw, sh, sw, P, l): ∂L/∂f_prev, each g[c,i,j] routed to its window's first
    maximum (row-major) in f, the pooling's input."""

    nargs = 8


class AvgPool2dGrad(IRNode):
    """AvgPool2dGrad(g, f, kh, kw, sh, sw, P, l): ∂L/∂f_prev, each g[c,i,j]/(kh·kw) spread over its window
    (f, the pooling's input, gives the shape)."""

    nargs = 8


# ---- graphs: concat along axis 1 of the batched arrays (features of (B, n), channels of (B, c, h, w)) ---


class Concat(IRNode):
    """Concat(f1, f2, …): the inputs end to end along axis 1 (features or channels)."""


class Slice(IRNode):
    """Slice(g, offset, size): g[:, offset:offset + size], the block of a concat's gradient one input filled."""

    nargs = 3

"""The network model: frozen, validated dataclasses shared by the TOML loader and the Python API.

A ``Network`` is checked when it is built, so every later stage (derivation, lowering,
code generation) can trust it.  Errors carry the key path of the offending entry
(``layers[1].out``), the same path a TOML user would write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from derive import limits as size_limits
from derive import names
from derive.errors import SpecError
from derive.layers import RULES, checks
from derive.layers.base import Layer, Param, Shape
from derive.tables.arrays import PRIMITIVES
from derive.tables.functions import FUNCTIONS
from derive.tables.losses import CLASS, LOSS_RULES
from derive.tables.losses import DEFAULT as DEFAULT_LOSS
from derive.tables.optimizers import Optimizer

REDUCTIONS = ("mean", "sum")

# The Python API's layer types (Linear, Conv2d, MaxPool2d, …), each defined with its rule in derive/layers/:
# importable from here (and from derive) as if written here.
LAYER_TYPES = {t.__name__: t for rule in RULES.values() for t in rule.api}
globals().update(LAYER_TYPES)

__all__ = sorted([*LAYER_TYPES, "Layer", "Loss", "Network", "Param", "Port"])


@dataclass(frozen=True)
class Port:
    """The network's input or target: a name and a per-sample shape (() scalar, (n,) vector)."""

    name: str
    shape: Shape = ()

    def __post_init__(self):
        if isinstance(self.shape, list):
            object.__setattr__(self, "shape", tuple(self.shape))


@dataclass(frozen=True)
class Loss:
    type: str = DEFAULT_LOSS
    reduction: str = "mean"


@dataclass(frozen=True)
class Network:
    name: str
    layers: tuple  # the layer types' instances (LAYER_TYPES), in forward order
    input: Port = Port("x")
    target: Port = Port("y")
    loss: Loss = Loss()
    optimizer: Optimizer = Optimizer()
    # size limits (None fields: the defaults); the same network under other limits is still equal
    limits: size_limits.Limits = field(default=size_limits.Limits(), compare=False)
    info: tuple[Layer, ...] = field(init=False, repr=False, compare=False)  # the validated layers

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "info", _resolve(self))
        size_limits.check(self)

    # Convenience views used by the derivation and the generators.
    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def params(self) -> tuple[Param, ...]:
        return tuple(p for layer in self.info for p in layer.params)

    @property
    def output_shape(self) -> Shape:
        return self.info[-1].out_shape

    @property
    def vector(self) -> bool:
        """True when any layer works on vectors (index notation); False for a pure scalar chain."""
        return any(li.vector for li in self.info)


def _check_shape(path: str, shape: object, volume: bool = False) -> Shape:
    if not isinstance(shape, (tuple, list)) or len(shape) not in ((0, 1, 3) if volume else (0, 1)):
        more = " or [c, h, w] (a volume)" if volume else ""
        raise SpecError(path, f"expected [] (a scalar) or [n] (a vector){more}, got {shape!r}")
    for n in shape:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SpecError(path, f"expected positive integer sizes, got {shape!r}")
    return tuple(shape)


# The helper functions the generated code defines for the layer kinds, the SymPy functions and the losses, and
# the array primitives they call: no spec name may take one.
HELPERS = frozenset([h.name for owner in (*RULES.values(), *FUNCTIONS, *LOSS_RULES.values())
                     for h in getattr(owner, "helpers", ())] + list(PRIMITIVES))


def _name(path: str, value: object) -> str:
    name = checks.name(path, value)
    if name in HELPERS:
        raise SpecError(path, f"{name!r} {names.TAKEN_BY_CODE}")
    return name


def _resolve(net: Network) -> tuple[Layer, ...]:
    checks.name("name", net.name, variable=False)
    _name("input.name", net.input.name)
    _name("target.name", net.target.name)
    in_shape = _check_shape("input.shape", net.input.shape, volume=True)
    target_shape = _check_shape("target.shape", net.target.shape)
    if not net.layers:
        raise SpecError("layers", "expected at least one [[layers]] entry")
    if net.loss.type not in LOSS_RULES:
        raise SpecError("loss.type", f"expected one of {', '.join(LOSS_RULES)}, got {net.loss.type!r}")
    if net.loss.reduction not in REDUCTIONS:
        raise SpecError("loss.reduction", f"expected 'mean' or 'sum', got {net.loss.reduction!r}")

    taken: dict[str, str] = {net.input.name: "input.name"}
    if net.target.name in taken:
        raise SpecError("target.name", f"duplicate name {net.target.name!r} (also used by input.name)")
    taken[net.target.name] = "target.name"

    def claim(path: str, value: object) -> str:
        name = _name(path, value)
        if name in taken:
            raise SpecError(path, f"duplicate name {name!r} (also used by {taken[name]})")
        taken[name] = path
        return name

    resolved = []
    shapes = {net.input.name: in_shape}  # every quantity a layer may read, in the order they are computed
    read: set[str] = set()
    for pos, spec in enumerate(net.layers):
        path = f"layers[{pos}]"
        rule = RULES.get(getattr(spec, "kind", None))
        if rule is None or not isinstance(spec, rule.spec_type):
            raise SpecError(f"{path}.type", f"expected a layer such as Linear, got {type(spec).__name__}")
        sources = _sources(net, path, pos, spec, rule, shapes)
        read.update(sources)
        if rule.multi_input:
            layer = rule.resolve(path, pos + 1, spec, tuple(shapes[s] for s in sources), claim, sources)
        else:
            layer = rule.resolve(path, pos + 1, spec, shapes[sources[0]], claim, sources[0])
        resolved.append(layer)
        shapes[names.activation(pos + 1)] = layer.out_shape
    _check_read(net, read)
    shape = resolved[-1].out_shape

    if len(shape) == 3:
        raise SpecError(f"layers[{len(net.layers) - 1}].type",
                        f"expected the network to end in a vector, not a volume of shape {list(shape)}: "
                        "add a flatten (and a linear) layer")
    _check_target(net, shape, target_shape)
    return tuple(resolved)


def _sources(net: Network, path: str, pos: int, spec, rule, shapes: dict) -> tuple[str, ...]:
    """The quantities layer ``pos`` reads: its spec's ``inputs`` (add, concat), its ``input``, or by
    default the previous layer's output.  Only the network input and earlier layers' outputs can be
    read, so the layers' order is a topological order and a cycle cannot be written."""
    if rule.multi_input:
        given = spec.inputs
        if not isinstance(given, tuple) or len(given) < 2:
            raise SpecError(f"{path}.inputs", f"expected a list of two or more quantity names, got {given!r}")
        keys = [f"{path}.inputs[{k}]" for k in range(len(given))]
    else:
        one = getattr(spec, "input", None)
        if one is None:
            return (net.input.name if pos == 0 else names.activation(pos),)
        given, keys = (one,), [f"{path}.input"]
    for key, name in zip(keys, given):
        if not isinstance(name, str):
            raise SpecError(key, f"expected a quantity name (string), got {name!r}")
        if name not in shapes:
            raise SpecError(key, _unknown(net, pos, name, shapes))
    for k, name in enumerate(given):
        if name in given[:k]:
            raise SpecError(keys[k], f"{name!r} is named twice; each input is read once")
    return tuple(given)


def _unknown(net: Network, pos: int, name: str, shapes: dict) -> str:
    readable = ", ".join(shapes)
    m = re.fullmatch(r"f([1-9]\d*)", name)
    if m and int(m.group(1)) <= len(net.layers):
        return (f"{name!r} is computed by layers[{int(m.group(1)) - 1}], at or after this layer (a cycle): a layer "
                f"reads the input or an earlier layer's output, here one of {readable}")
    return f"unknown quantity {name!r}; expected the input or an earlier layer's output, one of {readable}"


def _check_read(net: Network, read: set[str]) -> None:
    """Every quantity but the last layer's output feeds something: an unused one is a mistake in the graph.
    (The input always does: the first layer can read nothing else.)"""
    for pos in range(len(net.layers) - 1):
        f = names.activation(pos + 1)
        if f not in read:
            raise SpecError(f"layers[{pos}]", f"its output {f} is never read: name it in a later layer's input or "
                                              "inputs, or remove the layer (only the last layer's output is the network's)")


def _check_target(net: Network, out_shape: Shape, target_shape: Shape) -> None:
    loss = net.loss.type
    rule = LOSS_RULES[loss]
    last = f"layers[{len(net.layers) - 1}].out"
    if rule.target == CLASS:
        if out_shape == () or out_shape[0] < 2:
            raise SpecError(last, f"{loss} expects the last layer's 'out' to be the number of classes (>= 2)")
        if target_shape != ():
            raise SpecError("target.shape", f"{loss} expects a class index target, shape = []")
        return
    if rule.scalar_output:
        if out_shape not in ((), (1,)):
            raise SpecError(last, f"{loss} expects one output per sample (out = 1 or a scalar layer), got out = {out_shape[0]}")
        if target_shape != ():
            raise SpecError("target.shape", f"{loss} expects a scalar label, shape = []")
        return
    if out_shape == (1,) and target_shape == ():
        return  # a last layer with out = 1 feeds a scalar target
    if target_shape != out_shape:
        raise SpecError(
            "target.shape", f"expected the last layer's shape {list(out_shape)}, got {list(target_shape)}"
        )

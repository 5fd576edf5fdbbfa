"""The network model: frozen, validated dataclasses shared by the TOML loader and the Python API.

A ``Network`` is checked when it is built, so every later stage (derivation, lowering,
code generation) can trust it.  Errors carry the key path of the offending entry
(``layers[1].out``), the same path a TOML user would write.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from derive import limits as size_limits
from derive.errors import SpecError
from derive.layers import RULES, checks
from derive.layers.base import Layer, Param, Shape
from derive.layers.conv import Conv2d, LocallyConnected
from derive.layers.flatten import Flatten
from derive.layers.linear import Linear
from derive.layers.pool import AvgPool2d, MaxPool2d, Pool2d
from derive.tables.losses import CLASS, LOSS_RULES
from derive.tables.optimizers import Optimizer

REDUCTIONS = ("mean", "sum")

__all__ = ["AvgPool2d", "Conv2d", "Flatten", "Layer", "Linear", "LocallyConnected", "Loss", "MaxPool2d",
           "Network", "Param", "Pool2d", "Port"]


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
    type: str = "l2"
    reduction: str = "mean"


@dataclass(frozen=True)
class Network:
    name: str
    layers: tuple[Linear, ...]
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


def _resolve(net: Network) -> tuple[Layer, ...]:
    checks.name("name", net.name, variable=False)
    checks.name("input.name", net.input.name)
    checks.name("target.name", net.target.name)
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
        name = checks.name(path, value)
        if name in taken:
            raise SpecError(path, f"duplicate name {name!r} (also used by {taken[name]})")
        taken[name] = path
        return name

    resolved = []
    shape = in_shape
    for pos, spec in enumerate(net.layers):
        path = f"layers[{pos}]"
        rule = RULES.get(getattr(spec, "kind", None))
        if rule is None or not isinstance(spec, rule.spec_type):
            raise SpecError(f"{path}.type", f"expected a layer such as Linear, got {type(spec).__name__}")
        resolved.append(rule.resolve(path, pos + 1, spec, shape, claim, net))
        shape = resolved[-1].out_shape

    if len(shape) == 3:
        raise SpecError(f"layers[{len(net.layers) - 1}].type",
                        f"expected the network to end in a vector, not a volume of shape {list(shape)}: "
                        "add a flatten (and a linear) layer")
    _check_target(net, shape, target_shape)
    return tuple(resolved)


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

"""The network model: frozen, validated dataclasses shared by the TOML loader and the Python API.

A ``Network`` is checked when it is built, so every later stage (derivation, lowering,
code generation) can trust it.  Errors carry the key path of the offending entry
(``layers[1].out``), the same path a TOML user would write.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import names
from .errors import SpecError
from .optimizers import Optimizer

ACTIVATIONS = ("identity", "relu", "sigmoid", "tanh", "leaky_relu", "softplus", "prelu")
LOSSES = ("l2", "l1", "hinge", "zero_one", "cross_entropy", "binary_cross_entropy")
REDUCTIONS = ("mean", "sum")
# Losses whose prediction is one number per sample and whose target is a label.
SCALAR_OUTPUT_LOSSES = ("hinge", "zero_one", "binary_cross_entropy")

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Port:
    """The network's input or target: a name and a per-sample shape (() scalar, (n,) vector)."""

    name: str
    shape: Shape = ()

    def __post_init__(self):
        if isinstance(self.shape, list):
            object.__setattr__(self, "shape", tuple(self.shape))


@dataclass(frozen=True)
class Linear:
    """a = W f_prev + b, then f = activation(a).

    ``out=None`` is the lecture's scalar-to-scalar layer (a scalar weight).  Names left
    as None get the defaults of ``derive.names`` when the network is built.
    """

    out: int | None = None
    weight: str | None = None
    bias: str | None | bool = None
    activation: str = "identity"
    slope: float | str | None = None  # leaky_relu: a float (default 0.01); prelu: the parameter's name
    slope_init: float = 0.25  # prelu's initial slope, as torch.nn.PReLU

    kind = "linear"


@dataclass(frozen=True)
class Loss:
    type: str = "l2"
    reduction: str = "mean"


@dataclass(frozen=True)
class Param:
    """A learnable tensor as the generated code sees it."""

    name: str
    shape: Shape
    layer: int
    role: str  # "weight", "bias" or "slope"
    fan_in: int = 1


@dataclass(frozen=True)
class LayerInfo:
    """A validated layer with its resolved names and shapes (1-based ``index``)."""

    index: int
    spec: Linear
    in_shape: Shape
    out_shape: Shape
    weight: str
    bias: str | None
    slope_param: str | None  # prelu
    slope_value: float | None  # leaky_relu

    @property
    def vector(self) -> bool:
        return self.spec.out is not None


@dataclass(frozen=True)
class Network:
    name: str
    layers: tuple[Linear, ...]
    input: Port = Port("x")
    target: Port = Port("y")
    loss: Loss = Loss()
    optimizer: Optimizer = Optimizer()
    info: tuple[LayerInfo, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "info", _resolve(self))

    # Convenience views used by the derivation and the generators.
    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def params(self) -> tuple[Param, ...]:
        out: list[Param] = []
        for li in self.info:
            fan_in = li.in_shape[0] if li.in_shape else 1
            w_shape = (li.spec.out, fan_in) if li.vector else ()
            out.append(Param(li.weight, w_shape, li.index, "weight", fan_in))
            if li.bias is not None:
                out.append(Param(li.bias, (li.spec.out,) if li.vector else (), li.index, "bias", fan_in))
            if li.slope_param is not None:
                out.append(Param(li.slope_param, (), li.index, "slope", fan_in))
        return tuple(out)

    @property
    def output_shape(self) -> Shape:
        return self.info[-1].out_shape

    @property
    def vector(self) -> bool:
        """True when any layer works on vectors (index notation); False for a pure scalar chain."""
        return any(li.vector for li in self.info)


def _check_name(path: str, value: object, variable: bool = True) -> str:
    reason = names.check_identifier(value, variable)
    if reason:
        raise SpecError(path, reason)
    return value  # type: ignore[return-value]


def _check_shape(path: str, shape: object) -> Shape:
    if not isinstance(shape, (tuple, list)) or len(shape) > 1:
        raise SpecError(path, f"expected [] (a scalar) or [n] (a vector), got {shape!r}")
    for n in shape:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SpecError(path, f"expected positive integer sizes, got {shape!r}")
    return tuple(shape)


def _resolve(net: Network) -> tuple[LayerInfo, ...]:
    _check_name("name", net.name, variable=False)
    _check_name("input.name", net.input.name)
    _check_name("target.name", net.target.name)
    in_shape = _check_shape("input.shape", net.input.shape)
    target_shape = _check_shape("target.shape", net.target.shape)
    if not net.layers:
        raise SpecError("layers", "expected at least one [[layers]] entry")
    if net.loss.type not in LOSSES:
        raise SpecError("loss.type", f"expected one of {', '.join(LOSSES)}, got {net.loss.type!r}")
    if net.loss.reduction not in REDUCTIONS:
        raise SpecError("loss.reduction", f"expected 'mean' or 'sum', got {net.loss.reduction!r}")

    taken: dict[str, str] = {net.input.name: "input.name"}
    if net.target.name in taken:
        raise SpecError("target.name", f"duplicate name {net.target.name!r} (also used by input.name)")
    taken[net.target.name] = "target.name"

    def claim(path: str, value: object) -> str:
        name = _check_name(path, value)
        if name in taken:
            raise SpecError(path, f"duplicate name {name!r} (also used by {taken[name]})")
        taken[name] = path
        return name

    infos = []
    shape = in_shape
    for i, layer in enumerate(net.layers):
        path = f"layers[{i}]"
        idx = i + 1
        if not isinstance(layer, Linear):
            raise SpecError(f"{path}.type", f"expected a layer such as Linear, got {type(layer).__name__}")
        out = layer.out
        if out is not None and (isinstance(out, bool) or not isinstance(out, int) or out < 1):
            raise SpecError(f"{path}.out", f"expected a positive integer, got {out!r}")
        if out is None and shape != ():
            raise SpecError(
                f"{path}.out",
                f"expected 'out' (this layer's input is a vector of {shape[0]}); "
                "leave 'out' out only for a scalar-to-scalar layer",
            )
        if layer.activation not in ACTIVATIONS:
            raise SpecError(
                f"{path}.activation", f"expected one of {', '.join(ACTIVATIONS)}, got {layer.activation!r}"
            )
        vector = out is not None
        weight = claim(f"{path}.weight", layer.weight if layer.weight is not None else names.default_weight(idx, vector))
        bias: str | None
        if layer.bias is False:
            bias = None
        elif layer.bias is None or layer.bias is True:
            bias = claim(f"{path}.bias", names.default_bias(idx))
        else:
            bias = claim(f"{path}.bias", layer.bias)
        slope_param = None
        slope_value = None
        if layer.activation == "leaky_relu":
            s = 0.01 if layer.slope is None else layer.slope
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                raise SpecError(f"{path}.slope", f"expected a number for leaky_relu's slope, got {s!r}")
            slope_value = float(s)
        elif layer.activation == "prelu":
            slope_param = claim(f"{path}.slope", layer.slope if layer.slope is not None else names.default_slope(idx))
            init = layer.slope_init
            if isinstance(init, bool) or not isinstance(init, (int, float)) or not math.isfinite(init):
                raise SpecError(f"{path}.slope_init", f"expected a number, got {layer.slope_init!r}")
        elif layer.slope is not None:
            raise SpecError(f"{path}.slope", f"'slope' belongs to leaky_relu or prelu, not {layer.activation}")
        out_shape: Shape = (out,) if vector else ()
        in_view = shape if (not vector or shape) else (1,)  # a scalar feeding a vector layer is a length-1 vector
        infos.append(LayerInfo(idx, layer, in_view, out_shape, weight, bias, slope_param, slope_value))
        shape = out_shape

    _check_target(net, shape, target_shape)
    return tuple(infos)


def _check_target(net: Network, out_shape: Shape, target_shape: Shape) -> None:
    loss = net.loss.type
    last = f"layers[{len(net.layers) - 1}].out"
    if loss == "cross_entropy":
        if out_shape == () or out_shape[0] < 2:
            raise SpecError(last, "cross_entropy expects the last layer's 'out' to be the number of classes (>= 2)")
        if target_shape != ():
            raise SpecError("target.shape", "cross_entropy expects a class index target, shape = []")
        return
    if loss in SCALAR_OUTPUT_LOSSES:
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

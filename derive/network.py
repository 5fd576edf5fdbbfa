"""The network model: frozen, validated dataclasses shared by the TOML loader and the Python API.

A ``Network`` is checked when it is built, so every later stage (derivation, lowering,
code generation) can trust it.  Errors carry the key path of the offending entry
(``layers[1].out``), the same path a TOML user would write.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from derive import limits as size_limits, names
from derive.errors import SpecError
from derive.tables.optimizers import Optimizer

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
class Conv2d:
    """a[o,i,j] = Σ_{c,p,q} W[o,c,p,q]·x_pad[c, i·s+p, j·s+q] + b[o], then f = activation(a).

    One set of ``filters`` kernels shared by every output position (weight sharing).
    ``kernel`` is an int or (kh, kw); ``padding`` zero-pads both spatial sides.
    """

    filters: int
    kernel: int | tuple[int, int]
    stride: int = 1
    padding: int = 0
    weight: str | None = None
    bias: str | None | bool = None
    activation: str = "identity"
    slope: float | None = None  # leaky_relu's negative slope (default 0.01)

    kind = "conv2d"


@dataclass(frozen=True)
class LocallyConnected(Conv2d):
    """The same windows as Conv2d, without weight sharing: a separate kernel for every output
    position, a[o,i,j] = Σ_{c,p,q} W[o,i,j,c,p,q]·x_pad[c, i·s+p, j·s+q] + b[o,i,j]."""

    kind = "locally_connected"


@dataclass(frozen=True)
class Flatten:
    """f[c·H·W + h·W + w] = f_prev[c,h,w]: a volume as a vector, in C order (as torch flattens (c, h, w))."""

    kind = "flatten"


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
class VolumeLayerInfo:
    """A validated conv2d, locally_connected or flatten layer (1-based ``index``).

    ``padded`` names the zero-padded input (x_pad, f1_pad) when ``padding`` > 0.
    """

    index: int
    spec: Conv2d | Flatten
    in_shape: Shape  # (c, h, w)
    out_shape: Shape  # (filters, out_h, out_w); flatten: (c·h·w,)
    weight: str | None
    bias: str | None
    slope_value: float | None = None
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    padding: int = 0
    padded: str | None = None
    slope_param = None  # prelu is for linear layers only
    vector = True

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def fan_in(self) -> int:
        return self.in_shape[0] * self.kernel[0] * self.kernel[1]

    def params(self) -> list[Param]:
        if self.kind == "flatten":
            return []
        o, (c, _, _), (kh, kw) = self.spec.filters, self.in_shape, self.kernel
        if self.kind == "conv2d":
            w_shape, b_shape = (o, c, kh, kw), (o,)
        else:
            w_shape, b_shape = (o, *self.out_shape[1:], c, kh, kw), self.out_shape
        out = [Param(self.weight, w_shape, self.index, "weight", self.fan_in)]
        if self.bias is not None:
            out.append(Param(self.bias, b_shape, self.index, "bias", self.fan_in))
        return out


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
    info: tuple[LayerInfo, ...] = field(init=False, repr=False, compare=False)

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
        out: list[Param] = []
        for li in self.info:
            if isinstance(li, VolumeLayerInfo):
                out.extend(li.params())
                continue
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


def _check_shape(path: str, shape: object, volume: bool = False) -> Shape:
    if not isinstance(shape, (tuple, list)) or len(shape) not in ((0, 1, 3) if volume else (0, 1)):
        more = " or [c, h, w] (a volume)" if volume else ""
        raise SpecError(path, f"expected [] (a scalar) or [n] (a vector){more}, got {shape!r}")
    for n in shape:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SpecError(path, f"expected positive integer sizes, got {shape!r}")
    return tuple(shape)


def _resolve(net: Network) -> tuple[LayerInfo, ...]:
    _check_name("name", net.name, variable=False)
    _check_name("input.name", net.input.name)
    _check_name("target.name", net.target.name)
    in_shape = _check_shape("input.shape", net.input.shape, volume=True)
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
        if isinstance(layer, (Conv2d, Flatten)):
            infos.append(_resolve_volume(path, idx, layer, shape, claim, net))
            shape = infos[-1].out_shape
            continue
        if not isinstance(layer, Linear):
            raise SpecError(f"{path}.type", f"expected a layer such as Linear, got {type(layer).__name__}")
        if len(shape) == 3:
            raise SpecError(f"{path}.type", f"expected a flatten layer before a linear layer on a volume "
                                            f"(this layer's input has shape {list(shape)})")
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
        weight, bias = _weight_and_bias(path, idx, layer, vector, claim)
        slope_param = None
        slope_value = None
        if layer.activation == "leaky_relu":
            slope_value = _leaky_slope(path, layer)
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

    if len(shape) == 3:
        raise SpecError(f"layers[{len(net.layers) - 1}].type",
                        f"expected the network to end in a vector, not a volume of shape {list(shape)}: "
                        "add a flatten (and a linear) layer")
    _check_target(net, shape, target_shape)
    return tuple(infos)


def _weight_and_bias(path: str, idx: int, layer, vector: bool, claim) -> tuple[str, str | None]:
    """The layer's weight and bias names (defaults from derive.names; bias = false drops it)."""
    weight = claim(f"{path}.weight", layer.weight if layer.weight is not None else names.default_weight(idx, vector))
    if layer.bias is False:
        return weight, None
    if layer.bias is None or layer.bias is True:
        return weight, claim(f"{path}.bias", names.default_bias(idx))
    return weight, claim(f"{path}.bias", layer.bias)


def _leaky_slope(path: str, layer) -> float:
    s = 0.01 if layer.slope is None else layer.slope
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
        raise SpecError(f"{path}.slope", f"expected a number for leaky_relu's slope, got {s!r}")
    return float(s)


def _positive(path: str, value: object, what: str = "a positive integer", low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SpecError(path, f"expected {what}, got {value!r}")
    return value


def _resolve_volume(path: str, idx: int, layer, shape: Shape, claim, net: Network) -> VolumeLayerInfo:
    """Check a conv2d / locally_connected / flatten layer and work out its output shape."""
    if len(shape) != 3:
        got = "a scalar" if not shape else f"shape {list(shape)}"
        raise SpecError(f"{path}.type", f"expected a [c, h, w] volume as the input of {layer.kind}, got {got}")
    c, h, w = shape
    if isinstance(layer, Flatten):
        return VolumeLayerInfo(idx, layer, shape, (c * h * w,), None, None)
    filters = _positive(f"{path}.filters", layer.filters)
    k = layer.kernel
    if isinstance(k, list):
        k = tuple(k)
    if isinstance(k, int) and not isinstance(k, bool):
        k = (k, k)
    if not (isinstance(k, tuple) and len(k) == 2):
        raise SpecError(f"{path}.kernel", f"expected a positive integer or [kh, kw], got {layer.kernel!r}")
    kh, kw = (_positive(f"{path}.kernel", n, "positive kernel sizes") for n in k)
    stride = _positive(f"{path}.stride", layer.stride)
    pad = _positive(f"{path}.padding", layer.padding, "a non-negative integer", low=0)
    if kh > h + 2 * pad or kw > w + 2 * pad:
        raise SpecError(f"{path}.kernel", f"expected a kernel no larger than the padded input "
                                          f"{h + 2 * pad}×{w + 2 * pad}, got {kh}×{kw}")
    if layer.activation not in ACTIVATIONS:
        raise SpecError(f"{path}.activation", f"expected one of {', '.join(ACTIVATIONS)}, got {layer.activation!r}")
    if layer.activation == "prelu":
        raise SpecError(f"{path}.activation", "expected an activation without parameters; prelu is "
                                              "available on linear layers only")
    slope_value = None
    if layer.activation == "leaky_relu":
        slope_value = _leaky_slope(path, layer)
    elif layer.slope is not None:
        raise SpecError(f"{path}.slope", f"'slope' belongs to leaky_relu, not {layer.activation}")
    weight, bias = _weight_and_bias(path, idx, layer, True, claim)
    padded = None
    if pad:
        source = net.input.name if idx == 1 else names.activation(idx - 1)
        padded = claim(f"{path}.padding", names.padded(source))
    out_shape = (filters, (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1)
    return VolumeLayerInfo(idx, layer, shape, out_shape, weight, bias, slope_value, (kh, kw), stride, pad, padded)


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

"""conv2d and locally connected layers on (c, h, w) volumes, in index notation.

The lecture's neuron at output position r is h^r = Σ_ijk x^r_ijk W_ijk + b: a dot product of a
window of the input with a kernel.  Written per element,

    a[o,i,j] = Σ_{c,p,q} W[o,c,p,q]·x_pad[c, i·s+p, j·s+q] + b[o]          (conv2d)
    a[o,i,j] = Σ_{c,p,q} W[o,i,j,c,p,q]·x_pad[c, i·s+p, j·s+q] + b[o,i,j]  (locally connected)

with x_pad the zero-padded input, a named forward quantity (∂L/∂x is then a crop of ∂L/∂x_pad).
Every local partial is sympy.diff of these definitions at primed indices (o', c', p', q', h', w'),
which occur nowhere bound and are renamed only after the engine's contraction; eliminating the
delta [h' = i·s + p] over the window keeps its range as an Iverson bracket (derive.indices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy as sp

from derive import indices as ix
from derive import names
from derive.display import Code
from derive.errors import SpecError
from derive.ir import nodes as ir
from derive.layers import checks
from derive.layers.base import Input, Layer, LayerRule, Node, NoTorchEquivalent, Param
from derive.tables.arrays import Helper

from derive.indices import UNPRIME, c, c_, h, h_, i, i_, j, j_, o, o_, p, p_, q, q_, w, w_
from derive.tables.activations import IDENTITY
# The padded copy's own output indices (its definition sums over the input's c, h, w).
cc, hh, ww = sp.symbols("c'' h'' w''", integer=True)


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
    activation: str = IDENTITY
    slope: float | None = None  # leaky_relu's negative slope (default 0.01)
    input: str | None = None  # the quantity it reads (default: the previous layer's output)

    kind = "conv2d"


@dataclass(frozen=True)
class LocallyConnected(Conv2d):
    """The same windows as Conv2d, without weight sharing: a separate kernel for every output
    position, a[o,i,j] = Σ_{c,p,q} W[o,i,j,c,p,q]·x_pad[c, i·s+p, j·s+q] + b[o,i,j]."""

    kind = "locally_connected"


def padded_source(layer: Layer, sym: dict) -> tuple[list[Node], sp.Basic]:
    """The zero-padded copy of the source as a named quantity (none without padding)."""
    src = sym[layer.source]
    if not layer.padding:
        return [], src
    pad = layer.padding
    xp = sym.setdefault(layer.padded, ix.tensor(layer.padded, layer.padded_shape))
    cin, hin, win = layer.in_shape
    # x_pad[c'',h'',w''] = Σ_{c,h,w} x[c,h,w]·[c'' = c][h'' = h + P][w'' = w + P]: its local partial is a crop
    shifted = sp.KroneckerDelta(cc, c) * sp.KroneckerDelta(hh, h + pad) * sp.KroneckerDelta(ww, w + pad) * src[c, h, w]
    local = ix.contract(ix.local(shifted, src[c_, h_, w_]), [(c, 0, cin - 1), (h, 0, hin - 1), (w, 0, win - 1)])
    limits = tuple((n, 0, size - 1) for n, size in zip((cc, hh, ww), layer.padded_shape))
    node = Node(layer.padded, xp[c, h, w], src[c, h - pad, w - pad], layer.padded_shape, (cc, hh, ww), limits,
                (Input(layer.source, "source", src[c_, h_, w_], local, UNPRIME),))
    return [node], xp


INPUT_GRAD = Helper("conv2d_input_grad", '''def conv2d_input_grad(delta, W, s, hw):
    """∂L/∂x[c, h, w] = Σ_{o,i,j} δ[o,i,j]·W[o, c, h − i·s, w − j·s]·[0 ≤ h − i·s < kh]·[0 ≤ w − j·s < kw].

    Computed as a scatter over the kernel offsets (p, q) = (h − i·s, w − j·s) that the brackets
    allow: each adds Σ_o δ[o,i,j]·W[o,c,p,q] at input position (i·s + p, j·s + q).
    """
    B, _, oh, ow = delta.shape
    _, C, kh, kw = W.shape
    g = zeros(delta, (B, C, *hw))
    for p in range(kh):
        for q in range(kw):
            g[:, :, p:p + s * oh:s, q:q + s * ow:s] += xp.einsum("boij,oc->bcij", delta, W[:, :, p, q])
    return g''')

LOCAL_INPUT_GRAD = Helper("local_input_grad", '''def local_input_grad(delta, W, s, hw):
    """∂L/∂x[c, h, w] = Σ_{o,i,j} δ[o,i,j]·W[o, i, j, c, h − i·s, w − j·s]·[0 ≤ h − i·s < kh]·[0 ≤ w − j·s < kw].

    A scatter over the kernel offsets (p, q), as conv2d_input_grad, with a kernel per position (i, j).
    """
    B, _, oh, ow = delta.shape
    kh, kw = W.shape[4:]
    g = zeros(delta, (B, W.shape[3], *hw))
    for p in range(kh):
        for q in range(kw):
            g[:, :, p:p + s * oh:s, q:q + s * ow:s] += xp.einsum("boij,oijc->bcij", delta, W[:, :, :, :, p, q])
    return g''')


class ConvRule(LayerRule):
    kind = "conv2d"
    spec_type = Conv2d
    keys = ("type", "filters", "kernel", "stride", "padding", "weight", "bias", "activation", "slope")
    shared = True  # one kernel for every position
    windowed = True
    rounding = "dot"
    helpers = (INPUT_GRAD,)
    ir_nodes = (ir.ConvForward, ir.ConvWeightGrad, ir.ConvInputGrad)
    # The einsum subscripts of the window contractions, over windows(x)[b,c,i,j,p,q]: its NumPy and torch
    # code (array_code) and explain's notes spell them from here.
    forward_subscripts = "bcijpq,ocpq->boij"
    weight_subscripts = "boij,bcijpq->ocpq"
    bias_broadcast = "[:, None, None]"  # b[o] over the output's (o, i, j)
    bias_sum = "np.sum(δ, axis=(0, 2, 3))"

    def parse(self, path: str, table: dict):
        for key in ("filters", "kernel"):
            if key not in table:
                raise SpecError(f"{path}.{key}", "missing required key; expected a positive integer"
                                + (" or [kh, kw]" if key == "kernel" else ""))
        kwargs: dict = {"filters": checks.integer(f"{path}.filters", table["filters"]),
                        "kernel": checks.pair(f"{path}.kernel", table["kernel"], "a positive integer or [kh, kw]")}
        for key in ("stride", "padding"):
            if key in table:
                kwargs[key] = checks.integer(f"{path}.{key}", table[key])
        checks.names_and_activation(path, table, kwargs)
        if "slope" in table:
            kwargs["slope"] = checks.number(f"{path}.slope", table["slope"], "a number (leaky_relu's negative slope)")
        return self.spec_type(**kwargs)

    def resolve(self, path: str, index: int, spec, shape, claim, source) -> Layer:
        cin, hin, win = checks.volume(path, self.kind, shape)
        filters = checks.positive(f"{path}.filters", spec.filters)
        kh, kw = checks.positive_pair(f"{path}.kernel", spec.kernel, "positive kernel sizes")
        stride = checks.positive(f"{path}.stride", spec.stride)
        pad = checks.positive(f"{path}.padding", spec.padding, "a non-negative integer", low=0)
        if kh > hin + 2 * pad or kw > win + 2 * pad:
            raise SpecError(f"{path}.kernel", f"expected a kernel no larger than the padded input "
                                              f"{hin + 2 * pad}×{win + 2 * pad}, got {kh}×{kw}")
        act, slope_value = checks.activation(path, spec, parameters=False)
        weight, bias = checks.weight_and_bias(path, index, spec, True, claim)
        own = index if spec.input is not None else None  # a named input: a name no other layer's padding takes
        padded = claim(f"{path}.padding", names.padded(source, own)) if pad else None
        out_shape = (filters, (hin + 2 * pad - kh) // stride + 1, (win + 2 * pad - kw) // stride + 1)
        fan_in = cin * kh * kw
        if self.shared:
            w_shape, b_shape = (filters, cin, kh, kw), (filters,)
        else:
            w_shape, b_shape = (filters, *out_shape[1:], cin, kh, kw), out_shape
        params = [Param(weight, w_shape, index, "weight", fan_in)]
        if bias is not None:
            params.append(Param(bias, b_shape, index, "bias", fan_in))
        return Layer(index, self.kind, spec, shape, out_shape, source, tuple(params), weight, bias, act,
                     slope_value, kernel=(kh, kw), stride=(stride, stride), padding=pad, padded=padded)

    def forward(self, layer: Layer, sym: dict) -> list[Node]:
        nodes, src = padded_source(layer, sym)
        wt = sym[layer.weight]
        s, _ = layer.stride
        kh, kw = layer.kernel
        wel = wt[o, c, p, q] if self.shared else wt[o, i, j, c, p, q]
        body = sp.Mul(wel, src[c, s * i + p, s * j + q], evaluate=False)
        rhs = sp.Sum(body, (c, 0, layer.in_shape[0] - 1), (p, 0, kh - 1), (q, 0, kw - 1))
        w_target = wt[o_, c_, p_, q_] if self.shared else wt[o_, i_, j_, c_, p_, q_]
        inputs = [Input(layer.weight, "weight", w_target, ix.local(rhs, w_target), UNPRIME)]
        if layer.bias is not None:
            b = sym[layer.bias]
            rhs = sp.Add(rhs, b[o] if self.shared else b[o, i, j], evaluate=False)
            b_target = b[o_] if self.shared else b[o_, i_, j_]
            inputs.append(Input(layer.bias, "bias", b_target, ix.local(rhs, b_target), UNPRIME))
        src_name = layer.padded or layer.source
        # the window sum over p, q is eliminated with its range kept: which (i, j) reach the input position
        inputs.append(Input(src_name, "source", src[c_, h_, w_], ix.local(rhs, src[c_, h_, w_], ranged=(p, q)), UNPRIME))
        a = names.pre_activation(layer.index)
        limits = tuple((n, 0, size - 1) for n, size in zip((o, i, j), layer.out_shape))
        return nodes + [Node(a, sym[a][o, i, j], rhs, layer.out_shape, (o, i, j), limits, tuple(inputs))]

    def _geometry(self, layer: Layer):
        return (sp.Integer(layer.stride[0]), sp.Integer(layer.kernel[0]), sp.Integer(layer.kernel[1]),
                sp.Integer(layer.index))

    def lower_forward(self, name: str, layer: Layer, net):
        x = _s(layer.source)
        if name == layer.padded:
            return ir.Pad(x, sp.Integer(layer.padding))
        node = ir.ConvForward if self.shared else ir.LocalForward
        b = _s(layer.bias) if layer.bias else sp.S.Zero
        return node(_s(layer.padded or layer.source), _s(layer.weight), b, *self._geometry(layer))

    def lower_step(self, step, layer: Layer, net, lower):
        if step.kind not in ("param", "upstream"):
            return None  # δ is elementwise
        delta = _s(names.delta(layer.index))
        src = _s(layer.padded or layer.source)
        if step.kind == "param" and step.param == layer.weight:
            node = ir.ConvWeightGrad if self.shared else ir.LocalWeightGrad
            return node(delta, src, *self._geometry(layer))
        if step.kind == "param" and step.param == layer.bias:
            return ir.ConvBiasGrad(delta, sp.Integer(layer.index)) if self.shared else ir.BatchSum(delta)
        if layer.padded and step.name != names.grad(layer.padded):  # ∂L/∂source: a crop of ∂L/∂source_pad
            return ir.Crop(_s(names.grad(layer.padded)), sp.Integer(layer.padding))
        _, hp, wp = layer.padded_shape
        node = ir.ConvInputGrad if self.shared else ir.LocalInputGrad
        return node(delta, _s(layer.weight), sp.Integer(layer.stride[0]), sp.Integer(hp), sp.Integer(wp),
                    sp.Integer(layer.index))

    def array_code(self, node, args: list[str]) -> str:
        if isinstance(node, self.ir_nodes[0]):  # the forward window sum, plus the bias
            x, w, b, s, kh, kw = args
            out = f'xp.einsum("{self.forward_subscripts}", windows({x}, {kh}, {kw}, {s}, {s}), {w})'
            return out if b == "0" else f"{out} + {b}{self.bias_broadcast}"
        if isinstance(node, self.ir_nodes[1]):  # ∂L/∂W: δ against the windows
            d, x, s, kh, kw = args
            return f'xp.einsum("{self.weight_subscripts}", {d}, windows({x}, {kh}, {kw}, {s}, {s}))'
        d, w, s, hh, ww = args  # ∂L/∂x: δ scattered back over the windows
        return f"{self.helpers[0].name}({d}, {w}, {s}, ({hh}, {ww}))"

    def gradient_notes(self, net, layer: Layer, param: str) -> list[tuple]:
        """Weight sharing, and how the generated NumPy code computes the window gradient."""
        if param not in (layer.weight, layer.bias):
            return []
        out = [("(weight sharing: the sum runs over every position (i, j) the kernel visits)",)] if self.shared else []
        if param == layer.bias:
            return out + [("computed as: ", Code(self.bias_sum))]
        batch = "summed over the batch b too" if self.shared else "summed over the batch"
        src = layer.padded or layer.source
        return out + [("computed as: ", Code(f'np.einsum("{self.weight_subscripts}", δ, windows({src})), {batch}'))]

    def describe(self, layer: Layer) -> str:
        o_n, oh, ow = layer.out_shape
        kh, kw = layer.kernel
        what = (f"conv2d: {o_n} filters of {layer.in_shape[0]}×{kh}×{kw}, shared by all {oh}×{ow} positions"
                if self.shared else
                f"locally connected: {o_n} filters of {layer.in_shape[0]}×{kh}×{kw} at each of the {oh}×{ow} "
                "positions, no sharing")
        return f"{what}; stride {layer.stride[0]}, padding {layer.padding}"

    def torch_module(self, layer) -> str:
        (kh, kw), (sh, sw) = layer.kernel, layer.stride
        bias = "" if layer.bias else ", bias=False"
        return (f"torch.nn.Conv2d({layer.in_shape[0]}, {layer.out_shape[0]}, kernel_size=({kh}, {kw}), "
                f"stride=({sh}, {sw}), padding={layer.padding}{bias})")

    def torch_params(self, layer) -> tuple:
        o, c = layer.out_shape[0], layer.in_shape[0]
        return tuple((name, attr, shape) for name, attr, shape in
                     ((layer.weight, "weight", (o, c, *layer.kernel)), (layer.bias, "bias", (o,))) if name)

    def dense_cost(self, layer) -> tuple[int, int, int]:
        (kh, kw), fout = layer.kernel, math.prod(layer.out_shape)
        window = layer.in_shape[0] * kh * kw
        kernels = layer.out_shape[0] if self.shared else fout  # one kernel per filter, or per output element
        return fout * window, kernels * window, kernels


class LocallyConnectedRule(ConvRule):
    kind = "locally_connected"
    spec_type = LocallyConnected
    shared = False
    helpers = (LOCAL_INPUT_GRAD,)
    ir_nodes = (ir.LocalForward, ir.LocalWeightGrad, ir.LocalInputGrad)
    forward_subscripts = "bcijpq,oijcpq->boij"
    weight_subscripts = "boij,bcijpq->oijcpq"
    bias_broadcast = ""  # b[o, i, j] has the output's shape
    bias_sum = "np.sum(δ, axis=0)"

    def torch_module(self, layer) -> str:
        raise NoTorchEquivalent(f"layer {layer.index} is {self.kind}, which has no torch.nn equivalent "
                                f"(weights are not shared across positions)")


def _s(name: str) -> sp.Symbol:
    return sp.Symbol(name, real=True)


CONV = ConvRule()
LOCAL = LocallyConnectedRule()

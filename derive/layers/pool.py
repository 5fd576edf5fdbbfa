"""max_pool2d and avg_pool2d on (c, h, w) volumes: no parameters, no activation.

    f[c,i,j] = max_{p,q} f_prev[c, i·sh + p − P, j·sw + q − P]              (max: padding is −∞)
    f[c,i,j] = 1/(kh·kw) · Σ_{p,q} f_prev[c, i·sh + p − P, j·sw + q − P]   (average: padded zeros count)

The average's local partial is sympy.diff of its definition, the window's deltas eliminated with
their range kept.  The maximum is not a sum SymPy can differentiate, so its rule gives the local
partial itself: ∂f[c,i,j]/∂f_prev[c,h,w] = 1[(h − i·sh + P, w − j·sw + P) = argmax], the window's
first maximum in row-major order on ties (as PyTorch picks it).  Stride defaults to the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from derive import indices as ix
from derive import names
from derive.errors import SpecError
from derive.ir import nodes as ir
from derive.layers import checks
from derive.layers.base import Input, Layer, LayerRule, Node
from derive.indices import UNPRIME, c, c_, h_, i, j, p, q, w_
from derive.tables.arrays import Helper


class WindowMax(sp.Function):
    """max over the window offsets (p, q) ∈ [0, kh) × [0, kw) of ``body``: WindowMax(body, kh, kw)."""

    nargs = 3
    is_real = True

    def _sympystr(self, printer):
        return "max_{p,q} %s" % printer._print(self.args[0])

    def _latex(self, printer):
        return r"\max_{p,q} %s" % printer._print(self.args[0])


class IsArgmax(sp.Function):
    """1[(p, q) = argmax]: the window offset (p, q) is where its maximum is (the first, row-major)."""

    nargs = 2
    is_integer = True

    def _sympystr(self, printer):
        return "1[(%s, %s) = argmax]" % tuple(printer._print(a) for a in self.args)

    def _latex(self, printer):
        return r"\mathbb{1}[(%s, %s) = \operatorname{argmax}]" % tuple(printer._print(a) for a in self.args)


@dataclass(frozen=True)
class Pool2d:
    """Pooling over kh × kw windows; ``stride`` defaults to the kernel (both sides), as in PyTorch."""

    type: str
    kernel: int | tuple[int, int]
    stride: int | tuple[int, int] | None = None
    padding: int = 0
    input: str | None = None  # the quantity it reads (default: the previous layer's output)

    @property
    def kind(self) -> str:
        return self.type


def MaxPool2d(kernel, stride=None, padding=0, input=None) -> Pool2d:  # noqa: N802 (reads as a layer type)
    return Pool2d("max_pool2d", kernel, stride, padding, input)


def AvgPool2d(kernel, stride=None, padding=0, input=None) -> Pool2d:  # noqa: N802
    return Pool2d("avg_pool2d", kernel, stride, padding, input)


# The generated code's pooling, over windows of the (padded) input; the gradients scatter back over them.
MAX_POOL = Helper("max_pool2d", '''def max_pool2d(x, kh, kw, sh, sw, pad):
    """f[b, c, i, j] = max over the kh × kw window at (i·sh − pad, j·sw − pad); the padding is −∞."""
    xpad = pad2d(x, pad, float("-inf")) if pad else x
    return xp.amax(windows(xpad, kh, kw, sh, sw), axis=(4, 5))''')

MAX_POOL_GRAD = Helper("max_pool2d_grad", '''def max_pool2d_grad(g, x, kh, kw, sh, sw, pad):
    """∂L/∂x[b, c, h, w] = Σ_{i,j} g[b, c, i, j]·1[(h − i·sh + pad, w − j·sw + pad) = argmax of window (i, j)].

    The argmax is the window's first maximum in row-major order, as PyTorch routes ties.
    """
    xpad = pad2d(x, pad, float("-inf")) if pad else x
    B, C, oh, ow = g.shape
    first = xp.argmax(windows(xpad, kh, kw, sh, sw).reshape(B, C, oh, ow, kh * kw), axis=4)
    p, q = first // kw, first % kw
    i = arange(oh, g)[:, None]
    j = arange(ow, g)[None, :]
    flat = (i * sh + p) * xpad.shape[3] + (j * sw + q)  # the maximum's position in the padded input
    gp = zeros(g, (B, C, xpad.shape[2] * xpad.shape[3]))
    scatter_add(gp, flat.reshape(B, C, -1), g.reshape(B, C, -1))  # windows overlap when the stride is below the kernel
    return gp.reshape(xpad.shape)[:, :, pad:pad + x.shape[2], pad:pad + x.shape[3]]''')

AVG_POOL = Helper("avg_pool2d", '''def avg_pool2d(x, kh, kw, sh, sw, pad):
    """f[b, c, i, j] = the mean over the kh × kw window at (i·sh − pad, j·sw − pad), padded zeros counted."""
    xpad = pad2d(x, pad) if pad else x
    return xp.mean(windows(xpad, kh, kw, sh, sw), axis=(4, 5))''')

AVG_POOL_GRAD = Helper("avg_pool2d_grad", '''def avg_pool2d_grad(g, x, kh, kw, sh, sw, pad):
    """∂L/∂x[b, c, h, w] = Σ_{i,j} g[b, c, i, j]/(kh·kw)·[(h, w) in window (i, j)]: a scatter over the offsets (p, q)."""
    B, C, oh, ow = g.shape
    gp = zeros(g, (B, C, x.shape[2] + 2 * pad, x.shape[3] + 2 * pad))
    for p in range(kh):
        for q in range(kw):
            gp[:, :, p:p + sh * oh:sh, q:q + sw * ow:sw] += g / (kh * kw)
    return gp[:, :, pad:pad + x.shape[2], pad:pad + x.shape[3]]''')


class PoolRule(LayerRule):
    kind = "max_pool2d"
    spec_type = Pool2d
    keys = ("type", "kernel", "stride", "padding")
    has_activation = False
    mode = "max"
    windowed = True
    api = (MaxPool2d, Pool2d)  # MaxPool2d(2) builds a Pool2d
    helpers = (MAX_POOL, MAX_POOL_GRAD)  # the forward's and the gradient's, in that order
    ir_nodes = (ir.MaxPool2d, ir.MaxPool2dGrad)
    rounding = "max"

    def parse(self, path: str, table: dict) -> Pool2d:
        if "kernel" not in table:
            raise SpecError(f"{path}.kernel", "missing required key; expected a positive integer or [kh, kw]")
        kwargs: dict = {"kernel": checks.pair(f"{path}.kernel", table["kernel"], "a positive integer or [kh, kw]")}
        if "stride" in table:
            kwargs["stride"] = checks.pair(f"{path}.stride", table["stride"], "a positive integer or [sh, sw]")
        if "padding" in table:
            kwargs["padding"] = checks.integer(f"{path}.padding", table["padding"])
        return Pool2d(self.kind, **kwargs)

    def resolve(self, path: str, index: int, spec: Pool2d, shape, claim, source) -> Layer:
        cin, hin, win = checks.volume(path, self.kind, shape)
        kh, kw = checks.positive_pair(f"{path}.kernel", spec.kernel, "positive kernel sizes")
        sh, sw = (kh, kw) if spec.stride is None else checks.positive_pair(f"{path}.stride", spec.stride,
                                                                           "positive strides")
        pad = checks.positive(f"{path}.padding", spec.padding, "a non-negative integer", low=0)
        if 2 * pad > min(kh, kw):
            raise SpecError(f"{path}.padding", f"expected padding at most half the kernel ({min(kh, kw) // 2}), "
                                               f"as PyTorch requires, got {pad}")
        if kh > hin + 2 * pad or kw > win + 2 * pad:
            raise SpecError(f"{path}.kernel", f"expected a kernel no larger than the padded input "
                                              f"{hin + 2 * pad}×{win + 2 * pad}, got {kh}×{kw}")
        out_shape = (cin, (hin + 2 * pad - kh) // sh + 1, (win + 2 * pad - kw) // sw + 1)
        return Layer(index, self.kind, spec, shape, out_shape, source, kernel=(kh, kw), stride=(sh, sw), padding=pad)

    def _window(self, layer: Layer, sym: dict):
        (sh, sw), pad = layer.stride, layer.padding
        return sym[layer.source][c, sh * i + p - pad, sw * j + q - pad]

    def forward(self, layer: Layer, sym: dict) -> list[Node]:
        kh, kw = layer.kernel
        (sh, sw), pad = layer.stride, layer.padding
        src = sym[layer.source]
        f = names.activation(layer.index)
        target = src[c_, h_, w_]
        if self.mode == "max":
            rhs = WindowMax(self._window(layer, sym), kh, kw)
            po, qo = h_ - sh * i + pad, w_ - sw * j + pad  # the window offset of the input position
            local = (sp.KroneckerDelta(c, c_) * IsArgmax(po, qo)
                     * ix.InRange(po, 0, kh - 1) * ix.InRange(qo, 0, kw - 1))
        else:
            rhs = sp.Mul(sp.Rational(1, kh * kw), sp.Sum(self._window(layer, sym), (p, 0, kh - 1), (q, 0, kw - 1)),
                         evaluate=False)
            local = ix.local(rhs, target, ranged=(p, q))
        limits = tuple((n, 0, size - 1) for n, size in zip((c, i, j), layer.out_shape))
        return [Node(f, sym[f][c, i, j], rhs, layer.out_shape, (c, i, j), limits,
                     (Input(layer.source, "source", target, local, UNPRIME),))]

    def _geometry(self, layer: Layer):
        (kh, kw), (sh, sw) = layer.kernel, layer.stride
        return tuple(sp.Integer(v) for v in (kh, kw, sh, sw, layer.padding, layer.index))

    def lower_forward(self, name: str, layer: Layer, net):
        node = ir.MaxPool2d if self.mode == "max" else ir.AvgPool2d
        return node(sp.Symbol(layer.source, real=True), *self._geometry(layer))

    def lower_step(self, step, layer: Layer, net, lower):
        node = ir.MaxPool2dGrad if self.mode == "max" else ir.AvgPool2dGrad
        return node(sp.Symbol(names.upstream(layer.index), real=True), sp.Symbol(layer.source, real=True),
                    *self._geometry(layer))

    def array_code(self, node, args: list[str]) -> str:
        helper = self.helpers[0] if isinstance(node, self.ir_nodes[0]) else self.helpers[1]
        return f"{helper.name}({', '.join(args)})"

    def describe(self, layer: Layer) -> str:
        (kh, kw), (sh, sw) = layer.kernel, layer.stride
        what = "max pooling" if self.mode == "max" else "average pooling"
        pad = ("" if not layer.padding else
               f", padding {layer.padding} ({'−∞' if self.mode == 'max' else 'zeros, counted in the average'})")
        return f"{what} over {kh}×{kw} windows, stride {sh}×{sw}{pad}"

    def rule_text(self, layer: Layer) -> str:
        """The lecture-style rule for the gradient at a window position (explain prints it)."""
        (kh, kw), (sh, sw) = layer.kernel, layer.stride
        at = f"{layer.source}[c, i·{sh}+p, j·{sw}+q]"
        if self.mode == "max":
            return f"∂L/∂{at} = ∂L/∂f{layer.index}[c,i,j]·1[(p, q) = argmax] (the first maximum, row-major, on ties)"
        return f"∂L/∂{at} = ∂L/∂f{layer.index}[c,i,j]/({kh}·{kw}) for every (p, q) of the window"

    def torch_module(self, layer) -> str:
        (kh, kw), (sh, sw) = layer.kernel, layer.stride
        geometry = f"kernel_size=({kh}, {kw}), stride=({sh}, {sw}), padding={layer.padding}"
        if self.mode == "max":
            return f"torch.nn.MaxPool2d({geometry})"
        return f"torch.nn.AvgPool2d({geometry}, count_include_pad=True)"  # as derive's avg_pool2d


class AvgPoolRule(PoolRule):
    kind = "avg_pool2d"
    mode = "avg"
    api = (AvgPool2d,)
    helpers = (AVG_POOL, AVG_POOL_GRAD)
    ir_nodes = (ir.AvgPool2d, ir.AvgPool2dGrad)
    rounding = "mean"


MAX = PoolRule()
AVG = AvgPoolRule()

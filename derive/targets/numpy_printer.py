"""The NumPy target's printer: readable whole-array NumPy, and the helper functions it may call."""

from __future__ import annotations

import sympy as sp
from sympy.printing.numpy import NumPyPrinter

from derive.layers.conv import CONV, LOCAL
from derive.targets.printers import _Recording


class NumpyCodePrinter(_Recording, NumPyPrinter):
    """Readable NumPy: matmuls as @, numerically safe helpers for σ, softplus, log-sum-exp."""

    target = "numpy"

    def __init__(self):
        super().__init__({"strict": True, "fully_qualified_modules": True, "order": "none"})
        self.helpers = set()

    def _module_format(self, fqn, register=True):
        return "np." + fqn.split(".", 1)[1] if fqn.startswith("numpy.") else fqn

    # elementwise functions
    def _print_sigmoid(self, e):
        return self._helper("sigmoid", *e.args)

    def _print_softplus(self, e):
        return self._helper("softplus", *e.args)

    def _print_relu(self, e):
        return "np.maximum(%s, 0)" % self._print(e.args[0])

    def _print_step(self, e):
        # 1[x > 0] in x's dtype, 0 at 0 (PyTorch's relu'(0)).  On a named array, a comparison:
        # np.heaviside gives the same values but has no SIMD loop (50-100x slower, bench/numpy_vs_torch.py).
        (x,) = e.args
        if isinstance(x, sp.Symbol):
            s = self._print(x)
            return f"({s} > 0).astype({s}.dtype)"
        return "np.heaviside(%s, 0)" % self._print(x)  # an expression (hinge's 1 − y·ŷ): one value per sample

    def _print_leaky_relu(self, e):
        x, s = (self._print(a) for a in e.args)
        return f"np.where({x} > 0, {x}, {s} * {x})"

    def _print_Min(self, e):
        a, b = e.args
        return "np.minimum(%s, %s)" % (self._print(a), self._print(b))

    # array operations of the kernel IR
    def _print_MatVec(self, e):
        w, f = e.args
        return "(%s @ %s.T)" % (self._print(f), self._print(w))

    def _print_VecMat(self, e):
        d, w = e.args
        return "(%s @ %s)" % (self._print(d), self._print(w))

    def _print_Outer(self, e):
        d, f = e.args
        return "(%s.T @ %s)" % (self._print(d), self._print(f))

    def _print_BatchSum(self, e):
        return "np.sum(%s, axis=0)" % self._print(e.args[0])

    def _print_RowSum(self, e):
        return "np.sum(%s, axis=1)" % self._print(e.args[0])

    def _print_Col(self, e):
        return "%s[:, None]" % self._print(e.args[0])

    def _print_First(self, e):
        return "%s[:, 0]" % self._print(e.args[0])

    def _print_OneHot(self, e):
        y, n, z = e.args
        self.helpers.add("onehot")
        return "onehot(%s, %s, %s.dtype)" % (self._print(y), n, self._print(z))

    def _print_ZerosLike(self, e):
        return "np.zeros_like(%s)" % self._print(e.args[0])

    def _print_FirstColumn(self, e):
        return "%s[:, 0]" % self._print(e.args[0])

    def _print_Softmax(self, e):
        return self._helper("softmax", *e.args)

    def _print_LogSumExp(self, e):
        return self._helper("logsumexp", *e.args)

    # volumes: sliding windows and einsum, the subscripts spelling the printed index formula
    def _windows(self, x, s, kh, kw) -> str:
        self.helpers.add("windows")
        return "windows(%s, %s, %s, %s)" % (self._print(x), kh, kw, s)

    def _print_Pad(self, e):
        x, pad = e.args
        return "np.pad(%s, ((0, 0), (0, 0), (%s, %s), (%s, %s)))" % (self._print(x), pad, pad, pad, pad)

    def _print_Crop(self, e):
        g, pad = e.args
        return "%s[:, :, %s:-%s, %s:-%s]" % (self._print(g), pad, pad, pad, pad)

    def _forward(self, e, subscripts, bias):
        x, w, b, s, kh, kw, _ = e.args
        out = 'np.einsum("%s", %s, %s)' % (subscripts, self._windows(x, s, kh, kw), self._print(w))
        return out if b == 0 else "%s + %s%s" % (out, self._print(b), bias)

    def _print_ConvForward(self, e):
        return self._forward(e, CONV.forward_subscripts, "[:, None, None]")

    def _print_LocalForward(self, e):
        return self._forward(e, LOCAL.forward_subscripts, "")

    def _print_ConvWeightGrad(self, e):
        d, x, s, kh, kw, _ = e.args
        return 'np.einsum("%s", %s, %s)' % (CONV.weight_subscripts, self._print(d), self._windows(x, s, kh, kw))

    def _print_LocalWeightGrad(self, e):
        d, x, s, kh, kw, _ = e.args
        return 'np.einsum("%s", %s, %s)' % (LOCAL.weight_subscripts, self._print(d), self._windows(x, s, kh, kw))

    def _print_ConvBiasGrad(self, e):
        return "np.sum(%s, axis=(0, 2, 3))" % self._print(e.args[0])

    def _print_ConvInputGrad(self, e):
        d, w, s, hh, ww, _ = e.args
        self.helpers.add("conv2d_input_grad")
        return "conv2d_input_grad(%s, %s, %s, (%s, %s))" % (self._print(d), self._print(w), s, hh, ww)

    def _print_LocalInputGrad(self, e):
        d, w, s, hh, ww, _ = e.args
        self.helpers.add("local_input_grad")
        return "local_input_grad(%s, %s, %s, (%s, %s))" % (self._print(d), self._print(w), s, hh, ww)

    # pooling: windows of the (padded) input, reduced; gradients scattered back over the windows
    def _pool(self, name, e, *lead):
        args = [self._print(a) for a in lead] + [str(a) for a in e.args[len(lead):-1]]
        return self._helper_call(name, args)

    def _helper_call(self, name, args):
        self.helpers.add(name)
        return "%s(%s)" % (name, ", ".join(args))

    def _print_MaxPool2d(self, e):
        return self._pool("max_pool2d", e, e.args[0])

    def _print_AvgPool2d(self, e):
        return self._pool("avg_pool2d", e, e.args[0])

    def _print_MaxPool2dGrad(self, e):
        return self._pool("max_pool2d_grad", e, *e.args[:2])

    def _print_AvgPool2dGrad(self, e):
        return self._pool("avg_pool2d_grad", e, *e.args[:2])

    def _print_Flatten(self, e):
        f = self._print(e.args[0])
        return "%s.reshape(%s.shape[0], -1)" % (f, f)

    def _print_Concat(self, e):
        return "%s((%s), axis=1)" % (self._concat, ", ".join(self._print(a) for a in e.args))

    _concat = "np.concatenate"

    def _print_Slice(self, e):
        g, at, size = e.args
        return "%s[:, %s:%s]" % (self._print(g), at, at + size)

    def _print_Unflatten(self, e):
        g, cc, hh, ww = e.args
        return "%s.reshape(-1, %s, %s, %s)" % (self._print(g), cc, hh, ww)


# Helper sources for the generated NumPy module, included when the printer used them.
NUMPY_HELPERS = {
    "sigmoid": '''def sigmoid(x):
    """σ(x) = 1 / (1 + e^−x), without overflow for large |x|."""
    return np.exp(-np.logaddexp(0, -x))''',
    "softplus": '''def softplus(x):
    """log(1 + e^x), without overflow for large x."""
    return np.logaddexp(0, x)''',
    "logsumexp": '''def logsumexp(z):
    """log Σ_j exp(z_j) per row, shifted by the row maximum so that nothing overflows."""
    m = np.max(z, axis=1, keepdims=True)
    return m[:, 0] + np.log(np.sum(np.exp(z - m), axis=1))''',
    "softmax": '''def softmax(z):
    """exp(z_j) / Σ_k exp(z_k) per row, shifted by the row maximum."""
    e = np.exp(z - np.max(z, axis=1, keepdims=True))
    return e / np.sum(e, axis=1, keepdims=True)''',
    "windows": '''def windows(x, kh, kw, s):
    """x[b, c, i·s + p, j·s + q] as an array indexed [b, c, i, j, p, q]: every kh × kw window at stride s (a view)."""
    return np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::s, ::s]''',
    "conv2d_input_grad": '''def conv2d_input_grad(delta, W, s, hw):
    """∂L/∂x[c, h, w] = Σ_{o,i,j} δ[o,i,j]·W[o, c, h − i·s, w − j·s]·[0 ≤ h − i·s < kh]·[0 ≤ w − j·s < kw].

    Computed as a scatter over the kernel offsets (p, q) = (h − i·s, w − j·s) that the brackets
    allow: each adds Σ_o δ[o,i,j]·W[o,c,p,q] at input position (i·s + p, j·s + q).
    """
    B, _, oh, ow = delta.shape
    _, C, kh, kw = W.shape
    g = np.zeros((B, C, *hw), dtype=delta.dtype)
    for p in range(kh):
        for q in range(kw):
            g[:, :, p:p + s * oh:s, q:q + s * ow:s] += np.einsum("boij,oc->bcij", delta, W[:, :, p, q])
    return g''',
    "local_input_grad": '''def local_input_grad(delta, W, s, hw):
    """∂L/∂x[c, h, w] = Σ_{o,i,j} δ[o,i,j]·W[o, i, j, c, h − i·s, w − j·s]·[0 ≤ h − i·s < kh]·[0 ≤ w − j·s < kw].

    A scatter over the kernel offsets (p, q), as conv2d_input_grad, with a kernel per position (i, j).
    """
    B, _, oh, ow = delta.shape
    kh, kw = W.shape[4:]
    g = np.zeros((B, W.shape[3], *hw), dtype=delta.dtype)
    for p in range(kh):
        for q in range(kw):
            g[:, :, p:p + s * oh:s, q:q + s * ow:s] += np.einsum("boij,oijc->bcij", delta, W[:, :, :, :, p, q])
    return g''',
    "max_pool2d": '''def max_pool2d(x, kh, kw, sh, sw, pad):
    """f[b, c, i, j] = max over the kh × kw window at (i·sh − pad, j·sw − pad); the padding is −∞."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf) if pad else x
    return np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw].max(axis=(4, 5))''',
    "max_pool2d_grad": '''def max_pool2d_grad(g, x, kh, kw, sh, sw, pad):
    """∂L/∂x[b, c, h, w] = Σ_{i,j} g[b, c, i, j]·1[(h − i·sh + pad, w − j·sw + pad) = argmax of window (i, j)].

    The argmax is the window's first maximum in row-major order (np.argmax), as PyTorch routes ties.
    """
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf) if pad else x
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    B, C, oh, ow = g.shape
    p, q = np.divmod(win.reshape(B, C, oh, ow, kh * kw).argmax(axis=4), kw)
    b, c, i, j = np.indices(g.shape, sparse=True)
    gp = np.zeros(xp.shape, dtype=g.dtype)
    np.add.at(gp, (b, c, i * sh + p, j * sw + q), g)  # windows overlap when the stride is below the kernel
    return gp[:, :, pad:pad + x.shape[2], pad:pad + x.shape[3]]''',
    "avg_pool2d": '''def avg_pool2d(x, kh, kw, sh, sw, pad):
    """f[b, c, i, j] = the mean over the kh × kw window at (i·sh − pad, j·sw − pad), padded zeros counted."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    return np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw].mean(axis=(4, 5))''',
    "avg_pool2d_grad": '''def avg_pool2d_grad(g, x, kh, kw, sh, sw, pad):
    """∂L/∂x[b, c, h, w] = Σ_{i,j} g[b, c, i, j]/(kh·kw)·[(h, w) in window (i, j)]: a scatter over the offsets (p, q)."""
    B, C, oh, ow = g.shape
    gp = np.zeros((B, C, x.shape[2] + 2 * pad, x.shape[3] + 2 * pad), dtype=g.dtype)
    for p in range(kh):
        for q in range(kw):
            gp[:, :, p:p + sh * oh:sh, q:q + sw * ow:sw] += g / (kh * kw)
    return gp[:, :, pad:pad + x.shape[2], pad:pad + x.shape[3]]''',
    "onehot": '''def onehot(y, n, dtype):
    """[y = j] for class indices y and columns j < n."""
    return (y[:, None] == np.arange(n)).astype(dtype)''',
}

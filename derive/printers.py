"""One SymPy code printer per target.  Target differences are data (function tables);
a ``_print_X`` method exists only where a target really spells X differently.

Both printers are strict: a SymPy node without a rule raises instead of printing a
"Not supported" comment.  Each records the helper functions it used, so a template
only includes those (the printer owns the imports).
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.pycode import PythonCodePrinter

from .errors import DerivationError


class _Recording:
    helpers: set

    def _helper(self, name: str, *args) -> str:
        self.helpers.add(name)
        return "%s(%s)" % (name, ", ".join(self._print(a) for a in args))

    def emptyPrinter(self, expr):  # noqa: N802 (SymPy's name)
        raise DerivationError(f"{self.target} printer: no rule for {type(expr).__name__} in {expr}")

    def _print_Function(self, expr):
        raise DerivationError(f"{self.target} printer: no rule for function {type(expr).__name__}")


class NumpyCodePrinter(_Recording, NumPyPrinter):
    """Readable NumPy: matmuls as @, numerically safe helpers for σ, softplus, log-sum-exp."""

    target = "numpy"

    def __init__(self):
        super().__init__({"strict": True, "fully_qualified_modules": True})
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
        return self._forward(e, "bcijpq,ocpq->boij", "[:, None, None]")

    def _print_LocalForward(self, e):
        return self._forward(e, "bcijpq,oijcpq->boij", "")

    def _print_ConvWeightGrad(self, e):
        d, x, s, kh, kw, _ = e.args
        return 'np.einsum("boij,bcijpq->ocpq", %s, %s)' % (self._print(d), self._windows(x, s, kh, kw))

    def _print_LocalWeightGrad(self, e):
        d, x, s, kh, kw, _ = e.args
        return 'np.einsum("boij,bcijpq->oijcpq", %s, %s)' % (self._print(d), self._windows(x, s, kh, kw))

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

    def _print_Flatten(self, e):
        f = self._print(e.args[0])
        return "%s.reshape(%s.shape[0], -1)" % (f, f)

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
    "onehot": '''def onehot(y, n, dtype):
    """[y = j] for class indices y and columns j < n."""
    return (y[:, None] == np.arange(n)).astype(dtype)''',
}


class TritonCodePrinter(_Recording, PythonCodePrinter):
    """Triton tiles: a batch tile of BLOCK_B rows; vectors padded to powers of two.

    ``widths`` maps every array name to its padded width (a vector's int, a matrix's
    (rows, cols)) so that contractions choose tl.dot (all sides >= 16) or
    broadcast-multiply-sum; ``real_widths`` the unpadded vector widths, for masks.
    """

    target = "triton"
    _kf = {"exp": "tl.exp", "log": "tl.log", "Abs": "tl.abs"}

    def __init__(self, widths: dict, real_widths: dict[str, int], block_b: int, dot_precision: str):
        super().__init__({"strict": True, "fully_qualified_modules": True})
        self.helpers = set()
        self.widths = widths
        self.real_widths = real_widths
        self.block_b = block_b
        self.dot_precision = dot_precision

    def _module_format(self, fqn, register=True):
        return fqn

    def _print_Function(self, e):
        name = type(e).__name__
        if name in self._kf:
            return "%s(%s)" % (self._kf[name], ", ".join(self._print(a) for a in e.args))
        return super()._print_Function(e)

    _print_exp = _print_log = _print_Abs = _print_Function

    def _print_Pow(self, e, rational=False):
        b, x = e.args
        base = self.parenthesize(b, sp.printing.precedence.PRECEDENCE["Mul"])
        if x == sp.S.Half:
            return "tl.sqrt(%s)" % self._print(b)
        if x == -sp.S.Half:
            return "(1.0 / tl.sqrt(%s))" % self._print(b)
        if x.is_Integer and 2 <= int(x) <= 4:
            return "(" + " * ".join([base] * int(x)) + ")"
        if x == -1:
            return "(1.0 / %s)" % base
        raise DerivationError(f"triton printer: no rule for the power {e}")

    def _print_Rational(self, e):
        return repr(float(e))

    _print_Half = _print_Rational

    def _print_Integer(self, e):
        return str(int(e))

    def _print_Float(self, e):
        return repr(float(e))

    def _print_sign(self, e):
        return self._helper("_sign", *e.args)

    def _print_tanh(self, e):
        return self._helper("_tanh", *e.args)

    def _print_sigmoid(self, e):
        return self._helper("_sigmoid", *e.args)

    def _print_softplus(self, e):
        return self._helper("_softplus", *e.args)

    def _print_relu(self, e):
        return "tl.maximum(%s, 0.0)" % self._print(e.args[0])

    def _print_step(self, e):
        return "tl.where(%s > 0, 1.0, 0.0)" % self._print(e.args[0])

    def _print_leaky_relu(self, e):
        x, s = (self._print(a) for a in e.args)
        return f"tl.where({x} > 0, {x}, {s} * {x})"

    def _print_Min(self, e):
        a, b = e.args
        return "tl.minimum(%s, %s)" % (self._print(a), self._print(b))

    def _dot(self, m: int, n: int, k: int) -> bool:
        return min(m, n, k) >= 16

    def _width(self, e) -> int:
        if isinstance(e, sp.Symbol):
            return self.widths[e.name]
        if type(e).__name__ == "Col":
            return 1
        raise DerivationError(f"triton printer: cannot tell the width of {e}")

    def _dot_call(self, a: str, b: str) -> str:
        return f'tl.dot({a}, {b}, input_precision="{self.dot_precision}")'

    def _print_MatVec(self, e):
        w, f = e.args
        n_out, n_in = self.widths[w.name]
        fs, ws = self._print(f), self._print(w)
        if self._dot(self.block_b, n_out, n_in):
            return self._dot_call(fs, f"tl.trans({ws})")
        return f"tl.sum(({fs})[:, None, :] * {ws}[None, :, :], axis=2)"

    def _print_VecMat(self, e):
        d, w = e.args
        n_out, n_in = self.widths[w.name]
        ds, ws = self._print(d), self._print(w)
        if self._dot(self.block_b, n_out, n_in):
            return self._dot_call(ds, ws)
        return f"tl.sum(({ds})[:, :, None] * {ws}[None, :, :], axis=1)"

    def _print_Outer(self, e):
        d, f = e.args
        m, k = self._width(d), self._width(f)
        ds, fs = self._print(d), self._print(f)
        if self._dot(m, k, self.block_b):
            return self._dot_call(f"tl.trans({ds})", fs)
        return f"tl.sum(({ds})[:, :, None] * ({fs})[:, None, :], axis=0)"

    def _print_BatchSum(self, e):
        return "tl.sum(%s, axis=0)" % self._print(e.args[0])

    def _print_RowSum(self, e):
        body, n = e.args
        return "tl.sum(tl.where(cmask_%d[None, :], %s, 0.0), axis=1)" % (int(n), self._print(body))

    def _print_Col(self, e):
        return "%s[:, None]" % self._print(e.args[0])

    def _print_First(self, e):
        return "tl.sum(%s, axis=1)" % self._print(e.args[0])  # width 1: the sum is the element

    def _print_OneHot(self, e):
        y, n, _ = e.args
        return "tl.where(%s[:, None] == cols_%d[None, :], 1.0, 0.0)" % (self._print(y), int(n))

    def _print_ZerosLike(self, e):
        return "(%s * 0.0)" % self._print(e.args[0])

    def _print_FirstColumn(self, e):
        return "tl.sum(%s, axis=1)" % self._print(e.args[0])  # a (rows, 1) tile: the sum is the column

    def _n_of(self, z) -> int:
        return self.real_widths[z.name]

    def _print_Softmax(self, e):
        (z,) = e.args
        self.helpers.add("_softmax")
        return "_softmax(%s, cmask_%d[None, :])" % (self._print(z), self._n_of(z))

    def _print_LogSumExp(self, e):
        (z,) = e.args
        self.helpers.add("_logsumexp")
        return "_logsumexp(%s, cmask_%d[None, :])" % (self._print(z), self._n_of(z))

    # volumes: the layer's helper kernels (derive/codegen_volume.py), called by name
    volume_calls: dict = {}

    def _volume_call(self, layer, what: str) -> str:
        try:
            return self.volume_calls[int(layer)][what]
        except KeyError:
            raise DerivationError(f"triton printer: no helper for layer {layer}'s {what}") from None

    def _print_ConvForward(self, e):
        return self._volume_call(e.args[-1], "forward")

    _print_LocalForward = _print_ConvForward

    def _print_ConvWeightGrad(self, e):
        return self._volume_call(e.args[-1], "weight")

    _print_LocalWeightGrad = _print_ConvWeightGrad

    def _print_ConvBiasGrad(self, e):
        return self._volume_call(e.args[-1], "bias")

    def _print_ConvInputGrad(self, e):
        return self._volume_call(e.args[-1], "input")

    _print_LocalInputGrad = _print_ConvInputGrad

    def _print_Crop(self, e):
        # ∂L/∂x from δ directly: the gather runs in unpadded coordinates
        try:
            return self.volume_calls[str(e.args[0])]
        except KeyError:
            raise DerivationError(f"triton printer: no gather for {e}") from None

    def _print_Flatten(self, e):
        return self._print(e.args[0])  # a volume tile is already flat, in C order

    def _print_Unflatten(self, e):
        return self._print(e.args[0])


TRITON_HELPERS = {
    "_sigmoid": '''@triton.jit
def _sigmoid(x):
    # σ(x) from e^−|x| ≤ 1: never overflows
    z = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))''',
    "_tanh": '''@triton.jit
def _tanh(x):
    # no libdevice tanh under the interpreter; from e^−2|x| ≤ 1, which never overflows
    z = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - z) / (1.0 + z)
    return tl.where(x >= 0, t, -t)''',
    "_softplus": '''@triton.jit
def _softplus(x):
    # log(1 + e^x) = max(x, 0) + log(1 + e^−|x|)
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))''',
    "_sign": '''@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))''',
    "_logsumexp": '''@triton.jit
def _logsumexp(z, mask):
    # per row, over the valid columns only, shifted by the row maximum
    m = tl.max(tl.where(mask, z, -float("inf")), axis=1)
    e = tl.where(mask, tl.exp(z - m[:, None]), 0.0)
    return m + tl.log(tl.sum(e, axis=1))''',
    "_softmax": '''@triton.jit
def _softmax(z, mask):
    m = tl.max(tl.where(mask, z, -float("inf")), axis=1)
    e = tl.where(mask, tl.exp(z - m[:, None]), 0.0)
    return e / tl.sum(e, axis=1)[:, None]''',
}


class HostPrinter(PythonCodePrinter):
    """Plain Python for the host scalars of an optimizer step (η_t = lr/√t, 1 − β^t)."""

    def __init__(self):
        super().__init__({"strict": True, "fully_qualified_modules": True})

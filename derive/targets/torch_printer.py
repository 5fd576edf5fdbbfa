"""The torch target's printer: the NumPy spelling of the kernel IR where torch spells it the same
(``f @ W.T``, ``d.T @ f``, ``x[:, None]``, reshapes), torch's own where it differs (``dim=``,
``.to(dtype)``, ``F.pad``, ``unfold``), and the helper functions it may call.

Every gradient node is printed as derive derived it (a contraction, a scatter over kernel
offsets), never as a call into torch.autograd; only the forward convolution uses torch's
conv2d, with the same index formula as the printed comment.
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.precedence import precedence

from derive.ir.nodes import IRNode, MatVec, OneHot
from derive.layers.conv import CONV, LOCAL
from derive.tables.functions import step
from derive.targets.numpy_printer import NumpyCodePrinter


class ReluGradInPlace(IRNode):
    """ReluGradInPlace(g, f) = g·step(f), written over g (the caller checked that nothing else reads g)."""

    nargs = 2


class TorchCodePrinter(NumpyCodePrinter):
    """Whole-batch torch: same names and layout as the NumPy module, on tensors."""

    target = "torch"
    _concat = "torch.cat"

    def _module_format(self, fqn, register=True):
        # SymPy's NumPy printer asks for numpy.exp, numpy.tanh, …: torch has the same names.
        return "torch." + fqn.split(".", 1)[1] if fqn.startswith("numpy.") else fqn

    def _print_relu(self, e):
        return "torch.relu(%s)" % self._print(e.args[0])

    def _print_sigmoid(self, e):
        return "torch.sigmoid(%s)" % self._print(e.args[0])  # stable for large |x|

    def _print_step(self, e):
        # 1[x > 0] in x's dtype, 0 at 0 (PyTorch's relu'(0)), as sign(relu(x)): two vectorised float
        # ops, where a comparison makes a bool tensor that is slower to write and to read back
        return "torch.sign(torch.relu(%s))" % self._print(e.args[0])

    def _print_Mul(self, e):
        # g·step(a), relu's backward, in one pass that writes one tensor (PyTorch's own relu backward):
        # sign(relu(a))·g writes three, and on the CPU each fresh tensor costs more than its arithmetic
        steps = [f for f in e.args if isinstance(f, step)]
        rest = [f for f in e.args if not isinstance(f, step)]
        if len(steps) == 1 and {s.name for f in rest for s in f.free_symbols} - {"_scale"}:  # g a tensor, not a number
            self.helpers.add("_relu_grad")
            return "_relu_grad(%s, %s, 0)" % (self._print(e.func(*rest)), self._print(steps[0].args[0]))
        return super()._print_Mul(e)

    def _print_ReluGradInPlace(self, e):
        self.helpers.add("_relu_grad_")
        return "_relu_grad_(%s, %s)" % (self._print(e.args[0]), self._print(e.args[1]))

    def _print_leaky_relu(self, e):
        x, s = (self._print(a) for a in e.args)
        return f"torch.where({x} > 0, {x}, {s} * {x})"

    def _print_Min(self, e):
        a, b = e.args
        if a.is_Number or b.is_Number:  # torch.minimum takes tensors only
            n, t = (a, b) if a.is_Number else (b, a)
            return "torch.clamp(%s, max=%s)" % (self._print(t), self._print(n))
        return "torch.minimum(%s, %s)" % (self._print(a), self._print(b))

    def _print_Max(self, e):
        a, b = e.args
        if a.is_Number or b.is_Number:
            n, t = (a, b) if a.is_Number else (b, a)
            return "torch.clamp(%s, min=%s)" % (self._print(t), self._print(n))
        return "torch.maximum(%s, %s)" % (self._print(a), self._print(b))

    def _print_sign(self, e):
        return "torch.sign(%s)" % self._print(e.args[0])

    def _print_Abs(self, e):
        return "torch.abs(%s)" % self._print(e.args[0])

    def _print_Add(self, e):
        # a dense layer's b + W·f as one addmm, as torch.nn.Linear runs it (no second pass for the bias)
        terms = e.args
        if len(terms) == 2 and any(isinstance(t, MatVec) for t in terms):
            mv, b = terms if isinstance(terms[0], MatVec) else terms[::-1]
            if isinstance(b, sp.Symbol):
                w, f = mv.args
                return "torch.addmm(%s, %s, %s.T)" % (self._print(b), self._print(f), self._print(w))
        return self._signed_sum(e)

    def _signed_sum(self, e):
        """SymPy's sum with a positive term first where there is one: ``softmax(z) - onehot(y, z)``
        rather than ``-onehot(y, z) + softmax(z)``, whose leading minus is one more pass over a tensor."""
        terms = list(self._as_ordered_terms(e))
        first = next((t for t in terms if not t.could_extract_minus_sign()), None)
        if first is not None:
            terms.remove(first)
            terms.insert(0, first)
        prec = precedence(e)
        parts = []
        for term in terms:
            t = self._print(term)
            sign = "+"
            if t.startswith("-") and not term.is_Add:
                sign, t = "-", t[1:]
            parts += [sign, "(%s)" % t if precedence(term) < prec or term.is_Add else t]
        sign = parts.pop(0)
        return ("" if sign == "+" else sign) + " ".join(parts)

    def _print_BatchSum(self, e):
        return "torch.sum(%s, dim=0)" % self._print(e.args[0])

    def _print_RowSum(self, e):
        # Σ_j z_j·[y = j] over the logits z is z_y: one gather instead of a one-hot row, a product and a sum
        body = e.args[0]
        if isinstance(body, sp.Mul) and len(body.args) == 2:
            hot = [f for f in body.args if isinstance(f, OneHot)]
            z = [f for f in body.args if isinstance(f, sp.Symbol)]
            if hot and z and hot[0].args[2] == z[0]:
                return "torch.gather(%s, 1, %s[:, None])[:, 0]" % (self._print(z[0]), self._print(hot[0].args[0]))
        return "torch.sum(%s, dim=1)" % self._print(body)

    def _print_OneHot(self, e):
        y, _, z = e.args  # z: the logits, whose shape and dtype the row takes
        self.helpers.add("onehot")
        return "onehot(%s, %s)" % (self._print(y), self._print(z))

    def _print_SoftmaxMinusOneHot(self, e):
        log_p, y, s = e.args
        self.helpers.add("_softmax_minus_onehot")
        return "_softmax_minus_onehot(%s, %s, %s)" % (self._print(log_p), self._print(y), self._print(s))

    def _print_ZerosLike(self, e):
        return "torch.zeros_like(%s)" % self._print(e.args[0])

    # volumes: unfold windows and einsum, the subscripts spelling the printed index formula
    def _windows(self, x, s, kh, kw) -> str:
        self.helpers.add("windows")
        return "windows(%s, %s, %s, %s)" % (self._print(x), kh, kw, s)

    def _print_Pad(self, e):
        x, pad = e.args
        return "F.pad(%s, (%s, %s, %s, %s))" % (self._print(x), pad, pad, pad, pad)

    def _print_ConvForward(self, e):
        # the same sum as the comment above it, as torch's conv2d (the input is already padded)
        x, w, b, s, _, _, _ = e.args
        bias = "None" if b == 0 else self._print(b)
        return "F.conv2d(%s, %s, %s, stride=%s)" % (self._print(x), self._print(w), bias, s)

    def _print_LocalForward(self, e):
        x, w, b, s, kh, kw, _ = e.args
        out = 'torch.einsum("%s", %s, %s)' % (LOCAL.forward_subscripts, self._windows(x, s, kh, kw), self._print(w))
        return out if b == 0 else "%s + %s" % (out, self._print(b))

    def _print_ConvWeightGrad(self, e):
        d, x, s, kh, kw, _ = e.args
        return 'torch.einsum("%s", %s, %s)' % (CONV.weight_subscripts, self._print(d), self._windows(x, s, kh, kw))

    def _print_LocalWeightGrad(self, e):
        d, x, s, kh, kw, _ = e.args
        return 'torch.einsum("%s", %s, %s)' % (LOCAL.weight_subscripts, self._print(d), self._windows(x, s, kh, kw))

    def _print_ConvBiasGrad(self, e):
        return "torch.sum(%s, dim=(0, 2, 3))" % self._print(e.args[0])


# Helper sources for the generated torch module, included when the printer used them.
TORCH_HELPERS = {
    "_relu_grad": '''# g·1[x > 0] in one pass, PyTorch's own relu backward: _relu_grad(g, x, 0) (0 at x = 0)
_relu_grad = torch.ops.aten.threshold_backward.default''',
    "_relu_grad_": '''def _relu_grad_(g, x):
    """g·1[x > 0] written over g, which nothing else reads: PyTorch's relu backward with g as its output
    (an elementwise op may write over its own input), one tensor fewer per relu layer."""
    return torch.ops.aten.threshold_backward.grad_input(g, x, 0, grad_input=g)''',
    "softplus": '''def softplus(x):
    """log(1 + e^x), without overflow for large x (F.softplus would switch to x above 20)."""
    return torch.logaddexp(x, torch.zeros_like(x))''',
    "logsumexp": '''def logsumexp(z):
    """log Σ_j exp(z_j) per row, shifted by the row maximum so that nothing overflows (an
    infinite maximum shifts by 0, as torch.logsumexp does, whose nine passes this does in seven)."""
    m = torch.amax(z, dim=1, keepdim=True).nan_to_num(0.0, 0.0, 0.0)
    return torch.log(torch.sum(torch.exp(z - m), dim=1)) + m[:, 0]''',
    "softmax": '''def softmax(z):
    """exp(z_j) / Σ_k exp(z_k) per row, shifted by the row maximum.  torch.softmax's CPU kernel
    runs a row shorter than one 16-float vector element by element (256 × 10: 57 µs, against
    19 µs for these four vectorised passes); from 16 classes on it is the faster one."""
    if z.shape[1] >= 16 or z.is_cuda:
        return torch.softmax(z, dim=1)
    e = torch.exp(z - torch.amax(z, dim=1, keepdim=True))
    return e / torch.sum(e, dim=1, keepdim=True)''',
    "windows": '''def windows(x, kh, kw, s):
    """x[b, c, i·s + p, j·s + q] as a tensor indexed [b, c, i, j, p, q]: every kh × kw window at stride s (a view)."""
    return x.unfold(2, kh, s).unfold(3, kw, s)''',
    "conv2d_input_grad": '''def conv2d_input_grad(delta, W, s, hw):
    """∂L/∂x[c, h, w] = Σ_{o,i,j} δ[o,i,j]·W[o, c, h − i·s, w − j·s]·[0 ≤ h − i·s < kh]·[0 ≤ w − j·s < kw].

    Computed as a scatter over the kernel offsets (p, q) = (h − i·s, w − j·s) that the brackets
    allow: each adds Σ_o δ[o,i,j]·W[o,c,p,q] at input position (i·s + p, j·s + q).
    """
    B, _, oh, ow = delta.shape
    _, C, kh, kw = W.shape
    g = delta.new_zeros((B, C, *hw))
    for p in range(kh):
        for q in range(kw):
            g[:, :, p:p + s * oh:s, q:q + s * ow:s] += torch.einsum("boij,oc->bcij", delta, W[:, :, p, q])
    return g''',
    "local_input_grad": '''def local_input_grad(delta, W, s, hw):
    """∂L/∂x[c, h, w] = Σ_{o,i,j} δ[o,i,j]·W[o, i, j, c, h − i·s, w − j·s]·[0 ≤ h − i·s < kh]·[0 ≤ w − j·s < kw].

    A scatter over the kernel offsets (p, q), as conv2d_input_grad, with a kernel per position (i, j).
    """
    B, _, oh, ow = delta.shape
    kh, kw = W.shape[4:]
    g = delta.new_zeros((B, W.shape[3], *hw))
    for p in range(kh):
        for q in range(kw):
            g[:, :, p:p + s * oh:s, q:q + s * ow:s] += torch.einsum("boij,oijc->bcij", delta, W[:, :, :, :, p, q])
    return g''',
    "max_pool2d": '''def max_pool2d(x, kh, kw, sh, sw, pad):
    """f[b, c, i, j] = max over the kh × kw window at (i·sh − pad, j·sw − pad); the padding is −∞."""
    xp = F.pad(x, (pad, pad, pad, pad), value=float("-inf")) if pad else x
    return xp.unfold(2, kh, sh).unfold(3, kw, sw).amax(dim=(4, 5))''',
    "max_pool2d_grad": '''def max_pool2d_grad(g, x, kh, kw, sh, sw, pad):
    """∂L/∂x[b, c, h, w] = Σ_{i,j} g[b, c, i, j]·1[(h − i·sh + pad, w − j·sw + pad) = argmax of window (i, j)].

    The argmax is the window's first maximum in row-major order (torch.argmax), as PyTorch routes ties.
    """
    xp = F.pad(x, (pad, pad, pad, pad), value=float("-inf")) if pad else x
    B, C, oh, ow = g.shape
    first = xp.unfold(2, kh, sh).unfold(3, kw, sw).reshape(B, C, oh, ow, kh * kw).argmax(dim=4)
    p, q = first // kw, first % kw
    i = torch.arange(oh, device=g.device)[:, None]
    j = torch.arange(ow, device=g.device)[None, :]
    flat = (i * sh + p) * xp.shape[3] + (j * sw + q)  # the maximum's position in the padded input
    gp = g.new_zeros((B, C, xp.shape[2] * xp.shape[3]))
    gp.scatter_add_(2, flat.reshape(B, C, -1), g.reshape(B, C, -1))  # windows overlap when the stride is below the kernel
    return gp.reshape(xp.shape)[:, :, pad:pad + x.shape[2], pad:pad + x.shape[3]]''',
    "avg_pool2d": '''def avg_pool2d(x, kh, kw, sh, sw, pad):
    """f[b, c, i, j] = the mean over the kh × kw window at (i·sh − pad, j·sw − pad), padded zeros counted."""
    xp = F.pad(x, (pad, pad, pad, pad)) if pad else x
    return xp.unfold(2, kh, sh).unfold(3, kw, sw).mean(dim=(4, 5))''',
    "avg_pool2d_grad": '''def avg_pool2d_grad(g, x, kh, kw, sh, sw, pad):
    """∂L/∂x[b, c, h, w] = Σ_{i,j} g[b, c, i, j]/(kh·kw)·[(h, w) in window (i, j)]: a scatter over the offsets (p, q)."""
    B, C, oh, ow = g.shape
    gp = g.new_zeros((B, C, x.shape[2] + 2 * pad, x.shape[3] + 2 * pad))
    for p in range(kh):
        for q in range(kw):
            gp[:, :, p:p + sh * oh:sh, q:q + sw * ow:sw] += g / (kh * kw)
    return gp[:, :, pad:pad + x.shape[2], pad:pad + x.shape[3]]''',
    "_softmax_minus_onehot": '''def _softmax_minus_onehot(log_p, y, s):
    """s·(softmax(z) − onehot(y, z)) from log_p = log softmax(z): softmax as exp(log_p), the one-hot's
    1 subtracted only where y points (no one-hot matrix), the scale applied in place (one fresh tensor)."""
    return torch.exp(log_p).scatter_(1, y[:, None], -1.0, reduce="add").mul_(s)''',
    "onehot": '''def onehot(y, z):
    """[y = j] for class indices y (int64) and the columns j of the logits z, in z's dtype."""
    return torch.zeros_like(z).scatter_(1, y[:, None], 1.0)''',
}

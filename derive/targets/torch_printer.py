"""The torch target's printer: the NumPy spelling of the kernel IR where torch spells it the same
(``x[:, None]``, reshapes), torch's own where it differs (``torch.mm``, ``dim=``,
``F.pad``, ``F.conv2d``), the array primitives of tables/arrays.py in torch, and the helpers written for
torch alone.

Every gradient node is printed as derive derived it (a contraction, a scatter over kernel
offsets), never as a call into torch.autograd; only the forward convolution uses torch's
conv2d, with the same index formula as the printed comment.
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.precedence import precedence

from derive.ir.nodes import IRNode, MatVec, OneHot
from derive.tables.arrays import PRIMITIVES
from derive.tables.functions import step
from derive.targets.numpy_printer import NumpyCodePrinter


# The primitives of tables/arrays.py in torch: each keeps its result on its input's device.
TORCH_PRIMITIVES = {
    "zeros": '''def zeros(like, shape):
    """Zeros of the given shape in like's dtype, on its device."""
    return like.new_zeros(shape)''',
    "pad2d": '''def pad2d(x, pad, value=0.0):
    """x with pad rows and columns of value on both sides of its last two axes."""
    return F.pad(x, (pad, pad, pad, pad), value=value)''',
    "windows": '''def windows(x, kh, kw, sh, sw):
    """x[b, c, i·sh + p, j·sw + q] as a tensor indexed [b, c, i, j, p, q]: every kh × kw window (a view)."""
    return x.unfold(2, kh, sh).unfold(3, kw, sw)''',
    "arange": '''def arange(n, like):
    """0, 1, …, n − 1 on like's device."""
    return torch.arange(n, device=like.device)''',
    "scatter_add": '''def scatter_add(target, index, values):
    """target[b, c, index[b, c, k]] += values[b, c, k], repeated indices adding up."""
    target.scatter_add_(2, index, values)''',
}
assert set(TORCH_PRIMITIVES) == set(PRIMITIVES)

# Helpers the torch module alone defines, for speed on the CPU (the MLP's step, bench/torch_cpu.py); each
# says why.  softmax replaces the one written for both libraries (tables/functions.py) by name.
TORCH_OWN = {
    "_relu_grad": '''# g·1[x > 0] in one pass, PyTorch's own relu backward: _relu_grad(g, x, 0) (0 at x = 0)
_relu_grad = torch.ops.aten.threshold_backward.default''',
    "_relu_grad_": '''def _relu_grad_(g, x):
    """g·1[x > 0] written over g, which nothing else reads: PyTorch's relu backward with g as its output
    (an elementwise op may write over its own input), one tensor fewer per relu layer."""
    return torch.ops.aten.threshold_backward.grad_input(g, x, 0, grad_input=g)''',
    "softmax": '''def softmax(z):
    """exp(z_j) / Σ_k exp(z_k) per row, shifted by the row maximum.  torch.softmax's CPU kernel
    runs a row shorter than one 16-float vector element by element (256 × 10: 57 µs, against
    19 µs for these four vectorised passes); from 16 classes on it is the faster one."""
    if z.shape[1] >= 16 or z.is_cuda:
        return torch.softmax(z, dim=1)
    e = torch.exp(z - torch.amax(z, dim=1, keepdim=True))
    return e / torch.sum(e, dim=1, keepdim=True)''',
    "_softmax_minus_onehot": '''def _softmax_minus_onehot(log_p, y, s):
    """s·(softmax(z) − onehot(y, z)) from log_p = log softmax(z): softmax as exp(log_p), the one-hot's
    1 subtracted only where y points (no one-hot matrix), the scale applied in place (one fresh tensor)."""
    return torch.exp(log_p).scatter_(1, y[:, None], -1.0, reduce="add").mul_(s)''',
}


class ReluGradInPlace(IRNode):
    """ReluGradInPlace(g, f) = g·step(f), written over g (the caller checked that nothing else reads g)."""

    nargs = 2


class TorchCodePrinter(NumpyCodePrinter):
    """Whole-batch torch: same names and layout as the NumPy module, on tensors."""

    target = "torch"
    module = "torch"
    primitives = TORCH_PRIMITIVES
    own = TORCH_OWN
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
                return "torch.addmm(%s, %s, %s.t())" % (self._print(b), self._print(f), self._print(w))
        return self._signed_sum(e)

    # the dense contractions as torch.mm over .t() views: ``@`` and ``.T`` each add a Python-level
    # dispatch (matmul's shape logic, numpy_T) to the same BLAS call, a few µs a call on every step
    def _print_MatVec(self, e):
        w, f = e.args
        return "torch.mm(%s, %s.t())" % (self._print(f), self._print(w))

    def _print_VecMat(self, e):
        d, w = e.args
        return "torch.mm(%s, %s)" % (self._print(d), self._print(w))

    def _print_Outer(self, e):
        d, f = e.args
        return "torch.mm(%s.t(), %s)" % (self._print(d), self._print(f))

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

    def _print_SoftmaxMinusOneHot(self, e):
        log_p, y, s = e.args
        self.helpers.add("_softmax_minus_onehot")
        return "_softmax_minus_onehot(%s, %s, %s)" % (self._print(log_p), self._print(y), self._print(s))

    def _print_ZerosLike(self, e):
        return "torch.zeros_like(%s)" % self._print(e.args[0])

    # volumes
    def _print_Pad(self, e):
        x, pad = e.args
        return "F.pad(%s, (%s, %s, %s, %s))" % (self._print(x), pad, pad, pad, pad)

    def _print_ConvForward(self, e):
        # the same sum as the comment above it, as torch's conv2d kernel (the input is already padded), in
        # place of the einsum over windows the conv2d rule gives
        x, w, b, s, _, _, _ = e.args
        bias = "None" if b == 0 else self._print(b)
        return "F.conv2d(%s, %s, %s, stride=%s)" % (self._print(x), self._print(w), bias, s)

    def _print_ConvBiasGrad(self, e):
        return "torch.sum(%s, dim=(0, 2, 3))" % self._print(e.args[0])

"""SymPy functions for activations and the non-smooth pieces of losses.

Each derivative is given through the function's own output where the lecture writes
it that way (sigmoid: f(1 − f), tanh: 1 − f²), so the derivation can name it f_l.
Non-smooth points follow PyTorch: relu'(0) = 0, leaky/prelu'(0) = slope, |x|'(0) = 0
(SymPy's sign(0) = 0 already), the step function is 0 at 0 and its own derivative is
taken as 0 (it is zero almost everywhere; the zero-one loss relies on this).

Each function writes its own notation: ``_latex`` for derive explain's LaTeX (and SymPy's), ``_text``
for its text (derive.display), so that no printer names a function.
"""

from __future__ import annotations

import sympy as sp

from derive.tables.arrays import Helper


class step(sp.Function):
    """1[x > 0]: Heaviside with step(0) = 0, PyTorch's convention for relu'(0)."""

    is_real = True

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return sp.S.One if x > 0 else sp.S.Zero
        return None

    def fdiff(self, argindex=1):
        return sp.S.Zero  # zero almost everywhere; no gradient signal through a step

    def _latex(self, printer):  # \mathbf: \mathbb{1} has no glyph in amsfonts (it renders as ⊮)
        return r"\mathbf{1}[%s > 0]" % printer._print(self.args[0])

    def _text(self, printer):
        return f"1[{printer._print(self.args[0])} > 0]"


class sigmoid(sp.Function):
    """σ(x) = 1 / (1 + e^−x); σ' = σ(1 − σ)."""

    is_real = True
    # the function the generated code defines for it (refused as a spec name); torch prints torch.sigmoid
    helpers = (Helper("sigmoid", '''def sigmoid(x):
    """σ(x) = 1 / (1 + e^−x) = exp(−log(1 + e^−x)), without overflow for large |x|."""
    return xp.exp(-xp.logaddexp(xp.zeros_like(x), -x))'''),)

    def fdiff(self, argindex=1):
        return self * (1 - self)

    def _latex(self, printer):
        return r"\sigma(%s)" % printer._print(self.args[0])

    def _text(self, printer):
        return f"σ({printer._print(self.args[0])})"


class relu(sp.Function):
    """max(0, x); relu' = step(x), 0 at 0 as in PyTorch."""

    # relu(x) > 0 exactly where x > 0, so step(a) can be read from f = relu(a): the fused Triton kernel
    # then need not keep a live beside f from the forward pass to the backward pass
    positive_where_positive = True

    is_real = True

    def fdiff(self, argindex=1):
        return step(self.args[0])

    def _latex(self, printer):
        return r"\max(0, %s)" % printer._print(self.args[0])

    def _text(self, printer):
        return f"max(0, {printer._print(self.args[0])})"


class softplus(sp.Function):
    """log(1 + e^x); softplus' = σ(x)."""

    is_real = True
    helpers = (Helper("softplus", '''def softplus(x):
    """log(1 + e^x), without overflow for large x (torch's F.softplus would switch to x above 20)."""
    return xp.logaddexp(x, xp.zeros_like(x))'''),)

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    def _latex(self, printer):
        return r"\log(1 + e^{%s})" % printer._print(self.args[0])


class leaky_relu(sp.Function):
    """x for x > 0, s·x otherwise (s the slope: a constant for leaky_relu, a parameter for prelu).

    ∂/∂x = step(x) + s·(1 − step(x)), which is s at 0 as in PyTorch; ∂/∂s = min(0, x).
    """

    nargs = 2
    is_real = True

    def fdiff(self, argindex=1):
        x, s = self.args
        if argindex == 1:
            return step(x) + s * (1 - step(x))
        return sp.Min(0, x)

    def _latex(self, printer):
        x, s = (printer._print(a) for a in self.args)
        return r"\operatorname{lrelu}_{%s}(%s)" % (s, x)


class softmax(sp.Function):
    """softmax(z)_p = exp(z_p) / Σ_j exp(z_j), for the logits' IndexedBase z at index p."""

    nargs = 2
    is_real = True
    helpers = (Helper("softmax", '''def softmax(z):
    """exp(z_j) / Σ_k exp(z_k) per row, shifted by the row maximum."""
    e = xp.exp(z - xp.amax(z, axis=1, keepdims=True))
    return e / xp.sum(e, axis=1, keepdims=True)'''),)

    def _sympystr(self, printer):
        return "softmax(%s)[%s]" % (printer._print(self.args[0]), printer._print(self.args[1]))

    _text = _sympystr

    def _latex(self, printer):
        return r"\operatorname{softmax}(%s)_{%s}" % (printer._print(self.args[0]), printer._print(self.args[1]))


class logsumexp(sp.Function):
    """log Σ_j exp(z_j) over the whole vector z (an IndexedBase), computed stably by the generators."""

    nargs = 1
    is_real = True
    helpers = (Helper("logsumexp", '''def logsumexp(z):
    """log Σ_j exp(z_j) per row, shifted by the row maximum so that nothing overflows (an infinite
    maximum shifts by 0, as torch.logsumexp does, whose nine passes this does in seven)."""
    m = xp.nan_to_num(xp.amax(z, axis=1, keepdims=True), nan=0.0, posinf=0.0, neginf=0.0)
    return xp.log(xp.sum(xp.exp(z - m), axis=1)) + m[:, 0]'''),)

    def _latex(self, printer):
        return r"\log \sum_j e^{%s}" % printer._print(self.args[0])


# Every function here, for what reads them all (the spec names their generated helpers take).
FUNCTIONS = (step, sigmoid, relu, softplus, leaky_relu, softmax, logsumexp)


def _is_exp_sum(e, z) -> bool:
    return (
        isinstance(e, sp.Sum)
        and isinstance(e.function, sp.exp)
        and isinstance(e.function.args[0], sp.Indexed)
        and e.function.args[0].base == z
    )


def name_softmax(expr: sp.Expr, z) -> sp.Expr:
    """Rewrite exp(z_p) / Σ_j exp(z_j) as softmax(z, p) (the derived cross-entropy gradient)."""
    if not isinstance(z, sp.IndexedBase):
        return expr

    def is_ratio(e):
        return isinstance(e, sp.Mul) and any(
            isinstance(a, sp.Pow) and a.exp == -1 and _is_exp_sum(a.base, z) for a in e.args
        ) and any(isinstance(a, sp.exp) and isinstance(a.args[0], sp.Indexed) and a.args[0].base == z for a in e.args)

    def to_softmax(e):
        rest = []
        idx = None
        for a in e.args:
            if isinstance(a, sp.Pow) and a.exp == -1 and _is_exp_sum(a.base, z):
                continue
            if idx is None and isinstance(a, sp.exp) and isinstance(a.args[0], sp.Indexed) and a.args[0].base == z:
                idx = a.args[0].indices[0]
                continue
            rest.append(a)
        return sp.Mul(*rest) * softmax(z, idx)

    return expr.replace(is_ratio, to_softmax)


def name_logsumexp(expr: sp.Expr, z) -> sp.Expr:
    """Rewrite log Σ_j exp(z_j) as logsumexp(z) (the cross-entropy loss value)."""
    if not isinstance(z, sp.IndexedBase):
        return expr
    return expr.replace(
        lambda e: isinstance(e, sp.log) and _is_exp_sum(e.args[0], z), lambda e: logsumexp(z)
    )

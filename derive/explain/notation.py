"""The notation `derive explain` prints in: one text and one LaTeX printer, the same conventions.

Both printers follow the lecture: factors of a product in the order the math is written
(numbers, then the step size and other constants, then the derived δ's and ∂L/∂…, then the
rest, so that θ ← θ − η_t·∂L/∂θ), index arithmetic with the added terms first
(784·c + 28·h + w), sums written Σ_k over the index alone (no bounds, in every format), and
one minus sign (U+2212) in text.  LaTeX writes an element of a named tensor with its layer
and its indices in one subscript, W_{1,jk}, δ_{2,j}, ∂L/∂f_{2,j}, and an indicator as 𝟏[·]
(``\\mathbf{1}``: blackboard bold has no digits).

``display.text`` stays the printer of the generated code's comments (ASCII minus).
"""

from __future__ import annotations

import re

import sympy as sp
from sympy.printing.latex import LatexPrinter

from derive import display
from derive.display import _DELTA, _GRAD, name_latex  # noqa: F401 (name_latex re-exported)

_MINUS = re.compile(r"(?<![0-9]e)-")  # every minus but a float's exponent (1e-08)

_CONSTANT_NAMES = frozenset({"lr", "eta_t", "momentum", "beta1", "beta2", "rho", "eps", "t", "bc1", "bc2"})


# ----------------------------------------------------------------------------- shared conventions


def _is_index_arithmetic(expr) -> bool:
    syms = expr.free_symbols
    return bool(syms) and all(s.is_integer for s in syms) and not expr.atoms(sp.Function, sp.Indexed)


def index_terms(expr: sp.Add) -> list:
    """The terms of an index sum in the lecture's order: added terms first, then subtracted, numbers last."""
    return sorted(sp.Add.make_args(expr), key=lambda e: (e.is_Number, e.could_extract_minus_sign(),
                                                          sp.default_sort_key(-e if e.could_extract_minus_sign() else e)))


def _rank(arg) -> int:
    """The place of a factor in a printed product: number, constant (η, β, 1 − β), derived quantity, the rest."""
    if arg.is_Number:
        return 0
    names = {s.name for s in arg.free_symbols if isinstance(s, sp.Symbol)}
    names |= {str(b.label) for b in arg.atoms(sp.IndexedBase)}
    if names and names <= _CONSTANT_NAMES:
        return 1
    if names and all(_DELTA.match(n) or _GRAD.match(n) for n in names):
        return 2
    return 3


def ordered_factors(expr: sp.Mul) -> list:
    return sorted(sp.Mul.make_args(expr), key=_rank)


# ----------------------------------------------------------------------------- text


class TextPrinter(display.TextPrinter):
    """display's text printer with the lecture's factor order (η_t·∂L/∂w1, not ∂L/∂w1·η_t)."""

    def _print_Symbol(self, expr):
        return "ŷ" if expr.name == "yhat" else super()._print_Symbol(expr)

    def _print_Mul(self, expr):
        args = ordered_factors(expr)
        if list(args) != list(sp.Mul.make_args(expr)):
            expr = sp.Mul(*args, evaluate=False)
        return super()._print_Mul(expr)


def text(expr) -> str:
    with sp.core.parameters.distribute(False):
        return _MINUS.sub("−", TextPrinter().doprint(expr))


# ----------------------------------------------------------------------------- LaTeX


class LaTeXPrinter(LatexPrinter):
    # The functions written here win over their own ``_latex`` (pooling's argmax writes 𝟙 as \mathbb{1},
    # which has no digits: it renders as ⊮); any other function (a table's, a layer rule's) prints itself.
    OWN = frozenset({"InRange", "IsArgmax"})

    def _print(self, expr, **kwargs):
        name = type(expr).__name__
        if name in self.OWN:
            return getattr(self, f"_print_{name}")(expr)
        return super()._print(expr, **kwargs)

    def __init__(self):
        super().__init__({"order": "none"})

    def _indices(self, idx) -> str:
        printed = [self._print(i) for i in idx]
        if all(isinstance(i, sp.Symbol) and len(i.name) == 1 for i in idx):
            return "".join(printed)
        return ",".join(printed)

    def _print_Symbol(self, expr, style="plain"):
        return name_latex(expr.name)

    def _print_IndexedBase(self, expr):
        return name_latex(str(expr.label))

    def _print_Indexed(self, expr):
        return name_latex(str(expr.base.label), self._indices(expr.indices))

    def _print_Add(self, expr, order=None):
        if _is_index_arithmetic(expr):
            terms = index_terms(expr)
            out = self._print(terms[0])
            for e in terms[1:]:
                out += f" - {self._print(-e)}" if e.could_extract_minus_sign() else f" + {self._print(e)}"
            return out
        return super()._print_Add(display.positive_first(expr), order)

    def _print_Mul(self, expr):
        args = ordered_factors(expr)
        if list(args) != list(sp.Mul.make_args(expr)):
            expr = sp.Mul(*args, evaluate=False)
        brackets = [a for a in sp.Mul.make_args(expr) if type(a).__name__ == "InRange"]
        if brackets and len(brackets) < len(expr.args):  # a window's range conditions read last
            rest = sp.Mul(*[a for a in expr.args if a not in brackets], evaluate=False)
            return r" \, ".join([self._print(rest), *(self._print(b) for b in brackets)])
        return super()._print_Mul(expr)

    def _print_Sum(self, expr):
        idx = self._indices([lim[0] for lim in expr.limits])
        body = self._print(expr.function)
        if isinstance(expr.function, sp.Add):
            body = r"\left(%s\right)" % body
        return r"\sum_{%s} %s" % (idx, body)

    def _print_KroneckerDelta(self, expr, exp=None):
        return r"[%s = %s]" % (self._print(expr.args[0]), self._print(expr.args[1]))

    def _print_InRange(self, expr):
        e, lo, hi = (self._print(a) for a in expr.args)
        return r"[%s \le %s \le %s]" % (lo, e, hi)

    def _print_IsArgmax(self, expr):
        return r"\mathbf{1}[(%s, %s) = \operatorname{argmax}]" % tuple(self._print(a) for a in expr.args)

    def _print_Rational(self, expr):
        if expr == sp.Rational(1, 2):
            return r"\tfrac{1}{2}"
        return super()._print_Rational(expr)


def latex(expr) -> str:
    with sp.core.parameters.distribute(False):
        return LaTeXPrinter().doprint(expr)

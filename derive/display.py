"""The plain-text printer of the lecture's notation, as the generated code's comments use it.

`derive explain` prints through derive/explain/notation.py, which builds on this printer; it sits below
the stages (ir writes the generated comments with it), so that nothing before explain imports explain.

Expressions are printed with ``order="none"`` so that −(y − f3) stays as the lecture
writes it.  Names map to the lecture's symbols (delta3 -> δ3, dL_df2 -> ∂L/∂f2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sympy as sp
from sympy.printing.str import StrPrinter

_DELTA = re.compile(r"delta(\d+)\Z")
_GRAD = re.compile(r"dL_d(\w+)\Z")
_NAME = re.compile(r"([A-Za-z]+?)(\d*)(?:_(\w+))?\Z")


_GREEK = {"lr": "η0", "eta_t": "η_t", "momentum": "μ", "beta1": "β1", "beta2": "β2", "rho": "ρ", "eps": "ε",
          "theta": "θ"}
_STATE = {"Eg2": "E[g²]", "Edx2": "E[Δθ²]", "dx": "Δθ"}


def text_name(name: str) -> str:
    if name in _GREEK:
        return _GREEK[name]
    head, _, tail = name.partition("_")
    if head in _STATE:
        return f"{_STATE[head]}_{tail}" if tail else _STATE[head]
    m = _DELTA.match(name)
    if m:
        return f"δ{m.group(1)}"
    m = _GRAD.match(name)
    if m:
        return f"∂L/∂{m.group(1)}"
    return name


def factor_name(ascii_name: str) -> str:
    """'df3/da3' -> '∂f3/∂a3', 'delta3' -> 'δ3', 'dL/df3' -> '∂L/∂f3'."""
    if "/" in ascii_name:
        top, bottom = ascii_name.split("/", 1)
        return f"∂{top[1:]}/∂{bottom[1:]}"
    return text_name(ascii_name)


def positive_first(expr: sp.Add) -> sp.Add:
    """The sum with its first added term in front, the others in their order: softmax(f2)[j] − [j = y] and
    ŷ − y, as they are written by hand, rather than SymPy's −[j = y] + softmax(f2)[j] and −y + ŷ."""
    terms = list(sp.Add.make_args(expr))
    first = next((t for t in terms if not t.could_extract_minus_sign()), None)
    if first is None or first is terms[0]:
        return expr
    terms.remove(first)
    return sp.Add(first, *terms, evaluate=False)


class TextPrinter(StrPrinter):
    def __init__(self):
        super().__init__({"order": "none"})

    def _print_Symbol(self, expr):
        return text_name(expr.name)

    def _print_IndexedBase(self, expr):
        return text_name(str(expr.label))

    def _print_Indexed(self, expr):
        return "%s[%s]" % (self._print(expr.base), ",".join(self._print(i) for i in expr.indices))

    def _print_Add(self, expr, order=None):
        syms = expr.free_symbols
        if syms and all(s.is_integer for s in syms) and not expr.atoms(sp.Function, sp.Indexed):
            # index arithmetic (a conv window i·s + p, a flat position c·H·W + h·W + w): the lecture's
            # order, added terms first (h − 2·i rather than −2·i + h)
            terms = sorted(sp.Add.make_args(expr), key=lambda e: (e.is_Number, e.could_extract_minus_sign(),
                                                                  sp.default_sort_key(-e if e.could_extract_minus_sign() else e)))
            out = self._print(terms[0])
            for e in terms[1:]:
                out += f" - {self._print(-e)}" if e.could_extract_minus_sign() else f" + {self._print(e)}"
            return out
        return super()._print_Add(positive_first(expr), order)

    def _print_Sum(self, expr):
        idx = "".join(self._print(lim[0]) for lim in expr.limits)
        idx = f"{{{','.join(idx)}}}" if len(expr.limits) > 1 else idx  # Σ_{c,p,q} over a window
        body = self._print(expr.function)
        if isinstance(expr.function, sp.Add):
            body = f"({body})"
        return f"Σ_{idx} {body}"

    def _print_KroneckerDelta(self, expr):
        return "[%s = %s]" % (self._print(expr.args[0]), self._print(expr.args[1]))

    def _print_Function(self, expr):
        own = getattr(expr, "_text", None)  # a table's function writes its own notation (derive.tables.functions)
        return own(self) if own is not None else super()._print_Function(expr)

    def _print_Min(self, expr):
        return "min(%s)" % ", ".join(self._print(a) for a in expr.args)

    def _print_Rational(self, expr):
        if expr == sp.Rational(1, 2):
            return "½"
        return super()._print_Rational(expr)

    def _print_Mul(self, expr):
        brackets = [a for a in expr.args if type(a).__name__ == "InRange"]
        if brackets and len(brackets) < len(expr.args):  # a window's range conditions read last
            rest = sp.Mul(*[a for a in expr.args if a not in brackets], evaluate=False)
            return "·".join([self._print(rest), *(self._print(b) for b in brackets)])
        return super()._print_Mul(expr).replace("*", "·")

    def _print_Pow(self, expr, rational=False):
        if expr.exp == 2:
            base = self.parenthesize(expr.base, sp.printing.precedence.PRECEDENCE["Pow"])
            if "/" in base and not base.startswith("("):
                base = f"({base})"  # (∂L/∂w1)², not ∂L/∂w1²
            return f"{base}²"
        return super()._print_Pow(expr, rational).replace("**", "^")


def text(expr) -> str:
    with sp.core.parameters.distribute(False):
        return TextPrinter().doprint(expr)


# What a note is made of (a layer rule's notes, explain's prose): plain strings and these.


@dataclass(frozen=True)
class Tex:
    """A formula, written for text and for LaTeX (inline math)."""

    text: str
    tex: str


@dataclass(frozen=True)
class Code:
    text: str


# A name in LaTeX (explain's notation builds on it; a layer rule's notes use it too).
_GREEK_TEX = {"lr": r"\eta_0", "eta_t": r"\eta_t", "momentum": r"\mu", "beta1": r"\beta_1", "beta2": r"\beta_2",
              "rho": r"\rho", "eps": r"\varepsilon", "theta": r"\theta", "yhat": r"\hat{y}"}
_STATE_TEX = {"Eg2": r"E[g^2]", "Edx2": r"E[\Delta\theta^2]", "dx": r"\Delta\theta", "vel": r"\mathrm{vel}",
              "m": "m", "v": "v", "G": "G"}


def name_latex(name: str, indices: str = "") -> str:
    """A quantity's name in LaTeX, its layer number and ``indices`` in one subscript (W_{1,jk})."""
    if name in _GREEK_TEX and not indices:
        return _GREEK_TEX[name]
    m = _DELTA.match(name)
    if m:
        return r"\delta_{%s}" % _sub(m.group(1), indices)
    m = _GRAD.match(name)
    if m:
        return r"\frac{\partial L}{\partial %s}" % name_latex(m.group(1), indices)
    head, _, tail = name.partition("_")
    if head in _STATE_TEX and tail:  # an optimizer's state for one parameter: m_{W_1}
        return r"%s_{%s}" % (_STATE_TEX[head], name_latex(tail, indices))
    m = _NAME.match(name)
    if not m:
        return r"\mathrm{%s}" % name.replace("_", r"\_") + (f"_{{{indices}}}" if indices else "")
    letters, digits, suffix = m.groups()
    base = sp.latex(sp.Symbol(letters)) if len(letters) > 1 else letters
    if len(letters) > 1 and base == letters:
        base = r"\mathrm{%s}" % letters  # a word, upright (not the product of its letters)
    if suffix:
        if digits:
            base = r"%s^{\mathrm{%s}}" % (base, suffix)  # f1_pad -> f^{pad}_{1}
        else:
            digits = r"\mathrm{%s}" % suffix.replace("_", r"\_")  # a_neg -> a_{neg}
    sub = _sub(digits, indices)
    return f"{base}_{{{sub}}}" if sub else base


def _sub(layer: str, indices: str) -> str:
    return f"{layer},{indices}" if layer and indices else layer or indices

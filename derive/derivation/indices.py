"""Index notation helpers: the element indices and Kronecker-delta elimination.

SymPy's ``diff`` of an indexed ``Sum`` leaves ``KroneckerDelta`` terms and ``doit``
turns them into ``Piecewise`` range checks.  Our indices always lie in range, so the
deltas are contracted away directly (``deltasummation(..., no_piecewise=True)``).
Differentiation always targets *fresh* indices (p, q) that appear nowhere bound,
because SymPy silently mis-differentiates when a free index shares a bound index's name.
"""

from __future__ import annotations

import sympy as sp
from sympy.concrete.delta import deltasummation

i, j, k, p, q = sp.symbols("i j k p q", integer=True)


def tensor(name: str, shape: tuple[int, ...]):
    """A scalar Symbol or a real IndexedBase (real, so that |x| differentiates to sign(x))."""
    if shape:
        return sp.IndexedBase(name, real=True)
    return sp.Symbol(name, real=True)


def contract(expr: sp.Expr) -> sp.Expr:
    """Eliminate Kronecker deltas inside every Sum of ``expr`` (indices assumed in range)."""

    def one(s: sp.Sum) -> sp.Expr:
        body = s.function
        for limit in reversed(s.limits):
            body = sp.expand(body) if body.has(sp.KroneckerDelta) else body
            if body.has(sp.KroneckerDelta):
                body = deltasummation(body, limit, no_piecewise=True)
            else:
                body = sp.Sum(body, limit)
        return body

    expr = expr.replace(lambda e: isinstance(e, sp.Sum) and e.has(sp.KroneckerDelta), one)
    # a sum of zeros (the zero-one loss differentiates to one) is zero
    return expr.replace(lambda e: isinstance(e, sp.Sum) and e.function == 0, lambda e: sp.S.Zero)


def single_delta(expr: sp.Expr, bound: sp.Symbol, limits: tuple) -> sp.Expr:
    """Σ_bound expr with the deltas contracted (the gradient of a parameter element)."""
    return contract(sp.Sum(expr, (bound, *limits)))

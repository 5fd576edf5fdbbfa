"""Index notation: tensors, the one contraction every layer rule uses, and local partials by sympy.diff.

SymPy's ``diff`` of an indexed ``Sum`` leaves ``KroneckerDelta`` terms.  ``contract`` eliminates
them: [e = k·s + idx] summed over idx ∈ [lo, hi] sets idx := e − k·s.  Indices that index a
tensor of that size are in range by construction; for an index listed in ``ranged`` (a window
offset p, q) the condition is kept as an Iverson bracket ``InRange``, never dropped
(SymPy's ``deltasummation(..., no_piecewise=True)`` would drop it).

Differentiation always targets *fresh* indices that occur nowhere bound (p, q for dense layers,
primed o', c', h', w' for volumes), because SymPy silently mis-differentiates when a free index
shares a bound index's name; rules rename them back once the contraction is done.

``local`` memoizes sympy.diff on the expression's structure: layers of the same kind and shape
differ only in their names, so a 1000-deep chain asks SymPy for each distinct partial once
(its assumption queries dominate the cost of ``diff``) and renames the result.
"""

from __future__ import annotations

import sympy as sp
from sympy.core.parameters import distribute

from derive.errors import DerivationError

# Dense layers: the output index j (i when summed over), the input index k, fresh targets p, q.
# Volumes: output (o, i, j), window (c, p, q), input position (c, h, w), a flat position n.
i, j, k, p, q = sp.symbols("i j k p q", integer=True)
o, c, h, w, n = sp.symbols("o c h w n", integer=True)
# Differentiation targets of volume layers: primed, never bound anywhere, renamed by UNPRIME afterwards.
o_, i_, j_, c_, p_, q_, h_, w_ = sp.symbols("o' i' j' c' p' q' h' w'", integer=True)
UNPRIME = {o_: o, i_: i, j_: j, c_: c, p_: p, q_: q, h_: h, w_: w}


def tensor(name: str, shape: tuple[int, ...]):
    """A scalar Symbol or a real IndexedBase (real, so that |x| differentiates to sign(x))."""
    if shape:
        return sp.IndexedBase(name, real=True)
    return sp.Symbol(name, real=True)


def elem(t, *idx):
    """t[idx] for a tensor, t itself for a scalar."""
    return t[idx] if isinstance(t, sp.IndexedBase) else t


class InRange(sp.Function):
    """[lo ≤ e ≤ hi]: the Iverson bracket left by eliminating a Kronecker delta with an affine argument."""

    nargs = 3
    is_integer = True

    def _sympystr(self, printer):
        e, lo, hi = (printer._print(a) for a in self.args)
        return f"[{lo} ≤ {e} ≤ {hi}]"

    def _latex(self, printer):
        e, lo, hi = (printer._print(a) for a in self.args)
        return r"[%s \le %s \le %s]" % (lo, e, hi)


def contract(body: sp.Expr, limits, ranged=()) -> sp.Expr:
    """Σ over ``limits`` of ``body``, each Kronecker delta that fixes a summation index eliminated.

    A sum of products (a loss's derivative) is contracted term by term.  Limits without a delta
    stay as a ``Sum``; a body that is zero gives zero.
    """
    if not limits:
        return body
    with distribute(True):  # derive() turns distribution off for display; index arithmetic needs it
        if body.has(sp.KroneckerDelta):
            body = sp.expand(body)
        if isinstance(body, sp.Add):
            return sp.Add(*(_contract(term, limits, ranged) for term in body.args))
        return _contract(body, limits, ranged)


def _contract(body, limits, ranged):
    remaining = []
    for idx, lo, hi in limits:
        if body.has(sp.KroneckerDelta):
            body = sp.expand(body)
        if body == 0:
            return sp.S.Zero
        if isinstance(body, sp.Add) and body.has(sp.KroneckerDelta):
            raise DerivationError(f"index contraction: expected a product, got {body}")
        deltas = [d for d in sp.Mul.make_args(body) if isinstance(d, sp.KroneckerDelta) and idx in d.free_symbols]
        if not deltas:
            remaining.append((idx, lo, hi))
            continue
        d = min(deltas, key=lambda e: (len(e.free_symbols), sp.default_sort_key(e)))  # [w = w'] before [n = … + w]
        (value,) = sp.solve(d.args[0] - d.args[1], idx)
        body = (body / d).xreplace({idx: value})
        if idx in ranged:
            body = body * InRange(value, lo, hi)
    return sp.Sum(body, *remaining) if remaining else body


def contract_sums(expr: sp.Expr) -> sp.Expr:
    """``contract`` applied to every Sum of ``expr`` that holds a Kronecker delta (a loss's derivative)."""
    expr = expr.replace(lambda e: isinstance(e, sp.Sum) and e.has(sp.KroneckerDelta),
                        lambda e: contract(e.function, e.limits))
    # a sum of zeros (the zero-one loss differentiates to one) is zero
    return expr.replace(lambda e: isinstance(e, sp.Sum) and e.function == 0, lambda e: sp.S.Zero)


_LOCAL_MEMO: dict = {}


def local(expr: sp.Expr, target: sp.Expr, ranged=()) -> sp.Expr:
    """∂expr/∂target by sympy.diff, with the deltas of every indexed sum inside eliminated."""
    canon, back = _canonical(expr, target)
    key = (canon, ranged)
    if key not in _LOCAL_MEMO:
        c_expr, c_target = canon
        d = sp.diff(c_expr, c_target)
        d = d.replace(lambda e: isinstance(e, sp.Sum), lambda e: contract(e.function, e.limits, ranged))
        _LOCAL_MEMO[key] = d
    return _LOCAL_MEMO[key].xreplace(back)


def clear_memo() -> None:
    """Forget every memoized local partial (benchmarks time cold derivations)."""
    _LOCAL_MEMO.clear()


def _canonical(expr, target):
    """(expr, target) with every named tensor replaced by a placeholder in order of appearance, and the
    map back: the memo key under which layers that differ only in names share one derivative."""
    names: dict = {}

    def walk(e):
        if isinstance(e, sp.IndexedBase) or (isinstance(e, sp.Symbol) and not e.is_integer):
            if e not in names:
                n = len(names)
                names[e] = (sp.IndexedBase(f"_T{n}", real=True) if isinstance(e, sp.IndexedBase)
                            else sp.Symbol(f"_T{n}", real=True))
            return
        for a in e.args:
            walk(a)

    walk(expr)
    walk(target)
    return (expr.xreplace(names), target.xreplace(names)), {v: k for k, v in names.items()}

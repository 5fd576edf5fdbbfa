"""Gradients in forward quantities only: every δ substituted away (``derive explain --expand``).

For a scalar chain this is the lecture's long product; its total size grows
quadratically with depth, which is why backprop names the deltas instead.
Vector deltas are substituted at fresh bound indices (i1, i2, …) so that no bound
index ever shares a name with a free one.
"""

from __future__ import annotations

import sympy as sp

from derive.derivation.records import Derivation
from derive.errors import DeriveError
from derive.layers import rule_for


def expanded(der: Derivation) -> dict[str, sp.Expr]:
    """name -> expression without δ or ∂L/∂f symbols, for every delta and parameter gradient.

    Only chains of linear layers: other kinds (and graphs, whose ∂L/∂f sums over paths) keep their δ's named.
    """
    for li in der.network.info:
        if not rule_for(li).expandable:
            raise DeriveError(f"{der.network.name}: --expand: only for chains of linear layers; layer {li.index} is "
                              f"{li.kind} (its gradients are printed with the δ's named)")
        if li.index > 1 and li.source != f"f{li.index - 1}":
            raise DeriveError(f"{der.network.name}: --expand: only for chains of linear layers; layer {li.index} "
                              f"reads {li.source} (a graph: its gradients are printed with the δ's named)")
    out: dict[str, sp.Expr] = {}
    by_layer: dict[int, sp.Expr] = {}  # δ_l expanded, free index j
    up_by_layer: dict[int, sp.Expr] = {}
    for s in der.backward:
        if s.kind == "loss_grad":
            up_by_layer[s.layer] = s.rhs
        elif s.kind == "upstream":
            up_by_layer[s.layer] = _subst_delta(der, s.rhs, s.layer + 1, by_layer, fresh=s.layer + 1)
        elif s.kind == "delta":
            e = _subst_up(der, s.rhs, s.layer, up_by_layer)
            by_layer[s.layer] = e
            out[s.name] = e
        elif s.kind == "param":
            e = _subst_delta(der, s.rhs, s.layer, by_layer, fresh=None)
            e = _subst_up(der, e, s.layer, up_by_layer)
            out[s.name] = e
    return out


def _sym(der: Derivation, name: str):
    return der.symbols[name]


def _subst_up(der, expr, layer, up_by_layer):
    up = _sym(der, f"dL_df{layer}")
    val = up_by_layer[layer]
    if isinstance(up, sp.IndexedBase):
        return expr.replace(
            lambda e: isinstance(e, sp.Indexed) and e.base == up,
            lambda e: val.xreplace({sp.Symbol("j", integer=True): e.indices[0]}),
        )
    return expr.xreplace({up: val})


def _subst_delta(der, expr, layer, by_layer, fresh):
    d = _sym(der, f"delta{layer}")
    val = by_layer[layer]
    if not isinstance(d, sp.IndexedBase):
        return expr.xreplace({d: val})
    j = sp.Symbol("j", integer=True)
    if fresh is not None:
        # the bound index of this contraction gets a name used nowhere else
        i_old = sp.Symbol("i", integer=True)
        i_new = sp.Symbol(f"i{fresh}", integer=True)
        expr = expr.xreplace({i_old: i_new})
    return expr.replace(
        lambda e: isinstance(e, sp.Indexed) and e.base == d,
        lambda e: val.xreplace({j: e.indices[0]}),
    )



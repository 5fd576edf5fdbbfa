"""Derivation -> ``derive explain --format json``: a stable contract, self-contained and linear in size.

Every symbol an expression uses is the input, the target, a parameter, a forward quantity or
an entry of this JSON (the loss gradient, a δ, an upstream ∂L/∂f_l); every chain stops at the
quantity it re-uses, so the size grows linearly with depth.
"""

from __future__ import annotations

import json

from sympy.printing.str import StrPrinter

from derive.derivation import Derivation
from derive.derivation.expand import expanded
from derive.tables import optimizers
from derive.tables.losses import LOSS_RULES


class _JSONPrinter(StrPrinter):
    """SymPy's own string form, with the index functions whose display form (``[0 ≤ e ≤ 2]``,
    ``max_{p,q} …``, ``1[(p, q) = argmax]``) is not SymPy syntax written as calls, InRange(e, 0, 2)."""

    CALLS = frozenset({"InRange", "WindowMax", "IsArgmax"})

    def _print(self, expr, **kwargs):
        name = type(expr).__name__
        if name in self.CALLS:
            return "%s(%s)" % (name, ", ".join(self._print(a) for a in expr.args))
        return super()._print(expr, **kwargs)


_PRINTER = _JSONPrinter()


def _str(expr) -> str:
    return _PRINTER.doprint(expr)


def to_json_dict(der: Derivation, param: str | None = None, expand: bool = False) -> dict:
    net = der.network
    full = expanded(der) if expand else {}
    top = der.backward[0]
    return {
        "network": net.name,
        "input": {"name": net.input.name, "shape": list(net.input.shape)},
        "target": {"name": net.target.name, "shape": list(net.target.shape)},
        "loss": {
            "type": net.loss.type,
            "reduction": net.loss.reduction,
            "expression": _str(der.loss.rhs),
            "gradient": {"name": top.name, "expression": _str(top.rhs)},
            "note": LOSS_RULES[net.loss.type].note,
        },
        "forward": [{"name": d.name, "element": _str(d.lhs), "expression": _str(d.rhs)} for d in der.forward],
        "deltas": [
            {"name": s.name, "chain": [f.name for f in s.factors], "expression": _str(full.get(s.name, s.expression))}
            for s in der.deltas
        ],
        # ∂L/∂f_l of every layer below the top (and of a padded input): what the δ's and a prelu
        # slope's gradient below re-use
        # (a quantity several layers read: one path's term per layer, then their sum, with its "paths")
        "upstream": [_upstream(der, s) for s in der.backward if s.kind == "upstream"],
        "parameters": [
            {
                "name": s.param,
                "shape": list(s.shape),
                "element": _str(s.lhs),
                "chain": [f.name for f in s.factors],
                "factors": [_str(f.value) for f in s.factors],
                "gradient": _str(full.get(s.name, s.rhs)),
            }
            for s in der.gradients
            if param is None or s.param == param
        ],
        "optimizer": _optimizer_json(der, param),
    }


def _upstream(der: Derivation, s) -> dict:
    out = {"name": s.name, "element": _str(s.lhs), "chain": [f.name for f in s.factors], "expression": _str(s.rhs)}
    if s.terms:
        out["sum_over_paths"] = {"note": der.paths_note(s), "paths": [
            {"name": t.name, "chain": [f.name for f in t.factors], "expression": _str(t.rhs)} for t in der.paths(s)]}
    return out


def _optimizer_json(der: Derivation, param: str | None) -> dict:
    opt = der.network.optimizer
    rule = optimizers.rule_for(opt)
    out = {"type": opt.type, "schedule": opt.schedule, "hyper": opt.hyper,
           "eta_t": _str(optimizers.SCHEDULE_EXPR[opt.schedule])}
    if rule is None:
        out["note"] = "L-BFGS via scipy.optimize.minimize(method='L-BFGS-B') on the generated loss and gradient"
        return out
    out["scalars"] = [{"name": str(lhs), "expression": str(rhs)} for lhs, rhs in rule.scalars]
    out["state"] = [s.name for s in rule.state]
    out["updates"] = [
        {"param": p.name, "steps": [{"name": str(lhs), "expression": str(rhs)}
                                    for lhs, rhs in optimizers.instantiate(opt, p.name)]}
        for p in der.network.params if param is None or p.name == param
    ]
    return out


def to_json(der: Derivation, param: str | None = None, expand: bool = False, fragment: bool = False) -> str:
    return json.dumps(to_json_dict(der, param, expand), indent=2, ensure_ascii=False) + "\n"

"""`derive trace`: the lecture's loop step by step with numbers (draw, predict, backpropagate, update).

The data order and the update are derive train's own (derive/train/loop.py): epoch e visits the samples in
np.random.default_rng([seed, e]).permutation(n), batch by batch, and each update is the generated module's
apply_update at step t, so the parameters after N steps are train's after the same N steps.
"""

from __future__ import annotations

import re

import numpy as np
import sympy as sp

from derive.train.walk import walk  # re-exported: the records this module prints


def _list(v):
    return np.asarray(v, dtype=np.float64).tolist()


def record_json(rec: dict, der) -> dict:
    inter = rec["intermediates"]
    return {
        "step": rec["t"], "epoch": rec["epoch"], "samples": [int(i) for i in rec["indices"]],
        "x": _list(rec["x"]), "y": _list(rec["y"]),
        "forward": {d.name: _list(inter[d.name]) for d in der.forward if d.name in inter},
        "loss": float(rec["loss"]),
        "backward": {s.name: _list(inter[s.name]) for s in der.backward if s.name in inter},
        "update": {k: {"before": _list(rec["before"][k]), "step": _list(rec["after"][k] - rec["before"][k]),
                       "after": _list(rec["after"][k])} for k in rec["before"]},
    }


def record_text(rec: dict, der) -> str:
    from derive.evaluate import show
    from derive.display import text_name

    inter = rec["intermediates"]
    net = der.network
    one = len(rec["indices"]) == 1
    pick = (lambda v: np.asarray(v)[0]) if one else (lambda v: v)
    which = f"sample {int(rec['indices'][0]) + 1}" if one else f"samples {[int(i) + 1 for i in rec['indices']]}"
    out = [f"step {rec['t']} (epoch {rec['epoch']}, {which} of the data): "
           f"{net.input.name} = {show(pick(rec['x']))}, {net.target.name} = {show(pick(rec['y']))}",
           "  1. predict: " + ", ".join(f"{text_name(d.name)} = {show(pick(inter[d.name]))}"
                                        for d in der.forward if d.name in inter),
           f"     loss L = {show(rec['loss'])}" + ("" if one else " (the batch mean)"),
           "  2. backpropagate: " + ", ".join(
               f"{text_name(s.name)} = {show(pick(inter[s.name]) if s.kind != 'param' else inter[s.name])}"
               for s in der.backward if s.name in inter and s.kind in ("delta", "param"))]
    out += update_lines(rec, net)
    return _minus("\n".join(out))


# --------------------------------------------------------------------------- the update, as the lecture writes it


def _minus(text: str) -> str:
    """The typographic minus, as derive explain writes it, except in an exponent (1e-08)."""
    return re.sub(r"(?<![0-9]e)-", "−", text)


def _ordered(expr: sp.Expr, kinds: dict) -> sp.Expr:
    """``expr`` rebuilt unevaluated with factors and terms in the lecture's order: constants first in a
    product (η_t·∂L/∂w, μ·vel_w), the parameter first in a sum (w − η_t·∂L/∂w), ε last."""
    if expr.is_Atom:
        return expr
    args = [_ordered(a, kinds) for a in expr.args]

    def rank(e, order):
        """By the most telling symbol in ``e``: a constant-only factor or term (1 − β1, ε) is "hyper"."""
        if e.is_Number:
            return 0
        found = [order.index(kinds.get(s, "other")) for s in e.free_symbols if kinds.get(s) != "hyper"]
        return 1 + (min(found) if found else order.index("hyper"))

    if isinstance(expr, sp.Mul):
        return sp.Mul(*sorted(args, key=lambda e: rank(e, ("hyper", "other", "state", "param", "grad"))),
                      evaluate=False)
    if isinstance(expr, sp.Add):
        return sp.Add(*sorted(args, key=lambda e: rank(e, ("param", "state", "other", "grad", "hyper"))),
                      evaluate=False)
    return expr.func(*args, evaluate=False)


def _printer(env: dict):
    """derive explain's text printer, each symbol in ``env`` printed as its number."""
    from derive.evaluate import _numbers_printer

    return _numbers_printer()(env)


def update_lines(rec: dict, net) -> list[str]:
    """Step 3 of a trace record: the optimizer's rule for each parameter with the numbers put in,
    ``w ← w − η_t·∂L/∂w = 0.2739 − 0.01·(−8.544) = 0.3594``.  The values are the generated module's
    (rec["after"], rec["state_after"]); a temporary of the rule (Adadelta's Δθ) is evaluated from it."""
    from derive.evaluate import fmt, show
    from derive.display import text
    from derive.tables import optimizers as rules

    opt = net.optimizer
    rule = rules.rule_for(opt)
    hyper = opt.hyper
    t = rec["t"]
    consts = {rules.lr: hyper["lr"], rules.t: t, **{rules.H[k]: v for k, v in hyper.items() if k in rules.H}}
    const_text = "".join(f", {text(rules.H[k])} = {v:g}" for k, v in hyper.items() if k in rules.H)
    eta_expr = rules.SCHEDULE_EXPR[opt.schedule]
    eta = float(eta_expr.subs(consts))
    consts[rules.eta] = eta
    eta_line = f"η_t = {text(eta_expr)}" + ("" if eta_expr == rules.lr else f" = {_printer(consts).doprint(eta_expr)}")
    out = [_minus(f"  3. update ({opt.type}{const_text}, step t = {t}): {eta_line} = {fmt(eta)}")]
    for lhs, rhs in rule.scalars:  # Adam's bias corrections
        consts[lhs] = float(rhs.subs(consts))
        out.append(_minus(f"     {text(lhs)} = {text(rhs)} = {_printer(consts).doprint(rhs)} = {fmt(consts[lhs])}"))
    hyper_syms = set(consts)
    for p in net.params:
        name = p.name
        env = dict(consts)
        kinds = {s: "hyper" for s in hyper_syms}
        theta, grad = sp.Symbol(name, real=True), sp.Symbol(f"dL_d{name}", real=True)
        env[theta], env[grad] = np.asarray(rec["before"][name], np.float64), np.asarray(rec["grads"][name], np.float64)
        kinds[theta], kinds[grad] = "param", "grad"
        done = {s.name: rec["state_after"][s.name][name] for s in rule.state}
        for s in (*rule.state, *rule.temps):
            sym = sp.Symbol(f"{s.name}_{name}", real=True)
            kinds[sym] = "state"
            if s in rule.state:
                env[sym] = np.asarray(rec["state"][s.name][name], np.float64)
        for lhs, rhs in rules.instantiate(opt, name):
            if lhs == theta:
                value = np.asarray(rec["after"][name], np.float64)
            elif lhs.name[: -len(name) - 1] in done:
                value = np.asarray(done[lhs.name[: -len(name) - 1]], np.float64)
            else:  # a temporary, from the values just assigned
                value = np.asarray(sp.lambdify(sorted(rhs.free_symbols, key=str), rhs, "numpy")(
                    *(env[s] for s in sorted(rhs.free_symbols, key=str))), np.float64)
            shown_rhs = _ordered(rhs, kinds)
            parts = [text(lhs) + " ← " + text(shown_rhs)]
            if all(np.ndim(env[s]) == 0 for s in rhs.free_symbols):
                scalars = {s: float(v) for s, v in env.items()}
                with sp.core.parameters.distribute(False):
                    # a leading negative needs no brackets: −0.4604 − 0.01·(−0.03487)
                    parts.append(re.sub(r"\A\((-[0-9.e+-]+)\)", r"\1", _printer(scalars).doprint(shown_rhs)))
            parts.append(show(value))
            out.append(_minus("     " + " = ".join(parts)))
            env[lhs] = value
    return out

"""Derivation -> what ``derive explain`` prints: text, Markdown, LaTeX or JSON.

Each parameter shows its chain of factors (∂L/∂f3 · ∂f3/∂a3 · ∂a3/∂w3), each factor's
value as SymPy derived it, the δ it re-uses (marked), and the result.  The JSON form is
a stable contract and linear in size: every chain stops at the δ it re-uses.
"""

from __future__ import annotations

import json

import sympy as sp

from derive.explain import display

from derive.explain import volume as explain_volume
from derive.derivation import Derivation, Step
from derive.derivation.expand import expanded
from derive.tables import optimizers
from derive.tables.losses import LOSS_RULES

CHAIN_SHOWN = 9  # factors of a full chain shown before eliding the middle with "…"
EXPAND_SHOWN = 12  # deepest scalar chain whose text output also shows each gradient in forward quantities


def full_chain(der: Derivation, step: Step) -> list[str]:
    """The textbook chain from L down to this step, as ASCII factor names."""
    top = der.network.depth
    names = [f"dL/df{top}"]
    for l in range(top, step.layer, -1):
        names += [f"df{l}/da{l}", f"da{l}/df{l - 1}"]
    last = step.factors[-1].name
    if step.kind == "param" and last.startswith(f"df{step.layer}/"):
        return names + [last]  # a prelu slope acts on f directly
    names.append(f"df{step.layer}/da{step.layer}")
    return names + ([last] if step.kind == "param" else [])


def factor_label(der: Derivation, name: str, upstream: bool = False) -> str:
    """A factor name for people; on vector layers with the element indices (∂a2[i]/∂W2[j,k])."""
    if not der.network.vector:
        return display.factor_name(name)
    shapes = {f"a{li.index}": li.out_shape for li in der.network.info}
    shapes.update({f"f{li.index}": li.out_shape for li in der.network.info})
    shapes.update({p.name: p.shape for p in der.network.params})
    if name.startswith("delta"):
        vec = bool(shapes.get(f"a{name[5:]}"))
        return display.text_name(name) + ("[i]" if vec and upstream else "[j]" if vec else "")
    top, bottom = name.split("/", 1)
    top, bottom = top[1:], bottom[1:]
    crossing = top.startswith("a") and (bottom.startswith("f") or bottom in {p.name for p in der.network.params})
    t_idx = "" if top == "L" or not shapes.get(top) else ("[i]" if crossing else "[j]")
    b_shape = shapes.get(bottom, ())
    b_idx = {0: "", 1: "[j]", 2: "[j,k]"}[len(b_shape)]
    return f"∂{top}{t_idx}/∂{bottom}{b_idx}"


def _chain_text(names: list[str]) -> str:
    shown = [display.factor_name(n) for n in names]
    if len(shown) > CHAIN_SHOWN:
        shown = shown[:4] + ["…"] + shown[-4:]
    return " · ".join(shown)



def to_text(der: Derivation, param: str | None = None, expand: bool = False) -> str:
    net = der.network
    if explain_volume.has_volumes(net):  # conv2d / locally_connected / flatten: index notation per element
        return explain_volume.to_text(der, param, expand)
    lines: list[str] = []
    add = lines.append
    lines += display.header_lines(net)
    add("Forward pass (named quantities)")
    for d in der.forward:
        add(f"  {display.text(d.lhs)} = {display.text(d.rhs)}")
    add(f"  ŷ = f{net.depth}")
    add("")
    lines += display.loss_lines(der)
    add("Backward pass: each δl = ∂L/∂al is computed once and re-used by everything below it")
    # The "in forward quantities" line grows quadratically with depth (backprop's reason to name
    # the deltas): shown for short scalar chains, or for any network with --expand.
    full = expanded(der) if expand or (not net.vector and net.depth <= EXPAND_SHOWN) else {}
    for s in der.backward:
        if s.kind == "loss_grad":
            add(f"  {display.text(s.lhs)} = {display.text(s.rhs)}      (SymPy: ∂L/∂f{s.layer} of the loss)")
        elif s.kind == "delta":
            up = len(s.factors) > 2
            chain = " · ".join(factor_label(der, f.name, up) for f in s.factors)
            add(f"  {display.text(s.lhs)} = ∂L/∂a{s.layer} = {chain}")
            for f in s.factors:
                if f.reused and f.name.startswith("delta"):
                    add(f"      {factor_label(der, f.name, up)}  (re-used from above)")
                elif f.reused:
                    add(f"      {factor_label(der, f.name)} = {display.text(f.value)}  (computed above)")
                else:
                    add(f"      {factor_label(der, f.name, up)} = {display.text(f.value)}")
            add(f"    {display.text(s.lhs)} = {display.text(_delta_shown(der, s))}")
    add("")
    add("Gradients")
    for s in der.gradients:
        if param is not None and s.param != param:
            continue
        lhs = display.text(s.lhs)
        pad = " " * (len(lhs) + 2)
        add(f"  {lhs} = {_chain_text(full_chain(der, s))}")
        summed = der.network.info[s.layer - 1].vector
        over = ("Σ_i " if s.factors[0].name.startswith("delta") else "Σ_j ") if summed else ""
        add(f"{pad}= {over}{' · '.join(factor_label(der, f.name, upstream=True) for f in s.factors)}"
            f"      ({display.factor_name(s.factors[0].name)} re-used)")
        f = s.factors[1]
        add(f"      {factor_label(der, f.name)} = {display.text(f.value)}")
        add(f"{pad}= {display.text(s.rhs)}")
        if s.name in full:
            add(f"{pad}= {display.text(_ordered(der, s, full[s.name]))}      (in forward quantities)")
        matrix = matrix_form(der, s)
        if matrix:
            add(f"    matrix form: {display.text_name(s.name)} = {matrix}")
    lines += _updates_text(der, param)
    return "\n".join(lines) + "\n"


def _updates_text(der: Derivation, param: str | None) -> list[str]:
    opt = der.network.optimizer
    hyper = ", ".join(f"{display.text_name(k)} = {v:g}" for k, v in opt.hyper.items())
    out = ["", f"Parameter updates: {opt.type} ({hyper}; {opt.schedule} schedule)"]
    rule = optimizers.rule_for(opt)
    if rule is None:
        out.append("  L-BFGS: θ ← θ + α_k·p_k with p_k = −H_k·∇L from the last m (s, y) pairs (two-loop")
        out.append("  recursion) and α_k from a line search; run by scipy.optimize.minimize(method=\"L-BFGS-B\")")
        out.append("  on the generated loss and gradient (derive train).")
        return out
    out.append(f"  η_t = {display.text(optimizers.SCHEDULE_EXPR[opt.schedule])}   (t = 1, 2, … counts the steps)")
    for lhs, rhs in rule.scalars:
        out.append(f"  {display.text(lhs)} = {display.text(rhs)}")
    if rule.state:
        out.append("  state, zero at t = 0: " + ", ".join(display.text_name(s.name) for s in rule.state)
                   + " (one per parameter)")
    for p in der.network.params:
        if param is not None and p.name != param:
            continue
        for lhs, rhs in optimizers.instantiate(opt, p.name):
            out.append(f"  {display.text(lhs)} ← {display.text(rhs)}")
    return out


def _delta_shown(der: Derivation, step: Step) -> sp.Expr:
    """A scalar δ as the product of its chain, in chain order (δ3·w3·f2·(1 − f2))."""
    if der.network.vector:  # sums over the layer above: the product form would hide them
        return step.expression
    values = [sp.Symbol(f.name) if f.name.startswith("delta") else f.value for f in step.factors]
    return display.chain_product(values)


def _ordered(der: Derivation, step: Step, value: sp.Expr) -> sp.Expr:
    """For a scalar chain, the expanded product in chain order (−(y − f3)·f3·(1 − f3)·f2)."""
    if der.network.vector:
        return value
    factors = []
    for name in full_chain(der, step):
        factors.append(_factor_value(der, name))
    return display.chain_product(factors)


def _factor_value(der: Derivation, name: str) -> sp.Expr:
    for s in der.backward:
        for f in s.factors:
            if f.name == name and not f.name.startswith("delta"):
                return f.value
    raise KeyError(name)


def matrix_form(der: Derivation, step: Step) -> str | None:
    """The per-element rule in matrix notation, for vector layers."""
    li = der.network.info[step.layer - 1]
    if not li.vector or step.param is None:
        return None
    prev = der.network.input.name if step.layer == 1 else f"f{step.layer - 1}"
    if step.param == li.weight:
        return f"δ{step.layer} · {prev}ᵀ  (an outer product, summed over the batch)"
    if step.param == li.bias:
        return f"δ{step.layer}  (summed over the batch)"
    return None


def to_json_dict(der: Derivation, param: str | None = None, expand: bool = False) -> dict:
    net = der.network
    full = expanded(der) if expand else {}
    top = der.backward[0]
    out = {
        "network": net.name,
        "loss": {
            "type": net.loss.type,
            "reduction": net.loss.reduction,
            "expression": str(der.loss.rhs),
            "gradient": {"name": top.name, "expression": str(top.rhs)},
            "note": LOSS_RULES[net.loss.type].note,
        },
        "forward": [{"name": d.name, "element": str(d.lhs), "expression": str(d.rhs)} for d in der.forward],
        "deltas": [
            {
                "name": s.name,
                "chain": [f.name for f in s.factors],
                "expression": str(full.get(s.name, s.expression)),
            }
            for s in der.deltas
        ],
        "parameters": [
            {
                "name": s.param,
                "shape": list(s.shape),
                "element": str(s.lhs),
                "chain": [f.name for f in s.factors],
                "factors": [str(f.value) for f in s.factors],
                "gradient": str(full.get(s.name, s.rhs)),
            }
            for s in der.gradients
            if param is None or s.param == param
        ],
        "optimizer": _optimizer_json(der, param),
    }
    return out


def _optimizer_json(der: Derivation, param: str | None) -> dict:
    opt = der.network.optimizer
    rule = optimizers.rule_for(opt)
    out = {"type": opt.type, "schedule": opt.schedule, "hyper": opt.hyper,
           "eta_t": str(optimizers.SCHEDULE_EXPR[opt.schedule])}
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


def to_json(der: Derivation, param: str | None = None, expand: bool = False) -> str:
    return json.dumps(to_json_dict(der, param, expand), indent=2, ensure_ascii=False) + "\n"


def to_latex(der: Derivation, param: str | None = None, expand: bool = False) -> str:
    """An align* block per section: paste into slides or a LaTeX document."""
    net = der.network
    full = expanded(der) if expand else {}
    out = [f"% derive explain {net.name}: forward, deltas, gradients", r"\begin{align*}"]
    rows = [f"{display.latex(d.lhs)} &= {display.latex(d.rhs)}" for d in der.forward]
    rows.append(f"L &= {display.latex(der.loss.rhs)}")
    for s in der.backward:
        if s.kind in ("loss_grad", "delta"):
            chain = r" \cdot ".join(display.latex_factor(f.name) for f in s.factors)
            rows.append(f"{display.latex(s.lhs)} &= {chain} = {display.latex(s.expression)}")
    for s in der.gradients:
        if param is not None and s.param != param:
            continue
        chain = r" \cdot ".join(display.latex_factor(f.name) for f in s.factors)
        rows.append(
            f"{display.latex(s.lhs)} &= {chain} = {display.latex(full.get(s.name, s.rhs))}"
        )
    out.append(" \\\\\n".join(rows))
    out.append(r"\end{align*}")
    return "\n".join(out) + "\n"


def to_markdown(der: Derivation, param: str | None = None, expand: bool = False) -> str:
    net = der.network
    full = expanded(der) if expand else {}
    md = [f"# Backpropagation through `{net.name}`", "", "## Forward pass", ""]
    md += [f"- $ {display.latex(d.lhs)} = {display.latex(d.rhs)} $" for d in der.forward]
    md += ["", "## Loss", "", f"$$ L = {display.latex(der.loss.rhs)} $$", ""]
    note = LOSS_RULES[net.loss.type].note
    if note:
        md += [f"> {note}", ""]
    md += ["## Deltas (computed once, re-used below)", ""]
    for s in der.deltas:
        chain = r" \cdot ".join(display.latex_factor(f.name) for f in s.factors)
        md.append(f"- $ {display.latex(s.lhs)} = {chain} = {display.latex(s.expression)} $")
    md += ["", "## Gradients", ""]
    for s in der.gradients:
        if param is not None and s.param != param:
            continue
        chain = r" \cdot ".join(display.latex_factor(f.name) for f in s.factors)
        md.append(f"- $ {display.latex(s.lhs)} = {chain} = {display.latex(full.get(s.name, s.rhs))} $")
    return "\n".join(md) + "\n"


FORMATS = {"text": to_text, "json": to_json, "latex": to_latex, "markdown": to_markdown}

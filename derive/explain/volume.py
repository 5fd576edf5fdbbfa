"""``derive explain`` text for networks with conv2d, locally_connected and flatten layers.

Every line is a step of the derivation as SymPy produced it (the same expressions the
code generators lower), printed in index notation:

  a1[o,i,j] = Σ_cpq W1[o,c,p,q]·x_pad[c, i·s + p, j·s + q] + b1[o]
  ∂L/∂W1[o,c,p,q] = Σ_ij δ1[o,i,j]·x_pad[c, i·s + p, j·s + q]      (conv: summed over positions)
  ∂L/∂W1[o,i,j,c,p,q] = δ1[o,i,j]·x_pad[c, i·s + p, j·s + q]      (locally connected: no sum)
  ∂L/∂x_pad[c,h,w] = Σ_oij δ1[o,i,j]·W1[o,c,h − i·s,w − j·s]·[0 ≤ h − i·s ≤ kh−1]·[0 ≤ w − j·s ≤ kw−1]
"""

from __future__ import annotations

from derive.explain import display
from derive.indices import InRange
from derive.layers import rule_for
from derive.derivation.expand import expanded

# How the generated NumPy code computes each volume gradient (the einsum spells the formula).
_COMPUTED = {
    ("conv2d", "weight"): 'np.einsum("boij,bcijpq->ocpq", δ, windows(x_pad)), summed over the batch b too',
    ("conv2d", "bias"): "np.sum(δ, axis=(0, 2, 3))",
    ("locally_connected", "weight"): 'np.einsum("boij,bcijpq->oijcpq", δ, windows(x_pad)), summed over the batch',
    ("locally_connected", "bias"): "np.sum(δ, axis=0)",
}


def has_volumes(net) -> bool:
    return any(li.kind != "linear" for li in net.info)


def _describe(li) -> str:
    return rule_for(li).describe(li)


def to_text(der, param: str | None = None, expand: bool = False) -> str:
    net = der.network
    if expand:
        expanded(der)  # refuses, with a one-line error: the δ's stay named for volume networks
    t = display.text
    lines = display.header_lines(net)
    add = lines.append
    add("Forward pass (named quantities; a conv neuron at position r is h^r = Σ_ijk x^r_ijk W_ijk + b over its window)")
    noted = set()
    for d in der.forward:
        li = net.info[d.layer - 1]
        note = ""
        if li.kind != "linear" and li.index not in noted and (li.activation is None or d.name.startswith("a")):
            note = f"      ({_describe(li)})"
            noted.add(li.index)
        if li.kind != "linear" and d.name == li.padded:
            note = f"      (zero where h − {li.padding} or w − {li.padding} falls outside the input)"
        add(f"  {t(d.lhs)} = {t(d.rhs)}{note}")
    add(f"  ŷ = f{net.depth}")
    add("")
    lines += display.loss_lines(der)
    add("Backward pass: each δl = ∂L/∂al is computed once and re-used by everything below it")
    for s in der.backward:
        if s.kind == "loss_grad":
            add(f"  {t(s.lhs)} = {t(s.rhs)}      (SymPy: ∂L/∂f{s.layer} of the loss)")
        elif s.kind == "delta":
            chain = " · ".join(display.factor_name(f.name) for f in s.factors)
            add(f"  {t(s.lhs)} = {chain} = {t(s.rhs)}")
        elif s.kind == "upstream":
            d, local = s.factors
            add(f"  {t(s.lhs)} = {t(s.rhs)}")
            add(f"      {display.factor_name(local.name)} = {t(local.value)}"
                f"      ({display.factor_name(d.name)} re-used)")
            if local.value.has(InRange):
                add("      the brackets keep the kernel offset (h − i·s, w − j·s) inside the kernel: "
                    "only the windows that cover (h, w) contribute")
    add("")
    add("Gradients")
    for s in der.gradients:
        if param is not None and s.param != param:
            continue
        li = net.info[s.layer - 1]
        d, local = s.factors
        lhs = t(s.lhs)
        pad = " " * (len(lhs) + 2)
        if li.kind == "linear":
            add(f"  {lhs} = {display.factor_name(d.name)} · {display.factor_name(local.name)}"
                f"      ({display.factor_name(d.name)} re-used)")
            add(f"      {display.factor_name(local.name)} = {t(local.value)}")
            add(f"{pad}= {t(s.rhs)}")
            add("    summed over the batch")
            continue
        # ∂L/∂θ = Σ over the output elements that θ reaches of δ · ∂a/∂θ: every position for a shared
        # kernel (conv2d), the one position it belongs to for a locally connected kernel
        a_el = t(s.factors[0].value).replace(display.text_name(d.name), f"a{li.index}", 1)
        label = f"∂{a_el}/∂{lhs.split('/∂', 1)[1]}"
        over = "Σ_{i,j} " if li.kind == "conv2d" else ""
        add(f"  {lhs} = {over}{t(d.value)} · {label}      ({display.factor_name(d.name)} re-used)")
        add(f"      {label} = {t(local.value)}")
        add(f"{pad}= {t(s.rhs)}")
        role = "weight" if s.param == li.weight else "bias"
        if li.kind == "conv2d":
            add(f"{pad}  (weight sharing: the sum runs over every position (i, j) the kernel visits)")
        src = li.padded or (net.input.name if li.index == 1 else f"f{li.index - 1}")
        add(f"    computed as: {_COMPUTED[(li.kind, role)].replace('x_pad', src)}")
    return "\n".join(lines) + "\n"

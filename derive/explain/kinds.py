"""What the explainer says about each layer kind: one sentence per layer and a note per gradient.

Everything else `derive explain` prints is read from the derivation's steps, the same for
every kind.  The sentence is the layer rule's own ``describe(layer)`` (derive/layers/); a
linear layer's is left out, so that the lecture's chain reads as the lecture writes it.  A
rule's ``rule_text(layer)`` (pooling's gradient routing) is printed under its backward step.

Notes are tuples of pieces: a plain string, ``Tex(text, latex)`` for a formula, ``Code(s)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from derive.explain.notation import name_latex
from derive.layers import rule_for


@dataclass(frozen=True)
class Tex:
    """A formula, written for text and for LaTeX (inline math)."""

    text: str
    tex: str


@dataclass(frozen=True)
class Code:
    text: str


def kind(li) -> str:
    return li.kind


def describe(li) -> str | None:
    """The layer in one sentence, shown beside its forward definition (None: nothing to add)."""
    if kind(li) == "linear":
        return None
    return rule_for(li).describe(li)


def step_note(li) -> str | None:
    """A rule's own statement of its backward step (pooling: where the gradient goes), if it has one."""
    text = getattr(rule_for(li), "rule_text", None)
    return text(li) if text else None


def forward_heading(net) -> str:
    """The forward section's title; networks with windows also recall the lecture's conv neuron."""
    if any(kind(li) in ("conv2d", "locally_connected", "max_pool2d", "avg_pool2d") for li in net.info):
        return ("Forward pass (named quantities; a conv neuron at position r is h^r = Σ_ijk x^r_ijk W_ijk + b "
                "over its window)")
    return "Forward pass (named quantities)"


def definition_note(li, d) -> str | None:
    """A note on one forward definition: the layer's sentence on its first, the padding's meaning."""
    padded = getattr(li, "padded", None)
    if padded and d.name == padded:
        return f"zero where h − {li.padding} or w − {li.padding} falls outside the input"
    return None


# How the generated NumPy code computes each window gradient (the einsum spells the formula).
_COMPUTED = {
    ("conv2d", "weight"): 'np.einsum("boij,bcijpq->ocpq", δ, windows({src})), summed over the batch b too',
    ("conv2d", "bias"): "np.sum(δ, axis=(0, 2, 3))",
    ("locally_connected", "weight"): 'np.einsum("boij,bcijpq->oijcpq", δ, windows({src})), summed over the batch',
    ("locally_connected", "bias"): "np.sum(δ, axis=0)",
}


def gradient_notes(net, li, param: str) -> list[tuple]:
    """Lines after a parameter's gradient: the matrix form of a dense layer, weight sharing of a conv."""
    k = kind(li)
    role = "weight" if param == li.weight else "bias" if param == li.bias else "slope"
    if k == "linear":
        if not li.vector or role == "slope":
            return []
        l = li.index
        prev = li.source  # the input, f_{l-1}, or the quantity the layer names
        prev_tex = name_latex(prev)
        if role == "weight":
            return [("matrix form: ", Tex(f"∂L/∂{param} = δ{l} · {prev}ᵀ", rf"\frac{{\partial L}}{{\partial "
                     rf"{name_latex(param)}}} = \delta_{{{l}}} \, {prev_tex}^\top"),
                     "  (an outer product, summed over the batch)")]
        return [("matrix form: ", Tex(f"∂L/∂{param} = δ{l}", rf"\frac{{\partial L}}{{\partial {name_latex(param)}}}"
                 rf" = \delta_{{{l}}}"), "  (summed over the batch)")]
    if k in ("conv2d", "locally_connected") and role in ("weight", "bias"):
        src = li.padded or li.source
        out = []
        if k == "conv2d":
            out.append(("(weight sharing: the sum runs over every position (i, j) the kernel visits)",))
        out.append(("computed as: ", Code(_COMPUTED[(k, role)].format(src=src))))
        return out
    return []

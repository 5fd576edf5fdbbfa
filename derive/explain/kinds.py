"""What the explainer says about each layer kind: each rule's own words, looked up through ``rule_for``.

Everything else `derive explain` prints is read from the derivation's steps, the same for
every kind.  A rule gives: ``describe(layer)``, the sentence beside its forward definition (None
where the lecture's chain reads best without one, as for a linear layer); ``rule_text(layer)``,
its statement of a backward step (pooling's gradient routing); ``gradient_notes(net, layer,
param)``, the lines after a parameter's gradient; ``windowed``, whether the forward heading recalls
the lecture's conv neuron.  No function here switches on a kind's name.

Notes are tuples of pieces: a plain string, ``Tex(text, latex)`` for a formula, ``Code(s)``.
"""

from __future__ import annotations

from derive.display import Code, Tex  # noqa: F401 (re-exported: the formats import them from here)
from derive.layers import rule_for


def describe(li) -> str | None:
    """The layer in one sentence, shown beside its forward definition (None: nothing to add)."""
    return rule_for(li).explain_sentence(li)


def step_note(li) -> str | None:
    """A rule's own statement of its backward step (pooling: where the gradient goes), if it has one."""
    text = getattr(rule_for(li), "rule_text", None)
    return text(li) if text else None


def forward_heading(net) -> str:
    """The forward section's title; networks with windows also recall the lecture's conv neuron."""
    if any(rule_for(li).windowed for li in net.info):
        return ("Forward pass (named quantities; a conv neuron at position r is h^r = Σ_ijk x^r_ijk W_ijk + b "
                "over its window)")
    return "Forward pass (named quantities)"


def definition_note(li, d) -> str | None:
    """A note on one forward definition: the layer's sentence on its first, the padding's meaning."""
    padded = getattr(li, "padded", None)
    if padded and d.name == padded:
        return f"zero where h − {li.padding} or w − {li.padding} falls outside the input"
    return None


def gradient_notes(net, li, param: str) -> list[tuple]:
    """Lines after a parameter's gradient: the matrix form of a dense layer, weight sharing of a conv."""
    return rule_for(li).gradient_notes(net, li, param)

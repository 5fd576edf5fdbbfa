"""Per-sample losses ℓ(ŷ, y) as SymPy expressions: one rule per loss, in a table.

Elementwise losses are written for one output element and summed over the output
index for vector outputs; SymPy then derives ∂ℓ/∂ŷ_j itself.  Cross-entropy is
written as the lecture's softmax inside the loss, log Σ_j exp(ŷ_j) − ŷ_y, with the
class index y as a Kronecker delta, so that the derived gradient is softmax − onehot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import sympy as sp

from derive.tables.arrays import Helper
from derive.tables.functions import relu, softplus, step


# The kinds of target a loss takes.  They decide how verify and train draw or read targets.
REAL, SIGNED, BINARY, CLASS = "real", "±1", "{0, 1}", "class"


@dataclass(frozen=True)
class LossRule:
    title: str  # how the lecture writes it
    element: Callable[[sp.Expr, sp.Expr], sp.Expr] | None  # ℓ for one output element (ŷ_j, y_j)
    note: str = ""
    target: str = REAL  # REAL, SIGNED (±1 labels), BINARY ({0, 1} labels) or CLASS (an index)
    scalar_output: bool = False  # the prediction is one number per sample (a score or a logit)
    tex: str = ""  # the title in LaTeX (explain's LaTeX, Markdown and HTML)
    scalar_title: tuple[str, str] | None = None  # (text, LaTeX) where the target is one number: ½(y − ŷ)²
    # The loss's kink as a function of (ŷ, y) that is 0 there (hinge: 1 − y·ŷ), for verify/margin.py: a
    # float32 ŷ within rounding of it may take the other branch.  None: no kink.
    kink: Callable | None = None
    helpers: tuple[Helper, ...] = ()  # what its generated code defines beyond its functions' (refused as spec names)


DEFAULT = "l2"  # a network's loss when its spec names none


LOSS_RULES: dict[str, LossRule] = {
    "l2": LossRule(
        "L = ½‖y − ŷ‖²",
        lambda yh, y: sp.Rational(1, 2) * (y - yh) ** 2,
        tex=r"L = \tfrac{1}{2}\lVert y - \hat{y}\rVert^2",
        scalar_title=("L = ½(y − ŷ)²", r"L = \tfrac{1}{2}(y - \hat{y})^2"),
    ),
    "l1": LossRule(
        "L = ‖y − ŷ‖₁",
        lambda yh, y: sp.Abs(y - yh),
        "|x|' = sign(x), taken as 0 at x = 0 (PyTorch's convention).",
        tex=r"L = \lVert y - \hat{y}\rVert_1",
        scalar_title=("L = |y − ŷ|", r"L = |y - \hat{y}|"),
        kink=lambda yh, y: y - yh,
    ),
    "hinge": LossRule(
        "L = max(0, 1 − y·ŷ)",
        lambda yh, y: relu(1 - y * yh),
        "At the kink y·ŷ = 1 the subgradient 0 is used (PyTorch's relu'(0) = 0).",
        SIGNED, True,
        tex=r"L = \max(0, 1 - y \hat{y})",
        kink=lambda yh, y: 1 - y * yh,
    ),
    "zero_one": LossRule(
        "L = 1[y·ŷ ≤ 0]",
        lambda yh, y: 1 - step(y * yh),
        "The zero-one loss is piecewise constant: its derivative is zero almost everywhere "
        "(undefined on the decision boundary), so it gives no gradient signal and every gradient "
        "below is 0. Train with a surrogate: hinge or cross-entropy (binary_cross_entropy).",
        SIGNED, True,
        tex=r"L = \mathbf{1}[y \hat{y} \le 0]",
        kink=lambda yh, y: y * yh,
    ),
    "binary_cross_entropy": LossRule(
        "L = log(1 + e^ŷ) − y·ŷ   (BCE from the logit ŷ)",
        lambda yh, y: softplus(yh) - y * yh,
        "Written from the logit, log σ never appears, so large |ŷ| stays finite.",
        BINARY, True,
        tex=r"L = \log(1 + e^{\hat{y}}) - y \hat{y} \quad \text{(BCE from the logit } \hat{y}\text{)}",
    ),
    "cross_entropy": LossRule(
        "L = −log softmax(ŷ)_y = log Σ_j exp(ŷ_j) − ŷ_y",
        None,
        "Computed with log-sum-exp, so large logits stay finite.",
        CLASS,
        helpers=(Helper("onehot", '''def onehot(y, z):
    """[y = j] for class indices y and the columns j of the logits z, in z's dtype."""
    hot = xp.zeros_like(z)
    hot[range(len(y)), y] = 1
    return hot'''),),  # its gradient's one-hot targets
        tex=r"L = -\log \operatorname{softmax}(\hat{y})_y = \log \sum_j e^{\hat{y}_j} - \hat{y}_y",
    ),
}


def per_sample_loss(kind: str, yhat, y, index: sp.Symbol | None, width: int | None) -> sp.Expr:
    """ℓ for one sample.  ``yhat``/``y`` are Symbols (scalar) or IndexedBases (vector)."""
    rule = LOSS_RULES[kind]
    if kind == "cross_entropy":
        j = index
        return -sp.Sum(sp.KroneckerDelta(y, j) * yhat[j], (j, 0, width - 1)) + sp.log(
            sp.Sum(sp.exp(yhat[j]), (j, 0, width - 1))
        )
    if width is None:
        return rule.element(yhat, y)
    y_j = y[index] if isinstance(y, sp.IndexedBase) else y  # a scalar target broadcasts over out = 1
    return sp.Sum(rule.element(yhat[index], y_j), (index, 0, width - 1))

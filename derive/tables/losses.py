"""Per-sample losses ℓ(ŷ, y) as SymPy expressions: one rule per loss, in a table.

Elementwise losses are written for one output element and summed over the output
index for vector outputs; SymPy then derives ∂ℓ/∂ŷ_j itself.  Cross-entropy is
written as the lecture's softmax inside the loss, −ŷ_y + log Σ_j exp(ŷ_j), with the
class index y as a Kronecker delta, so that the derived gradient is softmax − onehot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import sympy as sp

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


LOSS_RULES: dict[str, LossRule] = {
    "l2": LossRule("L = ½‖y − ŷ‖²", lambda yh, y: sp.Rational(1, 2) * (y - yh) ** 2),
    "l1": LossRule(
        "L = ‖y − ŷ‖₁",
        lambda yh, y: sp.Abs(y - yh),
        "|x|' = sign(x), taken as 0 at x = 0 (PyTorch's convention).",
    ),
    "hinge": LossRule(
        "L = max(0, 1 − y·ŷ)",
        lambda yh, y: relu(1 - y * yh),
        "At the kink y·ŷ = 1 the subgradient 0 is used (PyTorch's relu'(0) = 0).",
        SIGNED, True,
    ),
    "zero_one": LossRule(
        "L = 1[y·ŷ ≤ 0]",
        lambda yh, y: 1 - step(y * yh),
        "The zero-one loss is piecewise constant: its derivative is zero almost everywhere "
        "(undefined on the decision boundary), so it gives no gradient signal and every gradient "
        "below is 0. Train with a surrogate: hinge or cross-entropy (binary_cross_entropy).",
        SIGNED, True,
    ),
    "binary_cross_entropy": LossRule(
        "L = log(1 + e^ŷ) − y·ŷ   (BCE from the logit ŷ)",
        lambda yh, y: softplus(yh) - y * yh,
        "Written from the logit, log σ never appears, so large |ŷ| stays finite.",
        BINARY, True,
    ),
    "cross_entropy": LossRule(
        "L = −log softmax(ŷ)_y = −ŷ_y + log Σ_j exp(ŷ_j)",
        None,
        "Computed with log-sum-exp, so large logits stay finite.",
        CLASS,
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

"""The activation table: every activation a layer may apply, in one place.

Each entry gives the SymPy function the derivation differentiates (its derivative written
through the output where the lecture does: σ' = f(1 − f)), whether it takes a slope (a
constant for leaky_relu, a learnable parameter for prelu), the lecture's name for it, and
the reference (derive/verify/reference.py) keeps its own PyTorch spelling of each.  Code printers spell the SymPy functions themselves (one rule per function class), so a new
activation that reuses existing functions needs no printer change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import sympy as sp

from derive.tables.functions import leaky_relu, relu, sigmoid, softplus


@dataclass(frozen=True)
class Activation:
    name: str
    sympy: Callable[[sp.Expr, sp.Expr], sp.Expr]  # f = sympy(a, slope)
    slope: str  # "none", "constant" (a number in the spec) or "parameter" (a learnable scalar)
    title: str  # how explain names it


ACTIVATIONS: dict[str, Activation] = {
    a.name: a for a in (
        Activation("identity", lambda a, s: a, "none", "identity"),
        Activation("relu", lambda a, s: relu(a), "none", "max(0, a)"),
        Activation("sigmoid", lambda a, s: sigmoid(a), "none", "σ(a)"),
        Activation("tanh", lambda a, s: sp.tanh(a), "none", "tanh(a)"),
        Activation("leaky_relu", lambda a, s: leaky_relu(a, s), "constant", "leaky relu"),
        Activation("softplus", lambda a, s: softplus(a), "none", "log(1 + e^a)"),
        Activation("prelu", lambda a, s: leaky_relu(a, s), "parameter", "prelu (learnable slope)"),
    )
}

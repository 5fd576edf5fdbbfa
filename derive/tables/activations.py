"""The activation table: every activation a layer may apply, in one place.

Each entry gives the SymPy function the derivation differentiates (its derivative written
through the output where the lecture does: σ' = f(1 − f)), whether it takes a slope (a
constant for leaky_relu, a learnable parameter for prelu), the lecture's name for it, and
the reference (derive/verify/reference.py) keeps its own PyTorch spelling of each.  Code printers spell
the SymPy functions themselves (one rule per function class), so a new activation that reuses existing
functions needs no printer change.  An entry also carries what the other stages ask of it: its torch.nn
module (the torch target's ``to_torch``) and how float32 rounds it (verify/margin.py).  Nothing outside
this table and the reference switches on an activation's name.
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
    # The torch.nn module that applies it, for to_torch ("{slope!r}" is the constant slope); "" where it
    # applies nothing; None where torch.nn has none (to_torch then refuses the network).
    torch_module: str | None = None
    # For verify's float32 bound (verify/margin.py): ``kink``, its derivative jumps at a = 0 (a float32
    # evaluation near 0 may take the other branch); ``lipschitz``, a bound on |f'| (None: max(1, |slope|));
    # ``exact``, f is a itself where a > 0 and an exact 0 elsewhere, so it rounds nothing.
    kink: bool = False
    lipschitz: float | None = 1.0
    exact: bool = False


IDENTITY = "identity"  # the activation that applies nothing: a layer's default


ACTIVATIONS: dict[str, Activation] = {
    a.name: a for a in (
        Activation(IDENTITY, lambda a, s: a, "none", "identity", ""),
        Activation("relu", lambda a, s: relu(a), "none", "max(0, a)", "torch.nn.ReLU()", kink=True, exact=True),
        Activation("sigmoid", lambda a, s: sigmoid(a), "none", "σ(a)", "torch.nn.Sigmoid()", lipschitz=0.25),
        Activation("tanh", lambda a, s: sp.tanh(a), "none", "tanh(a)", "torch.nn.Tanh()"),
        Activation("leaky_relu", lambda a, s: leaky_relu(a, s), "constant", "leaky relu",
                   "torch.nn.LeakyReLU({slope!r})", kink=True, lipschitz=None),
        # torch's Softplus switches to x above 20, derive's is exact (they differ by less than e^-20 there)
        Activation("softplus", lambda a, s: softplus(a), "none", "log(1 + e^a)", "torch.nn.Softplus()"),
        Activation("prelu", lambda a, s: leaky_relu(a, s), "parameter", "prelu (learnable slope)",
                   "torch.nn.PReLU()", kink=True, lipschitz=None),  # one learnable slope, as derive's prelu
    )
}

"""Optimizers from the lecture: one update rule per optimizer, as SymPy assignments.

Each rule is written once for a generic parameter θ with gradient g = ∂L/∂θ and its
own state (vel, G, m, v, …); `derive explain` instantiates it for every parameter and
the code generators print it elementwise.  Scalars that depend only on the step t
(η_t = η0/√t, Adam's bias corrections) are computed on the host, once per step.

Conventions (t counts steps from 1):
  sgd       θ ← θ − η_t·g
  momentum  vel ← μ·vel − η_t·g;  θ ← θ + vel          (the lecture's form; PyTorch keeps
            buf ← μ·buf + g, θ ← θ − η·buf, which is the same for a constant η)
  adagrad   G ← G + g²;  θ ← θ − η_t·g / (√G + ε)       (as torch.optim.Adagrad)
  adadelta  E[g²] ← ρ·E[g²] + (1 − ρ)·g²;  Δθ ← −√(E[Δθ²] + ε)/√(E[g²] + ε)·g;
            E[Δθ²] ← ρ·E[Δθ²] + (1 − ρ)·Δθ²;  θ ← θ + η_t·Δθ   (as torch.optim.Adadelta)
  adam      m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²;
            θ ← θ − η_t·(m / (1 − β1^t)) / (√(v / (1 − β2^t)) + ε)   (as torch.optim.Adam)
  lbfgs     scipy.optimize.minimize(method="L-BFGS-B") on the generated loss and gradient
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import sympy as sp

from derive.errors import SpecError

OPTIMIZER_TYPES = ("sgd", "momentum", "adagrad", "adadelta", "adam", "lbfgs")
SCHEDULES = ("constant", "inv_sqrt")

# Defaults follow torch.optim where it has the optimizer.
DEFAULT_LR = {"sgd": 0.01, "momentum": 0.01, "adagrad": 0.01, "adadelta": 1.0, "adam": 0.001, "lbfgs": 1.0}
DEFAULT_EPS = {"adagrad": 1e-10, "adadelta": 1e-6, "adam": 1e-8}
# The constants each optimizer takes (besides lr and schedule).
CONSTANTS = {
    "sgd": (),
    "momentum": ("momentum",),
    "adagrad": ("eps",),
    "adadelta": ("rho", "eps"),
    "adam": ("beta1", "beta2", "eps"),
    "lbfgs": ("history",),
}
DEFAULTS = {"momentum": 0.9, "rho": 0.9, "beta1": 0.9, "beta2": 0.999, "history": 10}


@dataclass(frozen=True)
class Optimizer:
    type: str = "sgd"
    lr: float | None = None
    schedule: str = "constant"
    constants: tuple[tuple[str, float], ...] = ()  # overrides, e.g. (("beta1", 0.8),)

    def __post_init__(self):
        if isinstance(self.constants, dict):
            object.__setattr__(self, "constants", tuple(sorted(self.constants.items())))
        self.check()

    def check(self) -> None:
        if self.type not in OPTIMIZER_TYPES:
            raise SpecError("optimizer.type", f"expected one of {', '.join(OPTIMIZER_TYPES)}, got {self.type!r}")
        if self.schedule not in SCHEDULES:
            raise SpecError("optimizer.schedule", f"expected 'constant' or 'inv_sqrt', got {self.schedule!r}")
        if self.lr is not None and not _positive(self.lr):
            raise SpecError("optimizer.lr", f"expected a positive number, got {self.lr!r}")
        allowed = CONSTANTS[self.type]
        for key, value in self.constants:
            if key not in allowed:
                known = ", ".join(("lr", "schedule", *allowed))
                raise SpecError(f"optimizer.{key}", f"not a constant of {self.type}; expected one of {known}")
            if key == "history":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise SpecError("optimizer.history", f"expected a positive integer, got {value!r}")
            elif key in ("momentum", "rho", "beta1", "beta2"):
                if not _number(value) or not 0 <= value < 1:
                    raise SpecError(f"optimizer.{key}", f"expected a number in [0, 1), got {value!r}")
            elif not _positive(value):
                raise SpecError(f"optimizer.{key}", f"expected a positive number, got {value!r}")

    @property
    def hyper(self) -> dict[str, float]:
        """Every constant the rule uses, with defaults filled in (sorted, for deterministic code)."""
        out: dict[str, float] = {"lr": float(self.lr if self.lr is not None else DEFAULT_LR[self.type])}
        for key in CONSTANTS[self.type]:
            default = DEFAULT_EPS[self.type] if key == "eps" else DEFAULTS[key]
            out[key] = dict(self.constants).get(key, default)
        return out


def _number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _positive(v) -> bool:
    return _number(v) and v > 0


# ---------------------------------------------------------------------------- the rules

theta, g, t = sp.symbols("theta g t", real=True)
eta = sp.Symbol("eta_t", positive=True)
lr = sp.Symbol("lr", positive=True)
H = {name: sp.Symbol(name, positive=True) for name in ("momentum", "eps", "rho", "beta1", "beta2")}
bc1, bc2 = sp.symbols("bc1 bc2", positive=True)
vel, G, m, v, Eg2, Edx2, dx = sp.symbols("vel G m v Eg2 Edx2 dx", real=True)


@dataclass(frozen=True)
class Rule:
    """Host scalars, per-parameter state (zero-initialised) and the ordered elementwise steps."""

    state: tuple[sp.Symbol, ...] = ()
    scalars: tuple[tuple[sp.Symbol, sp.Expr], ...] = ()
    steps: tuple[tuple[sp.Symbol, sp.Expr], ...] = field(default_factory=tuple)
    temps: tuple[sp.Symbol, ...] = ()  # step results that are not state (Adadelta's Δθ)


def _mu():
    return H["momentum"]


RULES: dict[str, Rule] = {
    "sgd": Rule(steps=((theta, theta - eta * g),)),
    "momentum": Rule(state=(vel,), steps=((vel, _mu() * vel - eta * g), (theta, theta + vel))),
    "adagrad": Rule(state=(G,), steps=((G, G + g**2), (theta, theta - eta * g / (sp.sqrt(G) + H["eps"])))),
    "adadelta": Rule(
        state=(Eg2, Edx2),
        steps=(
            (Eg2, H["rho"] * Eg2 + (1 - H["rho"]) * g**2),
            (dx, -sp.sqrt(Edx2 + H["eps"]) / sp.sqrt(Eg2 + H["eps"]) * g),
            (Edx2, H["rho"] * Edx2 + (1 - H["rho"]) * dx**2),
            (theta, theta + eta * dx),
        ),
        temps=(dx,),
    ),
    "adam": Rule(
        state=(m, v),
        scalars=((bc1, 1 - H["beta1"] ** t), (bc2, 1 - H["beta2"] ** t)),
        steps=(
            (m, H["beta1"] * m + (1 - H["beta1"]) * g),
            (v, H["beta2"] * v + (1 - H["beta2"]) * g**2),
            (theta, theta - eta * (m / bc1) / (sp.sqrt(v / bc2) + H["eps"])),
        ),
    ),
}

SCHEDULE_EXPR = {"constant": lr, "inv_sqrt": lr / sp.sqrt(t)}


def rule_for(opt: Optimizer) -> Rule | None:
    """The elementwise rule, or None for L-BFGS (which runs through scipy.optimize)."""
    return RULES.get(opt.type)


def instantiate(opt: Optimizer, param: str) -> list[tuple[sp.Symbol, sp.Expr]]:
    """The rule's steps for one parameter: θ -> W1, g -> dL_dW1, m -> m_W1, …"""
    rule = rule_for(opt)
    if rule is None:
        return []
    sub = {theta: sp.Symbol(param, real=True), g: sp.Symbol(f"dL_d{param}", real=True)}
    sub.update({s: sp.Symbol(f"{s.name}_{param}", real=True) for s in (*rule.state, *rule.temps)})
    return [(lhs.xreplace(sub), rhs.xreplace(sub)) for lhs, rhs in rule.steps]

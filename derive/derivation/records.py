"""The derivation's frozen records: forward Definitions, backward Steps and their chain-rule Factors."""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from derive import names

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Factor:
    """One factor of a chain, ∂numerator/∂denominator, with its derived value.

    ``reused`` marks a quantity computed once above and re-used here (δ3, ∂L/∂f2).  ``name`` is its
    ASCII spelling: "df3/da3", "dL/df3", or "delta3" for ∂L/∂a3 (derive.names.factor).
    """

    numerator: str
    denominator: str
    value: sp.Expr
    reused: bool = False

    @property
    def name(self) -> str:
        return names.factor(self.numerator, self.denominator)

    @property
    def is_delta(self) -> bool:
        return names.is_delta_factor(self.numerator, self.denominator)


@dataclass(frozen=True)
class Definition:
    """A forward quantity: ``lhs = rhs`` element-wise (lhs is a1 or a1[j])."""

    name: str
    lhs: sp.Expr
    rhs: sp.Expr
    shape: Shape
    layer: int


@dataclass(frozen=True)
class Step:
    """One backward assignment.

    ``rhs`` uses only named symbols (forward quantities, parameters, earlier steps) and is
    what the code generators lower; ``factors`` are the chain-rule factors it is the
    product (or contraction) of; ``expression`` is the same value written with the δ
    above it (for deltas) and is what ``derive explain`` prints.  ``layer`` is the layer the
    quantity belongs to (∂L/∂f2 belongs to layer 2); ``origin`` the layer whose rule made it
    (∂L/∂f2 is made by layer 3's).

    When a quantity feeds several layers (a graph: add, concat, a skip path), each consumer's
    contribution is its own "upstream" step, one path's term (``dL_df1_via3``), and ∂L/∂f1 is
    the step whose ``terms`` names them: the multivariate chain rule's sum over paths.
    """

    name: str
    kind: str  # "loss_grad" | "delta" | "param" | "upstream"
    layer: int
    lhs: sp.Expr
    rhs: sp.Expr
    factors: tuple[Factor, ...]
    shape: Shape
    expression: sp.Expr
    param: str | None = None
    origin: int = 0
    wrt: str | None = None  # an upstream step: the quantity whose gradient (or one path's term of it) it is
    terms: tuple[str, ...] = ()  # a sum over paths: the steps it adds (one per consumer of ``wrt``)


@dataclass(frozen=True)
class Derivation:
    network: object  # derive.network.Network
    forward: tuple[Definition, ...]
    loss: Definition
    backward: tuple[Step, ...]
    symbols: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def deltas(self) -> tuple[Step, ...]:
        return tuple(s for s in self.backward if s.kind == "delta")

    @property
    def gradients(self) -> tuple[Step, ...]:
        return tuple(s for s in self.backward if s.kind == "param")

    def step(self, name: str) -> Step:
        for s in self.backward:
            if s.name == name:
                return s
        raise KeyError(name)

    def paths(self, step: Step) -> tuple[Step, ...]:
        """The path terms a sum-over-paths step adds, in its order (none for any other step)."""
        return tuple(self.step(t) for t in step.terms)

    def paths_note(self, step: Step) -> str:
        """"f1 feeds a2 and a3: sum over paths": what the multivariate chain rule sums, in words."""
        fed = [t.factors[-1].numerator for t in self.paths(step)]
        return f"{step.wrt} feeds {', '.join(fed[:-1])} and {fed[-1]}: sum over paths"

    def gradient(self, param: str) -> Step:
        for s in self.gradients:
            if s.param == param:
                return s
        raise KeyError(param)

    def check(self) -> "Derivation":
        """Every name an expression reads is defined before it (the input, the target, a parameter, an earlier
        forward quantity or backward step), and each gradient has its parameter's shape; a loud error naming
        the quantity otherwise.  Called when the derivation is built."""
        from derive.errors import DerivationError

        net = self.network
        defined = {net.input.name} | {p.name for p in net.params}
        shapes = {p.name: p.shape for p in net.params}

        def read(where: str, expr) -> None:
            names = {x.name for x in expr.free_symbols if isinstance(x, sp.Symbol) and not x.is_integer}
            unbound = sorted(n for n in names if n not in defined)
            if unbound:
                raise DerivationError(f"{net.name}: {where} reads {', '.join(unbound)}, defined nowhere before it")

        for d in self.forward:
            read(f"forward {d.name}", d.rhs)
            defined.add(d.name)
        defined.add(net.target.name)
        read("the loss", self.loss.rhs)
        for s in self.backward:
            read(f"step {s.name}", s.rhs)
            if s.kind == "param" and s.shape != shapes[s.param]:
                raise DerivationError(f"{net.name}: step {s.name} has shape {s.shape}, its parameter {s.param} "
                                      f"{shapes[s.param]}")
            defined.add(s.name)
        return self

    @property
    def loss_note(self) -> str:
        from derive.tables.losses import LOSS_RULES

        return LOSS_RULES[self.network.loss.type].note

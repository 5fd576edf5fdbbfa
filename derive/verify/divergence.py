"""The first wrong factor: every named intermediate of a generated module against torch.

Backprop computes its quantities in an order where each one is built from the ones before
it: the forward pass a1, f1, a2, ..., the per-sample loss, then the backward pass ∂L/∂f_top,
δ_top, its parameter gradients, ∂L/∂f below, δ below, and so on.  The first quantity that
disagrees with an independent value (derive.verify.named, torch.autograd) was computed
by a wrong rule from right inputs, so naming it names the faulty line of the generated code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from derive import names
from derive.derivation import derive
from derive.network import Network
from derive.tables.losses import CLASS, LOSS_RULES
from derive.verify.tolerance import TOL_F32, TOL_F64, rel_err

MAX_RULE = 110  # a conv rule written out in full runs to hundreds of characters


@dataclass
class Quantity:
    """One named quantity in the order backprop computes it."""

    name: str
    layer: int
    rule: str


@dataclass
class Divergence:
    target: str  # "numpy" or "triton"
    quantity: str
    layer: int
    rule: str
    rel_err: float
    tolerance: float
    agree: list[str] = field(default_factory=list)
    seed: int = 0
    run: tuple[int, int] = (0, 1)  # (draw, batch size) within the seed
    note: str = ""

    def line(self) -> str:
        if not self.quantity:
            return f"first divergence: not located; {self.note}"
        agree = f" ({', '.join(self.agree)} agree)" if self.agree else " (nothing before it to agree)"
        where = f"{self.target} " if self.target != "numpy" else ""
        text = f"first divergence: {where}{self.rule} at layer {self.layer}: rel err {self.rel_err:.1e}{agree}"
        return text + (f"; {self.note}" if self.note else "")

    def to_dict(self) -> dict:
        return {**asdict(self), "run": list(self.run), "line": self.line()}


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_RULE else text[:MAX_RULE - 1] + "…"


def _step_rule(step, mean: bool) -> str:
    """The step as the immediate product it computes: delta2 = dL_df2 · df2/da2 (df2/da2 = f2*(1 - f2))."""
    if step.kind == "loss_grad":
        scale = " · 1/B" if mean else ""
        f = names.activation(step.layer)
        return _short(f"{step.name} = ∂ℓ/∂{f}{scale} (∂ℓ/∂{f} = {step.rhs})")
    if step.kind == "delta":
        inputs, local = names.upstream(step.layer), step.factors[-1]
    else:  # param and upstream: (the δ or ∂L/∂f above, the local partial)
        first, local = step.factors[0], step.factors[-1]
        inputs = first.name.replace("dL/d", "dL_d")
    return _short(f"{step.name} = {inputs} · {local.name} ({local.name} = {local.value})")


def order(net: Network) -> list[Quantity]:
    """Every named quantity of ``net``'s derivation, forward then backward, with its rule."""
    d = derive(net)
    out = [Quantity(q.name, q.layer, _short(f"{q.lhs} = {q.rhs}")) for q in d.forward]
    out.append(Quantity("loss_per_sample", d.loss.layer, _short(f"loss_per_sample = {d.loss.rhs}")))
    out += [Quantity(s.name, s.layer, _step_rule(s, net.loss.reduction == "mean")) for s in d.backward]
    return out


def _as_numpy(v):
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v, dtype=np.float64)


def compare(quantities: list[Quantity], got: dict, want: dict, tol: float, target: str = "numpy",
            note: str = "") -> Divergence | None:
    """The first quantity in ``quantities`` whose ``got`` value is off ``want`` by more than ``tol``."""
    agree = []
    for q in quantities:
        if q.name not in want:
            continue
        if q.name not in got:
            return Divergence(target, q.name, q.layer, f"{q.rule} [missing from the module's intermediates]",
                              float("inf"), tol, agree, note=note)
        g, w = _as_numpy(got[q.name]), _as_numpy(want[q.name])
        if g.shape != w.shape and g.size == w.size:
            g = g.reshape(w.shape)  # a scalar output is (B,) in one convention and (B, 1) in the other
        err = rel_err(g, w)
        if not (np.isfinite(err) and err <= tol):
            return Divergence(target, q.name, q.layer, q.rule, err, tol, agree, note=note)
        agree.append(q.name)
    return None


def _reference(net, torch, params, x, y):
    from derive.verify.named import named_quantities

    tp = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    ty = torch.tensor(y, dtype=torch.long if LOSS_RULES[net.loss.type].target == CLASS else torch.float64)
    return named_quantities(net, tp, torch.tensor(x, dtype=torch.float64), ty)


def _triton_values(trm, top: int, params, x, y, torch, device) -> tuple[dict, str]:
    """The Triton module's named quantities: intermediates() where it has one, else ŷ, ℓ and ∂L/∂θ."""
    tp = {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in params.items()}
    tx = torch.tensor(x, dtype=torch.float32, device=device)
    ty = torch.tensor(y, dtype=torch.int32 if y.dtype.kind == "i" else torch.float32, device=device)
    if hasattr(trm, "intermediates"):
        return dict(trm.intermediates(tp, tx, ty)), ""
    got = {names.grad(k): v for k, v in trm.gradients(tp, tx, ty).items()}
    got[names.activation(top)] = trm.forward(tp, tx)
    return got, "the Triton module has no intermediates(): only ŷ and the parameter gradients were compared"


def first_divergence(net: Network, mods: dict, params, x, y, device=None) -> Divergence | None:
    """The first named quantity of the NumPy module, then of the Triton module, that disagrees with torch."""
    import torch

    quantities = order(net)
    want = _reference(net, torch, params, x, y)
    npm = mods["numpy"]
    if not hasattr(npm, "intermediates"):
        return Divergence("numpy", "", 0, "", float("nan"), TOL_F64,
                          note="the NumPy module has no intermediates() (generated by an older derive)")
    found = compare(quantities, npm.intermediates(params, x, y), want, TOL_F64)
    if found or "triton" not in mods:
        return found
    p32 = {k: np.asarray(v, dtype=np.float32).astype(np.float64) for k, v in params.items()}
    x32 = np.asarray(x, dtype=np.float32).astype(np.float64)
    want32 = _reference(net, torch, p32, x32, y)  # the same math on the inputs Triton sees
    got, note = _triton_values(mods["triton"], net.info[-1].index, params, x, y, torch, device or "cpu")
    return compare([q for q in quantities if q.name in got], got, want32, TOL_F32, "triton", note)

"""Network -> Derivation: backprop by the chain rule, layer by layer, as the lecture teaches it.

Forward quantities are named (a_l, f_l), every local partial is derived by SymPy from
the layer's own definition, and δ_l = ∂L/∂a_l is computed once and re-used by every
gradient below it.  The fully composed expression is never differentiated, so the
work is linear in depth (see bench/derivation_scaling.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp
from sympy.core.parameters import distribute

from derive.layers import conv
from derive.derivation import indices as ix
from derive import names
from derive.tables.functions import ACTIVATION_FUNCTIONS, name_softmax
from derive.tables.losses import LOSS_RULES, per_sample_loss
from derive.network import LayerInfo, Network, Shape, VolumeLayerInfo


@dataclass(frozen=True)
class Factor:
    """One factor of a chain: its name (ASCII, "df3/da3"), its derived value, and whether it was re-used."""

    name: str
    value: sp.Expr
    reused: bool = False


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
    above it (for deltas) and is what ``derive explain`` prints.
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


@dataclass(frozen=True)
class Derivation:
    network: Network
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

    def gradient(self, param: str) -> Step:
        for s in self.gradients:
            if s.param == param:
                return s
        raise KeyError(param)

    @property
    def loss_note(self) -> str:
        return LOSS_RULES[self.network.loss.type].note


def _elem(t, *idx):
    return t[idx] if isinstance(t, sp.IndexedBase) else t


def derive(net: Network) -> Derivation:
    """Derive every δ and every parameter gradient of ``net``."""
    with distribute(False):  # keep −(y − ŷ) as the lecture writes it, not −y + ŷ
        return _derive(net)


def _derive(net: Network) -> Derivation:
    sym: dict[str, sp.Basic] = {}
    x_shape = net.info[0].in_shape if net.info[0].vector else net.input.shape
    sym[net.input.name] = ix.tensor(net.input.name, x_shape)
    for prm in net.params:
        sym[prm.name] = ix.tensor(prm.name, prm.shape)

    forward: list[Definition] = []
    prev = sym[net.input.name]
    act_subs: list[tuple[LayerInfo, sp.Expr, sp.Expr]] = []
    for li in net.info:
        if isinstance(li, VolumeLayerInfo):  # conv2d, locally_connected, flatten: rules in derive/conv.py
            defs, prev, act = conv.forward(li, sym, prev, Definition)
            forward.extend(defs)
            act_subs.append((li, *act) if act else None)
            continue
        a = ix.tensor(names.pre_activation(li.index), li.out_shape)
        f = ix.tensor(names.activation(li.index), li.out_shape)
        sym[str(a)] = a
        sym[str(f)] = f
        rhs = _linear_rhs(li, sym, prev)
        forward.append(Definition(str(a), _elem(a, ix.j), rhs, li.out_shape, li.index))
        slope = sym[li.slope_param] if li.slope_param else sp.Float(li.slope_value or 0.0)
        f_rhs = ACTIVATION_FUNCTIONS[li.spec.activation](_elem(a, ix.j), slope)
        forward.append(Definition(str(f), _elem(f, ix.j), f_rhs, li.out_shape, li.index))
        act_subs.append((li, f_rhs, _elem(f, ix.j)))
        prev = f

    # ---- loss -------------------------------------------------------------------------
    out_li = net.info[-1]
    f_top = prev
    width = out_li.out_shape[0] if out_li.vector else None
    t_shape = net.target.shape
    if net.loss.type == "cross_entropy":
        y = sp.Symbol(net.target.name, integer=True)
    else:
        y = ix.tensor(net.target.name, t_shape)
    sym[net.target.name] = y
    loss_expr = per_sample_loss(net.loss.type, f_top, y, ix.j if width else None, width)
    loss = Definition("L", sp.Symbol("L"), loss_expr, (), out_li.index)

    backward: list[Step] = []
    # ∂L/∂f_L: derived from the loss at a fresh index p, then named at j.
    target_el = _elem(f_top, ix.p)
    dl = ix.contract(sp.diff(loss_expr, target_el))
    dl = name_softmax(dl, f_top)  # exp(ŷ_p)/Σ exp(ŷ_j): printed stably
    dl = dl.xreplace({ix.p: ix.j}) if width else dl
    upstream = ix.tensor(names.upstream(out_li.index), out_li.out_shape)
    fname = names.activation(out_li.index)
    backward.append(
        Step(
            str(upstream), "loss_grad", out_li.index, _elem(upstream, ix.j), dl,
            (Factor(f"dL/d{fname}", dl),), out_li.out_shape, dl,
        )
    )
    up_expr = dl  # the value of ∂L/∂f_l written with the δ above it

    for pos in range(len(net.info) - 1, -1, -1):
        li = net.info[pos]
        if isinstance(li, VolumeLayerInfo):
            steps, up_expr = conv.backward(li, pos, net, sym, forward, act_subs[pos] and act_subs[pos][1:],
                                           up_expr, Step, Factor)
            backward.extend(steps)
            if pos == 0:
                break
            continue
        l = li.index
        a_el = _elem(ix.tensor(names.pre_activation(l), li.out_shape), ix.j)
        f_rhs, f_el = act_subs[pos][1], act_subs[pos][2]
        up_sym = ix.tensor(names.upstream(l), li.out_shape)
        up_el = _elem(up_sym, ix.j)
        delta = ix.tensor(names.delta(l), li.out_shape)
        sym[str(delta)] = delta
        sym[str(up_sym)] = up_sym

        # δ_l = ∂L/∂f_l · ∂f_l/∂a_l, with ∂f/∂a derived by SymPy and written through f_l.
        dfda = sp.diff(f_rhs, a_el).subs(f_rhs, f_el) if f_rhs != a_el else sp.S.One
        d_rhs = up_el * dfda
        fa = Factor(f"d{names.activation(l)}/d{names.pre_activation(l)}", dfda)
        if pos == len(net.info) - 1:
            factors = (Factor(f"dL/d{names.activation(l)}", up_expr, reused=True), fa)
        else:
            factors = tuple(
                Factor(fc.name, fc.value, fc.reused) for fc in backward[-1].factors
            ) + (fa,)
        backward.append(
            Step(str(delta), "delta", l, _elem(delta, ix.j), d_rhs, factors, li.out_shape, up_expr * dfda)
        )
        delta_el = _elem(delta, ix.j)

        # Parameter gradients: ∂L/∂θ = Σ_j δ_l[j] · ∂a_l[j]/∂θ, contracted by SymPy.
        a_rhs = next(d.rhs for d in forward if d.name == names.pre_activation(l))
        dname = f"delta{l}"
        for role, pname in (("weight", li.weight), ("bias", li.bias)):
            if pname is None:
                continue
            p_sym = sym[pname]
            target, back = _fresh_element(p_sym, role)
            local = ix.contract(sp.diff(a_rhs, target))
            if li.vector:
                g = ix.contract(sp.Sum(delta_el * local, (ix.j, 0, li.out_shape[0] - 1))).xreplace(back)
                if li.in_shape == (1,):
                    g = g.xreplace({sp.KroneckerDelta(0, ix.k): sp.S.One})  # the one column: k is always 0
                # shown as ∂a[i]/∂θ[j, k]: i the layer's output, (j, k) the parameter element
                local_shown = local.xreplace({ix.j: ix.i}).xreplace(back)
            else:
                g = delta_el * local
                local_shown = local
            g_sym = ix.tensor(names.grad(pname), _shape_of(p_sym, li, role))
            lhs = g_sym[(ix.j, ix.k)] if role == "weight" and li.vector else _elem(g_sym, ix.j)
            backward.append(
                Step(
                    names.grad(pname), "param", l, lhs, g,
                    (Factor(dname, delta_el, reused=True),
                     Factor(f"d{names.pre_activation(l)}/d{pname}", local_shown)),
                    _shape_of(p_sym, li, role), g, param=pname,
                )
            )
        if li.slope_param:
            # ∂L/∂α = Σ_j ∂L/∂f_l[j] · ∂f_l[j]/∂α: the slope acts after a_l, so its upstream is ∂L/∂f_l.
            s_sym = sym[li.slope_param]
            local = sp.diff(f_rhs, s_sym)
            g = sp.Sum(up_el * local, (ix.j, 0, li.out_shape[0] - 1)) if li.vector else up_el * local
            backward.append(
                Step(
                    names.grad(li.slope_param), "param", l, sp.Symbol(names.grad(li.slope_param)), g,
                    (Factor(f"dL/d{names.activation(l)}", up_el, reused=True),
                     Factor(f"d{names.activation(l)}/d{li.slope_param}", local)),
                    (), g, param=li.slope_param,
                )
            )

        # ∂L/∂f_{l-1} = Σ_j δ_l[j] · ∂a_l[j]/∂f_{l-1}: the upstream the layer below re-uses.
        if pos == 0:
            break
        below = net.info[pos - 1]
        f_prev = ix.tensor(names.activation(below.index), below.out_shape)
        target = _elem(f_prev, ix.p)
        local = ix.contract(sp.diff(a_rhs, target))  # W[j, p] or w
        if li.vector:
            rhs = sp.Sum(delta_el.xreplace({ix.j: ix.i}) * local.xreplace({ix.j: ix.i}),
                         (ix.i, 0, li.out_shape[0] - 1)).xreplace({ix.p: ix.j})
            local_shown = local.xreplace({ix.p: ix.k}).xreplace({ix.j: ix.i, ix.k: ix.j})
        else:
            rhs = delta_el * local
            local_shown = local
        nxt = ix.tensor(names.upstream(below.index), below.out_shape)
        up_expr = rhs
        backward.append(
            Step(
                str(nxt), "upstream", below.index, _elem(nxt, ix.j), rhs,
                (Factor(dname, delta_el, reused=True),
                 Factor(f"d{names.pre_activation(l)}/d{names.activation(below.index)}", local_shown)),
                below.out_shape, rhs,
            )
        )

    return Derivation(net, tuple(forward), loss, tuple(backward), sym)


def _linear_rhs(li: LayerInfo, sym, prev) -> sp.Expr:
    w = sym[li.weight]
    b = sym[li.bias] if li.bias else sp.S.Zero
    # Unevaluated, so that it prints in the lecture's order (w1·x + b1); diff evaluates it.
    if not li.vector:
        prod = sp.Mul(w, prev, evaluate=False)
        return sp.Add(prod, b, evaluate=False) if li.bias else prod
    if isinstance(prev, sp.Symbol):
        # a scalar feeding a vector layer: its weight (out, 1) has one column, a[j] = W[j, 0]·f + b[j]
        prod = sp.Mul(w[ix.j, 0], prev, evaluate=False)
        return sp.Add(prod, b[ix.j], evaluate=False) if li.bias else prod
    n = li.in_shape[0]
    s = sp.Sum(sp.Mul(w[ix.j, ix.k], prev[ix.k], evaluate=False), (ix.k, 0, n - 1))
    return sp.Add(s, b[ix.j], evaluate=False) if li.bias else s


def _fresh_element(p_sym, role):
    """The parameter element to differentiate by, at indices used nowhere else (p, q)."""
    if isinstance(p_sym, sp.Symbol):
        return p_sym, {}
    if role == "weight":
        return p_sym[ix.p, ix.q], {ix.p: ix.j, ix.q: ix.k}
    return p_sym[ix.p], {ix.p: ix.j}


def _shape_of(p_sym, li: LayerInfo, role: str) -> Shape:
    if not li.vector:
        return ()
    return (li.spec.out, li.in_shape[0]) if role == "weight" else (li.spec.out,)



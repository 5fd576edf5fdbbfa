"""Network -> Derivation: backprop by the chain rule, layer by layer, as the lecture teaches it.

Forward: each layer's rule gives its definitions up to a_l (derive/layers/); the activation
f_l = σ(a_l) is applied here, the same way for every kind; then the loss.  Backward, from the
loss down: δ_l = ∂L/∂f_l · ∂f_l/∂a_l, then every input of every definition (parameters, and the
layer's source when a layer lies below) gets Σ ∂L/∂out · ∂out/∂input, one contraction with the
local partial its rule derived.  Each δ is computed once and re-used below; the composed
expression is never differentiated, so the work is linear in depth (bench/derivation_scaling.py).
"""

from __future__ import annotations

import sympy as sp
from sympy.core.parameters import distribute

from derive import indices as ix
from derive import names
from derive.derivation.records import Definition, Derivation, Factor, Step
from derive.layers import RULES
from derive.tables.activations import ACTIVATIONS
from derive.tables.functions import name_softmax
from derive.tables.losses import CLASS, LOSS_RULES, per_sample_loss


def derive(net) -> Derivation:
    """Derive every δ and every parameter gradient of ``net``."""
    with distribute(False):  # keep −(y − ŷ) as the lecture writes it, not −y + ŷ
        return _derive(net)


def _tensor(sym: dict, name: str, shape) -> sp.Basic:
    return sym.setdefault(name, ix.tensor(name, shape))


def _derive(net) -> Derivation:
    sym: dict[str, sp.Basic] = {}
    _tensor(sym, net.input.name, net.info[0].in_shape if net.info[0].vector else net.input.shape)
    for prm in net.params:
        _tensor(sym, prm.name, prm.shape)

    forward: list[Definition] = []
    layers = []  # (layer, its nodes, the activation's (f_rhs, f_el, a_el) or None)
    for layer in net.info:
        _tensor(sym, names.activation(layer.index), layer.out_shape)
        if layer.activation is not None:
            _tensor(sym, names.pre_activation(layer.index), layer.out_shape)
        nodes = RULES[layer.kind].forward(layer, sym)
        forward += [Definition(n.name, n.lhs, n.rhs, n.shape, layer.index) for n in nodes]
        act = None
        if layer.activation is not None:
            a_el = nodes[-1].lhs
            f_el = ix.elem(sym[names.activation(layer.index)], *getattr(a_el, "indices", ()))
            slope = sym[layer.slope_param] if layer.slope_param else sp.Float(layer.slope_value or 0.0)
            f_rhs = ACTIVATIONS[layer.activation].sympy(a_el, slope)
            forward.append(Definition(names.activation(layer.index), f_el, f_rhs, layer.out_shape, layer.index))
            act = (f_rhs, f_el, a_el)
        layers.append((layer, nodes, act))

    loss, backward = _loss(net, sym)
    graph = _Graph(net)
    made = {backward[0].name: backward[0]}  # each ∂L/∂f_l by its name, for the δ that re-uses it
    # The layers' order is topological (a layer reads only earlier outputs), so its reverse visits
    # every consumer of a quantity before the layer that computes it: ∂L/∂f_l is complete when needed.
    for layer, nodes, act in reversed(layers):
        if names.activation(layer.index) in graph.learned:  # below it only the input: nothing to learn
            backward += _layer_backward(net, layer, nodes, act, sym, made, graph)
    return Derivation(net, tuple(forward), loss, tuple(backward), sym).check()


class _Graph:
    """Who reads what: the consumers of each quantity, the layer that computes it, the shapes."""

    def __init__(self, net):
        self.producer = {net.input.name: 0}
        self.shape = {net.input.name: net.info[0].in_shape if net.info[0].vector else net.input.shape}
        self.consumers: dict[str, list[int]] = {}
        for li in net.info:
            self.producer[names.activation(li.index)] = li.index
            self.shape[names.activation(li.index)] = li.out_shape
            for s in li.sources:
                self.consumers.setdefault(s, []).append(li.index)
        self.pending: dict[str, list] = {}  # the path terms of a quantity with several consumers, so far
        # the quantities a parameter reaches: ∂L/∂f is needed only where some ∂L/∂θ lies below f
        # (flatten(x), or a pooling of x, is a function of the input alone, like x itself)
        self.learned: set[str] = set()
        for li in net.info:
            if li.params or li.slope_param or any(s in self.learned for s in li.sources):
                self.learned.add(names.activation(li.index))

    def needs_gradient(self, layer, name: str) -> bool:
        """Only a quantity some parameter reaches, or its zero-padded copy, needs a gradient: not the
        network input, nor what is computed from the input alone."""
        return (layer.source if name == layer.padded else name) in self.learned

    def shared(self, name: str) -> bool:
        return len(self.consumers.get(name, ())) > 1


def _loss(net, sym) -> tuple[Definition, list[Step]]:
    top = net.info[-1]
    f_top = sym[names.activation(top.index)]
    width = top.out_shape[0] if top.vector else None
    rule = LOSS_RULES[net.loss.type]
    y = sp.Symbol(net.target.name, integer=True) if rule.target == CLASS else ix.tensor(net.target.name, net.target.shape)
    sym[net.target.name] = y
    loss_expr = per_sample_loss(net.loss.type, f_top, y, ix.j if width else None, width)
    loss = Definition("L", sp.Symbol("L"), loss_expr, (), top.index)
    # ∂L/∂f_L: derived from the loss at a fresh index p, then named at j.
    dl = ix.contract_sums(sp.diff(loss_expr, ix.elem(f_top, ix.p)))
    dl = name_softmax(dl, f_top)  # exp(ŷ_p)/Σ exp(ŷ_j): printed stably
    dl = dl.xreplace({ix.p: ix.j}) if width else dl
    up = _tensor(sym, names.upstream(top.index), top.out_shape)
    fname = names.activation(top.index)
    step = Step(str(up), "loss_grad", top.index, ix.elem(up, ix.j), dl, (Factor("L", fname, dl),), top.out_shape, dl,
                origin=top.index)
    return loss, [step]


def _layer_backward(net, layer, nodes, act, sym, made, graph) -> list[Step]:
    l = layer.index
    fname, aname = names.activation(l), names.pre_activation(l)
    up_step = made[names.upstream(l)]
    out: list[Step] = []
    grad_of = {fname: sym[names.upstream(l)]}  # the gradient tensor of each quantity of this layer
    if act is not None:
        f_rhs, f_el, a_el = act
        up_el = ix.elem(sym[names.upstream(l)], *getattr(a_el, "indices", ()))
        # δ_l = ∂L/∂f_l · ∂f_l/∂a_l, with ∂f/∂a derived by SymPy and written through f_l
        dfda = ix.local(f_rhs, a_el).xreplace({f_rhs: f_el}) if f_rhs != a_el else sp.S.One
        fa = Factor(fname, aname, dfda)
        first = up_step.factors[0]
        if up_step.kind == "loss_grad" or first.is_delta:  # the chain continues through the δ above
            value = up_step.rhs
            factors = ((Factor("L", fname, value, reused=True), fa) if up_step.kind == "loss_grad"
                       else (*up_step.factors, fa))
        else:
            value, factors = up_el, (Factor("L", fname, up_el, reused=True), fa)
        delta = _tensor(sym, names.delta(l), layer.out_shape)
        d_el = ix.elem(delta, *getattr(a_el, "indices", ()))
        out.append(Step(str(delta), "delta", l, d_el, up_el * dfda, factors, layer.out_shape, value * dfda, origin=l))
        grad_of[aname] = delta

    def contraction(node, inp, kind, name, below):
        g_el = ix.elem(grad_of[node.name], *node.out)
        g = ix.contract(g_el * inp.local, node.limits).xreplace(inp.rename)
        shape = _shape_of(graph, layer, inp.name)
        gsym = _tensor(sym, name, shape)
        lhs = inp.lhs if inp.lhs is not None else ix.elem(gsym, *getattr(inp.target.xreplace(inp.rename), "indices", ()))
        factors = (Factor("L", node.name, g_el, reused=True), Factor(node.name, inp.name, inp.local.xreplace(inp.rename)))
        return Step(name, kind, below, lhs, g, factors, shape, g, param=inp.name if kind == "param" else None, origin=l,
                    wrt=inp.name if kind == "upstream" else None)

    for node in reversed(nodes):  # parameters first, then the slope, then what flows to the layer below
        for inp in node.inputs:
            if inp.role != "source":
                out.append(contraction(node, inp, "param", names.grad(inp.name), l))
    if act is not None and layer.slope_param:
        # ∂L/∂α = Σ_j ∂L/∂f_l[j] · ∂f_l[j]/∂α: the slope acts after a_l, so its upstream is ∂L/∂f_l
        alpha = sym[layer.slope_param]
        local = ix.local(f_rhs, alpha)
        g = ix.contract(up_el * local, nodes[-1].limits)
        gname = names.grad(layer.slope_param)
        out.append(Step(gname, "param", l, sp.Symbol(gname), g,
                        (Factor("L", fname, up_el, reused=True), Factor(fname, layer.slope_param, local)),
                        (), g, param=layer.slope_param, origin=l))
    for node in reversed(nodes):
        for inp in node.inputs:
            if inp.role != "source" or not graph.needs_gradient(layer, inp.name):
                continue
            below = graph.producer[layer.source if inp.name == layer.padded else inp.name]
            if not graph.shared(inp.name):
                name = names.grad(inp.name)  # ∂L/∂f_k: dL_df{k}
                step = contraction(node, inp, "upstream", name, below)
                grad_of[inp.name] = sym[name]
                made[name] = step
                out.append(step)
                continue
            term = contraction(node, inp, "upstream", names.path_term(inp.name, l), below)
            out.append(term)
            terms = graph.pending.setdefault(inp.name, [])
            terms.append(term)
            if len(terms) == len(graph.consumers[inp.name]):  # every path is in: ∂L/∂f_k is their sum
                step = _sum_over_paths(sym, inp.name, below, terms[::-1], graph.shape[inp.name])
                made[step.name] = step
                out.append(step)
    return out


def _sum_over_paths(sym, quantity: str, layer: int, terms: list[Step], shape) -> Step:
    """∂L/∂f = Σ over the layers f feeds of that path's term: the multivariate chain rule.

    Each term is a contraction like any other (its factors derived by SymPy); the sum is one step,
    named as a single consumer's would be, so that the δ below re-uses it the same way.
    """
    name = names.grad(quantity)
    g = _tensor(sym, name, shape)
    idx = tuple(terms[0].lhs.indices) if isinstance(terms[0].lhs, sp.Indexed) else ()
    lhs = ix.elem(g, *idx)
    total = sp.Add(*(t.rhs for t in terms), evaluate=False)
    return Step(name, "upstream", layer, lhs, total, (Factor("L", quantity, lhs),), shape, total,
                origin=terms[0].origin, wrt=quantity, terms=tuple(t.name for t in terms))


def _shape_of(graph, layer, name: str):
    for p in layer.params:
        if p.name == name:
            return p.shape
    if name == layer.padded:
        return layer.padded_shape
    return graph.shape[name]

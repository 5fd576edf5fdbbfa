"""Derivation (and, with --at, its Values) -> the computation graph `derive draw` and the HTML page draw.

Everything is read off the derivation's records, never off the layer kind:
- a forward node per named quantity (the input, the target, each parameter, each Definition, L), one per tensor;
- a forward edge from every named symbol a Definition's right-hand side uses to its left-hand side, labelled with
  the local partial the backward Steps carry as a Factor (∂a3/∂f2 = w3); an edge no Step differentiates (from the
  input or the target) has no label, since nothing flows back into data;
- a gradient node per backward Step (∂L/∂f3, δ3, ∂L/∂w3), tied to the quantity its chain ends at;
- a backward edge from each Step a Step's ``rhs`` reads to that Step, labelled with the local partial that
  multiplies it.  A Step read by several Steps is marked re-used.
- a quantity with several consumers (a graph network) has one Step per path, its ``terms``, and a Step that
  adds them (the multivariate chain rule).  Each path's term is its own node, "∂L/∂f1 via a2 = δ2·∂a2/∂f1" with
  its number, in the column of f1 beside their sum; the sum's incoming edges are its terms (``Step.terms``),
  not the δ's its ``rhs`` happens to be written with, so a δ counts as read once per path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from derive.explain import latex as lx
from derive.explain import text as tx
from derive.explain.model import Chain, Explainer, Partial
from derive.explain.notation import latex, text

LABEL_CHARS = 34  # a local partial's value longer than this is left to the derivation (an argmax window)
LIST_CAP = 4  # a vector of at most this many numbers is shown in full on its node


@dataclass(frozen=True)
class Node:
    id: str
    kind: str  # "input" | "target" | "param" | "forward" | "loss" | "grad"
    name: str  # the quantity (a1) or the Step (delta1)
    title: str  # its symbol in text: a1, δ1 = ∂L/∂a1
    tex: str  # the same in LaTeX
    shape: tuple
    value: str = ""  # "= 0.5218", "‖·‖ = 3.1" with --at
    of: str = ""  # a gradient node: the quantity it is ∂L/∂ of
    uses: tuple = ()  # a gradient node: the Steps that read it
    paths: tuple = ()  # a sum over paths: its terms (Step names), in the derivation's order
    via: str = ""  # one path's term: the quantity the path goes through (a2 of ∂L/∂f1 via a2)
    formula: str = ""  # one path's term: its chain, δ2·∂a2/∂f1; a sum: what it adds, in words
    factor: str = ""  # one path's term: the local partial of its path ("a2/f1")


@dataclass(frozen=True)
class Edge:
    tail: str
    head: str
    kind: str  # "forward" | "backward" | "path" (a term into its sum) | "pair" | "column" (same column, not drawn)
    label: str = ""
    factor: str = ""  # "a3/f2": the local partial ∂a3/∂f2 this edge carries


@dataclass(frozen=True)
class FactorInfo:
    key: str  # "a3/f2"
    text: str  # ∂a3[i]/∂f2[j] = W3[i, j]
    tex: str  # its label in LaTeX
    value: str  # at the sample, or ""


@dataclass(frozen=True)
class Graph:
    name: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    factors: tuple[FactorInfo, ...]

    def node(self, id_: str) -> Node:
        return next(n for n in self.nodes if n.id == id_)


def quantity_id(name: str) -> str:
    return f"q-{name}"


def grad_id(step: str) -> str:
    return f"g-{step}"


def shown(v) -> str:
    """A node's number: a scalar, a short vector, or a tensor's norm."""
    from derive import evaluate as ev

    if v is None:
        return ""
    arr = np.asarray(v, dtype=np.float64)
    if arr.ndim == 0:
        return f"= {ev.fmt(arr)}"
    if arr.ndim == 1 and arr.size <= LIST_CAP:
        return "= [" + ", ".join(ev.fmt(e) for e in arr) + "]"
    return f"‖·‖ = {ev.fmt(np.linalg.norm(arr))}"


def _names_in(expr: sp.Expr, known) -> list[str]:
    """The named quantities an expression reads, in a fixed order (the order of ``known``)."""
    found = {str(a.base.label) for a in expr.atoms(sp.Indexed)}
    found |= {s.name for s in expr.free_symbols if isinstance(s, sp.Symbol)}
    return [n for n in known if n in found]


def _quantity(step) -> str:
    """The quantity a Step is ∂L/∂ of: the denominator its chain ends at."""
    return step.param or step.factors[-1].denominator


def build(der, values=None) -> Graph:
    net = der.network
    ex = Explainer(der)
    ports = [net.input.name, net.target.name]
    params = [p.name for p in net.params]
    forward = [d.name for d in der.forward]
    known = ports + params + forward + [s.name for s in der.backward]
    shapes = ex.shapes

    def value(name):
        return shown(values.get(name)) if values is not None else ""

    # every local partial, the first time a Step's chain has it, labelled as derive explain labels it
    factors: dict[str, FactorInfo] = {}
    for s in der.backward:
        _, labels = ex.labelled(s.factors, ex._target(s, s.factors))
        for i, (f, lab) in enumerate(zip(s.factors, labels)):
            key = f"{f.numerator}/{f.denominator}"
            if f.reused or key in factors:
                continue
            v = values.factors.get((s.name, i)) if values is not None and not f.value.is_number else None
            val = shown(v) if v is not None else ""  # ∂a1/∂b1 = 1 needs no "= 1" under it
            factors[key] = FactorInfo(key, f"{tx.math(lab)} = {text(f.value)}", lx.math(lab), val)

    nodes = [Node(quantity_id(net.input.name), "input", net.input.name, net.input.name,
                  latex(sp.Symbol(net.input.name)), tuple(net.input.shape), value(net.input.name)),
             Node(quantity_id(net.target.name), "target", net.target.name, net.target.name,
                  latex(sp.Symbol(net.target.name)), tuple(net.target.shape), value(net.target.name))]
    nodes += [Node(quantity_id(p), "param", p, p, latex(sp.Symbol(p)), tuple(shapes[p]), value(p)) for p in params]
    nodes += [Node(quantity_id(d.name), "forward", d.name, d.name, latex(sp.Symbol(d.name)), tuple(d.shape),
                   value(d.name)) for d in der.forward]
    nodes.append(Node(quantity_id("L"), "loss", "L", "L", "L", (), value("L")))

    edges = []
    for d in (*der.forward, der.loss):
        head = "L" if d is der.loss else d.name
        for src in _names_in(d.rhs, ports + params + forward):
            if src == head:
                continue
            key = f"{head}/{src}"
            info = factors.get(key)
            label = "" if info is None else _edge_label(info)
            edges.append(Edge(quantity_id(src), quantity_id(head), "forward", label, key if info else ""))

    steps = [s.name for s in der.backward]
    sum_of = {t: s.name for s in der.backward for t in s.terms}  # a path's term -> the sum it is added to
    reads = {s.name: list(s.terms) if s.terms else _names_in(s.rhs, steps) for s in der.backward}
    users = {n: tuple(s for s in steps if n in reads[s]) for n in steps}
    for s in der.backward:
        q = _quantity(s)
        lab = lx.math(Partial(None, sp.Symbol(q), delta=s.kind == "delta"))
        title = tx.math(Partial(None, sp.Symbol(q), delta=s.kind == "delta"))
        extra = {}
        if s.kind == "delta":
            title += f" = ∂L/∂{q}"
        if s.name in sum_of:
            via = s.factors[-1].numerator
            chain = _chain(s.factors)
            title += f" via {via}"
            lab += r"\ \text{via}\ " + latex(sp.Symbol(via))
            extra = dict(via=via, formula=tx.math(chain), factor=f"{via}/{s.factors[-1].denominator}")
        elif s.terms:
            extra = dict(paths=tuple(s.terms), formula=der.paths_note(s))
        nodes.append(Node(grad_id(s.name), "grad", s.name, title, lab, tuple(s.shape), value(s.name), of=q,
                          uses=users[s.name], **extra))
        if s.terms:
            for t in s.terms:
                edges.append(Edge(grad_id(t), grad_id(s.name), "path", "+"))
            continue
        for u in reads[s.name]:
            key = f"{_quantity(der.step(u))}/{q}"
            info = factors.get(key)
            edges.append(Edge(grad_id(u), grad_id(s.name), "backward", f"× {info.tex and _name(info)}" if info else "",
                              key if info else ""))
    for s in der.backward:  # each gradient in its quantity's column; a path's term beside its sum, untied
        edges.append(Edge(quantity_id(_quantity(s)), grad_id(s.name), "column" if s.name in sum_of else "pair"))
    return Graph(net.name, tuple(nodes), tuple(edges), tuple(factors.values()))


def _chain(factors) -> Chain:
    """A path's chain without indices, δ2·∂a2/∂f1: its factors as the derivation names them."""
    first = factors[0]
    parts = [Partial(None, sp.Symbol(first.denominator), delta=first.is_delta)]
    parts += [Partial(sp.Symbol(f.numerator), sp.Symbol(f.denominator)) for f in factors[1:]]
    return Chain((), tuple(parts))


def _name(info: FactorInfo) -> str:
    return info.text.split(" = ", 1)[0]


def _edge_label(info: FactorInfo) -> str:
    label = info.text if len(info.text) <= LABEL_CHARS else _name(info)
    return f"{label}\n{info.value}" if info.value else label

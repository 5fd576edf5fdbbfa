"""The one explainer: a Derivation -> a Document that every format renders (text, LaTeX, Markdown).

It walks the derivation's steps generically, for every layer kind: the forward definitions,
the loss, each backward step as its chain of factors (each factor's derived value, the δ or
∂L/∂f it re-uses marked), each parameter gradient with the textbook chain from L down to it,
and the parameter updates.  Only a sentence per layer kind comes from ``kinds``.

A chain is built from the steps' factors, never from printed strings: each step's first
factor is the quantity it re-uses (a δ or an ∂L/∂f defined by an earlier step) and the rest
are its local partials, so the full chain of a step is the chain of the step it re-uses
followed by its own partials.  Chains are memoised with their length, first and last factors
only, so the whole document stays linear in depth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sympy as sp

from derive import display, names
from derive.derivation import Derivation, Factor, Step
from derive.derivation.expand import expanded
from derive.explain import kinds
from derive.explain.kinds import Tex
from derive.explain.notation import name_latex
from derive.tables import optimizers
from derive.tables.losses import LOSS_RULES

CHAIN_SHOWN = 9  # factors of a full chain shown before eliding the middle with "…"
EXPAND_SHOWN = 12  # deepest scalar chain whose gradients are also shown in forward quantities
ELLIPSIS = "…"


# ----------------------------------------------------------------------------- the document


@dataclass(frozen=True)
class Partial:
    """∂top/∂bottom of two elements; ``top`` None is L, and ``delta`` writes ∂L/∂a_l as δ_l."""

    top: sp.Expr | None
    bottom: sp.Expr
    delta: bool = False


@dataclass(frozen=True)
class Chain:
    """Σ_over of the product of ``factors`` (Partials, or ELLIPSIS), in chain order."""

    over: tuple
    factors: tuple


@dataclass(frozen=True)
class Product:
    """Σ_over of the product of ``values`` (expressions or Products), printed in this order."""

    over: tuple
    values: tuple


@dataclass(frozen=True)
class Paths:
    """A sum over paths (Chains, or Products of their values), one per layer a quantity feeds:
    the multivariate chain rule, ∂L/∂f1 = δ2·∂a2/∂f1 + δ3·∂a3/∂f1."""

    items: tuple


@dataclass(frozen=True)
class Eq:
    """``lhs rel rhs[0] = rhs[1] …``, with a note after it."""

    lhs: object
    rhs: tuple
    note: tuple = ()
    rel: str = "="


@dataclass(frozen=True)
class Cont:
    """``= rhs`` continuing the last Eq."""

    rhs: object
    note: tuple = ()


@dataclass(frozen=True)
class FactorLine:
    """One factor of the chain above and its value (None: it is re-used as it stands)."""

    label: object
    value: sp.Expr | None
    note: tuple = ()


@dataclass(frozen=True)
class Result:
    """``lhs = value``: the step's value, the chain's factors multiplied in order."""

    lhs: object
    value: object


@dataclass(frozen=True)
class Prose:
    pieces: tuple
    indent: int = 4


@dataclass(frozen=True)
class Section:
    key: str  # forward | loss | backward | gradients | updates
    title: str  # the text output's heading line
    short: str  # the LaTeX / Markdown heading
    items: tuple
    intro: tuple = ()  # the LaTeX / Markdown line under the heading (pieces)


@dataclass(frozen=True)
class Document:
    name: str
    header: str
    sections: tuple


# ----------------------------------------------------------------------------- factors and chains


_DELTA = re.compile(r"delta(\d+)\Z")


def parts(f: Factor) -> tuple[str, str]:
    """(numerator, denominator) of a factor: ∂f3/∂a3 -> (f3, a3), δ3 -> (L, a3), ∂L/∂f3 -> (L, f3)."""
    num, den = getattr(f, "numerator", None), getattr(f, "denominator", None)
    if isinstance(num, str) and isinstance(den, str):  # the structured Factor of the layer-rule engine
        return num, den
    if "/" in f.name:  # today's ASCII names, "df3/da3" and "dL/df3"
        top, bottom = f.name.split("/", 1)
        return top[1:], bottom[1:]
    m = _DELTA.match(f.name)
    if not m:
        raise ValueError(f"factor {f.name!r}: expected d<x>/d<y> or delta<l>")
    return "L", names.pre_activation(int(m.group(1)))


def _is_delta(f: Factor) -> bool:
    return bool(_DELTA.match(f.name))


def _defined_by(f: Factor) -> str:
    """The name of the step that defines a re-used factor (delta3, dL_df2)."""
    num, den = parts(f)
    return f.name if _is_delta(f) else names.grad(den)


@dataclass(frozen=True)
class _ChainInfo:
    length: int
    head: tuple  # the first factors (at most 4), as Factors
    tail: tuple  # the last factors (at most 4)
    full: tuple | None  # every factor, while the chain is short enough to keep


class Explainer:
    def __init__(self, der: Derivation, param: str | None = None, expand: bool = False):
        self.der = der
        self.net = der.network
        self.param = param
        self.steps = {s.name: s for s in der.backward}
        self.shapes = self._shapes()
        self.scalar = not any(self.shapes.get(d.name) for d in der.forward)
        keep = self.scalar and self.net.depth <= EXPAND_SHOWN
        self.keep_full = max(CHAIN_SHOWN, 2 * self.net.depth + 1) if keep else CHAIN_SHOWN
        self.in_forward = keep  # scalar chains: the gradient as the product of the full chain's values
        self.expanded = expanded(der) if expand else {}
        self._chains: dict[str, _ChainInfo] = {}

    # shapes of every named quantity (forward, parameters, input, steps)
    def _shapes(self) -> dict[str, tuple]:
        out = {self.net.input.name: self.net.input.shape, self.net.target.name: self.net.target.shape}
        out.update({d.name: d.shape for d in self.der.forward})
        out.update({p.name: p.shape for p in self.net.params})
        for s in self.der.backward:
            out[s.name] = s.shape
        return out

    def chain(self, step: Step) -> _ChainInfo:
        """The textbook chain of ``step`` from L down, memoised per step (linear in depth)."""
        got = self._chains.get(step.name)
        if got is not None:
            return got
        first = step.factors[0]
        parent = self.steps.get(_defined_by(first)) if first.reused else None
        if parent is None or parent is step:
            own = step.factors
            base = _ChainInfo(0, (), (), ())
        else:
            own = step.factors[1:]
            base = self.chain(parent)
        n = base.length + len(own)
        full = base.full + tuple(own) if base.full is not None and n <= self.keep_full else None
        info = _ChainInfo(n, (base.head + tuple(own))[:4], (base.tail + tuple(own))[-4:], full)
        self._chains[step.name] = info
        return info

    # ------------------------------------------------------------------------- element labels

    def element(self, name: str, idx: tuple) -> sp.Expr:
        if not self.shapes.get(name) or not idx:
            return sp.Symbol(name)
        return sp.IndexedBase(name)[idx]

    def _index_symbols(self, e: sp.Expr) -> set:
        target = self.net.target.name
        out = set()
        for a in e.atoms(sp.Indexed):
            for i in a.indices:
                out |= {s for s in i.free_symbols if s.is_integer and s.name != target}
        for d in e.atoms(sp.KroneckerDelta):
            out |= {s for s in d.free_symbols if s.is_integer and s.name != target}
        for r in e.atoms(sp.Function):
            if type(r).__name__ == "InRange":
                out |= {s for s in r.free_symbols if s.is_integer}
        return out

    def _numerator(self, name: str, below: sp.Expr, value: sp.Expr) -> sp.Expr:
        """The element a local partial ∂name/∂below differentiates, read off its derived value."""
        ndim = len(self.shapes.get(name, ()))
        if ndim == 0:
            return sp.Symbol(name)
        b_idx = tuple(below.indices) if isinstance(below, sp.Indexed) else ()
        b_syms = set().union(*(i.free_symbols for i in b_idx)) if b_idx else set()
        extra = self._index_symbols(value) - b_syms
        if not extra and len(b_idx) == ndim:  # elementwise: f[j] of a[j]
            return self.element(name, b_idx)
        canon = self._canonical(name)
        if len(extra) == ndim:  # a contraction: the output index is the one the value adds (a2[i] of f1[j])
            order = {s.name.rstrip("'"): k for k, s in enumerate(canon)}
            return self.element(name, tuple(sorted(extra, key=lambda s: (order.get(s.name.rstrip("'"), 99),
                                                                         s.name))))
        return self.element(name, canon)

    def _canonical(self, name: str) -> tuple:
        for d in self.der.forward:
            if d.name == name and isinstance(d.lhs, sp.Indexed):
                if all(isinstance(i, sp.Symbol) for i in d.lhs.indices):
                    return tuple(d.lhs.indices)
        ndim = len(self.shapes.get(name, ()))
        return tuple(sp.symbols("o i j", integer=True))[-ndim:] if ndim <= 3 else ()

    def labelled(self, factors, target: sp.Expr) -> tuple[tuple, tuple]:
        """(Σ indices, Partials) of a chain of factors ending at ``target``, walked from the bottom."""
        below = target
        labels = []
        for f in reversed(factors[1:]):
            num, _ = parts(f)
            top = self._numerator(num, below, f.value)
            labels.append(Partial(top, below))
            below = top
        first = factors[0]
        labels.append(Partial(None, below, delta=_is_delta(first)))
        labels.reverse()
        t_syms = self._index_symbols(target) if isinstance(target, sp.Indexed) else set()
        used = set()
        for p in labels:
            for e in (p.top, p.bottom):
                if isinstance(e, sp.Indexed):
                    used |= self._index_symbols(e)
        over = tuple(sorted(used - t_syms, key=_index_key))
        return over, tuple(labels)

    def reused_value(self, f: Factor, label: Partial) -> sp.Expr:
        """The re-used factor inside a product: its symbol (δ3[i]), or its value when that is not a name."""
        if _is_delta(f) or _names_only(f.value):
            return _symbol_of(label)
        return f.value

    def product(self, factors, labels, over) -> Product:
        values = [self.reused_value(factors[0], labels[0]), *(f.value for f in factors[1:])]
        values = [v for v in values if v != 1] or [sp.S.One]
        if not over:
            return Product((), tuple(values))
        inner = [v for v in values if self._index_symbols(v) & set(over)]
        outer = [v for v in values if not (self._index_symbols(v) & set(over))]
        if not inner:
            return Product((), tuple(values))
        return Product((), (Product(over, tuple(inner)), *outer)) if outer else Product(over, tuple(inner))

    # ------------------------------------------------------------------------- the sections

    def document(self) -> Document:
        return Document(self.net.name, _header(self.net), tuple(s for s in (
            self.forward(), self.loss(), self.backward(), self.gradients(), self.updates()) if s is not None))

    def forward(self) -> Section:
        items = []
        described = set()
        for d in self.der.forward:
            li = self.net.info[d.layer - 1]
            note = kinds.definition_note(li, d)
            if note is None and li.index not in described:
                note = kinds.describe(li)
                if note is not None:
                    described.add(li.index)
            items.append(Eq(d.lhs, (d.rhs,), (f"      ({note})",) if note else ()))
        top = self.net.depth
        items.append(Eq(sp.Symbol("yhat"), (sp.Symbol(names.activation(top)),)))
        return Section("forward", kinds.forward_heading(self.net), "Forward pass", tuple(items),
                       ("Named quantities, layer by layer.",))

    def loss(self) -> Section:
        net = self.net
        rule = LOSS_RULES[net.loss.type]
        items = []
        title = _loss_title(net, rule)
        if title:
            items.append(Prose((title,), 2))
        items.append(Eq(self.der.loss.lhs, (self.der.loss.rhs,)))
        if rule.note:
            items.append(Prose((f"Note: {rule.note}",), 2))
        return Section("loss", f"Loss (per sample; the batch loss is its {net.loss.reduction})", "Loss",
                       tuple(items), (f"Per sample; the batch loss is its {net.loss.reduction}.",))

    def _folded(self) -> set[str]:
        """Upstream steps ∂L/∂f_l that the δ_l below spells out in its own chain (not printed apart)."""
        refs: dict[str, list[Step]] = {}
        for s in self.der.backward:
            if s.factors and s.factors[0].reused:
                refs.setdefault(_defined_by(s.factors[0]), []).append(s)
        folded = set()
        for s in self.der.backward:
            if s.kind != "upstream" or not _is_delta(s.factors[0]):
                continue
            users = refs.get(s.name, [])
            spelled = [d for d in self.der.deltas if d.layer == s.layer and d.factors[:len(s.factors)] == s.factors]
            if spelled and not users:
                folded.add(s.name)  # the δ repeats its factors (one engine's form)
            elif len(users) == 1 and users[0].kind == "delta":
                folded.add(s.name)  # the δ re-uses it: its chain is written out through it
        return folded

    def _display_factors(self, s: Step, folded: set[str]) -> tuple:
        first = s.factors[0]
        if s.kind == "delta" and first.reused and not _is_delta(first) and _defined_by(first) in folded:
            up = self.steps[_defined_by(first)]
            return tuple(up.factors) + tuple(s.factors[1:])
        return tuple(s.factors)

    def backward(self) -> Section:
        items = []
        folded = self._folded()
        in_sum = {t for s in self.der.backward for t in s.terms}  # a path's term: shown inside its sum
        for s in self.der.backward:
            if s.terms:
                items += self._sum_over_paths(s)
                continue
            if s.name in in_sum:
                continue
            if s.kind == "loss_grad":
                top = Partial(None, sp.Symbol(names.activation(s.layer)))
                items.append(Eq(s.lhs, (s.rhs,), ("      (SymPy: ", top, " of the loss)")))
                continue
            if s.kind == "param" or s.name in folded:
                continue
            factors = self._display_factors(s, folded)
            target = self._target(s, factors)
            over, labels = self.labelled(factors, target)
            head = (Partial(None, target),) if s.kind == "delta" else ()
            items.append(Eq(s.lhs, (*head, Chain(over, labels))))
            for f, lab in zip(factors, labels):
                items.append(self._factor_line(f, lab))
            if any(type(r).__name__ == "InRange" for f in factors for r in f.value.atoms(sp.Function)):
                items.append(Prose(("the brackets keep the kernel offset (h − i·s, w − j·s) inside the kernel: "
                                    "only the windows that cover (h, w) contribute",), 6))
            origin = getattr(s, "origin", 0)
            note = kinds.step_note(self.net.info[origin - 1]) if s.kind == "upstream" and origin else None
            if note:
                items.append(Prose((note,), 6))
            prod = self.product(factors, labels, over)
            items.append(Result(s.lhs, prod))
            if _contracted(prod):  # a sum over a Kronecker delta: SymPy eliminated it
                items.append(Result(s.lhs, s.rhs))
        return Section("backward", "Backward pass: each δl = ∂L/∂al is computed once and re-used by everything "
                       "below it", "Backward pass", tuple(items),
                       ("Each ", Tex("δl = ∂L/∂al", r"\delta_l = \partial L / \partial a_l"),
                        " is computed once and re-used by everything below it.",))

    def _sum_over_paths(self, s: Step) -> list:
        """∂L/∂f = Σ over the layers f feeds of δ·∂a/∂f, each path's factors as in a single step."""
        chains, products, lines = [], [], []
        for t in self.der.paths(s):
            target = self._target(t, t.factors)
            over, labels = self.labelled(t.factors, target)
            chains.append(Chain(over, labels))
            products.append(self.product(t.factors, labels, over))
            lines += [self._factor_line(f, lab) for f, lab in zip(t.factors, labels)]
            origin = self.net.info[t.origin - 1]
            note = kinds.step_note(origin)
            if note:
                lines.append(Prose((note,), 6))
        out = [Eq(s.lhs, (Paths(tuple(chains)),), (f"      ({self.der.paths_note(s)})",)), *lines]
        if any(type(r).__name__ == "InRange" for t in s.terms for f in self.steps[t].factors
               for r in f.value.atoms(sp.Function)):
            out.append(Prose(("the brackets keep the kernel offset (h − i·s, w − j·s) inside the kernel: "
                              "only the windows that cover (h, w) contribute",), 6))
        out.append(Result(s.lhs, Paths(tuple(products))))
        if any(_contracted(p) for p in products):  # a sum over a Kronecker delta: SymPy eliminated it
            out.append(Result(s.lhs, s.rhs))
        return out

    def _target(self, s: Step, factors) -> sp.Expr:
        _, den = parts(factors[-1])
        idx = tuple(s.lhs.indices) if isinstance(s.lhs, sp.Indexed) else ()
        return self.element(den, idx)

    def _factor_line(self, f: Factor, lab: Partial) -> FactorLine:
        if f.reused and (_is_delta(f) or _names_only(f.value)):
            return FactorLine(lab, None, ("  (re-used from above)",))
        if f.reused:
            return FactorLine(lab, f.value, ("  (computed above)",))
        return FactorLine(lab, f.value)

    def gradients(self) -> Section:
        items = []
        for s in self.der.gradients:
            if self.param is not None and s.param != self.param:
                continue
            target = self._target(s, s.factors)
            over, labels = self.labelled(s.factors, target)
            info = self.chain(s)
            items.append(Eq(s.lhs, (self._textbook(info),)))
            first = labels[0]
            items.append(Cont(Chain(over, labels), ("      (", _unindexed(first), " re-used)")))
            for f, lab in zip(s.factors[1:], labels[1:]):
                items.append(FactorLine(lab, f.value))
            items.append(Cont(s.rhs))
            if s.name in self.expanded:
                items.append(Cont(self.expanded[s.name], ("      (in forward quantities)",)))
            elif self.in_forward and info.full is not None:
                vals = [f.value for f in info.full if f.value != 1] or [sp.S.One]
                items.append(Cont(Product((), tuple(vals)), ("      (in forward quantities)",)))
            li = self.net.info[s.layer - 1]
            for note in kinds.gradient_notes(self.net, li, s.param):
                items.append(Prose(note, 4))
        return Section("gradients", "Gradients", "Gradients", tuple(items),
                       ("Each gradient: the chain from L down, the δ it re-uses, its local factor, the result.",))

    def _textbook(self, info: _ChainInfo) -> Chain:
        """∂L/∂f3 · ∂f3/∂a3 · ∂a3/∂w3: names only, the middle elided past CHAIN_SHOWN factors."""
        def label(f):
            num, den = parts(f)
            return Partial(None if num == "L" else sp.Symbol(num), sp.Symbol(den))
        if info.full is not None and info.length <= CHAIN_SHOWN:
            return Chain((), tuple(label(f) for f in info.full))
        return Chain((), (*(label(f) for f in info.head), ELLIPSIS, *(label(f) for f in info.tail)))

    def updates(self) -> Section:
        opt = self.net.optimizer
        hyper = ", ".join(f"{_greek(k)} = {v:g}" for k, v in opt.hyper.items())
        hyper_tex = ", ".join(f"{name_latex(k)} = {v:g}" for k, v in opt.hyper.items())
        title = f"Parameter updates: {opt.type} ({hyper}; {opt.schedule} schedule)"
        intro = (f"{opt.type} (", Tex(hyper, hyper_tex), f"; {opt.schedule} schedule).")
        rule = optimizers.rule_for(opt)
        items = []
        if rule is None:
            items.append(Prose(("L-BFGS: θ ← θ + α_k·p_k with p_k = −H_k·∇L from the last m (s, y) pairs (two-loop",), 2))
            items.append(Prose(("recursion) and α_k from a line search; run by scipy.optimize.minimize("
                                "method=\"L-BFGS-B\")",), 2))
            items.append(Prose(("on the generated loss and gradient (derive train).",), 2))
            return Section("updates", title, "Parameter updates", tuple(items), intro)
        items.append(Eq(sp.Symbol("eta_t"), (optimizers.SCHEDULE_EXPR[opt.schedule],),
                        ("   (t = 1, 2, … counts the steps)",)))
        for lhs, rhs in rule.scalars:
            items.append(Eq(lhs, (rhs,)))
        if rule.state:
            items.append(Prose(("state, zero at t = 0: " + ", ".join(_greek(s.name) for s in rule.state)
                                + " (one per parameter)",), 2))
        for p in self.net.params:
            if self.param is not None and p.name != self.param:
                continue
            for lhs, rhs in optimizers.instantiate(opt, p.name):
                items.append(Eq(lhs, (rhs,), rel="←"))
        return Section("updates", title, "Parameter updates", tuple(items), intro)


# ----------------------------------------------------------------------------- helpers


def _index_key(s):
    return ("oijcpqhwnk".find(s.name[0]) if s.name[0] in "oijcpqhwnk" else 99, s.name)


def _names_only(e: sp.Expr) -> bool:
    return isinstance(e, (sp.Symbol, sp.Indexed))


def _symbol_of(label: Partial) -> sp.Expr:
    """δ3[i] or ∂L/∂f2[j] as an expression (named dL_df2 so that the printers write it as ∂L/∂f2)."""
    b = label.bottom
    base = str(b.base.label) if isinstance(b, sp.Indexed) else b.name
    m = re.match(r"a(\d+)\Z", base)
    name = names.delta(int(m.group(1))) if label.delta and m else names.grad(base)
    return sp.IndexedBase(name)[b.indices] if isinstance(b, sp.Indexed) else sp.Symbol(name)


def _contracted(p: Product) -> bool:
    if any(isinstance(v, Product) and _contracted(v) for v in p.values):
        return True
    over = set(p.over)
    return any(isinstance(v, sp.Basic) and any(over & d.free_symbols for d in v.atoms(sp.KroneckerDelta))
               for v in p.values)


def _unindexed(p: Partial) -> Partial:
    """δ3 rather than δ3[i]: the quantity, in a note."""
    strip = lambda e: sp.Symbol(str(e.base.label)) if isinstance(e, sp.Indexed) else e
    return Partial(None if p.top is None else strip(p.top), strip(p.bottom), p.delta)


def _header(net) -> str:
    shape = lambda s: "scalar" if s == () else "×".join(map(str, s))
    return (f"Network {net.name}: input {net.input.name} ({shape(net.input.shape)}), "
            f"target {net.target.name} ({shape(net.target.shape)}), loss {net.loss.type} "
            f"({net.loss.reduction} over the batch)")


def _greek(name: str) -> str:
    return display.text_name(name)


def _loss_title(net, rule):
    """The loss as the lecture writes it; where the target is one number, ½(y − ŷ)², not ½‖y − ŷ‖²."""
    if net.target.shape == () and net.info[-1].out_shape in ((), None) and rule.scalar_title:
        return Tex(*rule.scalar_title)
    return Tex(rule.title, rule.tex) if rule.tex else rule.title


def build(der: Derivation, param: str | None = None, expand: bool = False) -> Document:
    return Explainer(der, param, expand).document()

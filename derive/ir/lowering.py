"""Derivation -> KernelIR: index notation becomes whole-array operations.

Each derivation step is an element rule (a1[j] = Σ_k W1[j,k]·x[k] + b1[j]).  Lowering
drops the element indices and recognises the few contractions a dense layer has
(W·f, δ·W, δ·fᵀ over the batch, sums over the batch or the output vector).  An
expression it does not recognise is an error naming the step, never a guess.
Common subexpressions of the backward pass are then named t1, t2, … by ``sympy.cse``.
"""

from __future__ import annotations

import sympy as sp

from derive import indices as ix
from derive import names
from derive.derivation.records import Derivation, Step
from derive.errors import DerivationError
from derive.layers import RULES
from derive.tables.losses import CLASS, LOSS_RULES
from derive.tables.functions import logsumexp, name_logsumexp, softmax
from derive.ir.nodes import (
    Array, Assign, BatchSum, Col, First, FirstColumn, KernelIR, LayerIR, LogSumExp, MatVec, OneHot, RowSum, Softmax,
    VecMat, ZerosLike,
)

SCALE = sp.Symbol("_scale", real=True)  # 1/B for a mean over the batch, 1 for a sum


class _Ctx:
    def __init__(self, arrays: dict[str, Array], where: str, width: int = 1):
        self.arrays = arrays
        self.where = where
        self.width = width  # the output width, for a class index's one-hot row
        self.logits = None  # the output vector (a one-hot row takes its dtype)
        self.scalar_lhs = False  # the assignment's target is a per-sample scalar

    def array(self, name: str) -> Array:
        try:
            return self.arrays[name]
        except KeyError:
            raise DerivationError(f"{self.where}: lowering found an unknown quantity {name!r}") from None


def _name(base) -> str:
    return str(base.label) if isinstance(base, sp.IndexedBase) else str(base)


def lower_expr(expr: sp.Expr, ctx: _Ctx, vector: bool) -> sp.Expr:
    """Rewrite an element expression as an array expression.

    ``vector`` says whether the element carries the output index j (then per-sample
    scalars broadcast as columns).
    """
    if isinstance(expr, sp.Sum):
        return _lower_sum(expr, ctx)
    if isinstance(expr, sp.Indexed):
        arr = ctx.array(_name(expr.base))
        sym = sp.Symbol(arr.name, real=True)
        if len(expr.indices) == 2 and expr.indices[1] == 0 and not arr.batched:
            return FirstColumn(sym)  # W[j, 0] of a one-column weight
        if arr.batched and arr.shape == ():
            return Col(sym)  # a per-sample scalar seen as a length-1 vector
        return sym
    if isinstance(expr, sp.Symbol):
        if expr == SCALE:
            return expr
        arr = ctx.array(expr.name)
        sym = sp.Symbol(arr.name, real=True)
        if vector and arr.batched and arr.shape == ():
            return Col(sym)
        return sym
    if isinstance(expr, sp.KroneckerDelta):
        a, b = expr.args
        y = a if b in (ix.j, ix.i, ix.p) else b
        return OneHot(sp.Symbol(ctx.array(str(y)).name, real=True), sp.Integer(ctx.width), ctx.logits)
    if isinstance(expr, softmax):
        return Softmax(sp.Symbol(_name(expr.args[0]), real=True))
    if isinstance(expr, logsumexp):
        return LogSumExp(sp.Symbol(_name(expr.args[0]), real=True))
    if not expr.args:
        return expr
    args = [lower_expr(a, ctx, vector) for a in expr.args]
    if isinstance(expr, (sp.Add, sp.Mul)):
        return expr.func(*args, evaluate=False)  # the order the math is written in (w1·x + b1, not b1 + w1·x)
    return expr.func(*args)


def _lower_sum(s: sp.Sum, ctx: _Ctx) -> sp.Expr:
    (idx, lo, hi), = s.limits
    body = s.function
    factors = sp.Mul.make_args(body)
    indexed = [f for f in factors if isinstance(f, sp.Indexed)]
    if len(factors) == 2 and len(indexed) == 2:
        m = [f for f in indexed if len(f.indices) == 2]
        v = [f for f in indexed if len(f.indices) == 1]
        if len(m) == 1 and len(v) == 1 and v[0].indices[0] == idx:
            w, vec = m[0], v[0]
            w_sym = sp.Symbol(_name(w.base), real=True)
            v_low = lower_expr(vec, ctx, True)
            if w.indices[1] == idx:
                return MatVec(w_sym, v_low)
            if w.indices[0] == idx and w.indices[1] == 0 and ctx.scalar_lhs:
                return First(VecMat(v_low, w_sym))  # ∂L/∂f of a scalar feeding a vector layer
            if w.indices[0] == idx:
                return VecMat(v_low, w_sym)
    # Σ_j of an elementwise expression over the output vector.
    free = {i for f in body.atoms(sp.Indexed) for i in f.indices}
    if free <= {idx}:
        return RowSum(lower_expr(body.xreplace({idx: ix.j}), ctx, True), sp.Integer(hi - lo + 1))
    raise DerivationError(f"{ctx.where}: no lowering for the contraction {s}")


def lower(der: Derivation, source: str = "<python>") -> KernelIR:
    net = der.network
    arrays: dict[str, Array] = {}
    x = Array(net.input.name, net.input.shape, True)
    y_dtype = "int" if LOSS_RULES[net.loss.type].target == CLASS else "float"
    y = Array(net.target.name, net.target.shape, True, y_dtype)
    arrays[x.name] = x
    arrays[y.name] = y
    params = tuple(Array(p.name, p.shape, False) for p in net.params)
    arrays.update({p.name: p for p in params})

    forward: list[Assign] = []
    for d in der.forward:
        arrays[d.name] = Array(d.name, d.shape, True)
        ctx = _Ctx(arrays, f"forward {d.name}")
        layer = net.info[d.layer - 1]
        own = not (layer.activation and d.name == names.activation(layer.index))  # the activation is generic
        node = RULES[layer.kind].lower_forward(d.name, layer, net) if own else None
        if node is not None:  # a whole-array operation of the layer's rule (conv, flatten, pooling)
            forward.append(Assign(d.name, node, d.shape, True, _comment_forward(d)))
            continue
        forward.append(Assign(d.name, lower_expr(d.rhs, ctx, bool(d.shape)), d.shape, True,
                              _comment_forward(d)))

    top = net.info[-1]
    f_top = forward[-1]
    if top.out_shape == (1,) and net.target.shape == ():
        output = Assign("yhat", First(sp.Symbol(f_top.name, real=True)), (), True,
                        f"ŷ = {f_top.name}[0]: the single output as a scalar per sample")
    else:
        output = Assign("yhat", sp.Symbol(f_top.name, real=True), f_top.shape, True, f"ŷ = {f_top.name}")

    width = top.out_shape[0] if top.out_shape else 1
    ctx = _Ctx(arrays, "loss", width)
    ctx.logits = sp.Symbol(f_top.name, real=True)
    loss_rhs = name_logsumexp(der.loss.rhs, der.symbols[f_top.name])
    loss = Assign("loss_per_sample", lower_expr(loss_rhs, ctx, False), (), True, "ℓ for each sample")

    backward: list[Assign] = []
    grads: list[tuple[str, str]] = []
    for s in der.backward:
        arrays[s.name] = Array(s.name, s.shape, s.kind != "param")
        ctx = _Ctx(arrays, f"step {s.name}", width)
        ctx.logits = sp.Symbol(f_top.name, real=True)
        ctx.scalar_lhs = s.shape == ()
        layer = net.info[s.origin - 1]
        node = None
        if s.terms:  # the sum over paths of a quantity several layers read: its terms are named above
            backward.append(Assign(s.name, sp.Add(*(sp.Symbol(t, real=True) for t in s.terms), evaluate=False),
                                   s.shape, True, _comment_sum(s)))
            continue
        if s.kind in ("param", "upstream") and s.rhs != 0:
            node = RULES[layer.kind].lower_step(s, layer, net, lambda e, ctx=ctx: lower_expr(e, ctx, True))
        if node is not None:  # the layer's rule spells it (an outer product, a convolution, a pooling gradient)
            comment = _comment_step(s) if RULES[layer.kind].step_comment == "chain" else _comment_forward(s)
            backward.append(Assign(s.name, node, s.shape, s.kind != "param",
                                   comment + (", summed over the batch" if s.kind == "param" else "")))
            grads += [(s.param, s.name)] if s.kind == "param" else []
            continue
        backward.append(_lower_step(s, ctx))
        if s.kind == "param":
            grads.append((s.param, s.name))

    return KernelIR(
        name=net.name,
        source=source,
        input=x,
        target=y,
        params=params,
        slope_inits=tuple((li.slope_param, li.slope_init) for li in net.info if li.slope_param),
        fan_ins=tuple((p.name, p.fan_in) for p in net.params),
        forward=tuple(forward),
        output=output,
        loss=loss,
        backward=_cse(tuple(backward)),
        grads=tuple(grads),
        loss_type=net.loss.type,
        reduction=net.loss.reduction,
        layers=_layers(net),
        **_lower_optimizer(net),
    ).check()


def _lower_optimizer(net) -> dict:
    from derive.tables import optimizers
    from derive.display import text

    opt = net.optimizer
    rule = optimizers.rule_for(opt)
    out = {"optimizer": opt.type, "schedule": opt.schedule, "hyper": tuple(opt.hyper.items())}
    if rule is None:
        return out
    eta = Assign("eta_t", optimizers.SCHEDULE_EXPR[opt.schedule], (), False,
                 f"η_t = {text(optimizers.SCHEDULE_EXPR[opt.schedule])} ({opt.schedule} schedule)")
    scalars = (eta,) + tuple(Assign(str(lhs), rhs, (), False, f"{lhs} = {text(rhs)}") for lhs, rhs in rule.scalars)
    updates = tuple(Assign(str(lhs), rhs, (), True, f"{text(lhs)} ← {text(rhs)}") for lhs, rhs in rule.steps)
    out.update(state=tuple(str(s) for s in rule.state), update_scalars=scalars, updates=updates)
    return out


def _layers(net) -> tuple[LayerIR, ...]:
    return tuple(LayerIR(li.index, li.kind, li.in_shape, li.out_shape, li.source, names.activation(li.index),
                         li.weight, li.bias, li.activation, li.slope_value, li.slope_param, li.kernel, li.stride,
                         li.padding, li.inputs) for li in net.info)


def _lower_step(s: Step, ctx: _Ctx) -> Assign:
    if s.rhs == 0:
        # no gradient flows (the zero-one loss): zeros shaped like the quantity it stands for
        like = s.param if s.kind == "param" else f"f{s.layer}"
        return Assign(s.name, ZerosLike(sp.Symbol(like, real=True)), s.shape, s.kind != "param",
                      _comment_step(s) + " = 0")
    vector = bool(s.shape)
    if s.kind == "loss_grad":
        expr = SCALE * lower_expr(s.rhs, ctx, vector)
        comment = f"∂L/∂f{s.layer} of the loss, times 1/B for the batch mean (or 1 for the sum)"
        return Assign(s.name, expr, s.shape, True, comment)
    if s.kind in ("delta", "upstream"):
        return Assign(s.name, lower_expr(s.rhs, ctx, vector), s.shape, True, _comment_step(s))
    # A parameter gradient: the per-sample rule summed over the batch.
    expr = BatchSum(lower_expr(s.rhs, ctx, bool(s.shape)))
    return Assign(s.name, expr, s.shape, False, _comment_step(s) + ", summed over the batch")


def _comment_forward(d) -> str:
    from derive.display import text

    return f"{text(d.lhs)} = {text(d.rhs)}"


def _comment_step(s: Step) -> str:
    from derive.display import factor_name, text

    chain = " · ".join(factor_name(f.name) for f in s.factors)
    if s.wrt and s.name != names.grad(s.wrt):  # one path's term of a sum over paths
        return f"∂L/∂{s.wrt} through {s.factors[-1].numerator} (one path's term) = {chain}"
    return f"{text(s.lhs)} = {chain}"


def _comment_sum(s: Step) -> str:
    return f"∂L/∂{s.wrt}: the sum over the {len(s.terms)} paths from L (the multivariate chain rule)"


def _cse(steps: tuple[Assign, ...]) -> tuple[Assign, ...]:
    """Name repeated subexpressions t1, t2, … (deterministic: sympy.cse with numbered symbols).

    Each temporary is placed right before the first assignment that needs it.
    """
    temps, reduced = sp.cse([a.expr for a in steps], symbols=sp.numbered_symbols("t", start=1, real=True),
                            order="none")
    # A view such as x[:, None] is cheaper to repeat than to name.
    views = {sym: val for sym, val in temps if isinstance(val, (Col, sp.Symbol))}
    if views:
        temps = [(sym, val.xreplace(views)) for sym, val in temps if sym not in views]
        reduced = [e.xreplace(views) for e in reduced]
    remaining = dict(temps)
    order = {sym: n for n, (sym, _) in enumerate(temps)}
    out: list[Assign] = []
    for a, e in zip(steps, reduced):
        need: set = set()
        stack = [s for s in e.free_symbols if s in remaining]
        while stack:
            sym = stack.pop()
            if sym in need:
                continue
            need.add(sym)
            stack.extend(s for s in remaining[sym].free_symbols if s in remaining)
        for sym in sorted(need, key=order.__getitem__):
            out.append(Assign(str(sym), remaining.pop(sym), a.shape, a.batched, "shared subexpression"))
        out.append(Assign(a.name, e, a.shape, a.batched, a.comment))
    return tuple(out)

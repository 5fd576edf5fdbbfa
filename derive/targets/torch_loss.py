"""The torch target's loss lines: the cross-entropy's log-softmax computed once, for the loss's value
and again, as softmax(z) = exp(log softmax(z)), for derive's derived ∂L/∂z = scale·(softmax(z) − onehot(y)).

On the CPU each torch call on the B × n logits costs a few microseconds of dispatch, more than its
arithmetic: printed as written, the loss (logsumexp(z) − z_y) and its gradient (softmax, one-hot,
difference, scale) took 24 small calls a step where PyTorch's F.cross_entropy takes one.  Here the
forward takes two (torch.log_softmax, F.nll_loss for the value) and the gradient, still derive's
expression, three passes (exp of the kept log-softmax, the one-hot's 1 subtracted where y points,
the scale), with no one-hot matrix and no second softmax.  Every other loss is printed as written.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import sympy as sp

from derive.ir.nodes import Assign, IRNode, KernelIR, LogSumExp, OneHot, RowSum, Softmax


class SoftmaxMinusOneHot(IRNode):
    """SoftmaxMinusOneHot(log_p, y, s) = s·(exp(log_p) − onehot(y)): derive's cross-entropy gradient
    s·(softmax(z) − onehot(y, z)) from log_p = log softmax(z), which the loss's forward kept."""

    nargs = 3


@dataclass(frozen=True)
class LossLines:
    """What _loss_from prints: its lines (lhs, rhs, comment), the batch loss's expression, and the
    names of what the backward reads of the loss's own computation (kept with the forward quantities)."""

    lines: list[dict]
    value: str
    kept: list[str]


def _cross_entropy(expr: sp.Expr):
    """(z, y, n) when the loss is derive's cross-entropy logsumexp(z) − Σ_j z_j·[y = j]; else None."""
    terms = sp.Add.make_args(expr)
    lse = [t for t in terms if isinstance(t, LogSumExp)]
    if len(terms) != 2 or len(lse) != 1:
        return None
    z = lse[0].args[0]
    rest = terms[0] if terms[1] is lse[0] else terms[1]
    factors = sp.Mul.make_args(rest)
    sums = [f for f in factors if isinstance(f, RowSum)]
    if len(factors) != 2 or -1 not in factors or len(sums) != 1:
        return None
    body, n = sums[0].args
    hot = [f for f in sp.Mul.make_args(body) if isinstance(f, OneHot)]
    if len(hot) != 1 or set(sp.Mul.make_args(body)) != {z, hot[0]}:
        return None
    y, width, logits = hot[0].args
    if logits != z or width != n:
        return None
    return z, y, n


def _fused_gradient(e: sp.Expr, z, y, n, log_p):
    """s·(softmax(z) − onehot(y, z)) as SoftmaxMinusOneHot(log_p, y, s) where it occurs as that product."""
    if not isinstance(e, sp.Mul):
        return None
    sums = [f for f in e.args if isinstance(f, sp.Add)]
    if len(sums) != 1:
        return None
    terms = set(sp.Add.make_args(sums[0]))
    if terms != {Softmax(z), -OneHot(y, n, z)}:
        return None
    scale = [f for f in e.args if f is not sums[0]]
    return SoftmaxMinusOneHot(log_p, y, sp.Mul(*scale))


def loss_lines(ir: KernelIR, backward: list[Assign], pr, reduce: str) -> tuple[LossLines, list[Assign]]:
    """The loss's lines for _loss_from, and the backward rewritten to read what they keep."""
    found = _cross_entropy(ir.loss.expr)
    if found is None:
        line = {"lhs": "loss_per_sample", "rhs": pr.doprint(ir.loss.expr), "comment": ir.loss_type}
        return LossLines([line], f"{reduce}(loss_per_sample)", []), backward
    z, y, n = found
    name = f"_log_softmax_{z.name}"
    log_p = sp.Symbol(name, real=True)
    zs, ys = pr.doprint(z), pr.doprint(y)
    line = {"lhs": name, "rhs": f"torch.log_softmax({zs}, dim=1)",
            "comment": f"log softmax({zs})[j] = {zs}[j] − logsumexp({zs}), once: ℓ reads it, ∂L/∂{zs} its exp"}
    value = f'F.nll_loss({name}, {ys}, reduction="{ir.reduction}")'
    out = []
    for a in backward:
        expr = a.expr.replace(lambda e: _fused_gradient(e, z, y, n, log_p) is not None,
                              lambda e: _fused_gradient(e, z, y, n, log_p))
        out.append(replace(a, expr=expr.xreplace({Softmax(z): sp.exp(log_p)})))
    return LossLines([line], value, [name]), out

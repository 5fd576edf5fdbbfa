"""KernelIR -> a PyTorch module: custom ops whose gradients are derive's backward, and an nn.Module.

The same forward and backward Assign lists as the NumPy module, printed by TorchCodePrinter.
Besides the loss's value and gradients, the module differentiates ŷ for any upstream
gradient (a vector-Jacobian product): derive's backward seeded with ∂L/∂ŷ in place of the
loss's own ∂L/∂ŷ, so a user's loss on ``module(x)`` also backpropagates through derive's code.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import replace

import sympy as sp

from derive.errors import DerivationError
from derive.ir.nodes import (Assign, AvgPool2d, ConvForward, First, KernelIR, LayerIR, LocalForward, MatVec,
                             MaxPool2d, VecMat)
from derive.layers import rule_for
from derive.layers.base import NoTorchEquivalent
from derive.tables.activations import ACTIVATIONS
from derive.tables.functions import relu, step
from derive.targets.common import _common, _env
from derive.targets.torch_loss import loss_lines
from derive.targets.torch_printer import ReluGradInPlace, TorchCodePrinter

# The ops' calling convention, part of their digest: a file generated before a change of it gets
# other op names than one generated after, so both can be imported into one process.
OPS_SCHEMA = "params: Tensor[]"


# expressions whose printed value is a new tensor, never a view of another (relu may overwrite one)
_FRESH = (sp.Add, sp.Mul, MatVec, VecMat, ConvForward, LocalForward, MaxPool2d, AvgPool2d)


def class_name(name: str) -> str:
    """lecture_convnet -> LectureConvnet (names are identifiers, checked by derive.names)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Network"


def render_torch(ir: KernelIR, out_dir: str = "generated") -> str:
    pr = TorchCodePrinter()
    seed, vjp = _vjp_backward(ir)
    backward, vjp, kept, in_place = _relu_from_output(ir, list(ir.backward), vjp)
    reduce = "torch.mean" if ir.reduction == "mean" else "torch.sum"
    loss, backward = loss_lines(ir, backward, pr, reduce)
    returned = {g for _, g in ir.grads_by_param()}
    backward, vjp = _relu_grad_in_place(ir, backward, returned), _relu_grad_in_place(ir, vjp, returned)
    line = lambda a: {"lhs": a.name, "rhs": pr.doprint(a.expr), "comment": a.comment}

    def forward_line(a: Assign) -> dict:
        if a.name not in in_place:
            return line(a)
        (pre,) = a.expr.args
        return {"lhs": a.name, "rhs": f"torch.relu_({pr.doprint(pre)})",
                "comment": f"{a.comment} (in place: nothing below reads {pre.name})"}

    torch_layers, torch_params, no_equivalent, torch_graph = _torch_equivalent(ir)
    ctx = _common(ir, out_dir)
    ctx.update(
        cls=class_name(ir.name),
        forward=[forward_line(a) for a in ir.forward],
        forward_names=kept,
        output=pr.doprint(ir.output.expr),
        output_shape=repr(tuple(ir.output.shape)),
        loss_lines=loss.lines,
        loss_value=loss.value,
        loss_kept=loss.kept,
        backward=[line(a) for a in backward],
        seed=seed,
        vjp=[line(a) for a in vjp],
        grads=[{"param": p, "value": g} for p, g in ir.grads_by_param()],
        scale=f"1.0 / {ir.input.name}.shape[0]" if ir.reduction == "mean" else "1.0",
        torch_layers=torch_layers,
        torch_params=torch_params,
        no_equivalent=no_equivalent,
        torch_graph=torch_graph,
        scalar_input=ir.input.shape == (),
        input_shape_tuple=repr(tuple(ir.input.shape)),
        target_shape_tuple=repr(tuple(ir.target.shape)),
    )
    ctx["helpers"] = pr.helper_sources()
    ctx["imports"] = ["import importlib.util", "import sys", "from pathlib import Path", "",
                      "import numpy as np", "import torch", "import torch.nn.functional as F"]
    # The ops' names carry a digest of the math they run: a module imported twice reuses its ops,
    # and a changed network of the same name gets new ones instead of the old implementation.
    body = repr((OPS_SCHEMA, ctx["forward"], loss, ctx["backward"], ctx["vjp"], ctx["seed"], ctx["output"],
                 [(p.name, p.shape) for p in ir.params], ir.input, ir.target, ir.reduction))
    ctx["ops"] = f"{ir.name}_{hashlib.sha256(body.encode()).hexdigest()[:10]}"
    text = _env().get_template("torch_module.py.jinja").render(**ctx)
    if not re.search(r"\bF\.", text):  # no conv or pad: the functional module is not imported
        text = text.replace("import torch.nn.functional as F\n", "", 1)
    return text


def _relu_from_output(ir: KernelIR, backward: list[Assign], vjp: list[Assign]):
    """relu' read from relu's output: step(a) = step(f) for f = relu(a), so the backward passes need
    f only.  Returns both passes rewritten so; the forward quantities that the loss, ŷ or a backward
    pass read (the ones the forward keeps, in order); and each f = relu(a) whose a nothing else reads
    and is a fresh tensor, which relu may overwrite (one tensor fewer to write and to keep, where
    torch.nn.ReLU writes a second)."""
    swap = {step(a.expr.args[0]): step(sp.Symbol(a.name, **a.expr.args[0].assumptions0)) for a in ir.forward
            if isinstance(a.expr, relu) and isinstance(a.expr.args[0], sp.Symbol)}
    backward = [replace(a, expr=a.expr.xreplace(swap)) for a in backward]
    vjp = [replace(a, expr=a.expr.xreplace(swap)) for a in vjp]
    read = {s.name for a in (*backward, *vjp) for s in a.expr.free_symbols}
    read |= {s.name for e in (ir.loss.expr, ir.output.expr) for s in e.free_symbols}
    kept = [a.name for a in ir.forward if a.name in read]
    forward_reads: dict[str, int] = {}
    for a in ir.forward:
        for s in a.expr.free_symbols:
            forward_reads[s.name] = forward_reads.get(s.name, 0) + 1
    fresh = {a.name for a in ir.forward if isinstance(a.expr, _FRESH)}
    in_place = {a.name for a in ir.forward
                if isinstance(a.expr, relu) and isinstance(a.expr.args[0], sp.Symbol)
                and a.expr.args[0].name in fresh and a.expr.args[0].name not in read
                and forward_reads.get(a.expr.args[0].name) == 1}
    return backward, vjp, kept, in_place


def _relu_grad_in_place(ir: KernelIR, lines: list[Assign], returned: set[str]) -> list[Assign]:
    """relu's backward g·step(f) written over g where g is a name for a fresh tensor of f's shape that
    nothing else reads (not a later line, not a returned gradient, not the caller's ∂L/∂ŷ): one
    tensor fewer to allocate and to write per relu layer, where autograd's ReluBackward writes one."""
    shapes = {a.name: a.shape for a in (*ir.forward, *lines)}
    fresh = {a.name for a in lines if isinstance(a.expr, (sp.Add, sp.Mul, MatVec, VecMat))}
    reads: dict[str, int] = {}
    for a in lines:
        for s in a.expr.free_symbols:
            reads[s.name] = reads.get(s.name, 0) + 1
    out = []
    for a in lines:
        g = _step_product(a.expr)
        if (g is not None and g[0].name in fresh and reads[g[0].name] == 1 and g[0].name not in returned
                and shapes.get(g[0].name) == shapes.get(g[1].name) == a.shape):
            a = replace(a, expr=ReluGradInPlace(*g))
        out.append(a)
    return out


def _step_product(e: sp.Expr):
    """(g, f) for e = g·step(f) with g and f names; else None."""
    if not isinstance(e, sp.Mul) or len(e.args) != 2:
        return None
    steps = [f for f in e.args if isinstance(f, step)]
    names = [f for f in e.args if isinstance(f, sp.Symbol)]
    if len(steps) != 1 or len(names) != 1 or not isinstance(steps[0].args[0], sp.Symbol):
        return None
    return names[0], steps[0].args[0]


def _vjp_backward(ir: KernelIR) -> tuple[dict, list[Assign]]:
    """derive's backward from a given ∂L/∂ŷ: every step but the loss's own ∂L/∂f_top, and the
    shared subexpressions only that step used (they may read the target y)."""
    top = ir.forward[-1]
    seed_name = f"dL_d{top.name}"
    if not any(a.name == seed_name for a in ir.backward):
        raise DerivationError(f"torch target: the backward pass of {ir.name} has no {seed_name}")
    first = isinstance(ir.output.expr, First)  # ŷ = f_top[:, 0]: the upstream gradient is a column
    rhs = "grad_yhat[:, None]" if first else "grad_yhat"
    seed = {"lhs": seed_name, "rhs": rhs, "comment": f"∂L/∂{top.name} = ∂L/∂ŷ, given by the caller"}
    steps = [a for a in ir.backward if a.name != seed_name]
    temps = {a.name for a in steps if a.comment == "shared subexpression"}
    needed = {s.name for a in steps if a.name not in temps for s in a.expr.free_symbols}
    for a in reversed(steps):  # a temporary is needed when a later needed assignment reads it
        if a.name in temps and a.name in needed:
            needed |= {s.name for s in a.expr.free_symbols}
    out = [a for a in steps if a.name not in temps or a.name in needed]
    reads = {s.name for a in out for s in a.expr.free_symbols}
    if ir.target.name in reads or "_scale" in reads:
        raise DerivationError(f"torch target: {ir.name}'s backward below ∂L/∂ŷ reads the target or the batch scale")
    return seed, out


def _torch_equivalent(ir: KernelIR) -> tuple[list[str], list[dict], str | None, dict | None]:
    """The equivalent torch.nn model as constructor strings; each derive parameter's place in it
    (the k-th module with parameters, and its attribute); why there is none; and for a graph
    network, its wiring (one torch.nn.Sequential per layer, the quantities each reads).  Each layer's
    module is its rule's (``torch_module``), each activation's its table entry's."""
    params: list[dict] = []
    held = 0  # modules with parameters so far
    shapes = {p.name: p.shape for p in ir.params}
    pre = ["torch.nn.Unflatten(0, (-1, 1))"] if ir.input.shape == () else []  # a scalar as a length-1 vector
    per_layer: list[list[str]] = []
    for li in ir.layers:
        rule = rule_for(li)
        try:
            module = rule.torch_module(li)
        except NoTorchEquivalent as why:
            return [], [], str(why), None
        mods = [module] if module else []
        per_layer.append(mods)
        own = rule.torch_params(li)
        for name, attr, shape in own:
            if math.prod(shapes[name]) != math.prod(shape):
                raise DerivationError(f"torch target: {name} {shapes[name]} does not fit torch's {attr} {shape}")
            params.append({"name": name, "index": held, "attr": attr})
        held += bool(own)
        act = _activation(li)
        if act:
            mods.append(act)
            if li.slope_param:
                params.append({"name": li.slope_param, "index": held, "attr": "weight"})
                held += 1
    post = []
    if isinstance(ir.output.expr, First) or ir.output.shape == ():
        post.append("torch.nn.Flatten(0)")  # ŷ one scalar per sample, as derive returns it
    if ir.graph_reason() is None:
        return pre + [m for mods in per_layer for m in mods] + post, params, None, None
    graph = {"layers": per_layer, "reads": [list(li.sources) for li in ir.layers],
             "joins": [(k, rule_for(li).torch_merge) for k, li in enumerate(ir.layers) if rule_for(li).torch_merge],
             "outputs": [li.output for li in ir.layers],
             "input": ir.input.name, "pre": pre, "post": post}
    return [], params, None, graph


def _activation(li: LayerIR) -> str | None:
    if li.activation is None:
        return None
    module = ACTIVATIONS[li.activation].torch_module
    if module is None:
        raise DerivationError(f"torch target: no torch.nn module for the activation {li.activation}")
    return module.format(slope=li.slope) or None

"""KernelIR -> the fused Triton module (one kernel per network, an SGD and an update kernel)."""

from __future__ import annotations

import math

from derive.ir.nodes import KernelIR
from derive.targets import triton_volume as volume
from derive.targets.common import _common, _env
from derive.targets.printers import HostPrinter
from derive.targets.triton_printer import TRITON_HELPERS, TritonCodePrinter

TRITON_BLOCK_B = 64


def _pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def render_triton(ir: KernelIR, out_dir: str = "generated") -> str:
    arrays = ir.arrays()
    widths: dict[str, object] = {}
    real: dict[str, int] = {}
    for a in arrays.values():
        if len(a.shape) == 1:
            widths[a.name] = _pow2(a.shape[0])
            real[a.name] = a.shape[0]
        elif len(a.shape) == 2:
            widths[a.name] = (_pow2(a.shape[0]), _pow2(a.shape[1]))
        else:
            widths[a.name] = 0
    # the smallest BLOCK_B a launch may use decides tl.dot against broadcast-multiply-sum
    pr = TritonCodePrinter(widths, real, 16, "ieee")
    pr.volume_calls = volume.calls(ir)
    sizes = sorted({n for a in arrays.values() for n in a.shape} | {1} | volume.sizes(ir))

    def line(a):
        return {"lhs": a.name, "rhs": pr.doprint(a.expr), "comment": a.comment}

    backward = []
    for a in ir.backward:
        if volume.dropped(ir, a):
            continue
        ln = line(a)
        if a.name == ir.backward[0].name:  # ∂L/∂ŷ: zero on padded rows and columns
            ln["rhs"] = f"tl.where({_mask(a.shape)}, {ln['rhs']}, 0.0)"
        backward.append(ln)

    ctx = _common(ir, out_dir)
    ctx.update(
        block_b=TRITON_BLOCK_B,
        kernel_args=_kernel_args(ir) + volume.kernel_args(ir),
        scratch=volume.scratch(ir),
        columns=[{"n": n, "padded": _pow2(n)} for n in sizes],
        loads=[_load_param(p) for p in ir.params if p.name not in volume.params(ir)]
        + ([_load_sample(ir.input, f"{ir.input.name}_ptr")] if volume.needs_input_tile(ir) else []),
        forward=[line(a) for a in ir.forward if not volume.dropped(ir, a)],
        store_out=_store_out(ir),
        load_target=_load_sample(ir.target, f"{ir.target.name}_ptr"),
        loss_rhs=pr.doprint(ir.loss.expr),
        loss_scale="_scale",
        backward=backward,
        grad_stores=[volume.grad_store(ir, p.name) or _store_grad(p, g)
                     for p, (_, g) in zip(ir.params, ir.grads_by_param())],
        scale="1.0 / _batch" if ir.reduction == "mean" else "1.0",
        output_shape=repr(tuple(ir.output.shape)),
    )
    host = HostPrinter()
    ctx["host_scalars"] = [{"lhs": a.name, "rhs": host.doprint(a.expr), "comment": a.comment}
                           for a in ir.update_scalars]
    ctx["updates"] = [line(a) for a in ir.updates]
    ctx["kernel_scalars"] = _kernel_scalars(ir)
    ctx["helpers"] = [TRITON_HELPERS[h] for h in sorted(pr.helpers)] + volume.helpers(ir, _env())
    ctx["imports"] = ["import math", "import numpy as np", "import torch", "import triton", "import triton.language as tl"]
    return _env().get_template("triton_module.py.jinja").render(**ctx)


def _kernel_scalars(ir: KernelIR) -> list[str]:
    """The scalars the update kernel takes: every free symbol of the update that is not per-element."""
    elementwise = {"theta", "g", *ir.state} | {a.name for a in ir.updates}
    names = {s.name for a in ir.updates for s in a.expr.free_symbols} - elementwise
    return sorted(names)


def _mask(shape: tuple) -> str:
    if not shape:
        return "row_mask"
    return f"row_mask[:, None] & cmask_{shape[0]}[None, :]"


def _kernel_args(ir: KernelIR) -> list[dict]:
    def desc(a):
        dims = ", ".join(["B", *map(str, a.shape)])
        kind = "int class indices" if a.dtype == "int" else "float32"
        return f"({dims}) {kind}"

    args = [
        {"name": f"{ir.input.name}_ptr", "comment": f"input {ir.input.name}, {desc(ir.input)}"},
        {"name": f"{ir.target.name}_ptr", "comment": f"target {ir.target.name}, {desc(ir.target)}"},
    ]
    args += [{"name": f"{p.name}_ptr", "comment": f"parameter {p.name}, {p.shape}"} for p in ir.params]
    args += [
        {"name": f"dL_d{p.name}_ptr", "comment": f"gradient accumulator for {p.name} (float32, zeroed)"}
        for p in ir.params
    ]
    args.append({"name": "LOSS_ptr", "comment": "batch loss accumulator (float32, zeroed)"})
    args.append({"name": "OUT_ptr", "comment": f"ŷ, (B{''.join(', ' + str(n) for n in ir.output.shape)}) float32"})
    return args


def _load_param(p) -> str:
    if not p.shape:
        return f"{p.name} = tl.load({p.name}_ptr)"
    if len(p.shape) == 1:
        n = p.shape[0]
        return f"{p.name} = tl.load({p.name}_ptr + cols_{n}, mask=cmask_{n}, other=0.0)"
    m, n = p.shape
    return (f"{p.name} = tl.load({p.name}_ptr + cols_{m}[:, None] * {n} + cols_{n}[None, :], "
            f"mask=cmask_{m}[:, None] & cmask_{n}[None, :], other=0.0)")


def _load_sample(a, ptr: str) -> str:
    other = "0" if a.dtype == "int" else "0.0"
    if not a.shape:
        return f"{a.name} = tl.load({ptr} + rows, mask=row_mask, other={other})"
    n = a.shape[0] if len(a.shape) == 1 else math.prod(a.shape)  # a volume as a flat (c·h·w) tile
    return (f"{a.name} = tl.load({ptr} + rows[:, None] * {n} + cols_{n}[None, :], "
            f"mask=row_mask[:, None] & cmask_{n}[None, :], other={other})")


def _store_out(ir: KernelIR) -> str:
    pr_value = ir.forward[-1].name if ir.output.shape or not ir.forward[-1].shape else None
    if ir.output.shape:
        n = ir.output.shape[0]
        return (f"tl.store(OUT_ptr + rows[:, None] * {n} + cols_{n}[None, :], {pr_value}, "
                f"mask=row_mask[:, None] & cmask_{n}[None, :])")
    value = ir.forward[-1].name if not ir.forward[-1].shape else f"tl.sum({ir.forward[-1].name}, axis=1)"
    return f"tl.store(OUT_ptr + rows, {value}, mask=row_mask)"


def _store_grad(p, g: str) -> str:
    ptr = f"dL_d{p.name}_ptr"
    if not p.shape:
        return f"tl.atomic_add({ptr}, {g})"
    if len(p.shape) == 1 or len(p.shape) >= 3:  # a locally connected bias (o, h, w) is stored flat
        n = math.prod(p.shape)
        return f"tl.atomic_add({ptr} + cols_{n}, {g}, mask=cmask_{n})"
    m, n = p.shape
    return f"tl.atomic_add({ptr} + cols_{m}[:, None] * {n} + cols_{n}[None, :], {g}, mask=cmask_{m}[:, None] & cmask_{n}[None, :])"

"""What every Triton plan returns (TritonPlan), and the module pieces every plan shares: the update
kernel's context (the one update kernel reduces the programs' rows of gradient sums in a fixed order and
steps), and the one COMPILE_SPECS builder."""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy as sp

from derive.ir.nodes import KernelIR
from derive.targets.common import _common
from derive.targets.printers import HostPrinter


def step_aliases(ir: KernelIR) -> dict[str, str]:
    """a -> f for every forward line f = relu(a) of a named a: step(a) may be read from f (f > 0 exactly where
    a > 0), so that the backward pass needs f alone (both plans read it so)."""
    return {a.expr.args[0].name: a.name for a in ir.forward
            if getattr(type(a.expr), "positive_where_positive", False) and isinstance(a.expr.args[0], sp.Symbol)}


@dataclass(frozen=True)
class TritonPlan:
    """The rendered module and what derive inspect's cost model reads from its rendering: the fused
    kernel's memory traffic and FLOPs as printed, (section, scale, "read" | "write" | "flop", amount) with scale
    "row" (per batch row streamed: x, y, ŷ; and the FLOPs: "flop" on the CUDA cores, "dot" on tensor cores),
    "reread" (per batch row, read again from L2), "scratch" (per row of the program's scratch) or "tile"
    (per batch tile)."""

    text: str
    events: tuple
    block_b: int
    num_warps: int
    scratch_width: int = 0  # floats per scratch row of the fused kernel
    dot_precision: str | None = None  # tl.dot's input_precision where the fused kernel uses tensor cores
    # per-layer kernels: (name, section, bytes per row, bytes per launch, FLOPs per row) per kernel
    kernels: tuple = ()
    strategy: object = None  # the fused kernel's derive.targets.triton.Strategy: what it keeps on chip, and why
    # one line per kernel of the training step: which phases it computes, and why they were (not) fused
    fusion: tuple = ()


def kernel_scalars(ir: KernelIR) -> list[str]:
    """The scalars the update kernel takes: every free symbol of the update that is not per-element."""
    elementwise = {"theta", "g", *ir.state} | {a.name for a in ir.updates}
    names = {s.name for a in ir.updates for s in a.expr.free_symbols} - elementwise
    return sorted(names)


def update_block(n_params: int, sms: int = 132) -> int:
    """Parameters per program of the update kernel: a power of two from 128 to 1024, the largest that still
    gives every SM of an H100 a program (its grid is the parameters over the block: at 1,024, the 64-wide
    4-layer net's 16,640 parameters took 17 programs, each adding 132 partial rows on one SM)."""
    block = 1024
    while block > 128 and -(-n_params // block) < sms:
        block //= 2
    return block


def module_context(ir: KernelIR, out_dir: str, printer, kernel_imports: set[str] = frozenset()) -> dict:
    """What the module template reads besides the kernels: the spec's constants, the flat parameter
    layout (one row of gradient sums per program, the loss last), the optimizer's host scalars and its
    per-element update printed by ``printer`` (a TritonCodePrinter); ``kernel_imports``: the modules the kernels'
    printers recorded besides ``printer``'s."""
    ctx = _common(ir, out_dir)
    n_params = sum(math.prod(p.shape) for p in ir.params)
    host = HostPrinter()
    ctx.update(
        n_params=n_params,
        n_total=n_params + 1,
        update_block=update_block(n_params),
        host_scalars=[{"lhs": a.name, "rhs": host.doprint(a.expr), "comment": a.comment} for a in ir.update_scalars],
        updates=[{"lhs": a.name, "rhs": printer.doprint(a.expr), "comment": a.comment} for a in ir.updates],
        kernel_scalars=kernel_scalars(ir),
        grad_names=[{"param": p, "grad": g} for p, g in ir.grads_by_param()],
        scale="1.0 / _batch" if ir.reduction == "mean" else "1.0",
        output_shape=repr(tuple(ir.output.shape)),
    )
    imports = ["import numpy as np", "import torch", "import triton", "import triton.language as tl"]
    # the modules the printed lines name (the host scalars' math.sqrt and the like), as the printers recorded
    used = set(host.module_imports) | set(printer.imports) | set(kernel_imports)
    imports[:0] = [f"import {m}" for m in sorted(used - {"numpy", "torch", "triton"})]
    ctx["imports"] = imports
    return ctx


def compile_specs(ir: KernelIR, kernels: list[tuple[str, dict, list[dict]]]) -> dict:
    """COMPILE_SPECS: one entry per kernel and launch configuration the module may use, in the form
    triton.compile(ASTSource(fn, signature, constexprs)) takes, so anyone can compile the kernels.
    ``kernels``: (kernel name, signature {parameter: type}, one {constexpr: value as text} per launch
    configuration); the update kernel's entries (one per MODE the module launches) are added here."""
    update = {"_PARAMS_ptr": "*fp32", "_PART_ptr": "*fp32", "_PROGRAMS": "i32", "_LOSS_ptr": "*fp32",
              **{f"_STATE_{s}_ptr": "*fp32" for s in ir.state}, "_N": "i32", "_lr": "fp32",
              **{a: "fp32" for a in kernel_scalars(ir)}, "MODE": "constexpr", "_BLOCK": "constexpr"}
    modes = (0, 1, 2) if ir.updates else (0, 1)
    kernels = [*kernels, (f"{ir.name}_update_kernel", update, [{"MODE": str(m), "_BLOCK": "UPDATE_BLOCK"} for m in modes])]
    signatures = []
    for name, sig, _ in kernels:
        items = ", ".join(f'"{k}": "{v}"' for k, v in sig.items())
        signatures.append(f'"{name}": {{{items}}}')
    entries = []
    for name, _, configs in kernels:
        for cx in configs:
            text = ", ".join(f'"{k}": {v}' for k, v in cx.items())
            entries.append(f'{{"kernel": "{name}", "signature": _SIGNATURES["{name}"], "constexprs": {{{text}}}, '
                           f'"num_warps": NUM_WARPS, "num_stages": NUM_STAGES, "maxnreg": MAXNREG}}')
    return {"signatures": signatures, "compile_specs": entries}

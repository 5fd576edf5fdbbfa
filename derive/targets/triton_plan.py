"""What both Triton generators (the fused dense module, triton.py; the per-layer module, triton_layers.py)
return, and the update kernel's scalars, which both print the same way."""

from __future__ import annotations

from dataclasses import dataclass

from derive.ir.nodes import KernelIR


@dataclass(frozen=True)
class TritonPlan:
    """The rendered module and what derive inspect's cost model reads from its rendering: the fused
    kernel's memory traffic and FLOPs as printed, (section, scale, "read" | "write" | "flop", amount) with scale
    "row" (per batch row streamed: x, y, ŷ; and the FLOPs: "flop" on the CUDA cores, "dot" on tensor cores), "reread" (per batch row, read again from L2), "scratch" (per row of
    the program's scratch) or "tile" (per batch tile)."""

    text: str
    events: tuple
    block_b: int
    num_warps: int
    scratch_width: int = 0  # floats per scratch row of the fused kernel
    dot_precision: str | None = None  # tl.dot's input_precision where the fused kernel uses tensor cores
    # per-layer modules (triton_layers.py): (name, section, bytes per row, bytes per launch, FLOPs per row) per kernel
    kernels: tuple = ()
    strategy: object = None  # the fused kernel's derive.targets.triton.Strategy: what it keeps on chip, and why


def kernel_scalars(ir: KernelIR) -> list[str]:
    """The scalars the update kernel takes: every free symbol of the update that is not per-element."""
    elementwise = {"theta", "g", *ir.state} | {a.name for a in ir.updates}
    names = {s.name for a in ir.updates for s in a.expr.free_symbols} - elementwise
    return sorted(names)

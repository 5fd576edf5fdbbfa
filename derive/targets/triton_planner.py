"""The Triton target's one planner: KernelIR -> TritonPlan for every network.

The IR's assignments become a list of phases, each named by the node class the per-layer emitter table
(EMITTERS, triton_layers.py) keys its kernel by ("elementwise" where none does: a line the strict printer
spells).  The fusion pass then merges phases into one kernel where their working set fits on chip: when
every phase is row-local (a batch row's values depend on that row alone, through W·f, δ·W, δᵀ·f, Σ over
the batch and elementwise lines, sums over paths included), all of them become the fused persistent
kernel (triton.py), whose Strategy (choose_strategy) says how it keeps its bytes on chip.  A phase that
reads across a volume's pixels (a window, pooling, a reshape, padding) or joins columns (a concat: a
register tile has no concatenation) stops the fusion, and every phase gets its per-layer kernel (an
elementwise phase rides in the epilogue of the kernel before it, a bias gradient in its weight gradient's
kernel, and ŷ, the loss and the first backward lines in a whole-row last forward kernel: triton_layers.py).  The plan says which phases each
kernel computes and why they were or were not fused (`derive inspect` prints it).
"""

from __future__ import annotations

import dataclasses

import sympy as sp

from derive.ir import nodes as N
from derive.ir.nodes import Assign, KernelIR
from derive.targets.triton import Strategy, choose_strategy, plan_fused, refuse_graph
from derive.targets.triton_layers import EMITTERS, plan_layers
from derive.targets.triton_plan import TritonPlan
from derive.targets.wrap import wrap

# the node classes whose phases are row-local: the fused kernel prints them on a batch tile
ROW_LOCAL = (N.MatVec, N.VecMat, N.Outer, N.BatchSum)
# why a phase is not row-local, by the node class its emitter (or, inside a line, its printer) is keyed by
NOT_ROW_LOCAL = {
    N.ConvForward: "a convolution reads a window of pixels", N.LocalForward: "a locally connected layer reads a window",
    N.ConvWeightGrad: "sums windows of pixels", N.LocalWeightGrad: "sums windows of pixels",
    N.ConvBiasGrad: "sums over a volume's pixels", N.ConvInputGrad: "scatters windows of pixels",
    N.LocalInputGrad: "scatters windows of pixels", N.MaxPool2d: "pools a window of pixels",
    N.AvgPool2d: "pools a window of pixels", N.MaxPool2dGrad: "routes a pooled gradient back to its window",
    N.AvgPool2dGrad: "spreads a pooled gradient over its window", N.Flatten: "reshapes a volume",
    N.Unflatten: "reshapes a volume", N.Pad: "pads a volume", N.Crop: "crops a volume",
    N.Concat: "joins columns of its inputs (a register tile has no concatenation)",
    N.Slice: "splits a concat's gradient by columns",
}


@dataclasses.dataclass(frozen=True)
class Phase:
    """One assignment of the IR as the planner sees it: ``node`` the class name of its emitter's node
    ("elementwise": printed by the strict printer), ``why_not`` why it cannot join a fused kernel (None:
    it is row-local)."""

    name: str
    section: str
    node: str
    why_not: str | None


def phases(ir: KernelIR) -> list[Phase]:
    """The IR's assignments in launch order (forward, ŷ, the loss, backward), each classified by the
    emitter table."""
    out = []
    for section, assigns in (("forward", ir.forward), ("out", [ir.output]), ("loss", [ir.loss]),
                             ("backward", ir.backward)):
        for a in assigns:
            out.append(_phase(a, section))
    return out


def _phase(a: Assign, section: str) -> Phase:
    kind = type(a.expr)
    node = kind.__name__ if kind in EMITTERS else "elementwise"
    for n in sp.preorder_traversal(a.expr):  # the node itself, or a concat inside an elementwise line
        why = NOT_ROW_LOCAL.get(type(n))
        if why:
            return Phase(a.name, section, node, why)
    return Phase(a.name, section, node, None)


def fuse(ir: KernelIR, plan: list[Phase]) -> Phase | None:
    """The fusion pass's decision: None where every phase is row-local (one fused kernel), else the first
    phase that is not (every phase then gets its per-layer kernel)."""
    return next((p for p in plan if p.why_not), None)


def render_triton(ir: KernelIR, out_dir: str = "generated") -> str:
    return plan_triton(ir, out_dir).text


def plan_triton(ir: KernelIR, out_dir: str = "generated", strategy: Strategy | None = None) -> TritonPlan:
    """The module's text (folded to 100 columns, as every target's), what the cost model reads, and one
    line per kernel saying which phases it computes and why."""
    refuse_graph(ir)
    plan = phases(ir)
    stop = fuse(ir, plan)
    if stop is None:
        strategy = strategy or choose_strategy(ir)
        out = plan_fused(ir, out_dir, strategy)
        fusion = (f"{ir.name}_fused_kernel: all {len(plan)} phases, {plan[0].name} … {plan[-1].name}, fused: "
                  f"every phase is row-local (kept on chip as the plan \"{strategy.name}\" says)",)
        if strategy.sums == "split":
            fusion += (f"{ir.name}_dw_kernel: the weight gradients ∂L/∂W = Σ δᵀ·f, split-K over the batch from the "
                       "δ and f rows the fused kernel stores",)
    else:
        out = plan_layers(ir, out_dir)
        fusion = (f"not fused: {stop.name} ({stop.node}) {stop.why_not}", *out.fusion)
    return dataclasses.replace(out, text=wrap(out.text), fusion=fusion)


__all__ = ["Phase", "fuse", "phases", "plan_triton", "render_triton"]

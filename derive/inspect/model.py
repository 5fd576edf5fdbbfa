"""The static cost model of one training step: bytes moved to and from global memory, FLOPs, and the
time they take at a card's peak rates, for the fused Triton step and for PyTorch eager on the same network.

The fused kernel's numbers come from its rendering (derive.targets.triton.plan_triton records every load,
store and contraction it prints).  It runs as a persistent grid, one program per SM, each looping over
batch tiles.  Traffic that streams with the batch (x, y, ŷ) is counted at DRAM.  What every tile repeats
in the same few addresses is counted once at DRAM and in full at the L2 level: the weights read at each
use, each program's scratch rows (re-used by each of its tiles) and its row of partial gradient sums
(read-modify-written per tile), as long as together they fit in L2; where they do not, the scratch rows
are counted in full at DRAM.  The update kernel reads the partial rows (from L2, where the fused kernel
left them, when they fit) and reads and writes θ and the state once.
Elementwise FLOPs are not counted.  A launch is timed two ways:
- without L2 (the older figure, kept for comparison): max(DRAM bytes / bandwidth, FLOPs / FLOP rate);
- with L2: max(DRAM bytes / bandwidth, FLOPs / FLOP rate, L2 bytes / L2 bandwidth); and that plus a fixed
  overhead per launch (5 µs by default) for small batches, where launches decide.
A launch of fewer programs than the card has SMs runs at that share of every rate (each program on one SM).
The contractions a kernel runs as tl.dot go at the tf32 tensor-core rate divided by the products its input
precision takes per product (3 for "tf32x3"), the rest at the fp32 rate.  The L2 bandwidth is a measured
one (te42kyfo/gpu-benches, gpu-l2-cache: H100 PCIe about 7.0 TB/s for 10-33 MB working sets, A100 80GB
about 5.4 TB/s; docs/gpu.md); NVIDIA publishes none.

Eager PyTorch: each op reads its inputs and writes its output through L2 (addmm, the activation, the loss,
and in backward the activation's derivative, δᵀ·f, Σ δ, δ·W), then one foreach optimizer update.  Where
the step's whole footprint (x, y, every activation autograd keeps, θ, ∂L/∂θ and the state) fits in L2,
the per-sample tensors stay there between ops: only x and y come from DRAM, the rest is L2 traffic.
Where it does not fit, every op's tensors go to and from DRAM (each op's operands are MBs that the next
op's and the rest of the step's traffic evict).  Time per op as above, summed over ops.

A per-layer module (a network with a volume, derive.targets.triton_layers) is modeled kernel by kernel
from what each launch takes: every per-sample operand read or written once per row (once, where a kernel takes
the same buffer twice; a small dense layer's split-K partial sums too, written by its operand's kernel and
read by its own), every parameter once per launch, every gradient once per split of the batch, and the
FLOPs of its contraction (convolution, W·f, δ·W, δᵀ·f) per row; the same bytes at L2, and the sums a program
read-modify-writes in its own row (a dense ∂W riding in a convolution's ∂W kernel) at L2 alone.

The ideal step reads x and y once and the parameters, gradients and optimizer state once each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from derive.ir.nodes import KernelIR
from derive.targets.triton_layers import splits
from derive.targets.triton_plan import update_block
from derive.layers import rule_for
from derive.tables.activations import IDENTITY

# peak HBM bandwidth, dense fp32 (CUDA cores) and dense tf32 (tensor cores); l2_bandwidth measured
# (te42kyfo/gpu-benches gpu-l2-cache/h100_pcie.txt: 6,999 GB/s at 10 MB, 6,925 GB/s at 33 MB;
# a100_80.txt: 5,350-5,406 GB/s at 3.5-25 MB; see docs/gpu.md)
CARDS = {
    "sm_90": {"name": "H100 SXM", "bandwidth": 3.35e12, "fp32": 67e12, "tf32": 495e12, "l2_bytes": 50e6, "sms": 132,
              "l2_bandwidth": 7.0e12},
    "sm_80": {"name": "A100 SXM 80GB", "bandwidth": 2.039e12, "fp32": 19.5e12, "tf32": 156e12, "l2_bytes": 40e6,
              "sms": 108, "l2_bandwidth": 5.4e12},
}
LAUNCH_SECONDS = 5e-6  # the overhead counted per launch in the L2-counted total, for every contender
TRAINING_SECTIONS = ("forward", "loss", "backward")


# tensor-core products per product at each tl.dot input precision ("ieee" runs on the CUDA cores)
TF32_PASSES = {"tf32": 1, "tf32x3": 3}


@dataclass(frozen=True)
class Cost:
    name: str
    launches: int
    dram_bytes: float
    l2_bytes: float
    flops: float  # all of them: the CUDA cores' and the tensor cores'
    dot_flops: float = 0.0  # the share run as tl.dot
    dot_precision: str | None = None
    l2_sources: tuple = ()  # (what, bytes): where the L2 traffic comes from, for the report
    programs: int = 0  # the launch's grid (0: it fills the card, as eager's library kernels are taken to)

    def idle(self, card: dict) -> float:
        """The factor a grid of fewer programs than the card has SMs takes longer by: each program runs on one
        SM, so a grid of P < SMs programs has P / SMs of the card's FLOP rate and memory bandwidth at most."""
        return max(1.0, card["sms"] / self.programs) if self.programs else 1.0

    def compute_seconds(self, card: dict) -> float:
        passes = TF32_PASSES.get(self.dot_precision)
        if passes is None:  # no tensor cores: every FLOP at the fp32 rate
            return self.idle(card) * self.flops / card["fp32"]
        return self.idle(card) * ((self.flops - self.dot_flops) / card["fp32"]
                                  + passes * self.dot_flops / card["tf32"])

    def seconds(self, card: dict) -> float:
        """The older figure: DRAM and FLOPs only."""
        return max(self.idle(card) * self.dram_bytes / card["bandwidth"], self.compute_seconds(card))

    def seconds_l2(self, card: dict) -> float:
        """DRAM, FLOPs and L2, whichever takes longest (no launch overhead)."""
        return max(self.seconds(card), self.idle(card) * self.l2_bytes / card["l2_bandwidth"])

    def bound(self, card: dict) -> str:
        """What bounds the launch with L2 counted: "DRAM", "FLOP" or "L2"."""
        times = {"DRAM": self.dram_bytes / card["bandwidth"], "FLOP": self.compute_seconds(card) / self.idle(card),
                 "L2": self.l2_bytes / card["l2_bandwidth"]}
        return max(times, key=times.get)


def _update_programs(theta_bytes: int) -> int:
    n = theta_bytes // 4
    return -(-n // update_block(n))


def _params_bytes(ir: KernelIR) -> int:
    return 4 * sum(math.prod(p.shape) for p in ir.params)


def fused_step(ir: KernelIR, plan, batch: int, card: dict) -> list[Cost]:
    """The fused kernel (training launch) and the update kernel that reduces the partial sums."""
    tiles = -(-batch // plan.block_b)
    programs = min(tiles, card["sms"])
    per = {scale: {"read": 0, "write": 0, "flop": 0, "dot": 0}
           for scale in ("row", "reread", "scratch", "tile", "program")}
    for section, scale, kind, amount in plan.events:
        if section in TRAINING_SECTIONS:
            per[scale][kind] += amount
    theta = _params_bytes(ir)
    partials = programs * (theta + 4)  # one row per program: ∂L/∂θ and the loss
    streamed = batch * (per["row"]["read"] + per["row"]["write"])
    scratch = batch * (per["scratch"]["read"] + per["scratch"]["write"])
    reread = batch * per["reread"]["read"]
    footprint = programs * plan.block_b * plan.scratch_width * 4
    resident = footprint + partials + theta <= card["l2_bytes"]
    per_tile = tiles * (per["tile"]["read"] + per["tile"]["write"])
    per_program = programs * (per["program"]["read"] + per["program"]["write"])
    sources = (("x, y, ŷ streamed (and y read again)", streamed + reread), ("scratch rows", scratch),
               ("per tile: weights at each use, partial sums read-modify-written", per_tile),
               ("per program: weights loaded once, partial row zeroed or written once", per_program))
    fused = Cost("fused kernel (loss + gradients)", 1,
                 dram_bytes=streamed + (footprint if resident else scratch) + theta + partials,
                 l2_bytes=sum(b for _, b in sources),
                 flops=batch * (per["row"]["flop"] + per["row"]["dot"]) + tiles * per["tile"]["flop"],
                 dot_flops=batch * per["row"]["dot"], dot_precision=plan.dot_precision, l2_sources=sources,
                 programs=programs)
    state = len(ir.state)
    io = theta * (2 + 2 * state)  # θ and each state read and written once
    # the partial rows come from L2, where the fused kernel's last read-modify-writes left them
    update = Cost("update kernel (reduction + step)", 1, dram_bytes=io + (0 if resident else partials),
                  l2_bytes=io + partials, flops=0, programs=_update_programs(theta))
    dw = _dw_kernel(plan, batch, programs)
    return [fused, *dw, update]


def _dw_kernel(plan, batch: int, programs: int) -> list[Cost]:
    """The split plan's ∂W kernel (section "dw" of the plan's events): it streams the δ and f rows the fused
    kernel stored (and x) from DRAM, which hold far more than L2 at a training batch, runs δᵀ·f as tl.dot,
    and writes each program's entries of its partial row once (read by the update kernel from L2, as the
    fused kernel's)."""
    per = {scale: {"read": 0, "write": 0, "dot": 0} for scale in ("row", "program")}
    found = False
    for section, scale, kind, amount in plan.events:
        if section == "dw":
            per[scale][kind] += amount
            found = True
    if not found:
        return []
    rows = batch * (per["row"]["read"] + per["row"]["write"])
    sums = programs * per["program"]["write"]
    return [Cost("∂W kernel (δᵀ·f, split-K over the batch)", 1, dram_bytes=rows + sums, l2_bytes=rows + sums,
                 flops=batch * per["row"]["dot"], dot_flops=batch * per["row"]["dot"],
                 dot_precision=plan.dot_precision, l2_sources=(("δ, f and x rows streamed", rows),
                                                               ("per program: its ∂W entries written once", sums)))]


def layered_step(ir: KernelIR, plan, batch: int) -> list[Cost]:
    """One Cost per kernel of a per-layer module's training launch (forward, loss, backward), then the update."""
    # the training launch's loss: one partial per tile of the kernel that computes it, summed by a launch of
    # its own (one program) before the backward kernels (the step reports the loss as one number)
    parts = 4 * (-(-batch // plan.block_b) + 1)
    rows = splits(batch)  # the gradient kernels' rows of partial sums, each written once
    kernels = [k for k in plan.kernels if k.section in TRAINING_SECTIONS and k.training]
    out = []
    for k in kernels:
        moved = batch * k.row + k.fixed + k.grads * (rows if k.split else 1)
        out.append(Cost(k.name, 1, moved, moved + batch * k.l2_row, batch * k.flops, programs=k.grid(batch)))
    first_backward = next((i for i, k in enumerate(kernels) if k.section == "backward"), len(kernels))
    if not any(k.loss for k in kernels):  # else a backward kernel writes the loss per split, as the gradients
        out.insert(first_backward, Cost("loss sum kernel", 1, parts, parts, 0, programs=1))
    theta, state = _params_bytes(ir), len(ir.state)
    moved = theta * (rows + 2 + 2 * state)  # every row of partial sums read, θ and the state read and written
    out.append(Cost("update kernel", 1, moved, moved, 0, programs=_update_programs(theta)))
    return out


def ideal_bytes(ir: KernelIR, batch: int) -> int:
    x = 4 * math.prod(ir.input.shape)
    y = 8 if ir.target.dtype == "int" else 4 * math.prod(ir.target.shape)
    return batch * (x + y) + _params_bytes(ir) * (2 + len(ir.state))


def eager_footprint(ir: KernelIR, batch: int) -> int:
    """Bytes eager keeps alive over a step: x, y, every layer's output (and pre-activation where the
    activation's backward needs it), ŷ, θ, ∂L/∂θ and the optimizer state."""
    per_row = sum(math.prod(layer.out_shape) * (1 if layer.activation in (None, IDENTITY) else 2)
                  for layer in ir.layers if not rule_for(layer).view)
    return ideal_bytes(ir, batch) + 4 * batch * per_row + _params_bytes(ir)


def eager_step(ir: KernelIR, batch: int, card: dict | None = None) -> list[Cost]:
    """One Cost per PyTorch eager op of a training step (forward, backward, optimizer).

    Every byte goes through L2.  With a card whose L2 holds the step's whole footprint, the per-sample
    tensors stay there between ops and only x's and y's first reads reach DRAM; otherwise (or without a
    card) every op's operands go to and from DRAM."""
    n = batch
    resident = card is not None and eager_footprint(ir, batch) <= card["l2_bytes"]
    ops: list[Cost] = []

    def op(name, rows_read, rows_write, fixed=0, flops=0, first_read=0):
        # rows_*: per-sample elements (batch-scaled); fixed: parameter-sized elements; first_read: the part of
        # rows_read that no earlier op wrote (x, y), which comes from DRAM even where the step fits in L2
        l2 = 4 * (rows_read + rows_write + fixed)
        dram = 4 * (first_read + fixed) if resident else l2
        ops.append(Cost(name, 1, dram, l2, flops))

    for i, layer in enumerate(ir.layers):
        fin, fout = math.prod(layer.in_shape), math.prod(layer.out_shape)
        l = layer.index
        if rule_for(layer).view:
            continue  # a view
        dense = rule_for(layer).dense_cost(layer)  # per sample: multiply-adds, weight and bias elements
        if dense is None:  # pooling, add, concat: one read and one write each way
            op(f"{layer.kind}{l}", n * fin, n * fout, first_read=n * fin if i == 0 else 0)
            op(f"{layer.kind}{l} backward", n * fout, n * fin)
            continue
        macs, w, b = n * dense[0], dense[1], dense[2]
        op(f"{layer.kind}{l} forward", n * fin, n * fout, w + (b if layer.bias else 0), 2 * macs,
           first_read=n * fin if i == 0 else 0)
        if layer.activation not in (None, IDENTITY):
            op(f"{layer.activation}{l}", n * fout, n * fout)
            op(f"{layer.activation}{l} backward", 2 * n * fout, n * fout)
        op(f"∂L/∂{layer.weight}", n * fout + n * fin, 0, w, 2 * macs)
        if layer.bias:
            op(f"∂L/∂{layer.bias}", n * fout, 0, b)
        if i > 0:
            op(f"∂L/∂{layer.source}", n * fout, n * fin, w, 2 * macs)
    out = math.prod(ir.output.shape) or 1
    y = 2 if ir.target.dtype == "int" else math.prod(ir.target.shape) or 1
    op("loss", n * out + n * y, n * out, first_read=n * y)
    op("loss reduction", n * out, 0, 1)
    op("loss backward", n * out + n * y, n * out)
    p = _params_bytes(ir) // 4
    op(f"{ir.optimizer} update (foreach)", 0, 0, p * (3 + 2 * len(ir.state)))
    return ops


def summary(ir: KernelIR, plan, batch: int, arch: str, l2_bandwidth: float | None = None,
            launch_seconds: float = LAUNCH_SECONDS) -> dict:
    card = dict(CARDS[arch])
    if l2_bandwidth is not None:
        card["l2_bandwidth"] = l2_bandwidth
    fused = layered_step(ir, plan, batch) if plan.kernels else fused_step(ir, plan, batch, card)
    eager = eager_step(ir, batch, card)
    ideal = ideal_bytes(ir, batch)
    fused_total, eager_total = _total(fused, card, launch_seconds), _total(eager, card, launch_seconds)
    # the older figure (no L2) modeled every eager op through DRAM: kept as it was, for comparison
    eager_total["seconds"] = sum(c.seconds(card) for c in eager_step(ir, batch))
    tiles = -(-batch // plan.block_b)
    return {
        "layered": bool(plan.kernels), "card": card["name"], "bandwidth_Bps": card["bandwidth"],
        "l2_bandwidth_Bps": card["l2_bandwidth"], "l2_capacity_bytes": card["l2_bytes"],
        "launch_seconds": launch_seconds,
        "fp32_flops": card["fp32"], "tf32_flops": card["tf32"], "dot_precision": plan.dot_precision,
        "batch": batch, "block_b": plan.block_b, "tiles": tiles,
        "programs": tiles if plan.kernels else min(tiles, card["sms"]),
        "fused": [_row(c, card) for c in fused],
        "fused_total": fused_total,
        "eager": [_row(c, card) for c in eager],
        "eager_total": eager_total,
        "eager_in_l2": eager_footprint(ir, batch) <= card["l2_bytes"],
        "ideal": {"dram_bytes": ideal, "seconds": ideal / card["bandwidth"]},
        "fused_traffic_over_ideal": fused_total["dram_bytes"] / ideal,
        "fused_l2_over_dram": fused_total["l2_bytes"] / fused_total["dram_bytes"],
        "eager_over_fused_time": _ratio(eager_total["seconds"], fused_total["seconds"]),
        "eager_over_fused_time_l2": _ratio(eager_total["seconds_l2"], fused_total["seconds_l2"]),
        "eager_over_fused_time_l2_launch": _ratio(eager_total["seconds_l2_launch"], fused_total["seconds_l2_launch"]),
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def _total(costs: list[Cost], card: dict, launch_seconds: float) -> dict:
    launches = sum(c.launches for c in costs)
    return {"launches": launches, "dram_bytes": sum(c.dram_bytes for c in costs),
            "l2_bytes": sum(c.l2_bytes for c in costs), "flops": sum(c.flops for c in costs),
            "dot_flops": sum(c.dot_flops for c in costs), "seconds": sum(c.seconds(card) for c in costs),
            "seconds_l2": sum(c.seconds_l2(card) for c in costs),  # with L2 counted
            "seconds_l2_launch": sum(c.seconds_l2(card) for c in costs) + launches * launch_seconds}


def _row(c: Cost, card: dict) -> dict:
    return {"name": c.name, "launches": c.launches, "dram_bytes": c.dram_bytes, "l2_bytes": c.l2_bytes,
            "flops": c.flops, "dot_flops": c.dot_flops, "seconds": c.seconds(card),
            "seconds_l2": c.seconds_l2(card), "bound": c.bound(card), "programs": c.programs,
            "idle": c.idle(card), "l2_sources": [{"what": w, "bytes": b} for w, b in c.l2_sources]}

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
Elementwise FLOPs are not counted; the time of a kernel is max(DRAM bytes / bandwidth, FLOPs / FLOP rate),
where the contractions the kernel runs as tl.dot go at the tf32 tensor-core rate divided by the products
its input precision takes per product (3 for "tf32x3"), and the rest at the fp32 rate
(the L2 traffic is reported beside it, not timed: NVIDIA publishes no L2 bandwidth).

Eager PyTorch: each op reads its inputs from and writes its output to global memory (addmm, the
activation, the loss, and in backward the activation's derivative, δᵀ·f, Σ δ, δ·W), then one
foreach optimizer update.  Time per op is max(bytes / bandwidth, FLOPs / FLOP rate), summed over ops.

A per-layer module (a network with a volume, derive.targets.triton_layers) is modeled kernel by kernel
from what each launch takes: every per-sample operand read or written once per row, every parameter and
gradient once per launch, and the FLOPs of its contraction (convolution, W·f, δ·W, δᵀ·f) per row.

The ideal step reads x and y once and the parameters, gradients and optimizer state once each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from derive.ir.nodes import KernelIR

# H100 SXM: HBM3 bandwidth, dense fp32 (CUDA cores) and dense tf32 (tensor cores)
CARDS = {
    "sm_90": {"name": "H100 SXM", "bandwidth": 3.35e12, "fp32": 67e12, "tf32": 495e12, "l2_bytes": 50e6, "sms": 132},
    "sm_80": {"name": "A100 SXM 80GB", "bandwidth": 2.039e12, "fp32": 19.5e12, "tf32": 156e12, "l2_bytes": 40e6,
              "sms": 108},
}
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

    def seconds(self, card: dict) -> float:
        passes = TF32_PASSES.get(self.dot_precision)
        if passes is None:  # no tensor cores: every FLOP at the fp32 rate
            compute = self.flops / card["fp32"]
        else:
            compute = (self.flops - self.dot_flops) / card["fp32"] + passes * self.dot_flops / card["tf32"]
        return max(self.dram_bytes / card["bandwidth"], compute)


def _params_bytes(ir: KernelIR) -> int:
    return 4 * sum(math.prod(p.shape) for p in ir.params)


def fused_step(ir: KernelIR, plan, batch: int, card: dict) -> list[Cost]:
    """The fused kernel (training launch) and the update kernel that reduces the partial sums."""
    tiles = -(-batch // plan.block_b)
    programs = min(tiles, card["sms"])
    per = {scale: {"read": 0, "write": 0, "flop": 0, "dot": 0} for scale in ("row", "reread", "scratch", "tile")}
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
    fused = Cost("fused kernel (loss + gradients)", 1,
                 dram_bytes=streamed + (footprint if resident else scratch) + theta + partials,
                 l2_bytes=streamed + reread + scratch + tiles * (per["tile"]["read"] + per["tile"]["write"]) + partials,
                 flops=batch * (per["row"]["flop"] + per["row"]["dot"]) + tiles * per["tile"]["flop"],
                 dot_flops=batch * per["row"]["dot"], dot_precision=plan.dot_precision)
    state = len(ir.state)
    io = theta * (2 + 2 * state)  # θ and each state read and written once
    # the partial rows come from L2, where the fused kernel's last read-modify-writes left them
    update = Cost("update kernel (reduction + step)", 1, dram_bytes=io + (0 if resident else partials),
                  l2_bytes=io + partials, flops=0)
    return [fused, update]


def layered_step(ir: KernelIR, plan, batch: int) -> list[Cost]:
    """One Cost per kernel of a per-layer module's training launch (forward, loss, backward), then the update."""
    out = []
    for name, section, row, fixed, flops in plan.kernels:
        if section in ("forward", "loss", "backward"):
            out.append(Cost(name, 1, batch * row + fixed, batch * row + fixed, batch * flops))
    theta, state = _params_bytes(ir), len(ir.state)
    out.append(Cost("update kernel", 1, theta * (3 + 2 * state), theta * (3 + 2 * state), 0))
    return out


def ideal_bytes(ir: KernelIR, batch: int) -> int:
    x = 4 * math.prod(ir.input.shape)
    y = 8 if ir.target.dtype == "int" else 4 * math.prod(ir.target.shape)
    return batch * (x + y) + _params_bytes(ir) * (2 + len(ir.state))


def eager_step(ir: KernelIR, batch: int) -> list[Cost]:
    """One Cost per PyTorch eager op of a training step (forward, backward, optimizer)."""
    n = batch
    ops: list[Cost] = []

    def op(name, read, write, flops=0):
        ops.append(Cost(name, 1, 4 * (read + write), 4 * (read + write), flops))

    for i, layer in enumerate(ir.layers):
        fin, fout = math.prod(layer.in_shape), math.prod(layer.out_shape)
        l = layer.index
        if layer.kind == "flatten":
            continue  # a view
        if layer.kind == "linear":
            w = fin * fout
            macs = n * w
        elif layer.kind in ("conv2d", "locally_connected"):
            c, (kh, kw) = layer.in_shape[0], layer.kernel
            macs = n * fout * c * kh * kw
            w = (layer.out_shape[0] if layer.kind == "conv2d" else fout) * c * kh * kw
        else:  # pooling and later kinds: one read and one write each way
            op(f"{layer.kind}{l}", n * fin, n * fout)
            op(f"{layer.kind}{l} backward", n * fout, n * fin)
            continue
        b = fout if layer.kind == "locally_connected" else (layer.out_shape[0] if layer.kind == "conv2d" else fout)
        op(f"{layer.kind}{l} forward", n * fin + w + (b if layer.bias else 0), n * fout, 2 * macs)
        if layer.activation not in (None, "identity"):
            op(f"{layer.activation}{l}", n * fout, n * fout)
            op(f"{layer.activation}{l} backward", 2 * n * fout, n * fout)
        op(f"∂L/∂{layer.weight}", n * fout + n * fin, w, 2 * macs)
        if layer.bias:
            op(f"∂L/∂{layer.bias}", n * fout, b)
        if i > 0:
            op(f"∂L/∂{layer.source}", n * fout + w, n * fin, 2 * macs)
    out = math.prod(ir.output.shape) or 1
    y = 2 if ir.target.dtype == "int" else math.prod(ir.target.shape) or 1
    op("loss", n * out + n * y, n * out)
    op("loss reduction", n * out, 1)
    op("loss backward", n * out + n * y, n * out)
    p = _params_bytes(ir) // 4
    op(f"{ir.optimizer} update (foreach)", p * (2 + len(ir.state)), p * (1 + len(ir.state)))
    return ops


def summary(ir: KernelIR, plan, batch: int, arch: str) -> dict:
    card = CARDS[arch]
    fused = layered_step(ir, plan, batch) if plan.kernels else fused_step(ir, plan, batch, card)
    eager = eager_step(ir, batch)
    t_fused = sum(c.seconds(card) for c in fused)
    t_eager = sum(c.seconds(card) for c in eager)
    ideal = ideal_bytes(ir, batch)
    fused_bytes = sum(c.dram_bytes for c in fused)
    tiles = -(-batch // plan.block_b)
    return {
        "layered": bool(plan.kernels), "card": card["name"], "bandwidth_Bps": card["bandwidth"],
        "fp32_flops": card["fp32"], "tf32_flops": card["tf32"], "dot_precision": plan.dot_precision, "batch": batch, "block_b": plan.block_b, "tiles": tiles,
        "programs": tiles if plan.kernels else min(tiles, card["sms"]),
        "fused": [_row(c, card) for c in fused],
        "fused_total": {"launches": len(fused), "dram_bytes": fused_bytes, "flops": sum(c.flops for c in fused),
                        "dot_flops": sum(c.dot_flops for c in fused), "seconds": t_fused},
        "eager_total": {"launches": len(eager), "dram_bytes": sum(c.dram_bytes for c in eager),
                        "flops": sum(c.flops for c in eager), "seconds": t_eager},
        "ideal": {"dram_bytes": ideal, "seconds": ideal / card["bandwidth"]},
        "fused_traffic_over_ideal": fused_bytes / ideal,
        "eager_over_fused_time": t_eager / t_fused if t_fused else float("inf"),
    }


def _row(c: Cost, card: dict) -> dict:
    return {"name": c.name, "launches": c.launches, "dram_bytes": c.dram_bytes, "l2_bytes": c.l2_bytes,
            "flops": c.flops, "dot_flops": c.dot_flops, "seconds": c.seconds(card)}

"""`derive inspect`: compile the generated Triton kernels for a GPU without one, and model a training step.

inspect(net, source, arch, batch) -> a report dict (the JSON format); format_text renders it for people.
"""

from __future__ import annotations

import math

from derive.errors import DeriveError
from derive.inspect.compile import ARCHS, compile_module
from derive.inspect.model import TF32_PASSES, summary


def inspect(net, source: str, arch: str = "sm_90", batch: int = 65536, timeout: float = 120.0,
            compile_kernels: bool = True) -> dict:
    from derive.derivation import derive
    from derive.ir.lowering import lower
    from derive.targets.triton import plan_triton

    if arch not in ARCHS:
        raise DeriveError(f"--arch: expected one of {', '.join(ARCHS)}, got {arch!r}")
    if batch < 1:
        raise DeriveError(f"--batch: expected a positive number of rows, got {batch}")
    try:
        import triton
    except ImportError:
        raise DeriveError("derive inspect needs triton (install derive[gpu])") from None
    ir = lower(derive(net), source)
    plan = plan_triton(ir)
    kernels = compile_module(plan.text, arch, timeout=timeout) if compile_kernels else []
    report = {
        "spec": source, "network": net.name, "arch": arch, "triton": triton.__version__,
        "block_b": plan.block_b, "num_warps": plan.num_warps,
        "kernels": kernels,
        "ok": all(k["ok"] and k["spill_bytes"] == 0 for k in kernels),
        "model": summary(ir, plan, batch, arch),
    }
    return report


def _flags(constexprs: dict) -> str:
    on = [k.removeprefix("WITH_") for k, v in constexprs.items() if v is True and k.startswith("WITH_")]
    rest = [f"{k}={v}" for k, v in constexprs.items() if not (isinstance(v, bool) and k.startswith("WITH_"))]
    return " ".join([("+".join(on) or "-")] * bool([k for k in constexprs if k.startswith("WITH_")]) + rest)


def _products(n: int) -> str:
    return "one TF32 product" if n == 1 else f"{n} TF32 products"


def _mb(b: float) -> str:
    return f"{b / 1e6:,.2f}"


def format_text(r: dict) -> str:
    lines = [f"derive inspect {r['spec']}: {r['arch']}, triton {r['triton']}, BLOCK_B {r['block_b']}, "
             f"{r['num_warps']} warps", ""]
    if r["kernels"]:
        lines.append(f"{'kernel':<36} {'configuration':<26} {'regs':>5} {'spill B':>8} {'shared B':>9} {'compile s':>10}")
        for k in r["kernels"]:
            if k["ok"]:
                lines.append(f"{k['kernel']:<36} {_flags(k['constexprs']):<26} {k['registers']:>5} "
                             f"{k['spill_bytes']:>8} {k['shared_bytes']:>9} {k['compile_s']:>10.2f}")
            else:
                lines.append(f"{k['kernel'] or '#' + str(k['index']):<36} {_flags(k['constexprs']):<26} "
                             f"FAILED: {k['error']}")
        bad = [k for k in r["kernels"] if not (k["ok"] and k["spill_bytes"] == 0)]
        lines.append(f"{len(r['kernels']) - len(bad)} of {len(r['kernels'])} configurations compile without spills")
        lines.append("")
    m = r["model"]
    lines.append(f"model of one training step at batch {m['batch']:,} on {m['card']} "
                 f"({m['bandwidth_Bps'] / 1e12:.2f} TB/s, fp32 {m['fp32_flops'] / 1e12:.0f} TFLOP/s, "
                 f"tf32 {m['tf32_flops'] / 1e12:.0f} TFLOP/s); model figures, not measurements")
    lines.append(f"{m['tiles']:,} tiles of {m['block_b']} rows on a persistent grid of {m['programs']} programs")
    dots = m["fused_total"].get("dot_flops", 0)
    if dots:
        lines.append(f"{dots / 1e9:.3f} GFLOP of the contractions as tl.dot, input precision {m['dot_precision']} "
                     f"({_products(TF32_PASSES[m['dot_precision']])} per product); PyTorch eager "
                     f"at the fp32 rate (its default: no TF32 for float32 matmuls)")
    lines.append(f"{'':<34} {'launches':>8} {'DRAM MB':>11} {'L2 MB':>11} {'GFLOP':>9} {'time us':>10}")
    for c in m["fused"]:
        lines.append(f"  {c['name']:<32} {c['launches']:>8} {_mb(c['dram_bytes']):>11} {_mb(c['l2_bytes']):>11} "
                     f"{c['flops'] / 1e9:>9.3f} {c['seconds'] * 1e6:>10.2f}")
    step = "per-layer step" if m.get("layered") else "fused step"
    for label, t in ((step, m["fused_total"]), ("PyTorch eager (modeled)", m["eager_total"])):
        lines.append(f"{label:<34} {t['launches']:>8} {_mb(t['dram_bytes']):>11} {'':>11} "
                     f"{t['flops'] / 1e9:>9.3f} {t['seconds'] * 1e6:>10.2f}")
    lines.append(f"{'ideal (x, y, θ, ∂L/∂θ, state once)':<34} {'':>8} {_mb(m['ideal']['dram_bytes']):>11} {'':>11} "
                 f"{'':>9} {m['ideal']['seconds'] * 1e6:>10.2f}")
    l2 = sum(c["l2_bytes"] for c in m["fused"])
    lines.append(f"L2 traffic of the {step} (not timed: NVIDIA publishes no L2 bandwidth): {_mb(l2)} MB, "
                 f"{l2 / m['fused_total']['dram_bytes']:.1f}x its DRAM traffic")
    lines.append(f"fused traffic / ideal: {m['fused_traffic_over_ideal']:.2f}x; "
                 f"modeled eager time / fused time: {m['eager_over_fused_time']:.2f}x")
    return "\n".join(lines) + "\n"


__all__ = ["format_text", "inspect", "math"]

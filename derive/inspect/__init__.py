"""`derive inspect`: compile the generated Triton kernels for a GPU without one, and model a training step.

inspect(net, source, arch, batch) -> a report dict (the JSON format); format_text renders it for people.
"""

from __future__ import annotations

import math

from derive.errors import DeriveError
from derive.inspect.compile import ARCHS, compile_module, training_indices
from derive.inspect.model import TF32_PASSES, summary


def inspect(net, source: str, arch: str = "sm_90", batch: int = 65536, timeout: float = 120.0,
            compile_kernels: bool = True, l2_bandwidth: float | None = None, strategies: bool = False) -> dict:
    """l2_bandwidth: bytes per second (None: the card's measured default, derive.inspect.model.CARDS)."""
    from derive.derivation import derive
    from derive.ir.lowering import lower
    from derive.targets.triton_planner import plan_triton

    if arch not in ARCHS:
        raise DeriveError(f"--arch: expected one of {', '.join(ARCHS)}, got {arch!r}")
    if batch < 1:
        raise DeriveError(f"--batch: expected a positive number of rows, got {batch}")
    if l2_bandwidth is not None and not (l2_bandwidth > 0 and math.isfinite(l2_bandwidth)):
        raise DeriveError(f"--l2-bandwidth: expected a positive number of TB/s, got {l2_bandwidth / 1e12}")
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
        "model": summary(ir, plan, batch, arch, l2_bandwidth),
        "strategy": _strategy_row(plan.strategy),
        "fusion": list(plan.fusion),
    }
    if strategies:
        report["strategies"] = _strategies(ir, plan.strategy, arch, batch, timeout, l2_bandwidth, compile_kernels)
    return report


def _strategy_row(st) -> dict | None:
    if st is None:
        return None
    return {"name": st.name, "weights": st.weights, "sums": st.sums, "block_b": st.block_b, "why": st.why}


def _strategies(ir, picked, arch, batch, timeout, l2_bandwidth, compile_kernels) -> list[dict]:
    """Every candidate plan of the fused dense kernel: its model at this batch and, compiled, the registers
    and spills of its training launch (loss + gradients), so the pick can be checked against the others."""
    from derive.targets.triton import CANDIDATES
    from derive.targets.triton_planner import plan_triton

    if picked is None:  # a per-layer module: one plan
        return []
    rows = []
    for st in dict.fromkeys([picked, *CANDIDATES]):
        plan = plan_triton(ir, strategy=st)
        m = summary(ir, plan, batch, arch, l2_bandwidth)
        row = {**_strategy_row(st), "block_b": plan.block_b, "picked": st == picked,
               "eager_over_fused_time_l2": m["eager_over_fused_time_l2"],
               "fused_l2_over_dram": m["fused_l2_over_dram"], "registers": None, "spill_bytes": None}
        if compile_kernels:
            training = training_indices(plan.text)
            if not training:
                raise DeriveError("the module's COMPILE_SPECS has no training launch")
            # the fused kernel's training launch, and the split plan's ∂W kernel: the most registers and spills
            ks = compile_module(plan.text, arch, timeout=timeout, indices=training)
            ok = [k for k in ks if k["ok"]]
            row.update(registers=max((k["registers"] for k in ok), default=None),
                       spill_bytes=max((k["spill_bytes"] for k in ok), default=None),
                       error="; ".join(k["error"] for k in ks if k["error"]) or None)
        rows.append(row)
    return rows


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
    if r.get("fusion"):
        lines.append("kernels of the plan (the phases each computes; fused or not, and why):")
        lines += [f"  {f}" for f in r["fusion"]]
        lines.append("")
    st = r.get("strategy")
    if st:
        sums = "by the ∂W kernel, split-K" if st["sums"] == "split" else f"per {st['sums']}"
        lines.append(f"plan: {st['name']} (weights loaded per {st['weights']}, gradient sums {sums}): "
                     f"{st['why']}")
        lines.append("")
    if r.get("strategies"):
        lines.append(f"{'candidate plan':<42} {'rows':>5} {'regs':>5} {'spill B':>8} {'x eager, L2':>12} {'L2/DRAM':>8}")
        for c in r["strategies"]:
            label = f"{c['name']}, weights/{c['weights']}, sums/{c['sums']}" + (" (picked)" if c["picked"] else "")
            regs = "-" if c["registers"] is None else c["registers"]
            spill = "-" if c["spill_bytes"] is None else c["spill_bytes"]
            lines.append(f"{label:<42} {c['block_b']:>5} {regs:>5} {spill:>8} "
                         f"{c['eager_over_fused_time_l2']:>11.2f}x {c['fused_l2_over_dram']:>7.1f}x")
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
    lines.append(f"L2 at {m['l2_bandwidth_Bps'] / 1e12:.2f} TB/s (measured, docs/gpu.md), "
                 f"{m['launch_seconds'] * 1e6:g} us a launch in the last column")
    head = f"{'launches':>8} {'DRAM MB':>11} {'L2 MB':>11} {'GFLOP':>9} {'us no L2':>9} {'us L2':>9} {'+launch':>9} {'bound':>5}"
    lines.append(f"{'':<34} {head}")

    def row(label, c, bound=""):
        return (f"{label:<34} {c['launches']:>8} {_mb(c['dram_bytes']):>11} {_mb(c['l2_bytes']):>11} "
                f"{c['flops'] / 1e9:>9.3f} {c['seconds'] * 1e6:>9.2f} {c['seconds_l2'] * 1e6:>9.2f} "
                f"{launch(c) * 1e6:>9.2f} {bound:>5}")

    def launch(c):
        return c.get("seconds_l2_launch", c["seconds_l2"] + c["launches"] * m["launch_seconds"])

    for c in m["fused"]:
        lines.append(row("  " + c["name"][:32], c, c["bound"]))
    step = "per-layer step" if m.get("layered") else "fused step"
    lines.append(row(step, m["fused_total"]))
    where = "in L2 between ops" if m["eager_in_l2"] else "through DRAM (its footprint exceeds L2)"
    lines.append(row("PyTorch eager (modeled)", m["eager_total"]) + f"  {where}")
    lines.append(f"{'ideal (x, y, θ, ∂L/∂θ, state once)':<34} {'':>8} {_mb(m['ideal']['dram_bytes']):>11} {'':>11} "
                 f"{'':>9} {m['ideal']['seconds'] * 1e6:>9.2f}")
    for c in m["fused"]:
        if c.get("l2_sources"):
            parts = ", ".join(f"{s['what']} {_mb(s['bytes'])} MB" for s in c["l2_sources"] if s["bytes"])
            lines.append(f"L2 traffic of the {c['name']}: {parts}")
    lines.append(f"{step}: DRAM / ideal {m['fused_traffic_over_ideal']:.2f}x, L2 / DRAM {m['fused_l2_over_dram']:.1f}x")
    lines.append(f"modeled eager time / {step} time: {m['eager_over_fused_time_l2']:.2f}x with L2 counted, "
                 f"{m['eager_over_fused_time_l2_launch']:.2f}x with launches too "
                 f"({m['eager_over_fused_time']:.2f}x without L2: DRAM and FLOPs only)")
    return "\n".join(lines) + "\n"


__all__ = ["format_text", "inspect", "math"]

"""The fused dense kernel's scratch and split plans side by side on MLPs: the model, and the split plan's compile.

For each net (the grid of bench/compile_grid.py by default, or `--nets 784-64-10:cross_entropy ...`) whose
pick is not on chip, prints eager / fused with the L2 counted at 2^18 rows and with 5 µs launches too at 2^12
(derive.inspect.model.summary, sm_90), for the scratch plan and the split plan at 64 rows, and the split
plan's most registers and spill bytes over every COMPILE_SPECS entry compiled for sm_90 (no GPU needed).
This is the measurement behind derive.targets.triton.SPLIT_ENVELOPE (docs/benchmarks.md):

    python bench/split_envelope.py --widths 16 32 64 128 --depths 2 3 4 5 6 7 8
    python bench/split_envelope.py --nets 784-64-10:cross_entropy 20-48-48-1:l2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compile_grid import mlp  # noqa: E402
from derive import Linear, Loss, Network, Port  # noqa: E402
from derive.derivation import derive  # noqa: E402
from derive.inspect.compile import compile_module  # noqa: E402
from derive.inspect.model import summary  # noqa: E402
from derive.ir.lowering import lower  # noqa: E402
from derive.targets.triton import SCRATCH, SPLIT, choose_strategy  # noqa: E402
from derive.targets.triton_planner import plan_triton  # noqa: E402


def _net(arg: str) -> Network:
    sizes, loss = arg.split(":")
    n = [int(s) for s in sizes.split("-")]
    layers = [Linear(out=k, activation="relu") for k in n[1:-1]] + [Linear(out=n[-1])]
    target = Port("y", ()) if loss == "cross_entropy" else Port("y", (n[-1],))
    return Network("net_" + sizes.replace("-", "_"), layers=layers, input=Port("x", (n[0],)), target=target,
                   loss=Loss(loss))


def _model(ir, strategy) -> str:
    plan = plan_triton(ir, strategy=strategy)
    big, small = summary(ir, plan, 1 << 18, "sm_90"), summary(ir, plan, 1 << 12, "sm_90")
    return f"{big['eager_over_fused_time_l2']:6.2f} {small['eager_over_fused_time_l2_launch']:6.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--depths", type=int, nargs="+", default=list(range(2, 9)))
    ap.add_argument("--losses", nargs="+", default=["l2", "cross_entropy"])
    ap.add_argument("--nets", nargs="+", help="in-hidden-...-out:loss, instead of the grid")
    args = ap.parse_args(argv)
    nets = ([_net(a) for a in args.nets] if args.nets else
            [mlp(w, d, loss) for loss in args.losses for w in args.widths for d in args.depths])
    print(f"{'network':<28} {'pick':<8} {'scratch 2^18, 2^12+launch':>26} {'split 2^18, 2^12+launch':>24} "
          f"{'regs':>5} {'spill B':>8}")
    for net in nets:
        ir = lower(derive(net), "<bench>")
        pick = choose_strategy(ir)
        if pick.name == "on-chip" and pick.sums != "split":
            print(f"{net.name:<28} on-chip  (inside the on-chip envelopes: not compared)", flush=True)
            continue
        res = compile_module(plan_triton(ir, strategy=SPLIT).text, "sm_90")
        regs = max(r["registers"] or 0 for r in res)
        spill = "failed" if not all(r["ok"] for r in res) else max(r["spill_bytes"] or 0 for r in res)
        print(f"{net.name:<28} {pick.sums if pick.sums == 'split' else 'scratch':<8} {_model(ir, SCRATCH):>26} "
              f"{_model(ir, SPLIT):>24} {regs:>5} {spill:>8}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

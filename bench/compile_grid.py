"""Compile the generated Triton kernels of the dense-MLP grid for a GPU (no GPU needed) and print a table.

The grid of issue 10: width 16, 32, 64, 128; depth 2 to 8; L2 or cross-entropy (10 classes); relu
hidden layers.  Each net's COMPILE_SPECS are compiled as `derive inspect` does (derive/inspect/compile.py):

    python bench/compile_grid.py                    # the training configuration (loss + gradients) of every net
    python bench/compile_grid.py --all-configs      # every COMPILE_SPECS entry (slow: about 6x longer)
    python bench/compile_grid.py --widths 128 --depths 8 --json out.json

Exit status 1 when any entry fails to compile, spills, or needs more than --max-seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from derive import Linear, Loss, Network, Port  # noqa: E402
from derive.inspect.compile import compile_module, training_indices  # noqa: E402
from derive.targets import codegen  # noqa: E402


def mlp(width: int, depth: int, loss: str, classes: int = 10) -> Network:
    layers = [Linear(out=width, activation="relu") for _ in range(depth - 1)]
    if loss == "l2":
        layers.append(Linear(out=width))
        target = Port("y", (width,))
    else:
        layers.append(Linear(out=classes))
        target = Port("y", ())
    return Network(f"mlp_w{width}_d{depth}_{loss}", layers=layers, input=Port("x", (width,)), target=target,
                   loss=Loss(loss))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--depths", type=int, nargs="+", default=list(range(2, 9)))
    ap.add_argument("--losses", nargs="+", default=["l2", "cross_entropy"])
    ap.add_argument("--arch", default="sm_90", choices=("sm_90", "sm_80"))
    ap.add_argument("--all-configs", action="store_true")
    ap.add_argument("--max-seconds", type=float, default=20.0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rows, bad = [], 0
    print(f"{'network':<28} {'kernel config':<34} {'regs':>4} {'spill':>5} {'shared':>6} {'compile s':>9}")
    for loss in args.losses:
        for width in args.widths:
            for depth in args.depths:
                net = mlp(width, depth, loss)
                src = codegen.generate(net, "<grid>", ("triton",))[f"{net.name}_triton.py"]
                idx = None if args.all_configs else training_indices(src)
                for r in compile_module(src, args.arch, timeout=max(60.0, 3 * args.max_seconds), indices=idx):
                    ok = r["ok"] and r["spill_bytes"] == 0 and r["registers"] <= 255 \
                        and r["compile_s"] <= args.max_seconds
                    bad += not ok
                    cfg = r["kernel"].replace(net.name, "") + " " + ",".join(
                        k.removeprefix("WITH_") for k, v in r["constexprs"].items() if v is True)
                    print(f"{net.name:<28} {cfg:<34} {r['registers'] or '-':>4} {r['spill_bytes'] if r['spill_bytes'] is not None else '-':>5} "
                          f"{r['shared_bytes'] if r['shared_bytes'] is not None else '-':>6} {r['compile_s'] or 0:>9.2f}"
                          f"{'' if ok else '  FAIL ' + (r['error'] or '')}", flush=True)
                    rows.append({"network": net.name, **r, "pass": ok})
    if args.json:
        Path(args.json).write_text(json.dumps({"arch": args.arch, "rows": rows}, indent=1))
    print(f"{len(rows) - bad} passed, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

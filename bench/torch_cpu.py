"""The generated torch module's training step (CPU path) against the equivalent nn.Sequential,
eager and under torch.compile.

Contenders, each one SGD step (torch.optim.SGD, zero_grad included) of the same float32 MLP
(default 784-256-256-10, relu on the hidden layers, cross-entropy with the batch mean, batch 256),
from the same parameters on the same batch:

  derive           model.loss(x, y).backward(); opt.step(): the generated module's value-and-gradient
                   op (derive's backward printed as torch ops), parameters as nn.Parameters
  derive_yhat      F.cross_entropy(model(x), y).backward(): torch's loss on ŷ, then the generated
                   backward op from ∂L/∂ŷ (it runs the forward pass again)
  eager            F.cross_entropy(seq(x), y).backward() on model.to_torch(), PyTorch eager autograd
  compiled         the same with torch.compile(seq) (inductor; compile time excluded)

First every contender's gradients of its first step are compared with float64 torch.autograd at
the same start (norm-wise relative error over all gradients ≤ 1e-4); if any disagrees, nothing is
timed and the exit status is 1.  Then --rounds rounds of --reps steps each, the order rotated every
round; the medians of the per-step times and their ratios are printed, and the ratio paired by round
(the median of each round's derive/eager, which a drift of the machine's speed between rounds does
not move).  Goal (issues 13, 22): derive no slower than eager (ratio ≤ 1.0).

    python bench/torch_cpu.py
    python bench/torch_cpu.py --batch 64 --widths 784,128,10 --rounds 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

GOAL = 1.0  # derive / eager
TOL_STEP = 1e-4  # float32 gradients against float64
LR = 0.01


def build_network(widths):
    from derive import Linear, Loss, Network, Port

    layers = [Linear(out=n, activation="relu") for n in widths[1:-1]] + [Linear(out=widths[-1])]
    return Network("bench_torch_mlp", layers=layers, input=Port("x", (widths[0],)), target=Port("y", ()),
                   loss=Loss("cross_entropy", "mean"))


def contenders(mod, cls, start: dict, compile_seq: bool):
    """name -> (a step function of (x, y), its parameters in derive's names)."""
    out = {}

    def derive_model():
        m = cls(dtype=torch.float32)
        m.load_state_dict(start)
        return m

    m = derive_model()
    opt = torch.optim.SGD(m.parameters(), lr=LR)

    def derive_step(x, y, m=m, opt=opt):
        opt.zero_grad(set_to_none=True)
        m.loss(x, y).backward()
        opt.step()

    out["derive"] = (derive_step, m)

    m2 = derive_model()
    opt2 = torch.optim.SGD(m2.parameters(), lr=LR)

    def derive_yhat_step(x, y, m=m2, opt=opt2):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        opt.step()

    out["derive_yhat"] = (derive_yhat_step, m2)

    for name in ("eager", "compiled") if compile_seq else ("eager",):
        holder = derive_model()
        seq = holder.to_torch()
        run = torch.compile(seq) if name == "compiled" else seq
        opt3 = torch.optim.SGD(seq.parameters(), lr=LR)

        def seq_step(x, y, run=run, opt=opt3):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(run(x), y).backward()
            opt.step()

        out[name] = (seq_step, (mod, seq))
    return out


def grads_of(held) -> dict:
    """The gradients the last step left in .grad, keyed by derive's parameter names."""
    if isinstance(held, tuple):  # (module, nn.Sequential)
        mod, seq = held
        layers = [m for m in seq.modules() if next(m.parameters(recurse=False), None) is not None]
        return {n: getattr(layers[k], a).grad.reshape(mod.PARAM_SHAPES[n]).clone()
                for n, (k, a) in mod.TORCH_PARAMS.items()}
    return {k: p.grad.clone() for k, p in held.named_parameters()}


def reference_grads(mod, start, x, y) -> dict:
    """The float64 torch.autograd gradients of the equivalent nn.Sequential at the start."""
    holder = mod.MODEL(dtype=torch.float64)
    holder.load_state_dict({k: v.double() for k, v in start.items()})
    seq = holder.to_torch()
    F.cross_entropy(seq(x.double()), y).backward()
    return grads_of((mod, seq))


def rel_err(got: dict, want: dict) -> float:
    """‖got − want‖ / ‖want‖ over all gradients together."""
    num = sum(float(((got[k].double() - want[k]) ** 2).sum()) for k in want)
    den = sum(float((want[k] ** 2).sum()) for k in want)
    return (num / den) ** 0.5


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--widths", default="784,256,256,10")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile contender")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)

    from derive.targets.modules import generated_modules

    net = build_network(widths)
    with generated_modules(net, "<bench>", targets=("torch",)) as mods:
        mod = mods["torch"]
        cls = mod.MODEL
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(args.batch, widths[0], generator=g)
        y = torch.randint(0, widths[-1], (args.batch,), generator=g)
        start = {k: v.detach().clone() for k, v in cls(seed=args.seed).state_dict().items()}

        runs = contenders(mod, cls, start, not args.no_compile)
        want = reference_grads(mod, start, x, y)
        checks, ok = {}, True
        for name, (step, held) in runs.items():
            step(x, y)  # the first step (and the compiled contender's compilation)
            err = rel_err(grads_of(held), want)
            checks[name] = err
            ok &= err <= TOL_STEP
        info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                "platform": platform.platform(), "batch": args.batch, "widths": widths,
                "load_before": os.getloadavg()}
        print(f"torch {info['torch']}, {info['threads']} threads, {info['cpu_count']} CPUs, {info['platform']}")
        print(f"MLP {'-'.join(map(str, widths))}, batch {args.batch}, float32, SGD lr {LR}")
        print("gradients of the first step against float64 torch.autograd (≤ %.0e): " % TOL_STEP
              + ", ".join(f"{k} {v:.2e}" for k, v in checks.items()))
        if not ok:
            print("a contender disagrees with the reference: not timed")
            return 1

        for _ in range(args.warmup):
            for step, _ in runs.values():
                step(x, y)
        # wall time, and the process's CPU time: on a machine other jobs are using, CPU time counts
        # the work done rather than the waiting for a core (with --threads 1 it is the fairer clock)
        times = {"wall": {k: [] for k in runs}, "cpu": {k: [] for k in runs}}
        names = list(runs)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                step = runs[name][0]
                w0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.reps):
                    step(x, y)
                times["wall"][name].append((time.perf_counter() - w0) / args.reps)
                times["cpu"][name].append((time.process_time() - c0) / args.reps)
        info["load_after"] = os.getloadavg()
        print(f"load average before {info['load_before'][0]:.2f}, after {info['load_after'][0]:.2f}")
        med = {c: {k: statistics.median(v) for k, v in t.items()} for c, t in times.items()}
        print(f"{'contender':<12} {'wall ms/step':>13} {'q1':>8} {'q3':>8} {'cpu ms/step':>12}")
        for k in names:
            v = times["wall"][k]
            q = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3
            print(f"{k:<12} {1e3 * med['wall'][k]:>13.3f} {1e3 * q[0]:>8.3f} {1e3 * q[2]:>8.3f} "
                  f"{1e3 * med['cpu'][k]:>12.3f}")
        ratios = {c: {f"{a}/{b}": m[a] / m[b] for a in ("derive", "derive_yhat") for b in ("eager", "compiled")
                      if b in m} for c, m in med.items()}
        for k in ratios["wall"]:
            print(f"ratio {k}: wall {ratios['wall'][k]:.3f}, cpu {ratios['cpu'][k]:.3f}")
        # the same ratio paired by round: each round times every contender back to back, so a drift in the
        # machine's speed between rounds (other jobs, clock) cancels in the round's own ratio
        paired = {}
        for a in ("derive", "derive_yhat"):
            per = [d / e for d, e in zip(times["wall"][a], times["wall"]["eager"])]
            q = statistics.quantiles(per, n=4) if len(per) > 1 else [per[0]] * 3
            paired[f"{a}/eager"] = {"median": statistics.median(per), "q1": q[0], "q3": q[2]}
            print(f"paired by round {a}/eager: median {paired[f'{a}/eager']['median']:.3f} "
                  f"(q1 {q[0]:.3f}, q3 {q[2]:.3f})")
        met = ratios["wall"]["derive/eager"] <= GOAL
        print(f"goal derive/eager ≤ {GOAL} (wall): {'met' if met else 'not met'}")
        if args.json:
            Path(args.json).write_text(json.dumps({"info": info, "checks": checks, "times": times,
                                                   "median": med, "ratios": ratios,
                                                   "paired": paired}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

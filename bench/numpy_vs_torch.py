"""The generated NumPy train_step against PyTorch eager and a hand-written NumPy step, on the CPU.

Three contenders do one SGD step of the same float32 MLP (default 784-256-256-10, relu on the
hidden layers, cross-entropy with the batch mean), from the same parameters on the same batch:

  generated    train_step(params, x, y, lr) of the module derive generates for the network
  torch        nn.Linear layers + F.cross_entropy + loss.backward() + torch.optim.SGD.step(),
               zero_grad() included, torch's default thread count
  hand         the obvious NumPy step written by hand (x @ W.T + b, np.maximum, stable
               softmax-CE gradient, d.T @ f, ...)

First every contender's update is checked against a float64 torch.autograd step (so the
comparison is honest: all three compute the same thing), then they are timed round-robin
(--rounds rounds of --reps steps each, the order rotated every round) and the medians of the
per-step times are compared.  Targets (from the issue): generated <= 1.0x torch eager and
<= 1.2x hand-written.

    python bench/numpy_vs_torch.py                      # 784-256-256-10, batch 256
    python bench/numpy_vs_torch.py --batch 64 --widths 784,128,10 --rounds 20 --json out.json

Exit status: 0 when the updates agree (whether or not the targets are met), 1 when they do not.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

TARGET_VS_TORCH = 1.0
TARGET_VS_HAND = 1.2
TOL_STEP = 1e-4  # float32 against float64: norm-wise relative error of the step (θ − θ')/η
LR = 0.01


# ---------------------------------------------------------------------------- the network

def build_network(widths):
    from derive import Linear, Loss, Network, Port

    layers = [Linear(out=n, activation="relu") for n in widths[1:-1]] + [Linear(out=widths[-1])]
    return Network("bench_mlp", layers=layers, input=Port("x", (widths[0],)), target=Port("y", ()),
                   loss=Loss("cross_entropy", "mean"))


def param_names(depth):
    out = []
    for i in range(1, depth + 1):
        out += [f"W{i}", f"b{i}"]
    return out


# ---------------------------------------------------------------------------- contenders

def hand_step(params, x, y, lr, depth):
    """The obvious NumPy train step: relu hidden layers, a linear last layer, mean cross-entropy."""
    Ws = [params[f"W{i}"] for i in range(1, depth + 1)]
    bs = [params[f"b{i}"] for i in range(1, depth + 1)]
    acts = [x]
    h = x
    for i in range(depth - 1):
        h = h @ Ws[i].T
        h += bs[i]
        np.maximum(h, 0, out=h)
        acts.append(h)
    z = h @ Ws[-1].T
    z += bs[-1]
    # ∂L/∂z = (softmax(z) − onehot(y)) / B, softmax shifted by the row maximum
    z -= z.max(axis=1, keepdims=True)
    d = np.exp(z)
    d /= d.sum(axis=1, keepdims=True)
    batch = x.shape[0]
    d[np.arange(batch), y] -= 1
    d *= np.float32(1.0 / batch) if d.dtype == np.float32 else 1.0 / batch
    new = {}
    for i in range(depth - 1, -1, -1):
        f = acts[i]
        new[f"W{i + 1}"] = Ws[i] - lr * (d.T @ f)
        new[f"b{i + 1}"] = bs[i] - lr * d.sum(axis=0)
        if i > 0:
            d = d @ Ws[i]
            d *= f > 0  # relu'(a) = [a > 0] = [f > 0]
    return new


def torch_model(torch, widths, params, dtype):
    nn = torch.nn
    mods = []
    depth = len(widths) - 1
    for i in range(depth):
        lin = nn.Linear(widths[i], widths[i + 1]).to(dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(params[f"W{i + 1}"])).to(dtype))
            lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(params[f"b{i + 1}"])).to(dtype))
        mods.append(lin)
        if i < depth - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def torch_params(model):
    out = {}
    for i, lin in enumerate(m for m in model if hasattr(m, "weight")):
        out[f"W{i + 1}"] = lin.weight.detach().numpy().copy()
        out[f"b{i + 1}"] = lin.bias.detach().numpy().copy()
    return out


# ---------------------------------------------------------------------------- machine

def machine_info(torch):
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_mkl": bool(torch.backends.mkl.is_available()),
        "torch_mkldnn": bool(torch.backends.mkldnn.is_available()),
        "env": {k: os.environ[k] for k in sorted(os.environ)
                if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "GOTO_", "NVPL_"))},
    }
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            {k: d.get(k) for k in ("user_api", "internal_api", "version", "num_threads", "architecture")}
            for d in threadpool_info()
        ]
    except ImportError:
        info["threadpools"] = None
        info["numpy_blas"] = _numpy_blas()
    return info


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _numpy_blas():
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')} ({blas.get('openblas configuration', '')})".strip()
    except Exception:  # noqa: BLE001 (older numpy: no dict mode)
        return "?"


# ---------------------------------------------------------------------------- checks

def rel_err(got, want):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    scale = np.linalg.norm(want.ravel())
    diff = np.linalg.norm((got - want).ravel())
    return float(diff / scale) if scale > 0 else float(diff)


def check_agreement(torch, results, p0, reference, lr, step):
    """Each contender against the float64 torch.autograd update: the step (θ − θ')/η, or the new θ."""
    rows = []
    ok = True
    for name, new in results.items():
        dtypes = {str(np.asarray(new[k]).dtype) for k in p0}
        if step:
            step_err = max(rel_err((p0[k] - new[k]) / lr, (p0[k] - reference[k]) / lr) for k in p0)
            good = step_err <= TOL_STEP
            close, diff = None, None
        else:
            step_err = None
            close = all(np.allclose(new[k], reference[k], rtol=1e-5, atol=1e-6) for k in p0)
            diff = max(float(np.max(np.abs(new[k] - reference[k]))) for k in p0)
            good = close
        good = good and dtypes == {"float32"}
        ok &= good
        rows.append({"contender": name, "lr": lr, "step_rel_err": step_err, "params_allclose": close,
                     "max_abs_diff": diff, "dtypes": sorted(dtypes), "ok": good})
    return ok, rows


# ---------------------------------------------------------------------------- timing

def time_round_robin(contenders, rounds, reps):
    """{name: [seconds per step, one per round]}; the order rotates every round."""
    names = list(contenders)
    times = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            step = contenders[n]
            t0 = time.perf_counter()
            for _ in range(reps):
                step()
            times[n].append((time.perf_counter() - t0) / reps)
    return times


@contextlib.contextmanager
def _numpy_module(net, path):
    if path is None:
        from derive.targets.modules import generated_modules

        with generated_modules(net, "<bench/numpy_vs_torch.py>", targets=("numpy",)) as mods:
            yield mods["numpy"]
        return
    from derive.targets.modules import import_file

    yield import_file(Path(path), "_bench_numpy_module")


def _load():
    try:
        return os.getloadavg()
    except OSError:
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    ap.add_argument("--widths", default="784,256,256,10", help="layer widths, input first (default 784,256,256,10)")
    ap.add_argument("--rounds", type=int, default=30, help="rounds of round-robin timing (default 30)")
    ap.add_argument("--reps", type=int, default=10, help="steps per contender per round (default 10)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per contender first (default 5)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the parameters and the batch (default 0)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--module", metavar="PATH",
                    help="time this generated NumPy module file (e.g. an edited copy, generated for the same --widths) "
                         "instead of generating one")
    args = ap.parse_args(argv)

    try:
        widths = [int(w) for w in args.widths.split(",")]
    except ValueError:
        ap.error(f"--widths: expected comma-separated integers, got {args.widths!r}")
    if len(widths) < 2 or min(widths) < 1 or widths[-1] < 2:
        ap.error("--widths: expected at least two positive widths, the last (classes) >= 2")
    if args.batch < 1 or args.rounds < 1 or args.reps < 1:
        ap.error("--batch, --rounds and --reps must be positive")

    import torch
    import torch.nn.functional as F

    depth = len(widths) - 1
    info = machine_info(torch)
    print(f"bench/numpy_vs_torch.py  {info['date']}")
    print(f"machine: {info['processor']}, {info['cpu_count']} CPUs ({info['affinity']} usable), {info['platform']}")
    print(f"python {info['python']}, numpy {info['numpy']}, torch {info['torch']} "
          f"(num_threads {info['torch_num_threads']}, default; mkl {info['torch_mkl']}, mkldnn {info['torch_mkldnn']})")
    if info["threadpools"] is not None:
        for tp in info["threadpools"]:
            extra = "".join(f", {k} {tp[k]}" for k in ("version", "architecture") if tp.get(k))
            print(f"threadpool ({tp['user_api']}): {tp['internal_api']}, {tp['num_threads']} threads{extra}")
    else:
        print(f"threadpoolctl: not installed; numpy BLAS: {info['numpy_blas']}")
    env = " ".join(f"{k}={v}" for k, v in info["env"].items()) or "(none)"
    print(f"BLAS/OpenMP environment: {env}")
    print(f"network: {'-'.join(map(str, widths))} (relu hidden layers, cross_entropy, mean), float32, "
          f"batch {args.batch}, lr {LR}")

    net = build_network(widths)
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.batch, widths[0])).astype(np.float32)
    y = rng.integers(0, widths[-1], size=args.batch).astype(np.int64)

    with _numpy_module(net, args.module) as gen:
        p0 = gen.init_params(seed=args.seed, dtype=np.float32)
        assert list(p0) == param_names(depth), list(p0)

        # ---- the same step, three ways, against float64 torch.autograd.  The step (θ − θ')/η is
        # compared at η with η·‖g‖ = ‖θ‖ (as derive verify does): rounding θ' to float32 then costs
        # ~ε of the step instead of ε·‖θ‖/(η‖g‖); the new θ is compared at the timed η as well.
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def one_step(dtype, lr):
            m = torch_model(torch, widths, p0, dtype)
            o = torch.optim.SGD(m.parameters(), lr=lr)
            o.zero_grad()
            F.cross_entropy(m(tx.to(dtype)), ty).backward()
            g = {f"{k[0]}{i + 1}": p.grad.detach().numpy().copy()
                 for i, lin in enumerate(l for l in m if hasattr(l, "weight"))
                 for k, p in (("W", lin.weight), ("b", lin.bias))}
            o.step()
            return torch_params(m), g

        _, g64 = one_step(torch.float64, LR)
        check_lr = float(np.sqrt(sum(np.sum(np.square(p0[k].astype(np.float64))) for k in p0))
                         / np.sqrt(sum(np.sum(np.square(g)) for g in g64.values())))
        rows, ok = [], True
        for lr in (check_lr, LR):
            reference, _ = one_step(torch.float64, lr)
            results = {
                "generated": gen.train_step(p0, x, y, lr),
                "torch": one_step(torch.float32, lr)[0],
                "hand": hand_step(p0, x, y, lr, depth),
            }
            good, r = check_agreement(torch, results, p0, reference, lr, step=lr == check_lr)
            ok &= good
            rows += r
        print(f"\nagreement with one float64 torch.autograd SGD step: the step (θ − θ')/η at "
              f"η = ‖θ‖/‖g‖ = {check_lr:.3g} (norm-wise rel err <= {TOL_STEP:g}), the new θ at η = {LR} "
              f"(allclose rtol 1e-5, atol 1e-6):")
        for r in rows:
            what = (f"step rel err {r['step_rel_err']:.2e}" if r["step_rel_err"] is not None
                    else f"new params allclose {r['params_allclose']}, max abs diff {r['max_abs_diff']:.1e}")
            print(f"  {r['contender']:<10} eta {r['lr']:<8.3g} {what:<50} dtype {','.join(r['dtypes'])}  "
                  f"{'ok' if r['ok'] else 'FAIL'}")
        model = torch_model(torch, widths, p0, torch.float32)
        opt = torch.optim.SGD(model.parameters(), lr=LR)

        def torch_step():
            opt.zero_grad()
            loss = F.cross_entropy(model(tx), ty)
            loss.backward()
            opt.step()

        if not ok:
            print("the contenders disagree: no timing", file=sys.stderr)
            return 1

        # ---- timing: each contender trains on its own copy of the parameters
        state = {"generated": dict(p0), "hand": dict(p0)}

        def generated_step():
            state["generated"] = gen.train_step(state["generated"], x, y, LR)

        def hand():
            state["hand"] = hand_step(state["hand"], x, y, LR, depth)

        contenders = {"generated": generated_step, "torch": torch_step, "hand": hand}
        for step in contenders.values():
            for _ in range(args.warmup):
                step()
        load_before = _load()
        t_start = time.perf_counter()
        times = time_round_robin(contenders, args.rounds, args.reps)
        wall = time.perf_counter() - t_start
        load_after = _load()

    med = {n: statistics.median(t) for n, t in times.items()}
    q = {n: statistics.quantiles(t, n=4) if len(t) >= 2 else [t[0]] * 3 for n, t in times.items()}
    ratio_torch = med["generated"] / med["torch"]
    ratio_hand = med["generated"] / med["hand"]
    # the ratios' spread across rounds (the contenders ran side by side in each round)
    per_round_t = [g / t for g, t in zip(times["generated"], times["torch"])]
    per_round_h = [g / h for g, h in zip(times["generated"], times["hand"])]

    if args.module:
        print(f"\n(generated = {args.module}, not freshly generated)")
    busy = max(load_before[0], load_after[0]) if load_before and load_after else None
    print(f"\nload average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after the "
          f"{wall:.0f} s of timing, on {os.cpu_count()} CPUs" if busy is not None else "")
    if busy is not None and busy > 0.5 * (os.cpu_count() or 1):
        print("WARNING: other processes were using the CPUs: the contenders (and their BLAS threads) share\n"
              "         them, so absolute times are inflated and noisy; the round-robin ratios are fairer.")
    flops = 2 * args.batch * sum(widths[i] * widths[i + 1] for i in range(depth)) * 3 \
        - 2 * args.batch * widths[0] * widths[1]  # forward, dW and dX of every layer but the first
    print(f"\n{args.rounds} rounds x {args.reps} steps, round-robin; per-step time, median [quartiles]; "
          f"{flops / 1e6:.0f} MFLOP per step")
    print(f"  {'contender':<10} {'median ms':>10} {'q1 ms':>8} {'q3 ms':>8} {'GFLOP/s':>8}")
    for n in contenders:
        print(f"  {n:<10} {med[n] * 1e3:>10.3f} {q[n][0] * 1e3:>8.3f} {q[n][2] * 1e3:>8.3f} "
              f"{flops / med[n] / 1e9:>8.1f}")
    met_t = ratio_torch <= TARGET_VS_TORCH
    met_h = ratio_hand <= TARGET_VS_HAND
    print(f"\n  generated / torch eager  = {ratio_torch:.3f}  (per-round median "
          f"{statistics.median(per_round_t):.3f}; target <= {TARGET_VS_TORCH}: {'met' if met_t else 'NOT met'})")
    print(f"  generated / hand-written = {ratio_hand:.3f}  (per-round median "
          f"{statistics.median(per_round_h):.3f}; target <= {TARGET_VS_HAND}: {'met' if met_h else 'NOT met'})")

    if args.json:
        out = {
            "benchmark": "numpy_vs_torch", "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "machine": info, "widths": widths, "batch": args.batch, "dtype": "float32", "lr": LR,
            "rounds": args.rounds, "reps": args.reps, "agreement": rows, "module": args.module,
            "loadavg_before": load_before, "loadavg_after": load_after, "timing_wall_s": wall,
            "seconds_per_step": {n: {"median": med[n], "q1": q[n][0], "q3": q[n][2], "rounds": times[n]}
                                 for n in contenders},
            "ratio_generated_over_torch": ratio_torch, "ratio_generated_over_hand": ratio_hand,
            "targets": {"generated_over_torch": {"target": TARGET_VS_TORCH, "met": met_t},
                        "generated_over_hand": {"target": TARGET_VS_HAND, "met": met_h}},
        }
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
            fh.write("\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

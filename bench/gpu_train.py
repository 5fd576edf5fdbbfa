"""The generated fused Triton training step against PyTorch, side by side in one run.

For dense MLPs (width w, depth d: d linear layers of width w, ReLU between, L2 loss, SGD),
one training step (forward, loss, backward, update) of each contender:

  fused      the generated module's FlatState.step: the fused kernel (a persistent grid), then one launch
             that reduces the programs' partial gradients in order and updates
  eager      nn.Linear layers + torch.optim.SGD
  compile    torch.compile(step) in default mode
  max-ac     torch.compile(step, mode="max-autotune-no-cudagraphs")
  reduce-oh  torch.compile(step, mode="reduce-overhead") (CUDA graphs; small batches)

Times are medians of triton.testing.do_bench (CUDA events) on a GPU, of perf_counter
elsewhere.  Ratios are eager/fused etc.: > 1 means the fused step is faster.  The
roofline fraction is max(bytes/bandwidth, flops/peak)/time with the ceilings measured
on the card at the start (a 1 GiB device copy; an 8192² float32 matmul with TF32 off, and
one with TF32 on).  The peak is the kernel's own: the TF32 matmul's rate divided by 3 where
its contractions are tl.dot in "tf32x3" (three TF32 products per product), else the float32 rate.
The torch baselines run with TF32 off (PyTorch's default for float32 matmuls): float32 accuracy,
as tf32x3 keeps.

The last columns are derive inspect's static model of the same step (derive/inspect/model.py, the card
the benchmark runs on where it is an sm_90 or sm_80, else sm_90): the modeled fused time with the L2
counted and the modeled eager/fused ratio with L2, and without it, to set beside the measured ones.

  python bench/gpu_train.py                       # the full table on a GPU (scripts/gpu-bench)
  python bench/gpu_train.py --tiny --interpret    # a smoke test on the CPU under the Triton interpreter

With --specs, the networks of those spec files instead of the MLP grid (the convnets: per-layer kernels),
each against the same network in eager PyTorch (derive.verify.reference's functional forward: F.conv2d,
F.linear, the pooling and the loss, autograd, torch.optim.SGD at the module's learning rate) and
torch.compile of that step:

  python bench/gpu_train.py --specs examples/lecture_convnet.toml examples/lecture_convnet_pool.toml \
      --log2-batches 10 12 14
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--log2-batches", type=int, nargs="+", default=[10, 12, 14, 16, 18, 20])
    ap.add_argument("--baselines", nargs="+", default=["eager", "compile", "max-ac", "reduce-oh"],
                    choices=["eager", "compile", "max-ac", "reduce-oh"])
    ap.add_argument("--reduce-overhead-max-log2", type=int, default=14, help="reduce-overhead only up to this batch")
    ap.add_argument("--tiny", action="store_true", help="widths 16, depth 2, batch 2^5: a smoke test")
    ap.add_argument("--interpret", action="store_true", help="TRITON_INTERPRET=1 on CPU tensors")
    ap.add_argument("--budget-s", type=float, default=330.0, help="stop starting new rows after this many seconds")
    ap.add_argument("--json", help="write raw numbers here")
    ap.add_argument("--specs", nargs="+", help="time these spec files' networks instead of the MLP grid")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    if args.tiny:
        args.widths, args.depths, args.log2_batches = [16], [2], [2 if args.specs else 5]
    import torch

    from derive import Linear, Loss, Network, Port
    from derive.targets.modules import generated_modules
    from derive.tables.optimizers import Optimizer

    cuda = torch.cuda.is_available() and not args.interpret
    device = "cuda" if cuda else "cpu"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 accuracy, as our kernels' tf32x3 keeps
        torch.backends.cudnn.allow_tf32 = False
    t0 = time.perf_counter()
    env = _environment(torch, device)
    print(json.dumps(env))
    if not cuda:
        print("NOTE: no CUDA device: the Triton interpreter runs the kernels in NumPy; these times say nothing "
              "about GPU speed (this mode only checks that the benchmark runs)")
    ceilings = _ceilings(torch, device) if cuda else {"bandwidth_Bps": None, "flops": None, "tf32_flops": None}
    print(f"ceilings: {ceilings}")
    rows = []
    if args.specs:
        return _specs(args, torch, device, cuda, env, ceilings, rows, t0)
    header = ["width", "depth", "batch", "fused ms", *[f"{b}/fused" for b in args.baselines], "roofline",
              "model fused us (L2)", "model eager/fused (L2)", "model eager/fused (no L2)"]
    print(" | ".join(header))
    for width in args.widths:
        for depth in args.depths:
            net = Network(f"mlp_w{width}_d{depth}",
                          layers=[Linear(out=width, activation="relu") for _ in range(depth - 1)]
                          + [Linear(out=width)],
                          input=Port("x", (width,)), target=Port("y", (width,)), loss=Loss("l2"),
                          optimizer=Optimizer("sgd", 1e-3))
            with generated_modules(net, "<bench>", ("triton",)) as mods:
                trm = mods["triton"]
                for lb in args.log2_batches:
                    if time.perf_counter() - t0 > args.budget_s:
                        print(f"stopping: over the {args.budget_s:.0f} s budget")
                        return _finish(args, env, ceilings, rows)
                    batch = 2**lb
                    row = _row(torch, trm, net, width, depth, batch, device, args, cuda, ceilings)
                    rows.append(row)
                    cells = [str(width), str(depth), f"2^{lb}", f"{row['fused_ms']:.4f}"]
                    cells += [_ratio(row.get(f"{b}_ms"), row["fused_ms"]) for b in args.baselines]
                    cells.append(f"{row['roofline']:.0%}" if row.get("roofline") else "n/a")
                    row.update(_model(net, batch, torch, cuda))
                    cells += [f"{row['model_fused_ms_l2'] * 1e3:.2f}", f"{row['model_eager_over_fused_l2']:.2f}x",
                              f"{row['model_eager_over_fused']:.2f}x"]
                    print(" | ".join(cells), flush=True)
    return _finish(args, env, ceilings, rows)


def _specs(args, torch, device, cuda, env, ceilings, rows, t0) -> int:
    """The --specs table: each spec's derive step (FlatState.step of its generated Triton module) against
    the same network's eager PyTorch step and its compiled forms, and the model's figures beside them."""
    from derive import load_spec
    from derive.targets.modules import generated_modules

    header = ["spec", "batch", "one step rel err", "derive ms", *[f"{b}/derive" for b in args.baselines],
              "model derive us (L2)", "model eager/derive (L2)", "model eager/derive (no L2)"]
    print(" | ".join(header))
    for path in args.specs:
        net = load_spec(path)
        with generated_modules(net, "<bench>", ("triton",)) as mods:
            trm = mods["triton"]
            for lb in args.log2_batches:
                if time.perf_counter() - t0 > args.budget_s:
                    print(f"stopping: over the {args.budget_s:.0f} s budget")
                    return _finish(args, env, ceilings, rows)
                batch = 2**lb
                row = _spec_row(torch, trm, net, batch, device, args, cuda)
                row.update(_model(net, batch, torch, cuda))
                rows.append(row)
                cells = [net.name, f"2^{lb}", f"{row['one_step_rel_err']:.1e}", f"{row['fused_ms']:.4f}"]
                cells += [_ratio(row.get(f"{b}_ms"), row["fused_ms"]) for b in args.baselines]
                cells += [f"{row['model_fused_ms_l2'] * 1e3:.2f}", f"{row['model_eager_over_fused_l2']:.2f}x",
                          f"{row['model_eager_over_fused']:.2f}x"]
                print(" | ".join(cells), flush=True)
    return _finish(args, env, ceilings, rows)


def _spec_row(torch, trm, net, batch, device, args, cuda) -> dict:
    from derive.verify import reference

    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, *net.input.shape, generator=gen).to(device)
    if net.loss.type == "cross_entropy":
        y = torch.randint(0, net.info[-1].out_shape[0], (batch,), generator=gen).to(device)
    else:
        y = torch.randn(batch, *net.target.shape, generator=gen).to(device)
    params = trm.init_params(0, device=device)
    reps = 1 if not cuda else 3
    agree = _one_step_agreement(torch, trm, net, params, x, y)
    row = {"spec": net.name, "batch": batch, "one_step_rel_err": agree,
           "fused_ms": _timer(torch, _derive_step(trm, params, x, y), cuda, reps=reps)}
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.SGD(list(p.values()), lr=trm.HYPER.get("lr", 1e-3))  # the module's own learning rate

    def eager():
        opt.zero_grad(set_to_none=True)
        ell = reference.per_sample_loss(net, reference.forward(net, p, x), y)
        loss = ell.mean() if net.loss.reduction == "mean" else ell.sum()
        loss.backward()
        opt.step()
        return loss

    row.update(_baselines(torch, eager, args, cuda, batch, reps))
    return row


def _one_step_agreement(torch, trm, net, params, x, y) -> float:
    """The largest relative difference between the parameters after one derive step and after one step of
    torch.autograd in float64 (SGD at the module's learning rate), from the same start: what is timed is
    checked first."""
    from derive.verify import reference

    fs = trm.FlatState(params)
    fs.step(x, y, 1)
    got = fs.params()
    p64 = {k: v.detach().double() for k, v in params.items()}
    _, grads, _ = reference.loss_and_grads(net, p64, x.double(), y if y.dtype == torch.long else y.double())
    lr = trm.HYPER.get("lr", 1e-3)
    worst = 0.0
    for k, v in p64.items():
        want = v - lr * grads[k]
        worst = max(worst, float((got[k].double() - want).abs().max() / want.abs().max().clamp_min(1e-30)))
    if worst > 1e-4:
        print(f"WARNING: {net.name}: one derive step differs from float64 torch.autograd by {worst:.2e}")
    return worst


def _model(net, batch, torch, cuda) -> dict:
    """derive inspect's cost model of this step (no compile): modeled times with L2 counted and without."""
    from derive.derivation import derive
    from derive.inspect.model import summary
    from derive.ir.lowering import lower
    from derive.targets.triton_planner import plan_triton

    arch = "sm_90"
    if cuda and torch.cuda.get_device_capability() == (8, 0):
        arch = "sm_80"
    ir = lower(derive(net), "<bench>")
    m = summary(ir, plan_triton(ir), batch, arch)
    return {"model_arch": arch, "model_fused_ms_l2": m["fused_total"]["seconds_l2"] * 1e3,
            "model_eager_over_fused_l2": m["eager_over_fused_time_l2"],
            "model_eager_over_fused": m["eager_over_fused_time"]}


def _ratio(base, fused):
    return f"{base / fused:.2f}x" if base else "-"


def _finish(args, env, ceilings, rows) -> int:
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "ceilings": ceilings, "rows": rows}, fh, indent=2)
    return 0


def _environment(torch, device):
    import platform

    import triton

    env = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
           "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter)",
           "date": time.strftime("%Y-%m-%d")}
    return env


def _timer(torch, fn, cuda, reps=20):
    if cuda:
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()  # warm-up (compilation)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _ceilings(torch, device):
    n = 1 << 28  # 1 GiB of float32
    a = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    b = torch.empty_like(a)
    ms = _timer(torch, lambda: b.copy_(a), True)
    bw = 2 * n * 4 / (ms * 1e-3)  # read + write
    a = b = None  # free the 2 GiB before the matmul
    m = torch.randn(8192, 8192, device=device)
    ms = _timer(torch, lambda: m @ m, True)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        ms_tf32 = _timer(torch, lambda: m @ m, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    return {"bandwidth_Bps": bw, "flops": 2 * 8192**3 / (ms * 1e-3), "tf32_flops": 2 * 8192**3 / (ms_tf32 * 1e-3)}


def _row(torch, trm, net, width, depth, batch, device, args, cuda, ceilings):
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, width, generator=gen).to(device)
    y = torch.randn(batch, width, generator=gen).to(device)
    params = trm.init_params(0, device=device)
    row = {"width": width, "depth": depth, "batch": batch,
           "fused_ms": _timer(torch, _derive_step(trm, params, x, y), cuda, reps=3)}
    eager = _torch_step(torch, net, params, x, y)
    row.update(_baselines(torch, eager, args, cuda, batch, reps=3))
    if ceilings.get("flops"):
        macs = sum(w_in * w_out for w_in, w_out in _dims(net))
        flops = 6 * batch * macs  # forward 2, backward 4 per multiply-add
        bytes_ = 4 * (2 * batch * width + 3 * sum(a * b + b for a, b in _dims(net)))
        passes = {"tf32": 1, "tf32x3": 3}.get(getattr(trm, "DOT_PRECISION", None))
        peak = ceilings["tf32_flops"] / passes if passes else ceilings["flops"]
        floor = max(bytes_ / ceilings["bandwidth_Bps"], flops / peak)
        row.update(flops=flops, bytes=bytes_, roofline=floor / (row["fused_ms"] * 1e-3))
    return row


def _dims(net):
    return [(li.in_shape[0], li.out_shape[0]) for li in net.info]


def _torch_step(torch, net, params, x, y):
    layers = []
    for li in net.info:
        lin = torch.nn.Linear(li.in_shape[0], li.out_shape[0], device=x.device)
        with torch.no_grad():
            lin.weight.copy_(params[li.weight])
            lin.bias.copy_(params[li.bias])
        layers.append(lin)
        if li.activation == "relu":
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * ((model(x) - y) ** 2).sum(dim=1).mean()
        loss.backward()
        opt.step()
        return loss

    return step


# each baseline: the eager step as it is, or torch.compile of it with these arguments
COMPILED = {"eager": None, "compile": {}, "max-ac": {"mode": "max-autotune-no-cudagraphs"},
            "reduce-oh": {"mode": "reduce-overhead"}}


def _derive_step(trm, params, x, y):
    """One call: one FlatState.step of the generated module (its step count going up)."""
    fs = trm.FlatState(params)
    step = [0]

    def fused():
        step[0] += 1
        fs.step(x, y, step[0])

    return fused


def _baselines(torch, eager, args, cuda, batch, reps) -> dict:
    """The chosen baselines' median ms: the eager step and its compiled forms (CUDA graphs on a GPU, up to
    --reduce-overhead-max-log2 rows)."""
    out = {}
    for name in args.baselines:
        if name == "reduce-oh" and (not cuda or batch > 2**args.reduce_overhead_max_log2):
            continue
        fn = eager if COMPILED[name] is None else torch.compile(eager, **COMPILED[name])
        out[f"{name}_ms"] = _timer(torch, fn, cuda, reps=reps)
    return out


if __name__ == "__main__":
    sys.exit(main())

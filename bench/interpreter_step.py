"""One training step of a spec's generated Triton module under the Triton interpreter, kernel by kernel.

The interpreter (TRITON_INTERPRET=1, CPU tensors) is how the tests, `derive verify` and
`derive train --backend triton` run the Triton target on a machine without a GPU, and it pays per
program and per operation rather than per element: a plan that is right for a GPU can make it slow.
This times `FlatState.step` of generated/<name>_triton.py and, with --against REV, of the same file as
git revision REV checked it in, side by side in one run (the order alternates every round), and prints
the median step, each kernel's median share of it and the ratio.

Before any timing, each module's loss at the start is compared with the NumPy module's
(generated/<name>_numpy.py, float64) on the same parameters and batch: a disagreement over 1e-4 exits 1.

    python bench/interpreter_step.py examples/digits_convnet.toml --batch 32 --against 3fd4dc2
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton.runtime.interpreter as interpreter  # noqa: E402

from derive import load_spec, verify  # noqa: E402

_SECONDS: collections.Counter = collections.Counter()
_launch = interpreter.GridExecutor.__call__


def _timed(self, *args, **kwargs):
    t = time.perf_counter()
    try:
        return _launch(self, *args, **kwargs)
    finally:
        _SECONDS[self.fn.__name__] += time.perf_counter() - t


interpreter.GridExecutor.__call__ = _timed


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _at_revision(rev: str, rel: str, tmp: Path) -> Path:
    out = tmp / f"{rev}_{Path(rel).name}"
    text = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=ROOT, check=True, capture_output=True).stdout
    out.write_bytes(text)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", help="a network spec whose modules are checked in under generated/")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--against", metavar="REV", help="also time the module as this git revision has it")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    net = load_spec(ROOT / args.spec)
    rel = f"generated/{net.name}_triton.py"
    with tempfile.TemporaryDirectory(prefix="derive-bench-") as tmp:
        paths = {"now": ROOT / rel}
        if args.against:
            paths[args.against] = _at_revision(args.against, rel, Path(tmp))
        mods = {k: _load(p, f"_bench_{i}") for i, (k, p) in enumerate(paths.items())}
        ref = _load(ROOT / f"generated/{net.name}_numpy.py", "_bench_numpy")
        rng = np.random.default_rng(args.seed)
        params = verify.random_params(ref, rng)
        x, y = verify.sample(net, rng, args.batch)
        want = float(ref.loss(params, x, y))
        tp = {k: torch.tensor(v, dtype=torch.float32) for k, v in params.items()}
        tx = torch.tensor(x, dtype=torch.float32)
        ty = torch.tensor(y)
        for key, m in mods.items():
            got = m.loss(tp, tx, ty)
            err = abs(got - want) / max(abs(want), 1e-12)
            print(f"{key}: loss at the start {got:.7g}, NumPy float64 {want:.7g}, rel err {err:.1e}")
            if err > 1e-4:
                return 1
        states = {k: m.FlatState({n: v.clone() for n, v in tp.items()}) for k, m in mods.items()}
        for s in states.values():
            s.step(tx, ty, 1)  # the first call of each kernel parses it: not timed
        steps = {k: [] for k in mods}
        kernels = {k: collections.defaultdict(list) for k in mods}
        order = list(mods)
        for r in range(args.rounds):
            for key in order[r % len(order):] + order[:r % len(order)]:
                _SECONDS.clear()
                t = time.perf_counter()
                states[key].step(tx, ty, r + 2)
                steps[key].append(time.perf_counter() - t)
                for name, sec in _SECONDS.items():
                    kernels[key][name].append(sec)
    print(f"{net.name}, batch {args.batch}, {args.rounds} rounds, FlatState.step under TRITON_INTERPRET=1")
    for key in mods:
        print(f"  {key}: {statistics.median(steps[key]):.3f} s a step")
        for name, secs in sorted(kernels[key].items(), key=lambda kv: -statistics.median(kv[1])):
            print(f"    {name:44s} {statistics.median(secs):8.3f} s")
    if args.against:
        ratio = statistics.median(steps[args.against]) / statistics.median(steps["now"])
        print(f"  {args.against} / now: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

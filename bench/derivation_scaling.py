"""How the derivation scales with depth: layer by layer (derive) against differentiating the
fully composed expression (the naive route).

For a scalar sigmoid chain of each depth L (a1 = w1·x + b1, f_l = σ(a_l), a_l = w_l·f_{l-1},
L2 loss) it prints

  depth        L
  derive (s)   wall time of derive.derive(net) (SymPy's cache and derive's memo of local partials
               cleared first; best of --repeat)
  json (s)     wall time of derive.explain.to_json(der)
  ops          sympy.count_ops summed over every δ's .expression and every gradient's .rhs
  json bytes   size of `derive explain --format json` (UTF-8)

then the ratio time(1000)/time(250) (the requirement is < 4.5: linear would be 4), the wall time of
`derive explain chainN.toml --format json` in a fresh process for N = 1000 and 2000 (start-up
included; requirements < 5 s and < 10 s), and, for
comparison, the naive route: sympy.diff(L, θ) of the fully composed loss for every parameter θ
at depths 5, 10, 20, 25, with its operation count (stopping at the first RecursionError or
at the first depth that takes more than 20 s).

    python bench/derivation_scaling.py                     # depths 25 50 100 250 500 1000
    python bench/derivation_scaling.py --depths 10 100 --repeat 3
    python bench/derivation_scaling.py --mlp               # dense 64-wide MLPs, depths 2 … 100

Exit status: 0 when every requirement printed is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sympy as sp
from sympy.core.cache import clear_cache

from derive import Linear, Loss, Network, Port, derive, indices
from derive.explain import to_json
from derive.tables.functions import sigmoid

RATIO_LIMIT = 4.5
CLI_LIMITS = {1000: 5.0, 2000: 10.0}  # seconds through `derive explain --format json`, start-up included
NAIVE_LIMIT_S = 20.0


def sigmoid_chain(depth: int) -> Network:
    layers = [Linear(activation="sigmoid")] + [Linear(bias=False, activation="sigmoid")] * (depth - 1)
    return Network(f"chain{depth}", layers, input=Port("x"), target=Port("y"), loss=Loss("l2"))


def mlp(depth: int, width: int = 64) -> Network:
    layers = [Linear(out=width, activation="tanh") for _ in range(depth - 1)] + [Linear(out=width)]
    return Network(f"mlp{depth}", layers, input=Port("x", (width,)), target=Port("y", (width,)), loss=Loss("l2"))


def op_count(der) -> int:
    return sum(sp.count_ops(s.expression) for s in der.deltas) + sum(sp.count_ops(s.rhs) for s in der.gradients)


def measure(net: Network, repeat: int) -> dict:
    best = float("inf")
    der = None
    for _ in range(repeat):
        clear_cache()
        indices.clear_memo()  # derive's own memo of local partials: every repeat starts cold
        gc.collect()  # the previous depth's garbage is not this depth's time
        start = time.perf_counter()
        der = derive(net)
        best = min(best, time.perf_counter() - start)
    start = time.perf_counter()
    text = to_json(der)
    json_s = time.perf_counter() - start
    return {"time": best, "json_s": json_s, "ops": op_count(der), "bytes": len(text.encode("utf-8"))}


def chain_toml(depth: int) -> str:
    lines = ['name = "chain"']
    for i in range(1, depth + 1):
        lines += ["[[layers]]", 'type = "linear"'] + ([] if i == 1 else ["bias = false"]) + ['activation = "sigmoid"']
    return "\n".join(lines) + "\n"


def cli_seconds(depth: int) -> float:
    """Wall time of `derive explain SPEC --format json` in a fresh process (start-up included)."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / f"chain{depth}.toml"
        spec.write_text(chain_toml(depth), encoding="utf-8")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "derive", "explain", str(spec), "--format", "json"], check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


def naive(depth: int) -> tuple[float, int]:
    """sympy.diff of ½(y − f_L)² written out in full, for every parameter; (seconds, ops)."""
    x, y, b1 = sp.symbols("x y b1", real=True)
    ws = sp.symbols(f"w1:{depth + 1}", real=True)
    f = x
    for l, w in enumerate(ws):
        f = sigmoid(w * f + (b1 if l == 0 else 0))
    loss = (y - f) ** 2 / 2
    clear_cache()
    start = time.perf_counter()
    grads = [sp.diff(loss, p) for p in (*ws, b1)]
    elapsed = time.perf_counter() - start
    return elapsed, sum(sp.count_ops(g) for g in grads)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[25, 50, 100, 250, 500, 1000],
                    help="scalar sigmoid chain depths (default: 25 50 100 250 500 1000)")
    ap.add_argument("--naive-depths", type=int, nargs="+", default=[5, 10, 20, 25],
                    help="depths for the naive route (default: 5 10 20 25)")
    ap.add_argument("--repeat", type=int, default=3, help="time derive this many times, keep the best")
    ap.add_argument("--mlp", action="store_true", help="also dense 64-wide MLPs of depths 2, 5, 10, 25, 50, 100")
    ap.add_argument("--cli", type=int, nargs="*", default=[1000, 2000],
                    help="chain depths timed through the CLI in a fresh process (default: 1000 2000; none: skip)")
    args = ap.parse_args(argv)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))

    print(f"sympy {sp.__version__}, python {sys.version.split()[0]}")
    print()
    print("Scalar sigmoid chains, derived layer by layer (derive.derive)")
    print(f"{'depth':>6} {'derive (s)':>11} {'json (s)':>9} {'ops':>9} {'json bytes':>11}")
    times: dict[int, float] = {}
    for depth in args.depths:
        r = measure(sigmoid_chain(depth), args.repeat)
        times[depth] = r["time"]
        print(f"{depth:>6} {r['time']:>11.3f} {r['json_s']:>9.3f} {r['ops']:>9} {r['bytes']:>11}", flush=True)
    status = 0
    if 250 in times and 1000 in times:
        ratio = times[1000] / times[250]
        verdict = "ok" if ratio < RATIO_LIMIT else "FAILS"
        print(f"time(1000)/time(250) = {ratio:.2f}  (requirement < {RATIO_LIMIT:g}; linear = 4): {verdict}")
        status = 0 if ratio < RATIO_LIMIT else 1

    for depth in args.cli:
        seconds = cli_seconds(depth)
        limit = CLI_LIMITS.get(depth)
        verdict = "" if limit is None else f"  (requirement < {limit:g} s: {'ok' if seconds < limit else 'FAILS'})"
        print(f"derive explain chain{depth}.toml --format json: {seconds:.2f} s{verdict}", flush=True)
        if limit is not None and seconds >= limit:
            status = 1

    print()
    print("Naive route: sympy.diff of the fully composed loss, for every parameter")
    print(f"{'depth':>6} {'diff (s)':>9} {'ops':>9}   {'derive ops, same depth':>22}")
    for depth in args.naive_depths:
        try:
            elapsed, ops = naive(depth)
        except RecursionError:
            print(f"{depth:>6}  RecursionError: the naive route stops here")
            break
        ours = op_count(derive(sigmoid_chain(depth)))
        print(f"{depth:>6} {elapsed:>9.3f} {ops:>9}   {ours:>22}", flush=True)
        if elapsed > NAIVE_LIMIT_S:
            print(f"        depth {depth} took more than {NAIVE_LIMIT_S:g} s: the naive route stops here")
            break

    if args.mlp:
        print()
        print("Dense MLPs, 64 wide (tanh hidden layers, identity output, L2), derived layer by layer")
        print(f"{'depth':>6} {'derive (s)':>11} {'json (s)':>9} {'ops':>9} {'json bytes':>11}")
        for depth in (2, 5, 10, 25, 50, 100):
            r = measure(mlp(depth), args.repeat)
            print(f"{depth:>6} {r['time']:>11.3f} {r['json_s']:>9.3f} {r['ops']:>9} {r['bytes']:>11}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

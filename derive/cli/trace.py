"""`derive trace`: the training loop step by step with numbers (logic in derive/train/trace.py)."""

from __future__ import annotations

import json
import sys

TRACE_EXAMPLES = """examples:
  derive trace examples/perceptron.toml --data examples/data/perceptron.csv --steps 4 --batch 1 --lr 0.01
  derive trace examples/lecture.toml --data examples/data/perceptron.csv --steps 2 --format json"""


def cmd_trace(args) -> int:
    from derive import limits
    from derive.cli.options import _network
    from derive.fsutil import display_path
    from derive.cli.options import with_optimizer
    from derive.derivation import derive
    from derive.targets.modules import generated_modules
    from derive.train.data import load, read_bytes
    from derive.train.trace import record_json, record_text, walk

    net = with_optimizer(_network(args.spec), args.optimizer, args.lr)
    source = display_path(args.spec)
    limits.check_budget(read_bytes(args.data), args.memory_budget, f"derive trace --data {args.data}")
    x, y = load(args.data, net)
    batch = 1 if args.batch is None else args.batch
    need = limits.estimate_bytes(net, max(1, min(batch, len(x))), "train", data_rows=len(x))
    limits.check_budget(need, args.memory_budget, f"derive trace {source} on {len(x):,} samples")
    der = derive(net)
    with generated_modules(net, source, ("numpy",)) as mods:
        records = list(walk(net, mods["numpy"], x, y, args.steps, batch, args.seed))  # errors before output
    if args.format == "json":
        for rec in records:
            sys.stdout.write(json.dumps(record_json(rec, der)) + "\n")
        return 0
    print(f"tracing {net.name}: {args.steps} steps of {net.optimizer.type}, batch {batch}, seed {args.seed}")
    for rec in records:
        print(record_text(rec, der))
    return 0


def add_commands(sub) -> None:
    from derive.cli.options import HelpFormatter, _positive_int, add_limit_options, add_optimizer_options

    tr = sub.add_parser("trace", help="the training loop step by step, with every number",
                        description="Run the training loop step by step and print, for each step, the sample "
                                    "drawn, the forward pass and loss, each δ and gradient, and the update.",
                        epilog=TRACE_EXAMPLES, formatter_class=HelpFormatter)
    tr.add_argument("spec", help="network spec (TOML)")
    tr.add_argument("--data", required=True, help="CSV with columns named after the spec's input and target, or an .npz file with arrays "
                         "named after them (required; docs/training.md)")
    tr.add_argument("--steps", type=_positive_int, default=4, help="optimizer steps to show (default 4)")
    tr.add_argument("--batch", type=_positive_int, help="samples per step (default 1)")
    add_optimizer_options(tr)
    tr.add_argument("--seed", type=int, default=0, help="initial parameters and shuffling, as derive train (default 0)")
    tr.add_argument("--format", choices=("text", "json"), default="text",
                    help="text, or json: one record per step, one per line (default text)")
    add_limit_options(tr, budget=True)
    tr.set_defaults(func=cmd_trace)

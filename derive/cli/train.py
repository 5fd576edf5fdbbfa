"""`derive train`."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np

from derive.errors import DeriveError
from derive.tables.optimizers import OPTIMIZER_TYPES, Optimizer


def cmd_train(args) -> int:
    from derive.fsutil import display_path
    from derive.train.data import load_csv
    from derive.train.loop import plot, train

    from derive import limits
    from derive.cli import _network

    net = _network(args.spec)
    opt = net.optimizer
    if args.optimizer or args.lr is not None:
        kind = args.optimizer or opt.type
        # constants that belong to the new optimizer carry over; the rest would not apply
        keep = tuple((k, v) for k, v in opt.constants if kind == opt.type)
        lr = args.lr if args.lr is not None else (opt.lr if kind == opt.type else None)
        try:
            opt = Optimizer(kind, lr, opt.schedule, keep)
        except DeriveError as err:  # the error names optimizer.lr etc.; it came from the command line
            raise DeriveError(f"--lr/--optimizer: {err}".replace("<python>: ", "")) from None
        net = dataclasses.replace(net, optimizer=opt)
    source = display_path(args.spec)
    # the CSV's rows as Python strings take several times the file's size; refuse before reading it
    limits.check_budget(limits.csv_bytes(args.data), args.memory_budget, f"derive train --data {args.data}")
    x, y = load_csv(args.data, net)
    batch = len(x) if args.batch is None else args.batch
    full = len(x) if net.optimizer.type == "lbfgs" else batch  # L-BFGS is full-batch whatever --batch says
    need = limits.estimate_bytes(net, max(1, min(full, len(x))), "train", data_rows=len(x))
    limits.check_budget(need, args.memory_budget,
                        f"derive train {source} on {len(x):,} samples")
    result = train(net, source, x, y, epochs=args.epochs, batch=batch,
                   seed=args.seed, backend=args.backend, checkpoint=args.checkpoint,
                   progress=args.format == "text")
    if args.plot:
        plot(result.losses, args.plot, f"{net.name}: {net.optimizer.type}, lr {net.optimizer.hyper['lr']:g}")
    if args.format == "json":
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
        return 0
    print(f"trained {net.name} for {result.epochs} epochs with {net.optimizer.type} "
          f"(lr {net.optimizer.hyper['lr']:g}, {net.optimizer.schedule}), backend {args.backend}")
    for name, value in result.params.items():
        print(format_param(name, value))
    print(f"loss = {result.loss:.8g}")
    if result.accuracy is not None:
        print(f"training accuracy = {result.accuracy:.4f}")  # there is no held-out split
    if args.plot:
        print(f"loss curve: {args.plot}")
    return 0


PRINT_FULL = 1000  # arrays up to this many elements print in full (a 16×4 weight is not cut to "...")


def format_param(name: str, value) -> str:
    """``  W1 = [[...], ...]`` with continuation lines indented under the first bracket."""
    prefix = f"  {name} = "
    text = np.array2string(np.asarray(value), precision=6, separator=", ", threshold=PRINT_FULL,
                           max_line_width=100, prefix=prefix)
    return prefix + text


TRAIN_EXAMPLES = """examples:
  derive train examples/perceptron.toml --data examples/data/perceptron.csv --optimizer adam --lr 0.01 --epochs 3000
  derive train examples/iris_mlp.toml --data examples/data/iris.csv --epochs 100 --batch 16 --plot out/iris_loss.png
  derive train examples/iris_mlp.toml --data examples/data/iris.csv --epochs 200 --checkpoint out/iris.npz
      (Ctrl-C says which epoch the checkpoint holds; the same command again resumes from it)"""


def add_commands(sub) -> None:
    from derive.cli import HelpFormatter, add_limit_options

    tr = sub.add_parser("train", help="train the generated network on a CSV file",
                        description="Train the generated network on a CSV file with the spec's optimizer.",
                        epilog=TRAIN_EXAMPLES, formatter_class=HelpFormatter)
    tr.add_argument("spec", help="network spec (TOML)")
    tr.add_argument("--data", required=True,
                    help="comma-separated CSV with columns named after the spec's input and target (required)")
    tr.add_argument("--epochs", type=int, default=100, help="passes over the data (default 100)")
    tr.add_argument("--batch", type=int, help="mini-batch size (default: the whole data set)")
    tr.add_argument("--lr", type=float, help="learning rate η0 (default: the spec's)")
    tr.add_argument("--optimizer", choices=OPTIMIZER_TYPES, help="override the spec's optimizer (default: the spec's)")
    tr.add_argument("--seed", type=int, default=0, help="initial parameters and shuffling (default 0)")
    tr.add_argument("--backend", choices=("numpy", "triton"), default="numpy",
                    help="generated code to run (default numpy)")
    tr.add_argument("--plot", help="write the loss curve to this PNG (default: no plot)")
    tr.add_argument("--checkpoint",
                    help="save parameters and optimizer state every epoch; resume from it (default: none)")
    tr.add_argument("--format", choices=("text", "json"), default="text", help="result format (default text)")
    add_limit_options(tr, budget=True)
    tr.set_defaults(func=cmd_train)

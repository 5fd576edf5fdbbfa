"""`derive train`."""

from __future__ import annotations

import json
import sys

import numpy as np

from derive.errors import DeriveError
from derive.cli.options import with_optimizer
from derive.tables.optimizers import OPTIMIZER_TYPES


def cmd_train(args) -> int:
    from derive.fsutil import display_path
    from derive.train.data import load, read_bytes
    from derive.train.loop import train

    from derive import limits
    from derive.cli.options import _network

    net = with_optimizer(_network(args.spec), args.optimizer, args.lr)
    source = display_path(args.spec)
    plans = _plot_plans(args, net)  # bad plot options fail before any training
    # a CSV's cells as Python strings take several times the file's size (an .npz its arrays and a float64
    # copy): refuse before reading either file
    for opt, path in (("--data", args.data), ("--test-data", args.test_data)):
        if path is not None:
            limits.check_budget(read_bytes(path), args.memory_budget, f"derive train {opt} {path}")
    x, y = load(args.data, net)
    test = load(args.test_data, net) if args.test_data is not None else None  # its errors before any training
    batch = len(x) if args.batch is None else args.batch
    full = len(x) if net.optimizer.type == "lbfgs" else batch  # L-BFGS is full-batch whatever --batch says
    rows = len(x) + (len(test[0]) if test is not None else 0)
    need = limits.estimate_bytes(net, max(1, min(full, len(x))), "train", data_rows=rows)
    limits.check_budget(need, args.memory_budget,
                        f"derive train {source} on {len(x):,} samples")
    result = train(net, source, x, y, epochs=args.epochs, batch=batch,
                   seed=args.seed, backend=args.backend, checkpoint=args.checkpoint,
                   progress=args.format == "text", test=test)
    if args.plot or args.plot_path:
        _draw(args, net, source, x, y, batch, result, plans)
    if args.format == "json":
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
        return 0
    print(f"trained {net.name} for {result.epochs} epochs with {net.optimizer.type} "
          f"(lr {net.optimizer.hyper['lr']:g}, {net.optimizer.schedule}), backend {args.backend}")
    for name, value in result.params.items():
        print(format_param(name, value))
    print(f"loss = {result.loss:.8g}")
    if result.accuracy is not None:
        print(f"training accuracy = {result.accuracy:.4f}")
    if result.test_loss is not None:
        n_test = len(test[0])
        print(f"test loss = {result.test_loss:.8g} ({n_test:,} samples of {args.test_data})")
        if result.test_accuracy is not None:
            right = round(result.test_accuracy * n_test)
            print(f"test accuracy = {result.test_accuracy:.4f} ({right} of {n_test:,})")
    if args.plot:
        print(f"loss curve{'s per learning rate' if args.lr_sweep else ''}: {args.plot}")
    if args.plot_path:
        print(f"loss contour and path{'s' if args.compare else ''}: {args.plot_path}")
    return 0


def _floats(text: str, option: str) -> list[float]:
    from derive.evaluate import parse_number

    out = []
    for part in text.split(","):
        v = float(parse_number(part.strip(), option))
        if v <= 0:
            raise DeriveError(f"{option}: expected positive learning rates, got {part.strip()}")
        out.append(v)
    return out


def _plot_plans(args, net) -> dict:
    from derive.train import plots

    plans: dict = {}
    if args.plot:
        plots.check_path(args.plot, "--plot")
    if args.lr_sweep:
        if not args.plot:
            raise DeriveError("--lr-sweep: draws on --plot FILE; pass --plot sweep.png too")
        plans["lrs"] = _floats(args.lr_sweep, "--lr-sweep")
    if args.compare or args.axes:
        if not args.plot_path:
            raise DeriveError(f"--{'compare' if args.compare else 'axes'}: draws on --plot-path FILE; pass it too")
    if args.plot_path:
        plots.check_path(args.plot_path, "--plot-path")
        if net.optimizer.type == "lbfgs":
            raise DeriveError("--plot-path: L-BFGS runs inside scipy; its steps are not traced (pick another optimizer)")
        plans["axes"] = plots.parse_axes(args.axes, net)
        kinds = [k.strip() for k in args.compare.split(",")] if args.compare else [net.optimizer.type]
        for k in kinds:
            if k not in OPTIMIZER_TYPES or k == "lbfgs":
                raise DeriveError(f"--compare {k}: expected optimizers from "
                                  f"{', '.join(t for t in OPTIMIZER_TYPES if t != 'lbfgs')}")
        plans["kinds"] = kinds
    return plans


def _draw(args, net, source, x, y, batch, result, plans) -> None:
    from derive.targets.modules import generated_modules
    from derive.train import plots

    lr = net.optimizer.hyper["lr"]
    if args.plot and "lrs" not in plans:
        plots.loss_curve(result.losses, args.plot, f"{net.name}: {net.optimizer.type}, lr {lr:g}")
    if "lrs" in plans:
        curves = {}
        for v in plans["lrs"]:
            n = with_optimizer(net, net.optimizer.type, v)
            with generated_modules(n, source, ("numpy",)) as mods:
                curves[v] = plots.epoch_losses(n, mods["numpy"], x, y, args.epochs, batch, args.seed)
        plots.lr_sweep(curves, args.plot, f"{net.name}: {net.optimizer.type}, loss per learning rate "
                                          f"(batch {batch})")
    if args.plot_path:
        steps = args.epochs * -(-len(x) // batch)
        runs = {}
        for kind in plans["kinds"]:
            n = with_optimizer(net, kind, lr)
            with generated_modules(n, source, ("numpy",)) as mods:
                runs[f"{kind}, lr {lr:g}"] = plots._path(n, mods["numpy"], x, y, steps, batch, args.seed,
                                                         plans["axes"])
        with generated_modules(net, source, ("numpy",)) as mods:
            others = "" if len(net.params) <= 2 and sum(max(1, int(np.prod(p.shape))) for p in net.params) == 2 \
                else "\n(the other parameters held where the first path ends)"
            plots.contour_paths(runs, mods["numpy"], x, y, plans["axes"], args.plot_path,
                                f"{net.name}: loss contour and optimizer path{'s' if len(runs) > 1 else ''}{others}")


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
  derive train examples/digits_convnet.toml --data examples/data/digits_train.npz --test-data examples/data/digits_test.npz --epochs 20 --batch 32
  derive train examples/iris_mlp.toml --data examples/data/iris.csv --epochs 200 --checkpoint out/iris.npz
      (Ctrl-C says which epoch the checkpoint holds; the same command again resumes from it)"""


def add_commands(sub) -> None:
    from derive.cli.options import HelpFormatter, add_limit_options, add_optimizer_options

    tr = sub.add_parser("train", help="train the generated network on data (CSV or .npz)",
                        description="Train the generated network on data (CSV or .npz) with the spec's optimizer.",
                        epilog=TRAIN_EXAMPLES, formatter_class=HelpFormatter)
    tr.add_argument("spec", help="network spec (TOML)")
    tr.add_argument("--data", required=True,
                    help="the training data: comma-separated CSV with columns named after the spec's input and "
                         "target, or an .npz file with arrays named after them (required; docs/training.md)")
    tr.add_argument("--test-data", metavar="FILE",
                    help="held-out data in the same forms: its loss (and accuracy, for a classifier) is reported "
                         "after training (default: none)")
    tr.add_argument("--epochs", type=int, default=100, help="passes over the data (default 100)")
    tr.add_argument("--batch", type=int, help="mini-batch size (default: the whole data set)")
    add_optimizer_options(tr)
    tr.add_argument("--seed", type=int, default=0, help="initial parameters and shuffling (default 0)")
    tr.add_argument("--backend", choices=("numpy", "triton"), default="numpy",
                    help="generated code to run (default numpy)")
    g = tr.add_argument_group("plots (docs/teaching.md; the format is the file name's: .png, .pdf or .svg)")
    g.add_argument("--plot", metavar="FILE", help="write the loss curve to FILE (default: no plot)")
    g.add_argument("--plot-path", metavar="FILE",
                   help="write the loss contour over two parameters with the optimizer's path (default: none)")
    g.add_argument("--axes", nargs=2, metavar="ELEM",
                   help="the two parameter elements of --plot-path, e.g. W1[0,0] b1[0] (default: the network's "
                        "two scalar parameters)")
    g.add_argument("--compare", metavar="OPTS",
                   help="optimizers on one --plot-path contour, e.g. sgd,momentum,adam (default: the spec's)")
    g.add_argument("--lr-sweep", metavar="LRS",
                   help="loss curves for these learning rates on --plot, e.g. 0.001,0.01,0.1,1 (default: none)")
    tr.add_argument("--checkpoint",
                    help="save parameters and optimizer state every epoch; resume from it (default: none)")
    tr.add_argument("--format", choices=("text", "json"), default="text", help="result format (default text)")
    add_limit_options(tr, budget=True)
    tr.set_defaults(func=cmd_train)

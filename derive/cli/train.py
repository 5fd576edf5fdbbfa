"""`derive train`."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np

from derive.errors import DeriveError
from derive.tables.optimizers import OPTIMIZER_TYPES, Optimizer


def cmd_train(args) -> int:
    from derive.cli.generate import _display_path
    from derive.train.data import load_csv
    from derive.spec import load_spec
    from derive.train import plot, train

    net = load_spec(args.spec)
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
    x, y = load_csv(args.data, net)
    result = train(net, _display_path(args.spec), x, y, epochs=args.epochs, batch=len(x) if args.batch is None else args.batch,
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
        text = np.array2string(np.asarray(value), precision=6, separator=", ", threshold=20)
        print(f"  {name} = {text}")
    print(f"loss = {result.loss:.8g}")
    if result.accuracy is not None:
        print(f"accuracy = {result.accuracy:.4f}")
    if args.plot:
        print(f"loss curve: {args.plot}")
    return 0


def add_commands(sub) -> None:
    tr = sub.add_parser("train", help="train the generated network on a CSV file")
    tr.add_argument("spec", help="network spec (TOML)")
    tr.add_argument("--data", required=True, help="CSV with columns named after the spec's input and target")
    tr.add_argument("--epochs", type=int, default=100)
    tr.add_argument("--batch", type=int, help="mini-batch size (default: the whole data set)")
    tr.add_argument("--lr", type=float, help="learning rate η0 (default: the spec's)")
    tr.add_argument("--optimizer", choices=OPTIMIZER_TYPES, help="override the spec's optimizer")
    tr.add_argument("--seed", type=int, default=0, help="initial parameters and shuffling")
    tr.add_argument("--backend", choices=("numpy", "triton"), default="numpy")
    tr.add_argument("--plot", help="write the loss curve to this PNG")
    tr.add_argument("--checkpoint", help="save parameters and optimizer state every epoch; resume from it")
    tr.add_argument("--format", choices=("text", "json"), default="text")
    tr.set_defaults(func=cmd_train)

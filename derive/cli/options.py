"""What the subcommands share: the help formatter, the limit options, argument types, loading a spec,
and --optimizer/--lr applied to a network.  A leaf of derive.cli, so that no subcommand imports another."""

from __future__ import annotations

import argparse
import dataclasses

from derive.errors import DeriveError
from derive.tables.optimizers import Optimizer


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs keep their line breaks (examples, exit codes); option help is wrapped as usual."""


def _network(spec: str | None):
    from derive.builtin import lecture_network
    from derive.spec import load_spec

    if spec is None:
        return lecture_network()
    if spec.endswith(".py"):
        # never run a file: Python users build the Network with the API themselves
        raise DeriveError(f"{spec}: expected a TOML spec; derive does not run Python files (build the Network "
                          "in your own script with the Python API, see the README)")
    return load_spec(spec)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_limit_options(p: argparse.ArgumentParser, budget: bool = False) -> None:
    """--max-elements/--max-params/--max-tile (and --memory-budget) on a subcommand that reads a spec."""
    from derive import limits

    g = p.add_argument_group("size limits (docs/spec.md#limits; these override the spec's [limits] table)")
    g.add_argument("--max-elements", type=_positive_int, metavar="N",
                   help=f"largest tensor, in elements (default {limits.DEFAULT_MAX_ELEMENTS:,})")
    g.add_argument("--max-params", type=_positive_int, metavar="N",
                   help=f"most parameters in all (default {limits.DEFAULT_MAX_PARAMS:,})")
    g.add_argument("--max-tile", type=_positive_int, metavar="N",
                   help=f"widest padded Triton tile, in elements (default {limits.DEFAULT_MAX_TILE:,})")
    if budget:
        m = p.add_argument_group("memory (docs/spec.md#the-memory-budget)")
        m.add_argument("--memory-budget", type=limits.parse_bytes, metavar="SIZE",
                       help=f"refuse to start when the estimated memory needed is above SIZE, e.g. 2G or "
                            f"512M (default {limits.BUDGET_FRACTION * 100:.0f}%% of physical memory, "
                            f"{limits.human(limits.default_budget())} here)")


def with_optimizer(net, kind: str | None, lr: float | None):
    """``net`` with --optimizer/--lr applied (shared by derive train and derive trace)."""
    opt = net.optimizer
    if kind or lr is not None:
        kind = kind or opt.type
        # constants that belong to the new optimizer carry over; the rest would not apply
        keep = tuple((k, v) for k, v in opt.constants if kind == opt.type)
        lr = lr if lr is not None else (opt.lr if kind == opt.type else None)
        try:
            opt = Optimizer(kind, lr, opt.schedule, keep)
        except DeriveError as err:  # the error names optimizer.lr etc.; it came from the command line
            raise DeriveError(f"--lr/--optimizer: {err}".replace("<python>: ", "")) from None
        net = dataclasses.replace(net, optimizer=opt)
    return net


def add_optimizer_options(p: argparse.ArgumentParser) -> None:
    """--lr and --optimizer, which derive train and derive trace apply with ``with_optimizer``."""
    from derive.tables.optimizers import OPTIMIZER_TYPES

    p.add_argument("--lr", type=float, help="learning rate η0 (default: the spec's)")
    p.add_argument("--optimizer", choices=OPTIMIZER_TYPES, help="override the spec's optimizer (default: the spec's)")

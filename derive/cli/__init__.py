"""The `derive` command line: explain, generate, verify, train.

Exit codes: 0 ok, 1 a check failed, 2 bad input (one line naming file, key path and
what was expected; never a traceback), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys

from derive.cli.options import HelpFormatter, _network, add_limit_options
from derive.errors import DeriveError

EXIT_CODES = """exit codes:
  0    ok
  1    a check failed (derive verify, derive generate --check)
  2    bad input: one line naming the file, the key path and what was expected; also a
       size limit, the memory budget, or memory running out
  130  interrupted (Ctrl-C)"""


def cmd_explain(args) -> int:
    from derive.derivation import derive
    from derive.explain import FORMATS

    net = _network(args.spec)
    if args.param is not None and args.param not in {p.name for p in net.params}:
        known = ", ".join(p.name for p in net.params)
        raise DeriveError(f"{args.spec or '<lecture>'}: --param: expected one of {known}, got {args.param!r}")
    der = derive(net)
    if args.format == "html":  # the page with its graph (derive/draw/page.py)
        from derive.draw.page import render

        values = None
        if args.at is not None:
            from derive.cli.numbers import values_at

            values = values_at(der, args)
        elif args.params is not None or args.seed is not None or args.full:
            raise DeriveError(f"{args.spec or '<lecture>'}: --params, --seed and --full go with --at NAME=VALUE (e.g. --at x=2 y=1.9)")
        sys.stdout.write(render(der, values, full=args.full, param=args.param, expand=args.expand))
        return 0
    if args.at is not None:
        from derive.cli.numbers import explain_at

        sys.stdout.write(explain_at(der, args))
        return 0
    if args.params is not None or args.seed is not None or args.full:
        raise DeriveError(f"{args.spec or '<lecture>'}: --params, --seed and --full go with --at NAME=VALUE (e.g. --at x=2 y=1.9)")
    sys.stdout.write(FORMATS[args.format](der, param=args.param, expand=args.expand, fragment=args.fragment))
    return 0


EXPLAIN_EXAMPLES = """examples:
  derive explain                                    the lecture's four-parameter network
  derive explain examples/mlp_softmax.toml --param W1
  derive explain examples/lecture.toml --format latex --expand
  derive explain examples/lecture.toml --at x=2 y=1.9 --seed 0   every quantity's number at one sample
  derive explain examples/lecture.toml --format html --at x=2 y=1.9 > lecture.html   a page to click through"""


def build_parser() -> argparse.ArgumentParser:
    from derive.version import __version__

    parser = argparse.ArgumentParser(
        prog="derive", description="See and generate backpropagation.", formatter_class=HelpFormatter,
        epilog="run 'derive COMMAND --help' for a command's options and examples.\n\n" + EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"derive {__version__}",
                        help="print derive's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ex = sub.add_parser("explain", help="print the chain-rule derivation of every partial derivative",
                        description="Print the chain-rule derivation of every partial derivative of the loss.",
                        epilog=EXPLAIN_EXAMPLES, formatter_class=HelpFormatter)
    ex.add_argument("spec", nargs="?", help="network spec (TOML); default: the lecture's four-parameter network")
    ex.add_argument("--param", help="only this parameter's gradient (default: every parameter)")
    ex.add_argument("--format", choices=("text", "latex", "markdown", "json", "html"), default="text",
                    help="output format; html: one self-contained page with the graph, needs Graphviz's dot "
                         "(default text)")
    ex.add_argument("--expand", action="store_true",
                    help="write every gradient with the deltas substituted away (default off)")
    ex.add_argument("--fragment", action="store_true",
                    help="latex: the body alone, to paste (default: a complete document)")
    from derive.cli import numbers as cli_numbers

    cli_numbers.add_explain_options(ex)
    add_limit_options(ex)
    ex.set_defaults(func=cmd_explain)

    from derive.cli import generate as cli_codegen, train as cli_train

    cli_codegen.add_commands(sub)
    cli_train.add_commands(sub)
    from derive.cli import inspect as cli_inspect, trace as cli_trace

    cli_trace.add_commands(sub)
    cli_inspect.add_commands(sub)
    from derive.cli import draw as cli_draw

    cli_draw.add_commands(sub)
    return parser


def _limit_overrides(args) -> dict:
    return {k: getattr(args, k, None) for k in ("max_elements", "max_params", "max_tile")}


def main(argv: list[str] | None = None) -> int:
    from derive import limits

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with limits.overrides(**_limit_overrides(args)):
            return args.func(args)
    except DeriveError as err:
        print(f"derive: error: {err}", file=sys.stderr)
        return err.exit_code
    except MemoryError as err:
        # the budget's estimate was too low, or the machine is short of memory right now
        detail = f" ({err})" if str(err) else ""
        print(f"derive: error: out of memory{detail}; try a smaller --batch or network, or free memory",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"derive: interrupted{': ' + str(err) if str(err) else ''}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `derive` command line: explain, generate, verify.

Exit codes: 0 ok, 1 a check failed, 2 bad input (one line naming file, key path and
what was expected; never a traceback).
"""

from __future__ import annotations

import argparse
import sys

from derive.errors import DeriveError


def _network(spec: str | None):
    from derive.builtin import lecture_network
    from derive.spec import load_spec

    return lecture_network() if spec is None else load_spec(spec)


def cmd_explain(args) -> int:
    from derive.derivation import derive
    from derive.explain import FORMATS

    net = _network(args.spec)
    if args.param is not None and args.param not in {p.name for p in net.params}:
        known = ", ".join(p.name for p in net.params)
        raise DeriveError(f"{args.spec or '<lecture>'}: --param: expected one of {known}, got {args.param!r}")
    der = derive(net)
    sys.stdout.write(FORMATS[args.format](der, param=args.param, expand=args.expand))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="derive", description="See and generate backpropagation.")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("explain", help="print the chain-rule derivation of every partial derivative")
    ex.add_argument("spec", nargs="?", help="network spec (TOML); default: the lecture's four-parameter network")
    ex.add_argument("--param", help="only this parameter's gradient")
    ex.add_argument("--format", choices=("text", "latex", "markdown", "json"), default="text")
    ex.add_argument("--expand", action="store_true", help="write every gradient with the deltas substituted away")
    ex.set_defaults(func=cmd_explain)

    from derive.cli import generate as cli_codegen, train as cli_train

    cli_codegen.add_commands(sub)
    cli_train.add_commands(sub)
    from derive.cli import inspect as cli_inspect

    cli_inspect.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DeriveError as err:
        print(f"derive: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("derive: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

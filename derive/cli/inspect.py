"""`derive inspect`: registers, spills, shared memory and compile time of every generated Triton kernel,
compiled for a GPU on this machine, and the static cost model of a training step (docs/gpu.md)."""

from __future__ import annotations

import json
import sys

from derive.errors import DeriveError


def cmd_inspect(args) -> int:
    from derive.inspect import format_text, inspect
    from derive.spec import load_spec

    if args.timeout <= 0:
        raise DeriveError(f"--timeout: expected a positive number of seconds, got {args.timeout}")
    net = load_spec(args.spec)
    l2 = None if args.l2_bandwidth is None else args.l2_bandwidth * 1e12
    report = inspect(net, args.spec, args.arch, args.batch, timeout=args.timeout,
                     compile_kernels=not args.model_only, l2_bandwidth=l2, strategies=args.strategies)
    if args.format == "json":
        sys.stdout.write(json.dumps(report, indent=1) + "\n")
    else:
        sys.stdout.write(format_text(report))
    return 0 if report["ok"] else 1


INSPECT_EXAMPLES = """examples:
  derive inspect examples/mlp_softmax.toml                 # registers, spills, shared memory per kernel, sm_90
  derive inspect bench/mlp64x4_l2.toml --batch 262144 --model-only   # the traffic model only
  derive inspect examples/lecture.toml --arch sm_80 --format json
  derive inspect bench/mlp64x4_l2.toml --batch 262144 --model-only --l2-bandwidth 10   # an H200's L2
  derive inspect bench/mlp64x4_l2.toml --batch 262144 --strategies   # every candidate plan, compiled and modeled
"""


def add_commands(sub) -> None:
    from derive.cli.options import HelpFormatter, add_limit_options

    p = sub.add_parser("inspect", help="compile the Triton kernels for a GPU (none needed) and model a training step",
                       epilog=INSPECT_EXAMPLES, formatter_class=HelpFormatter)
    p.add_argument("spec", help="network spec (TOML)")
    p.add_argument("--arch", choices=("sm_90", "sm_80"), default="sm_90", help="the GPU to compile for (default sm_90)")
    p.add_argument("--batch", type=int, default=65536, help="batch rows of the modeled training step (default 65536)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds one kernel may take to compile (default 120.0)")
    p.add_argument("--l2-bandwidth", type=float, default=None, metavar="TB/S",
                   help="L2 bandwidth in TB/s for the model (default: measured, 7.0 for sm_90, 5.4 for sm_80)")
    p.add_argument("--strategies", action="store_true",
                   help="also model (and compile) every candidate plan of the fused kernel beside the pick (default: off)")
    p.add_argument("--model-only", action="store_true", help="skip compiling; print only the cost model (default: compile)")
    add_limit_options(p)
    p.set_defaults(func=cmd_inspect)

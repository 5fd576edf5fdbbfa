"""`derive generate` and `derive verify`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from derive.errors import DeriveError
from derive.fsutil import display_path
from derive.verify.table import format_table

EXAMPLES = "examples"
GENERATED = "generated"


def _example_specs(examples: Path) -> list[Path]:
    specs = sorted(examples.glob("*.toml"))
    if not specs:
        raise DeriveError(f"{examples}: no *.toml specs found (run from the repository root or pass --examples)")
    return specs


def _render_examples(examples: Path, generated: Path, targets) -> dict[Path, str]:
    from derive.targets import codegen
    from derive.spec import load_spec

    out: dict[Path, str] = {}
    root = examples.resolve().parent  # the repository: headers name paths relative to it
    for spec in _example_specs(examples):
        net = load_spec(spec)
        skipped: dict[str, str] = {}
        files = codegen.generate(net, display_path(str(spec), root), targets, display_path(str(generated), root),
                                 skipped)
        for fname, text in files.items():
            out[generated / fname] = text
        for fname, reason in skipped.items():
            print(f"skipped: {generated / fname}: {reason}", file=sys.stderr)
    return out


def cmd_generate(args) -> int:
    from derive.targets import codegen

    targets = codegen.TARGETS if args.target == "all" else (args.target,)
    if args.check or args.all:
        if args.spec or args.out:
            raise DeriveError("derive generate: --check and --all take no SPEC or -o (they use examples/ and generated/)")
        examples, generated = Path(args.examples), Path(args.generated)
        files = _render_examples(examples, generated, codegen.TARGETS)
        if args.all:
            by_dir: dict[Path, dict[str, str]] = {}
            for path, text in files.items():
                by_dir.setdefault(path.parent, {})[path.name] = text
            for d, fs in by_dir.items():
                codegen.write_atomic(d, fs)
            print(f"wrote {len(files)} files to {generated}")
            return 0
        stale = [p for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
        extra = sorted(
            p for p in generated.glob("*.py")
            if p not in files and any(p.name.endswith(f"_{t}.py") for t in codegen.TARGETS)
        )
        if stale or extra:
            for p in sorted(stale):
                print(f"stale: {p}", file=sys.stderr)
            for p in extra:
                print(f"not produced by any example (remove it): {p}", file=sys.stderr)
            if stale:
                print("derive generate --check: generated/ is out of date; update it with: derive generate --all",
                      file=sys.stderr)
            return 1
        print(f"generated/ is up to date ({len(files)} files from {len(_example_specs(examples))} specs)")
        return 0
    if not args.spec:
        raise DeriveError("derive generate: expected a SPEC (or --check / --all)")
    if not args.out:
        raise DeriveError("derive generate: expected -o DIR, the directory to write into")
    from derive.cli.options import _network

    net = _network(args.spec)
    skipped: dict[str, str] | None = {} if args.target == "all" else None  # a named target refuses loudly
    files = codegen.generate(net, display_path(args.spec), targets, display_path(args.out), skipped)
    for fname, reason in (skipped or {}).items():
        print(f"skipped: {Path(args.out) / fname}: {reason}", file=sys.stderr)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DeriveError(f"{args.out}: -o: expected a directory, found a file")
    for path in codegen.write_atomic(out, files):
        print(path)
    return 0


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty():
        width = 30
        filled = width * done // total
        sys.stderr.write(f"\rverifying [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def cmd_verify(args) -> int:
    from derive.verify.checks import verify

    if args.seeds < 1:
        raise DeriveError(f"--seeds: expected a positive integer, got {args.seeds}")
    from derive import limits
    from derive.cli.options import _network
    from derive.verify.checks import BATCH_SIZES

    net = _network(args.spec)
    source = "<lecture>" if args.spec is None else display_path(args.spec)
    limits.check_budget(limits.estimate_bytes(net, max(BATCH_SIZES), "verify"), args.memory_budget,
                        f"derive verify {source}")
    if args.modules:  # the checked-in files in DIR, not a fresh copy (derive.testing)
        from derive.testing.api import verify_module
        if args.spec is None:
            raise DeriveError("derive verify --modules DIR: expected a SPEC (the spec the files were generated from)")
        report = verify_module(args.spec, args.modules, args.seeds, args.seed)
    else:
        report = verify(net, source, seeds=args.seeds, seed=args.seed, progress=_progress)
    if args.format == "json":
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(format_table(report))
    return 0 if report.ok else 1


GENERATE_EXAMPLES = """examples:
  derive generate examples/mlp_softmax.toml -o out/     out/mlp_softmax_numpy.py, out/mlp_softmax_triton.py
  derive generate examples/lecture.toml -o out/ --target numpy
  derive generate --check                               generated/ matches examples/ (exit 1 if stale)
  derive generate --all                                 regenerate generated/"""

VERIFY_EXAMPLES = """examples:
  derive verify                                         the lecture's network
  derive verify examples/mlp_softmax.toml --seeds 5
  derive verify examples/lecture_convnet.toml --seed 1234 --format json
  derive verify big.toml --memory-budget 8G             allow a larger estimate than the default"""


def add_commands(sub) -> None:
    from derive.cli.options import HelpFormatter, add_limit_options

    gen = sub.add_parser("generate", help="emit NumPy, Triton and torch code for a spec",
                         description="Emit the NumPy reference module, the fused Triton kernel and the torch module for a spec.",
                         epilog=GENERATE_EXAMPLES, formatter_class=HelpFormatter)
    gen.add_argument("spec", nargs="?", help="network spec (TOML)")
    gen.add_argument("-o", "--out", help="directory to write into (required with SPEC)")
    gen.add_argument("--target", choices=("numpy", "triton", "torch", "all"), default="all",
                     help="which code to write (default all)")
    gen.add_argument("--check", action="store_true",
                     help="fail, naming stale files, if generated/ is out of date (default off)")
    gen.add_argument("--all", action="store_true",
                     help="regenerate generated/ from every spec in examples/ (default off)")
    gen.add_argument("--examples", default=EXAMPLES, help=f"specs for --check/--all (default {EXAMPLES})")
    gen.add_argument("--generated", default=GENERATED, help=f"their generated code (default {GENERATED})")
    add_limit_options(gen)
    gen.set_defaults(func=cmd_generate)

    ver = sub.add_parser("verify", help="check the generated code against torch.autograd and finite differences",
                         description="Check the generated code on fresh random inputs against torch.autograd,\n"
                                     "central finite differences and float64 references.",
                         epilog=VERIFY_EXAMPLES, formatter_class=HelpFormatter)
    ver.add_argument("spec", nargs="?", help="network spec (TOML); default: the lecture's network")
    ver.add_argument("--seeds", type=int, default=3, help="random draws per batch size (default 3)")
    ver.add_argument("--seed", type=int, help="base seed (default: fresh from the OS; printed to reproduce)")
    ver.add_argument("--format", choices=("text", "json"), default="text", help="report format (default text)")
    ver.add_argument("--modules", metavar="DIR",
                     help="check SPEC's checked-in files in DIR, freshness first (default: a fresh copy in a temp dir)")
    add_limit_options(ver, budget=True)
    ver.set_defaults(func=cmd_verify)

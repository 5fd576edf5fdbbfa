"""Check the generated modules a project has checked in, from its own tests.

    from derive.testing import assert_verified
    def test_lecture():
        assert_verified("specs/lecture.toml", "generated")

verify_module(spec, path) imports the files in ``path`` (the ones the project imports, not
a fresh copy), checks that regenerating gives the same bytes, and runs derive verify's
checks on them (derive.verify.checks.verify_modules).  A failure names the rows, the seed,
the first named quantity that disagrees with torch, and the one command that reproduces it.
"""

from __future__ import annotations

import difflib
import shlex
from dataclasses import replace
from pathlib import Path

from derive.errors import DeriveError
from derive.fsutil import display_path
from derive.targets import codegen
from derive.targets.modules import import_file, triton_device
from derive.verify.checks import GROUPS, Check, Report, verify_modules

CHECKS = ("fresh", *GROUPS)  # one pytest item each


def _rel(path: Path, root: Path) -> str:
    return display_path(str(path), root)


def module_files(net, directory: Path) -> dict[str, Path]:
    """{target: path} of the generated files of ``net`` that ``directory`` holds (numpy is required)."""
    files = {t: directory / f"{net.name}_{t}.py" for t in codegen.TARGETS}
    if not files["numpy"].is_file():
        raise DeriveError(f"{files['numpy']}: not found (expected the generated NumPy module of {net.name!r}; "
                          f"generate it with: derive generate SPEC -o {directory})")
    return {t: p for t, p in files.items() if p.is_file()}


def load_modules(files: dict[str, Path]) -> dict:
    """Import the checked-in files themselves (Triton's @jit reads the kernel source from them)."""
    if "triton" in files and triton_device() is None:
        files = {t: p for t, p in files.items() if t != "triton"}
    return {t: import_file(p, f"_derive_checked_{p.stem}") for t, p in files.items()}


def freshness(net, spec: Path, files: dict[str, Path], root: Path) -> tuple[list[Check], list[str]]:
    """One row per file: regenerating from the spec gives the same bytes; a note per stale file."""
    directory = next(iter(files.values())).parent
    fresh = codegen.generate(net, _rel(spec, root), tuple(files), _rel(directory, root))
    checks, notes = [], []
    for target, path in files.items():
        want = fresh[path.name]
        got = path.read_text(encoding="utf-8")
        ok = got == want
        checks.append(Check(path.name, "derive generate", "same bytes", 0.0 if ok else float("inf"), 0.0, ok))
        if not ok:
            line = next((n for n, (a, b) in enumerate(zip(got.splitlines(), want.splitlines()), 1) if a != b),
                        min(len(got.splitlines()), len(want.splitlines())) + 1)
            diff = [d for d in difflib.unified_diff(got.splitlines(), want.splitlines(), lineterm="", n=0)
                    if d[:1] in "+-" and d[:3] not in ("+++", "---")][:2]
            notes.append(f"stale: {_rel(path, root)} differs from a fresh `derive generate` from line {line}: "
                         + " / ".join(" ".join(d.split()) for d in diff))
    return checks, notes


def verify_module(spec, path, seeds: int = 1, seed: int | None = None, checks=CHECKS, root=None,
                  batch_sizes=None) -> Report:
    """derive verify's checks (``checks``: a subset of CHECKS) on the modules of ``spec`` in ``path``.

    ``path`` is the directory of the generated files (or one of them); ``root`` is the directory
    the files were generated from, whose relative paths their headers name (default: the
    current directory).
    """
    from derive.spec import load_spec

    spec, path = Path(spec), Path(path)
    root = Path.cwd() if root is None else Path(root)
    directory = path.parent if path.is_file() else path
    net = load_spec(spec)
    files = module_files(net, directory)
    kw = {} if batch_sizes is None else {"batch_sizes": batch_sizes}
    groups = tuple(c for c in checks if c in GROUPS)
    report = verify_modules(net, load_modules(files), seeds, seed, groups=groups, **kw) if groups \
        else Report(net.name, seed or 0)
    if "triton" not in files and "Triton checks: no Triton module" in report.skipped:
        reason = _triton_refusal(net)
        if reason:  # a graph network: say why there is none
            report.skipped = [f"Triton checks: {reason}" if m == "Triton checks: no Triton module" else m
                              for m in report.skipped]
    if "fresh" in checks:
        rows, notes = freshness(net, spec, files, root)
        report.checks = rows + report.checks
        report.notes = notes + report.notes
    return report


def _triton_refusal(net) -> str | None:
    from derive.derivation import derive
    from derive.ir.lowering import lower
    from derive.targets.triton import refusal

    return refusal(lower(derive(net)))


def reproduce_command(spec, path, report: Report, seeds: int = 1, root=None) -> str:
    root = Path.cwd() if root is None else Path(root)
    cmd = ["derive", "verify", _rel(Path(spec), root), "--modules", _rel(Path(path), root)]
    cmd += ["--seeds", str(seeds)] if seeds != 3 else []
    cmd += ["--seed", str(report.seed)]
    return " ".join(shlex.quote(c) for c in cmd)


def failure_text(spec, path, report: Report, seeds: int = 1, root=None) -> str:
    """The failing rows of the verify table, the first divergence, the seed and the command to rerun."""
    from derive.verify.table import format_table

    failing = replace(report, checks=[c for c in report.checks if not c.ok], skipped=[])
    return format_table(failing) + f"reproduce: {reproduce_command(spec, path, report, seeds, root)}\n"


def assert_verified(spec, path, seeds: int = 1, seed: int | None = None, checks=CHECKS, root=None) -> Report:
    """verify_module, raising AssertionError with the failure text when a check fails."""
    report = verify_module(spec, path, seeds, seed, checks, root)
    if not report.ok:
        raise AssertionError("\n" + failure_text(spec, path, report, seeds, root))
    return report

"""The pytest plugin: derive's checks on a project's checked-in generated modules.

    pytest --derive-specs 'specs/*.toml' --derive-generated generated

or, in pyproject.toml,

    [tool.pytest.ini_options]
    derive_specs = ["specs/*.toml"]
    derive_generated = "generated"

adds one test item per spec and check (derive.testing.api.CHECKS: fresh, numpy,
finite-differences, float32, triton), named ``SPEC::CHECK``.  Globs on the command line are
relative to the current directory, those in the configuration to the rootdir; the rootdir is
where the files were generated from.  All items share one seed, printed in the header.  The
items are added unless the run names test ids (``path::name``), so running one test stays quick.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest



def _api():
    from derive.testing import api  # not at import: the plugin is loaded by every pytest run

    return api


def pytest_addoption(parser):
    group = parser.getgroup("derive", "derive: verify generated backprop code")
    group.addoption("--derive-specs", action="append", metavar="GLOB",
                    help="network specs whose generated modules to check (repeatable; ini: derive_specs)")
    group.addoption("--derive-generated", metavar="DIR",
                    help="the directory of the checked-in generated modules (ini: derive_generated)")
    group.addoption("--derive-seed", type=int, metavar="N", help="base seed (default: fresh, printed in the header)")
    group.addoption("--derive-seeds", type=int, metavar="N", help="random draws per batch size (default 1)")
    parser.addini("derive_specs", type="args", help="derive: spec globs, relative to the rootdir")
    parser.addini("derive_generated", default="generated", help="derive: generated modules, relative to the rootdir")
    parser.addini("derive_seeds", default="1", help="derive: random draws per batch size")


class Settings:
    def __init__(self, config):
        here, root = Path(config.invocation_params.dir), Path(config.rootpath)
        cli, ini = config.getoption("derive_specs"), config.getini("derive_specs")
        globs, base = (cli, here) if cli else (ini, root)
        self.specs = sorted({Path(p).resolve() for g in globs for p in glob.glob(os.path.join(base, g))})
        if cli and not self.specs:
            raise pytest.UsageError(f"--derive-specs {' '.join(cli)}: no file matches")
        gen = config.getoption("derive_generated")
        self.generated = (here / gen) if gen else (root / config.getini("derive_generated"))
        self.root = root
        self.seeds = config.getoption("derive_seeds") or int(config.getini("derive_seeds"))
        seed = config.getoption("derive_seed")
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little")


def pytest_configure(config):
    config.addinivalue_line("markers", "derive: a derive check of a generated module (derive.testing.plugin)")
    config.stash[_KEY] = Settings(config)


_KEY = pytest.StashKey[Settings]()


def pytest_report_header(config):
    s = config.stash[_KEY]
    if s.specs:
        return (f"derive: {len(s.specs)} spec(s), modules in {_api()._rel(s.generated, s.root)}, "
                f"seed {s.seed} (rerun with --derive-seed {s.seed})")
    return None


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselect
def pytest_collection_modifyitems(session, config, items):
    s = config.stash[_KEY]
    if not s.specs or any("::" in str(a) for a in config.args):
        return
    for spec in s.specs:
        rep = config.hook.pytest_make_collect_report(collector=SpecFile.from_parent(session, path=spec))
        config.hook.pytest_collectreport(report=rep)  # counted in "collected N items"
        items.extend(rep.result)


class SpecFile(pytest.File):
    """One spec: its checked-in modules are imported once, by the first item that needs them."""

    def collect(self):
        for check in _api().CHECKS:
            item = CheckItem.from_parent(self, name=check)
            item.add_marker(pytest.mark.derive)  # -m "not derive" drops them all
            yield item

    def load(self, settings, imported: bool):
        """(net, {target: file}, {target: module} or None); the files are imported once."""
        if not hasattr(self, "files"):
            from derive.spec import load_spec

            self.net = load_spec(self.path)
            self.files = _api().module_files(self.net, settings.generated)
            self.mods = None
        if imported and self.mods is None:
            self.mods = _api().load_modules(self.files)
        return self.net, self.files, self.mods


class CheckFailed(Exception):
    pass


class CheckItem(pytest.Item):
    def runtest(self):
        s = self.config.stash[_KEY]
        net, files, mods = self.parent.load(s, imported=self.name != "fresh")
        if self.name == "fresh":  # reads the files only: a module that no longer imports is still found stale
            from derive.verify.checks import Report

            rows, notes = _api().freshness(net, self.path, files, s.root)
            report = Report(net.name, s.seed, rows, [], notes)
        else:
            from derive.verify.checks import verify_modules

            if self.name == "triton" and "triton" not in mods:
                pytest.skip(f"no Triton module of {net.name} in {_api()._rel(s.generated, s.root)} "
                            "(or triton is not installed)")
            report = verify_modules(net, mods, s.seeds, s.seed, groups=(self.name,))
            if not report.checks:
                pytest.skip("; ".join(report.skipped) or "no checks ran")
        if not report.ok:
            here = self.config.invocation_params.dir
            raise CheckFailed(_api().failure_text(self.path, s.generated, report, s.seeds, here))

    def repr_failure(self, excinfo):
        from derive.errors import DeriveError

        if isinstance(excinfo.value, (CheckFailed, DeriveError)):  # the report, or a one-line input error
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"derive {self.name}: {self.path.name}"

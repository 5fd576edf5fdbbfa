"""The pytest plugin and the API on a foreign project (examples/user_project, run in a temporary
copy by a pytest subprocess): as shipped it passes; with a planted bug in a checked-in module it
fails, naming the rows, the seed, the first divergence and the command that reproduces it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata

import pytest

from derive import load_spec
from derive.cli import main as cli_main
from derive.targets import codegen
from derive.testing import CHECKS, assert_verified, verify_module
from derive.verify.divergence import order

from helpers import ROOT

PROJECT = ROOT / "examples" / "user_project"
BUG = ("delta1 = dL_df1*(1 - f1**2)", "delta1 = dL_df1*(1 + f1**2)")  # tanh' with the wrong sign


@pytest.fixture
def project(tmp_path):
    dst = tmp_path / "user_project"
    shutil.copytree(PROJECT, dst, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    return dst


def _plant(project):
    path = project / "generated" / "tiny_mlp_numpy.py"
    text = path.read_text(encoding="utf-8")
    assert text.count(BUG[0]) == 1
    path.write_text(text.replace(*BUG), encoding="utf-8")


def _pytest(project, *args):
    installed = any(ep.name == "derive" for ep in metadata.entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", "derive.testing.plugin"]  # the entry point, when derive is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pytest", *plugin, "-p", "no:cacheprovider", "-rA", *args],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def test_the_entry_point_is_declared():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert meta["project"]["entry-points"]["pytest11"] == {"derive": "derive.testing.plugin"}
    import derive.testing.plugin as plugin

    assert callable(plugin.pytest_addoption) and callable(plugin.pytest_collection_modifyitems)


REGENERATE = ("derive generate --all --examples examples/user_project/specs "
              "--generated examples/user_project/generated")


def test_the_project_passes_as_shipped(project):
    code, out = _pytest(project, "--derive-seed", "0", "-v")
    assert code == 0, f"if only `fresh` fails, the generator changed: regenerate with {REGENERATE}\n{out}"
    for spec in ("tiny_conv", "tiny_mlp"):
        for check in CHECKS:
            assert re.search(rf"^specs/{spec}\.toml::{check} PASSED", out, re.M), (spec, check, out)
    assert f"{2 * len(CHECKS)} passed" in out and "derive: 2 spec(s), modules in generated, seed 0" in out


def test_the_project_fails_with_the_planted_bug(project, monkeypatch, capsys):
    _plant(project)
    code, out = _pytest(project, "--derive-seed", "0")
    assert code == 1, out
    failed = set(re.findall(r"^FAILED (specs/\S+)", out, re.M))
    # the stale file, and every row that sees ∂L/∂W1 and ∂L/∂b1 (Triton's rows compare against NumPy)
    assert {"specs/tiny_mlp.toml::fresh", "specs/tiny_mlp.toml::numpy",
            "specs/tiny_mlp.toml::finite-differences"} <= failed
    assert not any(f.startswith("specs/tiny_conv") for f in failed) and "specs/tiny_mlp.toml::float32" not in failed
    net = load_spec(project / "specs" / "tiny_mlp.toml")
    names = [q.name for q in order(net)]
    agree = ", ".join(names[:names.index("delta1")])
    line = re.search(r"^first divergence: delta1 = dL_df1 · df1/da1 \(df1/da1 = 1 - f1\[j\]\*\*2\) at layer 1: "
                     rf"rel err \S+ \({re.escape(agree)} agree\)$", out, re.M)
    assert line, out
    assert re.search(r"^numpy-f64\s+torch\.autograd-f64\s+grad W1\s+\S+\s+1e-10\s+FAIL$", out, re.M), out
    assert "derive verify tiny_mlp (seed 0)" in out
    assert "note: stale: generated/tiny_mlp_numpy.py differs from a fresh `derive generate` from line" in out
    command = "derive verify specs/tiny_mlp.toml --modules generated --seeds 1 --seed 0"
    assert f"reproduce: {command}" in out

    # the command reproduces it: the same divergence, from the same files
    monkeypatch.chdir(project)
    assert cli_main(command.split()[1:]) == 1
    assert line.group(0) in capsys.readouterr().out


def test_options_on_the_command_line(project):
    """--derive-specs / --derive-generated without any configuration; -k selects the checks."""
    (project / "pyproject.toml").write_text('[project]\nname = "bare"\nversion = "0"\n', encoding="utf-8")
    code, out = _pytest(project, "--derive-specs", "specs/tiny_conv.toml", "--derive-generated", "generated", "-k", "fresh",
                        "--derive-seed", "5")
    assert code == 0, out
    n = len(CHECKS)  # one item per check: fresh and every verify group
    assert f"collected {n} items / {n - 1} deselected / 1 selected" in out and "1 passed" in out
    code, out = _pytest(project, "--derive-specs", "specs/*.toml", "-m", "not derive")
    assert code == 5 and f"{2 * n} deselected" in out  # pytest's "no tests ran"
    code, out = _pytest(project, "--derive-specs", "nothing/*.toml")
    assert code == 4 and "--derive-specs nothing/*.toml: no file matches" in out


def test_the_api(project, monkeypatch):
    monkeypatch.chdir(project)
    report = verify_module("specs/tiny_conv.toml", "generated", seed=1)
    assert report.ok and {c.target for c in report.checks} >= {"tiny_conv_numpy.py", "numpy-f64"}
    assert verify_module("specs/tiny_mlp.toml", "generated/tiny_mlp_numpy.py", seed=1, checks=("fresh",)).ok
    _plant(project)
    fresh = verify_module("specs/tiny_mlp.toml", "generated", checks=("fresh",))
    # the planted NumPy file is stale, every other target's file is fresh
    assert [c.ok for c in fresh.checks] == [False] + [True] * (len(codegen.TARGETS) - 1) and fresh.divergence is None
    with pytest.raises(AssertionError) as err:
        assert_verified("specs/tiny_mlp.toml", "generated", seed=2, checks=("numpy",))
    text = str(err.value)
    assert "first divergence: delta1 = " in text and "reproduce: derive verify specs/tiny_mlp.toml" in text
    assert "--seed 2" in text


def test_a_missing_module_is_a_one_line_error(project, monkeypatch, capsys):
    (project / "generated" / "tiny_mlp_numpy.py").unlink()
    monkeypatch.chdir(project)
    assert cli_main(["verify", "specs/tiny_mlp.toml", "--modules", "generated"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "generated/tiny_mlp_numpy.py: not found" in err
    assert cli_main(["verify", "--modules", "generated"]) == 2
    assert "expected a SPEC" in capsys.readouterr().err

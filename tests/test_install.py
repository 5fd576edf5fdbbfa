"""The wheel: it carries the templates inside the package, and an installed copy (not the
source tree) finds them and generates the same code as the repository's generated/.

Builds with `pip wheel --no-build-isolation`, so the build backend (hatchling) must be
installed in the test environment; the test is skipped, saying so, where it is not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import ROOT

TEMPLATES = ("numpy_module.py.jinja", "triton_module.py.jinja", "explain_page.html.jinja")

PROBE = r"""
import json, sys
from pathlib import Path
import derive
from derive import load_spec
from derive.targets.codegen import generate, template_dir
files, skipped = {}, {}
for spec in sorted(Path("examples").glob("*.toml")):
    files.update(generate(load_spec(spec), spec.as_posix(), skipped=skipped))
print(json.dumps({"derive": derive.__file__, "template_dir": str(template_dir()), "files": files,
                  "skipped": skipped}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("hatchling", reason="hatchling (the build backend) is needed for --no-build-isolation")
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(ROOT)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(out.glob("derive-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow
def test_wheel_contains_the_templates(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for t in TEMPLATES:
            assert f"derive/templates/{t}" in names, sorted(names)
            assert zf.read(f"derive/templates/{t}") == (ROOT / "templates" / t).read_bytes()
        assert "derive/__init__.py" in names and "derive/targets/codegen.py" in names
        # the HTML page's vendored KaTeX (derive/draw/katex/): script, style, the 20 woff2 fonts, its licence
        katex = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "derive" / "draw" / "katex").rglob("*")
                       if p.is_file())
        assert len([k for k in katex if k.endswith(".woff2")]) == 20
        for k in katex:
            assert k in names and zf.read(k) == (ROOT / k).read_bytes(), k
        entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "derive = derive.cli:main" in zf.read(entry).decode()
    assert not any(n.startswith(("tests/", "generated/", "examples/")) for n in names)


@pytest.mark.slow
def test_installed_wheel_finds_its_templates_and_generates(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    work = tmp_path / "work"  # the working directory: the source tree is not importable from here
    shutil.copytree(ROOT / "examples", work / "examples")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    site = site.resolve()
    assert Path(out["derive"]).resolve().is_relative_to(site), out["derive"]
    assert Path(out["template_dir"]).resolve() == site / "derive" / "templates"
    # the installed package generates exactly the committed files
    committed = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "generated").glob("*.py")}
    assert out["files"] and set(out["files"]) <= set(committed)
    # what it skipped is exactly the Triton files missing from generated/: none
    assert set(out["skipped"]) == {n.replace("_numpy.py", "_triton.py") for n in committed
                                   if n.endswith("_numpy.py") and n.replace("_numpy.py", "_triton.py") not in committed}
    assert not out["skipped"]  # every example has all three targets
    for name, text in out["files"].items():
        assert text == committed[name], name


@pytest.mark.slow
def test_installed_wheel_provides_the_pytest_plugin(wheel, tmp_path):
    """The pytest11 entry point: with only the wheel on the path (no -p), pytest loads the plugin."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    project = tmp_path / "user_project"
    shutil.copytree(ROOT / "examples" / "user_project", project)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--derive-seed", "0", "-k", "fresh"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "derive: 2 spec(s)" in proc.stdout and "2 passed" in proc.stdout

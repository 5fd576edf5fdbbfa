"""The command line as a new user meets it: --version, help with defaults and examples, exit
codes, and a Python file passed where a spec is expected (never run)."""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import derive
from derive.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("explain", "generate", "verify", "train", "trace", "inspect", "draw")


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert capsys.readouterr().out == f"derive {pyproject['project']['version']}\n"
    assert derive.__version__ == pyproject["project"]["version"]


def test_every_subcommand_is_covered():
    assert set(subparsers()) == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_with_its_default(command):
    for action in subparsers()[command]._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        text = action.help or ""
        assert text, f"{command} {action.option_strings[0]} has no help"
        assert "default" in text or "required" in text, f"{command} {action.option_strings[0]}: {text!r}"
        if action.default not in (None, False, argparse.SUPPRESS):
            assert str(action.default) in text, f"{command} {action.option_strings[0]}: {text!r}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_examples_that_parse(command):
    """The epilog's example lines are real command lines: each parses with this parser."""
    epilog = subparsers()[command].epilog
    assert epilog.startswith("examples:\n")
    examples = [line.split("   ")[0].strip() for line in epilog.splitlines()[1:] if line.strip().startswith("derive ")]
    assert examples
    for line in examples:
        argv = shlex.split(line)[1:]
        args = build_parser().parse_args(argv)  # SystemExit would fail the test
        assert args.command == command


def test_main_help_lists_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    codes = out[out.index("exit codes:"):].splitlines()[1:]
    assert [line.split()[0] for line in codes if line[:4].strip().isdigit()] == ["0", "1", "2", "130"]
    for command in COMMANDS:
        assert command in out


def test_exit_codes_in_help_match_the_cli(tmp_path, capsys):
    """0 ok, 1 a check failed, 2 bad input: each code from a real run."""
    assert main(["explain"]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n', encoding="utf-8")
    assert main(["explain", str(bad)]) == 2
    stale = tmp_path / "generated"
    shutil.copytree(ROOT / "generated", stale)
    victim = next(stale.glob("*_numpy.py"))
    victim.write_text(victim.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
    assert main(["generate", "--check", "--examples", str(ROOT / "examples"), "--generated", str(stale)]) == 1


def test_a_python_file_is_not_run(tmp_path, capsys):
    marker = tmp_path / "ran"
    api = tmp_path / "api.py"
    api.write_text(f"open({str(marker)!r}, 'w').write('ran')\n", encoding="utf-8")
    for command in (["explain"], ["generate", "-o", str(tmp_path / "out")], ["verify"]):
        assert main([*command, str(api)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and "derive does not run Python files" in err[0] and "Python API" in err[0]
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_readme_says_python_means_the_api():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "a TOML spec or Python)" not in readme
    assert "a TOML spec or the Python API" in readme


def test_readme_iris_plot_goes_somewhere_git_ignores():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [ln for ln in readme.splitlines() if ln.startswith("derive train") and "--plot" in ln]
    assert lines
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a checkout")
    for line in lines:
        words = shlex.split(line.split("#")[0])
        for plot in (words[n + 1] for n, w in enumerate(words) if w in ("--plot", "--plot-path")):
            # check-ignore exits 0 when the path is ignored (it need not exist)
            assert subprocess.run([git, "check-ignore", "-q", plot], cwd=ROOT).returncode == 0, plot


def test_out_of_memory_is_one_line_in_a_subprocess(tmp_path):
    """The real exit code and stderr of a MemoryError (simulated: the budget cannot catch everything)."""
    code = ("import sys, derive.verify.checks as v\n"
            "def boom(*a, **k): raise MemoryError('Unable to allocate 19.0 GiB')\n"
            "v.verify = boom\n"
            "from derive.cli import main\n"
            "sys.exit(main(['verify']))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "derive: error: out of memory (Unable to allocate 19.0 GiB); try a smaller --batch or network, or free memory"]


def test_bootstrap_says_what_it_is_doing(tmp_path):
    """scripts/bootstrap on a fresh checkout prints one line per stage, and nothing once set up.
    The python it runs is a stand-in that records its arguments (no venv, no downloads)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "bootstrap", repo / "scripts" / "bootstrap")
    (repo / "pyproject.toml").write_text("", encoding="utf-8")
    log = tmp_path / "calls.log"
    fake = tmp_path / "python3"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {shlex.quote(str(log))}\n'
        'if [ "$1" = --version ]; then echo "Python 3.11.7"; fi\n'
        'if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; fi\n',
        encoding="utf-8")
    fake.chmod(0o755)
    run = lambda: subprocess.run(["bash", "scripts/bootstrap"], cwd=repo, capture_output=True, text=True,
                                 env={"PYTHON": str(fake), "PATH": "/usr/bin:/bin"})
    first = run()
    assert first.returncode == 0, first.stderr
    assert first.stderr.splitlines() == [
        "bootstrap: creating .venv with Python 3.11.7",
        "bootstrap: installing torch 2.13.0 (CPU build; a few minutes the first time)",
        "bootstrap: installing derive and its extras (gpu, test, train)",
        "bootstrap: ready: .venv",
    ]
    calls = log.read_text(encoding="utf-8").splitlines()
    assert calls[1] == "-m venv .venv"
    assert calls[2].endswith("install -q --disable-pip-version-check torch==2.13.0")
    assert calls[3].endswith("install -q --disable-pip-version-check -e .[gpu,test,train]")
    again = run()
    assert again.returncode == 0 and again.stderr == ""

"""Every generated file of every target reads like hand-written code: no line over 100 characters, pyflakes
clean, and no dead line in a Triton kernel.  The checked-in files (generated/, examples/user_project/generated/)
are what `derive generate --check` keeps equal to a fresh render, so linting them lints the generator."""

from __future__ import annotations

import ast
import re

import pytest

from helpers import ROOT

from derive.targets.wrap import wrap

FILES = sorted([*(ROOT / "generated").glob("*.py"), *(ROOT / "examples" / "user_project" / "generated").glob("*.py")])
WIDTH = 100


def _id(p):
    return f"{p.parent.parent.name}/{p.name}" if p.parent.parent != ROOT else p.name


def test_every_target_of_every_example_is_linted():
    names = {p.name for p in FILES}
    for target in ("numpy", "triton", "torch"):
        assert any(n.endswith(f"_{target}.py") for n in names), target
    assert len(FILES) >= 30


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_no_line_over_100_characters(path):
    """Counted in UTF-8 bytes, as byte-counting tools (awk, wc -L in the C locale) count them: the derivation's
    ∂, δ, Σ and σ take two or three each, so no line is over 100 characters either."""
    lines = path.read_text(encoding="utf-8").splitlines()
    long = [(i, len(ln.encode("utf-8"))) for i, ln in enumerate(lines, 1) if len(ln.encode("utf-8")) > WIDTH]
    assert not long, f"{path.name}: lines over {WIDTH} bytes (line, bytes): {long[:10]}"


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_pyflakes_clean(path):
    from pyflakes.api import check
    from pyflakes.reporter import Reporter
    import io

    out, err = io.StringIO(), io.StringIO()
    n = check(path.read_text(encoding="utf-8"), str(path), Reporter(out, err))
    assert n == 0 and not err.getvalue(), out.getvalue() + err.getvalue()


@pytest.mark.parametrize("path", [p for p in FILES if p.name.endswith("_triton.py")], ids=_id)
def test_no_dead_kernel_lines(path):
    """In every @triton.jit function, each local a line assigns is read by a later line (pyflakes does not
    see a load whose only reader is itself re-assigned, nor one read only by intermediates()' block)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)
               and any("jit" in ast.unparse(d) for d in n.decorator_list)):
        inter = [n for n in ast.walk(fn) if isinstance(n, ast.If) and ast.unparse(n.test) == "WITH_INTER"]
        in_inter = {id(x) for blk in inter for x in ast.walk(blk)}
        assigned = {t.id for n in ast.walk(fn) if isinstance(n, ast.Assign) for t in n.targets
                    if isinstance(t, ast.Name)}
        read = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
                and id(n) not in in_inter}
        params = {a.arg for a in fn.args.args}
        dead = sorted(assigned - read - params)
        assert not dead, f"{path.name}: {fn.name} assigns {dead} and no line outside intermediates() reads them"


def test_the_fold_keeps_the_code_and_is_idempotent():
    """wrap() only moves text between lines: the same AST, and folding its output changes nothing."""
    src = ("def f(a, b):\n    x = a + b*" + " + ".join(f"a*{i}" for i in range(40)) + "  # " + "word " * 30 + "\n"
           "    y = g(" + ", ".join(f'\"s{i}\"' for i in range(30)) + ")\n"
           "    z = f\"{a} " + "text " * 30 + "{b}\"  \n    return x, y, z\n")
    src = src.replace("y = g(", "y = (").replace('"  \n', '"\n')
    out = wrap(src)
    assert all(len(ln.encode("utf-8")) <= WIDTH for ln in out.splitlines()), out
    assert ast.dump(ast.parse(out)) == ast.dump(ast.parse(src))
    assert wrap(out) == out
    assert re.search(r"^    # word word", out, re.M)  # the long trailing comment moved above its line


def test_a_long_unpacking_folds_into_the_same_code():
    """A deep chain's `a1, f1, ..., f100 = _forward(params, x)`: no bracket in reach of column 100 on the
    left, so the targets are parenthesised (the fold once produced `= (_forward()` here, a SyntaxError)."""
    names = ", ".join(f"a{i}, f{i}" for i in range(1, 101))
    src = f"def forward(params, x):\n    {names} = _forward(params, x)\n    return f100\n"
    out = wrap(src)
    assert ast.dump(ast.parse(out)) == ast.dump(ast.parse(src))
    assert max(len(ln) for ln in out.splitlines()) <= 100


def test_a_long_comment_line_is_rewrapped_with_the_lines_that_continue_it():
    """A template comment whose first line runs past 100 columns once left a one-word line behind
    ("sums its\\n# gradients\\n# in its own row"); the fold now re-wraps the paragraph, and stops at a blank
    comment line or a list item."""
    first = "    # " + " ".join(f"w{i}" for i in range(30))  # about 130 columns
    src = ("def f():\n" + first + "\n    # tail of the same sentence\n    #\n    # - an item stays\n"
           "    return 1\n")
    out = wrap(src)
    lines = out.splitlines()
    assert all(len(ln) <= WIDTH for ln in lines), out
    para, rest = lines[1:-3], lines[-3:]
    assert " ".join(ln.strip()[2:] for ln in para) == " ".join(f"w{i}" for i in range(30)) + " tail of the same sentence"
    assert len(para) == 2 and len(para[0]) > WIDTH - 20, out  # two full lines, no one-word line between
    assert rest == ["    #", "    # - an item stays", "    return 1"], out
    assert wrap(out) == out


def test_folded_pieces_line_up_with_the_statements_own_continuation_lines():
    """A long first line of a statement whose later lines are aligned under its open bracket folds to that
    column too, a long line inside brackets keeps its column, and pieces of a split literal that end up on
    one line are one literal again (the torch modules once printed a three-column staircase here)."""
    msg = " ".join(f"w{i}" for i in range(24))
    src = ("def f(path, a, b):\n"
           f"    raise RuntimeError(f\"{{path}}: {msg} {{a}} \"\n"
           "                       f\"the rest {b}\")\n"
           "\n\ndef g():\n"
           "    raise ValueError(\n"
           f"        \"{msg} {msg}\"\n"
           "        \"tail\")\n")
    out = wrap(src)
    assert ast.dump(ast.parse(out)) == ast.dump(ast.parse(src))
    assert all(len(ln) <= WIDTH for ln in out.splitlines()), out
    lines = out.splitlines()
    first = next(i for i, ln in enumerate(lines) if "RuntimeError" in ln)
    cont = lines[first + 1:lines.index("", first)]
    assert {len(ln) - len(ln.lstrip()) for ln in cont} == {len("    raise RuntimeError(")}, out
    inner = lines[lines.index("    raise ValueError(") + 1:]
    assert {len(ln) - len(ln.lstrip()) for ln in inner} == {8}, out
    assert not any(re.search(r'" f?"', ln) for ln in lines), out
    assert wrap(out) == out


def test_lines_of_the_derivations_symbols_fold_to_100_bytes():
    """∂, δ and Σ take two or three bytes: a 96-character comment of them is over 100 bytes and is folded, and
    so is a code line whose trailing comment carries them (the comment goes above)."""
    comment = "    # " + " ".join(["∂L/∂W1 = Σ_b δ1ᵀ·x"] * 5)
    code = "    dL_dW1 = delta1  # " + " ".join(["δ1 = ∂L/∂a1"] * 6)
    assert len(comment) <= WIDTH < len(comment.encode("utf-8"))
    src = f"def f(delta1):\n{comment}\n{code}\n    return dL_dW1\n"
    out = wrap(src)
    assert ast.dump(ast.parse(out)) == ast.dump(ast.parse(src))
    assert all(len(ln.encode("utf-8")) <= WIDTH for ln in out.splitlines()), out
    assert "    dL_dW1 = delta1" in out.splitlines()
    assert wrap(out) == out

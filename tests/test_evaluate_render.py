"""`derive explain --at` in LaTeX and Markdown: rendered by the real tools, and every number read back out of the
math and compared with torch.autograd on the same sample (test_evaluate.py's independent torch rebuild).

* the lecture network's and mlp_softmax's documents compile with pdflatex (no error, no undefined control
  sequence), and so does the --fragment body inside a minimal document;
* every formula of the Markdown is found as math by markdown-it's dollarmath with allow_space=False;
* the value ending each row (a_l, f_l, L, ∂L/∂f_l, δ_l, each gradient) equals torch's to the 4 digits shown,
  in both formats.
"""

from __future__ import annotations

import re

import numpy as np
import sympy as sp
from test_evaluate import at, run
from test_explain_render import _parse_markdown, _walk, compile_tex

from derive.explain import at_sample
from derive.explain import latex as lx
from derive.explain.model import Partial
from derive.explain.notation import latex

LECTURE = (None, {"x": np.array(2.0), "y": np.array(1.9)}, 0)
MLP = ("examples/mlp_softmax.toml", {"x": np.array([0.5, -1.0, 2.0, 0.25]), "y": np.array(2.0)}, 3)


def _rendered(case):
    spec, sample, seed = case
    net, der, values, named = at(spec, sample, seed)
    values.params_from = f"drawn with seed {seed}"
    return der, values, named


def _read(tex: str):
    """The number (an array) or the smallmatrix's rows (lists) a row ends with, back as floats
    (1.2 \\cdot 10^{-5} included)."""
    tex = re.sub(r"([-0-9.]+) \\cdot 10\^\{(-?[0-9]+)\}", r"\1e\2", tex.strip())
    m = re.fullmatch(r"\\left\[\\begin\{smallmatrix\}(.*)\\end\{smallmatrix\}\\right\]", tex)
    if not m:
        return np.array(float(tex))
    return [[float(c) for c in r.split("&")] for r in m.group(1).split(r"\\")]


_NOTE = re.compile(r" \\quad \\text\{\((entries|columns) \d+ to \d+\)\}$")


def _final(rows: list[str], lhs: str):
    """The value of the last row for ``lhs`` (a δ row appears twice: its chain, then its result); a wide value
    sits on the lines below it, in blocks of entries or columns (at_sample.blocks), joined back here."""
    hits = [k for k, r in enumerate(rows) if r.startswith(lhs + " &= ")]
    assert hits, lhs
    k = hits[-1]
    below = []
    for r in rows[k + 1:]:
        if not r.startswith(("&= ", r"&\phantom{=} ")):
            break
        below.append(r)
    if not below:
        return _read(rows[k].rsplit(" = ", 1)[1])
    parts = [_read(_NOTE.sub("", r.split(" ", 1)[1])) for r in below]
    if len(parts) == 1:
        return parts[0]
    if len(parts[0]) == 1 and all(len(p) == 1 for p in parts) and "entries" in below[0]:
        return [sum((p[0] for p in parts), [])]  # a vector's blocks of entries
    return [sum(cols, []) for cols in zip(*parts)]  # a matrix's blocks of columns, side by side


def _close_shown(got, want):
    want = np.asarray(want, dtype=np.float64)
    if isinstance(got, list):  # a vector wraps after at_sample.ROW entries: read back row by row
        got = np.array(sum(got, [])) if want.ndim == 1 else np.array(got)
    assert np.shape(got) == want.shape, (np.shape(got), want.shape)
    np.testing.assert_allclose(got, want, rtol=6e-4, atol=1e-12)  # 4 significant digits


def _check_numbers(text: str, der, named):
    rows = [r.rstrip("\\").rstrip() for r in text.splitlines()]
    for d in der.forward:
        _close_shown(_final(rows, latex(d.lhs)), named[d.name].detach()[0])
    _close_shown(_final(rows, "L"), named["L"].detach())
    checked = 0
    for s in der.backward:
        if s.kind == "param":
            lhs, want = lx.math(Partial(None, sp.Symbol(s.param))), named[s.param].grad
        elif s.name.startswith("delta"):
            lhs, want = latex(s.lhs), named[f"a{s.layer}"].grad[0]
        else:
            lhs, want = latex(s.lhs), named[f"f{s.layer}"].grad[0]
        _close_shown(_final(rows, lhs), want)
        checked += 1
    assert checked == len(der.backward)


def test_lecture_latex_compiles_and_shows_torchs_numbers(tmp_path):
    der, values, named = _rendered(LECTURE)
    doc = at_sample.to_latex(der, values)
    assert doc.startswith(r"\documentclass") and doc.rstrip().endswith(r"\end{document}")
    compile_tex(doc, tmp_path, "lecture_at")
    _check_numbers(doc, der, named)
    # the numbers substituted, as the text has them: δ3 = -(y - f3)·f3·(1 - f3) = -(1.9 - f3)·f3·(1 - f3) = …
    f3 = at_sample.number(named["f3"].detach()[0])
    assert (r"- \left(1.9 - %s\right) \cdot %s \cdot \left(1 - %s\right) = %s"
            % (f3, f3, f3, at_sample.number(named["a3"].grad[0]))) in doc


def test_mlp_softmax_latex_and_fragment_compile_and_show_torchs_numbers(tmp_path):
    der, values, named = _rendered(MLP)
    doc = at_sample.to_latex(der, values)
    # held to the margin: a wide vector or matrix is set in blocks of 8 entries or columns below its formula
    compile_tex(doc, tmp_path, "mlp_at")
    _check_numbers(doc, der, named)
    body = at_sample.to_latex(der, values, fragment=True)
    assert r"\documentclass" not in body and r"\begin{align*}" in body
    wrap = "\\documentclass{article}\n\\usepackage{amsmath,amssymb}\n\\begin{document}\n%s\n\\end{document}\n"
    compile_tex(wrap % body, tmp_path, "mlp_fragment")


def _check_markdown(md: str):
    tokens = list(_walk(_parse_markdown(md)))
    blocks = [t for t in tokens if t.type == "math_block"]
    inline = [t for t in tokens if t.type == "math_inline"]
    assert len(blocks) == md.count("$$\n\\begin{aligned}") > 0
    text = "".join(t.content for t in tokens if t.type in ("text", "code_inline"))
    assert "$" not in text and "\\" not in text, text[:500]
    assert not [t for t in tokens if t.type in ("em_open", "strong_open")]
    assert inline and not [t.content for t in inline if t.content != t.content.strip()]
    return "\n".join(t.content for t in blocks)


def test_markdown_formulas_are_math_and_show_torchs_numbers():
    for case in (LECTURE, MLP):
        der, values, named = _rendered(case)
        math = _check_markdown(at_sample.to_markdown(der, values))
        _check_numbers(math, der, named)


def test_cli_latex_and_markdown_at(capsys, tmp_path):
    code, doc, err = run(["explain", "--at", "x=2", "y=1.9", "w1=0.5", "--format", "latex"], capsys)
    assert code == 0, err
    assert doc.startswith(r"\documentclass") and r"w_{1} &= 0.5" in doc
    code, body, err = run(["explain", "--at", "x=2", "y=1.9", "w1=0.5", "--format", "latex", "--fragment"], capsys)
    assert code == 0 and r"\documentclass" not in body and body.split("\n", 1)[1] in doc
    code, md, err = run(["explain", "--at", "x=2", "y=1.9", "--format", "markdown"], capsys)
    assert code == 0, err
    _check_markdown(md)
    assert md.startswith("# Backpropagation through `lecture` at one sample\n")


def test_conv_latex_compiles_with_and_without_full_and_shows_torchs_norms(tmp_path):
    x = np.random.default_rng(1).uniform(-1, 1, size=(3, 32, 32))
    der, values, named = _rendered(("examples/lecture_convnet.toml", {"x": x, "y": np.array(4.0)}, 0))
    doc = at_sample.to_latex(der, values)
    compile_tex(doc, tmp_path, "conv_at")
    norm = at_sample.number(np.linalg.norm(named["a1"].grad[0].numpy()))
    last = [r for r in doc.splitlines() if r.startswith(latex(der.step("delta1").lhs) + " &= ")][-1]
    big = at_sample.number(named["a1"].grad[0].abs().max())
    want = r"= \text{shape } 6 \times 28 \times 28,\ \lVert\cdot\rVert = %s,\ \max\lvert\cdot\rvert = %s" % (norm, big)
    assert last.rstrip(" \\").endswith(want), last
    # --full: every vector and matrix TeX can set in full (b1's 6 entries), the 10×4704 W3 still as its norm
    full = at_sample.to_latex(der, values, full=True)
    compile_tex(full, tmp_path, "conv_at_full", margins=False)
    b1 = [r for r in full.splitlines() if r.startswith("b_{1} &= ")][0]
    _close_shown(_read(b1.split(" &= ")[1].rstrip(" \\")), named["b1"].detach())
    assert r"W_{3} &= \text{shape } 10 \times 4704" in full

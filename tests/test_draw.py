"""derive draw and the HTML page without a browser: every example's graph, its structure, its numbers, its errors.

The graph is read back from the SVG dot wrote (node and edge ids), so what is checked is the picture, not the
records it came from.  Numbers on the nodes are checked against central differences of the lecture's loss
written out here by hand.  Needs Graphviz's dot (scripts/install-graphviz; scripts/test runs it).
"""

from __future__ import annotations

import html
import math
import re
import shutil
from pathlib import Path

import pytest

from derive.cli import main
from derive.derivation import derive
from derive.draw import dot, graph
from derive.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.toml"))  # every example, a new one included


@pytest.fixture(scope="module", autouse=True)
def _dot():
    if shutil.which("dot") is None:
        pytest.fail("Graphviz's dot not found: run scripts/install-graphviz (scripts/test does)")


def _svg(path: Path) -> str:
    return path.read_text(encoding="utf-8").replace("&#45;", "-")  # dot writes '-' in ids and classes as &#45;


def _ids(svg: str, cls: str) -> list[str]:
    return re.findall(r'<g id="([^"]+)" class="%s' % cls, svg)


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_is_drawn_with_every_quantity_and_partial(name, tmp_path):
    spec = ROOT / "examples" / f"{name}.toml"
    out = tmp_path / f"{name}.svg"
    assert main(["draw", str(spec), "-o", str(out)]) == 0
    svg = _svg(out)
    der = derive(load_spec(str(spec)))
    net = der.network
    nodes = set(_ids(svg, "node"))
    want = {graph.quantity_id(n) for n in [net.input.name, net.target.name, "L", *(p.name for p in net.params),
                                           *(d.name for d in der.forward)]}
    want |= {graph.grad_id(s.name) for s in der.backward}
    assert nodes == want
    # one forward edge per named input of each definition, one backward edge per Step a Step reads, one edge
    # per path into a sum over paths (the sum reads its terms), one dotted pair per gradient but a path's term:
    # counted from the records independently of graph.py
    steps = {s.name for s in der.backward}
    n_fwd = sum(len(_reads(d.rhs, {net.input.name, net.target.name, *(p.name for p in net.params),
                                   *(e.name for e in der.forward)}) - {d.name}) for d in (*der.forward, der.loss))
    n_bwd = sum(len(_reads(s.rhs, steps) - {s.name}) for s in der.backward if not s.terms)
    n_terms = sum(len(s.terms) for s in der.backward)
    edges = _ids(svg, "edge")
    assert sum(e.endswith("-forward") for e in edges) == n_fwd
    assert sum(e.endswith("-backward") for e in edges) == n_bwd
    assert sum(e.endswith("-path") for e in edges) == n_terms
    assert sum(e.endswith("-pair") for e in edges) == len(der.backward) - n_terms
    # every local partial a parameter's gradient uses labels the forward edge into its layer
    for s in der.gradients:
        f = s.factors[-1]
        assert f"factor-{f.numerator}--{f.denominator}" in svg
    # the delta of a layer read by more than one step is marked re-used
    for s in der.deltas:
        readers = sum(s.name in (t.terms or _reads(t.rhs, steps)) for t in der.backward)
        assert ("re-used by %d" % readers in _node_text(svg, graph.grad_id(s.name))) == (readers > 1)
    # the HTML page ties every partial and every δ of its formulas to the graph (none left untagged)
    from derive.draw.page import render

    texs = [html.unescape(t) for t in re.findall(r'data-tex="([^"]*)"', render(der))]
    untagged = [t[m.start():m.start() + 50] for t in texs
                for m in re.finditer(r"(\\htmlData\{[^}]*\}\{)?\\(frac\{\\partial |delta_\{)", t) if not m.group(1)]
    assert texs and untagged == []
    # deterministic: drawn again, byte for byte; no Graphviz version inside
    again = tmp_path / f"{name}-again.svg"
    assert main(["draw", str(spec), "-o", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()
    assert "graphviz version" not in svg


def _reads(expr, names) -> set[str]:
    import sympy as sp

    found = {str(a.base.label) for a in expr.atoms(sp.Indexed)} | {s.name for s in expr.free_symbols}
    return found & set(names)


def _node_text(svg: str, node_id: str) -> str:
    start = svg.index('<g id="%s"' % node_id)
    return svg[start:svg.index("</g>", start)]


def test_volume_layers_are_one_node_per_tensor_with_its_shape(tmp_path):
    out = tmp_path / "c.svg"
    assert main(["draw", str(ROOT / "examples" / "lecture_convnet_pool.toml"), "-o", str(out)]) == 0
    svg = _svg(out)
    assert ">6×28×28<" in _node_text(svg, graph.quantity_id("a1"))
    assert ">6×3×5×5<" in _node_text(svg, graph.quantity_id("W1"))
    assert ">6×28×28<" in _node_text(svg, graph.grad_id("delta1"))


def _lecture_loss(w1, b1, w2, w3, x, y):
    s = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    return 0.5 * (y - s(w3 * s(w2 * s(w1 * x + b1)))) ** 2


def test_lecture_numbers_on_the_nodes_match_central_differences(tmp_path):
    out = tmp_path / "l.svg"
    params = {"w1": 0.5, "b1": -0.25, "w2": 1.5, "w3": -0.75}
    at = ["x=2", "y=1.9"] + [f"{k}={v}" for k, v in params.items()]
    assert main(["draw", str(ROOT / "examples" / "lecture.toml"), "-o", str(out), "--at", *at]) == 0
    svg = _svg(out)
    h = 1e-6
    for name in params:
        up, down = dict(params), dict(params)
        up[name] += h
        down[name] -= h
        fd = (_lecture_loss(**up, x=2, y=1.9) - _lecture_loss(**down, x=2, y=1.9)) / (2 * h)
        shown = re.search(r">= (-?[0-9.e+-]+)<", _node_text(svg, graph.grad_id(f"dL_d{name}"))).group(1)
        assert float(shown) == pytest.approx(fd, rel=1e-3), name  # the node shows 4 significant digits
    loss = re.search(r">= (-?[0-9.e+-]+)<", _node_text(svg, graph.quantity_id("L"))).group(1)
    assert float(loss) == pytest.approx(_lecture_loss(**params, x=2, y=1.9), rel=1e-3)
    assert "∂a1/∂w1 = x" in svg  # the local partial on the forward edge w1 -> a1, and its value at x=2
    assert re.search(r"∂a1/∂w1 = x</text>\s*<text[^>]*>= 2</text>", svg)


def test_png_and_pdf_are_deterministic(tmp_path):
    for fmt in ("png", "pdf"):
        a, b = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
        assert main(["draw", "-o", str(a)]) == 0
        assert main(["draw", "-o", str(b)]) == 0
        assert a.read_bytes() == b.read_bytes(), fmt
        assert a.read_bytes()[:4] in (b"\x89PNG", b"%PDF")


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("derive: error: "), err
    return err


def test_bad_output_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    err = _error(capsys, ["draw", "-o", str(tmp_path / "g.jpg")])
    assert ".svg, .png or .pdf" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = _error(capsys, ["draw", "-o", str(blocker / "g.svg")])
    assert "cannot write" in err
    err = _error(capsys, ["draw", "-o", str(tmp_path)])
    assert "directory" in err
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    err = _error(capsys, ["draw", "-o", str(tmp_path / "g.svg")])
    assert "scripts/install-graphviz" in err and "apt-get install graphviz" in err
    err = _error(capsys, ["explain", "--format", "html"])
    assert "scripts/install-graphviz" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_params_without_at_is_refused(capsys, tmp_path):
    err = _error(capsys, ["draw", "-o", str(tmp_path / "g.svg"), "--seed", "1"])
    assert "--at" in err


def test_html_page_is_self_contained(capsys):
    assert main(["explain", str(ROOT / "examples" / "lecture.toml"), "--format", "html", "--at", "x=2", "y=1.9"]) == 0
    page = capsys.readouterr().out
    assert main(["explain", str(ROOT / "examples" / "lecture.toml"), "--format", "html", "--at", "x=2", "y=1.9"]) == 0
    assert capsys.readouterr().out == page  # deterministic, byte for byte
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched from a network
    assert "url(fonts/" not in page and page.count("data:font/woff2;base64,") == 20
    assert page.count("<svg class=\"graph\"") == 1 and 'id="g&#45;delta1"' in page
    for name in ("delta1", "delta2", "delta3", "dL_df3"):
        assert f"q={name}" in page  # the δ's of the formulas are tied to the graph
    assert "f=a3/f2" in page


def test_dot_source_has_forward_above_backward():
    der = derive(load_spec(str(ROOT / "examples" / "lecture.toml")))
    src = dot.source(graph.build(der))
    assert "newrank=true" in src and "rankdir=LR" in src
    assert '{rank=same; "q-a1"; "g-delta1"}' in src


CONCAT_MLP = """
name = "concat_mlp"
input = {name = "x", shape = [3]}
target = {name = "y", shape = [2]}
layers = [{type = "linear", out = 3, activation = "tanh"},
          {type = "linear", out = 2, activation = "sigmoid"},
          {type = "concat", inputs = ["f1", "f2"]},   # f1 feeds a2 and, through the concat, f3
          {type = "linear", out = 2}]
loss = {type = "l2"}
"""


def _residual_loss(p, x, y, into_a2, into_a3):
    """residual_mlp by hand, f1 given separately to each of its two consumers (a2 = W2·f1 + b2, a3 = f1 + f2)."""
    import numpy as np

    f1 = np.tanh(p["W1"] @ x + p["b1"])
    f2 = np.maximum(p["W2"] @ (f1 + into_a2) + p["b2"], 0.0)
    f4 = p["W4"] @ (f1 + into_a3 + f2) + p["b4"]
    return 0.5 * np.sum((y - f4) ** 2)


def _concat_loss(p, x, y, into_a2, into_f3):
    import numpy as np

    f1 = np.tanh(p["W1"] @ x + p["b1"])
    f2 = 1 / (1 + np.exp(-(p["W2"] @ (f1 + into_a2) + p["b2"])))
    f4 = p["W4"] @ np.concatenate([f1 + into_f3, f2]) + p["b4"]
    return 0.5 * np.sum((y - f4) ** 2)


def _numbers(svg: str, node_id: str) -> list[float]:
    return [float(v) for v in re.search(r">= \[([^\]]*)\]<", _node_text(svg, node_id)).group(1).split(", ")]


@pytest.mark.parametrize("case", ["residual_mlp", "concat"])
def test_a_quantity_with_two_consumers_shows_both_paths_and_the_sum(case, tmp_path):
    """f1 feeds two layers: the picture has one node per path's term, "∂L/∂f1 via a2 = δ2 · ∂a2/∂f1" with its
    numbers, an arrow from each into ∂L/∂f1 (boxed with them), and no arrow from a δ straight into the sum.  The
    numbers on each term are central differences of the loss with f1 nudged where that one consumer reads it;
    the sum's, with f1 nudged everywhere."""
    import json

    import numpy as np

    if case == "residual_mlp":
        spec, loss, (via_a, via_b) = ROOT / "examples" / "residual_mlp.toml", _residual_loss, ("a2", "a3")
        shapes = {"W1": (4, 3), "b1": (4,), "W2": (4, 4), "b2": (4,), "W4": (2, 4), "b4": (2,)}
        chains = {"a2": "δ2 · ∂a2/∂f1", "a3": "δ3 · ∂a3/∂f1"}
        feeds = {"a2": "g-delta2", "a3": "g-delta3"}
    else:
        spec, loss, (via_a, via_b) = tmp_path / "concat_mlp.toml", _concat_loss, ("a2", "f3")
        spec.write_text(CONCAT_MLP, encoding="utf-8")
        shapes = {"W1": (3, 3), "b1": (3,), "W2": (2, 3), "b2": (2,), "W4": (2, 5), "b4": (2,)}
        chains = {"a2": "δ2 · ∂a2/∂f1", "f3": "∂L/∂f3 · ∂f3/∂f1"}
        feeds = {"a2": "g-delta2", "f3": "g-dL_df3"}
    rng = np.random.default_rng(5)
    params = {k: np.round(rng.normal(size=v), 3) for k, v in shapes.items()}
    x, y = np.array([0.5, -1.0, 2.0]), np.array([1.0, -0.5])
    at = [f"x={json.dumps(x.tolist())}", f"y={json.dumps(y.tolist())}"]
    at += [f"{k}={json.dumps(v.tolist())}" for k, v in params.items()]
    out = tmp_path / "g.svg"
    assert main(["draw", str(spec), "-o", str(out), "--at", *at]) == 0
    svg = _svg(out)

    total, terms = "g-dL_df1", {via: graph.grad_id(f"dL_df1_via{via[1:]}") for via in (via_a, via_b)}
    for via, node in terms.items():
        text = _node_text(svg, node)
        assert f">∂L/∂f1 via {via}<" in text and f">= {chains[via]}<" in text
    assert f">f1 feeds {via_a} and {via_b}: sum over paths<" in _node_text(svg, total)
    assert ">∂L/∂f1: sum over 2 paths<" in svg  # the box around the sum and its terms
    arrows = [(kind, cls, tuple(html.unescape(t).split("->"))) for kind, cls, t in
              re.findall(r'<g id="e\d+-(backward|path)" class="([^"]*)">\s*<title>([^<]*)</title>', svg)]
    # each term flows into the sum (an arrow pointing up is written head first, with dir=back) ...
    assert sorted((set(ends), cls) for kind, cls, ends in arrows if kind == "path") == sorted(
        ({n, total}, f"edge edge-path paths-{total} path-{n}") for n in terms.values())
    # ... and each term is the δ (or ∂L/∂f3) of its consumer times a local partial; no δ skips the terms
    assert {ends for kind, _, ends in arrows if kind == "backward" and ends[1] in (total, *terms.values())} == {
        (feeds[via], node) for via, node in terms.items()}
    h, f1_size = 1e-6, shapes["W1"][0]
    for which, node in [((1, 0), terms[via_a]), ((0, 1), terms[via_b]), ((1, 1), total)]:
        fd = []
        for j in range(f1_size):
            e = np.zeros(f1_size)
            e[j] = h
            up = loss(params, x, y, which[0] * e, which[1] * e)
            down = loss(params, x, y, -which[0] * e, -which[1] * e)
            fd.append((up - down) / (2 * h))
        assert _numbers(svg, node) == pytest.approx(fd, rel=2e-3, abs=1e-6), node  # 4 significant digits shown
    assert abs(np.array(_numbers(svg, terms[via_a]))).max() > 1e-3 < abs(np.array(_numbers(svg, terms[via_b]))).max()


def test_resnet_block_sums_the_padded_path_and_the_skip(tmp_path):
    """A conv reads f1 through its zero-padded copy: that path's term goes via f1_pad, as the derivation has it."""
    out = tmp_path / "r.svg"
    assert main(["draw", str(ROOT / "examples" / "resnet_block.toml"), "-o", str(out)]) == 0
    svg = _svg(out)
    via_pad = _node_text(svg, graph.grad_id("dL_df1_via2"))
    assert ">∂L/∂f1 via f1_pad<" in via_pad and ">= ∂L/∂f1_pad · ∂f1_pad/∂f1<" in via_pad and ">2×6×6<" in via_pad
    assert ">= δ4 · ∂a4/∂f1<" in _node_text(svg, graph.grad_id("dL_df1_via4"))
    assert ">f1 feeds f1_pad and a4: sum over paths<" in _node_text(svg, "g-dL_df1")
    assert ">∂L/∂f1: sum over 2 paths<" in svg

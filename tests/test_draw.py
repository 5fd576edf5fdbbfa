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
EXAMPLES = ["lecture", "perceptron", "mlp_softmax", "hinge_classifier", "iris_mlp", "linear_regression",
            "lecture_convnet", "lecture_convnet_pool", "locally_connected"]


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
    # one forward edge per named input of each definition, one backward edge per Step a Step reads, one
    # dotted pair per gradient: counted from the records independently of graph.py
    steps = {s.name for s in der.backward}
    n_fwd = sum(len(_reads(d.rhs, {net.input.name, net.target.name, *(p.name for p in net.params),
                                   *(e.name for e in der.forward)}) - {d.name}) for d in (*der.forward, der.loss))
    n_bwd = sum(len(_reads(s.rhs, steps) - {s.name}) for s in der.backward)
    edges = _ids(svg, "edge")
    assert sum(e.endswith("-forward") for e in edges) == n_fwd
    assert sum(e.endswith("-backward") for e in edges) == n_bwd
    assert sum(e.endswith("-pair") for e in edges) == len(der.backward)
    # every local partial a parameter's gradient uses labels the forward edge into its layer
    for s in der.gradients:
        f = s.factors[-1]
        assert f"factor-{f.numerator}--{f.denominator}" in svg
    # the delta of a layer read by more than one step is marked re-used
    for s in der.deltas:
        readers = sum(s.name in _reads(t.rhs, steps) for t in der.backward)
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


def test_a_quantity_with_two_consumers_shows_both_paths_and_the_sum(tmp_path):
    """The drawing reads the records only: give the lecture a skip connection f1 -> a3 in its records (the shape
    a graph network's derivation has) and the graph grows the second forward edge, the second backward path into
    ∂L/∂f1 and says that ∂L/∂f1 sums two paths, with no code that knows about graphs."""
    import dataclasses

    import sympy as sp

    der = derive(load_spec(str(ROOT / "examples" / "lecture.toml")))
    f1, f2, w3, w2 = sp.symbols("f1 f2 w3 w2")
    delta2, delta3 = sp.symbols("delta2 delta3")
    forward = tuple(dataclasses.replace(d, rhs=f2 * w3 + f1) if d.name == "a3" else d for d in der.forward)
    backward = tuple(dataclasses.replace(s, rhs=delta2 * w2 + delta3) if s.name == "dL_df1" else s
                     for s in der.backward)
    g = graph.build(dataclasses.replace(der, forward=forward, backward=backward))
    fwd = {(e.tail, e.head) for e in g.edges if e.kind == "forward"}
    assert {("q-f1", "q-a2"), ("q-f1", "q-a3")} <= fwd
    bwd = {(e.tail, e.head) for e in g.edges if e.kind == "backward"}
    assert {("g-delta2", "g-dL_df1"), ("g-delta3", "g-dL_df1")} <= bwd
    node = g.node("g-dL_df1")
    assert node.paths == 2 and "g-dL_df1" in [graph.grad_id(u) for u in g.node("g-delta3").uses]
    svg = dot.render(dot.source(g), "svg").decode("utf-8").replace("&#45;", "-")
    assert "sum of 2 paths" in svg and "re-used by 3" in svg  # δ3 now read by ∂L/∂w3, ∂L/∂f2 and ∂L/∂f1

"""derive explain: one explainer for every layer kind, the text and JSON holes of issue 11, golden files.

The structural checks read the Document the explainer builds (the same one every format
renders): every index a printed factor uses is defined by its label, every free index of a
chain is summed or belongs to the left-hand side.  The JSON check reads the JSON alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sympy as sp

from derive import derive, explain, load_spec
from derive.cli import main as cli_main
from derive.explain import model
from derive.explain.text import render as render_text

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.toml")) + sorted((ROOT / "tests" / "specs").glob("*.toml"))
GOLDEN = ROOT / "tests" / "golden"

PRELU = ('name = "parametric"\n\n[input]\nshape = [2]\n\n[target]\nshape = [2]\n\n'
         '[[layers]]\ntype = "linear"\nout = 3\nactivation = "prelu"\nslope = "a_neg"\n\n'
         '[[layers]]\ntype = "linear"\nout = 2\nactivation = "leaky_relu"\nslope = 0.1\n\n[loss]\ntype = "l1"\n\n'
         '[optimizer]\ntype = "adam"\nschedule = "inv_sqrt"\n')
SCALAR_PRELU = ('name = "scalar_prelu"\n\n[[layers]]\ntype = "linear"\nactivation = "prelu"\n\n'
                '[[layers]]\ntype = "linear"\nactivation = "softplus"\n\n[loss]\ntype = "binary_cross_entropy"\n\n'
                '[optimizer]\ntype = "adadelta"\n')


def specs(tmp_path) -> list[Path]:
    (tmp_path / "parametric.toml").write_text(PRELU)
    (tmp_path / "scalar_prelu.toml").write_text(SCALAR_PRELU)
    return EXAMPLES + [tmp_path / "parametric.toml", tmp_path / "scalar_prelu.toml"]


def _cli(capsys, *argv) -> str:
    rc = cli_main(["explain", *map(str, argv)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


# =========================================================================== golden files

GOLDEN_FILES = {"lecture.txt": "text", "lecture.tex": "latex", "lecture.md": "markdown"}


@pytest.mark.parametrize("name", sorted(GOLDEN_FILES))
def test_lecture_golden(name, capsys):
    fmt = GOLDEN_FILES[name]
    got = _cli(capsys, ROOT / "examples" / "lecture.toml", "--format", fmt)
    want = (GOLDEN / name).read_text(encoding="utf-8")
    assert got == want, (f"tests/golden/{name} is stale; if the change is intended, regenerate it with\n"
                         f"  derive explain examples/lecture.toml --format {fmt} > tests/golden/{name}")


# =========================================================================== structure (all kinds)


def _indices(e) -> set:
    if e is None or not isinstance(e, sp.Basic):
        return set()
    out = set()
    for a in e.atoms(sp.Indexed):
        for i in a.indices:
            out |= {s for s in i.free_symbols if s.is_integer}
    for d in e.atoms(sp.KroneckerDelta):
        out |= {s for s in d.free_symbols if s.is_integer}
    for f in e.atoms(sp.Function):
        if type(f).__name__ == "InRange":
            out |= {s for s in f.free_symbols if s.is_integer}
    return out


def _label_indices(p: model.Partial) -> set:
    return _indices(p.top) | _indices(p.bottom)


def test_every_printed_index_is_defined(tmp_path):
    """No free index without its Σ or its place on the left (∂a3/∂W3 = f2[k]·[i = j] names i in its label)."""
    for path in specs(tmp_path):
        der = derive(load_spec(path))
        target = sp.Symbol(der.network.target.name, integer=True)
        doc = model.build(der)
        for sec in doc.sections:
            lhs = None
            for item in sec.items:
                if isinstance(item, model.Eq):
                    lhs = item.lhs
                    chains = [r for r in item.rhs if isinstance(r, model.Chain)]
                elif isinstance(item, model.Cont) and isinstance(item.rhs, model.Chain):
                    chains = [item.rhs]
                else:
                    chains = []
                for ch in chains:
                    used = set().union(*(_label_indices(f) for f in ch.factors if f != model.ELLIPSIS))
                    assert used <= _indices(lhs) | set(ch.over), (path.name, sec.key, lhs, used)
                if isinstance(item, model.FactorLine) and item.value is not None:
                    free = _indices(item.value) - {target}
                    assert free <= _label_indices(item.label), (path.name, item.label, item.value)


def test_one_explainer_for_a_convnets_linear_layer(capsys):
    """A convnet's linear layer reads exactly like an MLP's (one explainer, one form)."""
    conv = _cli(capsys, ROOT / "examples" / "lecture_convnet.toml")
    mlp = _cli(capsys, ROOT / "examples" / "mlp_softmax.toml")
    for text in (conv, mlp):
        assert "              = Σ_i δ3[i] · ∂a3[i]/∂W3[j, k]      (δ3 re-used)\n" in text
        assert "      ∂a3[i]/∂W3[j, k] = f2[k]·[i = j]\n" in text
        assert "    matrix form: ∂L/∂W3 = δ3 · f2ᵀ" in text
    # the step through the flatten layer, its flat index n summed and defined
    assert "  ∂L/∂f1[c, h, w] = Σ_n ∂L/∂f2[n] · ∂f2[n]/∂f1[c, h, w]\n" in conv
    assert "      ∂f2[n]/∂f1[c, h, w] = [n = 784·c + 28·h + w]\n" in conv
    assert "    ∂L/∂f1[c, h, w] = ∂L/∂f2[784·c + 28·h + w]\n" in conv
    # every gradient shows its textbook chain, through the flatten layer too
    assert "∂L/∂W1[o, c, p, q] = ∂L/∂f3 · ∂f3/∂a3 · ∂a3/∂f2 · ∂f2/∂f1 · ∂f1/∂a1 · ∂a1/∂W1\n" in conv


def test_text_fixes_of_issue_11(capsys, tmp_path):
    mlp = _cli(capsys, ROOT / "examples" / "mlp_softmax.toml")
    # a vector δ: the element on the left, the sum written
    assert "  δ2[j] = ∂L/∂a2[j] = Σ_i δ3[i] · ∂a3[i]/∂f2[j] · ∂f2[j]/∂a2[j]\n" in mlp
    assert "  δ3[j] = ∂L/∂a3[j] = ∂L/∂f3[j] · ∂f3[j]/∂a3[j]\n" in mlp
    # chain order in the product: the contraction first, then f′(a)
    assert "    δ2[j] = (Σ_i δ3[i]·W3[i, j])·(1 − f2[j]²)\n" in mlp
    lecture = _cli(capsys, ROOT / "examples" / "lecture.toml")
    assert "  L = ½(y − ŷ)²\n" in lecture  # a scalar target: the lecture's form
    assert "  w1 ← w1 − η_t·∂L/∂w1\n" in lecture  # θ ← θ − η ∂L/∂θ
    vector_l2 = tmp_path / "vec.toml"
    vector_l2.write_text('name = "vec"\n\n[input]\nshape = [2]\n\n[target]\nshape = [2]\n\n'
                         '[[layers]]\ntype = "linear"\nout = 2\n')
    assert "  L = ½‖y − ŷ‖²\n" in _cli(capsys, vector_l2)
    # one minus sign: no ASCII minus in any formula of any example
    ascii_minus = re.compile(r"(?<![A-Za-z0-9])-(?=[\s(0-9A-Za-z\[])|(?<=[\s)\]])-")
    for path in specs(tmp_path):
        text = _cli(capsys, path)
        for line in text.splitlines():
            body = re.sub(r"re-used|log-sum-exp|L-BFGS-B?|zero-one|two-loop|\d+e-\d+|np\.\w+\(.*|->", "", line)
            assert not ascii_minus.search(body), (path.name, line)


def test_prelu_gradient_reuses_a_printed_upstream(capsys, tmp_path):
    """∂L/∂a_neg re-uses ∂L/∂f1 of a hidden layer: the text prints it, the JSON defines it."""
    (tmp_path / "p.toml").write_text(PRELU)
    text = _cli(capsys, tmp_path / "p.toml")
    backward = text.split("Backward pass", 1)[1].split("Gradients", 1)[0]
    assert "  ∂L/∂f1[j] = Σ_i δ2[i] · ∂a2[i]/∂f1[j]\n" in backward
    assert "= Σ_j ∂L/∂f1[j] · ∂f1[j]/∂a_neg" in text


# =========================================================================== JSON: self-contained

_FUNCTIONS = {"Sum", "KroneckerDelta", "Min", "Max", "sign", "Abs", "exp", "log", "tanh", "sqrt", "sigmoid",
              "relu", "step", "softplus", "leaky_relu", "softmax", "logsumexp", "Heaviside", "InRange",
              "WindowMax", "IsArgmax"}
_INDEX = re.compile(r"([oijkcpqhwn]|i\d+)'*\Z")


def _used_names(expr: str) -> set[str]:
    names = set()
    for m in re.finditer(r"[A-Za-z_][A-Za-z0-9_]*'*", expr):
        name = m.group(0)
        following = expr[m.end():m.end() + 1]
        if following == "(" and name in _FUNCTIONS:
            continue
        if _INDEX.match(name):
            continue
        names.add(name)
    return names


def test_json_is_self_contained(capsys, tmp_path):
    for path in specs(tmp_path):
        data = json.loads(_cli(capsys, path, "--format", "json"))
        defined = {data["input"]["name"], data["target"]["name"], data["loss"]["gradient"]["name"]} \
            if "input" in data else {data["loss"]["gradient"]["name"], "x", "y"}
        defined |= {p["name"] for p in data["parameters"]}
        defined |= {d["name"] for d in data["forward"]}
        defined |= {d["name"] for d in data["deltas"]}
        defined |= {u["name"] for u in data.get("upstream", [])}
        exprs = [data["loss"]["expression"], data["loss"]["gradient"]["expression"]]
        exprs += [d["expression"] for d in data["forward"] + data["deltas"] + data.get("upstream", [])]
        for p in data["parameters"]:
            exprs += [p["gradient"], *p["factors"]]
        for e in exprs:
            missing = _used_names(e) - defined
            assert not missing, (path.name, e, missing)


# =========================================================================== notebooks and the API


def test_explain_api_has_the_notebook_reprs():
    ex = explain(ROOT / "examples" / "lecture.toml")
    assert ex._repr_markdown_() == ex.markdown() and "$$" in ex.markdown()
    assert ex._repr_latex_().startswith("$$") and r"\delta_{3} \, w_{3} \, f_{2}" in ex._repr_latex_()
    assert str(ex) == ex.text() and ex.text().startswith("Network lecture:")
    assert explain().derivation.network.name == "lecture"  # no spec: the lecture's network
    assert explain(ex.derivation.network, param="w3").json()["parameters"][0]["name"] == "w3"


def test_explain_text_is_linear_in_depth(tmp_path):
    """The document keeps chains memoised (length, head, tail): its size per layer stays constant."""
    sizes = {}
    for depth in (40, 80):
        body = 'name = "chain"\n' + '\n[[layers]]\ntype = "linear"\nbias = false\nactivation = "sigmoid"\n' * depth
        path = tmp_path / f"chain{depth}.toml"
        path.write_text(body)
        sizes[depth] = len(render_text(model.build(derive(load_spec(path)))))
    assert sizes[80] / sizes[40] < 2.2, sizes

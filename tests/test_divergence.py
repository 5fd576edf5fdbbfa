"""The first divergence: the torch rebuild of the named intermediates (derive.verify.named)
agrees with every example's generated intermediates() in the derivation's order; a wrong line
is named with its rule and the agreeing quantities before it, by `derive verify` too."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import derive.verify.checks as dv
from derive import load_spec
from derive.cli import main as cli_main
from derive.targets import codegen
from derive.targets.modules import generated_modules
from derive.verify.divergence import first_divergence, order
from derive.verify.named import named_quantities
from derive.verify import reference

from helpers import EXAMPLES, ROOT

IDS = [p.stem for p in EXAMPLES]


def _torch_inputs(net, params, x, y):
    tp = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    ty = torch.tensor(y, dtype=torch.long if net.loss.type == "cross_entropy" else torch.float64)
    return tp, torch.tensor(x, dtype=torch.float64), ty


@pytest.mark.parametrize("spec", EXAMPLES, ids=IDS)
def test_every_named_quantity_agrees_with_torch(spec):
    net = load_spec(spec)
    with generated_modules(net, "x", ("numpy",)) as mods:
        params, x, y, _ = dv.draw(net, mods["numpy"], 0, 0, 4)
        got = mods["numpy"].intermediates(params, x, y)
        assert list(got) == [q.name for q in order(net)]  # the module computes them in the derivation's order
        assert first_divergence(net, mods, params, x, y) is None
        want = named_quantities(net, *_torch_inputs(net, params, x, y))
    assert set(want) == set(got)
    # the rebuild's parameter gradients are the reference verify uses
    _, grads, _ = reference.loss_and_grads(net, *_torch_inputs(net, params, x, y))
    for name, g in grads.items():
        assert torch.allclose(want[f"dL_d{name}"], g, rtol=1e-12, atol=1e-15), name


def test_reference_deltas_by_finite_differences():
    """δ1 = ∂L/∂a1 of the rebuild, against central differences of L in a1 (the lecture's chain)."""
    net = load_spec(ROOT / "examples" / "lecture.toml")
    rng = np.random.default_rng(3)
    p = {k: torch.tensor(rng.standard_normal(), dtype=torch.float64) for k in ("w1", "b1", "w2", "w3")}
    x, y = torch.tensor(rng.standard_normal(5)), torch.tensor(rng.standard_normal(5))
    q = named_quantities(net, p, x, y)

    def loss_from_a1(a1):
        f3 = torch.sigmoid(p["w3"] * torch.sigmoid(p["w2"] * torch.sigmoid(a1)))
        return (0.5 * (y - f3) ** 2).mean()

    h = 1e-6
    for b in range(5):
        e = torch.zeros(5, dtype=torch.float64)
        e[b] = h
        fd = (loss_from_a1(q["a1"] + e) - loss_from_a1(q["a1"] - e)) / (2 * h)
        assert abs(float(fd) - float(q["delta1"][b])) <= 1e-8 * max(1.0, abs(float(fd)))


def _mutate_numpy(monkeypatch, old, new):
    real = codegen.RENDERERS["numpy"]

    def wrong(ir, out_dir="generated"):
        text = real(ir, out_dir)
        assert text.count(old) == 1
        return text.replace(old, new)

    monkeypatch.setitem(codegen.RENDERERS, "numpy", wrong)


def test_derive_verify_prints_the_first_divergence(monkeypatch, capsys):
    net = load_spec(ROOT / "examples" / "lecture.toml")
    _mutate_numpy(monkeypatch, "delta2 = dL_df2*f2*(1 - f2)", "delta2 = dL_df2*f2*(1 + f2)")
    monkeypatch.setattr(dv, "triton_device", lambda: None)  # the NumPy rows suffice here
    monkeypatch.chdir(ROOT)
    assert cli_main(["verify", "examples/lecture.toml", "--seeds", "1", "--seed", "0"]) == 1
    text = capsys.readouterr().out
    names = [q.name for q in order(net)]
    agree = ", ".join(names[:names.index("delta2")])
    m = re.search(r"^first divergence: delta2 = dL_df2 · df2/da2 \(df2/da2 = (.*)\) at layer 2: rel err (\S+) "
                  r"\((.*) agree\)$", text, re.M)
    assert m, text
    assert m.group(1) == "f2*(1 - f2)"  # the derivation's rule, not the edited line
    assert float(m.group(2)) > 1e-10 and m.group(3) == agree
    assert text.index("first divergence") < text.index("check(s) FAILED")

    assert cli_main(["verify", "examples/lecture.toml", "--seeds", "1", "--seed", "0", "--format", "json"]) == 1
    out = json.loads(capsys.readouterr().out)
    d = out["first_divergence"]
    assert d["quantity"] == "delta2" and d["layer"] == 2 and d["agree"] == names[:names.index("delta2")]
    assert d["seed"] == 0 and d["line"] in text


def test_a_passing_verify_has_no_divergence_line(monkeypatch, capsys):
    monkeypatch.setattr(dv, "triton_device", lambda: None)
    monkeypatch.chdir(ROOT)
    assert cli_main(["verify", "examples/perceptron.toml", "--seeds", "1", "--seed", "0"]) == 0
    assert "first divergence" not in capsys.readouterr().out
    report = dv.verify(load_spec(ROOT / "examples" / "perceptron.toml"), "x", seeds=1, seed=0)
    assert report.ok and report.divergence is None and "first_divergence" not in report.to_dict()


def test_a_missing_intermediate_is_the_divergence(monkeypatch):
    """A module whose intermediates() leaves a quantity out: that quantity is named, not skipped."""
    net = load_spec(ROOT / "examples" / "iris_mlp.toml")
    _mutate_numpy(monkeypatch, '        "delta1": delta1,\n', "")
    with generated_modules(net, "x", ("numpy",)) as mods:
        params, x, y, _ = dv.draw(net, mods["numpy"], 0, 0, 3)
        d = first_divergence(net, mods, params, x, y)
    assert d.quantity == "delta1" and "missing" in d.rule and d.rel_err == float("inf")


def test_a_module_without_intermediates_says_so(monkeypatch):
    net = load_spec(ROOT / "examples" / "lecture.toml")
    _mutate_numpy(monkeypatch, "def intermediates(", "def _intermediates(")
    _mutate_numpy(monkeypatch, "_q = intermediates(", "_q = _intermediates(")
    with generated_modules(net, "x", ("numpy",)) as mods:
        params, x, y, _ = dv.draw(net, mods["numpy"], 0, 0, 3)
        d = first_divergence(net, mods, params, x, y)
    assert "no intermediates()" in d.line()


def test_a_parameterless_first_layer(tmp_path):
    """flatten first: no parameter lies below f1 = flatten(x), so the derivation names no ∂L/∂f1 (as it
    names no ∂L/∂x); the torch rebuild may hold more quantities, and the report compares those named."""
    spec = tmp_path / "flat_first.toml"
    spec.write_text('name = "flat_first"\n[input]\nname = "x"\nshape = [2, 3, 3]\n[target]\nname = "y"\nshape = []\n'
                    '[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "linear"\nout = 3\n'
                    '[loss]\ntype = "cross_entropy"\n', encoding="utf-8")
    net = load_spec(spec)
    named = [q.name for q in order(net)]
    assert "dL_df1" not in named and {"f1", "dL_df2", "dL_dW2"} <= set(named)
    with generated_modules(net, "x", ("numpy",)) as mods:
        params, x, y, _ = dv.draw(net, mods["numpy"], 0, 0, 3)
        assert first_divergence(net, mods, params, x, y) is None
        want = named_quantities(net, *_torch_inputs(net, params, x, y))
        assert set(named) <= set(want) and float(want["dL_dW2"].abs().max()) > 0


def test_a_triton_module_with_intermediates_is_compared_quantity_by_quantity():
    """Where a Triton module has intermediates() (torch tensors, float32), its first wrong one is named."""
    net = load_spec(ROOT / "examples" / "iris_mlp.toml")
    with generated_modules(net, "x", ("numpy",)) as mods:
        npm = mods["numpy"]

        class FakeTriton:  # the NumPy module's float32 run, with δ1 off by 1%, handed over as tensors
            @staticmethod
            def intermediates(tp, tx, ty):
                p32 = {k: v.numpy() for k, v in tp.items()}
                q = npm.intermediates(p32, tx.numpy(), ty.numpy().astype(np.int64))
                q["delta1"] = q["delta1"] * 1.01
                return {k: torch.from_numpy(np.asarray(v)) for k, v in q.items()}

        params, x, y, _ = dv.draw(net, npm, 0, 0, 5)
        d = first_divergence(net, {"numpy": npm, "triton": FakeTriton}, params, x, y, "cpu")
    assert d.target == "triton" and d.quantity == "delta1" and d.tolerance == dv.TOL_F32
    assert d.rel_err == pytest.approx(0.01, rel=1e-2) and "no intermediates" not in d.line()
    assert d.line().startswith("first divergence: triton delta1 = dL_df1")


def test_a_wrong_path_term_of_a_graph_is_the_divergence(monkeypatch):
    """residual_mlp: one path's term of ∂L/∂f1 off by 1% is named, before the sum and δ1 that read it."""
    net = load_spec(ROOT / "examples" / "residual_mlp.toml")
    _mutate_numpy(monkeypatch, "    dL_df1_via3 = delta3  #", "    dL_df1_via3 = 1.01*delta3  #")
    with generated_modules(net, "x", ("numpy",)) as mods:
        params, x, y, _ = dv.draw(net, mods["numpy"], 0, 0, 3)
        d = first_divergence(net, mods, params, x, y)
    assert d.quantity == "dL_df1_via3" and d.layer == 1 and "delta3" in d.agree and "dL_df1" not in d.agree
    assert d.rule.startswith("dL_df1_via3 = delta3 · da3/df1")

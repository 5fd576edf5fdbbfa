"""`derive explain --at`: every number beside its symbol, checked against torch.autograd on the same sample.

The torch side is rebuilt here from the Network's layers with derive.verify.reference's layer and activation
spellings (never from the derivation or the generated code); each named tensor keeps its gradient, so
∂L/∂f_l, δ_l = ∂L/∂a_l and every parameter gradient come from autograd, and each chain-rule factor
∂N/∂D is torch's own local partial of N with respect to D.
"""

from __future__ import annotations

import json
from pathlib import Path

import re

import numpy as np
import pytest
import torch

from derive import evaluate as ev
from derive.cli import main
from derive.derivation import derive
from derive.spec import load_spec
from derive.targets.modules import generated_modules
from derive.verify import reference

ROOT = Path(__file__).resolve().parents[1]


def torch_named(net, params, sample):
    """{name: tensor} for x, the parameters, every a_l / f_l and L, with their .grad after backward()."""
    p = {k: torch.tensor(np.asarray(v), dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    x = torch.tensor(np.asarray(sample[net.input.name]), dtype=torch.float64)[None]
    yv = np.asarray(sample[net.target.name])
    y = torch.tensor(yv, dtype=torch.int64 if net.loss.type == "cross_entropy" else torch.float64)[None]
    named = dict(p)
    named[net.input.name] = x
    h = x
    for li in net.info:
        h = reference.LAYERS[li.kind](li, p, h)
        if li.bias:
            h = h + (p[li.bias][:, None, None] if li.kind == "conv2d" else p[li.bias])
        if li.activation is not None:
            h.retain_grad()
            named[f"a{li.index}"] = h
            h = reference.ACTIVATIONS[li.activation](h, li.slope_value)
        h.retain_grad()
        named[f"f{li.index}"] = h
    yhat = h[:, 0] if net.output_shape == (1,) and net.target.shape == () else h
    L = reference.per_sample_loss(net, yhat, y).mean()
    named["L"] = L
    L.backward(retain_graph=True)
    return named


def at(spec, sample, seed=0):
    net = load_spec(str(ROOT / spec)) if spec else None
    if net is None:
        from derive.builtin import lecture_network

        net = lecture_network()
    der = derive(net)
    with generated_modules(net, "test", ("numpy",)) as mods:
        params = mods["numpy"].init_params(seed)
        values = ev.evaluate(der, sample, params, mods["numpy"])
    return net, der, values, torch_named(net, params, sample)


def close(a, b, tol=1e-10):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def check_against_torch(net, der, values, named):
    for d in der.forward:  # a_l, f_l
        close(values.get(d.name), named[d.name].detach()[0])
    close(values.get("L"), named["L"].detach())
    for s in der.backward:
        if s.kind == "param":
            close(values.get(s.name), named[s.param].grad)
        elif s.name.startswith("delta"):
            close(values.get(s.name), named[f"a{s.layer}"].grad[0])
        elif s.name.startswith("dL_df"):
            close(values.get(s.name), named[f"f{s.layer}"].grad[0])


def test_lecture_numbers_match_torch_and_every_factor_is_torchs_local_partial():
    net, der, values, named = at(None, {"x": np.array(2.0), "y": np.array(1.9)})
    check_against_torch(net, der, values, named)
    # autograd.grad below also feeds retain_grad's hooks: keep the backward pass's δs first
    deltas = {k: v.grad.clone() for k, v in named.items() if k.startswith("a") and v.grad is not None}
    checked = 0
    for s in der.backward:
        for i, f in enumerate(s.factors):
            got = values.factors[(s.name, i)]
            if f.is_delta:
                close(got, deltas[f.denominator][0])  # δ re-used: the value above
                continue
            num, den = named[f.numerator], named[f.denominator]
            local = torch.autograd.grad(num.sum(), den, retain_graph=True, allow_unused=True)[0]
            local = torch.zeros_like(den) if local is None else local
            close(got, local.reshape(np.shape(got)) if np.ndim(got) == 0 else local[0])
            checked += 1
    assert checked == 13  # every factor of the 10 backward steps except the 8 re-used δs


def test_text_line_for_delta3_carries_torchs_numbers():
    net, der, values, named = at(None, {"x": np.array(2.0), "y": np.array(1.9)})
    values.params_from = "drawn with seed 0"
    text = ev.to_text(der, values)
    f3 = ev.fmt(named["f3"].detach()[0])
    d3 = ev.minus(ev.fmt(named["a3"].grad[0]))
    assert d3.startswith("−")
    assert f"δ3 = −(y − f3)·f3·(1 − f3) = −(1.9 − {f3})·{f3}·(1 − {f3}) = {d3}" in text
    gw1 = ev.minus(ev.fmt(named["w1"].grad))
    assert f"∂L/∂w1 = δ1·x = ({ev.minus(ev.fmt(named['a1'].grad[0]))})·2 = {gw1}" in text


def test_at_prints_the_minus_of_the_symbolic_lines(capsys):
    """--at's text writes −0.4604 and (1.9 − 0.4086) as the symbolic lines write −(y − f3): the only ASCII
    hyphens left are words' (re-used) and exponents' (1e-05); Markdown keeps every number inside math."""
    code, out, _ = run(["explain", "examples/lecture.toml", "--at", "x=2", "y=-1.9", "w1=-2e-5"], capsys)
    assert code == 0
    assert "b1 = −0.4604" in out and "w1 = −2e-05" in out and "(y − f3)" in out and "−((−1.9) − 0.4017)" in out
    assert re.findall(r"(?<![0-9]e)-(?!used)", out) == [], [ln for ln in out.splitlines() if "-" in ln]
    code, md, _ = run(["explain", "examples/lecture.toml", "--at", "x=2", "y=-1.9", "--format", "markdown"], capsys)
    prose = re.sub(r"\$\$.*?\$\$|\$[^$]*\$", "", md, flags=re.S)
    assert "−" not in md and not re.search(r"-[0-9]", prose), prose


def test_vector_mlp_numbers_match_torch_and_elementwise_factors():
    x = np.array([0.5, -1.0, 2.0, 0.25])
    net, der, values, named = at("examples/mlp_softmax.toml", {"x": x, "y": np.array(2.0)}, seed=3)
    check_against_torch(net, der, values, named)
    d2 = der.step("delta2")
    i = next(k for k, f in enumerate(d2.factors) if f.name == "df2/da2")
    local = torch.autograd.grad(named["f2"].sum(), named["a2"], retain_graph=True)[0][0]  # tanh: diagonal
    close(values.factors[("delta2", i)], local)
    assert values.factors[("delta2", next(k for k, f in enumerate(d2.factors) if f.name == "da3/df2"))] is None


def test_conv_numbers_match_torch_and_print_as_shapes_and_norms():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(3, 32, 32))
    net, der, values, named = at("examples/lecture_convnet.toml", {"x": x, "y": np.array(4.0)})
    check_against_torch(net, der, values, named)
    text = ev.to_text(der, values)
    norm = ev.fmt(np.linalg.norm(named["a1"].grad[0].numpy()))
    assert f"= shape 6×28×28, ‖·‖ = {norm}," in text.split("δ1[o, i, j] = ∂L/∂f1[o, i, j]")[1].splitlines()[0]
    full = ev.to_text(der, values, full=True)
    assert len(full) > 10 * len(text)


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_values_under_each_step(capsys, tmp_path):
    code, out, err = run(["explain", "--at", "x=2", "y=1.9", "w1=0.5", "--format", "json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    params = doc["at_sample"]["params"]
    assert params["w1"] == 0.5
    net = derive(load_spec(str(ROOT / "examples/lecture.toml"))).network
    named = torch_named(net, params, {"x": np.array(2.0), "y": np.array(1.9)})
    delta3 = next(d for d in doc["deltas"] if d["name"] == "delta3")
    close(delta3["value"], named["a3"].grad[0])
    assert [f["factor"] for f in delta3["factor_values"]] == ["dL/df3", "df3/da3"]
    w1 = next(p for p in doc["parameters"] if p["name"] == "w1")
    close(w1["value"], named["w1"].grad)
    close(doc["loss"]["value"], named["L"].detach())


def test_params_from_json_file_and_checkpoint(capsys, tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"params": {"w": 0.75}}))
    code, out, err = run(["explain", "examples/perceptron.toml", "--at", "x=2", "y=1.9", "--params", str(f)], capsys)
    assert code == 0, err
    assert "w = 0.75" in out and "a1 = w·x = 0.75·2 = 1.5" in out and "from " in out
    ck = tmp_path / "c.npz"
    code, _, err = run(["train", "examples/perceptron.toml", "--data", "examples/data/perceptron.csv",
                        "--epochs", "2", "--checkpoint", str(ck)], capsys)
    assert code == 0, err
    code, out, err = run(["explain", "examples/perceptron.toml", "--at", "x=1", "y=1", "--params", str(ck)], capsys)
    assert code == 0, err
    w = float(np.load(ck)["param/w"])
    assert f"w = {ev.fmt(w)}" in out


@pytest.mark.parametrize("argv, message", [
    (["--at", "x=2", "y=abc"], "--at y: expected a number"),
    (["--at", "x=2"], "expected a value for y"),
    (["--at", "x=2", "y=1", "q=3"], "--at q: expected one of x, y"),
    (["--at", "x=[1,2]", "y=1"], "--at x: expected a number, got shape [2]"),
    (["--at", "x=NaN", "y=1"], "--at x: expected a number"),
    (["--at", "x=__import__('os')", "y=1"], "--at x: expected a number"),
    (["--at", "x=true", "y=1"], "--at x: expected a number"),
    (["--at", "x2", "y=1"], "expected NAME=VALUE"),
    (["--seed", "1"], "go with --at"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, message):
    code, out, err = run(["explain", *argv], capsys)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_class_index_target_is_checked(capsys):
    code, _, err = run(["explain", "examples/mlp_softmax.toml", "--at", "x=[1,2,3,4]", "y=3"], capsys)
    assert code == 2 and "expected a class index 0..2" in err

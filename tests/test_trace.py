"""`derive trace`: the same steps as `derive train` (exactly), and each step's numbers against torch.autograd."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from derive.cli import main
from derive.cli.train import with_optimizer
from derive.spec import load_spec
from derive.targets.modules import generated_modules
from derive.train import train
from derive.train.data import load_csv
from derive.train.trace import walk
from derive.verify import reference

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "examples/data/perceptron.csv")


@pytest.mark.parametrize("spec, optimizer, batch, epochs", [
    ("examples/perceptron.toml", "sgd", 1, 1),
    ("examples/lecture.toml", "adam", 1, 2),
    ("examples/linear_regression.toml", "momentum", 3, 2),  # 4 samples: batches of 3 and 1
])
def test_trace_ends_where_train_ends(spec, optimizer, batch, epochs):
    net = with_optimizer(load_spec(str(ROOT / spec)), optimizer, 0.05)
    x, y = load_csv(DATA, net)
    steps = epochs * -(-len(x) // batch)
    with generated_modules(net, spec, ("numpy",)) as mods:
        last = list(walk(net, mods["numpy"], x, y, steps, batch, seed=5))[-1]
    result = train(net, spec, x, y, epochs=epochs, batch=batch, seed=5, progress=False)
    assert last["t"] == steps and last["epoch"] == epochs
    for k, v in result.params.items():
        assert np.array_equal(np.asarray(last["after"][k]), v), k  # the same float operations, bit for bit


def test_each_step_matches_torch_on_the_batch_it_drew():
    net = load_spec(str(ROOT / "examples/lecture.toml"))
    x, y = load_csv(DATA, net)
    with generated_modules(net, "lecture", ("numpy",)) as mods:
        records = list(walk(net, mods["numpy"], x, y, 3, 2, seed=1))
    drawn = set()
    for rec in records:
        p = {k: torch.tensor(np.asarray(v), dtype=torch.float64) for k, v in rec["before"].items()}
        L, grads, _ = reference.loss_and_grads(net, p, torch.tensor(rec["x"]), torch.tensor(rec["y"]))
        np.testing.assert_allclose(rec["loss"], float(L), rtol=1e-12)
        for k, g in grads.items():
            np.testing.assert_allclose(rec["intermediates"][f"dL_d{k}"], g.numpy(), rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(rec["after"][k] - rec["before"][k], -0.01 * g.numpy(), rtol=1e-9, atol=1e-15)
        np.testing.assert_array_equal(rec["x"], x[rec["indices"]])
        drawn.update(int(i) for i in rec["indices"])
    assert drawn == {0, 1, 2, 3} and [len(r["indices"]) for r in records] == [2, 2, 2]


def test_cli_text_and_json(capsys):
    assert main(["trace", "examples/perceptron.toml", "--data", DATA, "--steps", "5", "--format", "json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    recs = [json.loads(line) for line in lines]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5] and recs[4]["epoch"] == 2
    for a, b in zip(recs, recs[1:]):
        assert a["update"]["w"]["after"] == b["update"]["w"]["before"]
    r = recs[0]
    x, yv, w = r["x"][0], r["y"][0], r["update"]["w"]["before"]
    assert r["backward"]["dL_dw"] == pytest.approx(-(yv - w * x) * x, rel=1e-12)  # the lecture's -(y - w·x)·x
    assert main(["trace", "examples/perceptron.toml", "--data", DATA, "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "1. predict" in out and "2. backpropagate" in out and "3. update" in out


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps: expected a positive integer"),
    (["--batch", "-1"], "--batch: expected a positive integer"),
    (["--optimizer", "lbfgs"], "no step to trace"),
    (["--lr", "-1"], "--lr/--optimizer"),
])
def test_bad_input(capsys, argv, message):
    with pytest.raises(SystemExit) if argv[0] in ("--steps", "--batch") else _nothing():
        code = main(["trace", "examples/perceptron.toml", "--data", DATA, *argv])
        assert code == 2
    out, err = capsys.readouterr()
    assert message in err and out == "" and "Traceback" not in err


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _trace_text(capsys, *argv) -> str:
    assert main(["trace", *argv]) == 0
    return capsys.readouterr().out


def test_the_update_reads_as_the_lecture_writes_it(capsys):
    """w ← w − η·∂L/∂w with the numbers: w0 from init_params, ∂L/∂w from torch.autograd at the drawn sample."""
    from derive.evaluate import fmt

    net = load_spec(str(ROOT / "examples/perceptron.toml"))
    x, y = load_csv(DATA, net)
    with generated_modules(net, "perceptron", ("numpy",)) as mods:
        w0 = float(mods["numpy"].init_params(0)["w"])
    i = int(np.random.default_rng([0, 0]).permutation(len(x))[0])  # derive train's first sample
    w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    (0.5 * (w * float(x[i]) - float(y[i])) ** 2).backward()
    g = float(w.grad)
    neg = lambda v: f"({fmt(v)})".replace("-", "−") if v < 0 else fmt(v)
    want = f"     w ← w − η_t·∂L/∂w = {fmt(w0)} − 0.01·{neg(g)} = {fmt(w0 - 0.01 * g)}"
    out = _trace_text(capsys, "examples/perceptron.toml", "--data", DATA, "--steps", "1", "--lr", "0.01")
    assert "  3. update (sgd, step t = 1): η_t = η0 = 0.01" in out.splitlines()
    assert want in out.splitlines(), out
    assert "+ (" not in out and "-" not in out  # not the old "w: 0.2739 + (0.08544)", and the minus sign is −


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adagrad", "adadelta", "adam"])
def test_each_update_line_adds_up_and_ends_where_train_does(optimizer, capsys):
    """Every `lhs ← rule = numbers = value` line: the numbers, evaluated, give the value (to the 4 digits
    shown), and the parameter's last value is the walk's (= derive train's) after the step."""
    from derive.evaluate import fmt

    argv = ["examples/lecture.toml", "--data", DATA, "--steps", "3", "--optimizer", optimizer, "--lr", "0.05"]
    lines = [ln.strip() for ln in _trace_text(capsys, *argv).splitlines() if " ← " in ln]
    net = with_optimizer(load_spec(str(ROOT / "examples/lecture.toml")), optimizer, 0.05)
    x, y = load_csv(DATA, net)
    with generated_modules(net, "lecture", ("numpy",)) as mods:
        last = list(walk(net, mods["numpy"], x, y, 3, 1))[-1]
    assert len(lines) == 3 * len(net.params) * {"sgd": 1, "momentum": 2, "adagrad": 2, "adadelta": 4, "adam": 3}[optimizer]
    for line in lines:
        _, numbers, value = line.split(" = ")
        py = numbers.replace("−", "-").replace("·", "*").replace("^", "**").replace("²", "**2")
        got = eval(py, {"__builtins__": {}, "sqrt": np.sqrt})  # our own printed arithmetic, not a spec string
        # each number is printed to 4 significant digits (relative 5e-4), and a line combines up to 4 of them
        assert float(value.replace("−", "-")) == pytest.approx(got, rel=2e-3, abs=1e-9), line
    for k, v in last["after"].items():
        assert f"{k} ← {k} " in "\n".join(lines)
        mine = [ln for ln in lines if ln.startswith(f"{k} ← ")][-1]
        assert mine.endswith(" = " + fmt(v).replace("-", "−")), mine

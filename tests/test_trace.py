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

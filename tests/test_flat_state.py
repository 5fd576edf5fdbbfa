"""The persistent-buffer training step (FlatState) that the GPU benchmark times computes the same
updates as the NumPy reference, for every optimizer; and the benchmark harness itself runs."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from derive import Linear, Loss, Network, Port
from derive.targets.modules import generated_modules
from derive.tables.optimizers import Optimizer
from derive.verify import rel_err

ROOT = Path(__file__).resolve().parents[1]
NET = Network("flat", layers=[Linear(out=5, activation="tanh"), Linear(out=3)], input=Port("x", (4,)),
              target=Port("y", (3,)), loss=Loss("l2"))


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adagrad", "adadelta", "adam"])
def test_flat_state_matches_numpy_steps(kind, triton_device_name):
    import torch

    net = dataclasses.replace(NET, optimizer=Optimizer(kind, 0.05, "inv_sqrt"))
    with generated_modules(net, "<test>") as mods:
        npm, trm = mods["numpy"], mods["triton"]
        params = npm.init_params(3)
        state = npm.init_state(params)
        flat = trm.FlatState(trm.init_params(3, device=triton_device_name))
        rng = np.random.default_rng(0)
        for t in range(1, 5):
            x, y = rng.standard_normal((7, 4)), rng.standard_normal((7, 3))
            params, state, loss = npm.step(params, state, x, y, t)
            got = flat.step(torch.tensor(x, dtype=torch.float32, device=triton_device_name),
                            torch.tensor(y, dtype=torch.float32, device=triton_device_name), t)
            # float32 kernels against the float64 reference: a few ulps per layer and step
            assert rel_err(float(got[0]), loss) < 1e-4
        for name in params:
            assert rel_err(flat.params()[name].cpu().numpy(), params[name]) < 1e-4, name


def test_gpu_bench_harness_runs_under_the_interpreter(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_train.py"), "--tiny", "--interpret", "--baselines", "eager",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "eager/fused" in proc.stdout
    import json

    rows = json.loads(out.read_text())["rows"]
    assert rows and rows[0]["fused_ms"] > 0 and rows[0]["eager_ms"] > 0


def test_gpu_bench_times_a_convnet_spec_after_checking_one_step(tmp_path):
    """--specs: lecture_convnet's derive step (three launches) against its eager PyTorch step; one step of each
    is checked against float64 torch.autograd before anything is timed."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_train.py"), "--tiny", "--interpret", "--baselines", "eager",
         "--specs", str(ROOT / "examples" / "lecture_convnet.toml"), "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "eager/derive" in proc.stdout and "WARNING" not in proc.stdout
    import json

    (row,) = json.loads(out.read_text())["rows"]
    assert row["spec"] == "lecture_convnet" and row["fused_ms"] > 0 and row["eager_ms"] > 0
    assert row["one_step_rel_err"] < 1e-4


def test_empty_batch_is_a_value_error_everywhere(triton_device_name):
    import torch

    net = dataclasses.replace(NET, optimizer=Optimizer("adam", 0.05, "constant"))
    with generated_modules(net, "<test>") as mods:
        trm = mods["triton"]
        params = trm.init_params(0, device=triton_device_name)
        x = torch.zeros((0, 4), dtype=torch.float32, device=triton_device_name)
        y = torch.zeros((0, 3), dtype=torch.float32, device=triton_device_name)
        calls = {
            "launch": lambda: trm.launch(params, x, y, loss=torch.zeros(1)),
            "forward": lambda: trm.forward(params, x),
            "loss": lambda: trm.loss(params, x, y),
            "gradients": lambda: trm.gradients(params, x, y),
            "train_step": lambda: trm.train_step(params, x, y, 0.1),
            "step": lambda: trm.step(params, trm.init_state(params), x, y, 1),
            "FlatState.step": lambda: trm.FlatState(params).step(x, y, 1),
        }
        for name, call in calls.items():
            with pytest.raises(ValueError, match="empty batch"):
                call()

"""The fused Triton kernel's persistent grid and its deterministic gradient reduction (issue 10, part 3).

Each program loops over batch tiles and sums its gradients in its own row of a partial-sum buffer; the
update kernel adds the rows in program order.  Checked here under the interpreter: with fewer programs
than tiles (so each program runs several tiles) the gradients, loss and SGD step still match
torch.autograd in float64; and no generated dense module uses atomics.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from derive import load_spec
from derive.targets import codegen
from derive.targets.modules import generated_modules
from derive.verify import sample

from helpers import EXAMPLES, ROOT, assert_close_to_torch, random_params, torch_reference, triton_inputs

DENSE = [p for p in EXAMPLES if all(li.kind == "linear" for li in load_spec(p).info)]


@pytest.fixture(scope="module")
def softmax():
    spec = ROOT / "examples" / "mlp_softmax.toml"
    net = load_spec(spec)
    with generated_modules(net, "examples/mlp_softmax.toml") as mods:
        yield net, mods["numpy"], mods["triton"]


def _grads(trm, tp, tx, ty, programs, block_b=16):
    grads = {k: torch.full_like(v, float("nan")) for k, v in tp.items()}  # every element must be written
    loss = torch.full((1,), float("nan"))
    out = torch.full((tx.shape[0], *trm.forward(tp, tx[:1]).shape[1:]), float("nan"))
    trm.launch(tp, tx, ty, grads=grads, loss=loss, out=out, block_b=block_b, programs=programs)
    return grads, loss, out


@pytest.mark.parametrize("programs", [1, 3, 10])
def test_fewer_programs_than_tiles_still_match_torch(softmax, triton_device_name, programs):
    # 150 rows in tiles of 16: 10 tiles, so 1 program runs all of them and 3 programs run 4, 3 and 3
    net, npm, trm = softmax
    rng = np.random.default_rng([11, programs])
    params = random_params(npm, rng)
    x, y = sample(net, rng, 150)
    tp, tx, ty = triton_inputs(net, params, x, y, triton_device_name)
    grads, loss, out = _grads(trm, tp, tx, ty, programs)
    got = {"forward": out.cpu().numpy().astype(np.float64), "loss": np.float64(float(loss[0]))}
    got.update({f"grad {k}": g.cpu().numpy().astype(np.float64) for k, g in grads.items()})
    # 1e-4: float32 sums over 150 rows against float64 torch.autograd (the tolerance the other Triton tests use)
    assert_close_to_torch(net, got, tp, tx, ty, 1e-4, f"{programs} programs", float32=True)


def test_same_inputs_give_bitwise_the_same_gradients(softmax, triton_device_name):
    net, npm, trm = softmax
    rng = np.random.default_rng(12)
    params = random_params(npm, rng)
    x, y = sample(net, rng, 150)
    tp, tx, ty = triton_inputs(net, params, x, y, triton_device_name)
    first, l1, _ = _grads(trm, tp, tx, ty, 3)
    second, l2, _ = _grads(trm, tp, tx, ty, 3)
    for k in first:
        assert torch.equal(first[k], second[k]), k
    assert torch.equal(l1, l2)


def test_train_step_over_several_tiles_per_program_matches_torch(softmax, triton_device_name):
    # the default grid (INTERPRETER_PROGRAMS) over more tiles than programs: θ − η·(the reduced gradient)
    net, npm, trm = softmax
    batch = 300
    assert trm.INTERPRETER_PROGRAMS < -(-batch // trm.BLOCK_B)
    rng = np.random.default_rng(13)
    params = random_params(npm, rng)
    x, y = sample(net, rng, batch)
    tp, tx, ty = triton_inputs(net, params, x, y, triton_device_name)
    lr = 0.1
    new = trm.train_step(tp, tx, ty, lr)
    want = torch_reference(net, {k: v.cpu().numpy().astype(np.float64) for k, v in tp.items()},
                           x, y)
    for k in tp:
        step = (tp[k].cpu().numpy().astype(np.float64) - new[k].cpu().numpy()) / lr
        scale = np.abs(want[f"grad {k}"]).max() + 1e-30
        # float32 θ − η·g loses about ε·|θ|/η ≈ 1e-6 of the step; 1e-4 of the largest gradient covers it
        assert np.abs(step - want[f"grad {k}"]).max() <= 1e-4 * scale + 1e-6, k


@pytest.mark.parametrize("spec", DENSE, ids=[p.stem for p in DENSE])
def test_dense_modules_use_no_atomics(spec):
    net = load_spec(spec)
    text = codegen.generate(net, f"examples/{spec.name}", ("triton",))[f"{net.name}_triton.py"]
    assert "tl.atomic" not in text
    assert "_sgd_kernel" not in text and text.count("@triton.jit\ndef " + net.name + "_update_kernel") == 1

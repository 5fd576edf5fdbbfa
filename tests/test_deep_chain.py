"""Depth on every target: a 100-layer scalar chain with a bias in every layer (200 parameter
tensors: far more than the 64 arguments a torch op schema may take, which the torch target's
ops once had one of per parameter).

* NumPy (float64), Triton (float32, under the interpreter on a CPU) and the torch module (float64,
  both routes to the gradients) against torch.autograd on the chain rebuilt by
  derive.verify.reference, at parameters that keep the gradient alive through all 100 layers
  (w ≈ 1, b ≈ 0 under tanh: a random draw's product of 100 weights makes ∂L/∂w1 vanish, and a
  vanished gradient is matched by anything);
* the torch ops at that depth: opcheck (schema, fakes, autograd registration), and
  torch.compile(fullgraph=True) in one graph;
* derive verify (every group: torch.autograd, finite differences, float32, Triton, torch) on the
  sigmoid chain bench/derivation_scaling.py builds, one seed and one batch to keep it fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from derive import Linear, Loss, Network, Port
from derive.targets.modules import generated_modules
from derive.verify import verify
from derive.verify.checks import GROUPS, verify_modules

from helpers import assert_close_to_torch, assert_matches_torch, to_numpy, torch_reference, triton_inputs, \
    triton_outputs

DEPTH = 100
BATCH = 4


def chain(depth: int, activation: str, bias_every_layer: bool = True) -> Network:
    """x -> depth scalar linear layers -> L2, as bench/derivation_scaling.py builds its chains."""
    layers = [Linear(activation=activation)] + [Linear(bias=bias_every_layer, activation=activation)] * (depth - 1)
    return Network(f"deep_{activation}{depth}", layers, input=Port("x"), target=Port("y"), loss=Loss("l2"))


@pytest.fixture(scope="module")
def tanh_chain(triton_device_name):
    net = chain(DEPTH, "tanh")
    with generated_modules(net, "<test_deep_chain>", targets=("numpy", "triton", "torch")) as mods:
        yield net, mods


def _alive(npm, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Parameters near w = 1, b = 0 (tanh' stays near 1, so the gradient reaches layer 1), a batch."""
    rng = np.random.default_rng(seed)
    params = {k: np.asarray((1.0 if k.startswith("w") else 0.0) + 0.02 * rng.standard_normal(np.shape(v)))
              for k, v in npm.init_params(seed).items()}
    return params, 0.2 * rng.standard_normal(BATCH), rng.standard_normal(BATCH)


def test_the_chain_has_more_parameters_than_an_op_may_have_arguments(tanh_chain):
    net, mods = tanh_chain
    assert len(mods["torch"].PARAM_SHAPES) == 2 * DEPTH > 64


def test_every_target_matches_torch_autograd(tanh_chain, triton_device_name):
    net, mods = tanh_chain
    params, x, y = _alive(mods["numpy"], 3)
    want = torch_reference(net, params, x, y)
    # the gradient reaches layer 1: δ1 = ∂L/∂b1 within 10× of the largest δ, and ∂L/∂w1 five times above
    # the floor (1e-3 of all gradients' norm) that each gradient's error is measured against
    g = np.sqrt(sum(float(np.sum(want[k] ** 2)) for k in want if k.startswith("grad ")))
    assert abs(want["grad b1"]) > 0.1 * max(abs(want[f"grad b{l}"]) for l in range(1, DEPTH + 1))
    assert abs(want["grad w1"]) > 5e-3 * g

    assert_matches_torch(net, mods["numpy"], params, x, y, 1e-10, "numpy f64, 100 layers")

    tp, tx, ty = triton_inputs(net, params, x, y, device=triton_device_name)
    got = triton_outputs(mods["triton"], tp, tx, ty, net=net)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}  # the values the kernel was given
    assert_close_to_torch(net, got, p32, x.astype(np.float32), y.astype(np.float32), 1e-4, "triton f32, 100 layers",
                          True)

    tm = mods["torch"]
    model = tm.MODEL(dtype=torch.float64)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in params.items()})
    tx, ty = torch.as_tensor(x), torch.as_tensor(y)
    L = model.loss(tx, ty)
    L.backward()
    grads = {f"grad {k}": to_numpy(p.grad) for k, p in model.named_parameters()}
    with torch.no_grad():
        yhat = model(tx)
    assert_close_to_torch(net, {"forward": to_numpy(yhat), "loss": np.float64(L.item()), **grads}, params, x, y,
                          1e-10, "torch module loss(), 100 layers")
    model.zero_grad()
    yhat = model(tx)
    L = ((ty - yhat) ** 2 / 2).mean()  # torch's own L2 on ŷ: derive's backward seeded with ∂L/∂ŷ
    L.backward()
    grads = {f"grad {k}": to_numpy(p.grad) for k, p in model.named_parameters()}
    assert_close_to_torch(net, {"forward": to_numpy(yhat), "loss": np.float64(L.item()), **grads}, params, x, y,
                          1e-10, "torch module forward(), 100 layers")


def test_torch_ops_at_depth(tanh_chain):
    """opcheck on the ops with 200 parameters, and torch.compile(fullgraph=True) in one graph equal to eager."""
    net, mods = tanh_chain
    tm = mods["torch"]
    params, x, y = _alive(mods["numpy"], 5)
    model = tm.MODEL(dtype=torch.float64)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in params.items()})
    tx, ty = torch.as_tensor(x), torch.as_tensor(y)
    p = [t.detach().requires_grad_(True) for t in model.params()]
    # the schema (one Tensor[] argument), the fakes and the autograd registration at depth; the
    # AOT-dispatch test, which does not depend on the depth, runs on every example in
    # test_torch_target.py (here it would take 20 s)
    for op, args in ((tm.value_and_grad_op, (p, tx, ty)), (tm.forward_op, (p, tx))):
        result = torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration",
                                                              "test_faketensor"))
        assert all(v == "SUCCESS" for v in result.values()), result

    graphs = []

    def recording(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, fullgraph=True, backend=recording)
    L = compiled(tx, ty)
    L.backward()
    assert len(graphs) == 1
    got = {n: q.grad.clone() for n, q in model.named_parameters()}
    model.zero_grad()
    model.loss(tx, ty).backward()
    for n, q in model.named_parameters():
        torch.testing.assert_close(got[n], q.grad, rtol=1e-12, atol=0, msg=n)


def test_derive_verify_at_depth(triton_device_name):
    """Every group of derive verify on a 100-layer sigmoid chain, each target with a row per parameter."""
    net = chain(DEPTH, "sigmoid", bias_every_layer=False)
    with generated_modules(net, "<test_deep_chain>", targets=("numpy", "triton", "torch")) as mods:
        report = verify_modules(net, mods, seeds=1, seed=11, batch_sizes=(3,), groups=GROUPS)
    assert report.ok, [c for c in report.checks if not c.ok]
    rows = {(c.target, c.against, c.quantity) for c in report.checks}
    for target, against in (("numpy-f64", "torch.autograd-f64"), ("numpy-f64", "finite-differences"),
                            ("triton-f32", "numpy-f64"), ("torch-f64", "torch.autograd-f64")):
        assert {(target, against, f"grad {p.name}") for p in net.params} <= rows, (target, against)


def test_verify_generates_the_chain_itself():
    """derive verify's own entry point (generate, import, check) at depth, every target it finds."""
    net = chain(40, "tanh")  # 80 parameters: past the op limit, small enough to run in a second
    report = verify(net, "<test_deep_chain>", seeds=1, seed=4, batch_sizes=(2,))
    assert report.ok, [c for c in report.checks if not c.ok]
    assert any(c.target == "torch-f64" and c.quantity == "grad w40" for c in report.checks)

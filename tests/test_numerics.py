"""Numerically safe generated code: inputs of ±1000 drive every activation and every loss
into saturation (pre-activations and logits of ±1000), where naive σ, softplus, tanh,
log-sum-exp or BCE would overflow.  Every exact value here is finite, so the NumPy module
(float64 and float32) and the Triton kernel must give no NaN or inf, must agree with
torch.autograd in float64, and NumPy must not even warn about an overflow.

Non-smooth points follow PyTorch, checked at exactly constructed points: relu'(0) = 0,
leaky_relu'(0) = prelu'(0) = slope, |x|'(0) = 0 (l1 with y = ŷ), hinge at y·ŷ = 1 gives 0.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from derive import Linear, Loss, Network, Port, load_spec
from derive.targets.modules import generated_modules
from derive.verify import sample

from derive.tables.activations import ACTIVATIONS as ACTIVATION_TABLE
from derive.tables.losses import LOSS_RULES

from helpers import (
    EXAMPLES, assert_close_to_torch, assert_matches_torch, module_outputs, torch_reference, triton_inputs, triton_refuses,
    triton_outputs,
)

# From the tables (identity has nothing to saturate; the zero-one loss has no gradient to compare).
ACTIVATIONS = tuple(name for name in ACTIVATION_TABLE if name != "identity")
LOSSES = tuple(name for name in LOSS_RULES if name != "zero_one")
SATURATING = ("sigmoid", "tanh")

# Rows of ±1000 put every hidden pre-activation at about ±1000 (W1 below has entries ≤ 1), and
# one moderate row keeps the gradient from being all underflow (e^-1000 is 0 in any float).
X = np.array([[1000.0, -1000.0], [-1000.0, 1000.0], [1000.0, 1000.0], [-1000.0, -1000.0], [0.5, -0.25]])
TARGETS = {
    "l2": np.array([1.0, -1.0, 0.5, 2.0, 0.0]),
    "l1": np.array([1.0, -1.0, 0.5, 2.0, 0.0]),
    "hinge": np.array([1.0, -1.0, -1.0, 1.0, 1.0]),
    "binary_cross_entropy": np.array([0.0, 1.0, 1.0, 0.0, 1.0]),
    "cross_entropy": np.array([0, 1, 1, 0, 1]),
}


def _net(act: str, loss: str) -> Network:
    out = 2 if loss == "cross_entropy" else 1
    return Network(f"big_{act}_{loss}", [Linear(out=3, activation=act), Linear(out=out)],
                   input=Port("x", (2,)), loss=Loss(loss))


def _params(act: str, loss: str) -> dict:
    # saturating activations give |f| ≤ 1, so the output weights are 1000 to reach logits of ±1000;
    # the others pass |a| ≈ 1000 through and the logits reach ±1000 with weights of order 1
    s = 1000.0 if act in SATURATING else 1.0
    w2 = [[1.0, -1.0, 0.5], [-1.0, 1.0, 0.25]] if loss == "cross_entropy" else [[1.0, -1.0, 0.5]]
    p = {
        "W1": np.array([[1.0, 0.0], [0.0, 1.0], [0.6, -0.2]]),
        "b1": np.array([0.25, -0.5, 0.1]),
        "W2": s * np.array(w2),
        "b2": np.array([0.5, -0.5][: len(w2)]),
    }
    if act == "prelu":
        p["alpha1"] = np.array(0.25)
    return p


def _finite(d: dict) -> bool:
    return all(np.all(np.isfinite(np.asarray(v, dtype=np.float64))) for v in d.values())


@contextmanager
def no_overflow_warnings():
    """Warnings become errors, and NumPy raises on overflow, division by zero and invalid
    operations.  Underflow is left alone: e^-1000 rounding to 0 is the correctly rounded value."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
            yield


@pytest.fixture(scope="module", params=[(a, l) for a in ACTIVATIONS for l in LOSSES], ids=lambda p: f"{p[0]}-{p[1]}")
def big(request):
    act, loss = request.param
    net = _net(act, loss)
    with generated_modules(net, "<python>") as mods:
        yield net, mods, _params(act, loss), X, TARGETS[loss]


def test_reference_is_finite_and_inputs_saturate(big):
    net, _, params, x, y = big
    ref = torch_reference(net, params, x, y)
    assert _finite(ref)  # the premise: every exact value is finite
    a1 = x @ params["W1"].T + params["b1"]
    assert np.abs(a1).max() >= 999.0  # the hidden pre-activations reach ±1000
    assert np.abs(ref["forward"]).max() >= 999.0  # and so do the logits / outputs


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_numpy_finite_and_matches_torch(big, dtype):
    net, mods, params, x, y = big
    npm = mods["numpy"]
    p = {k: v.astype(dtype) for k, v in params.items()}
    xx = x.astype(dtype)
    yy = y if net.loss.type == "cross_entropy" else y.astype(dtype)
    with no_overflow_warnings():
        got = module_outputs(npm, p, xx, yy)
    assert _finite(got), {k: v for k, v in got.items() if not np.all(np.isfinite(v))}
    # f64: rounding order only; f32: ε32 over two layers (see helpers for the norm-wise floors)
    rtol = 1e-10 if dtype == np.float64 else 1e-4
    assert_close_to_torch(net, got, p, xx, yy, rtol, f"{net.name} numpy {np.dtype(dtype).name}",
                          float32=dtype == np.float32)


def test_numpy_train_step_raises_no_warning(big):
    net, mods, params, x, y = big
    with no_overflow_warnings():
        new = mods["numpy"].train_step(params, x, y, 1e-3)
    assert _finite(new)


def test_triton_finite_and_matches_torch(big, triton_device_name):
    net, mods, params, x, y = big
    tp, tx, ty = triton_inputs(net, params, x, y, triton_device_name)
    got = triton_outputs(mods["triton"], tp, tx, ty, net=net)
    assert _finite(got), {k: v for k, v in got.items() if not np.all(np.isfinite(v))}
    assert_close_to_torch(net, got, tp, tx, ty, 1e-4, f"{net.name} triton", float32=True)
    new = mods["triton"].train_step(tp, tx, ty, 1e-3)
    assert all(bool(torch.isfinite(v).all()) for v in new.values())


@pytest.mark.parametrize("spec", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_at_large_inputs(spec, triton_device_name):
    """Every example with x scaled to ±1000: no NaN/inf where torch is finite, and agreement."""
    net = load_spec(spec)
    refused = triton_refuses(net)  # a graph network: Triton refuses it (asserted), NumPy is still checked
    with generated_modules(net, "<python>", ("numpy",) if refused else ("numpy", "triton")) as mods:
        npm = mods["numpy"]
        rng = np.random.default_rng(4)
        params = npm.init_params(1)
        x, y = sample(net, rng, 6)
        x = 1000.0 * np.sign(x)
        ref = torch_reference(net, params, x, y)
        assert _finite(ref)
        with no_overflow_warnings():
            got = module_outputs(npm, params, x, y)
        assert _finite(got)
        assert_close_to_torch(net, got, params, x, y, 1e-10, f"{net.name} numpy at ±1000")
        if refused:
            return
        tp, tx, ty = triton_inputs(net, params, x, y, triton_device_name)
        got = triton_outputs(mods["triton"], tp, tx, ty, net=net)
        assert _finite(got)
        assert_close_to_torch(net, got, tp, tx, ty, 1e-4, f"{net.name} triton at ±1000", float32=True)


def test_cross_entropy_with_a_padded_class_column(triton_device_name):
    """Three classes pad to four columns in the kernel: with every logit near −1000 the padded
    column's exp(0 − max) overflows, and must be masked out, never reach the loss or gradients."""
    net = Network("ce3", [Linear(out=3)], input=Port("x", (2,)), loss=Loss("cross_entropy", "sum"))
    params = {"W1": np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]), "b1": np.array([0.0, 0.25, -0.25])}
    x = np.array([[-1000.0, -1000.0], [-1000.0, -999.0], [1000.0, 1000.0], [-2000.0, 1000.0], [0.3, -0.1]])
    y = np.array([0, 1, 2, 1, 0])
    with generated_modules(net, "<python>") as mods:
        with no_overflow_warnings():
            got = module_outputs(mods["numpy"], params, x, y)
        assert _finite(got)
        assert_close_to_torch(net, got, params, x, y, 1e-10, "ce3 numpy")
        tp, tx, ty = triton_inputs(net, params, x, y, triton_device_name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the interpreter's exp of the padded column
            got = triton_outputs(mods["triton"], tp, tx, ty, net=net)
        assert _finite(got)
        assert_close_to_torch(net, got, tp, tx, ty, 1e-4, "ce3 triton", float32=True)


# =========================================================================== non-smooth points


def test_pytorch_conventions_at_the_kinks():
    """What 'follow PyTorch' means, from PyTorch itself (the reference must agree with these)."""
    z = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.grad(F.relu(z).sum(), z)[0].item() == 0.0
    assert torch.autograd.grad(F.leaky_relu(z, 0.1).sum(), z)[0].item() == pytest.approx(0.1)
    alpha = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    gz, ga = torch.autograd.grad(F.prelu(z, alpha).sum(), (z, alpha))
    assert gz.item() == pytest.approx(0.3) and ga.item() == 0.0
    assert torch.autograd.grad(z.abs().sum(), z)[0].item() == 0.0
    assert torch.autograd.grad(F.relu(1 - 1.0 * (z + 1)).sum(), z)[0].item() == 0.0  # hinge at y·ŷ = 1


def _check_everywhere(net, params, x, y, device, exact_zero=()):
    """NumPy f64 and f32 and Triton against torch.autograd; listed gradients exactly 0.

    The values are small integers and halves (exact in float32) and the networks one or two
    layers deep, so only a handful of roundings remain: 1e-12 in float64, 1e-6 in float32.
    """
    with generated_modules(net, "<python>") as mods:
        npm, trm = mods["numpy"], mods["triton"]
        got = assert_matches_torch(net, npm, params, x, y, 1e-12, f"{net.name} numpy f64")
        g = npm.gradients(params, x, y)
        p32 = {k: v.astype(np.float32) for k, v in params.items()}
        x32 = x.astype(np.float32)
        y32 = y.astype(np.float32)
        assert_matches_torch(net, npm, p32, x32, y32, 1e-6, f"{net.name} numpy f32")
        g32 = npm.gradients(p32, x32, y32)
        tp, tx, ty = triton_inputs(net, params, x, y, device)
        tr = triton_outputs(trm, tp, tx, ty, net=net)
        assert_close_to_torch(net, tr, tp, tx, ty, 1e-6, f"{net.name} triton", float32=True)
        for name in exact_zero:
            assert np.all(g[name] == 0) and np.all(g32[name] == 0) and np.all(tr[f"grad {name}"] == 0), name
        return got, g


@pytest.mark.parametrize("act,slope", [("relu", 0.0), ("leaky_relu", 0.1), ("prelu", 0.3)])
def test_relu_family_at_zero(act, slope, triton_device_name):
    """Zero first-layer weights and bias: every hidden pre-activation is exactly 0."""
    layer = Linear(out=3, activation=act, slope=slope if act == "leaky_relu" else None)
    net = Network(f"kink_{act}", [layer, Linear(out=1)], input=Port("x", (2,)), loss=Loss("l2"))
    params = {"W1": np.zeros((3, 2)), "b1": np.zeros(3)}
    if act == "prelu":
        params["alpha1"] = np.array(slope)
    params.update({"W2": np.array([[1.0, -2.0, 0.5]]), "b2": np.array([0.25])})
    x = np.array([[1.0, 2.0], [-3.0, 0.5], [2.0, -1.0]])
    y = np.array([1.0, -1.0, 0.5])
    zero = ("W1", "b1") if act == "relu" else ()
    zero += ("alpha1",) if act == "prelu" else ()  # ∂f/∂α = min(0, a) = 0 at a = 0
    _, g = _check_everywhere(net, params, x, y, triton_device_name, exact_zero=zero)
    # ∂L/∂b1 = slope · W2ᵀ Σ_b δ2 (the derivative at 0 is the slope; relu's is 0)
    delta2 = (params["b2"][0] - y) / len(y)  # ŷ = b2: f1 = 0 at a1 = 0
    np.testing.assert_allclose(g["b1"], slope * params["W2"][0] * delta2.sum(), rtol=1e-12, atol=0)


def test_l1_where_y_equals_yhat(triton_device_name):
    net = Network("l1_kink", [Linear()], loss=Loss("l1"))
    params = {"w1": np.array(2.0), "b1": np.array(1.0)}
    x = np.array([3.0, -1.0, 0.5, 1.5])
    y = 2.0 * x + 1.0  # ŷ exactly, in every precision
    _check_everywhere(net, params, x, y, triton_device_name, exact_zero=("w1", "b1"))
    y2 = y.copy()
    y2[1] = 0.0  # one sample off the kink: only it contributes, sign(y − ŷ) = 1 → ∂L/∂ŷ = −1/B
    _, g = _check_everywhere(net, params, x, y2, triton_device_name)
    assert g["b1"] == pytest.approx(-1.0 / 4) and g["w1"] == pytest.approx(-x[1] / 4)


def test_hinge_at_margin_one(triton_device_name):
    net = Network("hinge_kink", [Linear()], loss=Loss("hinge"))
    params = {"w1": np.array(0.5), "b1": np.array(0.5)}
    x = np.array([1.0, -3.0, 2.0])  # ŷ = 1, −1, 1.5
    y = np.array([1.0, -1.0, -1.0])  # y·ŷ = 1, 1 (the kinks) and −1.5 (active)
    _, g = _check_everywhere(net, params, x, y, triton_device_name)
    # only the third sample counts: ∂ℓ/∂ŷ = −y = 1, over B = 3
    assert g["b1"] == pytest.approx(1.0 / 3) and g["w1"] == pytest.approx(2.0 / 3)
    _check_everywhere(net, params, x[:2], y[:2], triton_device_name, exact_zero=("w1", "b1"))

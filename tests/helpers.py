"""Shared test helpers: generated code against the independent torch.autograd reference.

``assert_matches_torch`` runs a generated NumPy or Triton module and compares its forward
pass, loss and every gradient with ``derive.verify.reference.loss_and_grads`` evaluated in float64
at exactly the values the module was given (float32 inputs are widened, not re-drawn, so
input rounding is not counted as an error).

``run_triton_with_sentinels`` launches a Triton module into sentinel-padded buffers and
checks that nothing was written out of bounds and that every element of ŷ was written.

Import torch and the generated modules only after tests/conftest.py has chosen the Triton
mode (it does so at collection, before any test module is imported).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from derive.verify import reference
# One copy each of the error metric and of the random parameters: derive verify's own.
from derive.verify import SENTINEL, padded, random_params, sentinels_intact
from derive.verify import rel_err as norm_err

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))

# A gradient whose exact value is 0 by cancellation (a bias under the hinge loss with as many
# +1 as -1 labels active) comes out of torch as rounding noise ~ε·Σ|terms|, and a norm-wise
# relative error against noise is meaningless.  So each gradient's error is measured against
# max(‖its own value‖, GRAD_FLOOR · ‖all gradients together‖): a gradient a thousand times
# smaller than the whole is compared at the whole's scale/1000, far above f64 noise (1e-16)
# and f32 noise (1e-7) but still tight enough that a wrong factor in any gradient shows.
GRAD_FLOOR = 1e-3
# For a float32 module the reference is also evaluated by torch in float32: where the math is
# ill-conditioned (ŷ a near-cancellation of much larger terms) float32 cannot reach 1e-4, and
# PyTorch's own float32 error measures by how much.  The generated code may be at most
# F32_SLACK times worse than PyTorch's float32 there (and is held to rtol everywhere else).
F32_SLACK = 10.0


def to_numpy(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def is_triton(module) -> bool:
    return hasattr(module, "launch")


def torch_inputs(net, params, x, y, dtype=torch.float64, device="cpu"):
    """params, x, y as torch tensors of ``dtype`` (class indices as int64), from their exact values."""
    tp = {k: torch.as_tensor(to_numpy(v)).to(device=device, dtype=dtype) for k, v in params.items()}
    tx = torch.as_tensor(to_numpy(x)).to(device=device, dtype=dtype)
    if net.loss.type == "cross_entropy":
        ty = torch.as_tensor(to_numpy(y)).to(device=device, dtype=torch.long)
    else:
        ty = torch.as_tensor(to_numpy(y)).to(device=device, dtype=dtype)
    return tp, tx, ty


def torch_reference(net, params, x, y, dtype=torch.float64) -> dict:
    """{"forward": ŷ, "loss": L, "grad <name>": ∂L/∂name} from torch.autograd, as float64 NumPy arrays."""
    tp, tx, ty = torch_inputs(net, params, x, y, dtype)
    L, grads, yhat = reference.loss_and_grads(net, tp, tx, ty)
    out = {"forward": to_numpy(yhat).astype(np.float64), "loss": np.float64(L.item())}
    out.update({f"grad {k}": to_numpy(g).astype(np.float64) for k, g in grads.items()})
    return out


def module_outputs(module, params, x, y) -> dict:
    """Forward, loss and gradients of a generated module, keyed as torch_reference's result."""
    yhat = module.forward(params, x)
    L = module.loss(params, x, y)
    grads = module.gradients(params, x, y)
    assert set(grads) == set(params), f"gradients() keys {sorted(grads)} != parameters {sorted(params)}"
    out = {"forward": to_numpy(yhat), "loss": np.float64(L)}
    out.update({f"grad {k}": to_numpy(g) for k, g in grads.items()})
    return out


def errors_against_torch(net, got: dict, params, x, y, float32: bool) -> dict[str, tuple[float, float]]:
    """{quantity: (error, allowed multiple of rtol)} of ``got`` against the float64 reference."""
    want = torch_reference(net, params, x, y)
    grad_keys = [k for k in want if k.startswith("grad ")]
    g_all = float(np.sqrt(sum(float(np.sum(np.square(want[k]))) for k in grad_keys)))
    floor = {k: (GRAD_FLOOR * g_all if k.startswith("grad ") else 0.0) for k in want}
    low = torch_reference(net, params, x, y, torch.float32) if float32 else None
    out = {}
    for k in want:
        err = norm_err(got[k], want[k], floor[k]) if k in got else float("inf")
        slack = F32_SLACK * norm_err(low[k], want[k], floor[k]) if low is not None else 0.0
        out[k] = (err, slack)
    return out


def assert_close_to_torch(net, got: dict, params, x, y, rtol: float, what: str, float32: bool = False) -> dict:
    """Every quantity of ``got`` within rtol (norm-wise, see GRAD_FLOOR/F32_SLACK) of torch.autograd f64."""
    errs = errors_against_torch(net, got, params, x, y, float32)
    for k, v in got.items():
        want_shape = expected_shape(net, k, np.shape(to_numpy(x))[0])
        assert np.shape(v) == want_shape, f"{what}: {k} has shape {np.shape(v)}, expected {want_shape}"
    bad = {k: (e, max(rtol, s)) for k, (e, s) in errs.items() if not (e <= max(rtol, s))}
    assert not bad, f"{what}: differs from torch.autograd float64 (error, tolerance): " + ", ".join(
        f"{k}: {e:.3g} > {t:.1g}" for k, (e, t) in sorted(bad.items())
    )
    return {k: e for k, (e, _) in errs.items()}


def expected_shape(net, key: str, batch: int) -> tuple:
    """The shape a quantity must have: ŷ (batch, *output) as forward() returns it, a gradient its parameter's."""
    if key == "forward":
        out = net.output_shape
        if out == (1,) and net.target.shape == ():
            out = ()
        return (batch, *out)
    if key == "loss":
        return ()
    name = key[len("grad "):]
    return next(p.shape for p in net.params if p.name == name)


def assert_matches_torch(net, module, params, x, y, rtol: float, what: str) -> dict:
    """Run ``module`` (generated NumPy or Triton) and compare forward, loss and every gradient with
    torch.autograd in float64 at the same values.

    Tolerances, chosen by the caller:
      * NumPy float64, rtol 1e-10: the same math evaluated twice in float64; only the order of
        roundings differs (errors ~1e-15 for these depths and batches).
      * float32 (NumPy or Triton), rtol 1e-4: float32 (ε ≈ 6e-8) accumulated over at most a few
        layers and a batch sum, about 1e-6 in practice; F32_SLACK covers ill-conditioned draws.
    Returns {quantity: error}.
    """
    got = module_outputs(module, params, x, y)
    if is_triton(module):
        float32 = True
    else:
        float32 = any(np.asarray(v).dtype == np.float32 for v in params.values())
    return assert_close_to_torch(net, got, params, x, y, rtol, what, float32)


def output_shape(net, batch: int) -> tuple:
    return expected_shape(net, "forward", batch)


def run_triton_with_sentinels(trm, params, x, y, *, net=None, block_b=None):
    """Launch ``trm`` once into SENTINEL-padded buffers for ŷ, the loss and every gradient.

    ŷ's interior is poisoned with SENTINEL first, so an element the kernel forgot to write is
    seen.  Asserts that no padding was touched and that every ŷ element was written; returns
    (ŷ, loss, {name: gradient}) as float32 tensors (views into the padded buffers).
    """
    device = x.device
    batch = x.shape[0]
    shape = output_shape(net, batch) if net is not None else tuple(trm.forward(params, x).shape)
    bufs = {k: padded(torch, tuple(v.shape), device) for k, v in params.items()}
    grads = {k: view for k, (_, view) in bufs.items()}
    loss_buf, loss_view = padded(torch, (1,), device)
    out_buf, out_view = padded(torch, shape, device)
    out_view.fill_(SENTINEL)  # every element of ŷ must be written
    trm.launch(params, x, y, grads=grads, loss=loss_view, out=out_view, block_b=block_b)
    touched = [k for k, (b, _) in bufs.items() if not sentinels_intact(b)]
    touched += ["loss"] if not sentinels_intact(loss_buf) else []
    touched += ["yhat"] if not sentinels_intact(out_buf) else []
    assert not touched, f"out-of-bounds write into the padding of {touched}"
    unwritten = int((out_view == SENTINEL).sum())
    assert unwritten == 0, f"{unwritten} of {out_view.numel()} elements of ŷ were never written"
    return out_view, loss_view[0], grads


def triton_outputs(trm, params, x, y, *, net=None, block_b=None) -> dict:
    """run_triton_with_sentinels, keyed as torch_reference's result (float64 NumPy)."""
    yhat, L, grads = run_triton_with_sentinels(trm, params, x, y, net=net, block_b=block_b)
    out = {"forward": to_numpy(yhat).astype(np.float64), "loss": np.float64(float(L))}
    out.update({f"grad {k}": to_numpy(g).astype(np.float64) for k, g in grads.items()})
    return out


def triton_inputs(net, params, x, y, device="cpu"):
    """float32 params and x, and y as the Triton kernel takes it (int32 class indices, else float32)."""
    tp = {k: torch.tensor(np.asarray(v), dtype=torch.float32, device=device) for k, v in params.items()}
    tx = torch.tensor(np.asarray(x), dtype=torch.float32, device=device)
    ydt = torch.int32 if net.loss.type == "cross_entropy" else torch.float32
    ty = torch.tensor(np.asarray(y), dtype=ydt, device=device)
    return tp, tx, ty


# The Triton target refuses no network today (graphs included).  Tests that iterate over the examples call this
# so that a refusal, should one come back, is asserted with its reason rather than silently skipped.
TRITON_REFUSAL = "the triton target does not take"


def triton_refuses(net) -> bool:
    """True, after asserting that generating Triton code for ``net`` fails with the refusal; False otherwise."""
    import pytest

    from derive.errors import DerivationError
    from derive.ir.lowering import lower
    from derive.targets import codegen, triton
    from derive import derive

    if triton.refusal(lower(derive(net))) is None:
        return False
    with pytest.raises(DerivationError, match=TRITON_REFUSAL):
        codegen.generate(net, "<test>", ("triton",))
    return True

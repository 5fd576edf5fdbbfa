"""The precision of the fused kernel's tl.dot ("tf32x3") against the tolerance the Triton rows use (1e-4).

The interpreter's tl.dot is a float32 matmul whatever the input precision, so by itself it cannot show
what tensor cores do to float32 operands.  Here the interpreter's dot is replaced by an emulation of the
two TF32 precisions Triton compiles for NVIDIA GPUs: "tf32" rounds each operand to a 10-bit mantissa
(cvt.rna.tf32.f32) and multiplies once; "tf32x3" splits each operand into a TF32 high part and the TF32
rounding of what is left, and adds lo·hi + hi·lo + hi·hi in float32 (Triton's F32DotTC rewrite).  The
products of TF32 operands are exact in float32, so only the operand rounding and the float32 sums are
modelled; the tensor cores' own accumulation order is not.

The bench network's kernel (every contraction on tl.dot) then meets 1e-4 against torch.autograd float64
with the tf32x3 emulation, and the same kernel with one-product TF32 does not: the control that shows the
emulation is not a float32 matmul in disguise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from derive import load_spec
from derive.targets.modules import generated_modules
from derive.verify import sample

from helpers import ROOT, assert_close_to_torch, errors_against_torch, random_params, triton_inputs

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="emulates tensor cores under the interpreter")


def _tf32(a: np.ndarray) -> np.ndarray:
    """float32 → the nearest TF32 value, ties away from zero (cvt.rna.tf32.f32); inf and nan kept."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    special = (bits & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
    rounded = (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
    return np.where(special, bits, rounded).view(np.float32)


def _emulated_dot(force: str | None):
    from triton.runtime.interpreter import TensorHandle

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        precision = force or str(input_precision).rsplit(".", 1)[-1].lower()
        x, y = a.data.astype(np.float32), b.data.astype(np.float32)
        if precision == "tf32":
            out = _tf32(x) @ _tf32(y)
        elif precision == "tf32x3":
            xh, yh = _tf32(x), _tf32(y)
            xl, yl = _tf32(x - xh), _tf32(y - yh)
            out = (xl @ yh + xh @ yl) + xh @ yh
        else:
            raise AssertionError(f"unexpected input_precision {input_precision}")
        return TensorHandle(out.astype(np.float32) + d.data, d.dtype.scalar)

    return create_dot


@pytest.fixture(scope="module")
def bench():
    spec = ROOT / "bench" / "mlp64x4_l2.toml"
    net = load_spec(spec)
    with generated_modules(net, "bench/mlp64x4_l2.toml") as mods:
        assert mods["triton"].DOT_PRECISION == "tf32x3"
        rng = np.random.default_rng(5)
        params = random_params(mods["numpy"], rng)
        x, y = sample(net, rng, 37)
        yield net, mods["triton"], triton_inputs(net, params, x, y, "cpu")


def _outputs(trm, tp, tx, ty) -> dict:
    got = {"forward": trm.forward(tp, tx).numpy().astype(np.float64), "loss": np.float64(float(trm.loss(tp, tx, ty)))}
    got.update({f"grad {k}": g.numpy().astype(np.float64) for k, g in trm.gradients(tp, tx, ty).items()})
    return got


def test_tf32x3_meets_the_float32_tolerance_and_tf32_does_not(bench, monkeypatch):
    from triton.runtime.interpreter import InterpreterBuilder

    net, trm, (tp, tx, ty) = bench
    monkeypatch.setattr(InterpreterBuilder, "create_dot", _emulated_dot(None))
    errs = assert_close_to_torch(net, _outputs(trm, tp, tx, ty), tp, tx, ty, 1e-4, "tf32x3 emulated", float32=True)
    monkeypatch.setattr(InterpreterBuilder, "create_dot", _emulated_dot("tf32"))
    tf32 = errors_against_torch(net, _outputs(trm, tp, tx, ty), tp, tx, ty, True)
    worst = max(e for e, _ in tf32.values())
    assert worst > 1e-4, f"one-product TF32 stayed within 1e-4 ({worst:.3g}): the emulation rounds nothing"
    assert max(errs.values()) < worst / 30  # the three products recover most of float32's digits


def test_tf32_rounding_is_to_nearest_at_ten_mantissa_bits():
    one_ulp = np.float32(2.0**-10)
    x = np.array([1.0, 1.0 + one_ulp / 2, 1.0 + one_ulp / 2 - 2.0**-23, -(1.0 + one_ulp / 2), np.inf], np.float32)
    assert _tf32(x).tolist() == [1.0, 1.0 + one_ulp, 1.0, -(1.0 + one_ulp), np.inf]

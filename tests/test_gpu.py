"""Checks that need a CUDA device: the kernels compiled for the GPU (not the interpreter).

Marked `gpu`: tests/conftest.py skips them where torch sees no CUDA device, as in CI.
scripts/gpu-check runs them on a GPU machine.
"""

from pathlib import Path

import pytest

from derive import load_spec
from derive.verify import verify

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


@pytest.mark.gpu
@pytest.mark.parametrize("spec", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_verify_on_cuda(spec, triton_device_name):
    assert triton_device_name == "cuda", "TRITON_INTERPRET is set: the kernels would not be compiled"
    report = verify(load_spec(spec), f"examples/{spec.name}", seeds=2, seed=0)
    if any("the triton target does not take" in m for m in report.skipped):
        assert not any(c.target == "triton-f32" for c in report.checks)  # a graph: refused, and said so
    else:
        assert any(c.target == "triton-f32" for c in report.checks)
    failing = [c for c in report.checks if not c.ok]
    assert not failing, failing

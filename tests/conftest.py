"""Test setup: Triton runs under its interpreter on CPU tensors unless a CUDA device is present.

TRITON_INTERPRET must be set before triton is first imported, so it happens here, at
collection time.  CI uses a bounded hypothesis profile.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

from derive.targets.modules import triton_device

DEVICE = triton_device()  # sets TRITON_INTERPRET=1 when there is no GPU

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    # one worker per core (scripts/test): torch's own threads, one per core each, would only contend
    torch.set_num_threads(1)

settings.register_profile(
    "ci", max_examples=15, deadline=None, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            # the marker, not item.keywords: keywords also hold the names of the parent directories
            if item.get_closest_marker("gpu") is not None:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def triton_device_name():
    if DEVICE is None:
        pytest.skip("triton is not installed")
    return DEVICE

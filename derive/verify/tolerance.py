"""How far apart two results are, and how far apart verify allows them to be.

Below both the checks (checks.py) and the first-divergence search (divergence.py), which measure with
the same norm-wise error against the same tolerances.
"""

from __future__ import annotations

import numpy as np

TOL_F64 = 1e-10  # two float64 evaluations of the same math: only rounding differs
# Central differences in extended precision (np.longdouble, ε ≈ 1e-19 on x86-64), at three steps
# h = (1e-7, 1e-8, 1e-9)·max(1, |θ|) (checks.FD_STEPS), and the median of the three estimates: truncation O(h²) and
# rounding O(ε·|L|/h) ≤ 1e-10·|L| stay far below the tolerance, and a relu or hinge kink that
# falls inside one stencil (a conv bias moves thousands of pre-activations at once) spoils only
# the estimates with the larger steps, so the median is clean unless a kink lies within 1e-8.
TOL_FD = 1e-6
TOL_F32 = 1e-4  # float32 arithmetic (ε ≈ 6e-8) accumulated over a few layers and a batch sum


def rel_err(got, want, floor: float = 0.0) -> float:
    """‖got − want‖ / max(‖want‖, floor); absolute where both are 0.

    ``floor`` is for one parameter's gradient: measured against 1e-3 of the whole gradient's
    norm, a gradient that is exactly 0 by symmetry is not failed by its reference's rounding
    noise, while a 1% error in a gradient 1000× smaller than the rest still fails.
    """
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf")
    diff = np.linalg.norm((got - want).ravel())
    scale = max(float(np.linalg.norm(want.ravel())), floor)
    return float(diff / scale) if scale > 0 else float(diff)


GRAD_FLOOR = 1e-3  # see rel_err


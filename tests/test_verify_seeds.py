"""derive verify passes on every example at every seed (issue 22): 20 base seeds each, small batches.

lecture_convnet failed at --seed 2 and --seed 3292188795: a relu pre-activation of 1.8e-8 (3.9e-8) sat
within float32 rounding of 0, so the float32 run took the other side of the kink and its W1 gradient
differed from float64's by a whole window's term, 2.5e-3 of it.  checks.draw now draws float32 numbers
away from every kink (derive/verify/margin.py); these seeds are pinned below, and a planted error of
1e-3 in one gradient still fails the float32 row at every seed.

Cost: the NumPy float64 vs torch.autograd, float32 vs float64 and torch-target rows run at all 20 seeds on
every example.  Finite differences evaluate the loss in np.longdouble (no BLAS): on a 3×32×32 convnet that
is ~0.1 s per loss and 144 losses per draw, so the volume examples run them at 3 seeds; their failures were
never seed-dependent (the median of three steps, checks.FD_STEPS).  The Triton rows draw the very points the
float32 row does (so the kink margin covers them) but cost the interpreter 5-70 s per example and seed
(measured: 43-72 s for hinge_classifier, iris_mlp, tiny_mlp and mlp_softmax at two seeds on a loaded
2-core machine), so they run only in test_verify.py, on every example at seed 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import derive.verify.checks as dv
from derive import load_spec
from derive.testing.api import load_modules, module_files

from helpers import ROOT

SPECS = sorted((ROOT / "examples").glob("*.toml")) + sorted((ROOT / "examples" / "user_project" / "specs").glob("*.toml"))
SEEDS = sorted(set(range(19)) | {3292188795})  # 20 distinct base seeds, the issue's two among them
BATCHES = (1, 3)
BATCHES_VOLUME = (2,)  # one run per seed: a volume example's run costs ~10 dense ones
FD_SEEDS_VOLUME = 3


def _modules(spec: Path):
    net = load_spec(spec)
    directory = ROOT / ("examples/user_project/generated" if "user_project" in spec.parts else "generated")
    return net, load_modules(module_files(net, directory))


def _volume(net) -> bool:
    return any(len(li.in_shape) == 3 for li in net.info)


def _failures(net, mods, seeds, groups, batches):
    bad = []
    for seed in seeds:
        report = dv.verify_modules(net, mods, seeds=1, seed=seed, batch_sizes=batches, groups=groups)
        assert report.checks, (net.name, seed)
        bad += [(seed, c.target, c.against, c.quantity, f"{c.max_rel_err:.3g} > {c.tolerance:g}")
                for c in report.checks if not c.ok]
    return bad


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_every_example_verifies_at_20_seeds(spec):
    net, mods = _modules(spec)
    mods.pop("triton", None)
    assert len(SEEDS) >= 20
    batches = BATCHES_VOLUME if _volume(net) else BATCHES
    bad = _failures(net, mods, SEEDS, ("numpy", "float32", "torch"), batches)
    fd_seeds = SEEDS[:FD_SEEDS_VOLUME] if _volume(net) else SEEDS
    bad += _failures(net, mods, fd_seeds, ("finite-differences",), batches)
    assert not bad, bad


@pytest.mark.parametrize("seed, draw, batch", [(2, 2, 37), (3292188795, 1, 5)])
def test_lecture_convnet_at_the_issues_failing_draws(seed, draw, batch):
    """The draw of each failing command of issue 22 (derive verify --seed 2, --seed 3292188795): its
    float32 gradients now agree with float64 well inside the tolerance."""
    net, mods = _modules(ROOT / "examples" / "lecture_convnet.toml")
    npm = mods["numpy"]
    params, x, y, _ = dv.draw(net, npm, seed, draw, batch)
    g64 = npm.gradients(params, x, y)
    g32 = npm.gradients({k: v.astype(np.float32) for k, v in params.items()}, x.astype(np.float32), y)
    terms = dv.batch_terms(net, npm, params, x, y)
    errs = {k: dv.rel_err(g32[k], g64[k], np.linalg.norm(terms[k])) for k in g64}
    assert max(errs.values()) < dv.TOL_F32 / 10, errs


def test_the_float32_row_still_fails_a_gradient_off_by_1e_3(monkeypatch):
    """A planted error: the float32 gradients of one parameter scaled by 1 + 1e-3 (an error float32
    arithmetic cannot make at these sizes) fail the row at every seed; float64 stays exact."""
    net, mods = _modules(ROOT / "examples" / "lecture_convnet.toml")
    npm = mods["numpy"]
    real = npm.gradients

    def off(params, x, y):
        g = real(params, x, y)
        if next(iter(params.values())).dtype == np.float32:
            g["b1"] = g["b1"] * np.float32(1 + 1e-3)
        return g

    monkeypatch.setattr(npm, "gradients", off)
    for seed in (0, 2, 3292188795):
        report = dv.verify_modules(net, {"numpy": npm}, seeds=1, seed=seed, batch_sizes=BATCHES, groups=("float32",))
        (row,) = [c for c in report.checks if c.quantity == "gradients"]
        assert not row.ok and row.max_rel_err > 3 * dv.TOL_F32, row


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_the_kink_margin_bounds_the_float32_error_it_claims_to(spec):
    """margin.bounds: every a_l and f_l of the generated NumPy in float32 is within the bound of its float64
    value (the bound is rebuilt in torch, so this checks the analysis, not the code against itself), and a
    relu pre-activation moved inside its bound is flagged."""
    from derive.verify import margin

    net, mods = _modules(spec)
    npm = mods["numpy"]
    for seed in (0, 1):
        params, x, y, _ = dv.draw(net, npm, seed, 0, 3)
        q64 = npm.intermediates(params, x, y)
        q32 = npm.intermediates({k: v.astype(np.float32) for k, v in params.items()}, x.astype(np.float32),
                                y if y.dtype.kind == "i" else y.astype(np.float32))
        for name, (value, bound) in margin.bounds(net, params, x).items():
            np.testing.assert_allclose(value, q64[name], rtol=1e-12, atol=1e-12)
            assert np.all(np.abs(q32[name].astype(np.float64) - q64[name]) <= bound), (net.name, name)
        assert not margin.ambiguous(net, params, x, y).any()
    first = net.info[0]
    if first.activation == "relu" and first.bias and first.kind == "linear" and first.vector:
        a1, e1 = margin.bounds(net, params, x)[f"a{first.index}"]
        near = dict(params)
        near[first.bias] = params[first.bias].copy()
        near[first.bias][0] -= a1[0, 0] - e1[0, 0] / 2  # sample 0's first pre-activation at half its bound
        assert margin.ambiguous(net, near, x, y)[0]

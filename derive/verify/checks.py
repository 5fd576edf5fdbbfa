"""Prove generated code right on fresh random inputs, against independent references.

  numpy f64  vs torch.autograd f64 (reference.py)     rel. error <= 1e-10
  numpy f64  vs central finite differences            rel. error <= 1e-6
  numpy f32  vs numpy f64                              rel. error <= 1e-4
  triton f32 vs numpy f64 (CUDA or the interpreter)    rel. error <= 1e-4
  torch f64  vs torch.autograd f64 (the torch target: nn.Module, loss.backward())  rel. error <= 1e-10
  and one SGD train_step on each target.

Errors are norm-wise, ‖got − want‖ / ‖want‖ (absolute where ‖want‖ = 0), the maximum over
every seed and batch size; a float32 gradient's against its batch sum's terms, ‖Σ_b |g_b|‖
(batch_terms), and only at float32 points away from every kink (draw, margin.py): see
docs/verification.md, "The float32 bound, and kinks".  Triton's output buffers are padded with sentinels, and an
out-of-bounds write (the interpreter does not catch a missing mask) fails the check.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from derive.targets.modules import generated_modules, triton_device
from derive.network import Network
from derive.tables.losses import BINARY, CLASS, LOSS_RULES, SIGNED
from derive.verify.divergence import first_divergence
from derive.verify.tolerance import GRAD_FLOOR, TOL_F32, TOL_F64, TOL_FD, rel_err

FD_STEPS = (1e-7, 1e-8, 1e-9)
FD_ELEMENTS = 6  # finite differences on this many random elements of each parameter
SENTINEL = 12345.0
BATCH_SIZES = (1, 5, 37)
LR = 0.1


@dataclass
class Check:
    target: str
    against: str
    quantity: str
    max_rel_err: float
    tolerance: float
    ok: bool


@dataclass
class Report:
    network: str
    seed: int
    checks: list[Check] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    divergence: object = None  # derive.verify.divergence.Divergence, when a row failed and one was found

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "network": self.network, "seed": self.seed,
                "checks": [asdict(c) for c in self.checks], "skipped": self.skipped, "notes": self.notes,
                **({"first_divergence": self.divergence.to_dict()} if self.divergence else {})}


class _Collector:
    """Keeps the worst error per (target, against, quantity)."""

    def __init__(self):
        self.rows: dict[tuple, list] = {}

    def add(self, target, against, quantity, err, tol):
        key = (target, against, quantity)
        err = float(err)
        if key not in self.rows:
            self.rows[key] = [err, tol]
        elif not (self.rows[key][0] >= err):  # NaN sticks
            self.rows[key][0] = err

    def checks(self) -> list[Check]:
        out = []
        for (t, a, q), (err, tol) in self.rows.items():
            out.append(Check(t, a, q, err, tol, bool(np.isfinite(err) and err <= tol)))
        return out


def _norm_all(arrays) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(np.asarray(a, dtype=np.float64)))) for a in arrays)))


def sample(net: Network, rng: np.random.Generator, batch: int):
    """Inputs and targets the loss accepts (its table entry's target kind): ±1 labels, {0, 1} labels,
    class indices, or real values."""
    x = rng.standard_normal((batch, *net.input.shape))
    kind = LOSS_RULES[net.loss.type].target
    t_shape = (batch, *net.target.shape)
    if kind == CLASS:
        y = rng.integers(0, net.output_shape[0], size=batch)
    elif kind == SIGNED:
        y = rng.choice([-1.0, 1.0], size=t_shape)
    elif kind == BINARY:
        y = rng.integers(0, 2, size=t_shape).astype(np.float64)
    else:
        y = rng.standard_normal(t_shape)
    return x, y


def random_params(mod, rng: np.random.Generator) -> dict:
    # away from the initial values' structure (equal prelu slopes, symmetric ranges)
    params = mod.init_params(seed=int(rng.integers(2**31)))
    return {k: np.asarray(v + 0.1 * rng.standard_normal(v.shape)) for k, v in params.items()}


def _fd_check(col: _Collector, mod, params, x, y, grads, rng):
    params = {k: np.array(v, dtype=np.longdouble) for k, v in params.items()}  # a copy: moved in place below
    x = np.asarray(x, dtype=np.longdouble)
    y = y if y.dtype.kind == "i" else np.asarray(y, dtype=np.longdouble)
    rows = {}
    for name, value in params.items():
        flat_idx = rng.choice(value.size, size=min(FD_ELEMENTS, value.size), replace=False)
        est, got = [], []
        for fi in flat_idx:
            idx = np.unravel_index(fi, value.shape) if value.shape else ()
            estimates = []
            centre = value[idx]
            for step in FD_STEPS:
                # one element moved in place and put back: copying every parameter per estimate made
                # the check quadratic in the number of parameters (a 300-layer chain has 301)
                h = np.longdouble(step) * max(1, abs(centre))
                value[idx] = centre + h
                plus = mod._loss_value(params, x, y)
                value[idx] = centre - h
                minus = mod._loss_value(params, x, y)
                value[idx] = centre
                estimates.append((plus - minus) / (2 * h))
            est.append(np.median(np.asarray(estimates, dtype=np.longdouble)))
            got.append(grads[name][idx])
        rows[name] = (got, est)
    floor = GRAD_FLOOR * _norm_all(est for _, est in rows.values())
    for name, (got, est) in rows.items():
        col.add("numpy-f64", "finite-differences", f"grad {name}", rel_err(got, est, floor), TOL_FD)


GROUPS = ("numpy", "finite-differences", "float32", "triton", "torch")  # one pytest item each (derive.testing)


def verify(net: Network, source: str, seeds: int = 3, seed: int | None = None,
           batch_sizes=BATCH_SIZES, progress=None) -> Report:
    """Generate ``net``'s code into a temporary directory and check that copy."""
    targets = ("numpy",)
    if _torch() is not None:
        targets += ("triton", "torch") if triton_device() else ("torch",)
    refused: dict[str, str] = {}
    with generated_modules(net, source, targets, refused) as mods:
        report = verify_modules(net, mods, seeds, seed, batch_sizes, progress)
    if "triton" in refused:  # say why there is no Triton module, not only that there is none
        report.skipped = [f"Triton checks: {refused['triton']}" if m == "Triton checks: no Triton module" else m
                          for m in report.skipped]
    return report


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def verify_modules(net: Network, mods: dict, seeds: int = 3, seed: int | None = None,
                   batch_sizes=BATCH_SIZES, progress=None, groups=GROUPS) -> Report:
    """Check already-imported modules ({"numpy": module, "triton": module}) of ``net``.

    ``groups`` selects the rows (GROUPS); every group draws the same inputs from the seed,
    so one group's rows reproduce with ``derive verify --seed`` running them all.  When a
    row fails, the first named intermediate that disagrees with torch is in ``report.divergence``.
    """
    base = int.from_bytes(os.urandom(4), "little") if seed is None else seed
    report = Report(net.name, base)
    torch = _torch()
    device = triton_device() if torch is not None else None
    if torch is None:
        report.skipped.append("torch.autograd and Triton checks: torch is not installed (pip install 'derive[gpu]')")
    elif "triton" in groups and device is None:
        report.skipped.append("Triton checks: triton is not installed or no CUDA device and no interpreter")
    elif "triton" in groups and "triton" not in mods:
        report.skipped.append("Triton checks: no Triton module")
    use_triton = "triton" in groups and "triton" in mods and device is not None
    use_torch = "torch" in groups and "torch" in mods and torch is not None

    col = _Collector()
    npm = mods["numpy"]
    runs = [(s, b) for s in range(seeds) for b in batch_sizes]
    for n, (s, batch) in enumerate(runs):
        params, x, y, rng = draw(net, npm, base, s, batch)
        # the float32 rows of both targets measure against the same per-sample terms: B gradient calls, once
        terms = batch_terms(net, npm, params, x, y) if "float32" in groups or use_triton else None
        _numpy_checks(col, net, npm, params, x, y, rng, torch, groups, terms)
        if use_triton:
            _triton_checks(col, mods["triton"], npm, params, x, y, torch, device, terms)
        if use_torch:
            _torch_checks(col, net, mods["torch"], params, x, y, torch)
        if progress:
            progress(n + 1, len(runs))
    if use_triton:
        with open(mods["triton"].__file__, encoding="utf-8") as fh:
            unmasked = unmasked_memory_ops(fh.read())
        col.add("triton-f32", "static check", "every tile load/store masked",
                0.0 if not unmasked else float("inf"), 0.0)
        report.notes += [f"unmasked memory op: {op}" for op in unmasked]
    report.checks = col.checks()
    if not report.ok and report.checks and torch is not None:
        report.divergence = locate(net, mods if use_triton else {"numpy": npm}, base, runs)
    return report


def locate(net: Network, mods: dict, base: int, runs):
    """The first divergence (divergence.Divergence) over the verify runs (draw, batch size) of seed ``base``."""
    device = triton_device() if "triton" in mods else None
    for s, batch in runs:
        params, x, y, _ = draw(net, mods["numpy"], base, s, batch)
        found = first_divergence(net, mods, params, x, y, device)
        if found:
            found.seed, found.run = base, (s, batch)
            return found
    return None


REDRAWS = 200  # rounds of drawing the samples near a kink again (a sample is clean with p ≳ 0.2 in the examples)


def draw(net: Network, npm, base: int, s: int, batch: int):
    """The parameters and the batch of run (s, batch), and the generator the run goes on with.

    Every value is a float32 number (held in float64), so the float32 rows evaluate the very point the
    float64 rows do; and no sample lies within float32 rounding of a kink (margin.py), so every float32
    evaluation takes the branches the float64 one takes.  Both are needed: rounding the inputs alone
    moved a relu pre-activation of 1.8e-8 across 0 (lecture_convnet, --seed 2), and a float32 dot
    product's own rounding another of 3.9e-8 (--seed 3292188795).
    """
    rng = np.random.default_rng([base, s, batch])
    params = {k: _f32(v) for k, v in random_params(npm, rng).items()}
    x, y = (_f32(v) for v in sample(net, rng, batch))
    if _torch() is not None:
        from derive.verify.margin import ambiguous

        for _ in range(REDRAWS):
            bad = np.flatnonzero(ambiguous(net, params, x, y))
            if not bad.size:
                break
            x[bad], y[bad] = (_f32(v) for v in sample(net, rng, bad.size))
    return params, x, y, rng


def _f32(v):
    """v rounded to float32 and held in float64 (class indices stay integers)."""
    v = np.asarray(v)
    return v if v.dtype.kind in "iu" else v.astype(np.float32).astype(np.float64)


_MEMORY_OP = re.compile(r"tl\.(load|store|atomic_add)\(")


def unmasked_memory_ops(source: str) -> list[str]:
    """Loads, stores and atomic adds on a tile (their address uses _rows or _cols_N) without a mask.

    The sentinel padding cannot see an unmasked store of a zero-padded lane into memory the kernel owns
    (a scratch column, a partial sum), so this static check covers what the dynamic one cannot.  An op
    whose address uses no batch rows and only _cols_N with N a power of two needs no mask: _cols_N is
    tl.arange(0, N) there, with no padded lane.
    """
    bad = []
    for m in _MEMORY_OP.finditer(source):
        depth, i = 1, m.end()
        while depth and i < len(source):
            depth += {"(": 1, ")": -1}.get(source[i], 0)
            i += 1
        call = source[m.start():i]
        tiles = re.findall(r"(?<![A-Za-z0-9])_?(rows|cols_\w+)\b", call)  # _rows, _srows, _cols_N
        if tiles and "mask=" not in call and not all(_exact_cols(t) for t in tiles):
            bad.append(" ".join(call.split()))
    return bad


def _exact_cols(name: str) -> bool:
    n = name.removeprefix("cols_")
    return n.isdigit() and int(n) & (int(n) - 1) == 0


def _numpy_checks(col, net, npm, params, x, y, rng, torch, groups=GROUPS, terms=None):
    yhat = npm.forward(params, x)
    L = npm.loss(params, x, y)
    grads = npm.gradients(params, x, y)
    if "numpy" in groups:
        for name, g in grads.items():
            if np.shape(g) != np.shape(params[name]):
                col.add("numpy-f64", "parameter shapes", f"grad {name}", float("inf"), 0.0)
    if torch is not None and "numpy" in groups:
        from derive.verify import reference

        tp = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
        tx = torch.tensor(x, dtype=torch.float64)
        ty = torch.tensor(y, dtype=torch.long if y.dtype.kind == "i" else torch.float64)
        tL, tg, tyhat = reference.loss_and_grads(net, tp, tx, ty)
        col.add("numpy-f64", "torch.autograd-f64", "forward", rel_err(yhat, tyhat.numpy()), TOL_F64)
        col.add("numpy-f64", "torch.autograd-f64", "loss", rel_err(L, tL.item()), TOL_F64)
        floor = GRAD_FLOOR * _norm_all(tg.values())  # once: per parameter it was quadratic in their number
        for name in params:
            col.add("numpy-f64", "torch.autograd-f64", f"grad {name}", rel_err(grads[name], tg[name].numpy(), floor),
                    TOL_F64)
        want = {k: tg[k].numpy() for k in params}
        col.add("numpy-f64", "torch.autograd-f64", "train_step", _step_error(npm, params, x, y, want), TOL_F64)
    if "finite-differences" in groups:
        _fd_check(col, npm, params, x, y, grads, rng)
    if "float32" not in groups:
        return
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    x32 = x.astype(np.float32)
    y32 = y if y.dtype.kind == "i" else y.astype(np.float32)
    g32 = npm.gradients(p32, x32, y32)
    if any(np.asarray(v).dtype != np.float32 for v in g32.values()):
        col.add("numpy-f32", "dtype", "gradients stay float32", float("inf"), 0.0)
    col.add("numpy-f32", "numpy-f64", "forward", rel_err(npm.forward(p32, x32), yhat), TOL_F32)
    if terms is None:
        terms = batch_terms(net, npm, params, x, y)
    floor = GRAD_FLOOR * _norm_all(terms.values())
    col.add("numpy-f32", "numpy-f64", "gradients",
            max(rel_err(g32[k], grads[k], max(floor, _norm_all([terms[k]]))) for k in params), TOL_F32)


def batch_terms(net, npm, params, x, y) -> dict:
    """Σ_b |g_b| per parameter: the size of the batch sum's terms, each sample's gradient g_b (float64).

    Rounding a sum of B terms costs up to ~B·u·Σ|terms| (u = 2⁻²⁴), whatever the sum itself is: where the
    samples' gradients cancel (a bias gradient of ±1 labels sums to ~0), its float32 error measured against
    ‖Σ_b g_b‖ grows as 1/‖Σ_b g_b‖ and says nothing about the code.  The float32 rows measure it against
    ‖Σ_b |g_b|‖ ≥ ‖Σ_b g_b‖ instead; with a single sample the two are the same.
    """
    scale = 1.0 / x.shape[0] if net.loss.reduction == "mean" else 1.0
    out = {k: np.zeros(np.shape(v)) for k, v in params.items()}
    for b in range(x.shape[0]):
        for k, g in npm.gradients(params, x[b:b + 1], y[b:b + 1]).items():
            out[k] += scale * np.abs(g)
    return out


def _step_error(mod, params, x, y, want_grads, to_np=np.asarray) -> float:
    """One train_step, compared as the step (θ − θ')/η against the reference gradient, norm-wise.

    η is chosen so that η·‖g‖ = ‖θ‖: rounding θ' then costs at most ~2ε of the step, in float64
    and float32 alike, and a wrong update cannot hide below it.
    """
    g_norm = _norm_all(want_grads.values())
    old = {k: to_np(v) for k, v in params.items()}
    p_norm = _norm_all(old.values())
    lr = p_norm / g_norm if g_norm > 0 and p_norm > 0 else LR
    new = mod.train_step(params, x, y, lr)
    got = np.concatenate([np.ravel((old[k] - to_np(new[k])) / lr) for k in want_grads])
    return rel_err(got, np.concatenate([np.ravel(want_grads[k]) for k in want_grads]))


def padded(torch, shape, device, pad=7):
    """A zeroed tensor of ``shape`` inside a buffer whose ``pad`` elements either side hold SENTINEL."""
    n = int(np.prod(shape, dtype=np.int64))
    buf = torch.full((n + 2 * pad,), SENTINEL, dtype=torch.float32, device=device)
    buf[pad:pad + n] = 0.0
    return buf, buf[pad:pad + n].view(shape)


def sentinels_intact(buf, pad=7) -> bool:
    return bool((buf[:pad] == SENTINEL).all() and (buf[-pad:] == SENTINEL).all())


def _torch_checks(col, net, tm, params, x, y, torch):
    """The torch target's nn.Module in float64: ŷ, and the loss and every gradient of loss.backward()
    (derive's backward inside a custom autograd op) against the independent torch.autograd rebuild."""
    from derive.verify import reference

    model = tm.MODEL(dtype=torch.float64)
    with torch.no_grad():
        for name, value in model.named_parameters():
            value.copy_(torch.as_tensor(params[name], dtype=torch.float64))
    tx = torch.tensor(x, dtype=torch.float64)
    ty = torch.tensor(y, dtype=torch.long if y.dtype.kind == "i" else torch.float64)
    tp = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    tL, tg, tyhat = reference.loss_and_grads(net, tp, tx, ty)
    with torch.no_grad():
        col.add("torch-f64", "torch.autograd-f64", "forward", rel_err(model(tx).numpy(), tyhat.numpy()), TOL_F64)
    L = model.loss(tx, ty)
    L.backward()
    col.add("torch-f64", "torch.autograd-f64", "loss", rel_err(L.item(), tL.item()), TOL_F64)
    floor = GRAD_FLOOR * _norm_all(g.numpy() for g in tg.values())
    for name, value in model.named_parameters():
        got = value.grad if value.grad is not None else torch.zeros_like(value)
        col.add("torch-f64", "torch.autograd-f64", f"grad {name}", rel_err(got.numpy(), tg[name].numpy(), floor), TOL_F64)


def _triton_checks(col, trm, npm, params, x, y, torch, device, terms):
    tp = {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in params.items()}
    tx = torch.tensor(x, dtype=torch.float32, device=device)
    ty = torch.tensor(y, dtype=torch.int32 if y.dtype.kind == "i" else torch.float32, device=device)
    bufs = {k: padded(torch, v.shape, device) for k, v in params.items()}
    grads = {k: view for k, (_, view) in bufs.items()}
    loss_buf, loss_view = padded(torch, (1,), device)
    out_shape = (x.shape[0], *np.shape(npm.forward(params, x))[1:])
    out_buf, out_view = padded(torch, out_shape, device)
    out_buf[7:-7] = SENTINEL  # every element of ŷ must be written
    trm.launch(tp, tx, ty, grads=grads, loss=loss_view, out=out_view)
    ok = all(sentinels_intact(b) for b, _ in bufs.values()) and sentinels_intact(loss_buf) and sentinels_intact(out_buf)
    col.add("triton-f32", "sentinel padding", "no out-of-bounds writes", 0.0 if ok else float("inf"), 0.0)
    ref = npm.gradients(params, x, y)
    floor = GRAD_FLOOR * _norm_all(terms.values())
    col.add("triton-f32", "numpy-f64", "forward", rel_err(out_view.cpu().numpy(), npm.forward(params, x)), TOL_F32)
    col.add("triton-f32", "numpy-f64", "loss", rel_err(loss_view.cpu().numpy()[0], npm.loss(params, x, y)), TOL_F32)
    floor = GRAD_FLOOR * _norm_all(ref.values())
    for k in params:
        col.add("triton-f32", "numpy-f64", f"grad {k}",
                rel_err(grads[k].cpu().numpy(), ref[k], max(floor, _norm_all([terms[k]]))), TOL_F32)
    col.add("triton-f32", "numpy-f64", "train_step",
            _step_error(trm, tp, tx, ty, ref, lambda v: v.cpu().numpy().astype(np.float64)), TOL_F32)

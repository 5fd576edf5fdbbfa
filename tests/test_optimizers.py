"""The optimizers: each generated update rule against torch.optim (or its own closed form),
the step-size schedules, the Triton update against the NumPy one, `derive explain`'s
update equations and the `[optimizer]` spec errors.

torch and triton are imported inside the tests (triton only through
derive.targets.modules.generated_modules, after tests/conftest.py chose the interpreter).
"""

from __future__ import annotations

import json
from contextlib import ExitStack

import numpy as np
import pytest

from derive import Linear, Loss, Network, Port
from derive.cli import main
from derive.errors import SpecError
from derive.targets.modules import generated_modules
from derive.tables.optimizers import CONSTANTS, OPTIMIZER_TYPES, Optimizer
from derive.verify import rel_err

STEPS = 20
# Two float64 evaluations of the same update that differ only in the order of a few
# operations (torch's lerp for Adam's m, √v/√bc2 instead of √(v/bc2), Σ-then-scale in
# momentum): a few ulps (≈1e-16 relative) per step, well under 1e-13 after 20 steps.
# A real difference in the rule (ε inside or outside the square root, a missing bias
# correction, a shifted t) moves the parameters by ≥ 1e-8 relative, 4 orders above rtol.
# atol only covers elements that pass close to zero.
RTOL, ATOL = 1e-12, 1e-14
TOL_F32 = 1e-4  # float32 Triton vs float64 NumPy, norm-wise, after 5 steps


def small_network(opt: Optimizer) -> Network:
    """Parameters of every rank: W1 (3×4) and W2 (2×3) matrices, b1 and b2 vectors, prelu's scalar slope a."""
    return Network(
        "small",
        layers=[Linear(out=3, activation="prelu", slope="a"), Linear(out=2)],
        input=Port("x", (4,)),
        target=Port("y", (2,)),
        loss=Loss("l2"),
        optimizer=opt,
    )


PARAM_NAMES = ("W1", "b1", "a", "W2", "b2")


@pytest.fixture(scope="module")
def modules():
    """modules(opt, targets) -> {target: module}, generated once per optimizer and kept
    (with their source files, which Triton's @jit reads) until the module's tests end."""
    cache: dict = {}
    with ExitStack() as stack:

        def get(opt: Optimizer, targets=("numpy",)):
            key = (opt, targets)
            if key not in cache:
                cache[key] = stack.enter_context(generated_modules(small_network(opt), "small.toml", targets))
            return cache[key]

        yield get


def random_params(rng, shapes):
    return {name: np.asarray(rng.uniform(-1.0, 1.0, size=shape)) for name, shape in shapes.items()}


def grad_sequence(rng, shapes, n=STEPS):
    return [{name: np.asarray(rng.normal(size=shape)) for name, shape in shapes.items()} for _ in range(n)]


# --------------------------------------------------------------------------- against torch.optim

TORCH_CASES = {
    # name: (our Optimizer, torch.optim class name, its keyword arguments) -- the same numbers,
    # off the defaults where a default would hide a constant that is not passed through
    "sgd": (Optimizer("sgd", 0.1), "SGD", {"lr": 0.1}),
    "adagrad": (Optimizer("adagrad", 0.1, constants={"eps": 1e-8}), "Adagrad", {"lr": 0.1, "eps": 1e-8}),
    "adadelta": (Optimizer("adadelta", 0.5, constants={"rho": 0.8, "eps": 1e-5}), "Adadelta",
                 {"lr": 0.5, "rho": 0.8, "eps": 1e-5}),
    "adam": (Optimizer("adam", 0.01, constants={"beta1": 0.8, "beta2": 0.95, "eps": 1e-8}), "Adam",
             {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-8}),
}


def run_ours(mod, params, grads, hyper=None):
    state = mod.init_state(params)
    out = []
    for t, g in enumerate(grads, start=1):
        params, state = mod.apply_update(params, state, g, t, hyper)
        out.append(params)
    return out


def run_torch(cls_name, kwargs, params, grads, lr_at=None):
    """torch.optim on the same start and gradients; lr_at(t) changes the lr before step t."""
    import torch

    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    opt = getattr(torch.optim, cls_name)(list(tp.values()), **kwargs)
    out = []
    for t, g in enumerate(grads, start=1):
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(t)
        for k, p in tp.items():
            p.grad = torch.tensor(g[k], dtype=torch.float64)
        opt.step()
        out.append({k: p.detach().clone() for k, p in tp.items()})
    return out


@pytest.mark.parametrize("kind", sorted(TORCH_CASES))
def test_update_rule_matches_torch_optim(kind, modules):
    import torch

    opt, cls_name, kwargs = TORCH_CASES[kind]
    mod = modules(opt)["numpy"]
    assert mod.OPTIMIZER == kind and mod.SCHEDULE == "constant"
    assert mod.HYPER == opt.hyper
    shapes = mod.PARAM_SHAPES
    assert {len(s) for s in shapes.values()} == {0, 1, 2}  # a scalar, vectors and matrices
    rng = np.random.default_rng([7, OPTIMIZER_TYPES.index(kind)])
    params = random_params(rng, shapes)
    grads = grad_sequence(rng, shapes)
    ours = run_ours(mod, params, grads)
    theirs = run_torch(cls_name, kwargs, params, grads)
    for t, (a, b) in enumerate(zip(ours, theirs), start=1):
        for name in shapes:
            assert np.shape(a[name]) == shapes[name]
            torch.testing.assert_close(torch.from_numpy(np.asarray(a[name])), b[name], rtol=RTOL, atol=ATOL,
                                       msg=lambda m: f"{kind}, step {t}, {name}: {m}")
    # the parameters really moved (the comparison is not between two untouched copies)
    assert all(rel_err(ours[-1][k], params[k]) > 1e-3 for k in shapes)


# --------------------------------------------------------------------------- momentum


def momentum_by_hand(params, grads, mu, eta_at):
    """The lecture's rule, written out: vel ← μ·vel − η_t·g, θ ← θ + vel (vel = 0 at the start)."""
    theta = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    vel = {k: np.zeros_like(v) for k, v in theta.items()}
    out = []
    for t, g in enumerate(grads, start=1):
        for k in theta:
            vel[k] = mu * vel[k] - eta_at(t) * g[k]
            theta[k] = theta[k] + vel[k]
        out.append({k: v.copy() for k, v in theta.items()})
    return out


@pytest.mark.parametrize("schedule", ["constant", "inv_sqrt"])
def test_momentum_matches_its_closed_form(schedule, modules):
    mu, eta0 = 0.8, 0.05
    mod = modules(Optimizer("momentum", eta0, schedule, {"momentum": mu}))["numpy"]
    assert mod.STATE == ("vel",) and mod.HYPER == {"lr": eta0, "momentum": mu}
    rng = np.random.default_rng(11)
    params = random_params(rng, mod.PARAM_SHAPES)
    grads = grad_sequence(rng, mod.PARAM_SHAPES)
    eta_at = (lambda t: eta0) if schedule == "constant" else (lambda t: eta0 / np.sqrt(t))
    ours = run_ours(mod, params, grads)
    by_hand = momentum_by_hand(params, grads, mu, eta_at)
    for a, b in zip(ours, by_hand):
        for k in params:
            np.testing.assert_allclose(a[k], b[k], rtol=RTOL, atol=ATOL)
    # and unrolled: vel_t = −Σ_k μ^(t−k)·η_k·g_k, θ_t = θ_0 + Σ_s vel_s
    for k in params:
        vel = [-sum(mu ** (s - j) * eta_at(j) * grads[j - 1][k] for j in range(1, s + 1)) for s in range(1, STEPS + 1)]
        np.testing.assert_allclose(ours[-1][k], params[k] + sum(vel), rtol=1e-10, atol=1e-12)


def test_momentum_convention_versus_torch(modules):
    """torch.optim.SGD(momentum=μ) keeps buf ← μ·buf + g, θ ← θ − η·buf; the lecture (and derive)
    keep vel ← μ·vel − η·g, θ ← θ + vel.  vel = −η·buf while η is constant, so the two
    trajectories agree; once η changes between steps (inv_sqrt) torch rescales the whole
    history by the new η and they part."""
    import torch

    mu, eta0 = 0.9, 0.05
    rng = np.random.default_rng(12)
    shapes = modules(Optimizer("momentum", eta0))["numpy"].PARAM_SHAPES
    params = random_params(rng, shapes)
    grads = grad_sequence(rng, shapes)

    constant = run_ours(modules(Optimizer("momentum", eta0, "constant", {"momentum": mu}))["numpy"], params, grads)
    torch_constant = run_torch("SGD", {"lr": eta0, "momentum": mu}, params, grads)
    for a, b in zip(constant, torch_constant):
        for k in shapes:
            torch.testing.assert_close(torch.from_numpy(np.asarray(a[k])), b[k], rtol=RTOL, atol=ATOL)

    decaying = run_ours(modules(Optimizer("momentum", eta0, "inv_sqrt", {"momentum": mu}))["numpy"], params, grads)
    torch_decaying = run_torch("SGD", {"lr": eta0, "momentum": mu}, params, grads, lr_at=lambda t: eta0 / np.sqrt(t))
    flat = lambda p: np.concatenate([np.ravel(np.asarray(p[k])) for k in shapes])
    # step 1 is the same (vel = −η1·g = −η1·buf), from step 2 on torch scales μ·buf by η_t instead of η_(t−1)
    assert rel_err(flat(decaying[0]), flat({k: v.numpy() for k, v in torch_decaying[0].items()})) < 1e-15
    differences = [rel_err(flat(a), flat({k: v.numpy() for k, v in b.items()})) for a, b in zip(decaying, torch_decaying)]
    assert differences[1] > 1e-4
    assert differences[-1] > 1e-2, differences


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("schedule", ["constant", "inv_sqrt"])
def test_schedule_step_sizes(schedule, modules):
    """sgd's step at t is exactly η_t·g: η_t = η0/√t with t = 1, 2, … for inv_sqrt, η0 for constant."""
    eta0 = 0.3
    mod = modules(Optimizer("sgd", eta0, schedule))["numpy"]
    assert mod.SCHEDULE == schedule and mod.STATE == ()
    shapes = mod.PARAM_SHAPES
    zeros = {k: np.zeros(s) for k, s in shapes.items()}
    ones = {k: np.ones(s) for k, s in shapes.items()}
    expected = [eta0 / np.sqrt(t) if schedule == "inv_sqrt" else eta0 for t in range(1, 6)]
    assert expected[0] == eta0  # t counts from 1: the first step takes the full η0
    for t in range(1, 6):
        new, _ = mod.apply_update(zeros, mod.init_state(zeros), ones, t)
        for k in shapes:
            assert np.all(new[k] == -expected[t - 1]), (t, k, new[k])  # bitwise: θ = 0 − η_t·1
    # chained over the 5 steps, with a random gradient and HYPER overridden at call time
    rng = np.random.default_rng(3)
    params = random_params(rng, shapes)
    g = {k: np.asarray(rng.normal(size=s)) for k, s in shapes.items()}
    state, p = mod.init_state(params), params
    for t in range(1, 6):
        before = p
        p, state = mod.apply_update(p, state, g, t, {"lr": 2 * eta0})
        for k in shapes:
            np.testing.assert_allclose(before[k] - p[k], 2 * expected[t - 1] * g[k], rtol=1e-13, atol=1e-15)


# --------------------------------------------------------------------------- Triton vs NumPy

TRITON_LR = {"sgd": 0.1, "momentum": 0.05, "adagrad": 0.05, "adadelta": 1.0, "adam": 0.01}  # steps well above 1e-4
TRITON_CASES = [Optimizer(kind, TRITON_LR[kind], schedule)
                for kind in OPTIMIZER_TYPES if kind != "lbfgs" for schedule in ("constant", "inv_sqrt")]


@pytest.mark.parametrize("opt", TRITON_CASES, ids=lambda o: f"{o.type}-{o.schedule}")
def test_triton_update_matches_numpy(opt, modules, triton_device_name):
    import torch

    mods = modules(opt, ("numpy", "triton"))
    npm, tm = mods["numpy"], mods["triton"]
    assert tm.STATE == npm.STATE and tm.HYPER == npm.HYPER and tm.SCHEDULE == opt.schedule
    rng = np.random.default_rng(5)
    # the same starting point and data in both precisions: float32 values, held in float64 by NumPy
    p32 = {k: v.astype(np.float32) for k, v in npm.init_params(1).items()}
    x32 = rng.normal(size=(24, 4)).astype(np.float32)
    y32 = rng.normal(size=(24, 2)).astype(np.float32)
    p64 = {k: v.astype(np.float64) for k, v in p32.items()}
    s64 = npm.init_state(p64)
    tp = {k: torch.tensor(v, device=triton_device_name) for k, v in p32.items()}
    ts = tm.init_state(tp)
    tx, ty = torch.tensor(x32, device=triton_device_name), torch.tensor(y32, device=triton_device_name)
    for t in range(1, 6):
        batch = slice(8 * (t % 3), 8 * (t % 3) + 8)  # a different mini-batch each step
        p64, s64, l64 = npm.step(p64, s64, x32[batch].astype(np.float64), y32[batch].astype(np.float64), t)
        tp, ts, l32 = tm.step(tp, ts, tx[batch], ty[batch], t)
        assert rel_err(l32, l64) <= TOL_F32, (t, l32, l64)
        for k in p64:
            assert tp[k].dtype == torch.float32 and tuple(tp[k].shape) == np.shape(p64[k])
            err = rel_err(tp[k].cpu().numpy(), p64[k])
            assert err <= TOL_F32, f"{opt.type}/{opt.schedule} step {t} {k}: rel err {err:.2e}"
        for kind in npm.STATE:
            for k in p64:
                err = rel_err(ts[kind][k].cpu().numpy(), s64[kind][k])
                assert err <= TOL_F32, f"{opt.type}/{opt.schedule} step {t} state {kind}[{k}]: rel err {err:.2e}"
    # the parameters moved by much more than the tolerance, and the moves themselves agree
    for k in p64:
        move64 = p64[k] - p32[k].astype(np.float64)
        move32 = tp[k].cpu().numpy().astype(np.float64) - p32[k].astype(np.float64)
        assert rel_err(p64[k], p32[k].astype(np.float64)) > 10 * TOL_F32, k
        assert rel_err(move32, move64) <= 10 * TOL_F32, (k, rel_err(move32, move64))


# --------------------------------------------------------------------------- derive explain

SPEC = """\
name = "small"

[input]
shape = [4]

[target]
shape = [2]

[[layers]]
type = "linear"
out = 3
activation = "prelu"
slope = "a"

[[layers]]
type = "linear"
out = 2

[optimizer]
{optimizer}
"""


def write_spec(tmp_path, optimizer: str, name="small.toml"):
    path = tmp_path / name
    path.write_text(SPEC.format(optimizer=optimizer), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("kind", OPTIMIZER_TYPES)
def test_explain_shows_the_updates(kind, tmp_path, capsys):
    path = write_spec(tmp_path, f'type = "{kind}"')
    assert main(["explain", path]) == 0
    text = capsys.readouterr().out
    updates = text[text.index("Parameter updates: " + kind):]
    if kind == "lbfgs":
        assert "scipy" in updates and "←" in updates
    else:
        arrows = [line.strip() for line in updates.splitlines() if "←" in line]
        for name in PARAM_NAMES:
            assert any(line.startswith(f"{name} ← ") for line in arrows), (name, arrows)
        n_steps = {"sgd": 1, "momentum": 2, "adagrad": 2, "adadelta": 4, "adam": 3}[kind]
        assert len(arrows) == n_steps * len(PARAM_NAMES)
        assert "η_t = η0" in updates
    for const in CONSTANTS[kind]:
        assert {"momentum": "μ", "rho": "ρ", "beta1": "β1", "beta2": "β2", "eps": "ε", "history": "history"}[const] in updates

    assert main(["explain", path, "--format", "json"]) == 0
    opt = json.loads(capsys.readouterr().out)["optimizer"]
    assert opt["type"] == kind and opt["schedule"] == "constant"
    assert opt["hyper"] == Optimizer(kind).hyper
    if kind == "lbfgs":
        assert "scipy" in opt["note"] and "updates" not in opt
    else:
        assert [u["param"] for u in opt["updates"]] == list(PARAM_NAMES)
        for u in opt["updates"]:
            assert u["steps"][-1]["name"] == u["param"]  # the last step assigns the parameter
            assert all(s["expression"] for s in u["steps"])


def test_explain_param_filter_and_inv_sqrt(tmp_path, capsys):
    path = write_spec(tmp_path, 'type = "adam"\nschedule = "inv_sqrt"\nbeta1 = 0.8')
    assert main(["explain", path, "--param", "a"]) == 0
    text = capsys.readouterr().out
    assert "β1 = 0.8" in text and "inv_sqrt schedule" in text and "η_t = η0/sqrt(t)" in text
    arrows = [line.strip() for line in text.splitlines() if "←" in line]
    assert [line.split(" ← ")[0] for line in arrows] == ["m_a", "v_a", "a"]


# --------------------------------------------------------------------------- spec errors

BAD_OPTIMIZERS = [
    ('type = "rmsprop"', "optimizer.type", "rmsprop"),
    ('type = "sgd"\nbeta1 = 0.9', "optimizer.beta1", "beta1"),  # a constant of another optimizer
    ('type = "momentum"\nrho = 0.9', "optimizer.rho", "rho"),
    ('type = "adam"\nlr = -0.1', "optimizer.lr", "-0.1"),
    ('type = "sgd"\nlr = 0', "optimizer.lr", "positive"),
    ('type = "adam"\nbeta1 = 1.5', "optimizer.beta1", "1.5"),
    ('type = "adam"\nbeta2 = 1.0', "optimizer.beta2", "[0, 1)"),
    ('type = "momentum"\nmomentum = -0.1', "optimizer.momentum", "[0, 1)"),
    ('type = "adagrad"\neps = 0', "optimizer.eps", "positive"),
    ('type = "lbfgs"\nhistory = 0', "optimizer.history", "positive integer"),
    ('type = "lbfgs"\nhistory = 2.5', "optimizer.history", "2.5"),
    ('schedule = "cosine"', "optimizer.schedule", "cosine"),
    ('type = 3', "optimizer.type", "3"),
]


@pytest.mark.parametrize("body, key, mentions", BAD_OPTIMIZERS, ids=[b[1] + ":" + b[0].split("\n")[-1] for b in BAD_OPTIMIZERS])
def test_optimizer_spec_errors(body, key, mentions, tmp_path, capsys):
    path = write_spec(tmp_path, body)
    assert main(["explain", path]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"derive: error: {path}: {key}: "), lines[0]
    assert mentions in lines[0]
    assert "Traceback" not in captured.err


def test_optimizer_errors_from_python():
    with pytest.raises(SpecError) as err:
        Optimizer("adam", 0.01, constants={"momentum": 0.9})
    assert err.value.path == "optimizer.momentum" and "not a constant of adam" in err.value.message
    with pytest.raises(SpecError) as err:
        Optimizer("adam", 0.01, constants={"beta1": 1.0})
    assert err.value.path == "optimizer.beta1"
    with pytest.raises(SpecError) as err:
        Optimizer("sgd", float("nan"))
    assert err.value.path == "optimizer.lr"
    with pytest.raises(SpecError) as err:
        Optimizer("lbfgs", constants={"history": True})
    assert err.value.path == "optimizer.history"


def test_spec_error_is_one_line_in_a_subprocess(tmp_path):
    """The real command: exit code 2 and one line, no traceback."""
    import subprocess
    import sys

    path = write_spec(tmp_path, 'type = "adam"\nbeta1 = 1.5')
    proc = subprocess.run([sys.executable, "-m", "derive", "explain", path], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [f"derive: error: {path}: optimizer.beta1: expected a number in [0, 1), got 1.5"]


def test_cli_override_keeps_spec_checks(tmp_path, capsys):
    """derive train --lr is checked like the spec's optimizer.lr."""
    path = write_spec(tmp_path, 'type = "sgd"')
    data = tmp_path / "d.csv"
    data.write_text("x0,x1,x2,x3,y0,y1\n1,2,3,4,5,6\n", encoding="utf-8")
    assert main(["train", path, "--data", str(data), "--lr", "-1", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--lr" in err and "expected a positive number, got -1.0" in err


def test_hyper_override_and_defaults(modules):
    """HYPER holds every constant with its default (torch.optim's); hyper= overrides at call time."""
    mod = modules(Optimizer("adam"))["numpy"]
    assert mod.HYPER == {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    shapes = mod.PARAM_SHAPES
    rng = np.random.default_rng(9)
    params = random_params(rng, shapes)
    grads = grad_sequence(rng, shapes, 3)
    other = modules(Optimizer("adam", 0.02, constants={"beta1": 0.5}))["numpy"]
    a = run_ours(mod, params, grads, {"lr": 0.02, "beta1": 0.5})
    b = run_ours(other, params, grads)
    for k in shapes:
        np.testing.assert_array_equal(a[-1][k], b[-1][k])

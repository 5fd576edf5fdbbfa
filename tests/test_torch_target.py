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
from derive.targets.torch_printer import TorchCodePrinter
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
    return mod.MODEL


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
    # a graph network's equivalent is a _TorchGraph (wired by the inputs each layer names), not a Sequential
    wrong = (torch.nn.Sequential(*list(seq)[:-1], torch.nn.Dropout()) if isinstance(seq, torch.nn.Sequential)
             else torch.nn.Sequential(*[m for m in seq.modules() if not list(m.children())][:-1], torch.nn.Dropout()))
    with pytest.raises(ValueError, match="expected the layers"):
        _class(mod).from_torch(wrong)


# activations and losses the examples do not use, a sum reduction, and a second derivative-free
# loss (zero-one: no gradient flows, every gradient is 0)
OTHER = [("prelu", "binary_cross_entropy", "mean"), ("leaky_relu", "l1", "sum"), ("softplus", "hinge", "mean"),
         ("sigmoid", "l2", "sum"), ("tanh", "zero_one", "mean")]


@pytest.mark.parametrize("act,loss,reduction", OTHER, ids=["-".join(o) for o in OTHER])
def test_other_activations_and_losses(act, loss, reduction):
    from derive import Linear, Loss, Network, Port

    net = Network(f"other_{act}_{loss}", [Linear(out=3, activation=act), Linear(out=1)],
                  input=Port("x", (2,)), loss=Loss(loss, reduction))
    with generated_modules(net, "<python>", targets=("torch",)) as mods:
        mod = mods["torch"]
        params, x, y, model, tx, ty = _draw(net, mod, 31, torch.float64)
        L = model.loss(tx, ty)
        if L.requires_grad:
            L.backward()
        else:
            assert loss == "zero_one"
        with torch.no_grad():
            yhat = model(tx)
        grads = {f"grad {k}": to_numpy(p.grad) if p.grad is not None else np.zeros(p.shape)
                 for k, p in model.named_parameters()}
        got = {"forward": to_numpy(yhat), "loss": np.float64(L.item()), **grads}
        assert_close_to_torch(net, got, params, x, y, 1e-10, net.name)
        with torch.no_grad():
            yhat_seq = model.to_torch()(tx)
        assert_close_to_torch(net, {**got, "forward": to_numpy(yhat_seq)}, params, x, y, 1e-10, f"{net.name} seq")
        p = [t.detach().requires_grad_(True) for t in model.params()]
        _opcheck(mod.value_and_grad_op, (p, tx, ty))


POOLS = [("max_pool2d", 3, 2, 1), ("max_pool2d", 2, None, 0), ("avg_pool2d", 3, 2, 1), ("avg_pool2d", 2, 1, 0)]


@pytest.mark.parametrize("kind,kernel,stride,padding", POOLS, ids=["-".join(map(str, p)) for p in POOLS])
def test_pooling(kind, kernel, stride, padding):
    """conv → pool → flatten → linear (overlapping and padded windows): both routes against the reference,
    the to_torch() Sequential (nn.MaxPool2d / nn.AvgPool2d(count_include_pad=True)), opcheck."""
    from derive import AvgPool2d, Conv2d, Flatten, Linear, Loss, MaxPool2d, Network, Port

    pool = {"max_pool2d": MaxPool2d, "avg_pool2d": AvgPool2d}[kind](kernel, stride, padding)
    net = Network(f"pool_{kind}", [Conv2d(filters=3, kernel=2, activation="tanh"), pool, Flatten(), Linear(out=3)],
                  input=Port("x", (2, 7, 7)), target=Port("y"), loss=Loss("cross_entropy"))
    with generated_modules(net, "<python>", targets=("torch",)) as mods:
        mod = mods["torch"]
        params, x, y, model, tx, ty = _draw(net, mod, 37, torch.float64)
        L = model.loss(tx, ty)
        L.backward()
        with torch.no_grad():
            yhat, yhat_seq = model(tx), model.to_torch()(tx)
        got = {"forward": to_numpy(yhat), "loss": np.float64(L.item()), **_grads(model)}
        assert_close_to_torch(net, got, params, x, y, 1e-10, f"{net.name} loss()")
        assert_close_to_torch(net, {**got, "forward": to_numpy(yhat_seq)}, params, x, y, 1e-10, f"{net.name} seq")
        model.zero_grad()
        L = _torch_loss(net, model(tx), ty)
        L.backward()
        assert_close_to_torch(net, {**got, **_grads(model)}, params, x, y, 1e-10, f"{net.name} forward()")
        p = [t.detach().requires_grad_(True) for t in model.params()]
        _opcheck(mod.value_and_grad_op, (p, tx, ty))
        _opcheck(mod.forward_op, (p, tx))


def test_relu_kink_and_int32_labels(modules):
    """relu'(0) = 0 as PyTorch's (pre-activations exactly 0), and int32 class indices are accepted."""
    net, mod = modules["mlp_softmax"]
    model = mod.MODEL(dtype=torch.float64)
    with torch.no_grad():
        model.W1.zero_()
        model.b1.zero_()  # a1 = 0 exactly: relu'(a1) = 0, so W1 and b1 get no gradient
    x = torch.randn(4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1], dtype=torch.int32)
    model.loss(x, y).backward()
    seq = model.to_torch()
    torch.nn.functional.cross_entropy(seq(x), y.long()).backward()
    assert torch.equal(model.W1.grad, torch.zeros_like(model.W1)) and torch.equal(seq[0].weight.grad, model.W1.grad)
    torch.testing.assert_close(model.W3.grad, seq[4].weight.grad, rtol=1e-12, atol=1e-15)



def _logits(classes):
    """Logits far from 0 (spread 30, rows shifted by ±1e4) and class indices, float64 NumPy."""
    rng = np.random.default_rng(classes)
    z = rng.normal(size=(7, classes)) * 30 + rng.choice([-1e4, 0, 1e4], size=(7, 1))
    return z, rng.integers(0, classes, size=7)


def _softmax64(z):
    shifted = np.exp(z - z.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("classes", [1, 3, 10, 15, 16, 40])
def test_cross_entropy_lines_against_float64(modules, classes):
    """The cross-entropy as the module prints it: the loss from the log-softmax it keeps, and derive's
    s·(softmax(z) − onehot(y)) from that log-softmax (a scatter, scaled in place), against float64
    NumPy, s a number and a 0-d tensor (the upstream gradient); the kept log-softmax is not overwritten."""
    _, mod = modules["mlp_softmax"]
    z, y = _logits(classes)
    yt = torch.as_tensor(y)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        zt = torch.tensor(z, dtype=dtype)
        zr = zt.double().numpy()  # the reference from the same (rounded) logits
        want_loss = np.mean(np.log(np.exp(zr - zr.max(axis=1, keepdims=True)).sum(axis=1)) + zr.max(axis=1)
                            - zr[np.arange(7), y])
        onehot = np.eye(classes)[y]
        value, (log_p,) = mod._loss_from((None, None, zt), yt)  # mlp_softmax keeps f1, f2, f3; ℓ reads f3
        np.testing.assert_allclose(value.item(), want_loss, rtol=tol)
        kept = log_p.clone()
        for s in (0.25, torch.tensor(0.25, dtype=dtype)):
            got = mod._softmax_minus_onehot(log_p, yt, s)
            np.testing.assert_allclose(got.double().numpy(), 0.25 * (_softmax64(zr) - onehot), rtol=tol, atol=tol)
        assert torch.equal(log_p, kept)


@pytest.mark.parametrize("classes", [1, 3, 10, 15, 16, 40])
def test_softmax_and_logsumexp_helpers(classes):
    """The printer's softmax (composed below 16 classes, torch.softmax from 16) and logsumexp helpers,
    for a Softmax or LogSumExp node outside the cross-entropy's pattern, against float64 NumPy, with
    logits far from 0, and ±inf rows as torch.logsumexp treats them."""
    helpers = {"torch": torch}
    exec(TorchCodePrinter().source("softmax") + "\n\n" + TorchCodePrinter().source("logsumexp"), helpers)
    z, _ = _logits(classes)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        zt = torch.tensor(z, dtype=dtype)
        zr = zt.double().numpy()
        want_lse = np.log(np.exp(zr - zr.max(axis=1, keepdims=True)).sum(axis=1)) + zr.max(axis=1)
        np.testing.assert_allclose(helpers["softmax"](zt).double().numpy(), _softmax64(zr), rtol=tol, atol=tol)
        np.testing.assert_allclose(helpers["logsumexp"](zt).double().numpy(), want_lse, rtol=tol)
    inf = float("inf")
    edge = torch.tensor([[inf, 1.0], [-inf, -inf], [-inf, 3.0], [float("nan"), 0.0]], dtype=torch.float64)
    torch.testing.assert_close(helpers["logsumexp"](edge), torch.logsumexp(edge, dim=1), equal_nan=True)
    torch.testing.assert_close(helpers["softmax"](edge[2:3]), torch.tensor([[0.0, 1.0]], dtype=torch.float64))


def test_relu_backward_in_place_only_over_its_own_tensor(tmp_path):
    """relu's backward writes over ∂L/∂f only where nothing else reads it: with relu on the top layer,
    ∂L/∂f_top is the caller's ∂L/∂ŷ (the _backward op's input), which must stay as it was, and the
    gradients equal torch.autograd's on the equivalent Sequential (float64)."""
    from derive import Linear, Loss, Network, Port

    net = Network("relu_top", layers=[Linear(out=5, activation="relu"), Linear(out=3, activation="relu")],
                  input=Port("x", (4,)), target=Port("y", (3,)), loss=Loss("l2", "mean"))
    with generated_modules(net, "<test>", targets=("torch",)) as mods:
        mod = mods["torch"]
        source = Path(mod.__file__).read_text(encoding="utf-8")
        vjp = source[source.index("def _backward_from"):source.index("def _triton")]
        assert "_relu_grad(dL_df2, f2, 0)" in vjp and "_relu_grad_(dL_df1, f1)" in vjp, vjp
        model = mod.MODEL(seed=3, dtype=torch.float64)
        x = torch.randn(6, 4, dtype=torch.float64)
        g = torch.randn(6, 3, dtype=torch.float64)
        g_before = g.clone()
        got = mod.backward_op([t.detach() for t in model.params()], x, g)
        assert torch.equal(g, g_before)
        seq = model.to_torch()
        seq(x).backward(g)
        held = [m for m in seq.modules() if next(m.parameters(recurse=False), None) is not None]
        for (n, (k, a)), t in zip(mod.TORCH_PARAMS.items(), got):
            torch.testing.assert_close(t, getattr(held[k], a).grad.reshape(t.shape), rtol=1e-12, atol=1e-14, msg=n)


def _opcheck(op, args):
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("example", IDS)
def test_opcheck_every_op(modules, example):
    net, mod = modules[example]
    _, _, _, model, tx, ty = _draw(net, mod, 11, torch.float64)
    p = [t.detach().requires_grad_(True) for t in model.params()]
    _opcheck(mod.forward_op, (p, tx))
    _opcheck(mod.loss_op, (p, tx, ty))
    _opcheck(mod.value_and_grad_op, (p, tx, ty))
    grad_yhat = torch.randn((BATCH, *mod.OUTPUT_SHAPE), dtype=torch.float64)
    _opcheck(mod.backward_op, ([t.detach() for t in p], tx, grad_yhat))  # no second derivative


@pytest.mark.parametrize("example", IDS)
def test_gradcheck_float64(modules, example):
    net, mod = modules[example]
    _, _, _, model, tx, ty = _draw(net, mod, 13, torch.float64)
    p = tuple(t.detach().requires_grad_(True) for t in model.params())
    fast = sum(t.numel() for t in p) > 2000  # lecture_convnet: 47k weights, a random projection instead
    assert torch.autograd.gradcheck(lambda *q: mod.value_and_grad_op(list(q), tx, ty)[0], p, fast_mode=fast)
    assert torch.autograd.gradcheck(lambda *q: mod.loss_op(list(q), tx, ty), p, fast_mode=fast)
    assert torch.autograd.gradcheck(lambda *q: mod.forward_op(list(q), tx), p, fast_mode=fast)


def test_ops_called_directly_match_the_reference(modules):
    """The ops themselves (what torch.compile sees), not only the module's eager path."""
    net, mod = modules["mlp_softmax"]
    params, x, y, model, tx, ty = _draw(net, mod, 17, torch.float64)
    p = [t.detach().requires_grad_(True) for t in model.params()]
    names = list(mod.PARAM_SHAPES)
    L = mod.value_and_grad_op(p, tx, ty)[0]
    L.backward()
    got = {"forward": to_numpy(mod.forward_op(p, tx)), "loss": np.float64(L.item())}
    got.update({f"grad {n}": to_numpy(t.grad) for n, t in zip(names, p)})
    assert_close_to_torch(net, got, params, x, y, 1e-10, "value_and_grad op")
    for t in p:
        t.grad = None
    L = _torch_loss(net, mod.forward_op(p, tx), ty)  # forward op, autograd through the _backward op
    L.backward()
    got.update({f"grad {n}": to_numpy(t.grad) for n, t in zip(names, p)})
    assert_close_to_torch(net, got, params, x, y, 1e-10, "forward op")
    for t in p:
        t.grad = None
    L = mod.loss_op(p, tx, ty)
    L.backward()
    got.update({"loss": np.float64(L.item()), **{f"grad {n}": to_numpy(t.grad) for n, t in zip(names, p)}})
    assert_close_to_torch(net, got, params, x, y, 1e-10, "loss op")


def test_torch_compile_fullgraph_training_step(modules):
    """torch.compile(fullgraph=True) of the loss (forward, derive's ops, AOTAutograd's backward graph),
    then backward() and a torch.optim step: every step equals the eager module's to float32 rounding.
    (torch.optim's step graph-breaks by design under torch.compile, so it runs eagerly.)"""
    net, mod = modules["mlp_softmax"]
    _, _, _, eager, tx, ty = _draw(net, mod, 19, torch.float32)
    model = mod.MODEL()
    model.load_state_dict(eager.state_dict())
    graphs = []

    def recording(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    traced = torch.compile(model, fullgraph=True, backend=recording)
    traced(tx, ty).backward()
    called = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert len(graphs) == 1 and f"derive.{mod.OPS}_value_and_grad.default" in called, called
    model.zero_grad()

    step = torch.compile(lambda x, y: model(x, y), fullgraph=True)  # inductor
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (model, eager)]
    for _ in range(3):
        for opt in opts:
            opt.zero_grad()
        L_compiled = step(tx, ty)
        L_compiled.backward()
        L_eager = eager.loss(tx, ty)
        L_eager.backward()
        torch.testing.assert_close(L_compiled, L_eager, rtol=1e-6, atol=0)
        for (n, a), b in zip(model.named_parameters(), eager.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=n)
        for opt in opts:
            opt.step()


@pytest.mark.parametrize("example", ["mlp_softmax", "iris_mlp"])
def test_torch_optim_trains_it_as_it_trains_the_sequential(modules, example):
    """Adam on the module and on its to_torch() twin (torch.autograd), float64: the same trajectory,
    and the loss falls."""
    net, mod = modules[example]
    _, _, _, model, tx, ty = _draw(net, mod, 23, torch.float64)
    seq = model.to_torch()
    opt_a = torch.optim.Adam(model.parameters(), lr=0.05)
    opt_b = torch.optim.Adam(seq.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        opt_a.zero_grad()
        opt_b.zero_grad()
        L = model.loss(tx, ty)
        L.backward()
        _torch_loss(net, seq(tx), ty).backward()
        opt_a.step()
        opt_b.step()
        losses.append(L.item())
    twin = mod.MODEL.from_torch(seq)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, twin.state_dict()[k], rtol=1e-9, atol=1e-12, msg=k)
    assert losses[-1] < 0.8 * losses[0], losses


def test_state_dict_round_trips(modules, tmp_path):
    net, mod = modules["lecture_convnet"]
    _, _, _, model, tx, _ = _draw(net, mod, 29, torch.float64)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == list(mod.PARAM_SHAPES.items())
    torch.save(model.state_dict(), tmp_path / "w.pt")
    other = mod.MODEL(seed=1, dtype=torch.float64)
    assert not torch.equal(other.W1, model.W1)
    other.load_state_dict(torch.load(tmp_path / "w.pt"))
    with torch.no_grad():
        assert torch.equal(other(tx), model(tx))
    buf = io.BytesIO()
    torch.save(model, buf)  # the whole module pickles by reference to its class
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    with torch.no_grad():
        assert torch.equal(again(tx), model(tx))


def test_init_values_are_the_numpy_modules(modules):
    net, mod = modules["iris_mlp"]
    with generated_modules(net, "examples/iris_mlp.toml", targets=("numpy",)) as mods:
        want = mods["numpy"].init_params(seed=5)
    model = mod.MODEL(seed=5, dtype=torch.float64)
    for k, v in want.items():
        assert np.array_equal(to_numpy(getattr(model, k)), v), k


def test_reimport_reuses_the_ops_and_a_changed_network_gets_new_ones(tmp_path):
    spec = ROOT / "examples" / "perceptron.toml"
    text = codegen.generate(load_spec(spec), "examples/perceptron.toml", ("torch",))["perceptron_torch.py"]
    (tmp_path / "a.py").write_text(text)
    (tmp_path / "b.py").write_text(text)
    a = import_file(tmp_path / "a.py", "_derive_test_reimport_a")
    b = import_file(tmp_path / "b.py", "_derive_test_reimport_b")  # same code: no "already registered"
    assert a.OPS == b.OPS and a.value_and_grad_op is b.value_and_grad_op
    changed = spec.read_text().replace('type = "l2"', 'type = "l1"')
    (tmp_path / "perceptron.toml").write_text(changed)
    c_text = codegen.generate(load_spec(tmp_path / "perceptron.toml"), "p.toml", ("torch",))["perceptron_torch.py"]
    (tmp_path / "c.py").write_text(c_text)
    c = import_file(tmp_path / "c.py", "_derive_test_reimport_c")
    assert c.NAME == a.NAME and c.OPS != a.OPS  # the l1 network does not run the l2 network's code
    x = torch.tensor([1.0, 2.0])
    y = torch.tensor([0.0, 5.0])
    m_a, m_c = a.MODEL(), c.MODEL()
    m_c.load_state_dict(m_a.state_dict())
    w = float(m_a.w.detach())
    assert m_a.loss(x, y).item() == pytest.approx(np.mean(0.5 * (np.array([0.0, 5.0]) - w * np.array([1.0, 2.0])) ** 2))
    assert m_c.loss(x, y).item() == pytest.approx(np.mean(np.abs(np.array([0.0, 5.0]) - w * np.array([1.0, 2.0]))))
    for name in ("a", "b", "c"):
        sys.modules.pop(f"_derive_test_reimport_{name}", None)


def test_bad_calls_raise_clear_errors(modules):
    net, mod = modules["mlp_softmax"]
    model = mod.MODEL()
    with pytest.raises(ValueError, match="no gradient for the input x"):
        model(torch.randn(3, 4, requires_grad=True))
    with pytest.raises(ValueError, match="empty batch"):
        model.loss(torch.randn(0, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(TypeError, match="one dtype"):
        model(torch.randn(3, 4, dtype=torch.float64))
    x, y = torch.randn(3, 4), torch.tensor([0, 2, 1])
    with pytest.raises(TypeError, match=r"^mlp_softmax: y holds class indices and must be an integer tensor \(int64\), "
                                        r"got torch.float32$"):
        model.loss(x, y.float())  # a float label would be truncated, or index with garbage
    with pytest.raises(TypeError, match="y holds class indices"):
        model(x, y.bool())
    with pytest.raises(ValueError, match=r"^mlp_softmax: x must have shape \(batch, 4\), got \(3, 5\)$"):
        model(torch.randn(3, 5))  # not torch's "mat1 and mat2 shapes cannot be multiplied"
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 4\), got \(3, 4, 1\)"):
        model.loss(torch.randn(3, 4, 1), y)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 4\), got \(4,\)"):
        with torch.no_grad():
            model(torch.randn(4))  # one sample without its batch axis
    with pytest.raises(ValueError, match=r"^mlp_softmax: y must have shape \(3,\) \(x's batch of 3\), got \(2,\)$"):
        model.loss(x, y[:2])
    p = [t.detach() for t in model.params()]
    with pytest.raises(TypeError, match=r"expected 6 parameters \(W1, b1, W2, b2, W3, b3\), got 5"):
        mod.value_and_grad_op(p[:5], x, y)
    with pytest.raises(TypeError, match="y holds class indices and must be int64, got torch.int32"):
        mod.loss_op(p, x, y.int())  # the ops take int64; the module converts other integer dtypes
    with pytest.raises(ValueError, match=r"parameter W2 must have shape \(8, 16\), got \(16, 8\)"):
        mod.forward_op([*p[:2], p[2].T, *p[3:]], x)
    _, reg = modules["linear_regression"]
    r = reg.MODEL()
    with pytest.raises(ValueError, match=r"linear_regression: x must have shape"):
        r.loss(torch.randn(3, 7), torch.randn(3))
    _, lc = modules["locally_connected"]
    with pytest.raises(ValueError, match="locally_connected"):
        lc.MODEL.from_torch(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="expected the layers"):
        mod.MODEL.from_torch(torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh()))


def test_input_checks_under_torch_compile(modules):
    """The checks read static shapes and dtypes: a compiled module keeps one graph over batch sizes,
    and a bad call under torch.compile fails with derive's message inside torch's compile error."""
    net, mod = modules["mlp_softmax"]
    model = mod.MODEL()
    graphs = []

    def recording(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    step = torch.compile(model, fullgraph=True, backend=recording, dynamic=True)
    for batch in (3, 5, 8):
        x, y = torch.randn(batch, 4), torch.randint(0, 3, (batch,))
        torch.testing.assert_close(step(x, y), model.loss(x, y))
    assert len(graphs) == 1
    with pytest.raises(Exception, match=r"y holds class indices and must be an integer tensor"):
        step(x, y.float())
    with pytest.raises(Exception, match=r"x must have shape \(batch, 4\)"):
        step(torch.randn(3, 5), y[:3])


def _fused_route_matches(net, mod, device, what):
    """loss() (the fused kernel: value and gradients in one launch) and ŷ, float32 at 1e-4."""
    params, x, y, model, tx, ty = _draw(net, mod, 41, torch.float32)
    model = model.to(device)
    tx, ty = tx.to(device), ty.to(device)
    L = model.loss(tx, ty)
    L.backward()
    with torch.no_grad():
        yhat = model(tx)
    got = {"forward": to_numpy(yhat), "loss": np.float64(L.item()), **_grads(model)}
    assert_close_to_torch(net, got, params, x, y, 1e-4, what, True)
    p = [t.detach().requires_grad_(True) for t in model.params()]
    value, *grads = mod.value_and_grad_op(p, tx, ty)
    torch.testing.assert_close(value, L.detach(), rtol=1e-6, atol=0)
    return model, p, tx, ty


def test_fused_triton_route_under_the_interpreter(monkeypatch, triton_device_name):
    """The CUDA wiring (the sibling <name>_triton.py, its launch contract) on CPU tensors: the fused
    route forced on for float32 while Triton runs under its interpreter (tests/conftest.py)."""
    if triton_device_name != "cpu":
        pytest.skip("a GPU is present: test_cuda_path covers this")
    spec = ROOT / "examples" / "mlp_softmax.toml"
    net = load_spec(spec)
    with generated_modules(net, "examples/mlp_softmax.toml", targets=("triton", "torch")) as mods:
        mod = mods["torch"]
        launched = []
        real = mod._triton_run
        monkeypatch.setattr(mod, "_fused", lambda x: x.dtype == torch.float32)
        monkeypatch.setattr(mod, "_triton_run", lambda *a, **k: launched.append(k) or real(*a, **k))
        _fused_route_matches(net, mod, "cpu", "fused route (interpreter)")
        assert {"loss": True, "grad": True} in launched and {"out": True} in launched, launched


@pytest.mark.gpu
@pytest.mark.parametrize("example", IDS)
def test_cuda_path(example):
    """On CUDA, float32: loss() and the ops launch the fused Triton kernel; ŷ's backward runs the
    torch-native lines on the GPU; opcheck on the device."""
    net = load_spec(ROOT / "examples" / f"{example}.toml")
    with generated_modules(net, f"examples/{example}.toml", targets=("triton", "torch")) as mods:
        mod = mods["torch"]
        model, p, tx, ty = _fused_route_matches(net, mod, "cuda", f"{example} cuda")
        params, x, y, _, _, _ = _draw(net, mod, 41, torch.float32)
        model.zero_grad()
        _torch_loss(net, model(tx), ty).backward()
        got = {"forward": to_numpy(model(tx).detach()), "loss": np.float64(_torch_loss(net, model(tx), ty).item()),
               **_grads(model)}
        assert_close_to_torch(net, got, params, x, y, 1e-4, f"{example} cuda forward()", True)
        _opcheck(mod.value_and_grad_op, (p, tx, ty))
        _opcheck(mod.forward_op, (p, tx))

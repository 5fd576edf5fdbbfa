"""Proof that the first divergence pinpoints: one line of a freshly generated module is edited
(a forward line, a δ rule, a local partial, a weight or bias gradient, the loss gradient, a Triton
load), and the reported first divergence must be the edited quantity or the one right after it,
for every layer kind in examples/ (linear scalar and vector, conv2d, locally_connected, flatten),
and max and average pooling (in a spec written here: no example has them).

The Triton module's intermediates() expose every named per-sample quantity (the fused dense module)
or the buffers its kernels keep (a per-layer module), so there too the report must name the edited
quantity or the one right after it; a module generated without intermediates() is held to the first
of ŷ and the parameter gradients that the edited line feeds.
"""

from __future__ import annotations

import re

import pytest

from derive import load_spec
from derive.targets import codegen
from derive.targets.modules import import_file
from derive.verify.divergence import order
from derive.verify.checks import verify_modules

from helpers import ROOT

# (example, target, the line's text, its replacement, the quantity the line computes)
NUMPY = [
    ("lecture", "a2 = w2*f1", "a2 = 1.01*w2*f1", "a2"),
    ("lecture", "delta2 = dL_df2*f2*(1 - f2)", "delta2 = dL_df2*f2*(1 + f2)", "delta2"),
    ("lecture", "dL_df2 = delta3*w3", "dL_df2 = delta3*w2", "dL_df2"),
    ("lecture", "dL_dw2 = np.sum(delta2*f1, axis=0)", "dL_dw2 = np.sum(delta2*f2, axis=0)", "dL_dw2"),
    ("lecture", "dL_db1 = np.sum(delta1, axis=0)", "dL_db1 = np.mean(delta1, axis=0)", "dL_db1"),
    ("lecture", "dL_df3 = -_scale*(y - f3)", "dL_df3 = -(y - f3)", "dL_df3"),
    ("iris_mlp", "delta1 = dL_df1*(1 - f1**2)", "delta1 = dL_df1*(1 - f1)", "delta1"),
    ("iris_mlp", "dL_dW1 = (delta1.T @ x)", "dL_dW1 = (delta1.T @ x[::-1])", "dL_dW1"),
    ("iris_mlp", "dL_df1 = (delta2 @ W2)", "dL_df1 = (delta2 @ W2[::-1])", "dL_df1"),
    ("iris_mlp", "a1 = (x @ W1.T) + b1", "a1 = (x @ W1.T[::-1]) + b1", "a1"),
    # conv2d and flatten
    ("lecture_convnet", "delta1 = dL_df1*(a1 > 0)", "delta1 = dL_df1*(a1 > 0.05)", "delta1"),
    ("lecture_convnet", '"boij,bcijpq->ocpq", delta1, windows(x, 5, 5, 1, 1)',
     '"boij,bcijqp->ocpq", delta1, windows(x, 5, 5, 1, 1)', "dL_dW1"),
    ("lecture_convnet", "dL_db1 = np.sum(delta1, axis=(0, 2, 3))", "dL_db1 = np.sum(delta1[:, :, 1:], axis=(0, 2, 3))",
     "dL_db1"),
    ("lecture_convnet", "dL_df1 = dL_df2.reshape(-1, 6, 28, 28)",
     "dL_df1 = dL_df2.reshape(-1, 28, 28, 6).transpose(0, 3, 1, 2)", "dL_df1"),
    ("lecture_convnet", "f2 = f1.reshape(f1.shape[0], -1)", "f2 = f1.transpose(0, 1, 3, 2).reshape(f1.shape[0], -1)",
     "f2"),
    ("lecture_convnet", '"bcijpq,ocpq->boij", windows(x, 5, 5, 1, 1), W1)', '"bcijpq,ocqp->boij", windows(x, 5, 5, 1, 1), W1)',
     "a1"),
    # locally connected, padding, stride
    ("locally_connected", "delta2 = dL_df2*f2*(1 - f2)", "delta2 = dL_df2*(1 - f2)", "delta2"),
    ("locally_connected", '"boij,bcijpq->oijcpq"', '"boij,bcjipq->oijcpq"', "dL_dW2"),
    ("locally_connected", "dL_db2 = np.sum(delta2, axis=0)", "dL_db2 = np.sum(delta2[::-1], axis=1)[:, None]", "dL_db2"),
    ("locally_connected", "dL_df1 = dL_df1_pad[:, :, 1:-1, 1:-1]", "dL_df1 = dL_df1_pad[:, :, 2:, 2:]", "dL_df1"),
    ("locally_connected", "local_input_grad(delta2, W2, 2, (11, 11))", "local_input_grad(delta2, 0.9*W2, 2, (11, 11))",
     "dL_df1_pad"),
    ("locally_connected", "f1_pad = np.pad(f1, ((0, 0), (0, 0), (1, 1), (1, 1)))",
     "f1_pad = np.pad(f1, ((0, 0), (0, 0), (2, 0), (1, 1)))", "f1_pad"),
    ("locally_connected", '"bcijpq,oijcpq->boij", windows(f1_pad, 3, 2, 2, 2), W2)',
     '"bcijpq,oijcpq->boij", windows(f1_pad, 3, 2, 2, 2), W2[:, ::-1])', "a2"),
    # max and average pooling (no example has them: POOL_SPEC below, written as a spec is)
    ("pool_net", "f2 = max_pool2d(f1, 2, 2, 2, 2, 0)", "f2 = 0.9*max_pool2d(f1, 2, 2, 2, 2, 0)", "f2"),
    ("pool_net", "f3 = avg_pool2d(f2, 2, 2, 2, 2, 1)", "f3 = avg_pool2d(f2[:, ::-1], 2, 2, 2, 2, 1)", "f3"),
    ("pool_net", "dL_df2 = avg_pool2d_grad(dL_df3, f2, 2, 2, 2, 2, 1)",
     "dL_df2 = 2*avg_pool2d_grad(dL_df3, f2, 2, 2, 2, 2, 1)", "dL_df2"),
    ("pool_net", "dL_df1 = max_pool2d_grad(dL_df2, f1, 2, 2, 2, 2, 0)",
     "dL_df1 = max_pool2d_grad(dL_df2, -f1, 2, 2, 2, 2, 0)", "dL_df1"),
]

# A conv layer under max pooling, then padded average pooling, flatten and a linear layer.
POOL_SPEC = """name = "pool_net"
[input]
name = "x"
shape = [2, 6, 6]
[target]
name = "y"
shape = []
[[layers]]
type = "conv2d"
filters = 2
kernel = 3
padding = 1
activation = "relu"
[[layers]]
type = "max_pool2d"
kernel = 2
[[layers]]
type = "avg_pool2d"
kernel = 2
padding = 1
[[layers]]
type = "flatten"
[[layers]]
type = "linear"
out = 3
[loss]
type = "cross_entropy"
"""

TRITON = [
    # (example, line, replacement, the quantity the edited load feeds)
    ("lecture", "w2 = tl.load(w2_ptr)", "w2 = 1.5*tl.load(w2_ptr)", "a2"),
    # the backward section reads the target again (the loss section has its own read)
    ("lecture", "(ptxas spilled it)\n            y = tl.load(y_ptr + _rows, mask=_row_mask, other=0.0)",
     "(ptxas spilled it)\n            y = 0.5*tl.load(y_ptr + _rows, mask=_row_mask, other=0.0)", "dL_df3"),
    # a dense network on chip holds its bias in a register tile, loaded once a program
    ("mlp_softmax", "a3 = b3 + tl.sum(", "a3 = (b3 + 0.01) + tl.sum(", "a3"),
    # a wrong local partial in the backward pass: intermediates() names δ2 itself, not the gradient below it
    ("lecture", "delta2 = dL_df2*f2*(1 - f2)", "delta2 = dL_df2*f2*(1 + f2)", "delta2"),
    # a per-layer (volume) module (POOL_SPEC above): f1 is kept between its kernels, so intermediates() names it
    # (a1 is not: relu′ is read from f1, so a1 never leaves its kernel and nothing is compared before f1)
    ("pool_net", "f1 = tl.maximum(a1, 0.0)  #", "f1 = 1.01*tl.maximum(a1, 0.0)  #", "f1"),
]


def _mutated(example, target, old, new, tmp_path):
    spec = ROOT / "examples" / f"{example}.toml"
    if example == "pool_net":
        spec = tmp_path / "pool_net.toml"
        spec.write_text(POOL_SPEC, encoding="utf-8")
    net = load_spec(spec)
    targets = ("numpy", "triton") if target == "triton" else ("numpy",)
    files = codegen.generate(net, f"examples/{example}.toml", targets)
    mods = {}
    for t in targets:
        text = files[f"{net.name}_{t}.py"]
        if t == target:
            assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {net.name}_{t}.py"
            text = text.replace(old, new)
        path = tmp_path / f"{net.name}_{t}.py"
        path.write_text(text, encoding="utf-8")
        mods[t] = import_file(path, f"_mutant_{tmp_path.name}_{t}")
    return net, mods


def _allowed(net, edited: str) -> list[str]:
    names = [q.name for q in order(net)]
    i = names.index(edited)
    return names[i:i + 2]


@pytest.mark.parametrize("example, old, new, edited", NUMPY, ids=[f"{e}-{q}" for e, _, _, q in NUMPY])
def test_numpy_mutation_is_localised(example, old, new, edited, tmp_path):
    net, mods = _mutated(example, "numpy", old, new, tmp_path)
    report = verify_modules(net, mods, seeds=1, seed=0, batch_sizes=(3,), groups=("numpy",))
    assert not report.ok, "the mutation went unnoticed by the gradient checks"
    d = report.divergence
    assert d is not None and d.target == "numpy"
    assert d.quantity in _allowed(net, edited), d.line()
    names = [q.name for q in order(net)]
    assert d.agree == names[:names.index(d.quantity)]  # every quantity before it, in order, agrees
    assert d.rel_err > d.tolerance
    assert re.match(rf"first divergence: {d.quantity}\b.* at layer {d.layer}: rel err ", d.line()), d.line()


@pytest.mark.parametrize("example, old, new, edited", TRITON, ids=[f"{e}-{q}" for e, _, _, q in TRITON])
def test_triton_mutation_is_localised(example, old, new, edited, tmp_path, triton_device_name):
    net, mods = _mutated(example, "triton", old, new, tmp_path)
    report = verify_modules(net, mods, seeds=1, seed=0, batch_sizes=(3,), groups=("triton",))
    assert not report.ok
    d = report.divergence
    assert d is not None and d.target == "triton", d and d.line()
    names = [q.name for q in order(net)]
    if hasattr(mods["triton"], "intermediates"):
        allowed = _allowed(net, edited)
        before = names[:names.index(d.quantity)]
        if hasattr(mods["triton"], "INTER_LAYOUT"):  # the fused module keeps every per-sample quantity
            assert d.agree == before  # every quantity before it was compared, and agrees
        else:  # a per-layer module keeps what its kernels store: every kept quantity before it agrees, in order
            import torch

            params = {k: torch.as_tensor(v, dtype=torch.float32)
                      for k, v in mods["numpy"].init_params(0).items()}
            x = torch.randn(3, *net.input.shape, generator=torch.Generator().manual_seed(0))
            y = (torch.zeros(3, dtype=torch.int64) if net.loss.type == "cross_entropy"
                 else torch.zeros(3, *net.target.shape))
            kept = mods["triton"].intermediates(params, x, y)
            assert d.quantity in kept
            assert d.agree == [n for n in before if n in kept]
    else:  # only ŷ and the parameter gradients are visible: the first of them at or after the edit
        visible = {f"f{net.info[-1].index}"} | {f"dL_d{p.name}" for p in net.params}
        allowed = [next(n for n in names[names.index(edited):] if n in visible)]
        assert "no intermediates()" in d.line()
    assert d.quantity in allowed, d.line()

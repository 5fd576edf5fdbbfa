"""max_pool2d and avg_pool2d: spec keys, the derivation's rules, and the generated NumPy module against
torch.autograd (F.max_pool2d / F.avg_pool2d with count_include_pad=True) and finite differences.

The generated Triton module (float32, under the interpreter or on CUDA) is checked against the same
torch.autograd float64 reference, in sentinel-padded buffers, including padding and a max-pool tie case.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from derive import Conv2d, Flatten, Linear, Loss, Network, Port, derive
from derive.errors import SpecError
from derive.explain import to_text
from derive.network import AvgPool2d, MaxPool2d
from derive.spec import parse_spec
from derive.targets.modules import generated_modules
from derive.verify import sample
from derive.verify.checks import _Collector, _fd_check

from helpers import assert_close_to_torch, assert_matches_torch, random_params, triton_inputs, triton_outputs

KINDS = ("max_pool2d", "avg_pool2d")
POOL = {"max_pool2d": MaxPool2d, "avg_pool2d": AvgPool2d}


def pooled_net(kind: str, kernel=2, stride=None, padding=0, conv=True, activation="tanh", shape=(2, 7, 7)):
    """[conv →] pool → flatten → linear: the pooling's upstream gradient is checked through the conv below it."""
    layers = [Conv2d(filters=3, kernel=2, activation=activation)] if conv else []
    layers += [POOL[kind](kernel, stride, padding), Flatten(), Linear(out=3)]
    return Network(f"pool_{kind}", layers, input=Port("x", shape), target=Port("y"), loss=Loss("cross_entropy"))


def check_against_torch(net, seed=0, batch=4, x=None, params=None):
    rng = np.random.default_rng(seed)
    with generated_modules(net, "<test>", targets=("numpy",)) as mods:
        npm = mods["numpy"]
        params = params if params is not None else random_params(npm, rng)
        xs, y = sample(net, rng, batch)
        # float64 at 1e-10: the same math evaluated twice, only rounding differs
        return assert_matches_torch(net, npm, params, xs if x is None else x, y, 1e-10, net.name), npm, params


# ----------------------------------------------------------------------------- spec


def test_toml_keys_and_defaults():
    base = {"name": "p", "input": {"shape": [1, 6, 6]}, "loss": {"type": "cross_entropy"}}
    tail = [{"type": "flatten"}, {"type": "linear", "out": 2}]
    net = parse_spec({**base, "layers": [{"type": "max_pool2d", "kernel": [2, 3]}, *tail]})
    pool = net.info[0]
    assert (pool.kernel, pool.stride, pool.padding, pool.out_shape) == ((2, 3), (2, 3), 0, (1, 3, 2))
    net = parse_spec({**base, "layers": [{"type": "avg_pool2d", "kernel": 3, "stride": 1, "padding": 1}, *tail]})
    assert net.info[0].out_shape == (1, 6, 6) and not net.params[:-2]  # no parameters of its own


@pytest.mark.parametrize("layer,key,message", [
    ({"type": "max_pool2d"}, "kernel", "missing required key"),
    ({"type": "max_pool2d", "kernel": 2, "activation": "relu"}, "activation", "unknown key"),
    ({"type": "avg_pool2d", "kernel": 2, "padding": 2}, "padding", "at most half the kernel"),
    ({"type": "max_pool2d", "kernel": 9}, "kernel", "no larger than the padded input"),
    ({"type": "max_pool2d", "kernel": 2, "stride": [1, 0]}, "stride", "positive strides"),
    ({"type": "avg_pool2d", "kernel": [2, 2, 2]}, "kernel", "[kh, kw]"),
])
def test_bad_pool_keys(layer, key, message):
    spec = {"name": "p", "input": {"shape": [1, 6, 6]}, "loss": {"type": "cross_entropy"},
            "layers": [layer, {"type": "flatten"}, {"type": "linear", "out": 2}]}
    with pytest.raises(SpecError) as info:
        parse_spec(spec, source="s.toml")
    assert info.value.path == f"layers[0].{key}" and message in info.value.message


def test_pool_needs_a_volume():
    with pytest.raises(SpecError, match=r"layers\[1\].type: expected a \[c, h, w\] volume as the input of max_pool2d"):
        Network("p", [Linear(out=4), MaxPool2d(2)], input=Port("x", (4,)))


# ----------------------------------------------------------------------------- derivation and explain


def test_explain_shows_the_routing_rules():
    text = to_text(derive(pooled_net("max_pool2d")))
    assert "f2[c, i, j] = max_{p,q} f1[c, 2·i + p, 2·j + q]" in text
    assert "1[(h − 2·i, w − 2·j) = argmax]" in text  # explain's text writes one minus sign, U+2212
    text = to_text(derive(pooled_net("avg_pool2d", kernel=3, stride=1)))
    assert "f2[c, i, j] = Σ_{p,q} f1[c, i + p, j + q]/9" in text
    assert "∂L/∂f1[c, h, w] = Σ_{i,j} ∂L/∂f2[c, i, j]·1/9·[0 ≤ h − i ≤ 2]·[0 ≤ w − j ≤ 2]" in text


def test_avg_pool_gradient_is_sympy_diff_of_its_definition():
    """The engine's contraction against sympy.diff of the explicit window sum, at one input position."""
    import sympy as sp

    net = pooled_net("avg_pool2d", kernel=2, stride=1, conv=True)
    der = derive(net)
    g = der.step("dL_df1")  # ∂L/∂f1[c, h, w] as an index rule
    f1, up = sp.IndexedBase("f1", real=True), sp.IndexedBase("dL_df2", real=True)
    c0, h0, w0 = 1, 2, 3
    _, oh, ow = net.info[1].out_shape
    # L depends on f1 only through f2[c,i,j] = (f1[c,i,j] + f1[c,i,j+1] + f1[c,i+1,j] + f1[c,i+1,j+1])/4
    direct = sum(up[c0, i, j] * sp.diff((f1[c0, i, j] + f1[c0, i, j + 1] + f1[c0, i + 1, j] + f1[c0, i + 1, j + 1]) / 4,
                                        f1[c0, h0, w0]) for i in range(oh) for j in range(ow))
    c, h, w = sp.symbols("c h w", integer=True)
    from derive.indices import InRange

    rule = g.rhs.xreplace({c: c0, h: h0, w: w0}).doit()
    rule = rule.replace(lambda e: isinstance(e, InRange), lambda e: sp.S.One if e.args[1] <= e.args[0] <= e.args[2] else sp.S.Zero)
    assert sp.simplify(rule - direct) == 0


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 1, 1), (3, 2, 1), ((2, 3), (1, 2), 0)])
def test_numpy_matches_torch(kind, kernel, stride, padding):
    check_against_torch(pooled_net(kind, kernel, stride, padding))


@pytest.mark.parametrize("kind", KINDS)
def test_pool_as_the_first_layer(kind):
    check_against_torch(pooled_net(kind, 3, 2, 1, conv=False))


def test_what_the_input_alone_computes_gets_no_gradient():
    """pool(x) and flatten(pool(x)) are functions of the input alone, as x is: no ∂L/∂θ lies below them, so
    the derivation stops at the first layer with parameters (the lecture's chain has no ∂L/∂x either),
    where before it computed ∂L/∂f2 = δ3·W3 and threw it away.  With a convolution below they are kept."""
    steps = [s.name for s in derive(pooled_net("max_pool2d", 3, 2, 1, conv=False)).backward]
    assert steps == ["dL_df3", "delta3", "dL_dW3", "dL_db3"]
    steps = [s.name for s in derive(pooled_net("max_pool2d")).backward]
    assert {"dL_df3", "dL_df2", "dL_df1", "delta1", "dL_dW1"} <= set(steps)


def test_max_pool_ties_go_to_the_first_maximum():
    """With W = 0 every window of the conv's output ties (all equal b); the routing then decides ∂L/∂W,
    since each window position saw a different input.  torch routes to the first maximum, row-major."""
    net = pooled_net("max_pool2d", activation="identity")
    with generated_modules(net, "<test>", targets=("numpy",)) as mods:
        params = mods["numpy"].init_params(seed=3)
    params = {k: (np.zeros_like(v) if k == "W1" else v) for k, v in params.items()}
    errs, _, _ = check_against_torch(net, params=params)
    assert errs["grad W1"] <= 1e-10


def test_finite_differences_of_avg_pool():
    """Central differences in extended precision (derive verify's own check) on a smooth pooled net."""
    net = pooled_net("avg_pool2d", 3, 1, 1)
    rng = np.random.default_rng(5)
    with generated_modules(net, "<test>", targets=("numpy",)) as mods:
        npm = mods["numpy"]
        params = random_params(npm, rng)
        x, y = sample(net, rng, 3)
        col = _Collector()
        _fd_check(col, npm, params, x, y, npm.gradients(params, x, y), rng)
    checks = col.checks()
    assert checks and all(c.ok for c in checks), [(c.quantity, c.max_rel_err) for c in checks]


@settings(max_examples=12, deadline=None)
@given(kind=st.sampled_from(KINDS), k=st.integers(1, 3), s=st.integers(1, 3), pad=st.integers(0, 1),
       size=st.integers(5, 8), seed=st.integers(0, 2**16))
def test_random_geometry_against_torch(kind, k, s, pad, size, seed):
    if 2 * pad > k:
        pad = 0
    check_against_torch(pooled_net(kind, k, s, pad, shape=(2, size, size)), seed=seed, batch=2)


def test_empty_batch_is_a_value_error():
    net = pooled_net("max_pool2d")
    with generated_modules(net, "<test>", targets=("numpy",)) as mods:
        npm = mods["numpy"]
        with pytest.raises(ValueError, match="empty batch"):
            npm.gradients(npm.init_params(), np.zeros((0, 2, 7, 7)), np.zeros(0, dtype=np.int64))


# ----------------------------------------------------------------------------- the Triton module


def check_triton_against_torch(net, device, seed=0, batch=3, params=None, block_b=None):
    """Triton float32 in sentinel-padded buffers against torch.autograd float64 at the same values (1e-4:
    float32 over window sums and a batch sum, the tolerance of every Triton test)."""
    rng = np.random.default_rng(seed)
    with generated_modules(net, "<test>", targets=("numpy", "triton")) as mods:
        params = params if params is not None else random_params(mods["numpy"], rng)
        x, y = sample(net, rng, batch)
        tp, tx, ty = triton_inputs(net, params, x, y, device)
        got = triton_outputs(mods["triton"], tp, tx, ty, net=net, block_b=block_b)
        return assert_close_to_torch(net, got, tp, tx, ty, 1e-4, f"{net.name} triton", float32=True), mods, tp, tx, ty


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 2, 1), ((2, 3), (1, 2), 0)])
def test_triton_matches_torch(kind, kernel, stride, padding, triton_device_name):
    check_triton_against_torch(pooled_net(kind, kernel, stride, padding), triton_device_name, block_b=16 if padding else None)


@pytest.mark.parametrize("kind", KINDS)
def test_triton_pool_as_the_first_layer(kind, triton_device_name):
    check_triton_against_torch(pooled_net(kind, 3, 1, 1, conv=False), triton_device_name, batch=2)


@pytest.mark.parametrize("kind", KINDS)
def test_triton_with_the_cuda_tiles(kind, triton_device_name, monkeypatch):
    """The column tiles CUDA uses (64 wide, 32 for the max-pooling gather), several per row, on the CPU too."""
    net = pooled_net(kind, 3, 1, 1, shape=(2, 10, 9))  # 3×9×8 = 216 conv outputs, 3×9×8 pooled: 4 to 7 tiles a row
    rng = np.random.default_rng(7)
    with generated_modules(net, "<test>", targets=("numpy", "triton")) as mods:
        monkeypatch.setattr(mods["triton"], "CPU_WIDE_TILES", False)
        x, y = sample(net, rng, 3)
        tp, tx, ty = triton_inputs(net, random_params(mods["numpy"], rng), x, y, triton_device_name)
        got = triton_outputs(mods["triton"], tp, tx, ty, net=net)
        assert_close_to_torch(net, got, tp, tx, ty, 1e-4, f"{net.name} triton, CUDA tiles", float32=True)


def test_triton_max_pool_ties_go_to_the_first_maximum(triton_device_name):
    """W1 = 0: every window ties, in float32 too; ∂L/∂W1 is right only if each tie goes to the first maximum."""
    net = pooled_net("max_pool2d", kernel=3, stride=2, padding=1, activation="identity")
    with generated_modules(net, "<test>", targets=("numpy",)) as mods:
        params = mods["numpy"].init_params(seed=3)
    params = {k: (np.zeros_like(v) if k == "W1" else v) for k, v in params.items()}
    errs, *_ = check_triton_against_torch(net, triton_device_name, params=params)
    assert errs["grad W1"] <= 1e-4


def test_triton_gradients_are_deterministic(triton_device_name):
    """No atomics: the same inputs give bitwise the same gradients and loss, launch after launch."""
    net = pooled_net("max_pool2d", 2, 1, 0)
    rng = np.random.default_rng(4)
    with generated_modules(net, "<test>", targets=("numpy", "triton")) as mods:
        trm = mods["triton"]
        x, y = sample(net, rng, 37)
        tp, tx, ty = triton_inputs(net, random_params(mods["numpy"], rng), x, y, triton_device_name)
        first, again = trm.gradients(tp, tx, ty), trm.gradients(tp, tx, ty)
        assert all(torch.equal(first[k], again[k]) for k in first)
        assert trm.loss(tp, tx, ty) == trm.loss(tp, tx, ty)
        with open(trm.__file__, encoding="utf-8") as fh:
            assert "tl.atomic" not in fh.read()

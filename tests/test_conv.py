"""conv2d, locally_connected and flatten: the index-notation derivation, the generated NumPy and
Triton code against torch (F.conv2d; F.unfold for the locally connected layer) and finite
differences, the printed formulas against the code, bad specs, and a hypothesis property
test over random conv geometries.

Tolerances: NumPy float64 against torch.autograd float64 1e-10 (the same math, rounding only);
Triton float32 against torch float64 1e-4 (float32 sums over windows of ≤ 4·4·3 terms and a
batch); finite differences as derive.verify documents them (1e-6, extended precision).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import given
from hypothesis import strategies as st

from derive import Conv2d, Flatten, Linear, LocallyConnected, Loss, Network, Port, derive, load_spec
from derive import verify
from derive.cli import main as cli_main
from derive.indices import InRange
from derive.tables.activations import ACTIVATIONS
from derive.display import text
from derive.errors import SpecError

from helpers import assert_close_to_torch, assert_matches_torch, triton_inputs, triton_outputs
from derive.explain import to_json_dict, to_text
from derive.targets.modules import generated_modules

ROOT = Path(__file__).resolve().parent.parent


def _net(layer, in_shape=(2, 7, 9), below=True, loss="cross_entropy"):
    """[conv 1×1 →] layer → flatten → linear: with ``below`` the tested layer has a layer under it,
    so its input gradient ∂L/∂f1 is derived, generated and checked."""
    layers = ([Conv2d(in_shape[0], 1, activation="tanh")] if below else []) + [layer, Flatten(), Linear(out=3)]
    target = Port("y", (3,) if loss == "l2" else ())
    return Network("convtest", layers=layers, input=Port("x", in_shape), target=target, loss=Loss(loss))


STRIDED = Conv2d(3, [3, 2], stride=2, padding=1, activation="relu")
LOCAL = LocallyConnected(2, 3, stride=2, padding=2, activation="sigmoid")


# =========================================================================== the derivation


def test_conv_forward_and_gradients_in_index_notation():
    der = derive(_net(STRIDED))
    lines = to_text(der)
    assert "a2[o, i, j] = Σ_{c,p,q} W2[o, c, p, q]·f1_pad[c, 2·i + p, 2·j + q] + b2[o]" in lines
    assert "f1_pad[c, h, w] = f1[c, h − 1, w − 1]" in lines  # explain's text writes one minus sign, U+2212
    assert "= Σ_{i,j} δ2[o, i, j] · ∂a2[o, i, j]/∂W2[o, c, p, q]      (δ2 re-used)" in lines
    assert "= Σ_{i,j} δ2[o, i, j]·f1_pad[c, 2·i + p, 2·j + q]" in lines
    assert "= Σ_{i,j} δ2[o, i, j]\n" in lines  # ∂L/∂b2[o]
    # ∂L/∂f1_pad with the window's range kept, then the crop
    assert ("∂L/∂f1_pad[c, h, w] = Σ_{o,i,j} δ2[o, i, j]·W2[o, c, h − 2·i, w − 2·j]"
            "·[0 ≤ h − 2·i ≤ 2]·[0 ≤ w − 2·j ≤ 1]") in lines
    assert "∂L/∂f1[c, h, w] = ∂L/∂f1_pad[c, h + 1, w + 1]" in lines
    assert "δ2[o, i, j] = ∂L/∂a2[o, i, j] = ∂L/∂f2[o, i, j] · ∂f2[o, i, j]/∂a2[o, i, j]" in lines
    assert "δ2[o, i, j] = ∂L/∂f2[o, i, j]·1[a2[o, i, j] > 0]" in lines
    # the flatten step, C order (a2 is 3×4×5), with its flat index summed
    assert "∂L/∂f2[c, h, w] = Σ_n ∂L/∂f3[n] · ∂f3[n]/∂f2[c, h, w]" in lines
    assert "∂L/∂f2[c, h, w] = ∂L/∂f3[20·c + 5·h + w]" in lines


def test_locally_connected_has_no_sum_over_positions():
    der = derive(_net(LOCAL))
    g = der.gradient("W2")
    assert not g.rhs.has(sp.Sum)
    assert text(g.lhs) == "∂L/∂W2[o, i, j, c, p, q]"
    assert text(g.rhs) == "δ2[o, i, j]·f1_pad[c, 2·i + p, 2·j + q]"
    assert text(der.gradient("b2").rhs) == "δ2[o, i, j]"
    up = der.step("dL_df1_pad")
    assert up.rhs.has(InRange)
    assert text(up.rhs) == ("Σ_{o,i,j} δ2[o, i, j]·W2[o, i, j, c, h - 2·i, w - 2·j]"
                            "·[0 ≤ h - 2·i ≤ 2]·[0 ≤ w - 2·j ≤ 2]")


def test_no_free_index_is_bound():
    """Every step's free indices are exactly its left-hand side's, and no bound index is free."""
    for layer in (STRIDED, LOCAL):
        der = derive(_net(layer))
        for s in (*der.backward, *der.forward):
            lhs_free = set().union(*(i.free_symbols for i in getattr(s.lhs, "indices", ())))
            rhs_free = {a for a in s.rhs.free_symbols if a.is_integer and not isinstance(a, sp.Indexed)}
            rhs_free -= {sp.Symbol("y", integer=True)}  # the class index
            assert rhs_free <= lhs_free, (s.name, rhs_free, lhs_free)
            for sm in s.rhs.atoms(sp.Sum):
                assert not ({lim[0] for lim in sm.limits} & lhs_free), s.name


def test_explain_json_contract():
    d = to_json_dict(derive(_net(STRIDED)))
    assert [x["name"] for x in d["deltas"]] == ["delta4", "delta2", "delta1"]
    w2 = next(p for p in d["parameters"] if p["name"] == "W2")
    assert w2["shape"] == [3, 2, 3, 2] and w2["chain"] == ["delta2", "da2/dW2"]
    assert w2["gradient"] == "Sum(delta2[o, i, j]*f1_pad[c, 2*i + p, 2*j + q], (i, 0, 3), (j, 0, 4))"


# ------------------------------------------------- the printed formulas are what the code computes


def _eval(expr, arrays, env):
    """Evaluate an element formula: Indexed from ``arrays``, Sum by loops, brackets first."""
    if isinstance(expr, sp.Sum):
        (idx, lo, hi), *rest = expr.limits
        inner = sp.Sum(expr.function, *rest) if rest else expr.function
        return sum(_eval(inner, arrays, {**env, idx: v}) for v in range(int(lo), int(hi) + 1))
    if isinstance(expr, sp.Mul):
        factors = sorted(expr.args, key=lambda a: not isinstance(a, InRange))  # brackets guard the lookups
        out = 1.0
        for a in factors:
            out *= _eval(a, arrays, env)
            if out == 0:
                return 0.0
        return out
    if isinstance(expr, InRange):
        e, lo, hi = (int(a.xreplace(env)) for a in expr.args)
        return float(lo <= e <= hi)
    if isinstance(expr, sp.Indexed):
        return arrays[str(expr.base)][tuple(int(i.xreplace(env)) for i in expr.indices)]
    if isinstance(expr, sp.Add):
        return sum(_eval(a, arrays, env) for a in expr.args)
    return float(expr)


@pytest.mark.parametrize("layer", [STRIDED, LOCAL], ids=["conv2d", "locally_connected"])
def test_printed_formulas_match_generated_numpy(layer):
    net = _net(layer, in_shape=(2, 5, 7))
    der = derive(net)
    li = net.info[1]
    rng = np.random.default_rng(0)
    with generated_modules(net, "<test>", ("numpy",)) as mods:
        m = mods["numpy"]
        delta = rng.standard_normal((1, *li.out_shape))
        W = rng.standard_normal(next(p.shape for p in net.params if p.name == "W2"))
        src = rng.standard_normal((1, li.in_shape[0], li.in_shape[1] + 2 * li.padding, li.in_shape[2] + 2 * li.padding))
        arrays = {"delta2": delta[0], "W2": W, "f1_pad": src[0]}
        (s, _), (kh, kw) = li.stride, li.kernel
        wins = m.windows(src, kh, kw, s, s)
        code = {
            "dL_dW2": np.einsum("boij,bcijpq->ocpq" if layer is STRIDED else "boij,bcijpq->oijcpq", delta, wins),
            "dL_df1_pad": (m.conv2d_input_grad if layer is STRIDED else m.local_input_grad)(delta, W, s, src.shape[2:])[0],
        }
        for name, got in code.items():
            step = der.step(name)
            idx = [i for i in step.lhs.indices]
            for pos in itertools.product(*(range(n) for n in got.shape)):
                want = _eval(step.rhs, arrays, dict(zip(idx, pos)))
                assert abs(got[pos] - want) <= 1e-12 * (1 + abs(want)), (name, pos)


# =========================================================================== numerics


def _check_against_torch(net, batch, seed, triton=True):
    """NumPy f64 vs torch.autograd f64 (1e-10), Triton f32 in sentinel-padded buffers vs torch (1e-4):
    the shared helpers of tests/helpers.py."""
    rng = np.random.default_rng(seed)
    targets = ("numpy", "triton") if triton else ("numpy",)
    with generated_modules(net, "<test>", targets) as mods:
        params = verify.random_params(mods["numpy"], rng)
        x, y = verify.sample(net, rng, batch)
        assert_matches_torch(net, mods["numpy"], params, x, y, 1e-10, f"{net.name} numpy f64")
        if triton:
            tp, tx, ty = triton_inputs(net, params, x, y)
            got = triton_outputs(mods["triton"], tp, tx, ty, net=net)  # sentinels checked inside
            # float32 over short sums: 1e-4 relative to the float64 reference
            assert_close_to_torch(net, got, tp, tx, ty, 1e-4, f"{net.name} triton", float32=True)


@pytest.mark.parametrize("layer", [STRIDED, LOCAL, Conv2d(2, 3, activation="identity", bias=False)],
                         ids=["conv2d", "locally_connected", "conv2d_no_bias"])
def test_generated_code_against_torch(layer, triton_device_name):
    _check_against_torch(_net(layer), batch=3, seed=1)


ODD_NETWORKS = {
    # flatten straight after the input: the input is loaded as a flat tile
    "flatten_first": Network("flat_first", layers=[Flatten(), Linear(out=3)], input=Port("x", (2, 3, 5)),
                             loss=Loss("cross_entropy")),
    # conv under conv without padding (∂L/∂f1 gathered directly), no bias, leaky_relu and softplus, l1 summed
    "conv_conv": Network("conv_conv", layers=[Conv2d(3, 2, activation="leaky_relu", slope=0.2),
                                              Conv2d(2, [2, 3], stride=2, bias=False, activation="softplus"),
                                              Flatten(), Linear(out=2)],
                         input=Port("x", (2, 7, 8)), target=Port("y", (2,)), loss=Loss("l1", "sum")),
    # a locally connected first layer whose stride skips input rows, padding wider than the kernel's reach
    "local_first": Network("lc_first", layers=[LocallyConnected(2, 3, stride=3, padding=2), Flatten(), Linear(out=1)],
                           input=Port("x", (1, 5, 5)), loss=Loss("hinge")),
    # flatten as the last layer: the loss gradient arrives at the flattened volume
    "flatten_last": Network("conv_top", layers=[Conv2d(2, 2), Flatten()], input=Port("x", (1, 4, 4)),
                            target=Port("y", (18,)), loss=Loss("l2")),
}


@pytest.mark.parametrize("name", list(ODD_NETWORKS))
def test_layer_arrangements_against_torch(name, triton_device_name):
    _check_against_torch(ODD_NETWORKS[name], batch=3, seed=2)


@given(
    channels=st.integers(1, 3), filters=st.integers(1, 3), kh=st.integers(1, 4), kw=st.integers(1, 4),
    stride=st.integers(1, 3), padding=st.integers(0, 2), h=st.sampled_from([5, 7, 9]),
    w=st.sampled_from([5, 7, 9]), batch=st.integers(1, 3), local=st.booleans(),
    activation=st.sampled_from([a for a, rule in ACTIVATIONS.items() if rule.slope == "none"]), seed=st.integers(0, 2**16),
)
def test_random_conv_shapes_against_torch(channels, filters, kh, kw, stride, padding, h, w, batch, local,
                                          activation, seed):
    """Random geometries (odd sizes, strides that skip rows, padding wider than the stride): NumPy f64 and
    Triton f32 against torch, including ∂L/∂input through the random layer (a 1×1 conv sits below it)."""
    kind = LocallyConnected if local else Conv2d
    net = _net(kind(filters, [kh, kw], stride=stride, padding=padding, activation=activation),
               in_shape=(channels, h, w), loss="l2" if seed % 2 else "cross_entropy")
    _check_against_torch(net, batch=batch, seed=seed, triton=True)


# =========================================================================== bad specs

HEAD = 'name = "cnn"\n[input]\nshape = [3, 8, 8]\n'
CONV = '[[layers]]\ntype = "conv2d"\nfilters = 4\nkernel = 3\n'
TAIL = '[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "linear"\nout = 2\n'

BAD = {
    "kernel_too_large": (HEAD + '[[layers]]\ntype = "conv2d"\nfilters = 4\nkernel = [9, 3]\npadding = 0\n' + TAIL,
                         "layers[0].kernel", "expected a kernel no larger than the padded input 8×8, got 9×3"),
    "stride_zero": (HEAD + CONV + "stride = 0\n" + TAIL, "layers[0].stride", "expected a positive integer, got 0"),
    "padding_negative": (HEAD + CONV + "padding = -1\n" + TAIL, "layers[0].padding",
                         "expected a non-negative integer, got -1"),
    "no_flatten": (HEAD + CONV + '[[layers]]\ntype = "linear"\nout = 2\n', "layers[1].type",
                   "expected a flatten layer before a linear layer on a volume"),
    "missing_filters": (HEAD + '[[layers]]\ntype = "conv2d"\nkernel = 3\n' + TAIL, "layers[0].filters",
                        "missing required key"),
    "kernel_triple": (HEAD + CONV.replace("kernel = 3", "kernel = [1, 2, 3]") + TAIL, "layers[0].kernel",
                      "expected a positive integer or [kh, kw]"),
    "unknown_key": (HEAD + CONV + "dilation = 2\n" + TAIL, "layers[0].dilation", "unknown key 'dilation'"),
    "flatten_key": (HEAD + CONV + '[[layers]]\ntype = "flatten"\nout = 3\n', "layers[1].out", "unknown key 'out'"),
    "conv_on_vector": ('name = "cnn"\n[input]\nshape = [4]\n' + CONV + TAIL, "layers[0].type",
                       "expected a [c, h, w] volume as the input of conv2d, got shape [4]"),
    "ends_in_volume": (HEAD + CONV, "layers[0].type", "expected the network to end in a vector"),
    "prelu": (HEAD + CONV + 'activation = "prelu"\n' + TAIL, "layers[0].activation", "linear layers only"),
    "input_2d": ('name = "cnn"\n[input]\nshape = [3, 8]\n' + CONV + TAIL, "input.shape",
                 "expected [] (a scalar) or [n] (a vector) or [c, h, w] (a volume), got [3, 8]"),
    "lc_kernel_too_large": (HEAD + '[[layers]]\ntype = "locally_connected"\nfilters = 1\nkernel = 6\nstride = 1\n'
                            'padding = 0\n[[layers]]\ntype = "locally_connected"\nfilters = 1\nkernel = 4\n' + TAIL,
                            "layers[1].kernel", "expected a kernel no larger than the padded input 3×3, got 4×4"),
    "helper_name": (HEAD + CONV + 'weight = "windows"\n' + TAIL, "layers[0].weight", "used by the generated code"),
    "pad_name_taken": (HEAD + CONV.replace('kernel = 3', 'kernel = 3\nweight = "x_pad"\npadding = 1') + TAIL,
                       "layers[0].padding", "duplicate name 'x_pad' (also used by layers[0].weight)"),
}


@pytest.mark.parametrize("text_, key_path, expected", list(BAD.values()), ids=list(BAD))
def test_bad_conv_spec(tmp_path, capsys, text_, key_path, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text_, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message and info.value.path == key_path
    assert message.startswith(f"{path}: {key_path}: expected") or message.startswith(f"{path}: {key_path}: ")
    assert expected in message
    assert cli_main(["explain", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_expand_is_refused_for_conv_networks(capsys):
    for fmt in ("text", "json"):
        assert cli_main(["explain", str(ROOT / "examples" / "lecture_convnet.toml"), "--expand", "--format", fmt]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--expand: only for chains of linear layers; layer 1 is conv2d" in err


def test_toml_equals_python_api():
    net = load_spec(ROOT / "examples" / "lecture_convnet.toml")
    py = Network("lecture_convnet", layers=[Conv2d(6, 5, activation="relu"), Flatten(), Linear(out=10)],
                 input=Port("x", (3, 32, 32)), target=Port("y"), loss=Loss("cross_entropy"))
    assert net == py and net.params == py.params
    assert [(p.name, p.shape) for p in net.params] == [
        ("W1", (6, 3, 5, 5)), ("b1", (6,)), ("W3", (10, 4704)), ("b3", (10,))]


def test_python_api_shapes():
    net = _net(LOCAL, in_shape=(2, 7, 9))
    assert [(p.name, p.shape) for p in net.params] == [
        ("W1", (2, 2, 1, 1)), ("b1", (2,)), ("W2", (2, 5, 6, 2, 3, 3)), ("b2", (2, 5, 6)),
        ("W4", (3, 60)), ("b4", (3,)),
    ]
    assert [li.out_shape for li in net.info] == [(2, 7, 9), (2, 5, 6), (60,), (3,)]

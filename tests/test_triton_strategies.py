"""Every plan the fused dense kernel can take (derive.targets.triton.CANDIDATES: scratch rows, or per-sample
tiles on chip with weights and gradient sums per tile or per program, at 16-64 rows a tile) computes the
same numbers: each is run under the interpreter on a batch that leaves a partial tile and gives every
program several tiles, and compared with torch.autograd in float64.  derive inspect --strategies models and
compiles these same plans, so a plan it reports is one that is right."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

import numpy as np
import pytest
import torch

from helpers import ROOT, assert_close_to_torch, triton_inputs, triton_outputs

from derive import Add, Linear, Loss, Network, Port
from derive.derivation import derive
from derive.ir.lowering import lower
from derive.targets.triton import CANDIDATES, choose_strategy
from derive.targets.triton_planner import plan_triton
from derive.verify import rel_err
from derive.verify.named import named_quantities

# 16 wide (tl.dot's smallest side): cross-entropy with a padded class column, L2 with a sigmoid layer, and
# a residual graph
NETS = {
    "ce": Network("strat_ce", layers=[Linear(out=16, activation="relu"), Linear(out=10)], input=Port("x", (16,)),
                  target=Port("y", ()), loss=Loss("cross_entropy")),
    "l2": Network("strat_l2", layers=[Linear(out=16, activation="sigmoid"), Linear(out=16, activation="relu"),
                                      Linear(out=16)], input=Port("x", (16,)), target=Port("y", (16,)),
                  loss=Loss("l2")),
    # a residual block: f1 feeds a2 and the sum f3, so ∂L/∂f1 is a sum over paths on every plan too
    "res": Network("strat_res", layers=[Linear(out=16, activation="tanh"), Linear(out=16, activation="relu"),
                                        Add(["f1", "f2"]), Linear(out=16)], input=Port("x", (16,)),
                   target=Port("y", (16,)), loss=Loss("l2")),
}


def _load(text: str, name: str):
    path = ROOT / f".pytest-{name}.py"
    path.write_text(text)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod
    finally:
        path.unlink(missing_ok=True)


@pytest.mark.parametrize("net_key", sorted(NETS))
@pytest.mark.parametrize("strategy", CANDIDATES, ids=lambda s: f"{s.name}-{s.weights}-{s.sums}-{s.block_b}")
def test_every_plan_matches_torch(net_key, strategy, triton_device_name):
    net = NETS[net_key]
    ir = lower(derive(net), "<test>")
    plan = plan_triton(ir, strategy=strategy)
    assert plan.strategy == strategy
    name = f"_strat_{net_key}_{CANDIDATES.index(strategy)}"
    mod = _load(plan.text, name)
    try:
        rng = np.random.default_rng(7)
        params = {k: 0.5 * rng.standard_normal(shape) for k, shape in mod.PARAM_SHAPES.items()}
        batch = 4 * plan.block_b * 2 + 5  # 4 interpreter programs, two tiles each, and a partial tile
        x = rng.standard_normal((batch, 16))
        y = rng.integers(0, 10, batch) if net.loss.type == "cross_entropy" else rng.standard_normal((batch, 16))
        tp, tx, ty = triton_inputs(net, params, x, y, device=triton_device_name)
        got = triton_outputs(mod, tp, tx, ty, net=net)
        assert_close_to_torch(net, got, params, x, y, 1e-4, f"{net.name} {strategy.name}", float32=True)
        # intermediates() (the first-divergence report's input) on this plan: every named per-sample quantity
        # against the torch rebuild of the derivation's quantities, in float64
        inter = mod.intermediates(tp, tx, ty)
        t64 = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
        ty64 = torch.tensor(y, dtype=torch.long if net.loss.type == "cross_entropy" else torch.float64)
        want = named_quantities(net, t64, torch.tensor(x, dtype=torch.float64), ty64)
        assert set(inter) <= set(want) and len(inter) >= 8
        for k, v in inter.items():
            w = want[k].numpy()
            err = rel_err(v.double().numpy().reshape(w.shape), w)
            assert err < 1e-4, (strategy, k, err)
    finally:
        sys.modules.pop(name, None)


def test_the_pick_is_on_chip_only_inside_the_measured_envelope():
    def mlp(width, depth, loss="l2", classes=None, inputs=None):
        layers = [Linear(out=width, activation="relu") for _ in range(depth - 1)] + [Linear(out=classes or width)]
        target = Port("y", ()) if loss == "cross_entropy" else Port("y", (width,))
        net = Network("m", layers=layers, input=Port("x", (inputs or width,)), target=target, loss=Loss(loss))
        st = choose_strategy(lower(derive(net), "<t>"))
        return "split" if st.sums == "split" else st.name

    # inside: the 64-wide nets of any depth up to 8, the 16-wide up to 4 layers, the 32-wide of 2
    assert mlp(64, 2) == mlp(64, 8) == "on-chip"
    assert mlp(16, 4) == mlp(16, 4, "cross_entropy", 10) == mlp(32, 2) == "on-chip"
    # outside those, the split plan where it compiled clean: 16- and 32-wide up to 8 layers, the 64-wide
    # cross-entropy nets up to 7 (their on-chip forward launches spilled), 128 hidden in 2 layers ending in
    # at most 16 classes, any input width (MNIST's 784)
    assert mlp(16, 8) == mlp(32, 4) == mlp(32, 8, "cross_entropy", 10) == "split"
    assert mlp(64, 2, "cross_entropy", 10) == mlp(64, 7, "cross_entropy", 3) == "split"
    assert mlp(128, 2, "cross_entropy", 10) == mlp(128, 2, "cross_entropy", 10, inputs=784) == "split"
    assert mlp(32, 2, inputs=784) == mlp(64, 3, "cross_entropy", 10, inputs=3072) == "split"
    # outside every measured envelope: where the compiles spilled (docs/gpu.md, docs/benchmarks.md)
    assert mlp(64, 8, "cross_entropy", 10) == mlp(128, 2) == mlp(128, 3, "cross_entropy", 10) == "scratch"
    assert mlp(48, 3, inputs=20) == mlp(256, 2, "cross_entropy", 10, inputs=784) == "scratch"
    assert mlp(1, 1, inputs=100) == "scratch"  # one layer: scratch models faster (1.72x eager against 1.02x)


SPLIT = [s for s in CANDIDATES if s.sums == "split"]


@pytest.mark.parametrize("strategy", SPLIT[:1], ids=lambda s: f"split-{s.block_b}")
def test_split_plan_steps_like_torch(strategy, triton_device_name):
    """The split plan's ∂W kernel runs inside every training entry point: train_step's SGD step is θ − η·∂L/∂θ
    with torch.autograd's float64 gradient, and FlatState.step returns torch's loss at the θ it started from."""
    from derive.tables.optimizers import Optimizer
    from helpers import torch_reference

    net = dataclasses.replace(NETS["res"], optimizer=Optimizer("adam"))
    ir = lower(derive(net), "<test>")
    mod = _load(plan_triton(ir, strategy=strategy).text, "_strat_split_step")
    try:
        rng = np.random.default_rng(11)
        params = {k: 0.5 * rng.standard_normal(shape) for k, shape in mod.PARAM_SHAPES.items()}
        batch = 4 * strategy.block_b + 3
        x, y = rng.standard_normal((batch, 16)), rng.standard_normal((batch, 16))
        want = torch_reference(net, params, x, y)
        tp, tx, ty = triton_inputs(net, params, x, y, device=triton_device_name)
        lr = 0.1
        stepped = mod.train_step(tp, tx, ty, lr)
        for k, v in params.items():
            expect = v - lr * want[f"grad {k}"]
            err = rel_err(stepped[k].double().cpu().numpy() - v, expect - v)  # the step itself, not θ
            assert err < 1e-4, (k, err)
        state = mod.FlatState(triton_inputs(net, params, x, y, device=triton_device_name)[0])
        loss = float(state.step(tx, ty, 1)[0])
        assert abs(loss - want["loss"]) <= 1e-5 * abs(want["loss"]), (loss, want["loss"])
    finally:
        sys.modules.pop("_strat_split_step", None)


def test_the_split_plans_traffic_and_flops_are_counted_by_hand():
    """The cost model's ∂W kernel and the fused kernel's extra stores, against a count from the net's shapes:
    the 16-wide 3-layer L2 net (three 16 × 16 weights)."""
    from derive.inspect.model import CARDS, fused_step
    from derive.targets.triton import Strategy

    ir = lower(derive(NETS["l2"]), "<t>")
    st, batch, card = SPLIT[0], 1 << 16, CARDS["sm_90"]
    split = fused_step(ir, plan_triton(ir, strategy=st), batch, card)
    assert [c.launches for c in split] == [1, 1, 1] and split[1].name.startswith("∂W kernel")
    programs = min(-(-batch // st.block_b), card["sms"])
    dw = split[1]
    # δ1, δ2, δ3 and f1, f2, x (16 floats each) read once a row; W1-W3 (16 × 16) and b1-b3 written once a program
    assert dw.dram_bytes == batch * 4 * 6 * 16 + programs * 4 * 3 * (16 * 16 + 16)
    assert dw.flops == dw.dot_flops == batch * 3 * 2 * 16 * 16
    # the fused kernel streams what the same tiles on chip do, plus δ1-δ3, f1 and f2 stored once a row
    on_chip = fused_step(ir, plan_triton(ir, strategy=Strategy("on-chip", "tile", "tile", st.block_b)), batch, card)
    assert split[0].dram_bytes - on_chip[0].dram_bytes == batch * 4 * 5 * 16


@pytest.mark.parametrize("net_key", sorted(NETS))
def test_the_split_plans_text_is_linted_like_generated_code(net_key, tmp_path):
    """No split plan is checked in (none is picked), so its text gets test_generated_lint's checks here."""
    from test_generated_lint import test_no_dead_kernel_lines, test_no_line_over_100_characters, test_pyflakes_clean

    ir = lower(derive(NETS[net_key]), "<t>")
    for st in SPLIT:
        path = tmp_path / f"{net_key}_{st.block_b}_triton.py"
        path.write_text(plan_triton(ir, strategy=st).text, encoding="utf-8")
        assert "_dw_kernel[(_np,)](" in path.read_text(encoding="utf-8")
        test_no_line_over_100_characters(path)
        test_pyflakes_clean(path)
        test_no_dead_kernel_lines(path)


def test_a_wide_input_is_summed_in_column_blocks_and_matches_torch(triton_device_name):
    """A 300-wide input (3 blocks of DW_COLS columns, the last part full) and a 130-wide hidden layer: the ∂W
    kernel sums ∂L/∂W1 and ∂L/∂W2 block by block, each block a pass over the batch of its own, and writes
    each block's entries once.  Against torch.autograd in float64, on a batch with a partial chunk."""
    from derive.targets.triton import SPLIT
    from derive.targets.triton_splitk import DW_COLS

    net = Network("strat_wide", layers=[Linear(out=130, activation="relu"), Linear(out=3)],
                  input=Port("x", (300,)), target=Port("y", ()), loss=Loss("cross_entropy"))
    plan = plan_triton(lower(derive(net), "<test>"), strategy=SPLIT)
    dw = plan.text.split("_dw_kernel(", 1)[1].split("\ndef ", 1)[0]
    assert f"_acc_dL_dW1 = tl.zeros((256, {DW_COLS})," in dw and f"_k0 = {2 * DW_COLS} + tl.arange(0, {DW_COLS})" in dw
    assert f"_acc_dL_dW2 = tl.zeros((16, {DW_COLS})," in dw and f"_k0 = {DW_COLS} + tl.arange(0, {DW_COLS})" in dw
    mod = _load(plan.text, "_strat_wide")
    try:
        rng = np.random.default_rng(5)
        params = {k: 0.2 * rng.standard_normal(shape) for k, shape in mod.PARAM_SHAPES.items()}
        batch = 4 * 32 + 7
        x, y = rng.standard_normal((batch, 300)), rng.integers(0, 3, batch)
        tp, tx, ty = triton_inputs(net, params, x, y, device=triton_device_name)
        assert_close_to_torch(net, triton_outputs(mod, tp, tx, ty, net=net), params, x, y, 1e-4, net.name,
                              float32=True)
    finally:
        sys.modules.pop("_strat_wide", None)

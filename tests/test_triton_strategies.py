"""Every plan the fused dense kernel can take (derive.targets.triton.CANDIDATES: scratch rows, or per-sample
tiles on chip with weights and gradient sums per tile or per program, at 16-64 rows a tile) computes the
same numbers: each is run under the interpreter on a batch that leaves a partial tile and gives every
program several tiles, and compared with torch.autograd in float64.  derive inspect --strategies models and
compiles these same plans, so a plan it reports is one that is right."""

from __future__ import annotations

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
    def mlp(width, depth, loss="l2", classes=None):
        layers = [Linear(out=width, activation="relu") for _ in range(depth - 1)] + [Linear(out=classes or width)]
        target = Port("y", ()) if loss == "cross_entropy" else Port("y", (width,))
        net = Network("m", layers=layers, input=Port("x", (width,)), target=target, loss=Loss(loss))
        return choose_strategy(lower(derive(net), "<t>")).name

    # inside: the 64-wide nets of any depth up to 8, the 16-wide up to 4 layers, the 32-wide of 2
    assert mlp(64, 2) == mlp(64, 8) == "on-chip"
    assert mlp(16, 4) == mlp(16, 4, "cross_entropy", 10) == mlp(32, 2) == "on-chip"
    # outside: where the grid's compiles spilled (docs/gpu.md)
    assert mlp(64, 2, "cross_entropy", 10) == "scratch"  # its forward launches spilled on chip
    assert mlp(16, 8) == mlp(32, 4) == mlp(128, 3) == "scratch"

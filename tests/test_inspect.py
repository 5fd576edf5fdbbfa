"""derive inspect: the report's contract, its cost model against counts made by hand, and bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from helpers import ROOT

from derive import Linear, Loss, Network, Port
from derive.derivation import derive
from derive.inspect.compile import launch_error
from derive.inspect.model import CARDS, Cost, eager_step, fused_step, ideal_bytes, layered_step, summary
from derive.ir.lowering import lower
from derive.targets.triton import SCRATCH
from derive.targets.triton_planner import plan_triton


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "derive", "inspect", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


NET = Network("insp", layers=[Linear(out=64, activation="relu"), Linear(out=64)], input=Port("x", (32,)),
              target=Port("y", (64,)), loss=Loss("l2"))


def test_compile_specs_name_real_kernels_and_all_their_arguments():
    import importlib.util
    import inspect as pyinspect

    plan = plan_triton(lower(derive(NET), "<test>"))
    path = ROOT / ".pytest-insp-module.py"
    try:
        path.write_text(plan.text)
        spec = importlib.util.spec_from_file_location("_insp_mod", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        kernels = [s["kernel"] for s in mod.COMPILE_SPECS]
        # four fused launch flag sets; the split plan's ∂W kernel (the pick for 32 → 64 → 64); the update
        # kernel's modes: ∂L/∂θ only, SGD, the spec's optimizer
        assert plan.strategy.sums == "split"
        assert kernels == ["insp_fused_kernel"] * 4 + ["insp_dw_kernel"] + ["insp_update_kernel"] * 3
        assert [s["constexprs"]["MODE"] for s in mod.COMPILE_SPECS[5:]] == [0, 1, 2]
        for s in mod.COMPILE_SPECS:
            fn = getattr(mod, s["kernel"])
            names = list(getattr(fn, "arg_names", None) or pyinspect.signature(fn.fn).parameters)
            assert list(s["signature"]) == names, s["kernel"]
            for k, v in s["signature"].items():
                assert (v == "constexpr") == (k in s["constexprs"]), (s["kernel"], k)
            assert s["num_warps"] == mod.NUM_WARPS and s["num_stages"] == mod.NUM_STAGES
    finally:
        path.unlink(missing_ok=True)
        sys.modules.pop("_insp_mod", None)


def test_fused_flops_match_the_dense_contractions():
    # forward W·f per layer, backward δᵀ·f per layer and δ·W above the first: 2·N·in·out each
    ir = lower(derive(NET), "<test>")
    plan = plan_triton(ir, strategy=SCRATCH)  # every contraction in the one kernel
    batch = 1000
    fused = fused_step(ir, plan, batch, CARDS["sm_90"])[0]
    macs = 32 * 64 + 64 * 64
    assert fused.flops == 2 * batch * (2 * macs + 64 * 64)
    eager = sum(c.flops for c in eager_step(ir, batch))
    assert eager == fused.flops
    # every side pads to >= 16 (and no side is padded): all of them on tensor cores, three TF32 products each
    assert fused.dot_flops == fused.flops and fused.dot_precision == "tf32x3"


def test_narrow_layers_stay_on_the_cuda_cores_and_padding_is_counted():
    # 3 → 20 → 24 → 5: only layer 2's contractions have every side >= 16 once padded to a power of two:
    # W2·f1 (N 24 → 32, K 20 → one KC of 32), δ2·W2 (J 20 → 32, I 24 → 32), δ2ᵀ·f1 (JC 32, KP 32), each
    # 2·32·32 FLOPs per row as the tensor cores run them.  Sides of 3 or 5 pad to 4 or 8: CUDA cores, unpadded
    net = Network("narrow", layers=[Linear(out=20, activation="relu"), Linear(out=24, activation="relu"),
                                    Linear(out=5)], input=Port("x", (3,)), target=Port("y", (5,)), loss=Loss("l2"))
    ir = lower(derive(net), "<test>")
    fused = fused_step(ir, plan_triton(ir), 1, CARDS["sm_90"])[0]
    assert fused.dot_flops == 3 * 2 * 32 * 32
    forward = 2 * (3 * 20 + 24 * 5)  # W1·x, W3·f2
    backward = 2 * 24 * 5 + 2 * (5 * 24 + 20 * 3)  # δ3·W3; δ3ᵀ·f2, δ1ᵀ·x
    assert fused.flops - fused.dot_flops == forward + backward


def test_ideal_and_eager_traffic_counted_by_hand():
    ir = lower(derive(NET), "<test>")
    n = 10
    params = 32 * 64 + 64 + 64 * 64 + 64
    assert ideal_bytes(ir, n) == n * (32 + 64) * 4 + 2 * params * 4
    # eager: layer 1 addmm, relu, relu', dW1, db1; layer 2 addmm, dW2, db2, dX2; the loss (3 ops); SGD
    ops = eager_step(ir, n)
    assert len(ops) == 13
    first = ops[0]
    assert first.dram_bytes == 4 * (n * 32 + 32 * 64 + 64 + n * 64)


def test_summary_ratios_are_the_quotients_of_its_totals():
    ir = lower(derive(NET), "<test>")
    m = summary(ir, plan_triton(ir, strategy=SCRATCH), 4096, "sm_90")
    assert m["fused_traffic_over_ideal"] == pytest.approx(m["fused_total"]["dram_bytes"] / m["ideal"]["dram_bytes"])
    assert m["eager_over_fused_time"] == pytest.approx(m["eager_total"]["seconds"] / m["fused_total"]["seconds"])
    card = CARDS["sm_90"]
    for row in m["fused"]:
        # a grid of fewer programs than the card's SMs runs at that fraction of its rates
        idle = max(1.0, card["sms"] / row["programs"]) if row["programs"] else 1.0
        compute = (row["flops"] - row["dot_flops"]) / card["fp32"] + 3 * row["dot_flops"] / card["tf32"]
        assert row["seconds"] == pytest.approx(idle * max(row["dram_bytes"] / card["bandwidth"], compute))
    # the fused kernel's persistent grid fills the card at 4,096 rows (256 tiles); its update kernel does not
    assert m["fused"][0]["programs"] == card["sms"] and m["fused"][0]["idle"] == 1.0
    assert m["fused"][-1]["idle"] > 1.0


def test_a_grid_smaller_than_the_card_is_timed_at_its_share_of_the_sms():
    """A gradient kernel gridded over a gradient's few blocks would run on few SMs: the per-layer plan splits
    its batch sum so that the grid covers the card, and the model times a small grid at its share."""
    from derive.spec import load_spec
    from derive.targets import triton_layers

    ir = lower(derive(load_spec(ROOT / "examples" / "lecture_convnet.toml")), "<test>")
    costs = {c.name: c for c in layered_step(ir, plan_triton(ir), 16384)}
    dw1 = costs["lecture_convnet_dL_dW1_kernel"]
    # δ1 is computed in ∂W1's kernel, one program per filter (6) and split of the batch
    assert dw1.programs == 6 * triton_layers.splits(16384) >= CARDS["sm_90"]["sms"]
    card = CARDS["sm_90"]
    assert dw1.idle(card) == 1.0
    one = Cost("one program", 1, 1e9, 1e9, 0, programs=1)
    assert one.seconds(card) == pytest.approx(card["sms"] * 1e9 / card["bandwidth"])


def test_benchmark_network_meets_the_modeled_goals():
    """Issue 10, part 4: the 64-wide, 4-layer L2 MLP at batch 2^18 moves at most 1.25x the ideal traffic and
    is modeled at least 4x faster than eager (float32 matmuls on the CUDA cores, PyTorch's default)."""
    from derive.spec import load_spec

    ir = lower(derive(load_spec(ROOT / "bench" / "mlp64x4_l2.toml")), "<test>")
    m = summary(ir, plan_triton(ir), 2**18, "sm_90")
    assert m["fused_traffic_over_ideal"] <= 1.25
    assert m["eager_over_fused_time"] >= 4.0
    assert m["fused_total"]["dot_flops"] == m["eager_total"]["flops"]  # every contraction on tensor cores


def test_model_only_json_from_the_cli():
    proc = _cli("examples/mlp_softmax.toml", "--model-only", "--format", "json", "--batch", "1024")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["kernels"] == [] and report["model"]["batch"] == 1024
    assert math.isfinite(report["model"]["eager_over_fused_time"])


@pytest.mark.parametrize("args,needle", [
    (["examples/does_not_exist.toml"], "does_not_exist.toml"),
    (["examples/mlp_softmax.toml", "--batch", "0"], "--batch"),
    (["examples/mlp_softmax.toml", "--timeout", "-1"], "--timeout"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle):
    proc = _cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


def test_layered_model_counts_each_kernel_by_hand():
    """A network with a volume is modeled kernel by kernel: the convolution's FLOPs and its operands' bytes."""
    from derive.spec import load_spec

    ir = lower(derive(load_spec(ROOT / "examples" / "lecture_convnet_pool.toml")), "<test>")
    batch = 1000
    costs = {c.name: c for c in layered_step(ir, plan_triton(ir), batch)}
    # the pooling's kernel computes the convolution at each window position (a1 has no kernel of its own)
    assert "lecture_convnet_pool_a1_kernel" not in costs
    f2 = costs["lecture_convnet_pool_f2_kernel"]
    # the convolution's multiply-adds, and W4·f2's partial sums (10 × 1176 per row) for a4
    assert f2.flops == 2 * batch * ((6 * 28 * 28) * (3 * 5 * 5) + 10 * 1176)
    # per row: x read; f1 = relu(a1) written (relu′ is read from f1 in backward, so a1 is not stored), f2 written,
    # and 10 partial sums per 16-column block of f2 (74 blocks: 16 pooled columns make the convolution's 64);
    # W1, b1 and W4 once
    assert f2.dram_bytes == 4 * batch * (3 * 32 * 32 + 6 * 28 * 28 + 6 * 14 * 14 + 74 * 10) + 4 * (
        6 * 3 * 5 * 5 + 6 + 10 * 1176)
    dw1 = costs["lecture_convnet_pool_dL_dW1_kernel"]  # ∂W4 = δ4ᵀ·f3 rides there: 10 × 1176 multiply-adds per row
    assert dw1.flops > 2 * batch * 10 * 1176
    assert sum(c.launches for c in costs.values()) == 3
    assert summary(ir, plan_triton(ir), batch, "sm_90")["layered"]


def test_bad_arch_is_refused_with_exit_2():
    proc = _cli("examples/mlp_softmax.toml", "--arch", "sm_70")
    assert proc.returncode == 2 and "--arch" in proc.stderr and "Traceback" not in proc.stderr


def test_a_launch_whose_l2_bytes_dominate_is_timed_by_l2():
    from derive.inspect.model import Cost

    card = CARDS["sm_90"]
    c = Cost("k", 1, dram_bytes=1e6, l2_bytes=1e9, flops=1e6)
    assert c.seconds(card) == pytest.approx(1e6 / card["bandwidth"])  # the older figure ignores L2
    assert c.seconds_l2(card) == pytest.approx(1e9 / 7.0e12) and c.bound(card) == "L2"
    d = Cost("k", 1, dram_bytes=1e9, l2_bytes=1e9, flops=1e6)  # every byte through both: DRAM is slower
    assert d.seconds_l2(card) == pytest.approx(1e9 / card["bandwidth"]) and d.bound(card) == "DRAM"


def test_l2_bandwidth_moves_the_l2_bound_figure_proportionally():
    from derive.spec import load_spec

    ir = lower(derive(load_spec(ROOT / "bench" / "mlp64x4_l2.toml")), "<test>")
    plan = plan_triton(ir)
    fast, slow = (summary(ir, plan, 2**18, "sm_90", l2_bandwidth=bw) for bw in (7e12, 3.5e12))
    assert fast["l2_bandwidth_Bps"] == 7e12 and fast == summary(ir, plan, 2**18, "sm_90")  # 7 TB/s is the default
    kernel_fast, kernel_slow = fast["fused"][0], slow["fused"][0]
    assert kernel_fast["bound"] == "L2"
    assert kernel_slow["seconds_l2"] == pytest.approx(2 * kernel_fast["seconds_l2"])
    assert kernel_fast["seconds_l2"] == pytest.approx(kernel_fast["l2_bytes"] / 7e12)
    assert kernel_slow["seconds"] == kernel_fast["seconds"]  # the older figure does not see L2
    # eager at this batch streams through DRAM (its footprint is far over 50 MB): L2 does not bound it
    assert not fast["eager_in_l2"] and slow["eager_total"]["seconds_l2"] == fast["eager_total"]["seconds_l2"]
    assert fast["eager_over_fused_time_l2"] == pytest.approx(
        fast["eager_total"]["seconds_l2"] / fast["fused_total"]["seconds_l2"])


def test_eager_keeps_its_tensors_in_l2_only_where_the_step_fits():
    ir = lower(derive(NET), "<test>")
    card = CARDS["sm_90"]
    small, large = eager_step(ir, 64, card), eager_step(ir, 2**18, card)
    # small: only x and y (and the parameter-sized operands) come from DRAM; every byte still passes L2
    params = 32 * 64 + 64 + 64 * 64 + 64
    x_and_y = 4 * 64 * (32 + 64)
    # parameter-sized operands: forward reads θ, ∂L/∂θ written, δ2·W2 reads W2, the loss's sum, SGD reads θ and
    # ∂L/∂θ and writes θ
    fixed = 4 * (params + params + 64 * 64 + 1 + 3 * params)
    assert sum(c.dram_bytes for c in small) == x_and_y + fixed
    per_sample = sum(c.l2_bytes for c in small) - fixed
    assert per_sample > 10 * x_and_y  # activations, deltas and the loss's rows: all in L2
    assert all(c.dram_bytes == c.l2_bytes for c in large)  # 2^18 rows of 64-wide activations do not fit
    assert [c.l2_bytes for c in eager_step(ir, 64)] == [c.l2_bytes for c in small]


def test_l2_bandwidth_option_reaches_the_json_and_bad_values_exit_2():
    proc = _cli("bench/mlp64x4_l2.toml", "--model-only", "--format", "json", "--batch", "262144",
                "--l2-bandwidth", "10")
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)["model"]
    assert m["l2_bandwidth_Bps"] == pytest.approx(10e12)
    assert m["fused"][0]["seconds_l2"] == pytest.approx(m["fused"][0]["l2_bytes"] / 10e12)
    for key in ("seconds_l2", "seconds_l2_launch", "l2_bytes"):
        assert key in m["fused_total"] and key in m["eager_total"]
    assert m["fused_total"]["seconds_l2_launch"] == pytest.approx(m["fused_total"]["seconds_l2"] + 2 * 5e-6)
    bad = _cli("bench/mlp64x4_l2.toml", "--model-only", "--l2-bandwidth", "0")
    assert bad.returncode == 2 and "--l2-bandwidth" in bad.stderr and "Traceback" not in bad.stderr


def test_a_kernel_that_compiles_but_cannot_launch_is_not_ok():
    # measured: the 64x4 net's "sums per program" plan at 16 warps compiled to 252 registers, no spill;
    # 512 threads of 252 (256 allocated) need 131,072 registers, twice an SM's
    err = launch_error("sm_90", 252, 16, 24576)
    assert err and "131,072" in err and "65,536" in err
    assert launch_error("sm_90", 255, 8, 24576) is None  # 256 x 256 = 65,536: exactly the register file
    assert launch_error("sm_90", 128, 16, 24576) is None
    assert launch_error("sm_90", 129, 16, 0) is not None  # 129 rounds up to 136 a thread (256 a warp)
    assert launch_error("sm_90", 64, 4, 227 * 1024) is None
    assert "shared memory" in launch_error("sm_90", 64, 4, 227 * 1024 + 1)
    assert launch_error("sm_80", 64, 4, 200 * 1024) is not None  # over sm_80's 163 KB, under sm_90's

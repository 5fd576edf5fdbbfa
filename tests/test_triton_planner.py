"""The Triton planner (derive.targets.triton_planner): the IR's phases, classified by the per-layer emitter
table, fuse into one kernel exactly where every phase is row-local; otherwise each gets its per-layer
kernel, and the plan names the phase that stopped the fusion.  Checked against a rule stated independently
of the classifier (a volume anywhere in the network, or a concat, keeps the phases apart), over every
example and both concat graphs; the modules' numbers are checked elsewhere (test_codegen, test_graph), except
the merged per-layer kernels' (a bias gradient with its weight gradient, the row-complete epilogue of the
last dense layer), checked here against torch.autograd in float64 under every setting of their flags."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import ROOT, assert_close_to_torch, module_outputs, torch_reference, triton_inputs, triton_outputs

from derive import (AvgPool2d, Concat, Conv2d, Flatten, Linear, LocallyConnected, Loss, MaxPool2d, Network, Port,
                    load_spec, verify)
from derive.derivation import derive
from derive.inspect import format_text, inspect
from derive.inspect.model import layered_step, summary
from derive.ir.lowering import lower
from derive.targets.modules import generated_modules
from derive.targets.triton_planner import fuse, phases, plan_triton

CONCAT = Network("plan_concat", [Linear(2, activation="sigmoid"), Linear(3, activation="tanh", input="x"),
                                 Concat(["f2", "f1", "x"]), Linear(1)], Port("x", (3,)), Port("y", ()))
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


def _separate_by_rule(net) -> bool:
    """The rule the planner's fusion pass must agree with: phases stay apart where a layer takes or makes
    a volume (c, h, w), or a layer joins its inputs' columns."""
    return any(len(layer.in_shape) == 3 or len(layer.out_shape) == 3 or layer.kind == "concat"
               for layer in lower(derive(net), "<t>").layers)


@pytest.mark.parametrize("net", [*(load_spec(p) for p in EXAMPLES), CONCAT],
                         ids=[*(p.stem for p in EXAMPLES), "concat"])
def test_fusion_follows_row_locality(net):
    ir = lower(derive(net), "<t>")
    plan = plan_triton(ir)
    stop = fuse(ir, phases(ir))
    assert (stop is not None) == _separate_by_rule(net)
    if stop is None:  # one fused kernel: every phase in it, a strategy for its bytes, no per-layer kernels
        assert plan.strategy is not None and not plan.kernels
        assert len(plan.fusion) == 1 and plan.fusion[0].startswith(f"{ir.name}_fused_kernel: all ")
        assert f"{ir.name}_fused_kernel(" in plan.text
    else:  # per-layer kernels, the first line naming the phase that stopped the fusion and why
        assert plan.strategy is None and plan.kernels and f"{ir.name}_fused_kernel" not in plan.text
        assert plan.fusion[0] == f"not fused: {stop.name} ({stop.node}) {stop.why_not}"
        assert [f.split(":", 1)[0] for f in plan.fusion[1:]] == [k.name for k in plan.kernels]


def _against_torch_on_cuda_tiles(net, seed, device, monkeypatch, splits=None):
    """37 rows (a part-full row tile) through the CUDA column tiles on the CPU (CPU_WIDE_TILES off), with
    `splits` splits of the batch so that every read-modify-write runs on several row tiles; ŷ, the loss and
    every gradient against torch.autograd in float64."""
    rng = np.random.default_rng(seed)
    with generated_modules(net, "<test>", ("numpy", "triton")) as mods:
        trm = mods["triton"]
        monkeypatch.setattr(trm, "CPU_WIDE_TILES", False)
        if splits is not None:
            monkeypatch.setattr(trm, "SPLITS", splits)
        params = verify.random_params(mods["numpy"], rng)
        x, y = verify.sample(net, rng, 37)
        tp, tx, ty = triton_inputs(net, params, x, y, device)
        assert_close_to_torch(net, triton_outputs(trm, tp, tx, ty, net=net), tp, tx, ty, 1e-4, net.name, True)


def test_every_assignment_is_a_phase_once():
    ir = lower(derive(load_spec(ROOT / "examples" / "lecture_convnet.toml")), "<t>")
    names = [p.name for p in phases(ir)]
    want = [a.name for a in (*ir.forward, ir.output, ir.loss, *ir.backward)]
    assert names == want
    kinds = {p.name: p.node for p in phases(ir)}
    assert kinds["a1"] == "ConvForward" and kinds["dL_dW1"] == "ConvWeightGrad"
    # what stopped the fusion is the first phase that reads across pixels: the convolution
    assert fuse(ir, phases(ir)).name == "a1"


def test_a_concat_inside_a_line_stops_the_fusion():
    ir = lower(derive(CONCAT), "<t>")
    stop = fuse(ir, phases(ir))
    assert stop is not None and "concatenation" in stop.why_not


@pytest.mark.parametrize("spec", ["mlp_softmax", "lecture_convnet"])
def test_inspect_prints_the_kernels_and_why(spec):
    path = ROOT / "examples" / f"{spec}.toml"
    report = inspect(load_spec(path), str(path), batch=64, compile_kernels=False)
    text = format_text(report)
    assert report["fusion"] and all(f"  {line}" in text for line in report["fusion"])
    if spec == "mlp_softmax":
        assert "fused: every phase is row-local" in text
    else:
        assert "not fused: a1 (ConvForward)" in text


# A conv2d and a locally connected layer (each a weight gradient with its bias gradient beside it) under a
# dense layer whose output row fits one tile (ŷ, the loss and ∂L/∂f in its epilogue), for two losses
MERGED = {
    "cross_entropy": Network("plan_merged_ce", [Conv2d(2, 3, activation="relu"), LocallyConnected(2, 2, activation="tanh"),
                                                Flatten(), Linear(3)], Port("x", (1, 7, 7)), Port("y", ()),
                             loss=Loss("cross_entropy")),
    "l2": Network("plan_merged_l2", [Conv2d(3, 2, stride=2, padding=1, activation="sigmoid"), Flatten(),
                                     Linear(4, activation="tanh")], Port("x", (2, 5, 5)), Port("y", (4,)),
                  loss=Loss("l2")),
}


def _kernels(spec: str) -> list[str]:
    ir = lower(derive(load_spec(ROOT / "examples" / f"{spec}.toml")), "<t>")
    return [line.split(": ", 1)[1] for line in plan_triton(ir).fusion[1:]]


def test_the_convnets_merge_bias_gradients_and_the_row_complete_epilogue():
    """The kernels the merges leave (each line: the kernel's head, then what it computes after it): a bias
    gradient in the kernel of the weight gradient reading the same δ, ŷ, the loss per sample and
    ∂L/∂f = softmax − onehot in the epilogue of the 10-wide dense layer, and the convolution's δ (with the
    δ·W or the pooling gather it comes from) computed in the convolution's weight-gradient kernel, where the
    dense layer's ∂W3 over the convolution's output rides too, and the dense layer's row-complete work of a
    training step (lecture_convnet)."""
    assert _kernels("lecture_convnet") == ["a1, f1", "a3, yhat, loss_per_sample, dL_df3 (forward(), loss() and "
                                           "intermediates() only: a training step's backward kernel does its work)",
                                           "dL_dW1, a3, loss_per_sample, dL_df3, dL_dW3, dL_db3, dL_df2, delta1, "
                                           "dL_db1"]
    # a training step: the convolution, the backward kernel (which computes a3, the loss and δ3 itself), the
    # update; a3's own kernel runs for forward(), loss() and intermediates() alone
    ir = lower(derive(load_spec(ROOT / "examples" / "lecture_convnet.toml")), "<t>")
    assert summary(ir, plan_triton(ir), 16384, "sm_90")["fused_total"]["launches"] == 3
    # the pooled convnet: the pooling computes the convolution at its windows (a1, f1 after its head f2), and the
    # backward kernel computes ∂L/∂f3 = δ4·W4 over the pooled columns, with ∂W4 riding, before its walk
    assert _kernels("lecture_convnet_pool") == [
        "f2, a1, f1", "a4, yhat, loss_per_sample, dL_df4 (forward(), loss() and intermediates() only: a training "
        "step's backward kernel does its work)",
        "dL_dW1, a4, loss_per_sample, dL_df4, dL_dW4, dL_db4, dL_df3, dL_df1, delta1, dL_db1"]
    ir = lower(derive(load_spec(ROOT / "examples" / "lecture_convnet_pool.toml")), "<t>")
    assert summary(ir, plan_triton(ir), 16384, "sm_90")["fused_total"]["launches"] == 3


def _plan(spec: str):
    return plan_triton(lower(derive(load_spec(ROOT / "examples" / f"{spec}.toml")), "<t>"))


def test_a_convolutions_delta_is_computed_in_its_weight_gradient_kernel_where_nothing_else_reads_it():
    """lecture_convnet's δ1 = (δ3·W3)·relu′(f1) is read by ∂W1 and ∂b1 alone: their kernel computes it tile by
    tile, so no buffer holds it and the kernel reads what δ1 is made of (x for the windows, f1, δ3, W3).
    resnet_block's δ2 is read by ∂W2 and by the input gradient of its convolution: it is stored, and ∂W2's
    kernel reads it."""
    plan = _plan("lecture_convnet")
    k = next(k for k in plan.kernels if k.name == "lecture_convnet_dL_dW1_kernel")
    assert "_b_delta1" not in plan.text and "lecture_convnet_dL_df2_kernel" not in plan.text
    # the model's bytes per row: x and f1 read once, the partial sums of a3 (one per class and column block of
    # 64 of f1) and the class index y (W3 is a parameter, counted per launch; δ3 stays in L2)
    ir = lower(derive(load_spec(ROOT / "examples" / "lecture_convnet.toml")), "<t>")
    f1 = np.prod(ir.arrays()["f1"].shape)
    classes = ir.layers[-1].out_shape[0]
    assert k.row == 4 * (np.prod(ir.input.shape) + f1) + 4 * -(-f1 // 64) * classes + 8
    assert k.fixed == 4 * sum(np.prod(p.shape) for p in ir.params if p.name in ("W3", "b3"))
    resnet = _plan("resnet_block")
    assert "resnet_block_dL_df2_kernel: dL_df2, delta2" in resnet.fusion
    assert "resnet_block_dL_dW2_kernel: dL_dW2, dL_db2" in resnet.fusion
    assert "_b_delta2" in resnet.text


def test_a_buffer_passed_to_a_kernel_twice_is_counted_once():
    """Max-pooling's gradient reads f1 through its gather and again for relu′(f1): one DRAM read per row.  So
    is ∂L/∂f3, which the kernel's pass over the pooled columns stores and the gather reads back (from L2)."""
    ir = lower(derive(load_spec(ROOT / "examples" / "lecture_convnet_pool.toml")), "<t>")
    k = next(k for k in _plan("lecture_convnet_pool").kernels if k.name.endswith("_dL_dW1_kernel"))
    arrays = ir.arrays()
    pooled = np.prod(arrays["f2"].shape)  # ∂L/∂f3 = ∂L/∂f2, the pooled volume's gradient (a view)
    # per row: x and f1 read, ∂L/∂f3 written, f2 read for ∂W4, a4's partial sums (10 per 16-column block of
    # f2, 74 blocks) and the class index y (int64) read
    assert k.row == 4 * (np.prod(ir.input.shape) + np.prod(arrays["f1"].shape) + 2 * pooled) + 4 * 74 * 10 + 8
    assert k.l2_row >= 4 * pooled  # the gather's read of ∂L/∂f3


@pytest.mark.parametrize("spec", ["lecture_convnet", "lecture_convnet_pool", "mlp_softmax", "lecture"])
def test_the_model_counts_every_launch_a_training_step_makes(spec, triton_device_name):
    """The layered model's launches are the launches FlatState.step makes, counted by wrapping every kernel of
    the generated module (the loss's own sum kernel was once left out of the model)."""
    import torch

    net = load_spec(ROOT / "examples" / f"{spec}.toml")
    ir = lower(derive(net), "<t>")
    modeled = summary(ir, plan_triton(ir), 1024, "sm_90")["fused_total"]["launches"]
    with generated_modules(net, "<test>", ("triton",)) as mods:
        mod = mods["triton"]
        launched = []

        class Counted:
            def __init__(self, name, kernel):
                self.name, self.kernel = name, kernel

            def __getitem__(self, grid):
                launched.append(self.name)
                return self.kernel[grid]

        for name in [n for n in dir(mod) if n.endswith("_kernel")]:
            setattr(mod, name, Counted(name, getattr(mod, name)))
        params = mod.init_params(0)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3, *ir.input.shape, generator=g)
        y = (torch.randint(0, ir.layers[-1].out_shape[0], (3,), generator=g) if ir.target.dtype == "int"
             else torch.randn(3, *ir.target.shape, generator=g))
        mod.FlatState(params).step(x, y, 1)
    assert len(launched) == modeled, launched


@pytest.mark.parametrize("loss", list(MERGED))
def test_merged_kernels_match_torch_autograd(loss, triton_device_name):
    """The merged kernels under each setting of the epilogue's flags (forward(): ŷ alone, loss(), gradients(),
    launch(): all three, step(): the loss and the gradients) against torch.autograd in float64."""
    net = MERGED[loss]
    ir = lower(derive(net), "<t>")
    lines = [line.split(": ", 1)[1].split(", ") for line in plan_triton(ir).fusion[1:]]
    # every bias gradient rides after its weight gradient; ŷ and the loss after the last dense layer
    biases = {f"dL_d{p.name}" for p in ir.params if p.name.startswith("b")}
    assert {b for ln in lines if ln[0].replace("dL_dW", "dL_db") in biases for b in ln[1:] if b in biases} == biases
    assert not any(ln[0] in biases for ln in lines)
    assert any({"yhat", "loss_per_sample"} <= set(ln[1:]) for ln in lines)
    rng = np.random.default_rng(7)
    with generated_modules(net, "<test>", ("numpy", "triton")) as mods:
        params = verify.random_params(mods["numpy"], rng)
        x, y = verify.sample(net, rng, 5)
        tp, tx, ty = triton_inputs(net, params, x, y)
        trm = mods["triton"]
        assert_close_to_torch(net, module_outputs(trm, tp, tx, ty), tp, tx, ty, 1e-4, f"{net.name} one flag", True)
        assert_close_to_torch(net, triton_outputs(trm, tp, tx, ty, net=net), tp, tx, ty, 1e-4, f"{net.name} all", True)
        # step() at lr 1 (so that θ − θ' holds the gradient to float32 precision): its loss and its gradients
        new, _, step_loss = trm.step(tp, trm.init_state(tp), tx, ty, 0, hyper={"lr": 1.0})
        got = {"forward": trm.forward(tp, tx).double().numpy(), "loss": np.float64(step_loss)}
        got.update({f"grad {k}": (tp[k].double() - new[k].double()).numpy() for k in tp})
        assert set(got) == set(torch_reference(net, tp, tx, ty))
        assert_close_to_torch(net, got, tp, tx, ty, 1e-4, f"{net.name} step", True)


def _signature(text: str, kernel: str) -> list[str]:
    """A generated kernel's parameter names, read from the module's source."""
    import ast

    fn = next(n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef) and n.name == kernel)
    return [a.arg for a in fn.args.args]


@pytest.mark.parametrize("spec,producer,f,dense,w", [
    ("lecture_convnet", "a1", "f1", "a3", "W3"),  # the conv's tile holds f1 = relu(a1)
    # the pooling's tile holds its output; it computes the convolution at its windows itself
    ("lecture_convnet_pool", "f2", "f2", "a4", "W4"),
    ("digits_convnet", "f2", "f2", "a4", "W4"),
])
def test_a_small_dense_layer_adds_the_partial_sums_its_operands_kernel_stores(spec, producer, f, dense, w):
    """W·f of a dense layer of at most 16 outputs: the kernel that holds f's column tiles stores Σ_k W[j, k]·f[k]
    per column block, and the dense layer's kernel reads those instead of f's rows; the model counts the
    partials (blocks of the CUDA column tile, 64 wide for a window's or a pooling's kernel) written there and
    read here, and the 2·J·width FLOPs they take.  Every one of these networks starts with its convolution a1,
    which is the producer or runs inside it (a pooling over it)."""
    from derive.targets.triton_layers import WINDOW_N

    ir = lower(derive(load_spec(ROOT / "examples" / f"{spec}.toml")), "<t>")
    plan = plan_triton(ir)
    j, width = ir_param_shape(ir, w)
    # a pooling's kernel that computes the convolution under it takes 2 × 2 windows of 64 / 4 columns a tile
    blocks = -(-width // (WINDOW_N if producer == "a1" else WINDOW_N // 4))
    prod, dens = f"{ir.name}_{producer}_kernel", f"{ir.name}_{dense}_kernel"
    assert f"{f}_ptr" not in _signature(plan.text, dens) and f"{dense}_part_ptr" in _signature(plan.text, dens)
    assert {f"{w}_ptr", f"{dense}_part_ptr", f"{f}_ptr"} <= set(_signature(plan.text, prod))  # f: the backward reads it
    cost = {k.name: k for k in plan.kernels}
    arrays = ir.arrays()
    # the dense kernel's rows: the partials, the target (int64) and ∂L/∂f it stores for the backward
    assert cost[dens].row == 4 * blocks * j + 8 + 4 * j
    # the producer's rows: the convolution's input x, f1 = relu(a1) stored for the backward, f where it is the
    # pooled f2, and the partials
    conv = math.prod(arrays["a1"].shape)
    pooled = width if producer != "a1" else 0
    assert cost[prod].row == 4 * math.prod(ir.input.shape) + 4 * conv + 4 * pooled + 4 * blocks * j
    assert cost[prod].fixed >= 4 * j * width  # it reads W once per launch
    # the dense kernel adds the blocks' partials; the producer takes the multiply-adds W·f took
    assert cost[dens].flops == blocks * j
    window = next(a for a in ir.forward if a.name == "a1").expr
    window_flops = 2 * conv * math.prod(ir_param_shape(ir, window.args[1].name)[1:])
    assert cost[prod].flops == window_flops + 2 * j * width


def ir_param_shape(ir, name: str) -> tuple:
    p = next(p for p in ir.params if p.name == name)
    return (p.shape[0], math.prod(p.shape[1:]))


def test_a_dense_layer_wider_than_the_limit_reads_its_operand():
    """17 outputs pad to 32 > 16: the dense layer's kernel reads f itself (W·f by rank-1 updates)."""
    net = Network("plan_wide_dense", [Conv2d(2, 3, activation="relu"), Flatten(), Linear(17)],
                  Port("x", (1, 7, 7)), Port("y", ()), loss=Loss("cross_entropy"))
    text = plan_triton(lower(derive(net), "<t>")).text
    assert "f1_ptr" in _signature(text, "plan_wide_dense_a3_kernel") and "_partials_store" not in text


def test_the_partial_sums_over_several_column_blocks_match_torch_autograd(triton_device_name, monkeypatch):
    """The CUDA column tiles on the CPU too (CPU_WIDE_TILES off): 3×10×9 = 270 conv outputs in 5 blocks of 64,
    the last one part full, sigmoid making the masked columns nonzero, 37 rows (a part-full row tile); ŷ, the
    loss and every gradient against torch.autograd in float64."""
    net = Network("plan_split_k", [Conv2d(3, 3, padding=1, activation="sigmoid"), Flatten(), Linear(5)],
                  Port("x", (2, 10, 9)), Port("y", ()), loss=Loss("cross_entropy"))
    assert "_partials_store" in plan_triton(lower(derive(net), "<t>")).text
    _against_torch_on_cuda_tiles(net, 11, triton_device_name, monkeypatch)


def test_a_dense_weight_gradient_riding_in_the_convolutions_kernel_matches_torch_autograd(triton_device_name,
                                                                                         monkeypatch):
    """conv → flatten → dense: ∂W3 (and ∂b3) ride in ∂W1's kernel, which computes δ1 and holds f1's tiles.
    Each program read-modify-writes its filter's columns of ∂W3 in its split's row, tile after tile: with 2
    splits of 19 rows (tiles of 8, 8 and 3 rows) and the CUDA tiles (12 blocks of 8 positions, the last part
    full), every sum is added to several times.  Against torch.autograd in float64."""
    net = Network("plan_riding", [Conv2d(3, 3, padding=1, activation="sigmoid"), Flatten(), Linear(5)],
                  Port("x", (2, 10, 9)), Port("y", ()), loss=Loss("cross_entropy"))
    plan = plan_triton(lower(derive(net), "<t>"))
    assert ("plan_riding_dL_dW1_kernel: dL_dW1, a3, loss_per_sample, dL_df3, dL_dW3, dL_db3, dL_df2, delta1, "
            "dL_db1") in plan.fusion
    assert "plan_riding_dL_dW3_kernel" not in plan.text
    _against_torch_on_cuda_tiles(net, 12, triton_device_name, monkeypatch, splits=2)


def test_a_riding_weight_gradient_without_the_row_work_matches_torch_autograd(triton_device_name, monkeypatch):
    """17 classes: the dense layer reads f1 itself (no split-K partials), so its row kernel keeps its launch
    and ∂W3 rides alone in ∂W1's kernel, read-modify-written across row tiles.  Against torch.autograd."""
    net = Network("plan_riding_wide", [Conv2d(2, 3, activation="relu"), Flatten(), Linear(17)],
                  Port("x", (1, 7, 7)), Port("y", ()), loss=Loss("cross_entropy"))
    plan = plan_triton(lower(derive(net), "<t>"))
    assert "plan_riding_wide_dL_dW1_kernel: dL_dW1, dL_dW3, dL_db3, dL_df2, delta1, dL_db1" in plan.fusion
    _against_torch_on_cuda_tiles(net, 13, triton_device_name, monkeypatch, splits=2)


def test_the_cpu_tiles_of_a_convolutions_weight_gradient_take_several_filters_per_program(triton_device_name,
                                                                                          monkeypatch):
    """On CPU tensors ∂W1's kernel takes several filters per program (the interpreter pays per program).
    With the sum's cap lowered to 8,192 floats: 8 rows and 2 filters a program, so 5 filters make 3
    programs, the last with one filter masked; 37 rows in splits of 16 make 3 splits.  Against
    torch.autograd in float64."""
    from derive.targets import triton_conv_grad

    monkeypatch.setattr(triton_conv_grad, "WIDE_SUMS", 8192)
    net = Network("plan_filters", [Conv2d(5, 3, padding=1, activation="tanh"), Flatten(), Linear(4)],
                  Port("x", (2, 6, 6)), Port("y", ()), loss=Loss("cross_entropy"))
    rng = np.random.default_rng(14)
    with generated_modules(net, "<test>", ("numpy", "triton")) as mods:
        trm = mods["triton"]
        with open(trm.__file__, encoding="utf-8") as f:
            assert "FILTERS=(2if_wideelse1)" in "".join(f.read().split())
        monkeypatch.setattr(trm, "WIDE_SPLIT_ROWS", 16)
        params = verify.random_params(mods["numpy"], rng)
        x, y = verify.sample(net, rng, 37)
        tp, tx, ty = triton_inputs(net, params, x, y, triton_device_name)
        assert_close_to_torch(net, triton_outputs(trm, tp, tx, ty, net=net), tp, tx, ty, 1e-4, net.name, True)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_a_pooled_convolution_trains_in_three_launches_and_matches_torch_autograd(pool, triton_device_name,
                                                                                  monkeypatch):
    """conv → 2×2 pooling → flatten → dense: the pooling's kernel computes the convolution at each window
    position (storing f1 for the backward), and ∂W1's kernel computes ∂L/∂f3 = δ4·W4 over its filters'
    pooled columns before its walk, with ∂W4 riding there: three launches a training step.  With 2 splits
    of 19 rows and the CUDA tiles, every read-modify-write of ∂W4 runs on several row tiles.  Against
    torch.autograd in float64."""
    layer = MaxPool2d(2) if pool == "max" else AvgPool2d(2)
    net = Network(f"plan_pooled_{pool}", [Conv2d(3, 3, padding=1, activation="relu"), layer, Flatten(), Linear(5)],
                  Port("x", (2, 6, 8)), Port("y", ()), loss=Loss("cross_entropy"))
    ir = lower(derive(net), "<t>")
    plan = plan_triton(ir)
    assert f"plan_pooled_{pool}_f2_kernel: f2, a1, f1" in plan.fusion
    assert (f"plan_pooled_{pool}_dL_dW1_kernel: dL_dW1, a4, loss_per_sample, dL_df4, dL_dW4, dL_db4, dL_df3, "
            "dL_df1, delta1, dL_db1") in plan.fusion
    assert sum(c.launches for c in layered_step(ir, plan, 1024)) == 3
    _against_torch_on_cuda_tiles(net, 15, triton_device_name, monkeypatch, splits=2)


def test_a_pooling_whose_windows_leave_a_remainder_keeps_its_own_kernel(triton_device_name):
    """7 × 7 pooled by 2 × 2 windows leaves the last row and column in no window: the convolution keeps its
    own kernel (its every position must be stored), and the backward still computes ∂L/∂f3 in ∂W1's kernel.
    Against torch.autograd in float64, on the CPU tiles."""
    net = Network("plan_pool_rest", [Conv2d(2, 3, padding=1, activation="tanh"), MaxPool2d(2), Flatten(),
                                     Linear(3)], Port("x", (1, 7, 7)), Port("y", ()), loss=Loss("cross_entropy"))
    plan = plan_triton(lower(derive(net), "<t>"))
    assert "plan_pool_rest_a1_kernel: a1, f1" in plan.fusion and "plan_pool_rest_f2_kernel: f2" in plan.fusion
    assert any("dL_dW4, dL_db4, dL_df3, dL_df1, delta1" in line for line in plan.fusion)
    rng = np.random.default_rng(16)
    with generated_modules(net, "<test>", ("numpy", "triton")) as mods:
        trm = mods["triton"]
        params = verify.random_params(mods["numpy"], rng)
        x, y = verify.sample(net, rng, 37)
        tp, tx, ty = triton_inputs(net, params, x, y, triton_device_name)
        assert_close_to_torch(net, triton_outputs(trm, tp, tx, ty, net=net), tp, tx, ty, 1e-4, net.name, True)

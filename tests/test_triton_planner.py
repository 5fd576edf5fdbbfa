"""The Triton planner (derive.targets.triton_planner): the IR's phases, classified by the per-layer emitter
table, fuse into one kernel exactly where every phase is row-local; otherwise each gets its per-layer
kernel, and the plan names the phase that stopped the fusion.  Checked against a rule stated independently
of the classifier (a volume anywhere in the network, or a concat, keeps the phases apart), over every
example and both concat graphs; the modules' numbers are checked elsewhere (test_codegen, test_graph)."""

from __future__ import annotations

import pytest

from helpers import ROOT

from derive import Concat, Linear, Network, Port, load_spec
from derive.derivation import derive
from derive.inspect import format_text, inspect
from derive.ir.lowering import lower
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
        assert [f.split(":", 1)[0] for f in plan.fusion[1:]] == [k[0] for k in plan.kernels]


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

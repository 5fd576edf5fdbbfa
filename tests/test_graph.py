"""Graph networks: layers that name their input(s), add and concat, and the multivariate chain rule.

The spec errors are one line naming the key path (exit 2 from the CLI); the derivation sums ∂L/∂f over
the layers f feeds, one term per path, each δ still made once; every number is checked by
`derive verify` (torch.autograd on the network rebuilt from the Network alone, and central finite
differences), on every target (Triton: the fused kernel for a dense graph with add, the per-layer kernels
with volumes or concat).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from derive import Add, Concat, Conv2d, Flatten, Linear, Loss, MaxPool2d, Network, Port, derive
from derive.cli import main
from derive.errors import DerivationError, SpecError
from derive.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
RESIDUAL = ROOT / "examples" / "residual_mlp.toml"
RESNET = ROOT / "examples" / "resnet_block.toml"


def _spec(layers: list[dict], shape=(3,), target=(2,), loss="l2") -> dict:
    return {"name": "g", "input": {"name": "x", "shape": list(shape)}, "target": {"name": "y", "shape": list(target)},
            "layers": layers, "loss": {"type": loss}}


def _error(layers, **kw) -> str:
    with pytest.raises(SpecError) as err:
        parse_spec(_spec(layers, **kw), "g.toml")
    return str(err.value)


LIN = {"type": "linear", "out": 4}


@pytest.mark.parametrize("layers, expected", [
    ([LIN, LIN, {"type": "add", "inputs": ["f1", "zz"]}, {"type": "linear", "out": 2}],
     "g.toml: layers[2].inputs[1]: unknown quantity 'zz'; expected the input or an earlier layer's output, one of x, f1, f2"),
    ([{**LIN, "input": "f2"}, LIN, {"type": "linear", "out": 2}],
     "g.toml: layers[0].input: 'f2' is computed by layers[1], at or after this layer (a cycle)"),
    ([LIN, {**LIN, "input": "f2"}, {"type": "linear", "out": 2}],
     "g.toml: layers[1].input: 'f2' is computed by layers[1], at or after this layer (a cycle)"),
    ([LIN, {"type": "linear", "out": 3}, {"type": "add", "inputs": ["f1", "f2"]}, {"type": "linear", "out": 2}],
     "g.toml: layers[2].inputs: expected quantities of one shape to add; f1 is [4], f2 is [3]"),
    ([LIN, LIN, {"type": "linear", "out": 2}],  # f1 read by layer 2 only: fine; but an unread one:
     None),
    ([LIN, {**LIN, "input": "x"}, {"type": "linear", "out": 2}],
     "g.toml: layers[0]: its output f1 is never read"),
    ([LIN, {"type": "add", "inputs": ["f1", "f1"]}, {"type": "linear", "out": 2}],
     "g.toml: layers[1].inputs[1]: 'f1' is named twice"),
    ([LIN, {"type": "add", "inputs": ["f1"]}, {"type": "linear", "out": 2}],
     "g.toml: layers[1].inputs: expected a list of two or more quantity names"),
    ([LIN, {"type": "add"}, {"type": "linear", "out": 2}],
     "g.toml: layers[1].inputs: missing required key"),
    ([LIN, {"type": "add", "inputs": ["f1", 3]}, {"type": "linear", "out": 2}],
     "g.toml: layers[1].inputs[1]: expected a quantity name (string), got 3"),
    ([LIN, {"type": "add", "inputs": ["f1", "x"], "input": "f1"}, {"type": "linear", "out": 2}],
     "g.toml: layers[1].input: unknown key 'input'"),
    ([LIN, {**LIN, "inputs": ["f1", "x"]}, {"type": "linear", "out": 2}],
     "g.toml: layers[1].inputs: unknown key 'inputs'"),
    ([LIN, {**LIN, "input": 1}, {"type": "linear", "out": 2}],
     "g.toml: layers[1].input: expected a quantity name (string), got 1"),
    ([LIN, {**LIN, "input": "a1"}, {"type": "linear", "out": 2}],
     "g.toml: layers[1].input: unknown quantity 'a1'"),
    ([LIN, {"type": "concat", "inputs": ["f1", "x"]}, {"type": "linear", "out": 2}], None),
])
def test_spec_errors_name_the_key(layers, expected):
    if expected is None:
        parse_spec(_spec(layers), "g.toml")  # accepted
        return
    assert _error(layers).startswith(expected)


def test_unread_input_and_concat_shapes():
    assert _error([{"type": "linear", "out": 2, "input": "x"}, {"type": "linear", "out": 2, "input": "x"}]).startswith(
        "g.toml: layers[0]: its output f1 is never read")
    vol = [{"type": "conv2d", "filters": 2, "kernel": 3}, {"type": "conv2d", "filters": 1, "kernel": 1, "input": "x"},
           {"type": "concat", "inputs": ["f1", "f2"]}, {"type": "flatten"}, {"type": "linear", "out": 2}]
    assert _error(vol, shape=(1, 4, 4)).startswith(
        "g.toml: layers[2].inputs: expected vectors (joined along features) or volumes of one height and width "
        "(joined along channels); f1 is [2, 2, 2], f2 is [1, 4, 4]")
    with pytest.raises(SpecError, match=r"^<python>: layers\[1\]: its output f2 is never read"):
        Network("g", [Linear(2), Linear(2), Linear(2, input="f1")], Port("x", (3,)), Port("y", (2,)))


def test_cli_refuses_a_cycle_in_one_line(tmp_path, capsys):
    bad = tmp_path / "cycle.toml"
    bad.write_text(textwrap.dedent("""\
        name = "cycle"
        input = { name = "x", shape = [3] }
        target = { name = "y", shape = [2] }
        [[layers]]
        type = "add"
        inputs = ["x", "f1"]
        [[layers]]
        type = "linear"
        out = 2
        """))
    assert main(["explain", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "layers[0].inputs[1]: 'f1' is computed by layers[0], at or after this layer (a cycle)" in err


def test_python_api_builds_the_same_graph():
    net = Network("residual_mlp", [Linear(4, activation="tanh"), Linear(4, activation="relu"), Add(["f1", "f2"]),
                                   Linear(2)], Port("x", (3,)), Port("y", (2,)))
    assert net == load_spec(RESIDUAL)
    assert [li.sources for li in net.info] == [("x",), ("f1",), ("f1", "f2"), ("f3",)]


def test_the_sum_over_paths_is_derived_once_per_quantity():
    der = derive(load_spec(RESIDUAL))
    names = [s.name for s in der.backward]
    assert len(names) == len(set(names))  # each δ, each ∂L/∂f, made once
    total = der.step("dL_df1")
    assert total.terms == ("dL_df1_via2", "dL_df1_via3")
    assert [t.factors[-1].name for t in der.paths(total)] == ["da2/df1", "da3/df1"]
    # each term is δ of its consumer times the local partial SymPy derived
    assert str(der.step("dL_df1_via2").rhs) == "Sum(W2[i, j]*delta2[i], (i, 0, 3))"
    assert str(der.step("dL_df1_via3").rhs) == "delta3[j]"
    assert total.rhs.args == (der.step("dL_df1_via2").rhs, der.step("dL_df1_via3").rhs)  # in the paths' order
    # the δ below re-uses the sum, as it would a single consumer's ∂L/∂f1
    assert der.step("delta1").factors[0].name == "dL/df1" and der.step("delta1").factors[0].reused
    assert der.paths_note(total) == "f1 feeds a2 and a3: sum over paths"


def test_explain_reads_as_the_lecture(tmp_path, capsys):
    spec = tmp_path / "res_scalar.toml"
    spec.write_text(textwrap.dedent("""\
        name = "res_scalar"
        [[layers]]
        type = "linear"
        activation = "sigmoid"
        [[layers]]
        type = "linear"
        activation = "tanh"
        [[layers]]
        type = "add"
        inputs = ["f1", "f2"]
        [[layers]]
        type = "linear"
        """))
    from derive import explain

    text = explain(str(spec)).text()
    assert "  ∂L/∂f1 = δ2 · ∂a2/∂f1 + δ3 · ∂a3/∂f1      (f1 feeds a2 and a3: sum over paths)\n" in text
    assert "    ∂L/∂f1 = δ2·w2 + δ3\n" in text
    assert "f1_via" not in text  # the path terms are shown inside their sum, not apart
    latex = explain(str(spec)).latex()
    assert (r"\delta_{2} \, \frac{\partial a_{2}}{\partial f_{1}} + \delta_{3} \, "
            r"\frac{\partial a_{3}}{\partial f_{1}}") in latex
    lecture_tex = (r"\frac{\partial L}{\partial f_{1}} &= \delta_{2} \, \frac{\partial a_{2}}{\partial f_{1}} + \delta_{3} \, "
                   r"\frac{\partial a_{3}}{\partial f_{1}}")
    note = r"\text{(f1 feeds a2 and a3: sum over paths)}"
    # the symbolic derivation puts its note on a row of its own; --at keeps it beside the sum
    assert lecture_tex + " \\\\\n&\\qquad " + note in explain(str(spec)).markdown()  # also the notebook's
    assert main(["explain", str(spec), "--format", "markdown", "--at", "x=0.5", "y=1", "--seed", "1"]) == 0
    assert lecture_tex + r" \quad " + note in capsys.readouterr().out
    js = explain(str(spec)).json()
    (total,) = [u for u in js["upstream"] if u["name"] == "dL_df1"]
    assert total["sum_over_paths"]["note"] == "f1 feeds a2 and a3: sum over paths"
    assert [p["chain"] for p in total["sum_over_paths"]["paths"]] == [["delta2", "da2/df1"], ["delta3", "da3/df1"]]


def test_explain_at_sums_the_numbers(tmp_path, capsys):
    assert main(["explain", str(RESIDUAL.parent / "residual_mlp.toml"), "--at", "x=[0.5, -1, 2]", "y=[1, 0]",
                 "--seed", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    k = next(k for k, ln in enumerate(lines) if "sum over paths" in ln)
    assert lines[k] == "  ∂L/∂f1[j] = δ2 · ∂a2/∂f1 + δ3 · ∂a3/∂f1  (f1 feeds a2 and a3: sum over paths)"
    assert lines[k + 1].startswith("    ∂L/∂f1[j] = ")


@pytest.mark.parametrize("spec", [RESIDUAL, RESNET], ids=["residual_mlp", "resnet_block"])
def test_verify_against_autograd_and_finite_differences(spec):
    from derive.verify import verify

    report = verify(load_spec(spec), str(spec), seeds=1, seed=7, batch_sizes=(1, 5))
    assert report.ok, [c for c in report.checks if not c.ok]
    against = {c.against for c in report.checks}
    assert {"torch.autograd-f64", "finite-differences"} <= against
    assert any(c.target == "torch-f64" for c in report.checks)
    # Triton: the fused kernel (residual MLP) or the per-layer kernels (ResNet block), checked like any other
    assert any(c.target == "triton-f32" for c in report.checks) and not report.skipped


CONCAT_VOLUMES = Network("concat_vol", [
    Conv2d(2, 3, padding=1, activation="tanh"),
    Conv2d(1, 3, padding=1, activation="sigmoid", input="x"),  # a second conv padding x: x_pad2
    Conv2d(1, 1, input="f1"),
    Concat(["f1", "f2", "f3"]),
    MaxPool2d(2),
    Flatten(),
    Linear(2),
], Port("x", (1, 4, 4)), Port("y", ()), loss=Loss("cross_entropy"))

CONCAT_VECTORS = Network("concat_vec", [
    Linear(2, activation="sigmoid"),
    Linear(3, activation="tanh", input="x"),
    Concat(["f2", "f1", "x"]),
    Linear(1),
], Port("x", (3,)), Port("y", ()))


@pytest.mark.parametrize("net", [CONCAT_VOLUMES, CONCAT_VECTORS], ids=["channels", "features"])
def test_concat_verifies(net):
    from derive.verify import verify

    report = verify(net, "<python>", seeds=1, seed=11, batch_sizes=(1, 5))
    assert report.ok, [c for c in report.checks if not c.ok]
    assert any(c.against == "finite-differences" for c in report.checks)
    assert any(c.target == "triton-f32" for c in report.checks) and not report.skipped


def test_concat_generates_triton_from_the_cli(tmp_path, capsys):
    """A concat of vectors: `derive generate` writes all three targets, the Triton one on the per-layer
    kernels (each output column read from one input's block)."""
    spec = tmp_path / "cat.toml"
    spec.write_text(textwrap.dedent("""\
        name = "cat"
        [input]
        name = "x"
        shape = [3]
        [target]
        name = "y"
        shape = [2]
        [[layers]]
        type = "linear"
        out = 4
        activation = "tanh"
        [[layers]]
        type = "concat"
        inputs = ["f1", "x"]
        [[layers]]
        type = "linear"
        out = 2
        [loss]
        type = "l2"
        """))
    assert main(["generate", str(spec), "-o", str(tmp_path / "all")]) == 0
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["cat_numpy.py", "cat_torch.py", "cat_triton.py"]
    assert "skipped" not in capsys.readouterr().err
    assert main(["verify", str(spec), "--seeds", "1", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "triton-f32" in out and out.rstrip().endswith("all checks passed")


def test_the_residual_mlp_runs_on_triton_with_the_sum_over_paths():
    """A dense graph with add is one fused kernel: ∂L/∂f1 is the sum of its two paths' terms, each printed
    once, and every number matches torch.autograd (derive verify's triton rows and first divergence)."""
    from derive.targets import codegen
    from derive.verify import verify

    text = codegen.generate(load_spec(RESIDUAL), "residual_mlp.toml", ("triton",))["residual_mlp_triton.py"]
    assert "# ∂L/∂f1: the sum over the 2 paths from L" in text
    assert len(re.findall(r"^ +dL_df1 = ", text, re.M)) == 1 and len(re.findall(r"^ +dL_df1_via2 = ", text, re.M)) == 1
    report = verify(load_spec(RESIDUAL), "residual_mlp.toml", seeds=1, seed=5, batch_sizes=(1, 37))
    assert any(c.target == "triton-f32" for c in report.checks)
    assert report.ok, [c for c in report.checks if not c.ok]


def test_to_torch_wires_the_graph():
    import torch

    from derive.targets.modules import generated_modules

    with generated_modules(load_spec(RESNET), "resnet_block.toml", ("torch",)) as mods:
        model = mods["torch"].MODEL(seed=1, dtype=torch.float64)
        x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
        y = torch.tensor([0, 2, 1])
        theirs = model.to_torch()
        assert torch.allclose(theirs(x), model(x), rtol=1e-12, atol=1e-12)
        # the same gradients through torch.autograd on the torch.nn graph and through derive's backward
        torch.nn.functional.cross_entropy(theirs(x), y).backward()
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        got = {n: p.grad for n, p in model.named_parameters()}
        held = [m for m in theirs.modules() if next(m.parameters(recurse=False), None) is not None]
        for name, (k, attr) in mods["torch"].TORCH_PARAMS.items():
            want = getattr(held[k], attr).grad
            assert torch.allclose(got[name].reshape(want.shape), want, rtol=1e-10, atol=1e-12), name
        back = mods["torch"].MODEL.from_torch(theirs)
        assert torch.allclose(back(x), model(x), rtol=1e-12, atol=1e-12)


def test_train_and_trace_a_graph(tmp_path, capsys):
    import numpy as np

    from derive.train.loop import train

    rng = np.random.default_rng(0)
    data = tmp_path / "res.csv"
    x = rng.standard_normal((32, 3))
    y = np.stack([np.sin(x[:, 0]) + 0.5 * x[:, 1], x[:, 2] * x[:, 0]], 1)
    data.write_text("x0,x1,x2,y0,y1\n" + "".join(",".join(f"{v:.6f}" for v in (*a, *b)) + "\n" for a, b in zip(x, y)))
    assert main(["train", str(RESIDUAL), "--data", str(data), "--epochs", "60", "--lr", "0.1", "--format", "json"]) == 0
    import json

    losses = json.loads(capsys.readouterr().out)["losses"]
    assert losses[-1] < 0.5 * losses[0]
    assert main(["trace", str(RESIDUAL), "--data", str(data), "--steps", "1"]) == 0
    assert "δ1 = [" in capsys.readouterr().out
    # the Triton backend (float32, the fused kernel) follows the NumPy one's (float64) loss curve
    assert main(["train", str(RESIDUAL), "--data", str(data), "--epochs", "60", "--lr", "0.1", "--format", "json",
                 "--backend", "triton"]) == 0
    triton_losses = json.loads(capsys.readouterr().out)["losses"]
    assert len(triton_losses) == len(losses)
    assert np.allclose(triton_losses, losses, rtol=1e-4)
    # the ResNet-style block on arrays (its volume input has no CSV layout here): the loss goes down
    net = load_spec(RESNET)
    xs = rng.standard_normal((24, 1, 6, 6))
    ys = (xs[:, 0, :3].sum((1, 2)) > 0).astype(np.int64) + (xs[:, 0, 3:].sum((1, 2)) > 0)
    result = train(net, "resnet_block.toml", xs, ys, epochs=25, batch=24, progress=False)
    assert result.losses[-1] < 0.8 * result.losses[0]


def test_verify_checked_in_modules_of_a_graph(monkeypatch, capsys):
    """derive verify --modules (the pytest plugin's route): each checked-in file of every target fresh, and checked."""
    monkeypatch.chdir(ROOT)
    assert main(["verify", "examples/residual_mlp.toml", "--modules", "generated", "--seeds", "1", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    for target in ("numpy", "triton", "torch"):
        assert re.search(rf"residual_mlp_{target}\.py +derive generate +same bytes .* ok", out), target
    assert "triton-f32" in out and out.rstrip().endswith("all checks passed") and "skipped" not in out


def test_derivation_and_kernel_ir_are_checked_when_built():
    import dataclasses

    import sympy as sp

    from derive.ir.lowering import lower

    der = derive(load_spec(RESNET))
    steps = list(der.backward)
    k = [s.name for s in steps].index("delta2")
    zz = sp.IndexedBase("zz", real=True)[sp.Symbol("o", integer=True)]
    steps[k] = dataclasses.replace(steps[k], rhs=steps[k].rhs * zz)
    with pytest.raises(DerivationError, match="resnet_block: step delta2 reads zz, defined nowhere before it"):
        dataclasses.replace(der, backward=tuple(steps)).check()
    ir = lower(derive(load_spec(RESIDUAL)))
    back = list(ir.backward)
    k = [a.name for a in back].index("dL_df1")
    back[k - 1], back[k] = back[k], back[k - 1]  # the sum before its last path's term
    with pytest.raises(DerivationError, match="residual_mlp: dL_df1 reads dL_df1_via2, assigned nowhere before it"):
        dataclasses.replace(ir, backward=tuple(back)).check()


def test_concat_gradient_is_the_block_its_input_filled():
    der = derive(CONCAT_VECTORS)  # f3 = concat(f2 (3), f1 (2), x (3)): f1 fills f3[3:5]
    step = der.step("dL_df1")
    assert str(step.rhs) == "dL_df3[j + 3]"
    assert str(step.factors[-1].value) == "KroneckerDelta(j, i - 3)"  # ∂f3[i]/∂f1[j] = [j = i − 3]
    vol = derive(CONCAT_VOLUMES)  # f4 = concat(f1 (2 channels), f2, f3): f2 fills channel 2
    assert str(vol.step("dL_df2").rhs) == "dL_df4[c + 2, h, w]"

"""`derive verify`: passes on every example, reports JSON rows, and can fail — a wrong
gradient line, a wrong helper, a missing store mask each turn the right rows red and the
exit code to 1.  Without Triton it says so and still runs the NumPy checks."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

import derive.verify.checks as dv
from derive import Linear, Loss, Network, Port, load_spec
from derive.targets import codegen
from derive.targets.triton import SCRATCH
from derive.targets.triton_planner import plan_triton
from derive.targets import numpy_printer as printers
from derive.cli import main as cli_main

from helpers import EXAMPLES, ROOT, TRITON_REFUSAL, triton_refuses

EXAMPLE_IDS = [p.stem for p in EXAMPLES]
ROW_KEYS = {"target", "against", "quantity", "max_rel_err", "tolerance", "ok"}


def _failing(report) -> set[tuple[str, str, str]]:
    return {(c.target, c.against, c.quantity) for c in report.checks if not c.ok}


def _rows(report) -> set[tuple[str, str, str]]:
    return {(c.target, c.against, c.quantity) for c in report.checks}


def _has_volume(spec) -> bool:
    return any(len(li.in_shape) == 3 for li in load_spec(spec).info)


DENSE = [p for p in EXAMPLES if not _has_volume(p)]


@pytest.mark.parametrize("spec", EXAMPLES, ids=EXAMPLE_IDS)
def test_verify_passes_on_every_example(spec, triton_device_name):
    net = load_spec(spec)
    # a volume example's per-layer kernels cost the interpreter seconds per launch: batches 1 and 5 here;
    # test_codegen's sentinel test runs 37 rows in ragged tiles
    sizes = (1, 5) if _has_volume(spec) else dv.BATCH_SIZES
    report = dv.verify(net, spec.relative_to(ROOT).as_posix(), seeds=1, seed=0, batch_sizes=sizes)
    assert report.ok, [c for c in report.checks if not c.ok]
    rows = _rows(report)
    params = [p.name for p in net.params]
    if triton_refuses(net):  # a graph network: no Triton module, and the report says why
        assert len(report.skipped) == 1 and report.skipped[0].startswith(f"Triton checks: {TRITON_REFUSAL}")
        assert not any(r[0] == "triton-f32" for r in rows)
        for p in params:
            assert ("numpy-f64", "torch.autograd-f64", f"grad {p}") in rows
            assert ("numpy-f64", "finite-differences", f"grad {p}") in rows
        return
    assert report.skipped == []
    for target, against in (("numpy-f64", "torch.autograd-f64"), ("numpy-f64", "finite-differences"),
                            ("triton-f32", "numpy-f64")):
        for p in params:
            assert (target, against, f"grad {p}") in rows
    assert ("triton-f32", "sentinel padding", "no out-of-bounds writes") in rows
    assert ("numpy-f32", "numpy-f64", "gradients") in rows
    assert ("triton-f32", "numpy-f64", "train_step") in rows


@pytest.mark.parametrize("spec", DENSE, ids=[p.stem for p in DENSE])  # the verification itself: the test above
def test_verify_cli_json(spec, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    rel = spec.relative_to(ROOT).as_posix()
    code = cli_main(["verify", rel, "--format", "json", "--seeds", "1", "--seed", "0"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["ok"] is True
    assert {"ok", "checks"} <= set(out) and out["seed"] == 0 and out["network"] == load_spec(spec).name
    assert out["checks"]
    for row in out["checks"]:
        assert set(row) == ROW_KEYS
        assert isinstance(row["max_rel_err"], float) and isinstance(row["tolerance"], float)
        assert row["ok"] is True and row["max_rel_err"] <= row["tolerance"]


def test_verify_cli_text_table(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert cli_main(["verify", "examples/perceptron.toml", "--seeds", "1", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("derive verify perceptron (seed 3)")
    assert re.search(r"^numpy-f64\s+torch\.autograd-f64\s+grad w\s+\S+\s+1e-10\s+ok$", out, re.M)
    assert out.rstrip().endswith("all checks passed")


def test_verify_rejects_bad_seeds(capsys):
    assert cli_main(["verify", "--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err


# =========================================================================== verify can fail


def _patch_gradient_line(monkeypatch, param: str, factor: str = "1.01"):
    """Generated NumPy code whose ∂L/∂param line is off by ``factor``.  codegen.generate looks
    renderers up in codegen.RENDERERS, so the entry there is what must be patched."""
    real = codegen.RENDERERS["numpy"]

    def wrong(ir, out_dir="generated"):
        text = real(ir, out_dir)
        bad = re.sub(rf"^(\s+dL_d{param} = )(.+?)(  # .*)$", rf"\g<1>{factor} * (\g<2>)\g<3>", text, count=1,
                     flags=re.M)
        assert bad != text, f"no dL_d{param} line to alter"
        return bad

    monkeypatch.setitem(codegen.RENDERERS, "numpy", wrong)


def test_verify_catches_a_wrong_gradient_line(monkeypatch, capsys, triton_device_name):
    _patch_gradient_line(monkeypatch, "W1")
    # one batch size here (a row's verdict aggregates its batches): the CLI runs below take every size
    report = dv.verify(load_spec(ROOT / "examples" / "mlp_softmax.toml"), "x", seeds=1, seed=0, batch_sizes=(5,))
    assert not report.ok
    # exactly the rows that see ∂L/∂W1 of the NumPy module: torch, finite differences, the SGD
    # step built on it, and Triton (which is checked against NumPy f64); the float32 NumPy run
    # shares the mistake, so it still agrees with the float64 one
    assert _failing(report) == {
        ("numpy-f64", "torch.autograd-f64", "grad W1"),
        ("numpy-f64", "torch.autograd-f64", "train_step"),
        ("numpy-f64", "finite-differences", "grad W1"),
        ("triton-f32", "numpy-f64", "grad W1"),
        ("triton-f32", "numpy-f64", "train_step"),
    }
    bad = next(c for c in report.checks if c.quantity == "grad W1" and c.against == "torch.autograd-f64")
    assert bad.max_rel_err == pytest.approx(0.01, rel=1e-6)

    monkeypatch.chdir(ROOT)
    code = cli_main(["verify", "examples/mlp_softmax.toml", "--format", "json", "--seeds", "1", "--seed", "0"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["ok"] is False
    assert {(r["target"], r["against"], r["quantity"]) for r in out["checks"] if not r["ok"]} == _failing(report)

    code = cli_main(["verify", "examples/mlp_softmax.toml", "--seeds", "1", "--seed", "0"])
    text = capsys.readouterr().out
    assert code == 1 and "5 check(s) FAILED" in text
    assert re.search(r"^numpy-f64\s+finite-differences\s+grad W1\s+.*FAIL$", text, re.M)


def test_verify_catches_a_wrong_helper(monkeypatch):
    """A slightly wrong σ in the NumPy helpers: the forward pass itself is off."""
    monkeypatch.setitem(printers.OWNED, "sigmoid", printers.OWNED["sigmoid"].replace(
        "return xp.exp(", "return 1.0001 * xp.exp("))
    assert "1.0001 * np.exp(" in printers.NumpyCodePrinter().source("sigmoid")
    report = dv.verify(load_spec(ROOT / "examples" / "lecture.toml"), "x", seeds=1, seed=0)
    failing = _failing(report)
    assert ("numpy-f64", "torch.autograd-f64", "forward") in failing
    assert ("numpy-f64", "torch.autograd-f64", "loss") in failing
    assert {("numpy-f64", "torch.autograd-f64", f"grad {p}") for p in ("w1", "b1", "w2", "w3")} <= failing
    # the finite differences differentiate the same wrong σ: they agree with its gradient only
    # where the error is a constant factor, so they are not asserted either way
    code_rows = {r for r in failing if r[0] == "numpy-f32"}
    assert not code_rows  # float32 and float64 share the helper


def test_verify_catches_a_missing_store_mask(monkeypatch, triton_device_name):
    # ∂L/∂f3 is zero in its padded column, so writing that column to scratch unmasked changes no number
    # that the sentinels or the references see: only the static mask check can catch it.  The scratch
    # plan's rows (mlp_softmax itself runs on chip, with no scratch rows to write)
    store = re.compile(r"(tl\.store\(_SCRATCH_ptr [^\n]*, dL_df3),\s*mask=[^\n]*\)$", re.M)  # folded or not

    def unmasked(ir, out_dir="generated"):
        text = plan_triton(ir, out_dir, strategy=SCRATCH).text
        assert len(store.findall(text)) == 1
        return store.sub(r"\1)", text)

    monkeypatch.setitem(codegen.RENDERERS, "triton", unmasked)
    # the static check reads the text, whatever the batch: one size of Triton runs shows that nothing else fails
    report = dv.verify(load_spec(ROOT / "examples" / "mlp_softmax.toml"), "x", seeds=1, seed=0, batch_sizes=(5,))
    assert [(c.against, c.quantity) for c in report.checks if not c.ok] == [("static check",
                                                                             "every tile load/store masked")]


# =========================================================================== missing backends


def test_verify_without_triton_skips_and_runs_numpy(monkeypatch, capsys):
    monkeypatch.setattr(dv, "triton_device", lambda: None)
    report = dv.verify(load_spec(ROOT / "examples" / "hinge_classifier.toml"), "x", seeds=1, seed=0)
    assert report.ok
    assert len(report.skipped) == 1 and "Triton" in report.skipped[0]
    targets = {c.target for c in report.checks}
    assert targets == {"numpy-f64", "numpy-f32", "torch-f64"}  # the torch target runs on the CPU without Triton
    assert ("numpy-f64", "torch.autograd-f64", "grad W1") in _rows(report)

    monkeypatch.chdir(ROOT)
    assert cli_main(["verify", "examples/hinge_classifier.toml", "--seeds", "1", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "skipped: Triton checks" in out and "triton-f32" not in out
    assert cli_main(["verify", "examples/hinge_classifier.toml", "--format", "json", "--seeds", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["skipped"] and all(r["target"].startswith(("numpy", "torch")) for r in data["checks"])


def test_verify_without_torch_runs_finite_differences(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    report = dv.verify(load_spec(ROOT / "examples" / "lecture.toml"), "x", seeds=1, seed=0)
    assert report.ok
    assert any("torch" in s for s in report.skipped)
    assert {c.against for c in report.checks} == {"finite-differences", "numpy-f64"}


# =========================================================================== false failures


def test_verify_accepts_an_exactly_zero_gradient(monkeypatch, triton_device_name):
    """A linear SVM whose six samples are all inside the margin with as many +1 as -1 labels:
    ∂L/∂b = −Σ y = 0 exactly, and the generated code says 0.  The central difference of the
    loss is rounding noise (~1e-12), and verify's norm-wise relative error against it is 1."""
    net = Network("svm", [Linear(out=1)], input=Port("x", ()), loss=Loss("hinge", "sum"))
    x = np.array([0.7, 1.3, -0.4, 2.1, 0.9, -1.7])
    y = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    params = {"W1": np.array([[0.3]]), "b1": np.array([0.1])}
    assert np.all(1 - y * (0.3 * x + 0.1) > 0)  # every sample active
    monkeypatch.setattr(dv, "sample", lambda net, rng, batch: (x, y))
    monkeypatch.setattr(dv, "random_params", lambda mod, rng: {k: v.copy() for k, v in params.items()})
    report = dv.verify(net, "x", seeds=1, seed=0, batch_sizes=(6,))
    assert report.ok, [(c.against, c.quantity, c.max_rel_err) for c in report.checks if not c.ok]


def test_verify_catches_a_wrong_torch_target(monkeypatch):
    """A wrong line in the torch target's backward fails its torch-f64 rows (and only those)."""
    real = codegen.RENDERERS["torch"]

    def wrong(ir, out_dir="generated"):
        text = real(ir, out_dir)
        assert "dL_dW1 =" in text
        return text.replace("dL_dW1 = ", "dL_dW1 = 1.01 * ", 1)

    monkeypatch.setitem(codegen.RENDERERS, "torch", wrong)
    # one batch size: every row's code path runs at it (test_verify_passes_on_every_example takes them all)
    report = dv.verify(load_spec(ROOT / "examples" / "mlp_softmax.toml"), "x", seeds=1, seed=0, batch_sizes=(5,))
    failed = {(c.target, c.quantity) for c in report.checks if not c.ok}
    assert failed == {("torch-f64", "grad W1")}

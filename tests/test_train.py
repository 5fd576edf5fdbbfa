"""`derive train`: the lecture's perceptron reaches least squares with every optimizer,
checkpoints resume bit for bit, bad CSV files fail on one line, JSON and plot output,
and the Iris example reaches its documented accuracy.

The CLI runs in-process (derive.cli.main with capsys); two checks use a subprocess for
the real exit code and stderr.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from derive.cli import main

ROOT = Path(__file__).resolve().parent.parent
PERCEPTRON = str(ROOT / "examples" / "perceptron.toml")
PERCEPTRON_CSV = str(ROOT / "examples" / "data" / "perceptron.csv")
LINEAR_REGRESSION = str(ROOT / "examples" / "linear_regression.toml")
IRIS = str(ROOT / "examples" / "iris_mlp.toml")
IRIS_CSV = str(ROOT / "examples" / "data" / "iris.csv")
MLP_SOFTMAX = str(ROOT / "examples" / "mlp_softmax.toml")

# docs/training.md: derive train examples/iris_mlp.toml --data examples/data/iris.csv --epochs 100 --batch 16
IRIS_ACCURACY = 148 / 150  # 0.9867 on the training set, seed 0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def least_squares_w() -> float:
    """yhat = w·x with the L2 loss: w = Σxy / Σx², from the CSV (117.8 / 117.25 for the lecture's data)."""
    with open(PERCEPTRON_CSV, newline="") as fh:
        rows = list(csv.DictReader(fh))
    x = np.array([float(r["x"]) for r in rows])
    y = np.array([float(r["y"]) for r in rows])
    return float(np.sum(x * y) / np.sum(x * x))


def train_json(capsys, *args) -> dict:
    assert main(["train", *args, "--format", "json"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON document on one line, nothing else on stdout
    return json.loads(out)


def fails(capsys, *args) -> str:
    """Run derive train expecting exit code 2; return its single stderr line."""
    assert main(["train", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    assert lines[0].startswith("derive: error: ")
    return lines[0]


# --------------------------------------------------------------------------- the lecture's data


def test_least_squares_from_the_csv():
    assert least_squares_w() == pytest.approx(117.8 / 117.25, rel=1e-15)


# Full-batch runs (the default batch is the whole data set).  L(w) = ½·mean((w·x − y)²) has
# curvature Σx²/n = 29.3; sgd with η = 0.01 contracts the error by 0.71 per step.
CONVERGE = {
    "sgd": ["--lr", "0.01", "--epochs", "200"],
    "momentum": ["--lr", "0.01", "--epochs", "400"],
    "adam": ["--lr", "0.1", "--epochs", "500"],
    "lbfgs": ["--epochs", "20"],
}


@pytest.mark.parametrize("kind", sorted(CONVERGE))
def test_perceptron_reaches_least_squares(kind, capsys):
    out = train_json(capsys, PERCEPTRON, "--data", PERCEPTRON_CSV, "--optimizer", kind, *CONVERGE[kind])
    assert out["params"]["w"] == pytest.approx(least_squares_w(), abs=1e-4)
    w = least_squares_w()
    x = np.array([10, 2, 3.5, 1.0])
    y = np.array([10.1, 1.9, 3.4, 1.1])
    assert out["loss"] == pytest.approx(0.5 * np.mean((w * x - y) ** 2), rel=1e-6)
    assert out["epochs"] == int(CONVERGE[kind][-1])


def test_perceptron_reaches_least_squares_on_triton(capsys, triton_device_name):
    out = train_json(capsys, PERCEPTRON, "--data", PERCEPTRON_CSV, "--backend", "triton",
                     "--lr", "0.02", "--epochs", "40")
    assert out["params"]["w"] == pytest.approx(least_squares_w(), abs=1e-4)  # float32: ~1e-7 is reachable


def test_text_output(capsys):
    assert main(["train", PERCEPTRON, "--data", PERCEPTRON_CSV, "--epochs", "200"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "trained perceptron for 200 epochs with sgd (lr 0.01, constant), backend numpy"
    assert out[1] == "  w = 1.004691"
    assert out[2].startswith("loss = 0.00467750")


def test_lbfgs_on_triton_is_refused(capsys, tmp_path):
    line = fails(capsys, PERCEPTRON, "--data", PERCEPTRON_CSV, "--optimizer", "lbfgs", "--backend", "triton")
    assert "L-BFGS" in line and "--backend numpy" in line


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("kind", ["sgd", "adam", "momentum"])
def test_checkpoint_resume_is_bitwise(kind, tmp_path, capsys):
    """10 epochs in one go == 4 epochs, stop, resume to 10 (mini-batches of 2: the order matters)."""
    common = [PERCEPTRON, "--data", PERCEPTRON_CSV, "--optimizer", kind, "--lr", "0.01", "--batch", "2"]
    whole = train_json(capsys, *common, "--epochs", "10")
    ckpt = tmp_path / "run.ckpt"
    first = train_json(capsys, *common, "--epochs", "4", "--checkpoint", str(ckpt))
    with np.load(ckpt) as z:
        assert int(z["epoch"]) == 4 and int(z["t"]) == 8  # 2 steps per epoch
        if kind != "sgd":
            assert any(k.startswith("state/") for k in z.files)
    resumed = train_json(capsys, *common, "--epochs", "10", "--checkpoint", str(ckpt))
    assert resumed["params"] == whole["params"]  # bitwise: the same floats through JSON's repr
    assert resumed["losses"] == whole["losses"]
    assert resumed["loss"] == whole["loss"]
    assert first["losses"] == whole["losses"][:4]
    assert first["params"] != whole["params"]
    # and the shuffling matters: another seed gives another trajectory
    other = train_json(capsys, *common, "--epochs", "10", "--seed", "1")
    assert other["params"] != whole["params"]
    with np.load(ckpt) as z:
        assert int(z["epoch"]) == 10 and int(z["t"]) == 20


def test_checkpoint_resume_restores_vector_adam_state(tmp_path, capsys):
    common = [IRIS, "--data", IRIS_CSV, "--batch", "16"]
    whole = train_json(capsys, *common, "--epochs", "3")
    ckpt = tmp_path / "iris.ckpt"
    train_json(capsys, *common, "--epochs", "1", "--checkpoint", str(ckpt))
    with np.load(ckpt) as z:
        assert {k for k in z.files if k.startswith("state/")} == {
            f"state/{s}/{p}" for s in ("m", "v") for p in ("W1", "b1", "W2", "b2")}
    resumed = train_json(capsys, *common, "--epochs", "3", "--checkpoint", str(ckpt))
    assert resumed["params"] == whole["params"]
    assert resumed["accuracy"] == whole["accuracy"]


def test_checkpoint_resume_on_triton(tmp_path, capsys, triton_device_name):
    common = [PERCEPTRON, "--data", PERCEPTRON_CSV, "--backend", "triton", "--optimizer", "adam", "--lr", "0.05",
              "--batch", "2"]
    whole = train_json(capsys, *common, "--epochs", "6")
    ckpt = tmp_path / "t.ckpt"
    train_json(capsys, *common, "--epochs", "2", "--checkpoint", str(ckpt))
    resumed = train_json(capsys, *common, "--epochs", "6", "--checkpoint", str(ckpt))
    # float32 state through a float32 checkpoint: the same kernels on the same numbers
    assert resumed["params"] == whole["params"]


def test_lbfgs_checkpoint_resumes(tmp_path, capsys):
    """L-BFGS restarts from the checkpoint's parameters (empty curvature history) and still converges."""
    ckpt = tmp_path / "l.ckpt"
    common = [PERCEPTRON, "--data", PERCEPTRON_CSV, "--optimizer", "lbfgs"]
    train_json(capsys, *common, "--epochs", "1", "--checkpoint", str(ckpt))
    with np.load(ckpt) as z:
        assert int(z["epoch"]) == 1
    out = train_json(capsys, *common, "--epochs", "20", "--checkpoint", str(ckpt))
    assert out["params"]["w"] == pytest.approx(least_squares_w(), abs=1e-4)


def test_checkpoint_of_another_network_is_rejected(tmp_path, capsys):
    ckpt = tmp_path / "p.ckpt"
    train_json(capsys, PERCEPTRON, "--data", PERCEPTRON_CSV, "--epochs", "2", "--checkpoint", str(ckpt))
    before = ckpt.read_bytes()
    line = fails(capsys, LINEAR_REGRESSION, "--data", PERCEPTRON_CSV, "--epochs", "4", "--checkpoint", str(ckpt))
    assert line.startswith(f"derive: error: {ckpt}: --checkpoint: ") and "another network" in line
    # the same network with another optimizer (its state would not fit) is another run too
    line = fails(capsys, PERCEPTRON, "--data", PERCEPTRON_CSV, "--epochs", "4", "--optimizer", "adam",
                 "--checkpoint", str(ckpt))
    assert "another network or optimizer" in line
    assert ckpt.read_bytes() == before  # left alone
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    line = fails(capsys, PERCEPTRON, "--data", PERCEPTRON_CSV, "--checkpoint", str(junk))
    assert line.startswith(f"derive: error: {junk}: --checkpoint: not a derive checkpoint")


def test_checkpoint_is_written_atomically(tmp_path, capsys):
    """No temporary files are left next to the checkpoint."""
    ckpt = tmp_path / "sub" / "a.ckpt"
    train_json(capsys, PERCEPTRON, "--data", PERCEPTRON_CSV, "--epochs", "3", "--checkpoint", str(ckpt))
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["a.ckpt"]


def test_checkpoint_past_the_requested_epochs_is_an_error(tmp_path, capsys):
    ckpt = tmp_path / "p.ckpt"
    common = [PERCEPTRON, "--data", PERCEPTRON_CSV, "--batch", "2", "--checkpoint", str(ckpt)]
    train_json(capsys, *common, "--epochs", "10")
    line = fails(capsys, *common, "--epochs", "4")
    assert "--epochs" in line and "10" in line


# --------------------------------------------------------------------------- bad CSV files

CE_HEADER = "x0,x1,x2,x3,y\n"
BAD_CSV = [
    # (id, spec, file contents, line, column or None, what the message says)
    ("missing-column", PERCEPTRON, "x,z\n1,2\n", 1, None, "missing column 'y'"),
    ("missing-vector-column", IRIS, "x0,x1,x3,y\n1,2,3,0\n", 1, None, "missing column 'x2'"),
    ("too-few-fields", PERCEPTRON, "x,y\n1,2\n3\n", 3, None, "expected 2 fields as in the header, got 1"),
    ("too-many-fields", PERCEPTRON, "x,y\n1,2\n3,4\n5,6,7\n", 4, None, "expected 2 fields as in the header, got 3"),
    ("not-a-number", PERCEPTRON, "x,y\n1,2\n3,abc\n", 3, "y", "expected a number, got 'abc'"),
    ("not-finite", PERCEPTRON, "x,y\n1,2\ninf,4\n", 3, "x", "expected a finite number, got 'inf'"),
    ("empty-file", PERCEPTRON, "", 1, None, "empty file"),
    ("header-only", PERCEPTRON, "x,y\n", 2, None, "no data rows after the header"),
    ("class-out-of-range", IRIS, CE_HEADER + "0,0,0,0,1\n0.5,1,1,1,3\n", 3, "y", "expected a class index 0..2, got '3'"),
    ("class-negative", MLP_SOFTMAX, CE_HEADER + "0,0,0,0,-1\n", 2, "y", "expected a class index 0..2, got '-1'"),
    ("class-not-integer", IRIS, CE_HEADER + "0,0,0,0,1.5\n", 2, "y", "expected a class index 0..2, got '1.5'"),
    ("duplicate-column", PERCEPTRON, "x,y,x\n1,2,3\n", 1, None, "duplicate column 'x'"),
]


@pytest.mark.parametrize("spec, text, line, column, says", [c[1:] for c in BAD_CSV], ids=[c[0] for c in BAD_CSV])
def test_bad_csv(spec, text, line, column, says, tmp_path, capsys):
    data = tmp_path / "bad.csv"
    data.write_text(text, encoding="utf-8")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ckpt, png = out_dir / "run.ckpt", out_dir / "loss.png"
    msg = fails(capsys, spec, "--data", str(data), "--epochs", "2", "--checkpoint", str(ckpt), "--plot", str(png))
    where = f"derive: error: {data}: line {line}: " + (f"column {column!r}: " if column else "")
    assert msg.startswith(where), msg
    assert says in msg, msg
    assert list(out_dir.iterdir()) == []  # nothing written: no checkpoint, no plot, no temporary file


def test_missing_data_file(tmp_path, capsys):
    missing = tmp_path / "nope.csv"
    msg = fails(capsys, PERCEPTRON, "--data", str(missing))
    assert msg.startswith(f"derive: error: {missing}: cannot read data file")


def test_csv_details_that_are_accepted(tmp_path, capsys):
    """Extra columns, any column order, spaces around cells, blank lines and 1.0 as a class index."""
    data = tmp_path / "ok.csv"
    data.write_text("note, y ,x\na, 10.1 ,10\n\nb,1.9,2\nc,3.4,3.5\nd,1.1,1\n", encoding="utf-8")
    out = train_json(capsys, PERCEPTRON, "--data", str(data), "--epochs", "200")
    assert out["params"]["w"] == pytest.approx(least_squares_w(), abs=1e-6)
    ce = tmp_path / "ce.csv"
    ce.write_text(CE_HEADER + "0,0,0,0,1.0\n1,1,1,1,2\n", encoding="utf-8")
    out = train_json(capsys, MLP_SOFTMAX, "--data", str(ce), "--epochs", "1")
    assert 0.0 <= out["accuracy"] <= 1.0


def test_csv_with_a_byte_order_mark(tmp_path, capsys):
    data = tmp_path / "excel.csv"
    data.write_bytes(b"\xef\xbb\xbfx,y\r\n10,10.1\r\n2,1.9\r\n3.5,3.4\r\n1,1.1\r\n")
    out = train_json(capsys, PERCEPTRON, "--data", str(data), "--epochs", "200")
    assert out["params"]["w"] == pytest.approx(least_squares_w(), abs=1e-6)


def test_bad_csv_in_a_subprocess(tmp_path):
    """The installed command: exit code 2, one stderr line, no traceback, nothing written."""
    data = tmp_path / "bad.csv"
    data.write_text("x,y\n1,2\n3,oops\n", encoding="utf-8")
    ckpt = tmp_path / "c.ckpt"
    proc = subprocess.run([sys.executable, "-m", "derive", "train", PERCEPTRON, "--data", str(data),
                           "--checkpoint", str(ckpt)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [f"derive: error: {data}: line 3: column 'y': expected a number, got 'oops'"]
    assert not ckpt.exists()


@pytest.mark.parametrize("args, says", [
    (["--epochs", "0"], "--epochs: expected a positive integer, got 0"),
    (["--batch", "-2"], "--batch: expected a positive integer, got -2"),
    (["--lr", "0"], "--lr"),
])
def test_bad_options(args, says, capsys):
    assert says in fails(capsys, PERCEPTRON, "--data", PERCEPTRON_CSV, *args)


def test_batch_zero_is_an_error(capsys):
    assert "--batch: expected a positive integer, got 0" in fails(capsys, PERCEPTRON, "--data", PERCEPTRON_CSV,
                                                                   "--batch", "0")


# --------------------------------------------------------------------------- output


def test_json_output_and_plot(tmp_path, capsys):
    png = tmp_path / "loss.png"
    out = train_json(capsys, PERCEPTRON, "--data", PERCEPTRON_CSV, "--epochs", "30", "--plot", str(png))
    assert {"params", "loss", "epochs"} <= set(out)
    assert set(out["params"]) == {"w"} and isinstance(out["params"]["w"], float)
    assert isinstance(out["loss"], float) and isinstance(out["epochs"], int) and out["epochs"] == 30
    assert len(out["losses"]) == 30 and out["losses"][-1] < out["losses"][0]
    assert "accuracy" not in out  # a regression
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png"]  # no temporary file left


def test_json_output_of_a_classifier(capsys):
    out = train_json(capsys, IRIS, "--data", IRIS_CSV, "--epochs", "1", "--batch", "50")
    assert set(out["params"]) == {"W1", "b1", "W2", "b2"}
    assert np.shape(out["params"]["W1"]) == (16, 4) and np.shape(out["params"]["b2"]) == (3,)
    assert 0.0 <= out["accuracy"] <= 1.0


def test_plot_in_text_mode(tmp_path, capsys):
    png = tmp_path / "curve.png"
    assert main(["train", PERCEPTRON, "--data", PERCEPTRON_CSV, "--epochs", "5", "--plot", str(png)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"loss curve: {png}"
    assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_file_mode_follows_the_umask(tmp_path, capsys):
    png = tmp_path / "loss.png"
    old = os.umask(0o022)
    try:
        assert main(["train", PERCEPTRON, "--data", PERCEPTRON_CSV, "--epochs", "3", "--plot", str(png)]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    assert png.stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- Iris


def test_iris_csv_is_the_exported_one():
    with open(IRIS_CSV, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["x0", "x1", "x2", "x3", "y"]
    body = np.array(rows[1:], dtype=np.float64)
    assert body.shape == (150, 5)
    assert np.bincount(body[:, 4].astype(int)).tolist() == [50, 50, 50]
    # standardised: mean 0 and std 1 up to the 6-decimal rounding
    np.testing.assert_allclose(body[:, :4].mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(body[:, :4].std(axis=0), 1.0, atol=1e-6)


def test_iris_reaches_the_documented_accuracy(capsys):
    out = train_json(capsys, IRIS, "--data", IRIS_CSV, "--epochs", "100", "--batch", "16")
    assert out["accuracy"] >= IRIS_ACCURACY - 0.02
    assert out["loss"] < 0.1
    doc = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    assert "derive train examples/iris_mlp.toml --data examples/data/iris.csv --epochs 100 --batch 16" in doc
    assert f"accuracy = {IRIS_ACCURACY:.4f}" in doc


# --------------------------------------------------------------------------- CLI polish (issue 14)


def test_extra_columns_get_a_warning_naming_them(tmp_path, capsys):
    data = tmp_path / "extra.csv"
    data.write_text("note,x,y,weight\na,10,10.1,1\nb,2,1.9,1\nc,3.5,3.4,1\nd,1,1.1,1\n", encoding="utf-8")
    assert main(["train", PERCEPTRON, "--data", str(data), "--epochs", "2", "--format", "json"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"derive: warning: {data}: line 1: ignoring columns not in the spec: note, weight"]
    data.write_text("x,y\n10,10.1\n", encoding="utf-8")
    assert main(["train", PERCEPTRON, "--data", str(data), "--epochs", "2", "--format", "json"]) == 0
    assert capsys.readouterr().err == ""  # no extra column, no warning


@pytest.mark.parametrize("sep, name", [(";", "semicolon"), ("\t", "tab")])
def test_another_delimiter_gets_a_hint(sep, name, tmp_path, capsys):
    data = tmp_path / "eu.csv"
    data.write_text(f"x{sep}y\n10{sep}10,1\n2{sep}1,9\n", encoding="utf-8")
    msg = fails(capsys, PERCEPTRON, "--data", str(data))
    assert msg.startswith(f"derive: error: {data}: line 1: missing column 'x'")
    assert f"the header looks {name}-separated; derive reads comma-separated CSV" in msg


def test_a_comma_separated_file_gets_no_delimiter_hint(tmp_path, capsys):
    data = tmp_path / "c.csv"
    data.write_text("a;b,y\n1,2\n", encoding="utf-8")  # two fields: commas are in use
    assert "the header looks" not in fails(capsys, PERCEPTRON, "--data", str(data))


def test_a_corrupt_checkpoint_gets_derives_own_message(tmp_path, capsys):
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, fingerprint=np.array([{"a": 1}], dtype=object))  # loading it needs allow_pickle
    partial = tmp_path / "partial.npz"
    np.savez(partial, epoch=np.array(3))  # a real .npz without derive's keys
    truncated = tmp_path / "truncated.npz"
    train_json(capsys, PERCEPTRON, "--data", PERCEPTRON_CSV, "--epochs", "2", "--checkpoint", str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:100])
    for bad in (pickled, partial, truncated):
        line = fails(capsys, PERCEPTRON, "--data", PERCEPTRON_CSV, "--checkpoint", str(bad))
        assert line == (f"derive: error: {bad}: --checkpoint: not a derive checkpoint, or a damaged one (expected "
                        "the .npz file an earlier derive train --checkpoint wrote); delete it or pass a new file")
        assert "allow_pickle" not in line


def test_ctrl_c_names_the_saved_epoch_and_resume_says_so(tmp_path, capsys, monkeypatch):
    """Ctrl-C in epoch 4 (simulated after the third save): the message names epoch 3, exit 130;
    the same command resumes from epoch 3 and ends where an uninterrupted run ends."""
    from derive.train import loop

    common = [PERCEPTRON, "--data", PERCEPTRON_CSV, "--optimizer", "adam", "--lr", "0.01", "--batch", "2"]
    whole = train_json(capsys, *common, "--epochs", "8")
    ckpt = tmp_path / "run.ckpt"
    real_save, saves = loop.save_checkpoint, []

    def save_then_interrupt(*args, **kw):
        real_save(*args, **kw)
        saves.append(args[4])
        if len(saves) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_interrupt)
    assert main(["train", *common, "--epochs", "8", "--checkpoint", str(ckpt)]) == 130
    err = capsys.readouterr().err.splitlines()
    assert err == [f"derive: interrupted: {ckpt} holds epoch 3; run the same command again to resume"]
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert main(["train", *common, "--epochs", "8", "--checkpoint", str(ckpt), "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"derive: resuming from epoch 3 of 8 ({ckpt})"]
    assert json.loads(captured.out)["params"] == whole["params"]


def test_ctrl_c_without_a_checkpoint(capsys, monkeypatch):
    from derive.train import loop

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_Converter", interrupted)  # the first thing the loop does
    assert main(["train", PERCEPTRON, "--data", PERCEPTRON_CSV]) == 130
    assert capsys.readouterr().err == "derive: interrupted\n"


def test_text_output_prints_arrays_in_full_and_labels_training_accuracy(capsys):
    args = [IRIS, "--data", IRIS_CSV, "--epochs", "3", "--batch", "16"]
    params = train_json(capsys, *args)["params"]
    assert main(["train", *args]) == 0
    out = capsys.readouterr().out
    assert "..." not in out
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("  W1 = "))
    end = next(i for i, ln in enumerate(lines) if ln.startswith("  b1 = "))
    block = lines[start:end]
    assert len(block) == 16  # one row of the 16×4 weight per line
    assert all(ln.startswith(" " * len("  W1 = ")) for ln in block[1:])  # continuation lines indented
    printed = np.array(json.loads("".join(block)[len("  W1 = "):]))
    np.testing.assert_allclose(printed, np.array(params["W1"]), rtol=0, atol=5e-7)  # precision=6
    acc = [ln for ln in lines if "accuracy" in ln]
    assert len(acc) == 1 and acc[0].startswith("training accuracy = ")


# --------------------------------------------------------------------------- the README's commands (issue 22)


def test_the_readme_pytest_line_names_files_that_exist_where_it_runs():
    """The --derive-specs line must run from the repository root: it changes into the project first, and
    its spec glob and generated folder are there (the plugin reads them relative to the current directory)."""
    import glob
    import re
    import shlex

    line = next(ln for ln in (ROOT / "README.md").read_text(encoding="utf-8").splitlines() if "--derive-specs" in ln)
    m = re.match(r"\(cd (\S+) && (pytest .*?)\)", line)
    assert m, f"README: the --derive-specs line does not say where it runs: {line}"
    where = ROOT / m.group(1)
    argv = shlex.split(m.group(2))
    specs = argv[argv.index("--derive-specs") + 1]
    generated = argv[argv.index("--derive-generated") + 1]
    assert glob.glob(str(where / specs)), f"{specs} matches nothing in {where}"
    assert (where / generated).is_dir()
    for spec in glob.glob(str(where / specs)):
        assert (where / generated / f"{Path(spec).stem}_numpy.py").is_file(), spec

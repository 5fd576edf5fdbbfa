"""Data in the forms people have it (issue 22): volume CSVs (x_c_h_w columns), .npz arrays, --test-data.

The digits convnet (examples/digits_convnet.toml) trains on the same small full batch from .npz and from
CSV to the same parameters, and those equal an independent PyTorch loop (F.conv2d, relu, max_pool2d,
linear, cross_entropy, torch.optim.Adam, the same initial values).  Every mismatch between a data file
and the spec is one error line, exit 2.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from derive.cli import main
from derive.spec import load_spec
from derive.targets.modules import generated_modules
from derive.train.data import columns, load

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "examples" / "digits_convnet.toml")
DIGITS_DATA = ROOT / "examples" / "data"
PERCEPTRON = str(ROOT / "examples" / "perceptron.toml")
PERCEPTRON_CSV = str(ROOT / "examples" / "data" / "perceptron.csv")
IRIS = str(ROOT / "examples" / "iris_mlp.toml")


def train_json(capsys, *args) -> dict:
    assert main(["train", *args, "--format", "json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def fails(capsys, *args) -> str:
    assert main(["train", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("derive: error: ")
    return lines[0]


def write_csv(path: Path, net, x: np.ndarray, y: np.ndarray) -> None:
    """The CSV form written here with the documented naming, independently of derive's reader."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(columns(net.input.name, net.input.shape) + columns(net.target.name, net.target.shape))
        for xi, yi in zip(x, y):
            w.writerow([repr(float(v)) for v in xi.ravel()] + [repr(v) for v in np.ravel(yi).tolist()])


# --------------------------------------------------------------------------- naming


def test_column_names_are_row_major():
    assert columns("x", ()) == ["x"]
    assert columns("x", (3,)) == ["x0", "x1", "x2"]
    assert columns("img", (2, 1, 3)) == ["img_0_0_0", "img_0_0_1", "img_0_0_2", "img_1_0_0", "img_1_0_1", "img_1_0_2"]


def test_a_volume_csv_lands_where_its_names_say(tmp_path):
    """Column x_c_h_w is x[c, h, w], whatever order the columns come in."""
    net = load_spec(DIGITS)
    names = columns("x", (1, 8, 8))
    rev = list(reversed(names))
    data = tmp_path / "v.csv"
    values = {n: i for i, n in enumerate(names)}  # x_0_h_w holds 8·h + w
    data.write_text(",".join(rev + ["y"]) + "\n" + ",".join(str(values[n]) for n in rev) + ",7\n", encoding="utf-8")
    x, y = load(str(data), net)
    assert x.shape == (1, 1, 8, 8) and y.tolist() == [7]
    assert x[0, 0, 3, 5] == 8 * 3 + 5 and x[0, 0, 7, 0] == 56


def test_the_digits_files_agree():
    """The .npz and CSV forms of each split are the same numbers; the split is the documented one."""
    net = load_spec(DIGITS)
    sizes = {}
    for part in ("train", "test"):
        xz, yz = load(str(DIGITS_DATA / f"digits_{part}.npz"), net)
        xc, yc = load(str(DIGITS_DATA / f"digits_{part}.csv"), net)
        np.testing.assert_array_equal(xz, xc)
        np.testing.assert_array_equal(yz, yc)
        assert xz.shape[1:] == (1, 8, 8) and 0 <= xz.min() and xz.max() == 1.0
        assert np.array_equal(xz * 16, np.round(xz * 16))  # intensities k/16
        assert sorted(set(yz.tolist())) == list(range(10))
        sizes[part] = len(yz)
    assert sizes == {"train": 1438, "test": 359}
    with np.load(DIGITS_DATA / "digits_train.npz", allow_pickle=False) as z:
        assert z["x"].dtype == np.float32 and z["y"].dtype == np.uint8 and sorted(z.files) == ["x", "y"]


# --------------------------------------------------------------------------- against PyTorch


def torch_loop(params: dict, x, y, steps: int, lr: float) -> dict:
    """The digits convnet written in plain torch, trained full-batch with torch.optim.Adam."""
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    tx, ty = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.long)
    opt = torch.optim.Adam(p.values(), lr=lr)

    def loss():
        h = F.max_pool2d(F.relu(F.conv2d(tx, p["W1"], p["b1"], padding=1)), 2)
        return F.cross_entropy(F.linear(h.flatten(1), p["W4"], p["b4"]), ty)

    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
    return {k: v.detach().numpy() for k, v in p.items()}, loss


def test_a_volume_spec_trains_from_npz_and_csv_as_torch_does(tmp_path, capsys):
    net = load_spec(DIGITS)
    x_all, y_all = load(str(DIGITS_DATA / "digits_train.npz"), net)
    x, y = x_all[:24], y_all[:24]
    xt, yt = x_all[24:36], y_all[24:36]
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.savez(tmp_path / "t.npz", x=xt, y=yt)
    write_csv(tmp_path / "d.csv", net, x, y)
    runs = {}
    for form in ("npz", "csv"):
        runs[form] = train_json(capsys, DIGITS, "--data", str(tmp_path / f"d.{form}"), "--epochs", "4",
                                "--test-data", str(tmp_path / "t.npz"))
    assert runs["npz"] == runs["csv"]  # the same numbers in both files: the same run, bit for bit
    with generated_modules(net, DIGITS, ("numpy",)) as mods:
        init = mods["numpy"].init_params(0)
    want, _ = torch_loop(init, x, y, steps=4, lr=0.01)
    for k, v in want.items():
        got = np.asarray(runs["npz"]["params"][k])
        assert got.shape == v.shape, k
        np.testing.assert_allclose(got, v, rtol=1e-10, atol=1e-13, err_msg=k)
        assert not np.allclose(got, init[k]), k  # it trained
    # the held-out figures against the torch model at the final parameters
    p = {k: torch.tensor(v) for k, v in want.items()}
    logits = F.linear(F.max_pool2d(F.relu(F.conv2d(torch.tensor(xt), p["W1"], p["b1"], padding=1)), 2).flatten(1),
                      p["W4"], p["b4"])
    assert runs["npz"]["test_loss"] == pytest.approx(float(F.cross_entropy(logits, torch.tensor(yt))), rel=1e-10)
    assert runs["npz"]["test_accuracy"] == pytest.approx(float((logits.argmax(1).numpy() == yt).mean()), abs=1e-12)


def test_test_data_of_a_regression(tmp_path, capsys):
    """The perceptron's held-out loss is ½·mean((w·x − y)²) at the trained w; no accuracy for a regression."""
    test = tmp_path / "t.csv"
    test.write_text("x,y\n4,4.2\n-1,-0.8\n", encoding="utf-8")
    out = train_json(capsys, PERCEPTRON, "--data", PERCEPTRON_CSV, "--epochs", "50", "--test-data", str(test))
    w = out["params"]["w"]
    assert out["test_loss"] == pytest.approx(0.5 * np.mean((w * np.array([4, -1]) - np.array([4.2, -0.8])) ** 2),
                                             rel=1e-12)
    assert "test_accuracy" not in out and "accuracy" not in out
    assert main(["train", PERCEPTRON, "--data", PERCEPTRON_CSV, "--epochs", "50", "--test-data", str(test)]) == 0
    text = capsys.readouterr().out
    assert f"test loss = {out['test_loss']:.8g} (2 samples of {test})" in text
    assert "test accuracy" not in text


def test_test_data_text_of_a_classifier(tmp_path, capsys):
    test = tmp_path / "t.npz"
    np.savez(test, x=np.array([[-1.0, 1.0, -1.3, -1.3], [1.0, 0.0, 1.0, 1.0]]), y=np.array([0, 2]))
    assert main(["train", IRIS, "--data", str(ROOT / "examples/data/iris.csv"), "--epochs", "20", "--batch", "16",
                 "--test-data", str(test)]) == 0
    text = capsys.readouterr().out
    assert "test loss = " in text
    assert "test accuracy = 1.0000 (2 of 2)" in text


# --------------------------------------------------------------------------- errors


def npz(tmp_path, **arrays) -> str:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


X8 = np.zeros((3, 1, 8, 8))
Y8 = np.array([0, 1, 2])

BAD_NPZ = [
    ("missing-target", dict(x=X8), "missing array 'y' (found x); expected arrays x (N, 1, 8, 8) and y (N,)"),
    ("missing-input", dict(img=X8, y=Y8), "missing array 'x' (found img, y)"),
    ("flat-input", dict(x=np.zeros((3, 64)), y=Y8), "array 'x' has shape (3, 64); expected (N, 1, 8, 8)"),
    ("no-channel", dict(x=np.zeros((3, 8, 8)), y=Y8), "array 'x' has shape (3, 8, 8); expected (N, 1, 8, 8)"),
    ("target-2d", dict(x=X8, y=np.zeros((3, 10))), "array 'y' has shape (3, 10); expected (N,), one class index 0..9 per sample (not one-hot)"),
    ("lengths", dict(x=X8, y=np.array([0, 1])), "arrays 'x' and 'y' hold 3 and 2 samples"),
    ("empty", dict(x=np.zeros((0, 1, 8, 8)), y=np.zeros(0, dtype=int)), "hold no samples"),
    ("strings", dict(x=X8, y=np.array(["a", "b", "c"])), "array 'y' has dtype <U1; expected integers or floats"),
    ("complex", dict(x=X8 + 1j, y=Y8), "array 'x' has dtype complex128; expected integers or floats"),
    ("bool", dict(x=X8.astype(bool), y=Y8), "array 'x' has dtype bool"),
    ("nan", dict(x=np.where(np.arange(64).reshape(1, 1, 8, 8) == 29, np.nan, X8), y=Y8),
     "array 'x': x[0, 0, 3, 5] = nan; expected finite numbers"),
    ("class-range", dict(x=X8, y=np.array([0, 10, 1])), "array 'y': y[1] = 10; expected a class index 0..9"),
    ("class-negative", dict(x=X8, y=np.array([0, 1, -1])), "array 'y': y[2] = -1; expected a class index 0..9"),
    ("class-fraction", dict(x=X8, y=np.array([0, 1.5, 1])), "array 'y': y[1] = 1.5; expected a class index 0..9"),
]


@pytest.mark.parametrize("arrays, says", [c[1:] for c in BAD_NPZ], ids=[c[0] for c in BAD_NPZ])
def test_bad_npz(arrays, says, tmp_path, capsys):
    path = npz(tmp_path, **arrays)
    out = tmp_path / "out"
    out.mkdir()
    msg = fails(capsys, DIGITS, "--data", path, "--epochs", "1", "--checkpoint", str(out / "c.ckpt"),
                "--plot", str(out / "p.png"))
    assert msg.startswith(f"derive: error: {path}: "), msg
    assert says in msg, msg
    assert list(out.iterdir()) == []


def test_bad_test_data_fails_before_training(tmp_path, capsys):
    bad = npz(tmp_path, x=X8, y=np.array([0, 1, 11]))
    ckpt = tmp_path / "c.ckpt"
    msg = fails(capsys, DIGITS, "--data", str(DIGITS_DATA / "digits_test.npz"), "--test-data", bad,
                "--checkpoint", str(ckpt))
    assert msg == f"derive: error: {bad}: array 'y': y[2] = 11; expected a class index 0..9"
    assert not ckpt.exists()


def test_object_arrays_are_not_unpickled(tmp_path, capsys):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([object()] * 3, dtype=object), y=Y8)
    msg = fails(capsys, DIGITS, "--data", str(path))
    assert "array 'x' holds Python objects" in msg


@pytest.mark.parametrize("content, says", [
    (b"not a zip", "not an .npz archive, or a damaged one"),
    (None, "cannot read data file: No such file or directory"),
])
def test_unreadable_npz(content, says, tmp_path, capsys):
    path = tmp_path / "d.npz"
    if content is not None:
        path.write_bytes(content)
    assert says in fails(capsys, DIGITS, "--data", str(path))


def test_npy_is_refused_with_the_npz_recipe(tmp_path, capsys):
    path = tmp_path / "x.npy"
    np.save(path, X8)
    msg = fails(capsys, DIGITS, "--data", str(path))
    assert msg == (f"derive: error: {path}: a .npy file holds one array; derive reads the input and the target "
                   f"together from an .npz file: np.savez(x.npz, x=inputs, y=targets)")


def test_extra_arrays_get_a_warning(tmp_path, capsys):
    path = npz(tmp_path, x=X8, y=Y8, ids=np.arange(3))
    assert main(["train", DIGITS, "--data", path, "--epochs", "1", "--format", "json"]) == 0
    assert f"derive: warning: {path}: ignoring array not in the spec: ids" in capsys.readouterr().err


def test_a_volume_csv_with_vector_columns_is_told_the_naming(tmp_path, capsys):
    """The issue's crash: x0 … x(c−1) for a [c, h, w] input.  Now one line naming the volume columns."""
    path = tmp_path / "v.csv"
    path.write_text("x0,y\n0.5,1\n", encoding="utf-8")
    msg = fails(capsys, DIGITS, "--data", str(path))
    assert msg == (f"derive: error: {path}: line 1: missing column 'x_0_0_0'; expected columns x_0_0_0, x_0_0_1, "
                   f"x_0_0_2, …, y (65 in all) (input x has shape [1, 8, 8]: one column per element, row-major, "
                   f"named x_0_0_0, x_0_0_1, …)")


def test_a_bad_cell_of_a_volume_names_its_column(tmp_path, capsys):
    net = load_spec(DIGITS)
    path = tmp_path / "v.csv"
    cells = ["0"] * 64
    cells[29] = "inf"
    path.write_text(",".join(columns("x", net.input.shape) + ["y"]) + "\n" + ",".join(cells) + ",3\n", encoding="utf-8")
    assert fails(capsys, DIGITS, "--data", str(path)) == \
        f"derive: error: {path}: line 2: column 'x_0_3_5': expected a finite number, got 'inf'"
    path.write_text(path.read_text().replace("inf", "dark"), encoding="utf-8")
    assert fails(capsys, DIGITS, "--data", str(path)) == \
        f"derive: error: {path}: line 2: column 'x_0_3_5': expected a number, got 'dark'"


def test_a_huge_csv_field_names_its_line(tmp_path, capsys):
    """csv's bare "field larger than field limit" gets the file and the line."""
    path = tmp_path / "huge.csv"
    path.write_text("x,y\n1,2\n3," + "9" * 200_000 + "\n5,6\n", encoding="utf-8")
    assert fails(capsys, PERCEPTRON, "--data", str(path)) == \
        f"derive: error: {path}: line 3: a field longer than 131,072 characters (is it a CSV file?)"


def test_trace_reads_npz(tmp_path, capsys):
    path = tmp_path / "p.npz"
    np.savez(path, x=np.array([10, 2, 3.5, 1]), y=np.array([10.1, 1.9, 3.4, 1.1]))
    assert main(["trace", PERCEPTRON, "--data", str(path), "--steps", "2", "--format", "json"]) == 0
    from_npz = capsys.readouterr().out
    assert main(["trace", PERCEPTRON, "--data", PERCEPTRON_CSV, "--steps", "2", "--format", "json"]) == 0
    assert from_npz == capsys.readouterr().out


def test_the_memory_budget_counts_an_npz_before_reading_it(capsys):
    """9× the arrays' uncompressed size (the arrays and their float64 copy), checked before loading."""
    msg = fails(capsys, DIGITS, "--data", str(DIGITS_DATA / "digits_train.npz"), "--memory-budget", "100K")
    assert msg.startswith(f"derive: error: derive train --data {DIGITS_DATA / 'digits_train.npz'}: would allocate"), msg
    msg = fails(capsys, DIGITS, "--data", str(DIGITS_DATA / "digits_test.npz"), "--test-data",
                str(DIGITS_DATA / "digits_train.npz"), "--memory-budget", "1M")
    assert msg.startswith(f"derive: error: derive train --test-data {DIGITS_DATA / 'digits_train.npz'}: would allocate"), msg

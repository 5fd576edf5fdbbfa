"""Plots of `derive train`: the format the file name asks for, strict --axes, the path train took."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from derive.cli import main
from derive.cli.train import with_optimizer
from derive.errors import DeriveError
from derive.spec import load_spec
from derive.targets.modules import generated_modules
from derive.train import plots, train
from derive.train.data import load_csv

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "examples/data/perceptron.csv")
LR = str(ROOT / "examples/linear_regression.toml")
MAGIC = {".png": b"\x89PNG", ".pdf": b"%PDF", ".svg": b"<?xml"}


@pytest.mark.parametrize("suffix", sorted(MAGIC))
def test_every_plot_writes_the_format_its_name_asks_for(tmp_path, capsys, suffix):
    a, b, c = (tmp_path / f"{n}{suffix}" for n in ("curve", "path", "sweep"))
    assert main(["train", LR, "--data", DATA, "--epochs", "3", "--plot", str(a), "--plot-path", str(b),
                 "--compare", "sgd,adam"]) == 0
    assert main(["train", LR, "--data", DATA, "--epochs", "3", "--plot", str(c), "--lr-sweep", "0.001,0.1"]) == 0
    for f in (a, b, c):
        assert f.read_bytes().startswith(MAGIC[suffix]), f
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["--plot", "x.jpg"], "expected a file name ending .png, .pdf or .svg"),
    (["--plot-path", "p.png", "--axes", "theta1[0]", "theta0"], "--axes theta1[0]: theta1 has shape []"),
    (["--plot-path", "p.png", "--axes", "W9", "theta0"], "--axes W9: expected NAME or NAME[i,j]"),
    (["--plot-path", "p.png", "--axes", "theta0", "theta0"], "two different elements"),
    (["--plot-path", "p.png", "--axes", "theta1; rm", "theta0"], "expected NAME or NAME[i,j]"),
    (["--compare", "sgd,adam"], "draws on --plot-path"),
    (["--plot-path", "p.png", "--compare", "sgd,nope"], "--compare nope"),
    (["--plot", "c.png", "--lr-sweep", "0.1,abc"], "--lr-sweep"),
    (["--plot", "c.png", "--lr-sweep", "0.1,-1"], "positive learning rates"),
    (["--lr-sweep", "0.1"], "draws on --plot"),
])
def test_bad_plot_options_fail_before_training(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["train", LR, "--data", DATA, "--epochs", "2", *argv]) == 2
    out, err = capsys.readouterr()
    assert message in err and out == "" and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_axes_are_required_beyond_two_elements_and_index_strictly():
    net = load_spec(str(ROOT / "examples/mlp_softmax.toml"))
    with pytest.raises(DeriveError, match="name two"):
        plots.parse_axes(None, net)
    assert plots.parse_axes(["W1[0,3]", "b1[15]"], net) == [("W1", (0, 3)), ("b1", (15,))]
    for bad in (["W1[0,4]", "b1[0]"], ["W1[0]", "b1[0]"], ["W1[0,0,0]", "b1[0]"], ["W1[-1,0]", "b1[0]"]):
        with pytest.raises(DeriveError):
            plots.parse_axes(bad, net)


def test_the_path_ends_where_train_ends():
    net = with_optimizer(load_spec(LR), "momentum", 0.004)
    x, y = load_csv(DATA, net)
    axes = plots.parse_axes(None, net)
    with generated_modules(net, "lr", ("numpy",)) as mods:
        pts, final = plots._path(net, mods["numpy"], x, y, 3 * 2, 2, 7, axes)
    result = train(net, "lr", x, y, epochs=3, batch=2, seed=7, progress=False)
    assert pts.shape == (7, 2)
    assert pts[-1].tolist() == [float(result.params[n]) for n, _ in axes]
    assert pts[0].tolist() != pts[-1].tolist()


def test_lr_sweep_curve_is_trains_losses():
    net = with_optimizer(load_spec(LR), "sgd", 0.01)
    x, y = load_csv(DATA, net)
    with generated_modules(net, "lr", ("numpy",)) as mods:
        curve = plots.epoch_losses(net, mods["numpy"], x, y, 4, 1, 0)
    result = train(net, "lr", x, y, epochs=4, batch=1, seed=0, progress=False)
    np.testing.assert_allclose(curve, result.losses, rtol=1e-12)


def test_compared_paths_are_told_apart(tmp_path, capsys, monkeypatch):
    """--compare: each path its own colour, marker and line style, in the legend, with a labelled end;
    one labelled start (issue 22: one path drawn under the other, unlabelled end points)."""
    from derive.train import plots

    figs = []
    monkeypatch.setattr(plots, "save", lambda fig, path, option: figs.append(fig))
    assert main(["train", "examples/linear_regression.toml", "--data", DATA, "--epochs", "20", "--lr", "0.004",
                 "--plot-path", str(tmp_path / "c.png"), "--compare", "sgd,momentum,adam"]) == 0
    capsys.readouterr()
    (fig,) = figs
    ax = fig.axes[0]
    paths = [ln for ln in ax.get_lines() if ln.get_label().endswith("(20 steps)")]
    assert [ln.get_label().split(",")[0] for ln in paths] == ["sgd", "momentum", "adam"]
    for attr in ("get_color", "get_marker", "get_linestyle"):
        assert len({str(getattr(ln, attr)()) for ln in paths}) == 3, attr
    # a path drawn first (underneath) is wider than the ones drawn over it
    widths = [ln.get_linewidth() for ln in paths]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(lab.startswith("start") for lab in labels) and any(lab.startswith("end") for lab in labels)
    notes = sorted(t.get_text() for t in ax.texts)
    assert notes == ["adam end", "momentum end", "sgd end", "start"]
    ends = {t.get_text(): t.xy for t in ax.texts}
    for ln in paths:  # each end label sits on its own path's last point
        name = ln.get_label().split(",")[0]
        assert tuple(ends[f"{name} end"]) == (ln.get_xdata()[-1], ln.get_ydata()[-1])

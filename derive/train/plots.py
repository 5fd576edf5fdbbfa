"""Pictures of optimization for `derive train`: the loss curve (--plot), the loss contour over two
parameters with the optimizer's path (--plot-path, --compare) and loss curves per learning rate (--lr-sweep).

The format is the file name's (.png, .pdf, .svg), checked before any training; files are written atomically.
Paths are derive trace's walk (derive/train/trace.py): train's own data order and updates, one point per step.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from derive import fsutil
from derive.errors import DeriveError

FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
_AXIS = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+(?:,\s*\d+)*)\])?\Z")


def check_path(path: str, option: str) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DeriveError(f"{path}: {option}: expected a file name ending .png, .pdf or .svg")
    return fmt


def parse_axes(tokens: list[str] | None, net) -> list[tuple[str, tuple]]:
    """``["W1[0,0]", "b1[0]"]`` -> [("W1", (0, 0)), ("b1", (0,))]; without --axes, the network's two scalars."""
    shapes = {p.name: tuple(p.shape) for p in net.params}
    if not tokens:
        elems = [(n, idx) for n, s in shapes.items() for idx in np.ndindex(*s)]
        if len(elems) != 2:
            raise DeriveError(f"--axes: {net.name} has {len(elems)} parameter elements; name two, e.g. "
                              f"--axes {next(iter(shapes))}[{','.join('0' * len(next(iter(shapes.values()))))}] ...")
        return elems
    if len(tokens) != 2:
        raise DeriveError(f"--axes: expected two parameter elements, e.g. --axes W1[0,0] b1[0], got {len(tokens)}")
    out = []
    for tok in tokens:
        m = _AXIS.match(tok.strip())
        if not m or m.group(1) not in shapes:
            raise DeriveError(f"--axes {tok}: expected NAME or NAME[i,j] with NAME one of {', '.join(shapes)}")
        shape = shapes[m.group(1)]
        idx = tuple(int(i) for i in m.group(2).split(",")) if m.group(2) else ()
        if len(idx) != len(shape) or any(not 0 <= i < n for i, n in zip(idx, shape)):
            raise DeriveError(f"--axes {tok}: {m.group(1)} has shape {list(shape)}; expected {len(shape)} "
                              f"indices within it")
        out.append((m.group(1), idx))
    if out[0] == out[1]:
        raise DeriveError("--axes: expected two different elements")
    return out


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DeriveError("plots need matplotlib (pip install 'derive[train]')") from None
    return plt


def save(fig, path: str, option: str) -> None:
    fmt = check_path(path, option)
    plt = _plt()
    try:
        fsutil.write_atomic(Path(path), lambda fh: fig.savefig(fh, format=fmt))
    finally:
        plt.close(fig)


def loss_curve(losses: list, path: str, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(range(1, len(losses) + 1), losses, marker="." if len(losses) < 50 else None, label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean batch loss")
    ax.set_yscale("log" if min(losses, default=1) > 0 else "linear")
    ax.set_title(title)
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    save(fig, path, "--plot")


def _path(net, npm, x, y, steps, batch, seed, axes):
    from derive.train.walk import walk

    pts, last = [], None
    for rec in walk(net, npm, x, y, steps, batch, seed):
        if not pts:
            pts.append([float(np.asarray(rec["before"][n])[i]) for n, i in axes])
        pts.append([float(np.asarray(rec["after"][n])[i]) for n, i in axes])
        last = rec["after"]
    return np.array(pts), last


# One look per path, so that paths drawn over each other stay apart: colour, marker and line style all
# differ, and the earlier paths are drawn wider underneath the later ones.
_STYLES = (("tab:red", "o", "-"), ("tab:blue", "s", "--"), ("tab:orange", "^", ":"), ("tab:purple", "D", "-."),
           ("tab:brown", "v", (0, (5, 1, 1, 1))))


def contour_paths(runs: dict, npm, x, y, axes, path: str, title: str) -> None:
    """``runs``: {label: (points (k×2), final params)}; the contour is the loss over the two axes with every
    other parameter held at the first run's final values (exact for a two-parameter network)."""
    save(contour_figure(runs, npm, x, y, axes, title), path, "--plot-path")


def contour_figure(runs: dict, npm, x, y, axes, title: str):
    plt = _plt()
    first = next(iter(runs.values()))[1]
    allpts = np.concatenate([p for p, _ in runs.values()])
    lo, hi = allpts.min(axis=0), allpts.max(axis=0)
    pad = np.maximum((hi - lo) * 0.25, 0.5)
    g0 = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 80)
    g1 = np.linspace(lo[1] - pad[1], hi[1] + pad[1], 80)
    Z = np.empty((len(g1), len(g0)))
    for r, v1 in enumerate(g1):
        for c, v0 in enumerate(g0):
            p = {k: np.array(v, dtype=np.float64, copy=True) for k, v in first.items()}
            for (name, idx), v in zip(axes, (v0, v1)):
                p[name][idx] = v
            Z[r, c] = npm.loss(p, x, y)
    fig, ax = plt.subplots(figsize=(7, 5.4), dpi=100)
    levels = np.geomspace(max(Z.min(), 1e-12), Z.max(), 25) if Z.min() > 0 else 25
    # grey levels, light to dark, so that no level shares a colour with a path
    from matplotlib.colors import LinearSegmentedColormap

    greys = LinearSegmentedColormap.from_list("levels", ["#c8c8c8", "#303030"])
    cs = ax.contour(g0, g1, Z, levels=levels, cmap=greys, linewidths=0.8)
    fig.colorbar(cs, ax=ax, label="loss J over the data")
    n = len(runs)
    starts = {tuple(pts[0]) for pts, _ in runs.values()}
    for k, (label, (pts, _)) in enumerate(runs.items()):
        colour, marker, style = _STYLES[k % len(_STYLES)]
        ax.plot(pts[:, 0], pts[:, 1], linestyle=style, marker=marker, markersize=4 + 1.5 * (n - 1 - k),
                markevery=max(1, len(pts) // 30), linewidth=1.4 + 1.2 * (n - 1 - k), color=colour, alpha=0.9,
                label=f"{label} ({len(pts) - 1} steps)", zorder=3 + k)
        ax.plot(*pts[-1], marker="*", markersize=16, color=colour, markeredgecolor="black", zorder=10 + k,
                linestyle="none")
        short = label.split(",")[0]
        # the label beyond the end, away from the start (where the path is not), turned back inside near an edge
        span = np.array([g0[-1] - g0[0], g1[-1] - g1[0]])
        rel = (pts[-1] - np.array([g0[0], g1[0]])) / span
        d = (pts[-1] - pts[0]) / span
        d = d / np.linalg.norm(d) if np.linalg.norm(d) > 0 else np.array([1.0, 0.0])
        if rel[0] + 0.25 * d[0] > 0.9 or rel[0] + 0.25 * d[0] < 0.1:
            d[0] = -d[0]
        if rel[1] + 0.1 * d[1] > 0.95 or rel[1] + 0.1 * d[1] < 0.05:
            d[1] = -d[1]
        ax.annotate(f"{short} end" if n > 1 else "end", pts[-1], xytext=tuple(16 * d),
                    textcoords="offset points", ha="left" if d[0] >= 0 else "right",
                    va="bottom" if d[1] >= 0 else "top",
                    color=colour, fontsize=9, fontweight="bold", zorder=20,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec=colour, alpha=0.85))
    for start in starts:
        ax.plot(*start, marker="o", markersize=9, color="black", linestyle="none", zorder=30)
        ax.annotate("start", start, xytext=(-10, -16), textcoords="offset points", ha="right", fontsize=9,
                    fontweight="bold", zorder=30, bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="black",
                                                            alpha=0.85))
    ax.plot([], [], marker="o", markersize=7, color="black", linestyle="none", label="start (●)")
    ax.plot([], [], marker="*", markersize=12, color="white", markeredgecolor="black", linestyle="none",
            label="end of each path (★)" if n > 1 else "end (★)")
    name = lambda a: a[0] + (f"[{','.join(map(str, a[1]))}]" if a[1] else "")
    ax.set_xlabel(name(axes[0]))
    ax.set_ylabel(name(axes[1]))
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    return fig


def lr_sweep(curves: dict, path: str, title: str) -> None:
    """``curves``: {lr: per-epoch losses}; diverging runs (inf or NaN) end where they left the finite numbers."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.5), dpi=100)
    for lr, losses in curves.items():
        arr = np.asarray(losses, dtype=np.float64)
        bad = ~np.isfinite(arr) | (arr > 1e12)
        end = int(np.argmax(bad)) if bad.any() else len(arr)
        label = f"lr {lr:g}" + (" (diverged)" if bad.any() else "")
        ax.plot(range(1, end + 1), arr[:end], label=label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean batch loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    save(fig, path, "--lr-sweep")


def epoch_losses(net, npm, x, y, epochs, batch, seed) -> list:
    """derive train's per-epoch mean batch loss, through the same walk (stops early once it is not finite)."""
    from derive.train.walk import walk

    steps_per = -(-len(x) // batch)
    out, total, count = [], 0.0, 0
    with np.errstate(all="ignore"):
        for rec in walk(net, npm, x, y, epochs * steps_per, batch, seed):
            total += rec["loss"] * len(rec["indices"])
            count += len(rec["indices"])
            if rec["t"] % steps_per == 0:
                out.append(total / count)
                total, count = 0.0, 0
                if not np.isfinite(out[-1]) or out[-1] > 1e12:
                    break
    return out

"""`derive train`: fit the generated network to data (derive/train/data.py) with the spec's optimizer.

Each epoch visits the samples in a fresh random order (the lecture's "for each random
sample"), drawn from (seed, epoch) alone, so a run resumed from its checkpoint takes
exactly the same steps as an uninterrupted one.  L-BFGS runs full-batch through
scipy.optimize on the generated loss and gradient.
"""

from __future__ import annotations

import sys
import zipfile
import contextlib
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from derive.checkpoint import as_numpy, load_checkpoint, save_checkpoint
from derive.errors import DeriveError
from derive.targets.modules import generated_modules, triton_device
from derive.network import Network
from derive.tables.losses import BINARY, CLASS, LOSS_RULES, SIGNED


@dataclass
class TrainResult:
    params: dict
    loss: float
    accuracy: float | None  # on the training data (None for a regression loss)
    epochs: int
    losses: list = field(default_factory=list)  # mean batch loss of each epoch
    test_loss: float | None = None  # on the held-out data (--test-data), when given
    test_accuracy: float | None = None

    def to_dict(self) -> dict:
        out = {
            "params": {k: np.asarray(v).tolist() for k, v in self.params.items()},
            "loss": float(self.loss),
            "epochs": int(self.epochs),
            "losses": [float(v) for v in self.losses],
        }
        if self.accuracy is not None:
            out["accuracy"] = float(self.accuracy)
        if self.test_loss is not None:
            out["test_loss"] = float(self.test_loss)
        if self.test_accuracy is not None:
            out["test_accuracy"] = float(self.test_accuracy)
        return out


def accuracy(net: Network, yhat: np.ndarray, y: np.ndarray) -> float | None:
    """The fraction classified right, for a loss whose target is a label (the loss table's target kind)."""
    kind = LOSS_RULES[net.loss.type].target
    if kind == CLASS:
        return float(np.mean(np.argmax(yhat, axis=1) == y))
    if kind == SIGNED:
        return float(np.mean(np.where(yhat > 0, 1.0, -1.0) == y))
    if kind == BINARY:
        return float(np.mean((yhat > 0).astype(float) == y))
    return None


def evaluate(net: Network, npm, params, x, y, chunk: int) -> tuple[float, float | None]:
    """The reported loss and accuracy over the whole data set, in float64, ``chunk`` samples at a
    time: one pass over every sample at once would hold every activation of the data set (the
    memory budget counts one batch)."""
    n = len(x)
    total, yhat = 0.0, []
    for i in range(0, n, chunk):
        xs, ys = x[i:i + chunk], y[i:i + chunk]
        part = float(npm.loss(params, xs, ys))
        total += part * len(xs) / n if net.loss.reduction == "mean" else part
        yhat.append(npm.forward(params, xs))
    return total, accuracy(net, np.concatenate(yhat), y)


# --------------------------------------------------------------------------- checkpoints


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says which epoch the checkpoint holds."""


def _check_resume(ckpt, start: int, epochs: int) -> None:
    if start > epochs:
        raise DeriveError(f"{ckpt}: --checkpoint: the run is already at epoch {start}, past --epochs {epochs}; "
                          f"pass --epochs {start} or more, or use a new file")


def _say_resume(ckpt, start: int, epochs: int) -> None:
    print(f"derive: resuming from epoch {start} of {epochs} ({ckpt})", file=sys.stderr)


@contextmanager
def _interrupt_message(ckpt, saved: list):
    """Turn Ctrl-C into a message naming the epoch the checkpoint holds.  The file is the truth:
    Ctrl-C may land between a save's rename and ``saved`` being updated (save_checkpoint is
    atomic, so the file is always one whole epoch)."""
    try:
        yield
    except KeyboardInterrupt:
        if ckpt is None:
            raise Interrupted("nothing saved (no --checkpoint)") from None
        held = saved[0]
        try:
            with np.load(ckpt, allow_pickle=False) as z:
                held = int(z["epoch"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass
        if held == 0:
            raise Interrupted(f"no epoch finished; {ckpt} not written") from None
        raise Interrupted(f"{ckpt} holds epoch {held}; run the same command again to resume") from None


# --------------------------------------------------------------------------- the loop


def train(net: Network, source: str, x: np.ndarray, y: np.ndarray, *, epochs: int, batch: int, seed: int = 0,
          backend: str = "numpy", checkpoint: str | None = None, progress: bool = True,
          test: tuple | None = None) -> TrainResult:
    """``test``: held-out (x, y), whose loss and accuracy are reported after training (``--test-data``)."""
    if epochs < 1:
        raise DeriveError(f"--epochs: expected a positive integer, got {epochs}")
    if batch < 1:
        raise DeriveError(f"--batch: expected a positive integer, got {batch}")
    if net.optimizer.type == "lbfgs" and backend != "numpy":
        raise DeriveError("--backend: L-BFGS runs on the numpy backend (scipy.optimize); use --backend numpy")
    device = None
    if backend == "triton":
        device = triton_device()
        if device is None:
            raise DeriveError("--backend triton: needs torch and triton (pip install 'derive[gpu]')")
    targets = ("numpy", "triton") if backend == "triton" else ("numpy",)
    ckpt = Path(checkpoint) if checkpoint else None
    with generated_modules(net, source, targets) as mods:
        npm = mods["numpy"]
        if net.optimizer.type == "lbfgs":
            return _train_lbfgs(net, npm, x, y, epochs, seed, ckpt, progress, test)
        mod = mods[backend]
        conv = _Converter(backend, device, net)
        params = mod.init_params(seed) if backend == "numpy" else mod.init_params(seed, device=device)
        state = mod.init_state(params)
        start, t, losses = 0, 0, []
        if ckpt is not None and ckpt.exists():
            p, s, start, t, losses = load_checkpoint(ckpt, net)
            _check_resume(ckpt, start, epochs)
            _say_resume(ckpt, start, epochs)
            params = {k: conv.to(v) for k, v in p.items()}
            state = {kind: {k: conv.to(v) for k, v in per.items()} for kind, per in s.items()} or state
        n = x.shape[0]
        bar = _bar(range(start, epochs), epochs, start, progress)
        saved = [start]  # the last epoch the checkpoint holds
        with _interrupt_message(ckpt, saved), contextlib.closing(bar) if hasattr(bar, "close") else nullcontext():
            for epoch in bar:
                order = np.random.default_rng([seed, epoch]).permutation(n)
                total, count = 0.0, 0
                for i in range(0, n, batch):
                    idx = order[i:i + batch]
                    t += 1
                    params, state, loss = mod.step(params, state, conv.x(x[idx]), conv.y(y[idx]), t)
                    total += loss * len(idx)
                    count += len(idx)
                losses.append(total / count)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{losses[-1]:.6g}")
                if ckpt is not None:
                    save_checkpoint(ckpt, net, params, state, epoch + 1, t, losses)
                    saved[0] = epoch + 1
        final = {k: as_numpy(v).astype(np.float64) for k, v in params.items()}
        return _result(net, npm, final, x, y, batch, epochs, losses, test)


def _result(net, npm, final, x, y, chunk, epochs, losses, test) -> TrainResult:
    """The final parameters with their loss and accuracy on the training data and on ``test``, if given."""
    out = TrainResult(final, *evaluate(net, npm, final, x, y, chunk), epochs=epochs, losses=losses)
    if test is not None:
        out.test_loss, out.test_accuracy = evaluate(net, npm, final, *test, chunk)
    return out


class _Converter:
    """Data and parameters in the backend's types: float64 arrays, or float32 tensors on the device."""

    def __init__(self, backend: str, device, net: Network):
        self.backend, self.device = backend, device
        self.int_target = LOSS_RULES[net.loss.type].target == CLASS

    def to(self, v):
        if self.backend == "numpy":
            return np.asarray(v, dtype=np.float64)
        import torch

        return torch.tensor(np.asarray(v), dtype=torch.float32, device=self.device)

    def x(self, v):
        return self.to(v)

    def y(self, v):
        if self.backend == "numpy" or not self.int_target:
            return self.to(v) if not self.int_target else v
        import torch

        return torch.tensor(v, dtype=torch.int32, device=self.device)


def _bar(it, total, start, enabled):
    if enabled and sys.stderr.isatty():
        try:
            from tqdm import tqdm

            return tqdm(it, total=total, initial=start, desc="train", unit="epoch", file=sys.stderr)
        except ImportError:
            pass
    return it


def _train_lbfgs(net, npm, x, y, epochs, seed, ckpt, progress, test) -> TrainResult:
    """Full-batch L-BFGS by scipy.optimize on the generated loss and gradient (one iteration per epoch).

    Resuming restarts from the checkpoint's parameters with an empty curvature history.
    """
    try:
        from scipy.optimize import minimize
    except ImportError:
        raise DeriveError("--optimizer lbfgs: needs scipy (pip install 'derive[train]')") from None
    names = [p.name for p in net.params]
    shapes = {p.name: p.shape for p in net.params}
    params = npm.init_params(seed)
    start, losses = 0, []
    if ckpt is not None and ckpt.exists():
        params, _, start, _, losses = load_checkpoint(ckpt, net)
        _check_resume(ckpt, start, epochs)
        _say_resume(ckpt, start, epochs)

    def unflat(v):
        out, off = {}, 0
        for name in names:
            size = int(np.prod(shapes[name], dtype=np.int64))
            out[name] = v[off:off + size].reshape(shapes[name])
            off += size
        return out

    def fun(v):
        loss, grads = npm.value_and_gradients(unflat(v), x, y)
        return loss, np.concatenate([np.ravel(grads[n]) for n in names])

    history = int(net.optimizer.hyper["history"])
    v0 = np.concatenate([np.ravel(params[n]) for n in names])
    epoch = [start]
    saved = [start]

    def callback(intermediate_result):
        epoch[0] += 1
        losses.append(float(intermediate_result.fun))
        if ckpt is not None:
            save_checkpoint(ckpt, net, unflat(intermediate_result.x), {}, epoch[0], epoch[0], losses)
            saved[0] = epoch[0]

    if epochs > start:
        with _interrupt_message(ckpt, saved):
            res = minimize(fun, v0, jac=True, method="L-BFGS-B", callback=callback,
                           options={"maxiter": epochs - start, "maxcor": history, "gtol": 1e-12, "ftol": 1e-15})
        v0 = res.x
    final = unflat(v0)
    return _result(net, npm, final, x, y, len(x), epochs, losses, test)


def plot(losses: list, path: str, title: str) -> None:
    """The loss curve, in the format the file name asks for (derive/train/plots.py)."""
    from derive.train.plots import loss_curve

    loss_curve(losses, path, title)

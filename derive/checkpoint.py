"""The training checkpoint: one .npz file holding a network's parameters, its optimizer state and progress.

`derive train --checkpoint` writes it (derive/train/loop.py) and `derive explain --at --params` reads its
parameters (derive/evaluate.py); the format sits here, below both, so neither stage imports the other.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from derive import fsutil
from derive.errors import DeriveError
from derive.network import Network

CHECKPOINT_KEYS = ("fingerprint", "epoch", "t", "losses")


def _fingerprint(net: Network) -> str:
    return f"{net.name}|{net.optimizer.type}|" + ",".join(f"{p.name}{list(p.shape)}" for p in net.params)


def as_numpy(v):
    """A NumPy array of a NumPy array or a torch tensor (on any device)."""
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


def save_checkpoint(path: Path, net: Network, params, state, epoch: int, t: int, losses) -> None:
    arrays = {"fingerprint": np.array(_fingerprint(net)), "epoch": np.array(epoch), "t": np.array(t),
              "losses": np.asarray(losses, dtype=np.float64)}
    arrays.update({f"param/{k}": as_numpy(v) for k, v in params.items()})
    for kind, per in (state or {}).items():
        arrays.update({f"state/{kind}/{k}": as_numpy(v) for k, v in per.items()})
    # atomic: an interrupted save leaves the previous checkpoint intact
    fsutil.write_atomic(path, lambda fh: np.savez(fh, **arrays))


def load_checkpoint(path: Path, net: Network):
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        if not all(k in data for k in CHECKPOINT_KEYS):
            raise ValueError("keys missing")
        int(data["epoch"]), int(data["t"])
    except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile, AttributeError):
        # numpy's own text (about allow_pickle, or zip internals) would be advice for the wrong problem
        raise DeriveError(f"{path}: --checkpoint: not a derive checkpoint, or a damaged one (expected the .npz "
                          "file an earlier derive train --checkpoint wrote); delete it or pass a new file") from None
    if str(data.get("fingerprint")) != _fingerprint(net):
        raise DeriveError(f"{path}: --checkpoint: it belongs to another network or optimizer "
                          f"({data.get('fingerprint')}); use a new file")
    params = {k[len("param/"):]: v for k, v in data.items() if k.startswith("param/")}
    state: dict = {}
    for k, v in data.items():
        if k.startswith("state/"):
            _, kind, name = k.split("/", 2)
            state.setdefault(kind, {})[name] = v
    return params, state, int(data["epoch"]), int(data["t"]), data["losses"].tolist()

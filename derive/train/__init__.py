"""`derive train`: the training loop over generated modules (loop.py) and CSV or .npz data (data.py)."""

from derive.train.loop import plot, train

__all__ = ["plot", "train"]

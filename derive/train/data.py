"""Training data from CSV, checked against the spec: columns are named after the spec's input and target.

A scalar input `x` is one column `x`; a vector input of n is columns x0 … x(n−1); the
same for the target; a class-index target is one integer column.  Every problem is a
one-line error naming the file, the line and the column (exit code 2).
"""

from __future__ import annotations

import csv
import math
import sys

import numpy as np

from derive.errors import DeriveError
from derive.network import Network
from derive.tables.losses import CLASS, LOSS_RULES


class DataError(DeriveError):
    pass


def columns(name: str, shape: tuple) -> list[str]:
    return [name] if not shape else [f"{name}{i}" for i in range(shape[0])]


def _warn(message: str) -> None:
    print(f"derive: warning: {message}", file=sys.stderr)


def _delimiter_hint(header: list[str]) -> str:
    """derive reads commas only; a header that is one field holding ';' or tabs was written with another."""
    if len(header) == 1:
        for sep, name in ((";", "semicolon"), ("\t", "tab")):
            if sep in header[0]:
                return (f" (the header looks {name}-separated; derive reads comma-separated CSV: "
                        f"re-save the file with commas)")
    return ""


def load_csv(path: str, net: Network, warn=_warn) -> tuple[np.ndarray, np.ndarray]:
    """``warn`` gets each warning (a column the spec does not name) as one line."""
    x_cols = columns(net.input.name, net.input.shape)
    y_cols = columns(net.target.name, net.target.shape)
    integer_target = LOSS_RULES[net.loss.type].target == CLASS
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # a spreadsheet's byte-order mark is not a column
            rows = list(csv.reader(fh))
    except OSError as err:
        raise DataError(f"{path}: cannot read data file: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except csv.Error as err:
        raise DataError(f"{path}: malformed CSV: {err}") from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise DataError(f"{path}: line 1: empty file; expected a header with columns {', '.join(x_cols + y_cols)}")
    header = [h.strip() for h in rows[0]]
    for col in x_cols + y_cols:
        if col not in header:
            raise DataError(f"{path}: line 1: missing column {col!r}; expected columns {', '.join(x_cols + y_cols)}"
                            + _delimiter_hint(header))
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise DataError(f"{path}: line 1: duplicate column {dup[0]!r}")
    extra = [h for h in header if h not in x_cols + y_cols]
    if extra:
        warn(f"{path}: line 1: ignoring column{'s' if len(extra) > 1 else ''} not in the spec: {', '.join(extra)}")
    body = [(n, r) for n, r in enumerate(rows[1:], start=2) if any(cell.strip() for cell in r)]
    if not body:
        raise DataError(f"{path}: line 2: no data rows after the header")
    where = {h: i for i, h in enumerate(header)}
    xs = np.empty((len(body), len(x_cols)))
    ys = np.empty((len(body), len(y_cols)), dtype=np.int64 if integer_target else np.float64)
    for r, (line, row) in enumerate(body):
        if len(row) != len(header):
            raise DataError(f"{path}: line {line}: expected {len(header)} fields as in the header, got {len(row)}")
        for c, col in enumerate(x_cols):
            xs[r, c] = _number(path, line, col, row[where[col]])
        for c, col in enumerate(y_cols):
            value = _number(path, line, col, row[where[col]])
            if integer_target:
                k = net.output_shape[0]
                if value != int(value) or not 0 <= value < k:
                    raise DataError(f"{path}: line {line}: column {col!r}: expected a class index 0..{k - 1}, got {row[where[col]].strip()!r}")
                value = int(value)
            ys[r, c] = value
    x = xs.reshape((len(body), *net.input.shape))
    y = ys.reshape((len(body), *net.target.shape))
    return x, y


def _number(path, line, col, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}: line {line}: column {col!r}: expected a number, got {text.strip()!r}") from None
    if not math.isfinite(value):
        raise DataError(f"{path}: line {line}: column {col!r}: expected a finite number, got {text.strip()!r}")
    return value

"""Training data from CSV or .npz, checked against the spec: named after the spec's input and target.

CSV: a scalar input `x` is one column `x`; a vector input of n is columns x0 … x(n−1); an input of two or
more dimensions (a volume [c, h, w]) is one column per element, `x_0_3_5` for x[0, 3, 5], in row-major
order; the same for the target; a class-index target is one integer column.
.npz: arrays named after the input and target, shapes (N, *input shape) and (N,) or (N, *target shape),
loaded with allow_pickle=False.  A .npy file holds one array, so it cannot carry both: it is refused with
a hint.  Every problem is a one-line error naming the file and the line, column or array (exit code 2).
"""

from __future__ import annotations

import csv
import math
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

from derive.errors import DeriveError
from derive.network import Network
from derive.tables.losses import CLASS, LOSS_RULES


class DataError(DeriveError):
    pass


def columns(name: str, shape: tuple) -> list[str]:
    """CSV column names of a port, row-major: x; x0 … x(n−1); x_0_0_0 … x_(c−1)_(h−1)_(w−1)."""
    if not shape:
        return [name]
    if len(shape) == 1:
        return [f"{name}{i}" for i in range(shape[0])]
    return [name + "".join(f"_{i}" for i in idx) for idx in np.ndindex(*shape)]


def _warn(message: str) -> None:
    print(f"derive: warning: {message}", file=sys.stderr)


def load(path: str, net: Network, warn=_warn) -> tuple[np.ndarray, np.ndarray]:
    """The data file by its name: .npz arrays, anything else CSV."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        return load_npz(path, net, warn)
    if suffix == ".npy":
        raise DataError(f"{path}: a .npy file holds one array; derive reads the input and the target together "
                        f"from an .npz file: np.savez({Path(path).stem}.npz, {net.input.name}=inputs, "
                        f"{net.target.name}=targets)")
    return load_csv(path, net, warn)


def read_bytes(path: str) -> int:
    """Bytes reading the file takes, for the memory budget: a CSV's cells as strings (limits.csv_bytes);
    an .npz's arrays uncompressed plus their float64 copy (at most 8 bytes per byte, for uint8 pixels)."""
    from derive import limits

    if Path(path).suffix.lower() != ".npz":
        return limits.csv_bytes(path)
    try:
        with zipfile.ZipFile(path) as z:
            return 9 * sum(info.file_size for info in z.infolist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return 0  # the loader reports it


def _expected_columns(cols: list[str]) -> str:
    """The column list of an error message; a volume's hundreds of columns as the first and the last."""
    return ", ".join(cols) if len(cols) <= 12 else f"{', '.join(cols[:3])}, …, {cols[-1]} ({len(cols)} in all)"


def _delimiter_hint(header: list[str]) -> str:
    """derive reads commas only; a header that is one field holding ';' or tabs was written with another."""
    if len(header) == 1:
        for sep, name in ((";", "semicolon"), ("\t", "tab")):
            if sep in header[0]:
                return (f" (the header looks {name}-separated; derive reads comma-separated CSV: "
                        f"re-save the file with commas)")
    return ""


def _volume_hint(net: Network, header: list[str]) -> str:
    """A volume's columns are x_c_h_w; a file with x0, x1, … (a vector's naming) gets told so."""
    name = net.input.name
    if len(net.input.shape) >= 2 and f"{name}0" in header:
        first = columns(name, net.input.shape)[0]
        return (f" (input {name} has shape {list(net.input.shape)}: one column per element, row-major, "
                f"named {first}, {columns(name, net.input.shape)[1]}, …)")
    return ""


def _rows(path: str):
    """(line number, row) for each CSV record; a csv.Error (a field over the size limit, a stray quote)
    names the line it happened on."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # a spreadsheet's byte-order mark is not a column
            reader = csv.reader(fh)
            rows = []
            try:
                for row in reader:
                    rows.append((reader.line_num, row))
            except csv.Error as err:
                what = (f"a field longer than {csv.field_size_limit():,} characters (is it a CSV file?)"
                        if "field larger" in str(err) else f"malformed CSV: {err}")
                raise DataError(f"{path}: line {reader.line_num}: {what}") from None
            return rows
    except OSError as err:
        raise DataError(f"{path}: cannot read data file: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None


def load_csv(path: str, net: Network, warn=_warn) -> tuple[np.ndarray, np.ndarray]:
    """``warn`` gets each warning (a column the spec does not name) as one line."""
    x_cols = columns(net.input.name, net.input.shape)
    y_cols = columns(net.target.name, net.target.shape)
    integer_target = LOSS_RULES[net.loss.type].target == CLASS
    rows = _rows(path)
    expected = _expected_columns(x_cols + y_cols)
    if not rows or not any(cell.strip() for cell in rows[0][1]):
        raise DataError(f"{path}: line 1: empty file; expected a header with columns {expected}")
    header = [h.strip() for h in rows[0][1]]
    present = set(header)
    for col in x_cols + y_cols:
        if col not in present:
            raise DataError(f"{path}: line 1: missing column {col!r}; expected columns {expected}"
                            + (_volume_hint(net, header) or _delimiter_hint(header)))
    if len(present) < len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"{path}: line 1: duplicate column {dup[0]!r}")
    wanted = set(x_cols + y_cols)
    extra = [h for h in header if h not in wanted]
    if extra:
        warn(f"{path}: line 1: ignoring column{'s' if len(extra) > 1 else ''} not in the spec: {', '.join(extra)}")
    body = [(n, r) for n, r in rows[1:] if any(cell.strip() for cell in r)]
    if not body:
        raise DataError(f"{path}: line 2: no data rows after the header")
    where = {h: i for i, h in enumerate(header)}
    x_at = [where[c] for c in x_cols]
    xs = np.empty((len(body), len(x_cols)))
    ys = np.empty((len(body), len(y_cols)), dtype=np.int64 if integer_target else np.float64)
    for r, (line, row) in enumerate(body):
        if len(row) != len(header):
            raise DataError(f"{path}: line {line}: expected {len(header)} fields as in the header, got {len(row)}")
        try:
            xs[r] = [float(row[i]) for i in x_at]  # the fast path; a bad cell is found one by one below
        except ValueError:
            for col, i in zip(x_cols, x_at):
                _number(path, line, col, row[i])
        if not np.isfinite(xs[r]).all():
            c = int(np.argmin(np.isfinite(xs[r])))
            _number(path, line, x_cols[c], row[x_at[c]])
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


# --------------------------------------------------------------------------- .npz


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def load_npz(path: str, net: Network, warn=_warn) -> tuple[np.ndarray, np.ndarray]:
    """Arrays named after the input and target: x of shape (N, *input shape), y of (N,) or (N, *target shape)."""
    xn, yn = net.input.name, net.target.name
    want = {xn: ("N", *net.input.shape), yn: ("N", *net.target.shape)}
    expect = f"expected arrays {xn} {_shape_text(want[xn])} and {yn} {_shape_text(want[yn])}"
    if not os.path.exists(path):
        raise DataError(f"{path}: cannot read data file: No such file or directory")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            for name in (xn, yn):
                if name not in names:
                    found = ", ".join(names) if names else "none"
                    raise DataError(f"{path}: missing array {name!r} (found {found}); {expect}, as written by "
                                    f"np.savez(file, {xn}=inputs, {yn}=targets)")
            arrays = {}
            for name in (xn, yn):
                try:
                    arrays[name] = z[name]
                except ValueError:  # an object array needs pickle, which derive never loads
                    raise DataError(f"{path}: array {name!r} holds Python objects (it needs pickle, which "
                                    f"derive does not load); expected an array of numbers") from None
    except DataError:
        raise
    except OSError as err:
        raise DataError(f"{path}: cannot read data file: {err.strerror or err}") from None
    except (ValueError, EOFError, zipfile.BadZipFile, KeyError):
        raise DataError(f"{path}: not an .npz archive, or a damaged one (expected np.savez's output with "
                        f"arrays {xn} and {yn})") from None
    extra = [n for n in names if n not in (xn, yn)]
    if extra:
        warn(f"{path}: ignoring array{'s' if len(extra) > 1 else ''} not in the spec: {', '.join(extra)}")
    x, y = arrays[xn], arrays[yn]
    for name, arr in ((xn, x), (yn, y)):
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)) \
                or arr.dtype == np.bool_:
            raise DataError(f"{path}: array {name!r} has dtype {arr.dtype}; expected integers or floats")
    if x.ndim == 0 or tuple(x.shape[1:]) != tuple(net.input.shape):
        raise DataError(f"{path}: array {xn!r} has shape {_shape_text(x.shape)}; expected {_shape_text(want[xn])}, "
                        f"N samples of input shape {list(net.input.shape)}")
    y_shape = tuple(net.target.shape)
    if y.ndim == 0 or tuple(y.shape[1:]) != y_shape:
        if LOSS_RULES[net.loss.type].target == CLASS:
            what = f"one class index 0..{net.output_shape[0] - 1} per sample (not one-hot)"
        else:
            what = f"N samples of target shape {list(y_shape)}" if y_shape else "one number per sample"
        raise DataError(f"{path}: array {yn!r} has shape {_shape_text(y.shape)}; expected {_shape_text(want[yn])}, "
                        + what)
    if len(x) != len(y):
        raise DataError(f"{path}: arrays {xn!r} and {yn!r} hold {len(x)} and {len(y)} samples; expected the same number")
    if len(x) == 0:
        raise DataError(f"{path}: arrays {xn!r} and {yn!r} hold no samples")
    for name, arr in ((xn, x), (yn, y)):
        if np.issubdtype(arr.dtype, np.floating):
            bad = ~np.isfinite(arr)
            if bad.any():
                at = tuple(int(i) for i in np.argwhere(bad)[0])
                raise DataError(f"{path}: array {name!r}: {name}[{', '.join(map(str, at))}] = {arr[at]}; "
                                f"expected finite numbers")
    if LOSS_RULES[net.loss.type].target == CLASS:
        k = net.output_shape[0]
        bad = (y != np.round(y)) | (y < 0) | (y >= k) if np.issubdtype(y.dtype, np.floating) else (y < 0) | (y >= k)
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DataError(f"{path}: array {yn!r}: {yn}[{', '.join(map(str, at))}] = {y[at]}; expected a class "
                            f"index 0..{k - 1}")
        return x.astype(np.float64), y.astype(np.int64)
    return x.astype(np.float64), y.astype(np.float64)

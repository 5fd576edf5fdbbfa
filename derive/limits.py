"""Size limits checked when a Network is built, and the memory budget of what derive allocates.

A valid but absurd spec (``out = 100000000``, a 3×2000×2000 input) must be refused with a
one-line error before anything is generated or allocated, not by the kernel's OOM killer.

Limits (each per network, the largest admitted value):
  max_elements  elements of any one tensor: a parameter, the input, or a layer's
                per-sample activation;
  max_params    the total number of parameters;
  max_tile      the padded power-of-two width of any Triton tile: a per-sample row of an
                activation (its flattened size rounded up) or a dense weight tile
                (rows and columns each rounded up).
The defaults admit MNIST- and CIFAR-sized MLPs and convnets (784-1024-1024-10; 3×32×32 with
64 filters) and refuse the absurd.  A spec raises them with a ``[limits]`` table, the
command line with ``--max-elements`` etc. (the command line wins over the table).

The memory budget is separate: ``estimate_bytes`` predicts, from shapes and the batch, the
bytes ``derive verify``/``train`` (and any later command: call it) will allocate, and
``check_budget`` refuses above the budget (default: a fraction of physical memory).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from dataclasses import dataclass, fields, replace

from derive.errors import DeriveError, SpecError

DEFAULT_MAX_ELEMENTS = 2**23  # 8,388,608: a 64×32×32 volume into a 128-wide layer, not a 3×2000×2000 input
DEFAULT_MAX_PARAMS = 2**24  # 16,777,216: 784-1024-1024-10 has 1,863,690
DEFAULT_MAX_TILE = 2**24  # padded: a tile of 4097×4097 (8192² = 2**26) is refused
BUDGET_FRACTION = 0.5  # of physical memory, the default --memory-budget

FLAGS = {"max_elements": "--max-elements", "max_params": "--max-params", "max_tile": "--max-tile"}


@dataclass(frozen=True)
class Limits:
    """Per-network size limits; None means the default (or the command line's value)."""

    max_elements: int | None = None
    max_params: int | None = None
    max_tile: int | None = None

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise SpecError(f"limits.{f.name}", f"expected a positive integer, got {v!r}")


DEFAULTS = Limits(DEFAULT_MAX_ELEMENTS, DEFAULT_MAX_PARAMS, DEFAULT_MAX_TILE)
_overrides: contextvars.ContextVar[Limits] = contextvars.ContextVar("derive_limit_overrides", default=Limits())


@contextlib.contextmanager
def overrides(**values):
    """Limits set on the command line, applied to every Network built inside the block."""
    token = _overrides.set(Limits(**{k: v for k, v in values.items() if v is not None}))
    try:
        yield
    finally:
        _overrides.reset(token)


def effective(spec_limits: Limits | None) -> Limits:
    out = DEFAULTS
    for layer in (spec_limits or Limits(), _overrides.get()):
        given = {f.name: getattr(layer, f.name) for f in fields(layer)}
        out = replace(out, **{k: v for k, v in given.items() if v is not None})
    return out


def pow2(n: int) -> int:
    """n padded to a power of two: the width of a Triton tile (tl.arange needs one), as the Triton
    target pads and as max_tile counts."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _layer_key(li) -> str:
    """The key that sets a layer's size: out (linear), filters (conv), else its type."""
    spec = li.spec
    for key in ("out", "filters"):
        if getattr(spec, key, None) is not None:
            return f"layers[{li.index - 1}].{key}"
    return f"layers[{li.index - 1}].type"


def _over(path: str, what: str, n: int, name: str, limit: int) -> SpecError:
    return SpecError(path, f"{what} has {n:,} elements, over the limit {name} = {limit:,}; "
                           f"raise it on purpose with [limits] {name} or {FLAGS[name]}")


def check(net) -> None:
    """Refuse a Network whose tensors, parameter count or Triton tiles exceed its limits."""
    lim = effective(getattr(net, "limits", None))
    by_layer = {li.index: li for li in net.info}
    n_in = _size(net.input.shape)
    if n_in > lim.max_elements:
        raise _over("input.shape", f"the input {list(net.input.shape)}", n_in, "max_elements", lim.max_elements)
    if pow2(n_in) > lim.max_tile:
        raise _over("input.shape", f"the input's Triton tile ({n_in:,} padded to {pow2(n_in):,})", pow2(n_in),
                    "max_tile", lim.max_tile)
    for li in net.info:
        n = _size(li.out_shape)
        if n > lim.max_elements:
            raise _over(_layer_key(li), f"layer {li.index}'s output {list(li.out_shape)} (per sample)", n,
                        "max_elements", lim.max_elements)
        if pow2(n) > lim.max_tile:
            raise _over(_layer_key(li), f"layer {li.index}'s Triton tile ({n:,} padded to {pow2(n):,})", pow2(n),
                        "max_tile", lim.max_tile)
    total = 0
    for p in net.params:
        key = _layer_key(by_layer[p.layer])
        n = _size(p.shape)
        if n > lim.max_elements:
            raise _over(key, f"parameter {p.name} {list(p.shape)}", n, "max_elements", lim.max_elements)
        if len(p.shape) == 2:
            tile = pow2(p.shape[0]) * pow2(p.shape[1])
            if tile > lim.max_tile:
                raise _over(key, f"parameter {p.name}'s Triton tile ({p.shape[0]}×{p.shape[1]} padded to "
                                 f"{pow2(p.shape[0])}×{pow2(p.shape[1])})", tile, "max_tile", lim.max_tile)
        total += n
        if total > lim.max_params:
            raise SpecError(key, f"the parameters up to {p.name} total {total:,}, over the limit max_params = "
                                 f"{lim.max_params:,}; raise it on purpose with [limits] max_params or --max-params")


# --------------------------------------------------------------------------- the memory budget

# Copies each command keeps alive at its peak, in float64-equivalents (8 bytes).  Counted from the
# code: verify holds θ, ∇θ, torch's θ and ∇θ, float32 θ and ∇θ, two long-double (16-byte) perturbed
# copies of θ for finite differences, Triton's θ, ∇θ and sentinel-padded buffers (≈ 14); per sample
# a, f, δ and ∂L/∂f of every layer in NumPy, torch's saved tensors, the long-double and float32
# passes (≈ 10).  Rounded up for allocator slack: peak RSS above the import baseline (derive verify
# --seeds 1 under /usr/bin/time) came to 93-99% of those first counts, and is at most 74% of these
# (docs/spec.md#limits has the measurements).
_PARAM_COPIES = {"verify": 24, "train": 8}  # train: θ, ∇θ, up to two optimizer states, checkpoint copy, f32
_SAMPLE_COPIES = {"verify": 16, "train": 6}


def activation_elements(net) -> int:
    """Elements one sample carries through the network: input, every layer's output, and each
    conv layer's windows (the im2col view the einsum may materialise)."""
    n = _size(net.input.shape)
    for li in net.info:
        n += _size(li.out_shape)
        kernel = getattr(li, "kernel", None)
        if getattr(li.spec, "filters", None) is not None and kernel:
            c = li.in_shape[0]
            n += c * kernel[0] * kernel[1] * _size(li.out_shape[1:])
    return n


def param_elements(net) -> int:
    return sum(_size(p.shape) for p in net.params)


def estimate_bytes(net, batch: int, command: str = "verify", data_rows: int = 0) -> int:
    """Bytes ``command`` will allocate for ``net`` at this batch (an upper estimate).

    ``data_rows``: samples held in memory besides the batch (train's data set: its inputs and
    targets, and a backend copy of each batch).
    """
    per_row = _size(net.input.shape) + max(1, _size(net.target.shape))
    return 8 * (_PARAM_COPIES[command] * param_elements(net)
                + _SAMPLE_COPIES[command] * activation_elements(net) * batch
                + 2 * per_row * data_rows)


def default_budget() -> int:
    try:
        phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        phys = 8 * 2**30  # no sysconf (Windows): assume 8 GiB
    return int(phys * BUDGET_FRACTION)


_SUFFIX = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """'512M', '2G', '1.5GiB', '4096' -> bytes (binary units).  An argparse type."""
    import argparse

    m = _BYTES.match(text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a size such as 4G, 512M or 1048576, got {text!r}")
    return int(float(m.group(1)) * _SUFFIX[m.group(2).lower()])


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class BudgetError(DeriveError):
    """An estimate above the memory budget (exit 2)."""


def check_budget(estimate: int, budget: int | None, what: str) -> None:
    """Refuse before allocating: ``what`` names the command and its inputs (``derive verify x.toml``)."""
    limit = default_budget() if budget is None else budget
    if estimate > limit:
        source = "" if budget is not None else f" ({BUDGET_FRACTION:.0%} of physical memory)"
        raise BudgetError(f"{what}: would allocate about {human(estimate)}, over the memory budget of "
                          f"{human(limit)}{source}; raise it on purpose with --memory-budget SIZE (e.g. "
                          f"--memory-budget {human_flag(estimate)})")


def human_flag(n: int) -> str:
    """A --memory-budget value just above ``n``, in whole units."""
    for unit, size in (("T", 2**40), ("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if n >= size:
            return f"{-(-n // size)}{unit}"
    return str(n)


CSV_FACTOR = 16  # see csv_bytes


def csv_bytes(path: str) -> int:
    """Bytes reading a CSV takes: csv.reader keeps every cell as a Python str (≈ 50 bytes plus an
    8-byte list slot for a cell of 8 characters, ~7× the text), then float arrays; 16× the file
    size bounds it.  A file that cannot be read is the loader's to report (0 here)."""
    try:
        return CSV_FACTOR * os.path.getsize(path)
    except OSError:
        return 0

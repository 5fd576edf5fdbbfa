"""What the per-layer Triton plan (derive.targets.triton_layers) records of each kernel it emits: the kernel's
text, pointers, launch and cost (Kernel), and the printed tile a later kernel may run itself (TiledBody,
EpiloguePart; derive.targets.triton_conv_grad does)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def _width(shape) -> int:
    return math.prod(shape) if shape else 0  # 0: one scalar per sample


@dataclass
class Kernel:
    """One @triton.jit kernel and its launch: ``args`` are (parameter, signature type, host expression, comment)."""

    name: str
    source: str
    args: list
    grid: str
    section: str  # "forward", "out", "loss" or "backward": the launches run for forward(), loss(), gradients()
    block_b: str | None = "_blk"  # the BLOCK_B a launch passes (None: the kernel takes none)
    block_b_spec: str | None = "BLOCK_B"  # the same for COMPILE_SPECS
    constexprs: dict = field(default_factory=dict)  # further constexprs: a value, or (on CUDA, on CPU)
    flops: int = 0  # per batch row: the contraction's multiply-adds times 2, the partials' adds (derive inspect)
    block_n: tuple | None = None  # (on CUDA, on CPU) columns per program of a column-tiled kernel
    computes: tuple = ()  # the assignments its epilogue computes after its head (derive inspect's phase list)
    flags: tuple = ()  # the constexpr switches of a row-complete epilogue's parts (FLAGS), in order
    # a gradient kernel: its grid's last axis splits the batch (_splits), each split writing its row of partial
    # sums; ``programs`` is its grid's size without that axis (derive inspect's model of its occupancy)
    split: bool = False
    programs: int = 0
    tile_rows: int = 0  # a batch-tiled kernel's rows per program; its grid is ⌈batch / tile_rows⌉ × programs
    # a row-tiled kernel's printed tile (TiledBody): what a later kernel needs to compute the same tile itself
    tile: "TiledBody | None" = None
    # an outer product's kernel: {"k": the template's dict, "args": its pointers, "head": its assignment's name}
    outer: dict | None = None
    l2_row: int = 0  # per batch row: bytes that go to and from L2 only (a program's own sums, read-modify-written)
    # a row-complete kernel whose training-step work a backward kernel does (_absorbed_rows): launched only
    # when ``guard`` holds, with ``flag_exprs`` for its flags, and compiled for ``flag_uses``
    guard: str | None = None
    flag_exprs: dict = field(default_factory=dict)
    flag_uses: list | None = None
    training: bool = True  # launched by a training step (derive inspect's model)
    loss: bool = False  # writes each split's loss into its row of partial sums (no loss-sum launch)
    # a convolution's (or locally connected layer's) forward: its template dict (a pooling may take it in)
    window: dict | None = None

    def head(self, net: str) -> str:
        """The assignment the kernel is named after (derive inspect's phase line starts with it)."""
        return self.name.removeprefix(f"{net}_").removesuffix("_kernel")


@dataclass(frozen=True)
class TiledBody:
    """The printed lines of a row-tiled kernel's tile, in the names of its tile (_rows, _row_mask, _cols_<width>,
    _cmask_<width>, BLOCK_B, BLOCK_N): a consumer that sets those names can run them in its own loop."""

    head: str  # the head's own lines (a gather, a convolution), "" where the head is printed with the rest
    loads: tuple
    lines: tuple
    args: tuple  # the pointers the lines read (not those of the stores)
    stored: tuple  # the arrays the kernel stores
    width: int
    chunked: bool
    plain: bool  # no W·f helper with its KC, no epilogue parts, no extra stores
    parts: dict = field(default_factory=dict)  # a row-complete epilogue's parts: flag -> EpiloguePart


@dataclass(frozen=True)
class EpiloguePart:
    """One part of a row-complete epilogue, printed: its loads and lines (no stores), and the (array, store
    line) of each array it keeps for a later kernel."""

    compute: tuple
    kept: tuple

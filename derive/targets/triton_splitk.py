"""Split-K weight gradients for the fused kernel's "split" plan (issue 21; tiny-cuda-nn does the same with
CUTLASS): where a layer's ∂L/∂W = Σ_b δ[b]ᵀ·f[b] does not fit a program's registers beside the tile's
other values, the fused kernel stores δ (and f, unless f is the input, already in memory) per batch row,
and one more launch, the ∂W kernel, sums δᵀ·f (and Σ δ, the bias) over the batch with tl.dot: program p
takes the chunks p, p + P, … of the batch in order (split-K over the batch) and writes its sums into its
own row of the partial sums, the fused kernel's row p, which the update kernel reduces as before."""

from __future__ import annotations

import dataclasses

import sympy as sp

from derive.ir.nodes import Assign, BatchSum, KernelIR, Outer
from derive.limits import pow2
from derive.targets.triton_printer import DOT_MIN  # narrower vectors are padded with zero columns in the ∂W kernel

DW_BLOCK_K = 32  # batch rows per tl.dot step of the ∂W kernel: a (32, 128) operand is 16 registers at 8 warps
# the widest block of f's columns one ∂W sum takes: a wider f (a 784-wide input) is summed block by block,
# each block a pass over the batch of its own (a 64 x 1,024 sum held whole spilled 10,748 B on sm_90)
DW_COLS = 128


@dataclasses.dataclass
class SplitLayout:
    """What the fused kernel stores for the ∂W kernel: name -> (first column, width) in the (batch, width)
    buffer, and the gradients the ∂W kernel computes, grouped by the δ whose chunks they share."""

    columns: dict
    width: int
    groups: list  # [{"d": name, "outer": [(grad, f name)], "sum": grad or None}] in the IR's order

    @property
    def grads(self) -> set[str]:
        """The gradients the ∂W kernel computes (the fused kernel stores none of them)."""
        return {g for grp in self.groups for g in ([o for o, _ in grp["outer"]] + [grp["sum"]]) if g}


def splittable(ir: KernelIR, a: Assign) -> bool:
    """A parameter gradient the ∂W kernel can take: δᵀ·f or Σ δ of per-sample vectors."""
    if a.name not in {g for _, g in ir.grads}:
        return False
    arrays = ir.arrays()

    def vec(s):
        arr = arrays.get(getattr(s, "name", None))
        return isinstance(s, sp.Symbol) and arr is not None and arr.batched and len(arr.shape) == 1

    if isinstance(a.expr, Outer):
        return all(vec(s) for s in a.expr.args)
    return isinstance(a.expr, BatchSum) and vec(a.expr.args[0])


def split_layout(ir: KernelIR) -> SplitLayout:
    """The columns of the stored vectors (each once) and the ∂W kernel's groups."""
    arrays = ir.arrays()
    columns, off = {}, 0
    groups: dict[str, dict] = {}

    def keep(name):
        nonlocal off
        if name != ir.input.name and name not in columns:
            columns[name] = (off, arrays[name].shape[0])
            off += arrays[name].shape[0]

    for a in ir.backward:
        if not splittable(ir, a):
            continue
        d = a.expr.args[0].name
        keep(d)
        g = groups.setdefault(d, {"d": d, "outer": [], "sum": None})
        if isinstance(a.expr, Outer):
            keep(a.expr.args[1].name)
            g["outer"].append((a.name, a.expr.args[1].name))
        else:
            g["sum"] = a.name
    return SplitLayout(columns, max(off, 1), list(groups.values()))


def store_line(layout: SplitLayout, name: str, mask: str) -> str:
    """The fused kernel's store of one vector into its columns of this tile's rows of _SPLIT_ptr."""
    off, n = layout.columns[name]
    return (f"tl.store(_SPLIT_ptr + _rows[:, None] * {layout.width} + {off} + _cols_{n}[None, :], {name}, "
            f"mask={mask})")


def dw_context(ir: KernelIR, layout: SplitLayout, offsets: dict[str, int]) -> list[dict]:
    """One block of the ∂W kernel per group and block of f's columns (DW_COLS): its loads (δ, then f for each
    δᵀ·f) and stores; the bias and f's first columns in the group's first block, f's further columns in one
    more block each.  ``offsets``: each parameter's first entry in the flat partial row."""
    arrays, param_of = ir.arrays(), {g: p for p, g in ir.grads}
    x = ir.input.name

    def load(name, cols, c0=0, block=None):
        if name == x:
            ptr, stride, off, n = f"{x}_ptr", arrays[x].shape[0], 0, arrays[x].shape[0]
        else:
            (off, n), ptr, stride = layout.columns[name], "_SPLIT_ptr", layout.width
        np_ = min(max(DOT_MIN, pow2(n)), block) if block else max(DOT_MIN, pow2(n))
        at = f"{off} + {cols}[None, :]" if off else f"{cols}[None, :]"
        mask = "_m[:, None]" + ("" if c0 + np_ <= n else f" & ({cols} < {n})[None, :]")
        return np_, n, f"tl.load({ptr} + _r[:, None] * {stride} + {at}, mask={mask}, other=0.0)"

    blocks = []
    for g in layout.groups:
        jp, j, d_load = load(g["d"], "_j")
        widths = [arrays[f].shape[0] for _, f in g["outer"]]
        for c0 in range(0, max(widths + [1]), DW_COLS):
            outers, names = [], []
            for i, ((grad, f), k) in enumerate(zip(g["outer"], widths)):
                if c0 >= k:
                    continue
                cols, acc = f"_k{i}", f"_acc_{grad}"
                kp, _, f_load = load(f, cols, c0, DW_COLS)
                outers.append({"acc": acc, "f": f"_f{i}", "cols": cols, "kp": kp, "f_load": f_load,
                               "first": f"{c0} + " if c0 else "",
                               "store": (f"tl.store({_at(offsets[param_of[grad]])}_j[:, None] * {k} + "
                                         f"{cols}[None, :], {acc}{_pair_mask(j, jp, k, c0 + kp, cols)})")})
                part = "" if k <= DW_COLS else f", f's columns {c0}-{min(k, c0 + DW_COLS) - 1}"
                names.append(f"∂L/∂{param_of[grad]} = Σ_b {g['d']}ᵀ·{f}{part}")
            bias = None
            if g["sum"] and not c0:
                mask = ")" if j == jp else f", mask=_j < {j})"
                bias = f"tl.store({_at(offsets[param_of[g['sum']]])}_j, _sum{mask}"
                names.append(f"∂L/∂{param_of[g['sum']]} = Σ_b {g['d']}")
            blocks.append({"d": g["d"], "jp": jp, "d_load": d_load, "outers": outers, "bias": bias,
                           "comment": ", ".join(names)})
    return blocks


def _at(offset: int) -> str:
    return f"_part + {offset} + " if offset else "_part + "


def _pair_mask(j: int, jp: int, k: int, kp: int, cols: str) -> str:
    parts = ([f"(_j < {j})[:, None]"] if j != jp else []) + ([f"({cols} < {k})[None, :]"] if k < kp else [])
    return f", mask={' & '.join(parts)}" if parts else ""


def events(ir: KernelIR, layout: SplitLayout) -> list[tuple]:
    """What the ∂W kernel moves and computes, for derive inspect's cost model (section "dw"): per batch row
    δ and f read once per δᵀ·f (δ once per group), the padded tl.dot FLOPs; per program its row's entries."""
    arrays = ir.arrays()
    out = []
    for g in layout.groups:
        j = arrays[g["d"]].shape[0]
        blocks = -(-max([arrays[f].shape[0] for _, f in g["outer"]] + [1]) // DW_COLS)
        out.append(("dw", "row", "read", 4 * j * blocks))  # δ again for each further block of f's columns
        for _, f in g["outer"]:
            k = arrays[f].shape[0]
            out.append(("dw", "row", "read", 4 * k))
            padded = max(DOT_MIN, pow2(k)) if k <= DW_COLS else -(-k // DW_COLS) * DW_COLS
            out.append(("dw", "row", "dot", 2 * max(DOT_MIN, pow2(j)) * padded))
            out.append(("dw", "program", "write", 4 * j * k))
        if g["sum"]:
            out.append(("dw", "program", "write", 4 * j))
    return out

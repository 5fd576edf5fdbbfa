"""The fused Triton kernel: every phase of a row-local network (triton_planner.py decides) in one persistent
kernel whose programs sum their tiles' gradients in rows of their own, which the module's one update kernel
reduces in a fixed order; what the fused kernel keeps on chip is its Strategy, picked per network (the "split"
plan leaves ∂W = Σ δᵀ·f to a second kernel, triton_splitk.py)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re

import sympy as sp

from derive.errors import DerivationError
from derive.ir.nodes import KernelIR, Outer
from derive.limits import pow2
from derive.targets.common import _env
from derive.targets.triton_plan import TritonPlan, compile_specs, module_context, step_aliases
from derive.targets.triton_printer import DOT_MIN, TRITON_HELPERS, TileContext, TritonCodePrinter
from derive.targets import triton_splitk
from derive.targets.triton_splitk import DW_BLOCK_K, split_layout, splittable

TRITON_BLOCK_B = 64
NUM_WARPS = 4
# with tl.dot: twice the threads share each tile, which kept the deep 32- and 64-wide cross-entropy MLPs
# from spilling (at 4 warps they held 255 registers and spilled 4-32 bytes, derive inspect)
DOT_NUM_WARPS = 8
DOT_WIDEST = 128  # the widest vector a tile of tl.dot's smallest 16 rows was measured to hold (no spill)
NUM_STAGES = 1  # the kernels have no software-pipelined loops
# ptxas's own register target for these kernels was sometimes 96 or 128 with spills where 168 registers
# and no spill were possible (derive inspect): every launch says the 255 a thread may have
MAXNREG = 255
# tl.dot's input precision: "tf32x3" multiplies on tensor cores with three TF32 products per product (the
# high parts, then each high part times the other's low part), which keeps about float32's accuracy;
# "tf32" (one product) is about 1e-3 relative, and "ieee" runs on the CUDA cores (it spilled, derive inspect)
DOT_PRECISION = "tf32x3"

# The flag sets the module's own entry points launch the fused kernel with (forward, loss,
# gradients and train_step, step and FlatState): COMPILE_SPECS lists exactly these.
# (WITH_INTER, intermediates()'s debug launch that stores every named per-sample quantity, is not listed:
# it is for the interpreter and for locating a wrong quantity, not for training.)
FUSED_FLAGS = (
    {"WITH_OUT": True, "WITH_LOSS": False, "WITH_GRAD": False, "WITH_INTER": False},
    {"WITH_OUT": False, "WITH_LOSS": True, "WITH_GRAD": False, "WITH_INTER": False},
    {"WITH_OUT": False, "WITH_LOSS": False, "WITH_GRAD": True, "WITH_INTER": False},
    {"WITH_OUT": False, "WITH_LOSS": True, "WITH_GRAD": True, "WITH_INTER": False},
)


@dataclasses.dataclass(frozen=True)
class Strategy:
    """How the fused dense kernel keeps its bytes: ``name`` "on-chip" (every per-sample vector a register
    tile) or "scratch" (per-sample vectors in per-program scratch rows, read back at each use);
    ``weights`` "program" (loaded once before the program's loop) or "tile" (at each use); ``sums``
    "program" (gradients summed on chip across the program's tiles, written once), "tile" (added to
    the program's partial row after each tile) or "split" (δ and f stored per batch row, and ∂L/∂W = Σ δᵀ·f
    summed by a second kernel, split-K over the batch: triton_splitk.py); ``block_b`` batch rows per tile
    (0: the default rule)."""

    name: str
    weights: str
    sums: str
    block_b: int = 0
    why: str = ""


SCRATCH = Strategy("scratch", "tile", "tile", why="compiles without spills across the MLP grid (width 16-128, "
                   "depth 2-8, L2/CE); its scratch rows and per-tile weights cost L2 traffic")
# the on-chip plan at 16 rows and 8 warps compiled without spills in every configuration of the grid's 64-wide
# L2 nets (depth 2-8, 115-229 registers); its forward-only launches spilled for the 64-wide cross-entropy nets
# (48-796 bytes, a 10-class layer), and its training launch for 32-wide deep nets (56-2,216) and 128-wide ones
# (372): bench/compile_grid.py, docs/gpu.md
ON_CHIP = Strategy("on-chip", "tile", "tile", 16, why="every weight 64 x 64: the measured envelope where "
                   "per-sample tiles stay in registers without spills; no scratch traffic")
# narrow nets on chip, (widest side, most weight layers): every COMPILE_SPECS entry of the grid's 16-wide nets up
# to 4 layers and 32-wide nets of 2 compiled without spills (L2 and cross-entropy, 126-209 registers); 16-wide at
# 8 layers spilled 96-232 bytes, 32-wide at 4 layers 72-124 (also at 4 warps): docs/gpu.md
NARROW_ENVELOPE = ((16, 4), (32, 2))
# split-K ∂W (issue 21, for wide layers whose ∂W sums do not fit registers): the fused kernel stores δ and f per
# batch row and reads them back in KC-column chunks for W·f and δ·W; a second kernel sums δᵀ·f over the batch.
SPLIT_WHY = "∂W = Σ δᵀ·f split-K over the batch in a second kernel from δ and f stored per row: no ∂W sums on chip"
SPLIT = Strategy("on-chip", "tile", "split", 64, SPLIT_WHY)
# where the scratch plan would be picked, the split plan at 64 rows, (widest hidden or output side, most weight
# layers, most outputs): every COMPILE_SPECS entry of the grid's nets outside the on-chip envelopes, 16- and
# 32-wide up to 8 layers and 64-wide cross-entropy up to 7, and of 784 -> 16/32/64/128 -> 10, 784 -> 64 -> 64 ->
# 10 and 3072 -> 64 -> 10 compiled without spills (127-255 registers) and modeled faster than scratch at 2^18
# rows, L2 counted (grid: scratch 0.91-1.92x eager, split 2.22-2.62x; 784 wide: 0.04x, 1.04-1.87x); 64-wide
# at 8 layers spilled 28 B, 128-wide 320-2,356 B but where 2 layers end in 10 classes, 784 -> 128 -> 64 -> 10
# 32 B, and a padded hidden side (20 -> 48 -> 48 -> 1) 56 B: hidden sides must be powers of two, the input
# may be any width (the ∂W kernel sums it in DW_COLS-column blocks); docs/benchmarks.md
SPLIT_ENVELOPE = ((32, 8, 32), (64, 7, 64), (128, 2, 16))
# the plans derive inspect --strategies compiles and models beside the pick (the bigger tiles and on-chip sums
# the model favours spill on sm_90 today: docs/gpu.md)
CANDIDATES = (SCRATCH, ON_CHIP, Strategy("on-chip", "tile", "program", 16), Strategy("on-chip", "tile", "tile", 32),
              Strategy("on-chip", "tile", "program", 32), Strategy("on-chip", "program", "program", 16),
              Strategy("on-chip", "tile", "program", 64), Strategy("on-chip", "program", "program", 64),
              SPLIT, Strategy("on-chip", "tile", "split", 128, SPLIT_WHY))


def choose_strategy(ir: KernelIR) -> Strategy:
    """The plan for a dense network: on chip where it was measured spill-free; else split-K ∂W where that was;
    else scratch rows (spill-free across the grid, but L2-bound)."""
    if not _scratch_layout(ir):
        return Strategy("on-chip", "tile", "tile", why="scalars only: every quantity is a register")
    weights = [p.shape for p in ir.params if len(p.shape) == 2]
    sides = [n for shape in weights for n in shape]  # as declared: padded sides were not measured
    if sides and set(sides) == {64} and len(weights) <= 8:
        return ON_CHIP
    if sides and any(max(sides) <= side and len(weights) <= depth for side, depth in NARROW_ENVELOPE):
        return dataclasses.replace(ON_CHIP, why=f"every side <= {max(sides)} with {len(weights)} weight layers: "
                                   "inside the measured envelope of narrow nets; no scratch traffic")
    if weights and _in_split_envelope(weights):
        return dataclasses.replace(SPLIT, why=f"{len(weights)} weight layers, hidden and output sides <= "
                                   f"{max(shape[0] for shape in weights)}: inside the measured "
                                   "envelope of the split plan, which scratch rows and per-tile weights "
                                   "would leave L2-bound")
    return SCRATCH


def _in_split_envelope(weights: list[tuple]) -> bool:
    """Weights as declared, (out, in) in layer order, two layers or more: the input may be any width and the
    last layer's outputs (a class count) any size up to the envelope's; every hidden side was a power of two."""
    if len(weights) < 2:  # one layer: 100 -> 1 (L2) modeled 1.02x eager split, 1.72x on scratch
        return False
    outs = weights[-1][0]
    hidden = [shape[0] for shape in weights[:-1]] + [shape[1] for shape in weights[1:]]
    return all(pow2(n) == n for n in hidden) and any(
        max(hidden + [outs]) <= side and len(weights) <= depth and outs <= most
        for side, depth, most in SPLIT_ENVELOPE)


def refusal(ir: KernelIR) -> str | None:
    """Why the triton target refuses this network, or None (every network today).  A graph is planned
    like a chain: the fused kernel, or the per-layer kernels, print each assignment of the IR, the sum
    over paths included; a concat takes the per-layer kernels (a register tile has no concatenation)."""
    return None


def refuse_graph(ir: KernelIR) -> None:
    reason = refusal(ir)
    if reason:
        raise DerivationError(f"{ir.source}: {reason}")


def plan_fused(ir: KernelIR, out_dir: str, strategy: Strategy) -> TritonPlan:
    """The fused persistent kernel for a network whose phases are all row-local (triton_planner.py)."""
    arrays = ir.arrays()
    onchip = strategy.name != "scratch"
    scratch = {} if onchip else _scratch_layout(ir)
    widths: dict[str, object] = {}
    real: dict[str, int] = {}
    for a in arrays.values():
        if len(a.shape) == 1:
            widths[a.name] = pow2(a.shape[0])
            real[a.name] = a.shape[0]
        elif len(a.shape) == 2:
            widths[a.name] = (pow2(a.shape[0]), pow2(a.shape[1]))
        else:
            widths[a.name] = 0
    block_b = strategy.block_b or (_block_b(widths, ir.params) if scratch else TRITON_BLOCK_B)
    tile = TileContext(param_shapes={p.name: p.shape for p in ir.params})
    # matrices are loaded at each use unless the strategy holds them through the program's loop
    tile.inline_loads = {p.name: _load_param(p).split(" = ", 1)[1] for p in ir.params
                         if (len(p.shape) == 2 and strategy.weights == "tile") or (scratch and p.shape)}
    sizes = sorted({n for a in arrays.values() for n in a.shape} | {1})
    width = sum(n for _, n in scratch.values())
    tile.in_memory = {name: (f"(_SCRATCH_ptr + {off})", width, n, "_srows") for name, (off, n) in scratch.items()}
    split = split_layout(ir) if strategy.sums == "split" else None
    if split:  # δ and f in the ∂W kernel's rows: the contractions read them back in KC-column chunks
        tile.in_memory.update({k: (f"(_SPLIT_ptr + {o})", split.width, n, "_rows")
                               for k, (o, n) in split.columns.items()})
    if tile.in_memory and len(ir.input.shape) == 1:  # the input is read in place, like the scratch rows
        tile.in_memory[ir.input.name] = (f"{ir.input.name}_ptr", ir.input.shape[0], ir.input.shape[0], "_rows")
    if onchip:
        tile.step_alias = step_aliases(ir)
    pr = TritonCodePrinter(widths, real, block_b, DOT_PRECISION, tile)
    if split:  # read back from L2 in the tile that stored them (their DRAM traffic is the store's)
        pr.streamed.update(split.columns)
    outer = {}  # gradient name -> the helper call that adds this tile's outer product into it
    inter, inter_width = _inter_layout(ir)

    def line(a):
        if isinstance(a.expr, Outer) and pr._chunked(*a.expr.args):
            (d, f), (_, k) = a.expr.args, tile.param_shapes[_param_of(ir, a.name)]
            (dp, ds, j, dr), (fp, fs, _, fr) = tile.in_memory[d.name], tile.in_memory[f.name]
            kp, jc = pow2(k), max(1, min(pow2(j), 4096 // pow2(k)))
            helper = "_outer_add"
            pr._read_rows(d.name, dr, 4 * j)
            if pr.tensor_cores(j, k):  # dᵀ·f as tl.dot: f read once per tile, d once per JC rows of G
                helper, jc = "_dot_outer_add", max(16, jc)
                pr._read_rows(f.name, fr, 4 * k)
                pr._note("row", "dot", 2 * jc * -(-j // jc) * kp)
            else:  # one rank-1 update per row and JC rows of G: f is read again for each JC
                pr._read_rows(f.name, fr, 4 * -(-j // jc) * k)
                pr._note("row", "flop", 2 * j * k)
            pr.helpers.add(helper)
            pr._note("tile", "read", 4 * j * k)  # the read-modify-write of this program's partial sum
            pr._note("tile", "write", 4 * j * k)
            outer[a.name] = (f"{helper}({dp}, {ds}, {_row0(dr)}, {fp}, {fs}, {_row0(fr)}, "
                             f"dL_d{_param_of(ir, a.name)}_ptr, _nvalid, J={j}, K={k}, JC={jc}, KP={kp}, BLOCK_B=BLOCK_B)")
            return None
        ln = {"lhs": a.name, "rhs": pr.doprint(a.expr), "comment": a.comment, "store": None, "barrier": False,
              "split": None, "inter": _store_inter(a.name, inter, inter_width)}
        if a.name in scratch and not (isinstance(a.expr, sp.Symbol) and a.expr.name in scratch):
            off, n = scratch[a.name]
            pr._note("scratch", "write", 4 * n)
            ln["store"] = (f"tl.store(_SCRATCH_ptr + {off} + _srows[:, None] * {width} + _cols_{n}[None, :], {a.name}, "
                           f"mask=_row_mask[:, None] & _cmask_{n}[None, :])")
            ln["barrier"] = True
        elif split and a.name in split.columns:
            pr._note("row", "write", 4 * split.columns[a.name][1])
            ln["store"] = triton_splitk.store_line(split, a.name, _mask(a.shape))
            ln["barrier"] = True
        return ln

    pr.section = "forward"
    forward = [line(a) for a in ir.forward]
    pr.section = "loss"
    loss_rhs = pr.doprint(ir.loss.expr)
    pr.section = "backward"
    backward = []
    grad_of = {g: p for p, g in ir.grads}
    params = {p.name: p for p in ir.params}
    stored: set[str] = set()
    for a in ir.backward:
        if split and splittable(ir, a):  # the ∂W kernel sums it from the δ and f rows stored where they are made
            backward.append({"lhs": a.name, "rhs": "", "comment": a.comment, "store": None, "barrier": False,
                             "inter": None, "split": f"# {a.comment}: by {ir.name}_dw_kernel"})
            stored.add(a.name)
            continue
        ln = line(a)
        if ln is None:
            continue
        if a.name == ir.backward[0].name:  # ∂L/∂ŷ: zero on padded rows and columns
            ln["rhs"] = f"tl.where({_mask(a.shape)}, {ln['rhs']}, 0.0)"
        backward.append(ln)
        if a.name not in grad_of:
            continue
        p = params[grad_of[a.name]]
        stored.add(a.name)  # summed where it is made, so no gradient stays live to the end of the tile
        if strategy.sums == "program":  # into its on-chip sum (tl.dot's accumulator where it is a tl.dot)
            acc = f"_sum_{a.name}"
            rhs = ln["rhs"]
            if rhs.startswith("tl.dot(") and rhs.count("tl.dot(") == 1 and rhs.endswith("input_precision=DOT_PRECISION)"):
                ln["rhs"] = rhs.replace(", input_precision=", f", {acc}, input_precision=")
            else:
                ln["rhs"] = f"{acc} + {rhs}"
            ln["lhs"] = acc
        else:
            ln["store"] = _store_grad(p, a.name, pr.helpers)  # no barrier: only this program reads its sums
            pr._note("tile", "read", 4 * math.prod(p.shape))
            pr._note("tile", "write", 4 * math.prod(p.shape))

    if ir.input.name not in tile.in_memory:  # the input tile, read once per tile from DRAM
        pr.events.append(("forward", "row", "read", 4 * max(1, math.prod(ir.input.shape))))
    offsets = [0, *itertools.accumulate(math.prod(p.shape) for p in ir.params)]  # PARAM_SHAPES order, flat
    n_params = offsets[-1]
    pr.section = "forward"
    for p in ir.params:
        if p.name not in tile.inline_loads:  # loaded once, before the program's loop
            pr._note("program", "read", 4 * math.prod(p.shape))
    carried = []
    if strategy.sums == "program":  # summed on chip across the program's tiles, written once after its loop
        carried = [_carried(p, g, o) for p, (_, g), o in zip(ir.params, ir.grads_by_param(), offsets)]
        grad_stores = [f"{c['acc']} += {c['grad']}" for c in carried if c["grad"] not in stored]
    else:
        grad_stores = [outer.get(g) or _store_grad(p, g, pr.helpers)
                       for p, (_, g) in zip(ir.params, ir.grads_by_param()) if g not in stored]
    pr._note("program", "write", 4 * (n_params + 1))  # the partial row: written once, or zeroed before the loop
    dots = any(h.startswith("_dot_") for h in pr.helpers) or any("tl.dot(" in ln["rhs"]
                                                                 for ln in (*forward, *backward) if ln)
    dots = dots or bool(split and split.groups)  # the ∂W kernel's tl.dot
    kernel_args = _kernel_args(ir, n_params)
    if scratch:
        kernel_args.append({"name": "_SCRATCH_ptr", "type": "*fp32",
                            "comment": f"scratch: each program's BLOCK_B rows of per-sample vectors, (programs·BLOCK_B, "
                                       f"{width}) float32, " + ", ".join(f"{k} at {o}" for k, (o, _) in scratch.items())})
    if split:
        kernel_args.append({"name": "_SPLIT_ptr", "type": "*fp32",
                            "comment": f"(batch, {split.width}) float32: what the ∂W kernel sums, "
                                       + ", ".join(f"{k} at {o}" for k, (o, _) in split.columns.items())})
    kernel_args.append({"name": "_INTER_ptr", "type": "*fp32",
                        "comment": f"(batch, {inter_width}) float32: every named per-sample quantity (WITH_INTER)"})
    ctx = module_context(ir, out_dir, pr)
    ctx.update(
        fused=True,
        block_b=block_b,
        dot_precision=DOT_PRECISION if dots else None,
        num_warps=DOT_NUM_WARPS if dots else NUM_WARPS,
        num_stages=NUM_STAGES,
        maxnreg=MAXNREG,
        kernel_args=kernel_args,
        scratch=[{"alloc": f"{ir.input.name}.new_empty(_np * _blk * {width}, dtype=torch.float32)"}] if scratch else [],
        columns=[{"n": n, "padded": pow2(n)} for n in sizes],
        loads=[_load_param(p) for p in ir.params if p.name not in tile.inline_loads],
        row_loads=[_load_sample(ir.input, f"{ir.input.name}_ptr")]
        if ir.input.name not in tile.in_memory else [],
        grad_ptrs=[{"name": f"dL_d{p.name}_ptr", "param": p.name, "offset": o} for p, o, (_, g)
                   in zip(ir.params, offsets, ir.grads_by_param()) if not (split and g in split.grads)],
        forward=forward,
        store_out=_store_out(ir),
        load_target=_load_sample(ir.target, f"{ir.target.name}_ptr"),
        loss_rhs=loss_rhs,
        loss_inter=_store_inter("loss_per_sample", inter, inter_width, "_loss_per_sample"),
        forward_inter=[ln["inter"] for ln in forward if ln and ln["inter"]],
        backward_inter=[ln["inter"] for ln in backward if ln["inter"]],
        inter_layout=[{"name": k, "offset": o, "n": n, "shape": repr(tuple(shape))} for k, (o, n, shape) in inter.items()],
        inter_width=inter_width,
        loss_scale="_scale",
        backward=backward,
        grad_stores=grad_stores,
        carried=carried,
        tile_ptrs=[p.name for p in ir.params if p.name in tile.inline_loads],
    )
    kernels = [(f"{ir.name}_fused_kernel", _fused_signature(kernel_args),
                [{**{k: repr(v) for k, v in flags.items()}, "BLOCK_B": "BLOCK_B"} for flags in FUSED_FLAGS])]
    ctx["split"] = None
    if split and split.groups:
        ctx["split"] = {"width": split.width, "block_k": DW_BLOCK_K, "x_width": ir.input.shape[0],
                        "blocks": triton_splitk.dw_context(ir, split, {p.name: o for p, o in zip(ir.params, offsets)})}
        kernels.append((f"{ir.name}_dw_kernel", {f"{ir.input.name}_ptr": "*fp32", "_SPLIT_ptr": "*fp32",
                                                 "_PART_ptr": "*fp32", "_B": "i32", "BLOCK_K": "constexpr"},
                        [{"BLOCK_K": "DW_BLOCK_K"}]))
        pr.events.extend(triton_splitk.events(ir, split))
    ctx.update(compile_specs(ir, kernels))
    ctx["helpers"] = [TRITON_HELPERS[h] for h in sorted(pr.helpers)]
    ctx["uses_nvalid"] = any("_nvalid" in g for g in ctx["grad_stores"])  # the rank-1 and tl.dot ∂W helpers
    _drop_dead_lines(ctx, inter, inter_width)
    template = _env().get_template("triton_module.py.jinja")
    text = template.render(**ctx)
    # only the column ranges some line uses (a width-1 vector's pair is dead where nothing reads it)
    ctx["columns"] = [c for c in ctx["columns"] if re.search(rf"_(cols|cmask)_{c['n']}\b", _without_columns(text))]
    text = template.render(**ctx)
    y = ir.target
    y_bytes = 8 if y.dtype == "int" else 4 * math.prod(y.shape)
    # the backward pass reads y again right after the loss did: from L2, not DRAM
    fixed = [("loss", "row", "read", y_bytes), ("backward", "reread", "read", y_bytes),
             ("out", "row", "write", 4 * math.prod(ir.output.shape)),
             ("loss", "tile", "read", 4), ("loss", "tile", "write", 4)]
    return TritonPlan(text, tuple(pr.events) + tuple(fixed), ctx["block_b"], ctx["num_warps"], scratch_width=width,
                      dot_precision=ctx["dot_precision"], strategy=strategy)


def _block_b(widths: dict, params) -> int:
    """Batch rows per tile: a (BLOCK_B, width) tile and its 64-bit addresses must stay a small share of
    the 255 registers a thread has, so wider layers get fewer rows.  Measured with derive inspect: inside
    the persistent loop, 2048 elements per tile (64 rows of 32, 32 of 64) spilled at 4 warps without
    tl.dot.  A module with a matrix that tl.dot can take gets at least tl.dot's 16 rows up to width 128
    (2048 elements at 8 warps: no spill).  (32 rows of 64 with tl.dot compiled without spills too, but at
    up to 255 registers, with no margin left: not taken.)"""
    widest = max([w for w in widths.values() if isinstance(w, int)] + [1])
    rows = max(1, min(64, 1024 // widest))
    if widest <= DOT_WIDEST and any(len(p.shape) == 2 and min(map(pow2, p.shape)) >= DOT_MIN for p in params):
        return max(DOT_MIN, rows)
    return rows


def _scratch_layout(ir: KernelIR) -> dict[str, tuple[int, int]]:
    """name -> (column offset, width) for every per-sample vector that a later line reads: they live in
    scratch rows, not registers (an Outer's operands are read there too, by _outer_add)."""
    exprs = [*ir.forward, ir.loss, *ir.backward]
    used = {s.name for a in exprs for s in a.expr.free_symbols}
    out, off = {}, 0
    for a in (*ir.forward, *ir.backward):
        if isinstance(a.expr, sp.Symbol) and a.expr.name in out:  # f3 = a3, δ3 = ∂L/∂f3: the same rows
            out[a.name] = out[a.expr.name]
        elif a.batched and len(a.shape) == 1 and a.name in used:
            out[a.name] = (off, a.shape[0])
            off += a.shape[0]
    return out


def _drop_dead_lines(ctx: dict, inter: dict, width: int) -> None:
    """Mark the kernel lines whose value no other line reads (δ3 = ∂L/∂f3 read back from scratch where
    the gradients read the scratch rows themselves): not printed, and intermediates() stores their
    right-hand side instead."""
    lines = [*ctx["forward"], *ctx["backward"]]
    for ln in lines:
        others = [ctx["store_out"], ctx["loss_rhs"], *ctx["grad_stores"], *(c["store"] for c in ctx["carried"])]
        others += [t for o in lines if o is not ln for t in (o["rhs"], o["store"] or "", o["split"] or "")]
        ln["dead"] = not ln["store"] and not ln["split"] and not any(
            re.search(rf"\b{ln['lhs']}\b", t) for t in others if t)
        if ln["dead"] and ln["inter"]:
            ln["inter"] = _store_inter(ln["lhs"], inter, width, ln["rhs"])
    ctx["forward_inter"] = [ln["inter"] for ln in ctx["forward"] if ln["inter"]]
    ctx["backward_inter"] = [ln["inter"] for ln in ctx["backward"] if ln["inter"]]


def _inter_layout(ir: KernelIR) -> tuple[dict[str, tuple[int, int, tuple]], int]:
    """name -> (column offset, width, shape) in intermediates()'s (batch, width) buffer: every named
    per-sample quantity of the derivation, forward, the per-sample loss, backward (the parameter
    gradients, batch sums, come from the reduction instead)."""
    grads = {g for _, g in ir.grads}
    out, off = {}, 0
    named = [*ir.forward, ir.loss, *ir.backward]
    for a in named:
        if a.name in grads or not a.batched or len(a.shape) > 1 or a.name in out:
            continue
        n = a.shape[0] if a.shape else 1
        out[a.name] = (off, n, tuple(a.shape))
        off += n
    return out, max(off, 1)


def _store_inter(name: str, inter: dict, width: int, value: str | None = None) -> str | None:
    """The WITH_INTER store of one named quantity into its columns of this tile's rows."""
    if name not in inter:
        return None
    off, n, shape = inter[name]
    value = value or name
    if not shape:
        return f"tl.store(_INTER_ptr + _rows * {width} + {off}, {value}, mask=_row_mask)"
    return (f"tl.store(_INTER_ptr + _rows[:, None] * {width} + {off} + _cols_{n}[None, :], {value}, "
            f"mask=_row_mask[:, None] & _cmask_{n}[None, :])")


def _param_of(ir: KernelIR, grad: str) -> str:
    return next(p for p, g in ir.grads if g == grad)


def _fused_signature(kernel_args: list[dict]) -> dict:
    sig = {a["name"]: a["type"] for a in kernel_args}
    sig.update({"_B": "i32", "_scale": "fp32", "WITH_OUT": "constexpr", "WITH_LOSS": "constexpr",
                "WITH_GRAD": "constexpr", "WITH_INTER": "constexpr", "BLOCK_B": "constexpr"})
    return sig


def _without_columns(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not re.match(r"\s*_(cols|cmask)_\d+ = ", ln))


def _row0(rows: str) -> str:
    """The first row of a tile in the buffer ``rows`` indexes: this program's scratch rows or the batch's."""
    return "_pid * BLOCK_B" if rows == "_srows" else "_tile * BLOCK_B"


def _mask(shape: tuple) -> str:
    """The mask of a (BLOCK_B, n) tile: the batch's rows, and the columns where n is padded."""
    if not shape:
        return "_row_mask"
    cols = _cols_mask(shape[0])
    return f"_row_mask[:, None] & {cols}[None, :]" if cols else "_row_mask[:, None]"


def _cols_mask(*sides: int) -> str | None:
    """The mask of a parameter-shaped tile, or None where every side is a power of two (no padding, so a
    mask would only cost registers: ptxas does not see that an arange below its length is always in range)."""
    if all(n == pow2(n) for n in sides):
        return None
    if len(sides) == 1:
        return f"_cmask_{sides[0]}"
    m, n = sides
    return f"_cmask_{m}[:, None] & _cmask_{n}[None, :]"


def _masked(mask: str | None, other: str | None = None) -> str:
    if mask is None:
        return ""
    return f", mask={mask}" + (f", other={other}" if other else "")


def _kernel_args(ir: KernelIR, n_params: int) -> list[dict]:
    def desc(a):
        dims = ", ".join(["batch", *map(str, a.shape)])
        kind = "int class indices" if a.dtype == "int" else "float32"
        return f"({dims}) {kind}"

    args = [
        {"name": f"{ir.input.name}_ptr", "comment": f"input {ir.input.name}, {desc(ir.input)}", "type": "*fp32"},
        {"name": f"{ir.target.name}_ptr", "comment": f"target {ir.target.name}, {desc(ir.target)}",
         "type": "*i64" if ir.target.dtype == "int" else "*fp32"},
    ]
    args += [{"name": f"{p.name}_ptr", "comment": f"parameter {p.name}, {p.shape}", "type": "*fp32"}
             for p in ir.params]
    args.append({"name": "_PART_ptr", "comment": f"(programs, {n_params + 1}) float32: each program's partial sums of the "
                 "gradients (PARAM_SHAPES order, flat) and the loss", "type": "*fp32"})
    args.append({"name": "_OUT_ptr", "comment": f"ŷ, (batch{''.join(', ' + str(n) for n in ir.output.shape)}) float32",
                 "type": "*fp32"})
    return args


def _load_param(p) -> str:
    if not p.shape:
        return f"{p.name} = tl.load({p.name}_ptr)"
    if len(p.shape) == 1:
        n = p.shape[0]
        return f"{p.name} = tl.load({p.name}_ptr + _cols_{n}{_masked(_cols_mask(n), '0.0')})"
    m, n = p.shape
    return (f"{p.name} = tl.load({p.name}_ptr + _cols_{m}[:, None] * {n} + _cols_{n}[None, :]"
            f"{_masked(_cols_mask(m, n), '0.0')})")


def _load_sample(a, ptr: str) -> str:
    other = "0" if a.dtype == "int" else "0.0"
    if not a.shape:
        return f"{a.name} = tl.load({ptr} + _rows, mask=_row_mask, other={other})"
    n = a.shape[0] if len(a.shape) == 1 else math.prod(a.shape)  # a volume as a flat (c·h·w) tile
    return f"{a.name} = tl.load({ptr} + _rows[:, None] * {n} + _cols_{n}[None, :], mask={_mask((n,))}, other={other})"


def _store_out(ir: KernelIR) -> str:
    pr_value = ir.forward[-1].name if ir.output.shape or not ir.forward[-1].shape else None
    if ir.output.shape:
        n = ir.output.shape[0]
        return f"tl.store(_OUT_ptr + _rows[:, None] * {n} + _cols_{n}[None, :], {pr_value}, mask={_mask((n,))})"
    value = ir.forward[-1].name if not ir.forward[-1].shape else f"tl.sum({ir.forward[-1].name}, axis=1)"
    return f"tl.store(_OUT_ptr + _rows, {value}, mask=_row_mask)"


def _carried(p, g: str, offset: int) -> dict:
    """A gradient summed in registers across the program's tiles: its zero tile, and its one store into
    the program's partial row after the loop."""
    acc, ptr = f"_sum_{g}", f"_part + {offset}"
    if not p.shape:
        return {"acc": acc, "grad": g, "init": "tl.zeros((1,), dtype=tl.float32)",
                "store": f"tl.store({ptr} + tl.arange(0, 1), {acc})"}
    if len(p.shape) == 1:
        n = p.shape[0]
        return {"acc": acc, "grad": g, "init": f"tl.zeros(({pow2(n)},), dtype=tl.float32)",
                "store": f"tl.store({ptr} + _cols_{n}, {acc}{_masked(_cols_mask(n))})"}
    m, n = p.shape
    return {"acc": acc, "grad": g, "init": f"tl.zeros(({pow2(m)}, {pow2(n)}), dtype=tl.float32)",
            "store": (f"tl.store({ptr} + _cols_{m}[:, None] * {n} + _cols_{n}[None, :], {acc}"
                      f"{_masked(_cols_mask(m, n))})")}


def _store_grad(p, g: str, helpers: set) -> str:
    """This tile's gradient added to this program's partial sum (the pointer is into its own row)."""
    ptr = f"dL_d{p.name}_ptr"
    if not p.shape:
        return f"tl.store({ptr}, tl.load({ptr}) + {g})"
    helpers.add("_accumulate")
    if len(p.shape) == 1:
        n = p.shape[0]
        return f"_accumulate({ptr} + _cols_{n}, {g}, _cmask_{n})"
    m, n = p.shape
    return (f"_accumulate({ptr} + _cols_{m}[:, None] * {n} + _cols_{n}[None, :], {g}, "
            f"_cmask_{m}[:, None] & _cmask_{n}[None, :])")

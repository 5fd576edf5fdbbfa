"""A convolution's ∂W kernel that computes its δ itself (derive.targets.triton_layers' per-layer plan).

Where nothing but a convolution's weight and bias gradients read its δ, the kernel just emitted to store δ
(δ = ∂L/∂f·f′ after a δ·W, a max-pooling or window gather) is dropped, and its printed tile (TiledBody) runs
inside the gradient's kernel: one program per filter (on CPU tensors, per group of filters) and split of
the batch, walking the split's rows and every block of positions, δ in registers, one (c·kw) × tile sum
per kernel row.  Three more kernels fold in where they fit: the one computing the gradient a pooling
routes, as a pass over the program's pooled columns before the walk (_prepass); a dense ∂W over the columns
walked (_riding_outer); and, when this is the backward's first kernel, the training-step work of the last
dense layer's row-complete kernel (_absorbed_rows).
``plan`` is triton_layers' _Plan, which imports this module where it emits a convolution's ∂W.
"""

from __future__ import annotations

import re

import sympy as sp

from derive.ir import nodes as N
from derive.ir.nodes import Assign
from derive.limits import pow2
from derive.targets.triton_kernel import Kernel, TiledBody, _width

# a convolution's ∂W with δ computed in its kernel (delta_producer): a tile of INLINE_B rows by INLINE_N
# positions (on CPU tensors INLINE_WIDE_B rows by every position), and one (c·kw) × tile sum per kernel row
# p, at most INLINE_SUMS floats in all (lecture_convnet: 5 · 16 · 64 = 5,120; with ∂W3 and the row work in
# it, 128 registers and no spill on sm_90).  8 rows, not 4 × 16 positions: a riding ∂W's sums are
# read-modify-written once per tile, so 8 rows a tile halve that L2 traffic (1.54 → 0.77 GB at 2^14)
INLINE_B, INLINE_N = 8, 8
INLINE_SUMS = 8192
# On CPU tensors a program takes every filter, or as many as fit, and a tile of up to WIDE_B rows by every
# position of each: the interpreter pays per program and per operation, and one program per filter and
# 8 rows made digits_convnet's step at 32 rows 13.5 s (1.8 s before δ moved into this kernel; 0.7 s now).
# Filters come first (they share the tile's loads), then rows, while one kernel row's sum stays within
# WIDE_SUMS floats: the interpreter's largest tensor (triton.language's TRITON_MAX_TENSOR_NUMEL)
WIDE_B = 32
WIDE_SUMS = 1 << 20

# the locals of window_weight_grad_inline's loop (templates/triton_layer_kernels.jinja), which a producer's lines
# must not assign
_INLINE_LOCALS = {"_wo", "_np", "_pf", "_fo", "_s", "_lo", "_hi", "_wg", "_wc", "_wq", "_wg_ok", "_accb", "_wt", "_b0",
                  "_p0", "_pp", "_wd",
                  "_wb", "_wpos", "_wi", "_wj", "_wm", "_wat", "_wh", "_wx", "_X_ptr", "_G_ptr", "_GB_ptr",
                  "_of", "_oj", "_od", "_oat", "_osum", "_first", "_later", "_OD_ptr", "_OF_ptr", "_OG_ptr", "_OGB_ptr"}


def delta_producer(plan, a: Assign, d: sp.Symbol, bias: Assign | None, section: str, k: dict) -> Kernel | None:
    """The kernel just emitted, where it computes the convolution's δ over its tile (δ = ∂L/∂f·f′ after a
    δ·W, a max-pooling or a window gather) and stores nothing but δ, which nothing but this gradient (and
    its bias) reads: then the gradient's kernel computes δ itself, tile by tile, and δ never goes through
    global memory (for lecture_convnet 308 MB written, and read again, per step at 2^14) and the producer's
    launch goes."""
    prev = plan.last(section)
    src = plan.resolve(d.name)
    if prev is None or prev.tile is None or prev.tile.stored != (src,):
        return None
    t = prev.tile
    if not (t.plain and t.chunked and t.width == k["n_out"]):
        return None
    if plan.readers.get(src, set()) - {a.name, *((bias.name,) if bias else ())}:
        return None
    if k["kh"] * pow2(k["c"] * k["kw"]) * INLINE_B * INLINE_N > INLINE_SUMS:
        return None  # the per-offset sums would not fit the registers
    names = set(re.findall(r"\b_\w+", "\n".join((t.head, *t.loads, *t.lines))))
    if names & (_INLINE_LOCALS | {f"_acc{p}" for p in range(k["kh"])}):
        return None  # the producer's lines would overwrite a local of the loop around them
    return prev


def emit_window_weight_grad_inline(plan, a: Assign, producer: Kernel, bias: Assign | None, section: str,
                                    k: dict) -> int:
    """∂L/∂W of a convolution with its δ computed in the kernel (delta_producer): one program per output channel
    o and split of the batch, looping over the split's rows and every block of positions; each tile's δ (the
    producer's lines) multiplies the windows at each kernel row p, into one (c·kw) × tile sum per p."""
    plan.kernels.pop()
    t = producer.tile
    src = plan.resolve(a.expr.args[0].name)
    if plan.stored.get(src) == section:
        del plan.stored[src]  # δ lives in registers now: no buffer, nothing to hand to intermediates()
    g_cols = k["c"] * k["kw"]
    # the producer's own pointers keep their names (its lines use them); this kernel's start with "_"
    args = list(t.args) + [("_X_ptr", *plan.arg(k["source"], section)[1:]), ("_G_ptr", *plan.arg(a.name, section)[1:])]
    if bias:
        args.append(("_GB_ptr", *plan.arg(bias.name, section)[1:]))
    pre = _prepass(plan, section, producer, k)
    if pre is not None:
        plan.kernels.pop()
        stored = pre.tile.stored[0]
        args += [x for x in pre.tile.args if x[2] not in {y[2] for y in args}]
        args.append((f"{stored}_ptr", *plan.arg(stored, section)[1:]))
    walked = pre.tile if pre is not None else t  # the columns a riding ∂W's f must be
    outer = _riding_outer(plan, section, walked, k["o"])
    ptrs = {}  # the riding ∂W's pointers: a buffer this kernel already takes (δ3 for δ·W3) keeps its parameter
    if outer is not None:
        plan.kernels.pop()
        for name, arg in zip(("_OD_ptr", "_OF_ptr", "_OG_ptr", "_OGB_ptr"), outer.outer["args"]):
            have = next((a[0] for a in args if a[2] == arg[2]), None)
            ptrs[name] = have or name
            if have is None:
                args.append((name, *arg[1:]))
    computes = (producer.head(plan.ir.name), *producer.computes,
                *((bias.name,) if bias else ()))
    done = {a.name, *((bias.name,) if bias else ()), computes[0], *producer.computes}  # what this kernel computes
    if pre is not None:
        computes = (pre.head(plan.ir.name), *pre.computes, *computes)
        done |= {computes[0], *pre.computes}
    done |= {outer.outer["head"], *outer.computes} if outer else set()
    rows = _absorbed_rows(plan, section, args, done, k["o"])
    if rows is not None:
        args = rows["args"]
    head = "\n".join(" " * 8 + ln if ln.strip() else ln for ln in t.head.splitlines())  # inside the two loops
    kx = {**k, "args": args, "delta": src, "width": t.width, "head": head, "loads": t.loads, "lines": t.lines,
          "g_cols": g_cols, "delta_formula": plan.defining(src).comment, "outer": outer and outer.outer["k"],
          "outer_jp": pow2(outer.outer["k"]["j"]) if outer else 0, "ptrs": ptrs, "rows": rows,
          "outer_f": _loaded(walked, outer.outer["k"]["f"]) if outer else None,
          "pre": pre and _pre_dict(plan, pre, k["o"])}
    if outer is not None:
        computes = (outer.outer["head"], *outer.computes, *computes)
    if rows is not None:
        computes = (*rows["computes"], *computes)
    # the sums run over kh · BLOCK_G lanes per position, BLOCK_G ≥ c·kw a power of two: counted as run
    flops = producer.flops + 2 * k["n_out"] * k["kh"] * pow2(g_cols) + (outer.flops if outer else 0)
    flops += pre.flops if pre else 0
    # the riding ∂W's sums, read-modify-written per tile in the split's row: L2 traffic, not DRAM (counted per row)
    rmw = 2 * 4 * outer.outer["k"]["j"] * walked.width // INLINE_B if outer else 0
    rmw += 4 * pre.tile.width if pre else 0  # the pre-pass's array, read back by the gather from L2
    rmw += rows["l2_row"] if rows else 0
    flops += rows["flops"] if rows else 0
    rows_, filters = _wide_tile(pow2(g_cols) * pow2(k["ohw"]), k["o"])
    grid = f"({-(-k['o'] // filters)} if _wide else {k['o']}, _splits)" if filters > 1 else f"({k['o']}, _splits)"
    plan.kernels.append(Kernel(k["name"], plan.env.window_weight_grad_inline(kx), args, grid,
                               section, f"({rows_} if _wide else {INLINE_B})", str(INLINE_B),
                               {"BLOCK_G": pow2(g_cols), "FILTERS": (1, filters)}, flops=flops,
                               block_n=(INLINE_N, filters * pow2(k["ohw"])), computes=computes, split=True,
                               programs=k["o"], l2_row=rmw, loss=rows is not None))
    return 0


def _wide_tile(per_row: int, o: int) -> tuple[int, int]:
    """(rows, filters) of a program's tile on CPU tensors, where one kernel row's sum takes ``per_row``
    floats per batch row and filter: every filter (padded to a power of two) and WIDE_B rows, the rows
    halved to 8 and then the filters halved while that sum passes WIDE_SUMS."""
    rows, f = WIDE_B, pow2(o)
    while rows > INLINE_B and per_row * rows * f > WIDE_SUMS:
        rows //= 2
    while f > 1 and per_row * rows * f > WIDE_SUMS:
        f //= 2
    return rows, f


def _absorbed_rows(plan, section: str, args: list, absorbed: set, o: int) -> dict | None:
    """The row-complete kernel of the last dense layer (a3, the loss, δ3 = ∂L/∂f3: _row_epilogue), where the
    backward kernel being built is the backward's first and takes in everything that reads δ3: then the
    training step does that kernel's work here instead, per row tile, and launches it only for forward(),
    loss() and intermediates().  Each program computes its rows' δ3 into its own plane of a scratch buffer
    (the lines that follow read δ3 from memory, as they did from the row kernel's buffer), and the split's
    program of filter 0 sums its rows' loss into the split's row of partial sums, which the update kernel
    adds: the loss's own sum launch goes too."""
    rk = plan.kernels[-1] if plan.kernels else None
    if rk is None or rk.tile is None or set(rk.flags) != {"LOSS", "GRAD"} | ({"OUT"} & set(rk.flags)):
        return None
    if any(k.section == section for k in plan.kernels) or "KC" in rk.constexprs:
        return None
    grad, loss = rk.tile.parts.get("GRAD"), rk.tile.parts.get("LOSS")
    if grad is None or loss is None or len(grad.kept) != 1 or loss.kept:
        return None
    d3, store = grad.kept[0]
    if plan.readers.get(d3, set()) - absorbed:
        return None
    ptr = next((a for a in args if a[2] == plan.host(d3)), None)
    if ptr is None:
        return None
    planes = f"_s_{d3}"
    out = [(a[0], a[1], planes, f"{d3}, one (batch, {_width(plan.arrays[d3].shape)}) plane per program's filter "
            "(scratch)") if a is ptr else a for a in args]
    for a in rk.tile.args:
        if a[0] not in {x[0] for x in out} and a[0] not in ("_OUT_ptr", "_PART_ptr"):
            out.append(a)
    out.append(("_LOSS_ptr", "*fp32", "_sums[0, N_PARAMS:]", "the loss, one entry per row of partial sums"))
    w = rk.tile.width
    plan.partial_buffers.setdefault(section, []).append(
        {"host": planes, "shape": f"({o} * _batch, {w})", "comment": f"{d3}: each filter's program's own rows"})
    rk.training = False
    rk.guard = "out is not None or (with_loss and not with_grad) or inter is not None"
    rk.flag_exprs = {"OUT": "out is not None", "LOSS": "with_loss and not with_grad", "GRAD": "inter is not None"}
    out_flag = {"OUT"} & set(rk.flags)
    rk.flag_uses = []  # forward(), loss(), intermediates()
    for on in (out_flag, {"LOSS"}, out_flag | {"GRAD"}):
        if on not in rk.flag_uses:
            rk.flag_uses.append(on)
    plan.loss_in_backward = True
    cols = [f"_cols_{w} = tl.arange(0, {pow2(w)})", f"_cmask_{w} = _cols_{w} < {w}"]
    return {"args": out, "ptr": ptr[0], "width": w, "cols": cols, "lines": (*rk.tile.loads, *rk.tile.lines),
            "loss": loss.compute, "loss_name": plan.ir.loss.name, "grad": grad.compute, "store": store,
            "computes": (rk.head(plan.ir.name),
                         *(c for c in rk.computes if c != plan.ir.output.name)),
            # δ3's planes written and read, and the partial sums of a3 read by every filter's program but the
            # first from L2
            "flops": rk.flops, "l2_row": 2 * 4 * w * o + (o - 1) * sum(plan.partial_row_bytes.get(a[2], 0)
                                                                        for a in rk.args)}


def _riding_outer(plan, section: str, t: TiledBody, o: int) -> Kernel | None:
    """The dense weight gradient ∂W = Σ_b δ[b] ⊗ f[b] emitted just before δ's producer (or the pre-pass),
    where f has the columns this kernel walks: the convolution's output (a flatten of it: the same columns,
    in the same order), or the pooled array the pre-pass walks.  Its sums ride in this kernel, which walks
    f's tiles anyway (and holds them, where the producer loads f), so a launch goes.  Each program owns its
    filters' columns of ∂W in its split's row and adds each tile's δᵀ·f to them there (read-modify-write:
    no other program writes them)."""
    prev = plan.last(section)
    if prev is None or prev.outer is None:
        return None
    f = plan.resolve(prev.outer["k"]["f"])
    shape = plan.arrays[f].shape if f in plan.arrays else None
    # f channel-major over the filters, as wide as the walk: its columns are the walk's, in its order
    return prev if shape is not None and len(shape) == 3 and shape[0] == o and _width(shape) == t.width else None


def _prepass(plan, section: str, producer: Kernel, k: dict) -> Kernel | None:
    """The kernel emitted just before δ's producer, where the producer is a pooling's gradient (a gather of
    g over the windows, channel by channel) and that kernel computes g and stores nothing else, which
    nothing else reads (lecture_convnet_pool: ∂L/∂f3 = δ4·W4 over the pooled columns).  Then this kernel
    computes g itself, per row tile, in a pass over its own filters' pooled columns before the walk over
    the convolution's positions, and stores it: the gather reads back, from L2, only what the same program
    stored (its channels, its rows), after a barrier; the launch goes."""
    prev = plan.last(section)
    head = plan.defining(producer.head(plan.ir.name))
    if prev is None or prev.tile is None or prev.guard:
        return None
    if not isinstance(head.expr, (N.MaxPool2dGrad, N.AvgPool2dGrad)):
        return None
    t = prev.tile
    if len(t.stored) != 1 or not (t.plain and t.chunked) or plan.resolve(head.expr.args[0].name) != t.stored[0]:
        return None
    pooled = plan.arrays[head.expr.args[1].name].shape  # the pooling's input: the convolution's channels
    if pooled[0] != k["o"] or t.width % k["o"] or plan.readers.get(t.stored[0], set()) - {head.name}:
        return None
    names = set(re.findall(r"\b_\w+", "\n".join((t.head, *t.loads, *t.lines))))
    if t.head or names & (_INLINE_LOCALS | {f"_acc{p}" for p in range(k["kh"])}):
        return None
    return prev


def _pre_dict(plan, pre: Kernel, o: int) -> dict:
    """The template's view of the pre-pass: its lines and its array's store over the pass's columns."""
    t, name = pre.tile, pre.tile.stored[0]
    w = t.width
    return {"lines": (*t.loads, *t.lines), "name": name, "width": w, "ohw": w // o,
            "formula": plan.defining(name).comment,
            "store": (f"tl.store({name}_ptr + _rows[:, None] * {w} + _cols_{w}[None, :], {name}, "
                      f"mask=_row_mask[:, None] & _cmask_{w}[None, :])")}


def _loaded(t: TiledBody, name: str) -> str | None:
    """``name`` where the producer's lines load its tile already (relu′ reads f1), else None."""
    return name if any(ln.startswith(f"{name} = tl.load(") for ln in t.loads) else None

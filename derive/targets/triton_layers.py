"""KernelIR -> the per-layer phase kernels of a Triton module (the planner's phases that were not fused).

Every per-sample array lives in global memory as a (batch, n) float32 buffer (a volume flattened in C
order), and each IR assignment becomes one small kernel, found by its node class in EMITTERS: a tile of
BLOCK_B batch rows by at most BLOCK_N output elements, or, for a parameter gradient, a block of the
gradient's elements that sums over the whole batch in a fixed order and is written once (no atomics).
Elementwise assignments that follow a kernel at the same index (f1 = relu(a1), δ1 = ∂L/∂f1·f1′) are
printed by the strict Triton printer into that kernel's epilogue, and an array is stored only when a
later kernel reads it.  Flatten, Unflatten and a bare rename are views; Pad is read through masks by
the windows that use it, and Crop is folded into the gather that computes the padded gradient.
Four merges save launches and passes over the per-sample arrays: a bias gradient is summed by the kernel of
the weight gradient that reads the same δ (_bias_of); the last forward kernel, where its tile holds whole
rows, computes ŷ, the loss and the leading backward lines that read only that row (_row_epilogue); a
convolution's δ that only its weight and bias gradients read is computed in their kernel from the lines of the
kernel that would have stored it (triton_conv_grad.delta_producer), so δ is never stored; and where a dense
layer a = W·f (+ b) of at most SPLIT_J outputs reads the f that the kernel emitted just before it holds in its
column tiles (a conv's f1 = relu(a1), a pooling's output; views such as flatten resolved), that kernel also
sums W·f over its tile's columns and stores the partial sums P[column block, b, j]; the dense layer's kernel
adds the blocks' partials in block order (deterministic, no atomics) instead of reading f's whole row
(_split_k). f is still stored where a later kernel (the backward) reads it.
The convolution's ∂W kernel with δ computed in it also takes in, where they fit: where δ's producer is a
pooling's gradient, the kernel before it that computes the gradient g the pooling routes (δ4·W4 over the
pooled columns), as a pass over the program's own filters' pooled columns per row tile
(triton_conv_grad._prepass); a dense ∂W over the columns the kernel walks, the convolution's output or the
pooled ones (triton_conv_grad._riding_outer); and, as the backward's first kernel, the training step's work
of the last dense layer's row-complete kernel (a3, the loss, δ3: triton_conv_grad._absorbed_rows).  In the
forward, a pooling whose windows tile the convolution's output exactly computes that convolution itself at
each window position, and stores f for the backward (_pooled_conv).  lecture_convnet's and
lecture_convnet_pool's training steps are then three launches each: the convolution (with its pooling), the
∂W kernel, the update.

Adding a layer kind: one entry in EMITTERS (its IR node class -> the function that emits its kernel).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import sympy as sp

from derive.errors import DerivationError
from derive.ir import nodes as N
from derive.ir.nodes import Assign, KernelIR
from derive.limits import pow2
from derive.tables.functions import step
from derive.targets.common import _env
from derive.targets.triton_conv_grad import WIDE_B, delta_producer, emit_window_weight_grad_inline
from derive.targets.triton_kernel import EpiloguePart, Kernel, TiledBody, _width
from derive.targets.triton_plan import TritonPlan, compile_specs, module_context, step_aliases
from derive.targets.triton_printer import TRITON_HELPERS, TritonCodePrinter

BLOCK_B = 32  # batch rows per program of a row-tiled kernel
BLOCK_N = 128  # output elements per program (a tile of at most BLOCK_B · BLOCK_N = 4096 floats)
WINDOW_N = 64  # the same for a window's kernel, whose gathers keep an address and a mask per element live
POOL_GRAD_N = 32  # the max-pooling gather holds four tiles (sum, maximum, argmax, value)
TILE = 4096  # the most elements one program's tile holds (32 per thread at 4 warps)
# On CPU tensors (the interpreter) a row-tiled kernel takes up to this many columns per program: the
# interpreter's cost is per program and operation, not per element, and registers do not exist there
WIDE_N = 8192
WIDE_K = 256  # the inputs per step of W·f there (on CUDA one, a rank-1 update per input)
NUM_WARPS = 4
NUM_STAGES = 1
BLOCK_G = 32  # gradient elements per program of a weight gradient
BLOCK_R = 64  # terms of its batch sum per step
WIDE_R = 2048  # the same on CPU tensors (the interpreter)
# an outer product's gradient block per program: at 16 x 128 the split kernel spilled 4 bytes at ptxas's own
# register target (40 registers); 16 x 64 compiles without (derive inspect, sm_90)
OUTER_J, OUTER_K = 16, 64
# a gradient kernel's batch sum is split over at most SPLITS programs per gradient block, each of at least
# SPLIT_ROWS rows, into rows of partial sums the update kernel adds in order: a gradient's few blocks alone
# would leave most of an H100's 132 SMs idle for the whole batch sum.  lecture_convnet's ∂W1 with δ
# computed in its kernel is one program per filter (6) and split: 64 splits make 384 programs, about three
# per SM, where 16 made 96 (a quarter of the SMs idle) and 32 would leave SMs with one program beside SMs
# with two
SPLITS = 64
SPLIT_ROWS = 8
WIDE_SPLIT_ROWS = WIDE_B  # on CPU tensors: the rows of a convolution's ∂W tile there (triton_conv_grad)
# a dense layer of at most this many outputs (pow2-padded) takes W·f as the partial sums its operand's kernel
# stores per column block (_split_k): J row reductions per tile there, J floats per block and row here
SPLIT_J = 16

_REDUCING = (N.Softmax, N.LogSumExp, N.RowSum, N.First)  # read a whole row of their operand
# the nodes a row-complete epilogue prints (the whole row is in its tile: the reductions too)
_ROW_NODES = (N.Col, N.OneHot, N.ZerosLike, N.Softmax, N.LogSumExp, N.RowSum)
# a row-complete epilogue's parts: constexpr flag -> (the value the host passes, what the part does)
FLAGS = {"OUT": ("out is not None", "write ŷ"), "LOSS": ("with_loss", "sum the loss"),
         "GRAD": ("with_grad", "the backward lines the row holds")}
# read their operands from memory (a column or row at a time; a concat's or slice's shifted columns)
_CONTRACTING = (N.MatVec, N.VecMat, N.Concat, N.Slice)


def _sym(name: str) -> sp.Symbol:
    return sp.Symbol(name, real=True)


class _RowPrinter(TritonCodePrinter):
    """The strict Triton printer over one kernel's tile: arrays are the variables the kernel loaded (or
    computed in registers), W·f and δ·W read their operands from memory for the tile's columns."""

    def __init__(self, plan: "_Plan", width: int):
        real = {a.name: _width(a.shape) for a in plan.arrays.values()}
        super().__init__({}, real, 16, "ieee")
        self.plan = plan
        self.width = width  # the output's, for the contractions' columns
        self.loaded: list[str] = []  # symbols read as tiles, in order of first use
        self.ptrs: list[str] = []  # arrays whose pointer the kernel takes
        self.flops = 0  # per batch row, of W·f and δ·W

    def _ptr(self, name: str) -> str:
        if name not in self.ptrs:
            self.ptrs.append(name)
        return f"{name}_ptr"

    def _print_Symbol(self, e):
        if e.name == "_scale":
            return "_scale"
        if e.name in self.plan.pads:
            raise DerivationError(f"triton target: {e.name} (a padded copy) is read only through the windows of a layer")
        if e.name not in self.loaded:
            self.loaded.append(e.name)
        return e.name

    def _print_MatVec(self, e):
        w, f = e.args
        k = self._operand(f, "W·f")
        split = self.plan.partials.get((w.name, self.plan.resolve(f.name)))
        if split is not None:
            self.helpers.add("_partials_sum")
            self.flops += split.blocks[0] * split.j  # one add per column block's partial
            self.ptrs += [x for x in (split.buffer, split.count) if x not in self.ptrs]
            return (f"_partials_sum({split.buffer}_ptr, {split.count}, {split.j}, _rows, _row_mask, "
                    f"_cols_{self.width}, _cmask_{self.width}, _B, BLOCK_B, {self.plan.block_n_of[self.width]})")
        self.helpers.add("_matvec_cols")
        n = self.width
        self.flops += 2 * k * n
        return (f"_matvec_cols({self._ptr(f.name)}, {k}, {self._ptr(w.name)}, _rows, _row_mask, _cols_{n}, "
                f"_cmask_{n}, BLOCK_B, {self.plan.block_n_of[n]}, KC)")

    def _print_VecMat(self, e):
        d, w = e.args
        i = self._operand(d, "δ·W")
        self.helpers.add("_vecmat_cols")
        n = _width(self.plan.arrays[w.name].shape[1:])
        self.flops += 2 * i * n
        return (f"_vecmat_cols({self._ptr(d.name)}, {i}, {self._ptr(w.name)}, {n}, _rows, _row_mask, _cols_{n}, "
                f"_cmask_{n}, BLOCK_B, {self.plan.block_n_of[n]})")

    def _print_FirstColumn(self, e):
        (w,) = e.args
        n = self.plan.arrays[w.name].shape[0]  # W is (n, 1): its first column is its flat storage
        return f"tl.load({self._ptr(w.name)} + _cols_{n}, mask=_cmask_{n}, other=0.0)"

    def _print_Concat(self, e):
        # each output column reads the one input whose block it is in (the others' loads are masked off)
        n, off, parts = self.width, 0, []
        for f in e.args:
            k = self._operand(f, "a joined input")
            inside = f"((_cols_{n} >= {off}) & (_cols_{n} < {off + k}))"
            parts.append(f"tl.load({self._ptr(f.name)} + _rows[:, None] * {k} + (_cols_{n} - {off})[None, :], "
                         f"mask=_row_mask[:, None] & {inside}[None, :], other=0.0)")
            off += k
        return "(" + " + ".join(parts) + ")"

    def _print_Slice(self, e):
        g, at, _ = e.args
        k, n = self._operand(g, "a concat's gradient"), self.width
        # ``at`` counts along axis 1 (features, or channels of h·w elements each, flattened in C order)
        off = int(at) * (_width(self.plan.arrays[g.name].shape[1:]) or 1)
        return (f"tl.load({self._ptr(g.name)} + _rows[:, None] * {k} + ({off} + _cols_{n})[None, :], "
                f"mask=_row_mask[:, None] & _cmask_{n}[None, :], other=0.0)")

    def _operand(self, f, what: str) -> int:
        if not isinstance(f, sp.Symbol) or f.name not in self.plan.arrays or not self.plan.arrays[f.name].batched:
            raise DerivationError(f"triton target: {what} needs a named per-sample operand, got {f}")
        return _width(self.plan.arrays[f.name].shape)


class _Plan:
    """The module's kernels, buffers and views, built assignment by assignment."""

    def __init__(self, ir: KernelIR):
        self.ir = ir
        self.arrays = ir.arrays()
        self.params = {p.name: p for p in ir.params}
        self.grad_param = {g: p for p, g in ir.grads}
        self.alias: dict[str, str] = {}
        self.pads: dict[str, tuple[str, int]] = {}  # x_pad -> (x, P)
        self.kernels: list[Kernel] = []
        self.stored: dict[str, str] = {}  # per-sample buffer -> the section that first writes it
        self.helpers: set[str] = set()
        self.imports: set[str] = set()  # the modules the kernels' printers named
        self.block_n_of: dict[int, int] = {}
        self.env = _env().get_template("triton_layer_kernels.jinja").module
        self.order: list[Assign] = [*ir.forward, ir.output, ir.loss, *ir.backward]
        self.folded = {a.expr.args[0].name for a in ir.backward if isinstance(a.expr, N.Crop)}
        self.merged: set[str] = set()  # assignments an earlier kernel computes too (no kernel of their own)
        self.loss_in_backward = False  # a backward kernel writes the loss per split (_absorbed_rows)
        self.partials: dict[tuple[str, str], SplitK] = {}  # (W, f) -> the partial sums of W·f (_split_k)
        self.partial_args: dict[str, tuple] = {}  # their buffer's and block count's kernel arguments, by name
        self.partial_buffers: dict[str, list] = {}  # section -> the partials' buffers its launches allocate
        self.partial_row_bytes: dict[str, int] = {}  # a buffer's host name -> its bytes per batch row on CUDA
        self._views()
        self.readers = self._readers()

    # ---- views and who reads what
    def _views(self):
        for a in self.order:
            e = a.expr
            if isinstance(e, sp.Symbol) and a.batched and a is not self.ir.output:
                self.alias[a.name] = e.name
            elif isinstance(e, (N.Flatten, N.Unflatten)):
                self.alias[a.name] = e.args[0].name
            elif isinstance(e, N.Pad):
                self.pads[a.name] = (e.args[0].name, int(e.args[1]))

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def source(self, name: str) -> tuple[str, int]:
        """The unpadded array a window reads, and its padding."""
        if name in self.pads:
            src, pad = self.pads[name]
            return self.resolve(src), pad
        return self.resolve(name), 0

    def _effective(self, a: Assign) -> sp.Expr | None:
        e = a.expr
        if a.name in self.alias or isinstance(e, N.Pad) or a.name in self.folded:
            return None
        if isinstance(e, N.Crop):
            return self.defining(e.args[0].name).expr
        return e

    def defining(self, name: str) -> Assign:
        return next(a for a in self.order if a.name == name)

    def last(self, section: str) -> Kernel | None:
        """The kernel just emitted, where it is in ``section``: the one a merge may take in."""
        prev = self.kernels[-1] if self.kernels else None
        return prev if prev is not None and prev.section == section else None

    def _readers(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for a in self.order:
            e = self._effective(a)
            if e is None:
                continue
            for s in e.free_symbols:
                name = self.source(s.name)[0] if s.name in self.arrays else s.name
                out.setdefault(name, set()).add(a.name)
        return out

    # ---- host side
    def host(self, name: str) -> str:
        name = self.resolve(name)
        if name == self.ir.input.name:
            return "_x"
        if name == self.ir.target.name:
            return "_y"
        if name in self.params:
            return f'_p["{name}"]'
        if name in self.grad_param:
            return f'_g["{self.grad_param[name]}"]'
        return f"_b_{name}"

    def arg(self, name: str, section: str) -> tuple:
        if name in self.partial_args:
            return self.partial_args[name]
        name = self.resolve(name)
        if name in self.grad_param:
            p = self.grad_param[name]
            return (f"{name}_ptr", "*fp32", self.host(name), f"∂L/∂{p}, {self.params[p].shape} float32: written once")
        if name in self.params:
            return (f"{name}_ptr", "*fp32", self.host(name), f"parameter {name}, {self.params[name].shape}")
        a = self.arrays[name]
        if name == self.ir.target.name and a.dtype == "int":
            return (f"{name}_ptr", "*i64", "_y", f"target {name}, (batch,) class indices")
        if name not in (self.ir.input.name, self.ir.target.name):
            self.stored.setdefault(name, section)
        dims = ", ".join(["batch", *map(str, a.shape)])
        return (f"{name}_ptr", "*fp32", self.host(name), f"{name}, ({dims}) float32")

    # ---- row-tiled kernels: a head, the fused elementwise lines, the stores
    def tiled(self, head: Assign, section: str, head_lines: str | None, head_args: list, rest: list[Assign],
              width: int, block_n: int, chunked: bool, extra: tuple = (), out_ptr: str | None = None,
              epilogue: tuple = (), wide_n: int = WIDE_N) -> Kernel:
        """A kernel over (BLOCK_B rows) × (block_n columns of ``width``): ``head_lines`` compute the head's tile
        (None: the head is elementwise and printed too), then ``rest`` are printed, then the stores.
        ``head_args`` are the head's own pointer parameters, (parameter, type, host expression, comment).
        ``epilogue``: (flag, assignments) of a whole-row tile, each part printed under ``if flag:``."""
        pr = _RowPrinter(self, width)
        extra, head_args, pr.flops = _split_k(self, head, rest, width, block_n if chunked else 0, section, extra,
                                              head_args, wide_n)
        self.block_n_of = {width: "BLOCK_N"} if chunked else {}
        in_regs: set[str] = set()
        body: list[str] = []
        todo = ([head] if head_lines is None else []) + list(rest)
        if head_lines is not None:
            in_regs.add(head.name)
        widths = {width} if width else set()
        printed = []
        for a in todo:
            expr = self.resolved(a.expr)
            if not chunked:
                for w in self._widths(expr):
                    widths.add(w)
                    self.block_n_of.setdefault(w, pow2(w))
            rhs = pr.doprint(expr)
            printed.append((a, rhs))
            in_regs.add(a.name)
        if not chunked and width:
            self.block_n_of.setdefault(width, pow2(width))
        loads = []
        for name in pr.loaded:
            if name in in_regs:
                continue
            loads.append(self._load(name, pr))
        for a, rhs in printed:
            body.append(f"{a.name} = {rhs}  # {a.comment}")
        outs = [head] + list(rest) if head_lines is not None else list(todo)
        here = {x.name for x in outs} | {a.name for _, part in epilogue for a in part}
        stores = []
        for a in outs:
            if out_ptr is not None:
                stores.append(self._store(a.name, out_ptr))
            elif self._needs_store(a.name, here):
                stores.append(self._store(a.name))
                pr._ptr(a.name)
        args = list(head_args)
        for n in pr.ptrs:
            t = self.arg(n, section)
            if t[0] not in {x[0] for x in args}:
                args.append(t)
        parts, kept = [], {}
        for flag, part in epilogue:
            lines, part_args, kept[flag] = self._epilogue_part(part, width, in_regs, here, section)
            parts.append({"flag": flag, "lines": lines})
            args += [t for t in part_args if t[0] not in {x[0] for x in args}]
        self.helpers |= pr.helpers
        self.imports |= pr.imports
        cols = []
        if chunked:
            if width:
                cols = [f"_cols_{width} = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)",
                        f"_cmask_{width} = _cols_{width} < {width}"]
        else:
            for w in sorted(widths):
                cols += [f"_cols_{w} = tl.arange(0, {pow2(w)})", f"_cmask_{w} = _cols_{w} < {w}"]
        cap = TILE // max([pow2(w) for w in widths] + [1]) if not chunked else BLOCK_B
        cap = 1 << (max(1, cap).bit_length() - 1)
        name = self.kernel_name(head.name)
        source = self.env.tiled_kernel({
            "name": name, "args": args, "comment": head.comment, "cols": cols, "head": (head_lines or "").rstrip("\n"),
            "loads": loads, "body": body, "stores": stores + list(extra), "block_n": chunked and bool(width),
            "kc": "_matvec_cols" in pr.helpers, "epilogue": parts, "flags": [(f, FLAGS[f][1]) for f, _ in epilogue],
        })
        tiles = _column_tiles(width, block_n, wide_n) if chunked and width else None
        grid = "(triton.cdiv(_batch, _rows_b)," + (f" triton.cdiv({width}, {_bn(tiles)}))" if tiles else ")")
        blk = "_blk" if cap >= BLOCK_B else f"min(_blk, {cap})"
        stored = tuple(a.name for a in outs if out_ptr is None and self._needs_store(a.name, here))
        reads = tuple(t for t in args if t[0] not in {f"{n}_ptr" for n in stored})
        tile = TiledBody((head_lines or "").rstrip("\n"), tuple(loads), tuple(body), reads, stored, width, chunked,
                         plain=not (epilogue or extra or "_matvec_cols" in pr.helpers), parts=kept)
        return Kernel(name, source, args, grid.replace("_rows_b", blk), section, blk,
                      "BLOCK_B" if cap >= BLOCK_B else f"min(BLOCK_B, {cap})", flops=pr.flops, block_n=tiles,
                      programs=-(-width // tiles[0]) if tiles else 1, tile_rows=min(BLOCK_B, cap),
                      constexprs={"KC": (1, WIDE_K)} if "_matvec_cols" in pr.helpers else {},
                      computes=tuple(a.name for a in outs if a is not head) + tuple(a.name for _, p in epilogue for a in p),
                      flags=tuple(f for f, _ in epilogue), tile=tile)

    def _epilogue_part(self, part: list[Assign], width: int, in_regs: set, here: set, section: str):
        """One part of a row-complete epilogue: its loads (what the head's tile does not hold: y, a
        parameter), its lines and its stores (ŷ to the output, the loss as this program's partial sum, the
        rest where a later kernel reads it), and the pointers it adds."""
        pr = _RowPrinter(self, width)
        printed = [(a, pr.doprint(self.resolved(a.expr))) for a in part]
        done = {a.name for a in part}
        lines = [self._load(n, pr) for n in pr.loaded if n not in in_regs and n not in done]
        lines += [f"{a.name} = {rhs}  # {a.comment}" for a, rhs in printed]
        compute, kept = tuple(lines), []
        args = []
        for a in part:
            if a is self.ir.output:
                dims = ", ".join(["batch", *map(str, a.shape)])
                args.append(("_OUT_ptr", "*fp32", "_out", f"ŷ, ({dims}) float32: written where OUT"))
                lines.append(self._store(a.name, "_OUT_ptr"))
            elif a is self.ir.loss:
                args.append(("_PART_ptr", "*fp32", "_part", "one partial sum of the batch loss per program"))
                lines.append(f"tl.store(_PART_ptr + tl.program_id(0), "
                             f"tl.sum(tl.where(_row_mask, {a.name}, 0.0), axis=0) * _scale)")
            elif self._needs_store(a.name, here):
                lines.append(self._store(a.name))
                kept.append((a.name, lines[-1]))
                pr._ptr(a.name)
        args += [self.arg(n, section) for n in pr.ptrs]
        self.helpers |= pr.helpers
        self.imports |= pr.imports
        return lines, args, EpiloguePart(compute, tuple(kept))

    def row_local(self, a: Assign, width: int, held: set[str]) -> bool:
        """Whether a line after the forward reads only the row a whole-row tile of ``width`` holds (``held``,
        by name), the target, ``_scale`` or a parameter of that width, and makes a row of that width or a
        scalar per row: then it may ride in that tile's epilogue (a softmax, a log-sum-exp or a row sum
        included, since the whole row is there)."""
        if not a.batched or a.name in self.pads or a.name in self.folded or _width(a.shape) not in (0, width):
            return False
        expr = self.resolved(a.expr)
        if any(isinstance(n, N.IRNode) and not isinstance(n, _ROW_NODES) for n in sp.preorder_traversal(expr)):
            return False
        if not self._widths(expr) <= {width}:
            return False
        for s in expr.free_symbols:
            if s.name == "_scale":
                continue
            arr = self.arrays.get(s.name)
            if arr is None or s.name in self.pads or _width(arr.shape) not in (0, width):
                return False
            if arr.batched and s.name != self.ir.target.name and s.name not in held:
                return False
        return True

    def kernel_name(self, what: str) -> str:
        return f"{self.ir.name}_{what}_kernel"

    def resolved(self, expr: sp.Expr) -> sp.Expr:
        subs = {s: _sym(self.resolve(s.name)) for s in expr.free_symbols if s.name in self.alias}
        return expr.xreplace(subs) if subs else expr

    def _widths(self, expr) -> set[int]:
        out = set()
        for node in sp.preorder_traversal(expr):
            if isinstance(node, (N.RowSum, N.OneHot)):
                out.add(int(node.args[1]))
        for s in _loaded_symbols(expr):
            if s.name in self.arrays:
                w = _width(self.arrays[s.name].shape)
                if w:
                    out.add(w)
        return out

    def _load(self, name: str, pr: _RowPrinter) -> str:
        a = self.arrays[name]
        w = _width(a.shape)
        if name not in pr.ptrs:
            pr.ptrs.append(name)
        ptr = f"{name}_ptr"
        if not a.batched:
            if not a.shape:
                return f"{name} = tl.load({ptr})"
            return f"{name} = tl.load({ptr} + _cols_{w}, mask=_cmask_{w}, other=0.0)"
        other = "0" if a.dtype == "int" else "0.0"
        if not w:
            return f"{name} = tl.load({ptr} + _rows, mask=_row_mask, other={other})"
        return (f"{name} = tl.load({ptr} + _rows[:, None] * {w} + _cols_{w}[None, :], "
                f"mask=_row_mask[:, None] & _cmask_{w}[None, :], other={other})")

    def _needs_store(self, name: str, here: set[str]) -> bool:
        if name in self.grad_param:
            return True
        return bool(self.readers.get(name, set()) - here)

    def _store(self, name: str, ptr: str | None = None) -> str:
        w = _width(self.arrays[name].shape)
        target = ptr or f"{name}_ptr"
        if not w:
            return f"tl.store({target} + _rows, {name}, mask=_row_mask)"
        return (f"tl.store({target} + _rows[:, None] * {w} + _cols_{w}[None, :], {name}, "
                f"mask=_row_mask[:, None] & _cmask_{w}[None, :])")

    # ---- the elementwise lines a kernel may take after its head
    def fusable(self, a: Assign, width: int) -> bool:
        if not a.batched or a.name in self.alias or a.name in self.folded or _width(a.shape) != width:
            return False
        e = a.expr
        if isinstance(e, (N.Pad, N.Crop)) or any(isinstance(n, N.IRNode) and not isinstance(n, (N.Col, N.OneHot, N.ZerosLike))
                                                 for n in sp.preorder_traversal(e)):
            return False
        for s in e.free_symbols:
            if s.name == "_scale":
                continue
            arr = self.arrays.get(self.resolve(s.name))
            if arr is None or s.name in self.pads:
                return False
            w = _width(arr.shape)
            if arr.batched and w not in (0, width):
                return False
            if not arr.batched and w not in (0, width):
                return False
        return True


def _loaded_symbols(expr) -> set:
    """The symbols an elementwise print loads as tiles: not those inside W·f, δ·W or a first column."""
    if isinstance(expr, sp.Symbol):
        return {expr}
    if isinstance(expr, (*_CONTRACTING, N.FirstColumn)):
        return set()
    out = set()
    for a in expr.args:
        out |= _loaded_symbols(a)
    return out


# ---------------------------------------------------------------------------------------------- emitters
# Each takes (plan, assignment, the assignments after it in its section, section) and returns how many of
# those it fused into its kernel's epilogue.


def _rest(plan: _Plan, after: list[Assign], width: int) -> list[Assign]:
    """The elementwise assignments right after a kernel's head that its epilogue computes too."""
    out = []
    for a in after:
        if a.name in plan.alias:  # a view: the name resolves to what it renames, nothing to compute
            out.append(a)
            continue
        if not plan.fusable(a, width):
            break
        out.append(a)
    while out and out[-1].name in plan.alias:
        out.pop()
    return out


def _compute(rest: list[Assign], plan: _Plan) -> list[Assign]:
    return [a for a in rest if a.name not in plan.alias]


@dataclass(frozen=True)
class SplitK:
    """The partial sums of a dense layer's W·f that f's kernel stores (_split_k): a (column blocks, batch, j)
    float32 buffer, passed as ``buffer``_ptr, and its number of column blocks, passed as ``count`` (``blocks``:
    that number on CUDA, on CPU, where the column tiles are wider)."""

    buffer: str
    count: str
    j: int
    blocks: tuple


def _column_tiles(width: int, block_n: int, wide_n: int) -> tuple:
    """A column-tiled kernel's columns per program: (on CUDA, on CPU tensors, where one wide tile holds up to
    wide_n)."""
    return block_n, min(pow2(width), wide_n)


def _split_k(plan: _Plan, head: Assign, rest: list[Assign], width: int, block_n: int, section: str, extra: tuple,
             head_args: list, wide_n: int) -> tuple:
    """The split-K merge (the module docstring) for the kernel of ``head`` and ``rest``, tiled over ``width``
    columns (``block_n`` per program on CUDA; 0: one tile holds whole rows, nothing to split): where the next
    assignment of its section is a dense layer a = W·f (+ b) of at most SPLIT_J outputs whose f this kernel
    holds and which reads f nowhere else, this kernel also stores Σ_{k in its columns} W[j, k]·f[b, k], and the
    dense layer's printer reads those sums instead of f (plan.partials).  -> (``extra`` and the store line,
    ``head_args`` and the weight's and the buffer's arguments, the FLOPs per row the store adds)."""
    seq = {"forward": plan.ir.forward, "backward": plan.ir.backward}.get(section)
    if not block_n or not width or seq is None:
        return tuple(extra), list(head_args), 0
    names = [a.name for a in seq]
    last = (list(rest) or [head])[-1].name
    nxt = next((a for a in seq[names.index(last) + 1:] if a.name not in plan.alias), None)
    if (nxt is None or not nxt.batched or nxt.name in plan.merged
            or (type(nxt.expr) in EMITTERS and not isinstance(nxt.expr, N.MatVec))):
        return tuple(extra), list(head_args), 0
    expr = plan.resolved(nxt.expr)
    mats = [n for n in sp.preorder_traversal(expr) if isinstance(n, N.MatVec)]
    if len(mats) != 1 or not all(isinstance(v, sp.Symbol) for v in mats[0].args):
        return tuple(extra), list(head_args), 0
    w, f = mats[0].args
    shape = plan.params[w.name].shape if w.name in plan.params else ()
    if (f.name not in {head.name, *(a.name for a in rest)} or len(shape) < 2 or _width(shape[1:]) != width
            or pow2(shape[0]) > SPLIT_J or f in expr.xreplace({mats[0]: sp.S.Zero}).free_symbols):
        return tuple(extra), list(head_args), 0
    j = shape[0]
    tiles = _column_tiles(width, block_n, wide_n)  # the kernel's, as tiled() launches it
    blocks = f"triton.cdiv({width}, {_bn(tiles)})"
    split = SplitK(f"{nxt.name}_part", f"{nxt.name}_blocks", j, tuple(-(-width // t) for t in tiles))
    plan.partials[(w.name, f.name)] = split
    buf = (f"{split.buffer}_ptr", "*fp32", f"_k_{nxt.name}",
           f"Σ_k {w.name}[j, k]·{f.name}[k] per column block, (blocks, batch, {j}) float32")
    plan.partial_args[split.buffer] = buf
    plan.partial_args[split.count] = (split.count, "i32", blocks, f"{f.name}'s column blocks: {split.buffer}'s first axis")
    plan.partial_buffers.setdefault(section, []).append({"host": buf[2], "shape": f"({blocks}, _batch, {j})"})
    plan.partial_row_bytes[buf[2]] = 4 * split.blocks[0] * j  # written here, read by the dense layer's kernel
    plan.readers[f.name].discard(nxt.name)  # f is stored only where another kernel reads it
    plan.helpers.add("_partials_store")
    weight = plan.arg(w.name, section)
    line = (f"_partials_store({f.name}, {weight[0]}, {width}, {j}, {pow2(j)}, _cols_{width}, _cmask_{width}, "
            f"{buf[0]}, tl.program_id(1), _rows, _row_mask, _B, BLOCK_B)")
    args = [*head_args, *(t for t in (weight, buf) if t[0] not in {x[0] for x in head_args})]
    return (*extra, line), args, 2 * j * width


def _emit_rowwise(plan: _Plan, a: Assign, after: list[Assign], section: str) -> int:
    if not a.batched:
        return _emit_param_elementwise(plan, a, after, section)
    width = _width(a.shape)
    expr = plan.resolved(a.expr)
    reduces = any(isinstance(n, _REDUCING) for n in sp.preorder_traversal(expr))
    loaded = {w for w in plan._widths(expr)}
    chunked = bool(width) and not reduces and loaded <= {width}
    block_n = min(pow2(width), BLOCK_N) if chunked else pow2(width)
    rest = _rest(plan, after, width)
    epilogue = ()
    if section == "forward" and pow2(width) <= BLOCK_N and all(x.name in plan.alias for x in after[len(rest):]):
        epilogue = _row_epilogue(plan, {a.name, *(x.name for x in _compute(rest, plan))}, width)
        chunked = chunked and not epilogue  # the epilogue's tile is the whole row, one program per row block
    plan.kernels.append(plan.tiled(a, section, None, [], _compute(rest, plan), width, block_n, chunked,
                                   epilogue=epilogue))
    return len(rest)


def _row_epilogue(plan: _Plan, held: set[str], width: int) -> tuple:
    """The lines after the forward that the last forward kernel's tile can compute: it holds whole rows (a
    dense layer of at most BLOCK_N outputs, one column block), so ŷ, the loss per sample and the leading
    backward lines that read only that row and the target (∂L/∂f = softmax − onehot for cross-entropy) ride
    in its epilogue instead of launching their own kernels over rows it already holds.  Each part runs
    under a constexpr flag (FLAGS), since forward() wants ŷ alone and a training step the loss and the
    gradients.  A part reads no line of another part (each may be switched off)."""
    ir = plan.ir
    parts = []
    for flag, assigns in (("OUT", [ir.output]), ("LOSS", [ir.loss]), ("GRAD", list(ir.backward))):
        took: list[Assign] = []
        for b in assigns:
            if b.name in plan.alias:
                continue
            if not plan.row_local(b, width, held | {t.name for t in took}):
                break
            took.append(b)
        if took:
            parts.append((flag, took))
            plan.merged.update(b.name for b in took)
    return tuple(parts)


def _emit_param_elementwise(plan: _Plan, a: Assign, after, section) -> int:
    if not isinstance(a.expr, N.ZerosLike):
        raise DerivationError(f"triton target: no kernel for the parameter-shaped {a.name} = {a.expr}")
    n = _width(a.shape) or 1
    name = plan.kernel_name(a.name)
    arg = plan.arg(a.name, section)
    source = plan.env.fill_zero({"name": name, "arg": arg, "n": n, "comment": a.comment})
    grid, programs = _split_grid((n, 1024))
    plan.kernels.append(Kernel(name, source, [arg], grid, section, None, None, split=True, programs=programs))
    return 0


def _window_geometry(plan: _Plan, a: Assign, x_name: str, w_name: str, stride: int, kh: int, kw: int) -> dict:
    src, pad = plan.source(x_name)
    c, h, w = plan.arrays[plan.pads[x_name][0] if x_name in plan.pads else x_name].shape  # a view keeps the data, not the shape
    return {"c": c, "h": h, "w": w, "hw": h * w, "n_in": c * h * w, "kh": kh, "kw": kw, "kk": kh * kw,
            "ckk": c * kh * kw, "s": stride, "pad": pad, "src": src, "weight": w_name}


def _emit_window_forward(plan: _Plan, a: Assign, after, section) -> int:
    x, wt, b, s, kh, kw, _ = a.expr.args
    g = _window_geometry(plan, a, x.name, wt.name, int(s), int(kh), int(kw))
    o, oh, ow = a.shape
    n = o * oh * ow
    shared = isinstance(a.expr, N.ConvForward)
    block_n = min(pow2(n), WINDOW_N)
    k = {**g, "o": o, "oh": oh, "ow": ow, "ohw": oh * ow, "out": a.name, "cols": f"_cols_{n}", "cmask": f"_cmask_{n}",
         "bn": "BLOCK_N", "bias": b != 0,
         "w_index": (f"_o * {g['ckk']} + _c * {g['kk']} + _p * {g['kw']} + _q" if shared
                     else f"_cols_{n} * {g['ckk']} + _c * {g['kk']} + _p * {g['kw']} + _q"),
         "b_index": "_o" if shared else f"_cols_{n}"}
    k["uses_o"] = shared  # the output channel indexes W and b only where the kernel is shared (conv2d)
    head = plan.env.window_forward(k)
    rest = _rest(plan, after, n)
    args = [_named(plan, g["src"], "X_ptr", section), _named(plan, wt.name, "W_ptr", section)]
    if b != 0:
        args.append(_named(plan, b.name, "BIAS_ptr", section))
    plan.kernels.append(plan.tiled(a, section, head, args, _compute(rest, plan), n, block_n, True))
    plan.kernels[-1].flops += 2 * n * g["ckk"]  # the window's (tiled counted the partials it stores, if any)
    plan.kernels[-1].window = k
    return len(rest)


def _named(plan: _Plan, name: str, param: str, section: str) -> tuple:
    _, typ, host, comment = plan.arg(name, section)
    return (param, typ, host, comment)


def _emit_window_input_grad(plan: _Plan, a: Assign, after, section) -> int:
    if a.name in plan.folded:
        return 0  # the Crop below it computes ∂L/∂input in unpadded coordinates
    return _input_grad(plan, a, a.expr, 0, after, section)


def _emit_crop(plan: _Plan, a: Assign, after, section) -> int:
    g, pad = a.expr.args
    inner = plan.defining(g.name).expr
    if not isinstance(inner, (N.ConvInputGrad, N.LocalInputGrad)):
        raise DerivationError(f"triton target: {a.name} crops {g.name}, which is not a window's input gradient")
    return _input_grad(plan, a, inner, int(pad), after, section)


def _input_grad(plan: _Plan, a: Assign, e, pad: int, after, section) -> int:
    d, wt, s, _, _, _ = e.args
    o, oh, ow = plan.arrays[d.name].shape
    c, h, w = a.shape
    n = c * h * w
    wshape = plan.params[wt.name].shape
    kh, kw = wshape[-2:]
    ckk, kk = c * kh * kw, kh * kw
    shared = isinstance(e, N.ConvInputGrad)
    block_n = min(pow2(n), WINDOW_N)
    w_index = (f"_o * {ckk} + _c * {kk} + _p * {kw} + _q" if shared
               else f"(_o * {oh * ow} + _i * {ow} + _j) * {ckk} + _c * {kk} + _p * {kw} + _q")
    k = {"c": c, "h": h, "w": w, "hw": h * w, "o": o, "oh": oh, "ow": ow, "ohw": oh * ow, "n_out": o * oh * ow,
         "kh": kh, "kw": kw, "s": int(s), "pad": pad, "out": a.name, "cols": f"_cols_{n}", "cmask": f"_cmask_{n}",
         "bn": "BLOCK_N", "w_index": w_index}
    head = plan.env.window_input_grad(k)
    rest = _rest(plan, after, n)
    args = [_named(plan, d.name, "D_ptr", section), _named(plan, wt.name, "W_ptr", section)]
    plan.kernels.append(plan.tiled(a, section, head, args, _compute(rest, plan), n, block_n, True))
    plan.kernels[-1].flops = 2 * o * oh * ow * ckk
    return len(rest)


def _pool_geometry(plan: _Plan, f_name: str, kh, kw, sh, sw, pad) -> dict:
    src = plan.resolve(f_name)
    c, h, w = plan.arrays[f_name].shape
    kh, kw, sh, sw, pad = (int(v) for v in (kh, kw, sh, sw, pad))
    oh, ow = (h + 2 * pad - kh) // sh + 1, (w + 2 * pad - kw) // sw + 1
    return {"src": src, "c": c, "h": h, "w": w, "hw": h * w, "n_in": c * h * w, "kh": kh, "kw": kw, "sh": sh, "sw": sw,
            "pad": pad, "oh": oh, "ow": ow, "ohw": oh * ow, "n_out": c * oh * ow, "inv": repr(1.0 / (kh * kw))}


def _emit_pool(plan: _Plan, a: Assign, after, section) -> int:
    f, kh, kw, sh, sw, pad, _ = a.expr.args
    k = _pool_geometry(plan, f.name, kh, kw, sh, sw, pad)
    n = k["n_out"]
    block_n = min(pow2(n), WINDOW_N)
    k.update(out=a.name, cols=f"_cols_{n}", cmask=f"_cmask_{n}", bn="BLOCK_N", max=isinstance(a.expr, N.MaxPool2d))
    rest = _rest(plan, after, n)
    conv = _pooled_conv(plan, k, section)
    wide_n = WIDE_N
    if conv is None:
        head, args = plan.env.pool_forward(k), [_named(plan, k["src"], "X_ptr", section)]
    else:
        plan.kernels.pop()
        head, args = _conv_pool_head(plan, k, conv, section)
        kk = k["kh"] * k["kw"]
        block_n, wide_n = max(1, min(block_n, WINDOW_N // kk)), WIDE_N // kk  # the convolution's tile as before
    plan.kernels.append(plan.tiled(a, section, head, args, _compute(rest, plan), n, block_n, True, wide_n=wide_n))
    if conv is not None:
        kern = plan.kernels[-1]
        kern.flops += conv.flops  # every position of the convolution's output, once
        kern.computes = (conv.head(plan.ir.name), *conv.computes, *kern.computes)
    return len(rest)


def _pooled_conv(plan: _Plan, k: dict, section: str) -> Kernel | None:
    """The kernel just emitted, where it is the convolution (and its elementwise lines) whose output this
    pooling reads, and the windows tile that output exactly (stride = window, no padding, no remainder):
    then the pooling's kernel computes each window position's convolution itself and stores what that
    kernel stored, and the pooled output never waits for a second launch to read f back (lecture_convnet_pool:
    f1, 308 MB at 2^14, read once fewer, and one launch fewer)."""
    prev = plan.last(section)
    if prev is None or prev.tile is None or not prev.tile.plain:
        return None
    if prev.window is None or k["src"] not in prev.tile.stored or pow2(k["kh"] * k["kw"]) != k["kh"] * k["kw"]:
        return None  # the windows' positions are a tile axis: a power of two (2 × 2, 1 × 2, 4 × 4)
    exact = (k["sh"], k["sw"]) == (k["kh"], k["kw"]) and not k["pad"] and not k["h"] % k["kh"] and not k["w"] % k["kw"]
    return prev if exact and prev.tile.width == k["n_in"] else None


def _conv_pool_head(plan: _Plan, k: dict, conv: Kernel, section: str) -> tuple[str, list]:
    """The head of a pooling over a convolution (_pooled_conv): the convolution's tile over the windows'
    positions, window by window (BLOCK_N windows of kh·kw columns), its elementwise lines and stores, then each
    window's maximum or mean."""
    t, w, kk = conv.tile, conv.tile.width, k["kh"] * k["kw"]
    bn = f"BLOCK_N * {kk}"
    body = plan.env.window_forward({**conv.window, "bn": bn}).splitlines()
    body += [" " * 4 + ln for ln in (*t.loads, *t.lines)]
    body += [" " * 4 + plan._store(name) for name in t.stored]
    kx = {**k, "conv_formula": plan.defining(conv.head(plan.ir.name)).comment, "stored": t.stored,
          "conv_cols": f"_cols_{w}", "conv_cmask": f"_cmask_{w}", "conv_bn": bn, "kk": kk, "body": body,
          "f": k["src"], "formula": plan.defining(k["out"]).comment}
    args = list(t.args) + [(f"{name}_ptr", *plan.arg(name, section)[1:]) for name in t.stored]
    return plan.env.conv_pool_forward(kx), args


def _emit_pool_grad(plan: _Plan, a: Assign, after, section) -> int:
    g, f, kh, kw, sh, sw, pad, _ = a.expr.args
    k = _pool_geometry(plan, f.name, kh, kw, sh, sw, pad)
    n = k["n_in"]
    is_max = isinstance(a.expr, N.MaxPool2dGrad)
    block_n = min(pow2(n), POOL_GRAD_N if is_max else WINDOW_N)
    k.update(out=a.name, cols=f"_cols_{n}", cmask=f"_cmask_{n}", bn="BLOCK_N", max=is_max)
    rest = _rest(plan, after, n)
    args = [_named(plan, g.name, "G_ptr", section)] + ([_named(plan, k["src"], "X_ptr", section)] if is_max else [])
    plan.kernels.append(plan.tiled(a, section, plan.env.pool_grad(k), args, _compute(rest, plan), n, block_n, True))
    return len(rest)


def _grad_args(plan: _Plan, a: Assign, inputs: list[tuple[str, str]], section: str) -> list:
    out = [_named(plan, name, param, section) for name, param in inputs]
    _, typ, host, comment = plan.arg(a.name, section)
    return out + [("G_ptr", typ, host, comment)]


def _split_grid(*blocks: tuple[int, int | tuple]) -> tuple[str, int]:
    """A gradient kernel's grid over (elements, per program) blocks and the batch's splits: (the launch's grid
    expression, its programs on CUDA without the split axis).  A block may be (on CUDA, on CPU tensors)."""
    dims = ", ".join(f"triton.cdiv({n}, {_bn(b) if isinstance(b, tuple) else b})" for n, b in blocks)
    return f"({dims}, _splits)", math.prod(-(-n // (b[0] if isinstance(b, tuple) else b)) for n, b in blocks)


def _bias_of(plan: _Plan, d: sp.Symbol, after, kinds: tuple, shape: tuple) -> Assign | None:
    """The bias gradient, later in the section, that sums the same δ a weight gradient reads (ConvBiasGrad(δ),
    or BatchSum(δ) of a bare δ), so that the weight gradient's kernel sums it too: one pass over δ, one
    launch fewer.  The IR is single-assignment, so δ is the same array wherever the bias reads it."""
    src = plan.resolve(d.name)
    for b in after:
        if (isinstance(b.expr, kinds) and b.name in plan.grad_param and isinstance(b.expr.args[0], sp.Symbol)
                and plan.resolve(b.expr.args[0].name) == src and tuple(b.shape) == tuple(shape)):
            plan.merged.add(b.name)
            return b
    return None


def _emit_window_weight_grad(plan: _Plan, a: Assign, after, section) -> int:
    d, x, s, kh, kw, _ = a.expr.args
    p = plan.grad_param[a.name]
    g = _window_geometry(plan, a, x.name, p, int(s), int(kh), int(kw))
    o, oh, ow = plan.arrays[d.name].shape
    shared = isinstance(a.expr, N.ConvWeightGrad)
    n_grad = math.prod(plan.params[p].shape)
    bias = (_bias_of(plan, d, after, (N.ConvBiasGrad,), (o,)) if shared
            else _bias_of(plan, d, after, (N.BatchSum,), (o, oh, ow)))
    n_bias = _width(bias.shape) if bias else 0
    k = {**g, "name": plan.kernel_name(a.name), "layer": int(a.expr.args[-1]), "source": g["src"], "o": o, "oh": oh,
         "ow": ow, "ohw": oh * ow, "n_out": o * oh * ow, "shared": shared, "n_grad": n_grad,
         "per_row": oh * ow if shared else 1, "w_shape": plan.params[p].shape, "formula": a.comment,
         "bias": plan.grad_param[bias.name] if bias else None, "n_bias": n_bias,
         "b_shape": plan.params[plan.grad_param[bias.name]].shape if bias else None,
         "bias_formula": bias.comment if bias else None}
    producer = delta_producer(plan, a, d, bias, section, k) if shared else None
    if producer is not None:
        return emit_window_weight_grad_inline(plan, a, producer, bias, section, k)
    args = _grad_args(plan, a, [(d.name, "D_ptr"), (g["src"], "X_ptr")], section)
    if bias:
        args.append(_named(plan, bias.name, "GB_ptr", section))
    grid, programs = _split_grid((n_grad + n_bias, BLOCK_G))
    plan.kernels.append(Kernel(k["name"], plan.env.window_weight_grad(k), args, grid, section, None, None,
                               {"BLOCK_G": BLOCK_G, "BLOCK_R": (BLOCK_R, WIDE_R)}, flops=2 * o * oh * ow * g["ckk"],
                               computes=(bias.name,) if bias else (), split=True, programs=programs))
    return 0


def _emit_conv_bias_grad(plan: _Plan, a: Assign, after, section) -> int:
    d = a.expr.args[0]
    p = plan.grad_param[a.name]
    o, oh, ow = plan.arrays[d.name].shape
    k = {"name": plan.kernel_name(a.name), "layer": int(a.expr.args[-1]), "bias": p, "o": o, "oh": oh, "ow": ow,
         "ohw": oh * ow, "n_out": o * oh * ow, "formula": a.comment}
    args = _grad_args(plan, a, [(d.name, "D_ptr")], section)
    bg = min(BLOCK_G, pow2(o))
    grid, programs = _split_grid((o, bg))
    plan.kernels.append(Kernel(k["name"], plan.env.conv_bias_grad(k), args, grid, section, None, None,
                               {"BLOCK_G": bg, "BLOCK_R": (BLOCK_R, WIDE_R)}, split=True, programs=programs))
    return 0


def _emit_outer(plan: _Plan, a: Assign, after, section) -> int:
    d, f = a.expr.args
    for v in (d, f):
        if not isinstance(v, sp.Symbol):
            raise DerivationError(f"triton target: the outer product {a.name} needs named operands, got {v}")
    p = plan.grad_param[a.name]
    j, kk = plan.params[p].shape
    bias = _bias_of(plan, d, after, (N.BatchSum,), (j,))
    cols = kk + (1 if bias else 0)  # the bias is the column of a constant input 1
    k = {"name": plan.kernel_name(a.name), "d": plan.resolve(d.name), "f": plan.resolve(f.name), "weight": p,
         "j": j, "k": kk, "formula": a.comment, "bias": plan.grad_param[bias.name] if bias else None,
         "bias_formula": bias.comment if bias else None}
    bj, bk = min(pow2(j), OUTER_J), min(pow2(cols), OUTER_K)
    args = _grad_args(plan, a, [(d.name, "D_ptr"), (f.name, "F_ptr")], section)
    if bias:
        args.append(_named(plan, bias.name, "GB_ptr", section))
    bk = (bk, min(pow2(cols), WIDE_N))  # on CPU tensors one wide block: the interpreter pays per program
    grid, programs = _split_grid((j, bj), (cols, bk))
    plan.kernels.append(Kernel(k["name"], plan.env.outer(k), args, grid, section, None, None,
                               {"BLOCK_J": bj, "BLOCK_K": bk}, flops=2 * j * kk,
                               computes=(bias.name,) if bias else (), split=True, programs=programs,
                               outer={"k": k, "args": args, "head": a.name}))
    return 0


def _emit_batch_sum(plan: _Plan, a: Assign, after, section) -> int:
    (e,) = a.expr.args
    e = plan.resolved(e)
    width = _width(a.shape)
    reduces = any(isinstance(n, _REDUCING) for n in sp.preorder_traversal(e))
    chunked = bool(width) and not reduces and plan._widths(e) <= {width}
    block_n = min(pow2(width), BLOCK_N) if chunked else pow2(width)
    pr = _RowPrinter(plan, width)
    plan.block_n_of = {width: block_n} if chunked else {w: pow2(w) for w in plan._widths(e) | ({width} - {0})}
    rhs = pr.doprint(e)
    loads = [plan._load(n, pr) for n in pr.loaded]
    widths = set(plan.block_n_of)
    cols = ([f"_cols_{width} = tl.program_id(0) * {block_n} + tl.arange(0, {block_n})",
             f"_cmask_{width} = _cols_{width} < {width}"] if chunked and width else
            [ln for w in sorted(widths) for ln in (f"_cols_{w} = tl.arange(0, {pow2(w)})", f"_cmask_{w} = _cols_{w} < {w}")])
    cap = BLOCK_B if chunked else 1 << (max(1, TILE // max([pow2(w) for w in widths] + [1])).bit_length() - 1)
    plan.helpers |= pr.helpers
    plan.imports |= pr.imports
    _, typ, host, comment = plan.arg(a.name, section)
    args = [plan.arg(n, section) for n in pr.ptrs]
    args.append(("G_ptr", typ, host, comment))
    if width:
        mask, store = (f"_row_mask[:, None] & _cmask_{width}[None, :]",
                       f"tl.store(G_ptr + _s * _ROW + _cols_{width}, tl.sum(_acc, axis=0), mask=_cmask_{width})")
        shape = f"(BLOCK_B, {block_n})"
    else:
        mask, store, shape = "_row_mask", "tl.store(G_ptr + _s * _ROW, tl.sum(_acc, axis=0))", "(BLOCK_B,)"
    name = plan.kernel_name(a.name)
    source = plan.env.batch_sum({"name": name, "args": args, "comment": a.comment, "cols": cols, "loads": loads,
                                 "rhs": rhs, "mask": mask, "store": store, "shape": shape,
                                 "scale": "_scale" in {s.name for s in e.free_symbols}})
    grid, programs = _split_grid((width, block_n)) if chunked and width else ("(1, _splits)", 1)
    blk = "_blk" if cap >= BLOCK_B else f"min(_blk, {cap})"
    plan.kernels.append(Kernel(name, source, args, grid, section, blk,
                               "BLOCK_B" if cap >= BLOCK_B else f"min(BLOCK_B, {cap})", split=True,
                               programs=programs))
    return 0


def _emit_nothing(plan: _Plan, a: Assign, after, section) -> int:
    return 0  # a view (Flatten, Unflatten, a rename) or a padded copy the windows read through masks


# The Triton target's per-layer table: an IR node class -> the function that emits its kernel.  An assignment
# whose expression is none of these is elementwise (with at most a W·f or δ·W in it) and printed by the
# strict Triton printer; anything it cannot print is a DerivationError naming it.
EMITTERS = {
    N.ConvForward: _emit_window_forward,
    N.LocalForward: _emit_window_forward,
    N.ConvWeightGrad: _emit_window_weight_grad,
    N.LocalWeightGrad: _emit_window_weight_grad,
    N.ConvBiasGrad: _emit_conv_bias_grad,
    N.ConvInputGrad: _emit_window_input_grad,
    N.LocalInputGrad: _emit_window_input_grad,
    N.MaxPool2d: _emit_pool,
    N.AvgPool2d: _emit_pool,
    N.MaxPool2dGrad: _emit_pool_grad,
    N.AvgPool2dGrad: _emit_pool_grad,
    N.Outer: _emit_outer,
    N.BatchSum: _emit_batch_sum,
    N.MatVec: _emit_rowwise,
    N.VecMat: _emit_rowwise,
    N.Flatten: _emit_nothing,
    N.Unflatten: _emit_nothing,
    N.Pad: _emit_nothing,
    N.Crop: _emit_crop,
}


HELPERS = {
    "_matvec_cols": '''@triton.jit
def _matvec_cols(F_ptr, K: tl.constexpr, W_ptr, _rows, _row_mask, _cols, _cmask, BLOCK_B: tl.constexpr,
                 BN: tl.constexpr, KC: tl.constexpr):
    # a[b, j] = Σ_k W[j, k]·f[b, k] for the tile's rows and columns j
    _acc = tl.zeros((BLOCK_B, BN), dtype=tl.float32)
    if KC == 1:
        # one rank-1 update per k: f and W are read a column at a time (from L1/L2), so only the
        # (BLOCK_B, BN) sum lives in registers
        for _k in range(K):
            _f = tl.load(F_ptr + _rows * K + _k, mask=_row_mask, other=0.0)
            _w = tl.load(W_ptr + _cols * K + _k, mask=_cmask, other=0.0)
            _acc += _f[:, None] * _w[None, :]
    else:
        # CPU tensors (the interpreter, which pays per operation): KC inputs per step, one broadcast product
        for _k0 in range(0, K, KC):
            _kk = _k0 + tl.arange(0, KC)
            _f = tl.load(F_ptr + _rows[:, None] * K + _kk[None, :], mask=_row_mask[:, None] & (_kk < K)[None, :],
                         other=0.0)
            _w = tl.load(W_ptr + _cols[:, None] * K + _kk[None, :], mask=_cmask[:, None] & (_kk < K)[None, :],
                         other=0.0)
            _acc += tl.sum(_f[:, None, :] * _w[None, :, :], axis=2)
    return _acc''',
    "_partials_store": '''@triton.jit
def _partials_store(F, W_ptr, K: tl.constexpr, J: tl.constexpr, JP: tl.constexpr, _cols, _cmask, P_ptr, _blk,
                    _rows, _row_mask, _B, BLOCK_B: tl.constexpr):
    # P[blk, b, j] = Σ_k W[j, k]·f[b, k] over this tile's columns k: one row reduction per j of the tile
    # already in registers (a loop, so only the (BLOCK_B, JP) sums are added to them)
    _jj = tl.arange(0, JP)
    _acc = tl.zeros((BLOCK_B, JP), dtype=tl.float32)
    # a max-pooling tile is -inf outside the batch's rows and f's columns: zero there, not -inf · 0 = nan
    F = tl.where(_row_mask[:, None] & _cmask[None, :], F, 0.0)
    for _j in range(J):
        _w = tl.load(W_ptr + _j * K + _cols, mask=_cmask, other=0.0)
        _s = tl.sum(F * _w[None, :], axis=1)
        _acc += tl.where(_jj[None, :] == _j, _s[:, None], 0.0)
    tl.store(P_ptr + (_blk * _B + _rows[:, None]) * J + _jj[None, :], _acc,
             mask=_row_mask[:, None] & (_jj < J)[None, :])''',
    "_partials_sum": '''@triton.jit
def _partials_sum(P_ptr, NB, J: tl.constexpr, _rows, _row_mask, _cols, _cmask, _B, BLOCK_B: tl.constexpr,
                  BN: tl.constexpr):
    # a[b, j] = Σ_blk P[blk, b, j]: W·f from the partial sums f's kernel stored, added in block order
    _acc = tl.zeros((BLOCK_B, BN), dtype=tl.float32)
    for _blk in range(NB):
        _acc += tl.load(P_ptr + (_blk * _B + _rows[:, None]) * J + _cols[None, :],
                        mask=_row_mask[:, None] & _cmask[None, :], other=0.0)
    return _acc''',
    "_vecmat_cols": '''@triton.jit
def _vecmat_cols(D_ptr, I: tl.constexpr, W_ptr, J: tl.constexpr, _rows, _row_mask, _cols, _cmask,
                 BLOCK_B: tl.constexpr, BN: tl.constexpr):
    # g[b, j] = Σ_i d[b, i]·W[i, j] for the tile's rows and columns j, one rank-1 update per i
    _acc = tl.zeros((BLOCK_B, BN), dtype=tl.float32)
    for _i in range(I):
        _d = tl.load(D_ptr + _rows * I + _i, mask=_row_mask, other=0.0)
        _w = tl.load(W_ptr + _i * J + _cols, mask=_cmask, other=0.0)
        _acc += _d[:, None] * _w[None, :]
    return _acc''',
}


def _emit_out(plan: _Plan, a: Assign) -> None:
    width = _width(a.shape)
    expr = plan.resolved(a.expr)
    reduces = any(isinstance(n, _REDUCING) for n in sp.preorder_traversal(expr))
    chunked = bool(width) and not reduces
    block_n = min(pow2(width), BLOCK_N) if chunked else pow2(width)
    dims = ", ".join(["batch", *map(str, a.shape)])
    out = ("_OUT_ptr", "*fp32", "out", f"ŷ, ({dims}) float32")
    plan.kernels.append(plan.tiled(a, "out", None, [out], [], width, block_n, chunked, out_ptr="_OUT_ptr"))


def _emit_loss(plan: _Plan, a: Assign) -> None:
    part = ("_PART_ptr", "*fp32", "_part", "one partial sum of the batch loss per program")
    total = ("tl.store(_PART_ptr + tl.program_id(0), "
             "tl.sum(tl.where(_row_mask, loss_per_sample, 0.0), axis=0) * _scale)")
    plan.kernels.append(plan.tiled(a, "loss", None, [part], [], 0, 1, False, extra=(total,)))


SECTIONS = ("forward", "out", "loss", "backward")


def _emit_all(plan: _Plan) -> None:
    ir = plan.ir
    for section, assigns in (("forward", list(ir.forward)), ("backward", list(ir.backward))):
        i = 0
        while i < len(assigns):
            a = assigns[i]
            if a.name in plan.alias or a.name in plan.merged:
                i += 1
                continue
            emit = EMITTERS.get(type(a.expr))
            if emit is None:
                heads = [n for n in sp.preorder_traversal(a.expr) if type(n) in EMITTERS and type(n) not in _CONTRACTING]
                if heads:
                    raise DerivationError(f"triton target: {type(heads[0]).__name__} inside {a.name} = {a.expr}: "
                                          "a layer's node must be a whole assignment")
                if any(isinstance(n, N.IRNode) and type(n).__name__ not in _PRINTABLE for n in sp.preorder_traversal(a.expr)):
                    bad = next(n for n in sp.preorder_traversal(a.expr)
                               if isinstance(n, N.IRNode) and type(n).__name__ not in _PRINTABLE)
                    raise DerivationError(f"triton target: no emitter for {type(bad).__name__} (in {a.name})")
                emit = _emit_rowwise
            i += 1 + emit(plan, a, assigns[i + 1:], section)
        if section == "forward":
            if ir.output.name not in plan.merged:
                _emit_out(plan, ir.output)
            if ir.loss.name not in plan.merged:
                _emit_loss(plan, ir.loss)


# IR nodes the strict printer spells inside an elementwise line (the rest need an emitter)
_PRINTABLE = {"MatVec", "VecMat", "Concat", "Slice", "RowSum", "Col", "First", "FirstColumn", "ZerosLike", "OneHot", "Softmax", "LogSumExp"}


def _bn(tiles: tuple) -> str:
    gpu, cpu = tiles
    return str(gpu) if gpu == cpu else f"({cpu} if _wide else {gpu})"


def _launch(k: Kernel) -> dict:
    hosts = [a[2] for a in k.args]
    scalars = ["_batch", "_scale"] if k.block_b else (["_batch"] if k.constexprs or k.split else [])
    scalars += ["_R", "N_PARAMS + 1"] if k.split else []
    cx = ([f"BLOCK_B={k.block_b}"] if k.block_b else []) + ([f"BLOCK_N={_bn(k.block_n)}"] if k.block_n else [])
    cx += [f"{n}={_bn(v) if isinstance(v, tuple) else v}" for n, v in k.constexprs.items()]
    cx += [f"{f}={k.flag_exprs.get(f, FLAGS[f][0])}" for f in k.flags]
    return {"name": k.name, "grid": k.grid, "args": ", ".join(hosts + scalars + cx), "section": k.section,
            "loss": k.section == "loss", "block_b": k.block_b, "guard": k.guard}


def _spec(k: Kernel) -> tuple[str, dict, list[dict]]:
    """The kernel's COMPILE_SPECS input: (name, signature, its one launch configuration's constexprs)."""
    sig = {a[0]: a[1] for a in k.args}
    if k.block_b:
        sig.update({"_B": "i32", "_scale": "fp32"})
    elif (k.constexprs and not k.block_n) or k.split:
        sig["_B"] = "i32"
    if k.split:
        sig.update({"_R": "i32", "_ROW": "i32"})
    if k.block_b:
        sig["BLOCK_B"] = "constexpr"
    if k.block_n:
        sig["BLOCK_N"] = "constexpr"
    sig.update({n: "constexpr" for n in k.constexprs})
    sig.update({f: "constexpr" for f in k.flags})
    cx = ({"BLOCK_B": k.block_b_spec} if k.block_b else {}) | ({"BLOCK_N": str(k.block_n[0])} if k.block_n else {})
    cx |= {n: repr(v[0] if isinstance(v, tuple) else v) for n, v in k.constexprs.items()}
    uses = k.flag_uses if k.flag_uses is not None else _flag_uses(k.flags)
    return (k.name, sig, [cx | {f: repr(f in on) for f in k.flags} for on in uses])


def _flag_uses(flags: tuple) -> list[set]:
    """The flags' settings the module launches: forward() (ŷ), loss(), gradients() and train_step() (the
    gradients alone), step() (the loss and the gradients), intermediates() (all three)."""
    if not flags:
        return [set()]
    uses = [{"OUT"}, {"LOSS"}, {"GRAD"}, {"LOSS", "GRAD"}, {"OUT", "LOSS", "GRAD"}]
    out = []
    for u in uses:
        on = u & set(flags)  # a use none of whose parts the kernel holds runs it with every flag off
        if on not in out:
            out.append(on)
    return out


@dataclass(frozen=True)
class LaunchCost:
    """What derive inspect's model reads of one kernel: bytes per batch row, parameter bytes per launch, FLOPs
    per row, gradient bytes (written once per split), and its grid: ``programs`` per batch tile of
    ``tile_rows`` rows, or (``tile_rows`` 0) ``programs`` per split of a gradient kernel."""

    name: str
    section: str
    row: int
    fixed: int
    flops: int
    grads: int
    programs: int
    tile_rows: int
    split: bool
    l2_row: int = 0  # bytes per row that go to and from L2 only (Kernel.l2_row)
    training: bool = True  # launched by a training step
    loss: bool = False  # writes the loss per split: the training step launches no loss-sum kernel

    def grid(self, batch: int) -> int:
        if self.tile_rows:
            return -(-batch // self.tile_rows) * self.programs
        return self.programs * (splits(batch) if self.split else 1)


def splits(batch: int) -> int:
    """The rows of partial sums a batch's gradient kernels write (the module's _splits)."""
    rows = max(SPLIT_ROWS, -(-batch // SPLITS))
    return -(-batch // rows)


def _traffic(plan: _Plan, k: Kernel) -> tuple:
    """(name, section, bytes per batch row, bytes per launch, FLOPs per row, programs): each per-sample operand
    read or written once per row, each parameter once per launch, each gradient once per split (the model's
    DRAM count); programs: the grid without its split axis (0: one program per batch tile, times its column
    blocks, given as -blocks)."""
    ir, row, fixed, grads = plan.ir, 0, 0, 0
    # a buffer passed twice (max-pooling's gather and f′ both read f) is read from DRAM once: the second
    # pointer reads the same rows of the same tile, from L1
    for host in dict.fromkeys(a[2] for a in k.args):
        if host == "_x":
            row += 4 * math.prod(ir.input.shape)
        elif host == "_y":
            row += 8 if ir.target.dtype == "int" else 4 * max(math.prod(ir.target.shape), 1)
        elif host == "out":
            row += 4 * max(_width(ir.output.shape), 1)
        elif host == "_out":
            pass  # ŷ from a row-complete epilogue: written where forward() asks (OUT), not by a training step
        elif host.startswith("_b_"):
            row += 4 * max(_width(plan.arrays[host[3:]].shape), 1)
        elif host.startswith("_p["):
            fixed += 4 * math.prod(plan.params[host[4:-2]].shape)
        elif host.startswith("_g["):
            grads += 4 * math.prod(plan.params[host[4:-2]].shape)
        elif host == "_part":
            fixed += 8  # the partial sums: a few bytes per program
        elif host in plan.partial_row_bytes:
            row += plan.partial_row_bytes[host]  # W·f's partial sums: written by f's kernel, read by W·f's
    return LaunchCost(k.name, k.section, row, fixed, k.flops, grads, k.programs, k.tile_rows, k.split, k.l2_row,
                      k.training, k.loss)


def _steps_read_from_outputs(ir: KernelIR) -> KernelIR:
    """The IR with every step(a) of the backward pass read as step(f) where f = relu(a) (step_aliases, as the
    fused kernel reads it): the backward then needs f alone, so a is no longer stored between kernels (for
    lecture_convnet a1, 308 MB written and read again per step at 2^14)."""
    alias = step_aliases(ir)
    if not alias:
        return ir

    def aliased(e) -> bool:
        return isinstance(e, step) and isinstance(e.args[0], sp.Symbol) and e.args[0].name in alias

    def read_from_f(expr):
        return expr.replace(aliased, lambda e: step(sp.Symbol(alias[e.args[0].name], **e.args[0].assumptions0)))
    return dataclasses.replace(ir, backward=tuple(dataclasses.replace(a, expr=read_from_f(a.expr))
                                                  for a in ir.backward))


def plan_layers(ir: KernelIR, out_dir: str = "generated") -> TritonPlan:
    """The module of per-layer kernels (derive.targets.triton_planner.plan_triton, where the phases do not fuse)."""
    ir = _steps_read_from_outputs(ir)
    plan = _Plan(ir)
    _emit_all(plan)
    for k in plan.kernels:  # every gradient row is written once per split, or the update would add garbage
        if any(a[2].startswith("_g[") for a in k.args) and not k.split:
            raise DerivationError(f"triton target: {k.name} writes a gradient without splitting the batch")
    pr = TritonCodePrinter({}, {}, 16, "ieee")  # the update's per-element lines
    ctx = module_context(ir, out_dir, pr, plan.imports)
    widths = {a.name: _width(a.shape) for a in plan.arrays.values()}
    ctx.update(
        fused=False,
        block_b=BLOCK_B, num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        kernels=[k.source.rstrip("\n") for k in plan.kernels],
        helpers=[(HELPERS.get(h) or TRITON_HELPERS[h]) for h in sorted(plan.helpers | pr.helpers)],
        launches={s: [_launch(k) for k in plan.kernels if k.section == s] for s in SECTIONS},
        buffers={s: [{"name": n, "width": max(widths[n], 1)} for n, sec in plan.stored.items() if sec == s]
                 for s in SECTIONS},
        partials={s: plan.partial_buffers.get(s, []) for s in SECTIONS},
        top=ir.forward[-1].name, splits=SPLITS, split_rows=SPLIT_ROWS, wide_split_rows=WIDE_SPLIT_ROWS,
        loss_in_backward=plan.loss_in_backward,
        epilogue=next(({"name": k.name, "block_b": k.block_b} for k in plan.kernels if k.flags), None),
    )
    loss_sum = (f"{ir.name}_loss_sum_kernel", {"_PART_ptr": "*fp32", "_LOSS_ptr": "*fp32", "_N": "i32", "_ROWS": "i32",
                                                 "_ROW": "i32", "_BLOCK": "constexpr"},
                [{"_BLOCK": "1024"}])
    ctx.update(compile_specs(ir, [*(_spec(k) for k in plan.kernels), loss_sum]))
    text = _env().get_template("triton_module.py.jinja").render(**ctx)
    fusion = tuple(f"{k.name}: " + ", ".join([k.head(ir.name), *k.computes])
                   + ("" if k.training else " (forward(), loss() and intermediates() only: a training step's backward "
                      "kernel does its work)") for k in plan.kernels)
    return TritonPlan(text, (), BLOCK_B, NUM_WARPS, kernels=tuple(_traffic(plan, k) for k in plan.kernels), fusion=fusion)


__all__ = ["EMITTERS", "plan_layers"]

"""The Triton target's printer: batch tiles of BLOCK_B rows, and the @triton.jit helpers it may call."""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from derive.errors import DerivationError
from derive.limits import pow2
from derive.targets.printers import _Recording


DOT_MIN = 16  # tl.dot's smallest side: a contraction runs on tensor cores only where every side pads to it
# reduction columns per tl.dot step of the chunked helpers: at 32, the 64-wide 4-layer MLP's training
# kernel held 198 registers and spilled nothing on sm_90; at 16, 253; at 64, 254 (derive inspect)
DOT_CHUNK = 32


def _size(shape) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


@dataclass
class TileContext:
    """What one rendering of the fused kernel tells its printer about where values live (the printer's
    per-render context: nothing is shared between renderings)."""

    # parameters read where they are used (a name -> its tl.load expression), not held as tiles
    inline_loads: dict = field(default_factory=dict)
    param_shapes: dict = field(default_factory=dict)
    # per-sample vectors kept in memory: name -> (pointer expression, row stride, width, rows): the
    # program's scratch rows (_srows) or the input's batch rows (_rows); every use reads them back, so
    # no tile stays live in registers across layers
    in_memory: dict = field(default_factory=dict)
    # a -> f where f = relu(a) is a register tile: step(a) is read from f (f > 0 exactly where a > 0), so
    # that a need not stay live from the forward pass to the backward pass beside f
    step_alias: dict = field(default_factory=dict)


class TritonCodePrinter(_Recording, PythonCodePrinter):
    """Triton tiles: a batch tile of BLOCK_B rows; vectors padded to powers of two.

    ``widths`` maps every array name to its padded width (a vector's int, a matrix's
    (rows, cols)) so that contractions choose tl.dot (all sides >= 16) or
    broadcast-multiply-sum; ``real_widths`` the unpadded vector widths, for masks.
    """

    target = "triton"
    _kf = {"exp": "tl.exp", "log": "tl.log", "Abs": "tl.abs"}

    def __init__(self, widths: dict, real_widths: dict[str, int], block_b: int, dot_precision: str,
                 tile: TileContext | None = None):
        super().__init__({"strict": True, "fully_qualified_modules": True})
        self.widths = widths
        self.real_widths = real_widths
        self.block_b = block_b
        self.dot_precision = dot_precision
        self.tile = tile or TileContext()
        # what the printed code used: its @triton.jit helpers (TRITON_HELPERS) and the modules it names
        self.helpers: set[str] = set()
        self.imports: set[str] = set()
        # what the printed code moves and computes, for derive inspect's cost model: (section, scale, kind,
        # amount) with scale "row" (per streamed batch row), "reread" (per batch row, read again from L2),
        # "scratch" (per scratch row), "tile" (per batch tile) and kind "read" / "write" bytes or "flop"
        self.events: list[tuple] = []
        self.section = "forward"  # the kernel section being printed, which the events are filed under
        self.streamed: set[str] = set()  # the streamed arrays read once already in this tile

    def _module_format(self, fqn, register=True):
        if register and "." in fqn:
            self.imports.add(fqn.split(".", 1)[0])
        return fqn

    def _note(self, scale: str, kind: str, amount: int):
        self.events.append((self.section, scale, kind, int(amount)))

    def _read_rows(self, name: str, rows: str, amount: int):
        """A per-row read for the cost model: the program's scratch, or a streamed array (x), whose first
        read in a tile comes from DRAM and whose later reads find the tile's rows in L2."""
        if rows == "_srows":
            self._note("scratch", "read", amount)
        else:
            self._note("reread" if name in self.streamed else "row", "read", amount)
            self.streamed.add(name)

    def _print_Symbol(self, e):
        if e.name in self.tile.inline_loads:
            self._note("tile", "read", 4 * _size(self.tile.param_shapes.get(e.name, ())))
            return self.tile.inline_loads[e.name]
        if e.name in self.tile.in_memory:
            ptr, stride, n, rows = self.tile.in_memory[e.name]
            self._read_rows(e.name, rows, 4 * n)
            return (f"tl.load({ptr} + {rows}[:, None] * {stride} + _cols_{n}[None, :], "
                    f"mask=_row_mask[:, None] & _cmask_{n}[None, :], other=0.0)")
        return super()._print_Symbol(e)

    def _chunked(self, *names) -> bool:
        return bool(self.tile.in_memory) and all(isinstance(a, sp.Symbol) and a.name in self.tile.in_memory for a in names)

    def _mem(self, name: str) -> tuple[str, int, int, str]:
        return self.tile.in_memory[name]

    def _print_Function(self, e):
        name = type(e).__name__
        if name in self._kf:
            return "%s(%s)" % (self._kf[name], ", ".join(self._print(a) for a in e.args))
        return super()._print_Function(e)

    _print_exp = _print_log = _print_Abs = _print_Function

    def _print_Pow(self, e, rational=False):
        b, x = e.args
        base = self.parenthesize(b, sp.printing.precedence.PRECEDENCE["Mul"])
        if x == sp.S.Half:
            return "tl.sqrt(%s)" % self._print(b)
        if x == -sp.S.Half:
            return "(1.0 / tl.sqrt(%s))" % self._print(b)
        if x.is_Integer and 2 <= int(x) <= 4:
            return "(" + " * ".join([base] * int(x)) + ")"
        if x == -1:
            return "(1.0 / %s)" % base
        raise DerivationError(f"triton printer: no rule for the power {e}")

    def _print_Rational(self, e):
        return repr(float(e))

    _print_Half = _print_Rational

    def _print_Integer(self, e):
        return str(int(e))

    def _print_Float(self, e):
        return repr(float(e))

    def _print_sign(self, e):
        return self._helper("_sign", *e.args)

    def _print_tanh(self, e):
        return self._helper("_tanh", *e.args)

    def _print_sigmoid(self, e):
        return self._helper("_sigmoid", *e.args)

    def _print_softplus(self, e):
        return self._helper("_softplus", *e.args)

    def _print_relu(self, e):
        return "tl.maximum(%s, 0.0)" % self._print(e.args[0])

    def _print_step(self, e):
        (a,) = e.args
        if isinstance(a, sp.Symbol) and a.name in self.tile.step_alias:  # f, as any read of f prints it
            return "tl.where(%s > 0, 1.0, 0.0)" % self._print(sp.Symbol(self.tile.step_alias[a.name]))
        return "tl.where(%s > 0, 1.0, 0.0)" % self._print(a)

    def _print_leaky_relu(self, e):
        x, s = (self._print(a) for a in e.args)
        return f"tl.where({x} > 0, {x}, {s} * {x})"

    def _print_Min(self, e):
        a, b = e.args
        return "tl.minimum(%s, %s)" % (self._print(a), self._print(b))

    def _dot(self, m: int, n: int, k: int) -> bool:
        return min(m, n, k) >= DOT_MIN

    def _width(self, e) -> int:
        if isinstance(e, sp.Symbol):
            return self.widths[e.name]
        if type(e).__name__ == "Col":
            return 1
        raise DerivationError(f"triton printer: cannot tell the width of {e}")

    def tensor_cores(self, *sides: int) -> bool:
        """Whether a contraction of these sides (the batch tile's rows besides) runs as tl.dot: every side
        padded to a power of two, and BLOCK_B, at least 16 (tl.dot's smallest)."""
        return self.block_b >= DOT_MIN and min(pow2(n) for n in sides) >= DOT_MIN

    def _contraction(self, helper: str, args: str, out: int, reduced: int) -> str:
        """A chunked W·f or δ·W: tl.dot over KC columns of the reduction at a time where the sides allow
        (its FLOPs counted as tensor-core FLOPs, padded as the tensor cores run them), else rank-1 updates."""
        if self.tensor_cores(out, reduced):
            kc = min(DOT_CHUNK, pow2(reduced))
            self.helpers.add(f"_dot{helper}")
            self._note("row", "dot", 2 * pow2(out) * kc * -(-reduced // kc))
            return f"_dot{helper}({args}, KC={kc}, BLOCK_B=BLOCK_B)"
        self.helpers.add(helper)
        self._note("row", "flop", 2 * out * reduced)
        return f"{helper}({args}, BLOCK_B=BLOCK_B)"

    def _dot_call(self, a: str, b: str) -> str:
        return f"tl.dot({a}, {b}, input_precision=DOT_PRECISION)"  # the module's constant, as in its helpers

    def _print_MatVec(self, e):
        w, f = e.args
        if self._chunked(f):
            ptr, stride, k, rows = self._mem(f.name)
            n_out, n_in = self.tile.param_shapes[w.name]
            self._read_rows(f.name, rows, 4 * n_in)
            self._note("tile", "read", 4 * n_in * n_out)
            args = (f"{ptr}, {stride}, {w.name}_ptr, {rows}, _row_mask, K={n_in}, N={n_out}, "
                    f"NP={self.widths[w.name][0]}")
            return self._contraction("_matvec", args, n_out, n_in)
        n_out, n_in = self.widths[w.name]
        fs, ws = self._print(f), self._print(w)
        if self._dot(self.block_b, n_out, n_in):
            self._note("row", "dot", 2 * n_out * n_in)
            return self._dot_call(fs, f"tl.trans({ws})")
        self._note("row", "flop", 2 * n_out * n_in)
        return f"tl.sum(({fs})[:, None, :] * {ws}[None, :, :], axis=2)"

    def _print_VecMat(self, e):
        d, w = e.args
        if self._chunked(d):
            ptr, stride, _, rows = self._mem(d.name)
            n_out, n_in = self.tile.param_shapes[w.name]
            self._read_rows(d.name, rows, 4 * n_out)
            self._note("tile", "read", 4 * n_in * n_out)
            args = (f"{ptr}, {stride}, {w.name}_ptr, {rows}, _row_mask, I={n_out}, J={n_in}, "
                    f"JP={self.widths[w.name][1]}")
            return self._contraction("_vecmat", args, n_in, n_out)
        n_out, n_in = self.widths[w.name]
        ds, ws = self._print(d), self._print(w)
        if self._dot(self.block_b, n_out, n_in):
            self._note("row", "dot", 2 * n_out * n_in)
            return self._dot_call(ds, ws)
        self._note("row", "flop", 2 * n_out * n_in)
        return f"tl.sum(({ds})[:, :, None] * {ws}[None, :, :], axis=1)"

    def _print_Outer(self, e):
        d, f = e.args
        m, k = self._width(d), self._width(f)
        ds, fs = self._print(d), self._print(f)
        if self._dot(m, k, self.block_b):
            self._note("row", "dot", 2 * m * k)
            return self._dot_call(f"tl.trans({ds})", fs)
        self._note("row", "flop", 2 * m * k)
        return f"tl.sum(({ds})[:, :, None] * ({fs})[:, None, :], axis=0)"

    def _print_BatchSum(self, e):
        return "tl.sum(%s, axis=0)" % self._print(e.args[0])

    def _print_RowSum(self, e):
        body, n = e.args
        return "tl.sum(tl.where(_cmask_%d[None, :], %s, 0.0), axis=1)" % (int(n), self._print(body))

    def _print_Col(self, e):
        return "%s[:, None]" % self._print(e.args[0])

    def _print_First(self, e):
        return "tl.sum(%s, axis=1)" % self._print(e.args[0])  # width 1: the sum is the element

    def _print_OneHot(self, e):
        y, n, _ = e.args
        return "tl.where(%s[:, None] == _cols_%d[None, :], 1.0, 0.0)" % (self._print(y), int(n))

    def _print_ZerosLike(self, e):
        return "(%s * 0.0)" % self._print(e.args[0])

    def _print_FirstColumn(self, e):
        return "tl.sum(%s, axis=1)" % self._print(e.args[0])  # a (rows, 1) tile: the sum is the column

    def _n_of(self, z) -> int:
        return self.real_widths[z.name]

    def _print_Softmax(self, e):
        (z,) = e.args
        self.helpers.add("_softmax")
        return "_softmax(%s, _cmask_%d[None, :])" % (self._print(z), self._n_of(z))

    def _print_LogSumExp(self, e):
        (z,) = e.args
        self.helpers.add("_logsumexp")
        return "_logsumexp(%s, _cmask_%d[None, :])" % (self._print(z), self._n_of(z))


TRITON_HELPERS = {
    "_matvec": '''@triton.jit
def _matvec(F_ptr, F_STRIDE: tl.constexpr, W_ptr, _rows, _row_mask, K: tl.constexpr, N: tl.constexpr,
            NP: tl.constexpr, BLOCK_B: tl.constexpr):
    # a[b, j] = Σ_k W[j, k]·f[b, k] for the tile's rows, one rank-1 update per k: f is read a column
    # and W a column at a time (from L1/L2), so only the (BLOCK_B, NP) sum lives in registers
    n = tl.arange(0, NP)
    acc = tl.zeros((BLOCK_B, NP), dtype=tl.float32)
    for k in range(K):
        f = tl.load(F_ptr + _rows * F_STRIDE + k, mask=_row_mask, other=0.0)
        w = tl.load(W_ptr + n * K + k, mask=n < N, other=0.0)
        acc += f[:, None] * w[None, :]
    return acc''',
    "_vecmat": '''@triton.jit
def _vecmat(D_ptr, D_STRIDE: tl.constexpr, W_ptr, _rows, _row_mask, I: tl.constexpr, J: tl.constexpr,
            JP: tl.constexpr, BLOCK_B: tl.constexpr):
    # g[b, j] = Σ_i d[b, i]·W[i, j] for the tile's rows, one rank-1 update per i (d's column, W's row)
    j = tl.arange(0, JP)
    acc = tl.zeros((BLOCK_B, JP), dtype=tl.float32)
    for i in range(I):
        d = tl.load(D_ptr + _rows * D_STRIDE + i, mask=_row_mask, other=0.0)
        w = tl.load(W_ptr + i * J + j, mask=j < J, other=0.0)
        acc += d[:, None] * w[None, :]
    return acc''',
    "_outer_add": '''@triton.jit
def _outer_add(D_ptr, D_STRIDE: tl.constexpr, D_ROW0, F_ptr, F_STRIDE: tl.constexpr, F_ROW0, G_ptr, NVALID,
               J: tl.constexpr, K: tl.constexpr, JC: tl.constexpr, KP: tl.constexpr, BLOCK_B: tl.constexpr):
    # G[j, k] += Σ_b d[b, j]·f[b, k] over the tile's first NVALID rows (d's rows from D_ROW0, f's from
    # F_ROW0; G is (J, K), row-major, this program's own partial sum): JC rows of G at a time, one
    # rank-1 update per batch row, so one (JC, KP) block lives in registers
    k = tl.arange(0, KP)
    jc = tl.arange(0, JC)
    for j0 in range(0, J, JC):
        j = j0 + jc
        g = tl.zeros((JC, KP), dtype=tl.float32)
        for b in range(BLOCK_B):
            ok = j * 0 + b < NVALID
            d = tl.load(D_ptr + (D_ROW0 + b) * D_STRIDE + j, mask=(j < J) & ok, other=0.0)
            f = tl.load(F_ptr + (F_ROW0 + b) * F_STRIDE + k, mask=(k < K) & (k * 0 + b < NVALID), other=0.0)
            g += d[:, None] * f[None, :]
        _g = G_ptr + j[:, None] * K + k[None, :]
        _m = (j < J)[:, None] & (k < K)[None, :]
        tl.store(_g, tl.load(_g, mask=_m, other=0.0) + g, mask=_m)''',
    # the same three contractions on tensor cores (tl.dot, every side >= 16): KC columns of the reduction
    # at a time, so that one (BLOCK_B, KC) operand and one (KC, N) weight block are live, never a whole matrix
    "_dot_matvec": '''@triton.jit
def _dot_matvec(F_ptr, F_STRIDE: tl.constexpr, W_ptr, _rows, _row_mask, K: tl.constexpr, N: tl.constexpr,
                NP: tl.constexpr, KC: tl.constexpr, BLOCK_B: tl.constexpr):
    # a[b, j] = Σ_k W[j, k]·f[b, k] for the tile's rows: f (BLOCK_B, KC) times Wᵀ (KC, NP) per step
    n = tl.arange(0, NP)
    kc = tl.arange(0, KC)
    acc = tl.zeros((BLOCK_B, NP), dtype=tl.float32)
    for k0 in range(0, K, KC):
        k = k0 + kc
        f = tl.load(F_ptr + _rows[:, None] * F_STRIDE + k[None, :], mask=_row_mask[:, None] & (k < K)[None, :],
                    other=0.0)
        w = tl.load(W_ptr + n[None, :] * K + k[:, None], mask=(k < K)[:, None] & (n < N)[None, :], other=0.0)
        acc = tl.dot(f, w, acc, input_precision=DOT_PRECISION)
    return acc''',
    "_dot_vecmat": '''@triton.jit
def _dot_vecmat(D_ptr, D_STRIDE: tl.constexpr, W_ptr, _rows, _row_mask, I: tl.constexpr, J: tl.constexpr,
                JP: tl.constexpr, KC: tl.constexpr, BLOCK_B: tl.constexpr):
    # g[b, j] = Σ_i d[b, i]·W[i, j] for the tile's rows: d (BLOCK_B, KC) times W (KC, JP) per step
    j = tl.arange(0, JP)
    ic = tl.arange(0, KC)
    acc = tl.zeros((BLOCK_B, JP), dtype=tl.float32)
    for i0 in range(0, I, KC):
        i = i0 + ic
        d = tl.load(D_ptr + _rows[:, None] * D_STRIDE + i[None, :], mask=_row_mask[:, None] & (i < I)[None, :],
                    other=0.0)
        w = tl.load(W_ptr + i[:, None] * J + j[None, :], mask=(i < I)[:, None] & (j < J)[None, :], other=0.0)
        acc = tl.dot(d, w, acc, input_precision=DOT_PRECISION)
    return acc''',
    "_dot_outer_add": '''@triton.jit
def _dot_outer_add(D_ptr, D_STRIDE: tl.constexpr, D_ROW0, F_ptr, F_STRIDE: tl.constexpr, F_ROW0, G_ptr, NVALID,
                   J: tl.constexpr, K: tl.constexpr, JC: tl.constexpr, KP: tl.constexpr, BLOCK_B: tl.constexpr):
    # G[j, k] += Σ_b d[b, j]·f[b, k] over the tile's first NVALID rows, as dᵀ (JC, BLOCK_B) times
    # f (BLOCK_B, KP) for JC rows of G at a time (G: (J, K), row-major, this program's own partial sum)
    k = tl.arange(0, KP)
    jc = tl.arange(0, JC)
    b = tl.arange(0, BLOCK_B)
    ok = b < NVALID
    f = tl.load(F_ptr + (F_ROW0 + b)[:, None] * F_STRIDE + k[None, :], mask=ok[:, None] & (k < K)[None, :], other=0.0)
    for j0 in range(0, J, JC):
        j = j0 + jc
        d = tl.load(D_ptr + (D_ROW0 + b)[None, :] * D_STRIDE + j[:, None], mask=(j < J)[:, None] & ok[None, :],
                    other=0.0)
        _g = G_ptr + j[:, None] * K + k[None, :]
        _m = (j < J)[:, None] & (k < K)[None, :]
        tl.store(_g, tl.load(_g, mask=_m, other=0.0) + tl.dot(d, f, input_precision=DOT_PRECISION), mask=_m)''',
    "_accumulate": '''@triton.jit
def _accumulate(ptr, value, mask):
    # this program's partial sum: only this program writes these addresses, so no atomics are needed
    tl.store(ptr, tl.load(ptr, mask=mask, other=0.0) + value, mask=mask)''',
    "_sigmoid": '''@triton.jit
def _sigmoid(x):
    # σ(x) from e^−|x| ≤ 1: never overflows
    z = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))''',
    "_tanh": '''@triton.jit
def _tanh(x):
    # no libdevice tanh under the interpreter; from e^−2|x| ≤ 1, which never overflows
    z = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - z) / (1.0 + z)
    return tl.where(x >= 0, t, -t)''',
    "_softplus": '''@triton.jit
def _softplus(x):
    # log(1 + e^x) = max(x, 0) + log(1 + e^−|x|)
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))''',
    "_sign": '''@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))''',
    "_logsumexp": '''@triton.jit
def _logsumexp(z, mask):
    # per row, over the valid columns only, shifted by the row maximum
    m = tl.max(tl.where(mask, z, -float("inf")), axis=1)
    e = tl.where(mask, tl.exp(z - m[:, None]), 0.0)
    return m + tl.log(tl.sum(e, axis=1))''',
    "_softmax": '''@triton.jit
def _softmax(z, mask):
    m = tl.max(tl.where(mask, z, -float("inf")), axis=1)
    e = tl.where(mask, tl.exp(z - m[:, None]), 0.0)
    return e / tl.sum(e, axis=1)[:, None]''',
}

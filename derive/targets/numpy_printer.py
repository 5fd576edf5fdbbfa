"""The NumPy target's printer: readable whole-array NumPy, and the helper functions it may call.

The helpers' sources are written once for NumPy and torch, each with the rule or table entry that owns
it (tables/arrays.py); this module gathers them and defines the array primitives they call in NumPy.
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.numpy import NumPyPrinter

from derive.layers import RULES
from derive.tables.arrays import PRIMITIVES, calls, in_library
from derive.tables.functions import FUNCTIONS
from derive.tables.losses import LOSS_RULES
from derive.targets.printers import _Recording

# Every helper the NumPy and torch modules may define, by name, from the rules and table entries that own them.
OWNED = {h.name: h.source for owner in (*RULES.values(), *FUNCTIONS, *LOSS_RULES.values())
         for h in getattr(owner, "helpers", ())}
# Which rule gives the code of each of its IR nodes (conv2d's einsum, pooling's helper calls).
NODE_RULES = {node: rule for rule in RULES.values() for node in rule.ir_nodes}

# The primitives of tables/arrays.py in NumPy.
NUMPY_PRIMITIVES = {
    "zeros": '''def zeros(like, shape):
    """Zeros of the given shape in like's dtype."""
    return np.zeros(shape, dtype=like.dtype)''',
    "pad2d": '''def pad2d(x, pad, value=0.0):
    """x with pad rows and columns of value on both sides of its last two axes."""
    return np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=value)''',
    "windows": '''def windows(x, kh, kw, sh, sw):
    """x[b, c, i·sh + p, j·sw + q] as an array indexed [b, c, i, j, p, q]: every kh × kw window (a view)."""
    return np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]''',
    "arange": '''def arange(n, like):
    """0, 1, …, n − 1 (like: where a torch module keeps its tensors; NumPy has one place)."""
    return np.arange(n)''',
    "scatter_add": '''def scatter_add(target, index, values):
    """target[b, c, index[b, c, k]] += values[b, c, k], repeated indices adding up (np.add.at)."""
    b, c, _ = np.indices(index.shape, sparse=True)
    np.add.at(target, (b, c, index), values)''',
}
assert set(NUMPY_PRIMITIVES) == set(PRIMITIVES)


class NumpyCodePrinter(_Recording, NumPyPrinter):
    """Readable NumPy: matmuls as @, numerically safe helpers for σ, softplus, log-sum-exp."""

    target = "numpy"
    module = "np"  # what the helpers' xp. is here
    primitives = NUMPY_PRIMITIVES
    own: dict[str, str] = {}  # helpers written for this target alone (the torch printer's)

    def __init__(self):
        super().__init__({"strict": True, "fully_qualified_modules": True, "order": "none"})
        self.helpers = set()

    def _module_format(self, fqn, register=True):
        return "np." + fqn.split(".", 1)[1] if fqn.startswith("numpy.") else fqn

    # the helpers: written once over xp. (tables/arrays.py), printed in this target's library
    def _library(self, code: str) -> str:
        """``code`` in this target's library, the helpers and primitives it calls recorded."""
        self.helpers |= calls(code, self.known())
        return in_library(code, self.module)

    def known(self) -> set[str]:
        return set(self.primitives) | set(OWNED) | set(self.own)

    def source(self, name: str) -> str:
        """The source of a helper or primitive as this target's module defines it."""
        text = self.own.get(name) or self.primitives.get(name) or OWNED[name]
        return in_library(text, self.module)

    def helper_sources(self) -> list[str]:
        """The sources of the helpers the printed code called, and of what those call in turn: the
        primitives first, then the helpers, each in name order."""
        used, todo = set(), sorted(self.helpers)
        while todo:
            name = todo.pop()
            if name not in used:
                used.add(name)
                todo += sorted(calls(self.source(name), self.known()) - used)
        order = sorted(used, key=lambda h: (h not in self.primitives, h))
        return [self.source(h) for h in order]

    # elementwise functions
    def _print_Function(self, e):
        # (SymPy looks for _print_<its class> and then this, skipping the classes between: IRNode's too)
        # a layer kind's own IR node (a window sum, pooling): its rule gives the code
        rule = NODE_RULES.get(type(e))
        if rule is not None:
            return self._library(rule.array_code(e, [self._print(a) for a in e.args[:-1]]))
        # a SymPy function whose table entry brings its helper (sigmoid, softplus): a call of it
        own = getattr(type(e), "helpers", ())
        if len(own) == 1:
            return self._helper(own[0].name, *e.args)
        return super()._print_Function(e)

    def _print_relu(self, e):
        return "np.maximum(%s, 0)" % self._print(e.args[0])

    def _print_step(self, e):
        # 1[x > 0] in x's dtype, 0 at 0 (PyTorch's relu'(0)).  On a named array, a comparison:
        # np.heaviside gives the same values but has no SIMD loop (50-100x slower, bench/numpy_vs_torch.py).
        (x,) = e.args
        if isinstance(x, sp.Symbol):
            s = self._print(x)
            return f"({s} > 0).astype({s}.dtype)"
        return "np.heaviside(%s, 0)" % self._print(x)  # an expression (hinge's 1 − y·ŷ): one value per sample

    def _print_leaky_relu(self, e):
        x, s = (self._print(a) for a in e.args)
        return f"np.where({x} > 0, {x}, {s} * {x})"

    def _print_Min(self, e):
        a, b = e.args
        return "np.minimum(%s, %s)" % (self._print(a), self._print(b))

    # array operations of the kernel IR
    def _print_MatVec(self, e):
        w, f = e.args
        return "(%s @ %s.T)" % (self._print(f), self._print(w))

    def _print_VecMat(self, e):
        d, w = e.args
        return "(%s @ %s)" % (self._print(d), self._print(w))

    def _print_Outer(self, e):
        d, f = e.args
        return "(%s.T @ %s)" % (self._print(d), self._print(f))

    def _print_BatchSum(self, e):
        return "np.sum(%s, axis=0)" % self._print(e.args[0])

    def _print_RowSum(self, e):
        return "np.sum(%s, axis=1)" % self._print(e.args[0])

    def _print_Col(self, e):
        return "%s[:, None]" % self._print(e.args[0])

    def _print_First(self, e):
        return "%s[:, 0]" % self._print(e.args[0])

    def _print_OneHot(self, e):
        y, _, z = e.args  # z: the logits, whose shape and dtype the rows take
        return self._helper("onehot", y, z)

    def _print_ZerosLike(self, e):
        return "np.zeros_like(%s)" % self._print(e.args[0])

    def _print_FirstColumn(self, e):
        return "%s[:, 0]" % self._print(e.args[0])

    def _print_Softmax(self, e):
        return self._helper("softmax", *e.args)

    def _print_LogSumExp(self, e):
        return self._helper("logsumexp", *e.args)

    # volumes
    def _print_Pad(self, e):
        x, pad = e.args
        return "np.pad(%s, ((0, 0), (0, 0), (%s, %s), (%s, %s)))" % (self._print(x), pad, pad, pad, pad)

    def _print_Crop(self, e):
        g, pad = e.args
        return "%s[:, :, %s:-%s, %s:-%s]" % (self._print(g), pad, pad, pad, pad)

    def _print_ConvBiasGrad(self, e):
        return "np.sum(%s, axis=(0, 2, 3))" % self._print(e.args[0])

    def _print_Flatten(self, e):
        f = self._print(e.args[0])
        return "%s.reshape(%s.shape[0], -1)" % (f, f)

    def _print_Concat(self, e):
        return "%s((%s), axis=1)" % (self._concat, ", ".join(self._print(a) for a in e.args))

    _concat = "np.concatenate"

    def _print_Slice(self, e):
        g, at, size = e.args
        return "%s[:, %s:%s]" % (self._print(g), at, at + size)

    def _print_Unflatten(self, e):
        g, cc, hh, ww = e.args
        return "%s.reshape(-1, %s, %s, %s)" % (self._print(g), cc, hh, ww)

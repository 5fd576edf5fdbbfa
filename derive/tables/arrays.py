"""The helper functions of the generated NumPy and torch modules, each written once for both libraries.

A helper's source is Python over ``xp.``, the array library's namespace (the array API's name for it),
printed as ``np.`` in the NumPy module and ``torch.`` in the torch module.  It calls a library function
through ``xp.`` where both spell it alike (``xp.einsum``, ``xp.exp``, ``xp.amax(z, axis=1, keepdims=True)``:
torch takes NumPy's ``axis`` and ``keepdims`` too), and one of the ``PRIMITIVES`` below where they differ:
each target writes those once (targets/numpy_printer.py, targets/torch_printer.py).  A generated module
defines only the helpers and primitives its code calls.

A helper lives with the rule or table entry that owns it, in its ``helpers``: conv2d's input gradient
with the conv2d rule, pooling's with the pool rules, softmax's with its SymPy function, the one-hot rows
with the cross-entropy loss.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Helper:
    """A function the generated NumPy and torch code defines: its ``name`` (refused as a spec name) and its
    ``source``, ``def name(…): …`` over ``xp.`` and the primitives."""

    name: str
    source: str


# What each primitive means; every target defines each one in its own library, under this name.
PRIMITIVES = {
    "zeros": "zeros(like, shape): zeros of ``shape`` in like's dtype (and on its device)",
    "pad2d": "pad2d(x, pad, value=0.0): ``pad`` rows and columns of ``value`` added on both sides of the "
             "last two axes",
    "windows": "windows(x, kh, kw, sh, sw): x[b, c, i·sh + p, j·sw + q] indexed [b, c, i, j, p, q], a view",
    "arange": "arange(n, like): 0, 1, …, n − 1 as an index array (on like's device)",
    "scatter_add": "scatter_add(target, index, values): target[b, c, index[b, c, k]] += values[b, c, k], in "
                   "place, repeated indices adding up",
}


def calls(code: str, names) -> set[str]:
    """The names among ``names`` that the Python ``code`` calls (not those its docstrings mention)."""
    return {n.func.id for n in ast.walk(ast.parse(code))
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in names}


def in_library(code: str, module: str) -> str:
    """``code`` with its ``xp.`` spelled as the library's ``module`` (np, torch)."""
    return re.sub(r"(?<![\w.])xp\.", module + ".", code)

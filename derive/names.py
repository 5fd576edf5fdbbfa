"""Naming rules, in one place, so that spec names and generated names never collide.

Every name a spec gives ends up as an identifier in generated NumPy and Triton code,
so a name must be a plain ASCII identifier, not a Python keyword, and must not take
a name the generator uses itself (the forward quantities a1, f1, the deltas, the
gradient names, module-level helpers).  Generated names are a pure function of the
layer position, so regenerating gives byte-identical code.
"""

from __future__ import annotations

import keyword
import re

# Fixed rather than keyword.softkwlist, which grows with the Python version ("type" in 3.12).
SOFT_KEYWORDS = frozenset({"_", "case", "match", "type"})
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Names the generated modules and templates use for their own purposes.
RESERVED = frozenset(
    {
        "np", "torch", "triton", "tl", "math", "params", "grads", "batch", "scale",
        "lr", "seed", "rng", "loss", "forward", "gradients", "train_step", "init_params",
        "yhat", "L", "state", "t", "out", "pid", "rows", "row_mask", "dtype", "name",
        "value", "sigmoid", "relu", "softplus", "step", "onehot", "logsumexp", "softmax",
        # locals of the generated host code and kernels
        "B", "N", "LOSS", "OUT", "BLOCK", "P_ptr", "G_ptr", "offs", "mask", "p", "g", "new", "flat", "gflat",
        "n", "views", "offset", "shape", "arrays", "k", "v", "device", "block_b", "blk", "dummy", "total",
        "launch", "row_mask", "loss_per_sample", "np", "NAME", "PARAM_SHAPES", "LOSS", "REDUCTION",
    }
)

# The NumPy helpers of conv2d / locally_connected layers.
RESERVED = RESERVED | {"windows", "conv2d_input_grad", "local_input_grad"}


def check_identifier(name: object) -> str | None:
    """Return a reason the name is unusable, or None when it is fine."""
    if not isinstance(name, str):
        return f"expected a name (string), got {type(name).__name__}"
    if not IDENTIFIER.match(name):
        return f"expected a plain identifier matching [A-Za-z_][A-Za-z0-9_]*, got {name!r}"
    if keyword.iskeyword(name) or name in SOFT_KEYWORDS:
        return f"{name!r} is a Python keyword; choose another name"
    if name.startswith("__"):
        return f"{name!r} starts with '__', which is reserved; choose another name"
    if name in RESERVED:
        return f"{name!r} is used by the generated code itself; choose another name"
    if name.endswith("_ptr") or name.startswith(("cols_", "cmask_", "WITH_", "_")):
        return f"{name!r} has a prefix or suffix the generated kernels use (_ptr, cols_, cmask_, WITH_, _); choose another name"
    if re.fullmatch(r"(a|f|delta|t)\d+", name) or name.startswith("dL_d") or name.startswith("BLOCK_"):
        return f"{name!r} is a name the derivation generates (a1, f1, delta1, dL_d..., t1); choose another name"
    return None


def pre_activation(layer: int) -> str:
    return f"a{layer}"


def activation(layer: int) -> str:
    return f"f{layer}"


def delta(layer: int) -> str:
    return f"delta{layer}"


def grad(param: str) -> str:
    return f"dL_d{param}"


def upstream(layer: int) -> str:
    """∂L/∂f_l: the gradient arriving at a layer's output, before its activation."""
    return f"dL_df{layer}"


def padded(source: str) -> str:
    """The zero-padded input of a conv layer: x_pad, f1_pad."""
    return f"{source}_pad"


def default_weight(layer: int, vector: bool) -> str:
    # The lecture writes scalar weights lower-case (w1) and matrices upper-case (W1).
    return f"W{layer}" if vector else f"w{layer}"


def default_bias(layer: int) -> str:
    return f"b{layer}"


def default_slope(layer: int) -> str:
    return f"alpha{layer}"

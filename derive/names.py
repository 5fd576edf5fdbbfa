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

# Names the generated modules use at module level, as function arguments, or as kernel
# locals.  Host-code locals in the templates all start with "_", which spec names may not.
RESERVED = frozenset(
    {
        # modules and module-level names
        "np", "torch", "triton", "tl", "math", "NAME", "PARAM_SHAPES", "LOSS", "REDUCTION", "BLOCK_B",
        "OPTIMIZER", "HYPER", "STATE",
        # functions of the generated modules and their helpers
        "init_params", "forward", "loss", "gradients", "value_and_gradients", "train_step", "launch",
        "init_state", "apply_update", "step", "intermediates",
        # arguments of the generated functions (launch() and the update kernels included), a NumPy local,
        # and the loss's own name; the kernels' locals start with "_" (B, rows, pid, offs … are the user's)
        "params", "grads", "state", "hyper", "lr", "t", "seed", "dtype", "device", "out", "block_b",
        "loss_per_sample", "yhat", "L",
        # optimizer rule symbols
        "theta", "g", "eta_t", "bc1", "bc2", "vel", "G", "m", "v", "Eg2", "Edx2", "dx",
        "momentum", "eps", "rho", "beta1", "beta2",
    }
)

# The helpers of a layer kind (conv2d's windows, pooling's max_pool2d), of a SymPy function (sigmoid, softmax)
# and of a loss (cross-entropy's onehot) are its rule's, function's or loss's ``helpers``: the network check
# refuses them as spec names with the message below (derive/network.py).
TAKEN_BY_CODE = "is used by the generated code itself; choose another name"


def check_identifier(name: object, variable: bool = True) -> str | None:
    """Return a reason the name is unusable, or None when it is fine.

    ``variable=False`` is for the network's name, which only prefixes file and kernel names.
    """
    if not isinstance(name, str):
        return f"expected a name (string), got {type(name).__name__}"
    if not IDENTIFIER.match(name):
        return f"expected a plain identifier matching [A-Za-z_][A-Za-z0-9_]*, got {name!r}"
    if keyword.iskeyword(name) or name in SOFT_KEYWORDS:
        return f"{name!r} is a Python keyword; choose another name"
    if name.startswith("_"):
        return f"{name!r} starts with '_', which the generated code keeps for its own names; choose another name"
    if not variable:
        return None
    if name in RESERVED:
        return f"{name!r} {TAKEN_BY_CODE}"
    if name.endswith("_ptr") or name.startswith("WITH_"):
        return f"{name!r} has a prefix or suffix the generated kernels use (_ptr, WITH_); choose another name"
    # layers count from 1 and CSE temporaries from t1, so a0, f0, delta0 and t0 are never generated
    if re.fullmatch(r"(a|f|delta|t)[1-9]\d*", name) or name.startswith("dL_d") or name.startswith("BLOCK_"):
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


def path_term(quantity: str, layer: int) -> str:
    """One path's term of ∂L/∂quantity when several layers read it: the part through layer ``layer``."""
    return f"{grad(quantity)}_via{layer}"


def padded(source: str, layer: int | None = None) -> str:
    """The zero-padded input of a conv layer: x_pad, f1_pad; f1_pad3 for layer 3 when it names its
    input itself (in a graph two layers may pad the same quantity)."""
    return f"{source}_pad" if layer is None else f"{source}_pad{layer}"


def factor(numerator: str, denominator: str) -> str:
    """The ASCII name of the chain factor ∂numerator/∂denominator: "df3/da3", "dL/df3", "delta3" (∂L/∂a3)."""
    if is_delta_factor(numerator, denominator):
        return delta(int(denominator[1:]))
    return f"d{numerator}/d{denominator}"


def is_delta_factor(numerator: str, denominator: str) -> bool:
    """∂L/∂a_l is δ_l (a_l is a name only the derivation generates)."""
    return numerator == "L" and re.fullmatch(r"a\d+", denominator) is not None


def default_weight(layer: int, vector: bool) -> str:
    # The lecture writes scalar weights lower-case (w1) and matrices upper-case (W1).
    return f"W{layer}" if vector else f"w{layer}"


def default_bias(layer: int) -> str:
    return f"b{layer}"


def default_slope(layer: int) -> str:
    return f"alpha{layer}"

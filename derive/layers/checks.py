"""Checks shared by the layer rules, the TOML loader and the network model.

Two kinds: readers of TOML values (``string``, ``integer``, ``number``: the type a key must have,
reported with the value as the user wrote it) and validators of meaning (``positive``,
``name``, ``activation``, ``weight_and_bias``).  Every failure is a ``SpecError`` naming the key path.
"""

from __future__ import annotations

import math
from typing import Any

from derive import names
from derive.errors import SpecError
from derive.tables.activations import ACTIVATIONS


def show(value: Any) -> str:
    """A value as the user wrote it in TOML (strings quoted as in Python's repr)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, (int, float)):
        return repr(value)
    return f"a {type(value).__name__} ({value})"


def keys(path: str, table: dict, allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            raise SpecError(where, f"unknown key {key!r}; expected one of {', '.join(allowed)}")


def table(path: str, value: Any, how: str) -> dict:
    if not isinstance(value, dict):
        raise SpecError(path, f"expected a table ({how}), got {show(value)}")
    return value


def string(path: str, value: Any, what: str = "a string") -> str:
    if not isinstance(value, str):
        raise SpecError(path, f"expected {what}, got {show(value)}")
    return value


def integer(path: str, value: Any) -> int:
    """An integer of the TOML document (its range is the model's to check)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"expected a positive integer, got {show(value)}")
    return value


def number(path: str, value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"expected {what}, got {show(value)}")
    if not math.isfinite(value):
        raise SpecError(path, f"expected a finite number, got {show(value)}")
    return float(value)


def pair(path: str, value: Any, what: str = "a positive integer or [h, w]") -> int | tuple[int, int]:
    """An integer or a two-element list of integers (a kernel or stride), as the TOML document has it."""
    if isinstance(value, list):
        if len(value) != 2:
            raise SpecError(path, f"expected {what}, got {show(value)}")
        return tuple(integer(path, n) for n in value)
    return integer(path, value)


def bias_key(path: str, value: Any):
    """bias = "name" | false | true (true: the default name, as if the key were left out)."""
    if value is True:
        return None
    if value is False or isinstance(value, str):
        return value
    raise SpecError(path, f"expected a name (string) or false, got {show(value)}")


def names_and_activation(path: str, table: dict, kwargs: dict) -> None:
    """The keys every layer with parameters reads the same way: weight, bias and activation."""
    if "weight" in table:
        kwargs["weight"] = string(f"{path}.weight", table["weight"], "a name (string)")
    if "bias" in table and bias_key(f"{path}.bias", table["bias"]) is not None:
        kwargs["bias"] = table["bias"]
    if "activation" in table:
        kwargs["activation"] = string(f"{path}.activation", table["activation"])


# ----------------------------------------------------------------------------- meaning


def positive(path: str, value: object, what: str = "a positive integer", low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SpecError(path, f"expected {what}, got {value!r}")
    return value


def positive_pair(path: str, value: object, what: str) -> tuple[int, int]:
    """(h, w) from an integer or a pair, each positive (kernel sizes, strides)."""
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not (isinstance(value, tuple) and len(value) == 2):
        raise SpecError(path, f"expected a positive integer or [h, w], got {value!r}")
    return tuple(positive(path, n, what) for n in value)


def volume(path: str, kind: str, shape) -> tuple[int, int, int]:
    """The (c, h, w) input a volume layer needs."""
    if len(shape) != 3:
        got = "a scalar" if not shape else f"shape {list(shape)}"
        raise SpecError(f"{path}.type", f"expected a [c, h, w] volume as the input of {kind}, got {got}")
    return shape


def name(path: str, value: object, variable: bool = True) -> str:
    reason = names.check_identifier(value, variable)
    if reason:
        raise SpecError(path, reason)
    return value  # type: ignore[return-value]


def weight_and_bias(path: str, index: int, spec, vector: bool, claim) -> tuple[str, str | None]:
    """The layer's weight and bias names (defaults from derive.names; bias = false drops it)."""
    weight = claim(f"{path}.weight", spec.weight if spec.weight is not None else names.default_weight(index, vector))
    if spec.bias is False:
        return weight, None
    if spec.bias is None or spec.bias is True:
        return weight, claim(f"{path}.bias", names.default_bias(index))
    return weight, claim(f"{path}.bias", spec.bias)


def activation(path: str, spec, parameters: bool = True) -> tuple[str, float | None]:
    """The activation's name and, for a constant-slope one (leaky_relu), its slope.

    ``parameters=False`` refuses activations with a learnable parameter (prelu), for layers
    whose generated code has no per-layer scalar parameter path.
    """
    act = spec.activation
    if act not in ACTIVATIONS:
        raise SpecError(f"{path}.activation", f"expected one of {', '.join(ACTIVATIONS)}, got {act!r}")
    kind = ACTIVATIONS[act].slope
    if kind == "parameter" and not parameters:
        raise SpecError(f"{path}.activation", f"expected an activation without parameters; {act} is "
                                              "available on linear layers only")
    if kind == "constant":
        s = 0.01 if spec.slope is None else spec.slope
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise SpecError(f"{path}.slope", f"expected a number for {act}'s slope, got {s!r}")
        return act, float(s)
    if kind == "none" and spec.slope is not None:
        owners = " or ".join(a.name for a in ACTIVATIONS.values() if a.slope != "none" and (parameters or a.slope == "constant"))
        raise SpecError(f"{path}.slope", f"'slope' belongs to {owners}, not {act}")
    return act, None

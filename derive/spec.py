"""Load a network spec from TOML (see docs/spec.md) into the validated ``Network`` model.

The loader checks the shape of the TOML document (known keys, value types, required
keys) and leaves the meaning (names, duplicates, shapes, activations, losses) to
``Network`` itself, so the TOML and Python routes reject exactly the same networks.
Every problem is a ``SpecError`` rendered on one line as ``FILE: KEY.PATH: what was
expected``.  Nothing from the file is ever evaluated.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from typing import Any

from derive.errors import SpecError
from derive.limits import Limits
from derive.network import ACTIVATIONS, Conv2d, Flatten, Linear, LocallyConnected, Loss, Network, Port
from derive.tables.optimizers import CONSTANTS, OPTIMIZER_TYPES, Optimizer

TOP_KEYS = ("name", "input", "target", "layers", "loss", "optimizer", "limits")
PORT_KEYS = ("name", "shape")
LAYER_TYPES = ("linear", "conv2d", "locally_connected", "flatten")
LINEAR_KEYS = ("type", "out", "weight", "bias", "activation", "slope", "slope_init")
CONV_KEYS = ("type", "filters", "kernel", "stride", "padding", "weight", "bias", "activation", "slope")
FLATTEN_KEYS = ("type",)
LOSS_KEYS = ("type", "reduction")

_TOML_POSITION = re.compile(r"^(?P<msg>.*) \(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$")


def load_spec(path: str | os.PathLike[str]) -> Network:
    """Read a TOML spec file and return the validated ``Network``."""
    source = str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as err:
        raise SpecError("", f"cannot read spec file: {err.strerror or err}", source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError("", f"invalid TOML: not UTF-8 text (byte {err.start})", source) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        line, col, msg = _toml_error_position(err, text)
        raise SpecError(f"line {line}, column {col}", f"invalid TOML: {msg}", source) from None
    return parse_spec(data, source=source)


def parse_spec(data: dict, source: str = "<dict>") -> Network:
    """Map a parsed TOML document (a plain dict) onto ``Network``."""
    try:
        return _parse(data)
    except SpecError as err:
        raise err.in_file(source) from None


# --------------------------------------------------------------------------- helpers


def _toml_error_position(err: tomllib.TOMLDecodeError, text: str) -> tuple[int, int, str]:
    """(line, column, message) of a TOML syntax error, on any Python >= 3.11."""
    lineno, colno, msg = getattr(err, "lineno", None), getattr(err, "colno", None), getattr(err, "msg", None)
    if isinstance(lineno, int) and isinstance(colno, int) and isinstance(msg, str):
        return lineno, colno, msg  # Python >= 3.14 exposes them
    message = str(err)
    match = _TOML_POSITION.match(message)
    if not match:
        return 1, 1, message
    if match.group("line"):
        return int(match.group("line")), int(match.group("col")), match.group("msg")
    pos = len(text)  # "at end of document"
    return text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos), match.group("msg")


def _show(value: Any) -> str:
    """A value as the user wrote it in TOML (strings quoted as in Python's repr)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, (int, float)):
        return repr(value)
    return f"a {type(value).__name__} ({value})"


def _check_keys(path: str, table: dict, allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            raise SpecError(where, f"unknown key {key!r}; expected one of {', '.join(allowed)}")


def _table(path: str, value: Any, how: str) -> dict:
    if not isinstance(value, dict):
        raise SpecError(path, f"expected a table ({how}), got {_show(value)}")
    return value


def _string(path: str, value: Any, what: str = "a string") -> str:
    if not isinstance(value, str):
        raise SpecError(path, f"expected {what}, got {_show(value)}")
    return value


def _integer(path: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"expected a positive integer, got {_show(value)}")
    return value


def _number(path: str, value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"expected {what}, got {_show(value)}")
    if not math.isfinite(value):
        raise SpecError(path, f"expected a finite number, got {_show(value)}")
    return float(value)


def _shape(path: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) not in ((0, 1, 3) if path == "input.shape" else (0, 1)):
        more = " or [c, h, w] (a volume)" if path == "input.shape" else ""
        raise SpecError(path, f"expected [] (a scalar) or [n] (a vector){more}, got {_show(value)}")
    for n in value:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SpecError(path, f"expected a positive integer size, got {_show(value)}")
    return tuple(value)


# --------------------------------------------------------------------------- the mapping


def _parse(data: Any) -> Network:
    if not isinstance(data, dict):
        raise SpecError("", f"expected a TOML document (a table), got {_show(data)}")
    _check_keys("", data, TOP_KEYS)
    if "name" not in data:
        raise SpecError("name", 'missing required key; expected a string such as name = "lecture"')
    name = _string("name", data["name"])
    input_port = _port("input", data.get("input"), Port("x"))
    target_port = _port("target", data.get("target"), Port("y"))
    if "layers" not in data:
        raise SpecError("layers", "missing required key; expected at least one [[layers]] table")
    layers_value = data["layers"]
    if not isinstance(layers_value, list):
        raise SpecError("layers", f"expected an array of tables ([[layers]]), got {_show(layers_value)}")
    layers = tuple(_layer(f"layers[{i}]", entry) for i, entry in enumerate(layers_value))
    loss = _loss("loss", data["loss"]) if "loss" in data else Loss()
    optimizer = _optimizer("optimizer", data["optimizer"]) if "optimizer" in data else Optimizer()
    lim = _limits("limits", data["limits"]) if "limits" in data else Limits()
    return Network(name, layers=layers, input=input_port, target=target_port, loss=loss, optimizer=optimizer,
                   limits=lim)


def _port(path: str, value: Any, default: Port) -> Port:
    if value is None:
        return default
    table = _table(path, value, f"[{path}]")
    _check_keys(path, table, PORT_KEYS)
    name = _string(f"{path}.name", table["name"]) if "name" in table else default.name
    shape = _shape(f"{path}.shape", table["shape"]) if "shape" in table else default.shape
    return Port(name, shape)


def _layer(path: str, value: Any) -> Linear:
    table = _table(path, value, "a [[layers]] entry")
    if "type" not in table:
        raise SpecError(f"{path}.type", f"missing required key; expected one of {', '.join(LAYER_TYPES)}")
    kind = _string(f"{path}.type", table["type"])
    if kind not in LAYER_TYPES:
        raise SpecError(f"{path}.type", f"expected one of {', '.join(LAYER_TYPES)}, got {_show(kind)}")
    if kind != "linear":
        return _volume_layer(path, kind, table)
    _check_keys(path, table, LINEAR_KEYS)

    kwargs: dict[str, Any] = {}
    if "out" in table:
        kwargs["out"] = _integer(f"{path}.out", table["out"])  # the range is Network's to check
    if "weight" in table:
        kwargs["weight"] = _string(f"{path}.weight", table["weight"], "a name (string)")
    if "bias" in table:
        bias = table["bias"]
        if bias is True:
            pass  # the default name, as if the key were left out
        elif bias is False or isinstance(bias, str):
            kwargs["bias"] = bias
        else:
            raise SpecError(f"{path}.bias", f"expected a name (string) or false, got {_show(bias)}")
    activation = "identity"
    if "activation" in table:
        activation = kwargs["activation"] = _string(f"{path}.activation", table["activation"])
    known = activation in ACTIVATIONS  # an unknown one is reported by Network, listing the known ones
    if "slope" in table:
        slope = table["slope"]
        if known and activation == "leaky_relu":
            kwargs["slope"] = _number(f"{path}.slope", slope, "a number (leaky_relu's negative slope)")
        elif known and activation == "prelu":
            kwargs["slope"] = _string(f"{path}.slope", slope, "a name (string) for prelu's learnable slope")
        elif known:
            raise SpecError(f"{path}.slope", f"'slope' belongs to leaky_relu or prelu, not {activation}")
        else:
            kwargs["slope"] = slope
    if "slope_init" in table:
        if known and activation != "prelu":
            raise SpecError(f"{path}.slope_init", f"'slope_init' belongs to prelu, not {activation}")
        kwargs["slope_init"] = _number(f"{path}.slope_init", table["slope_init"], "a number")
    return Linear(**kwargs)


def _volume_layer(path: str, kind: str, table: dict):
    """conv2d, locally_connected (the same keys) or flatten (no keys but type)."""
    if kind == "flatten":
        _check_keys(path, table, FLATTEN_KEYS)
        return Flatten()
    _check_keys(path, table, CONV_KEYS)
    kwargs: dict[str, Any] = {}
    for key in ("filters", "kernel"):
        if key not in table:
            raise SpecError(f"{path}.{key}", "missing required key; expected a positive integer"
                            + (" or [kh, kw]" if key == "kernel" else ""))
    kwargs["filters"] = _integer(f"{path}.filters", table["filters"])
    kernel = table["kernel"]
    if isinstance(kernel, list):
        if len(kernel) != 2:
            raise SpecError(f"{path}.kernel", f"expected a positive integer or [kh, kw], got {_show(kernel)}")
        kwargs["kernel"] = tuple(_integer(f"{path}.kernel", n) for n in kernel)
    else:
        kwargs["kernel"] = _integer(f"{path}.kernel", kernel)
    for key in ("stride", "padding"):
        if key in table:
            kwargs[key] = _integer(f"{path}.{key}", table[key])  # the range is Network's to check
    if "weight" in table:
        kwargs["weight"] = _string(f"{path}.weight", table["weight"], "a name (string)")
    if "bias" in table:
        bias = table["bias"]
        if bias is False or isinstance(bias, str):
            kwargs["bias"] = bias
        elif bias is not True:
            raise SpecError(f"{path}.bias", f"expected a name (string) or false, got {_show(bias)}")
    if "activation" in table:
        kwargs["activation"] = _string(f"{path}.activation", table["activation"])
    if "slope" in table:
        kwargs["slope"] = _number(f"{path}.slope", table["slope"], "a number (leaky_relu's negative slope)")
    return (Conv2d if kind == "conv2d" else LocallyConnected)(**kwargs)


def _loss(path: str, value: Any) -> Loss:
    table = _table(path, value, "[loss]")
    _check_keys(path, table, LOSS_KEYS)
    kwargs: dict[str, str] = {}
    if "type" in table:
        kwargs["type"] = _string(f"{path}.type", table["type"])
    if "reduction" in table:
        kwargs["reduction"] = _string(f"{path}.reduction", table["reduction"], '"mean" or "sum"')
    return Loss(**kwargs)


def _optimizer(path: str, value: Any) -> Optimizer:
    table = _table(path, value, "[optimizer]")
    kind = _string(f"{path}.type", table.get("type", "sgd"))
    if kind not in OPTIMIZER_TYPES:
        raise SpecError(f"{path}.type", f"expected one of {', '.join(OPTIMIZER_TYPES)}, got {_show(kind)}")
    _check_keys(path, table, ("type", "lr", "schedule", *CONSTANTS[kind]))
    lr = _number(f"{path}.lr", table["lr"], "a positive number") if "lr" in table else None
    schedule = _string(f"{path}.schedule", table.get("schedule", "constant"), '"constant" or "inv_sqrt"')
    constants = {}
    for key in CONSTANTS[kind]:
        if key in table:
            if key == "history":
                constants[key] = _integer(f"{path}.{key}", table[key])
            else:
                constants[key] = _number(f"{path}.{key}", table[key], "a number")
    return Optimizer(kind, lr, schedule, tuple(sorted(constants.items())))


def _limits(path: str, value: Any) -> Limits:
    table = _table(path, value, "[limits]")
    keys = tuple(f.name for f in dataclasses.fields(Limits))
    _check_keys(path, table, keys)
    return Limits(**{k: _integer(f"{path}.{k}", table[k]) for k in keys if k in table})

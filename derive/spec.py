"""Load a network spec from TOML (see docs/spec.md) into the validated ``Network`` model.

The loader checks the shape of the TOML document (known keys, value types, required
keys) and leaves the meaning (names, duplicates, shapes, activations, losses) to
``Network`` itself, so the TOML and Python routes reject exactly the same networks.
Every problem is a ``SpecError`` rendered on one line as ``FILE: KEY.PATH: what was
expected``.  Nothing from the file is ever evaluated.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from typing import Any

from derive.errors import SpecError
from derive.layers import RULES
from derive.layers.checks import integer as _integer
from derive.layers.checks import keys as _check_keys
from derive.layers.checks import number as _number
from derive.layers.checks import show as _show
from derive.layers.checks import string as _string
from derive.layers.checks import table as _table
from derive.limits import Limits
from derive.network import Loss, Network, Port
from derive.tables.optimizers import CONSTANTS, OPTIMIZER_TYPES, Optimizer

TOP_KEYS = ("name", "input", "target", "layers", "loss", "optimizer", "limits")
PORT_KEYS = ("name", "shape")
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


def _layer(path: str, value: Any):
    table = _table(path, value, "a [[layers]] entry")
    if "type" not in table:
        raise SpecError(f"{path}.type", f"missing required key; expected one of {', '.join(RULES)}")
    kind = _string(f"{path}.type", table["type"])
    if kind not in RULES:
        raise SpecError(f"{path}.type", f"expected one of {', '.join(RULES)}, got {_show(kind)}")
    rule = RULES[kind]
    if rule.multi_input:
        _check_keys(path, table, rule.keys)
        if "inputs" not in table:
            raise SpecError(f"{path}.inputs", 'missing required key; expected a list of quantity names such as '
                                              'inputs = ["f1", "f3"]')
        given = table["inputs"]
        if not isinstance(given, list) or len(given) < 2:
            raise SpecError(f"{path}.inputs", f"expected a list of two or more quantity names, got {_show(given)}")
        table = {**table, "inputs": tuple(_string(f"{path}.inputs[{k}]", v, "a quantity name (string)")
                                          for k, v in enumerate(given))}
        return rule.parse(path, table)
    _check_keys(path, table, (*rule.keys, "input"))
    spec = rule.parse(path, table)
    if "input" in table:
        spec = dataclasses.replace(spec, input=_string(f"{path}.input", table["input"], "a quantity name (string)"))
    return spec


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

"""Every named quantity of a derivation at one sample: the numbers beside the symbols (`derive explain --at`).

The quantities (a_l, f_l, the loss, each ∂L/∂f_l, δ_l and gradient) come from the generated NumPy module's
``intermediates``, which is the derivation's own Definitions and Steps lowered line by line; the chain-rule
factors are the derivation's Factor expressions evaluated here with SymPy (numbers substituted for the named
symbols with xreplace, then evalf).  One sample means a batch of one, so the 1/B of the batch mean is 1.

Values on the command line are numbers only: JSON numbers or nested [..] lists (json.loads), never evaluated.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sympy as sp

from derive.checkpoint import load_checkpoint
from derive.errors import DeriveError
from derive.tables.losses import CLASS, LOSS_RULES

ELEMENTWISE_CAP = 256  # factors of wider layers are not evaluated element by element (their δ is shown)
SHOW_CAP = 128  # wider arrays print as shape and norm unless --full (a 10×4704 weight is not a worked example)


@dataclass
class Values:
    """The numbers of one derivation at one sample (no batch axis anywhere)."""

    inputs: dict                 # {input name: array, target name: array}
    params: dict                 # {parameter name: array}
    quantities: dict             # {"a1": .., "f1": .., "L": .., "dL_df3": .., "delta3": .., "dL_dw1": ..}
    factors: dict = field(default_factory=dict)  # {(step name, factor index): array or None}
    params_from: str = ""        # where the parameters came from, for the header

    def get(self, name: str):
        for table in (self.quantities, self.params, self.inputs):
            if name in table:
                return table[name]
        return None


# --------------------------------------------------------------------------- parsing NAME=VALUE


def parse_number(text: str, what: str):
    """A JSON number or nested list of numbers, as a float64 array; nothing else is accepted."""
    try:
        value = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (ValueError, RecursionError):
        raise DeriveError(f"{what}: expected a number or a [..] list of numbers, got {text!r}") from None
    if not _numeric(value):
        raise DeriveError(f"{what}: expected a number or a [..] list of numbers, got {text!r}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except ValueError:
        raise DeriveError(f"{what}: expected a rectangular [..] list, got {text!r}") from None
    if not np.all(np.isfinite(arr)):
        raise DeriveError(f"{what}: expected finite numbers, got {text!r}")
    return arr


def _numeric(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    return isinstance(v, list) and len(v) > 0 and all(_numeric(e) for e in v)


def parse_assignments(tokens: list[str], net, where: str) -> dict:
    """``["x=2", "y=1.9", "w1=0.5"]`` -> {name: array}, each checked against the network's shapes."""
    shapes = {net.input.name: net.input.shape, net.target.name: net.target.shape}
    shapes.update({p.name: p.shape for p in net.params})
    out = {}
    for tok in tokens:
        name, eq, text = tok.partition("=")
        name = name.strip()
        if not eq or not name:
            raise DeriveError(f"{where}: --at: expected NAME=VALUE, got {tok!r}")
        if name not in shapes:
            known = ", ".join(shapes)
            raise DeriveError(f"{where}: --at {name}: expected one of {known}")
        if name in out:
            raise DeriveError(f"{where}: --at {name}: given twice")
        arr = parse_number(text.strip(), f"{where}: --at {name}")
        out[name] = _shaped(arr, shapes[name], f"{where}: --at {name}")
    return out


def _shaped(arr: np.ndarray, shape: tuple, what: str) -> np.ndarray:
    if arr.shape == tuple(shape):
        return arr
    if arr.size == int(np.prod(shape, dtype=np.int64)) and arr.ndim <= 1 and len(shape) <= 1:
        return arr.reshape(shape)
    want = "a number" if shape == () else f"shape {list(shape)}"
    raise DeriveError(f"{what}: expected {want}, got shape {list(arr.shape)}")


def load_params(path: str, net) -> dict:
    """Parameters from a JSON file ({name: number or list}, or `derive train --format json`'s output with its
    "params" key) or from the .npz checkpoint `derive train --checkpoint` writes."""
    p = Path(path)
    if not p.is_file():
        raise DeriveError(f"{path}: --params: no such file")
    if p.suffix == ".npz":
        params = load_checkpoint(p, net)[0]
    else:
        try:
            data = json.loads(p.read_text(encoding="utf-8"),
                              parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        except (ValueError, UnicodeDecodeError):
            raise DeriveError(f"{path}: --params: expected a JSON object of parameters (or a .npz checkpoint)") from None
        if isinstance(data, dict) and isinstance(data.get("params"), dict):
            data = data["params"]
        if not isinstance(data, dict):
            raise DeriveError(f"{path}: --params: expected a JSON object {{name: value}}")
        params = {}
        for k, v in data.items():
            if not _numeric(v):
                raise DeriveError(f"{path}: --params: {k}: expected a number or a [..] list of numbers")
            params[k] = np.asarray(v, dtype=np.float64)
    shapes = {q.name: q.shape for q in net.params}
    for k in params:
        if k not in shapes:
            raise DeriveError(f"{path}: --params: {k}: not a parameter of {net.name} (expected {', '.join(shapes)})")
    return {k: _shaped(np.asarray(v, dtype=np.float64), shapes[k], f"{path}: --params: {k}")
            for k, v in params.items()}


def sample_and_params(net, tokens: list[str], where: str, params_file: str | None = None,
                      seed: int | None = None, init=None) -> tuple[dict, dict, str]:
    """The sample and the parameters for ``--at``: inline values win over --params, which wins over --seed.

    ``init(seed)`` draws parameters (the generated module's init_params); without --params or --seed the
    parameters not given inline are drawn with seed 0, and the header says so.
    """
    given = parse_assignments(tokens, net, where)
    ports = (net.input.name, net.target.name)
    missing = [n for n in ports if n not in given]
    if missing:
        raise DeriveError(f"{where}: --at: expected a value for {' and '.join(missing)} (e.g. --at "
                          f"{net.input.name}=2 {net.target.name}=1)")
    _check_target(net, given[net.target.name], where)
    inline = {k: v for k, v in given.items() if k not in ports}
    names = [p.name for p in net.params]
    base, source = {}, []
    if params_file is not None:
        base = load_params(params_file, net)
        source.append(f"from {params_file}")
    if any(n not in base and n not in inline for n in names):
        s = 0 if seed is None else seed
        drawn = {k: np.asarray(v, dtype=np.float64) for k, v in init(s).items()}
        base = {**drawn, **base}
        source.append(f"drawn with seed {s}")
    if inline:
        source.append("given: " + ", ".join(inline))
    params = {n: inline.get(n, base.get(n)) for n in names}
    sample = {n: given[n] for n in ports}
    return sample, params, "; ".join(source)


def _check_target(net, y: np.ndarray, where: str) -> None:
    if LOSS_RULES[net.loss.type].target == CLASS:
        classes = net.output_shape[0] if net.output_shape else 1
        v = float(y)
        if v != int(v) or not 0 <= v < classes:
            raise DeriveError(f"{where}: --at {net.target.name}: expected a class index 0..{classes - 1}, got {v:g}")


# --------------------------------------------------------------------------- evaluation


def evaluate(der, sample: dict, params: dict, npm=None, source: str = "<spec>") -> Values:
    """Every named quantity of ``der`` at one sample (batch of one) with ``params``."""
    net = der.network
    if npm is None:
        from derive.targets.modules import generated_modules

        with generated_modules(net, source, ("numpy",)) as mods:
            return evaluate(der, sample, params, mods["numpy"], source)
    x = np.asarray(sample[net.input.name], dtype=np.float64)[None]
    yv = np.asarray(sample[net.target.name], dtype=np.float64)
    y = (yv.astype(np.int64) if LOSS_RULES[net.loss.type].target == CLASS else yv)[None]
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    inter = npm.intermediates(p, x, y)
    batched = {d.name for d in der.forward} | {"loss_per_sample"} | {s.name for s in der.backward if s.kind != "param"}
    quantities = {}
    for name, value in inter.items():
        value = np.asarray(value, dtype=np.float64)
        quantities["L" if name == "loss_per_sample" else name] = value[0] if name in batched else value
    values = Values({net.input.name: x[0], net.target.name: yv}, p, quantities)
    for step in der.backward:
        for i, factor in enumerate(step.factors):
            values.factors[(step.name, i)] = _factor_value(der, step, factor, values)
    return values


def at_sample(der, tokens: list[str], where: str, params_file: str | None = None, seed: int | None = None) -> Values:
    """`--at NAME=VALUE …` (with --params / --seed) -> the Values of every quantity: what explain and draw show."""
    from derive.targets.modules import generated_modules

    net = der.network
    with generated_modules(net, where, ("numpy",)) as mods:
        npm = mods["numpy"]
        sample, params, origin = sample_and_params(net, tokens, where, params_file, seed, npm.init_params)
        values = evaluate(der, sample, params, npm, where)
    values.params_from = origin
    return values


def _factor_value(der, step, factor, values: Values):
    """The factor's expression at the sample, element by element over the step's own indices."""
    if factor.reused:  # ∂L/∂f_l and δ_l re-used: the value of the quantity computed above
        return values.get(factor.name.replace("dL/d", "dL_d")) if factor.numerator == "L" else None
    expr = factor.value
    lhs_idx = tuple(getattr(step.lhs, "indices", ()))
    free = {s for s in expr.free_symbols if s.is_integer and not _is_port(der, s)}
    if expr.has(sp.Sum) or not free <= set(lhs_idx):
        return None  # a Jacobian (W3[i, j], f2[k]·[i = j]): its entries are quantities shown elsewhere
    shape = step.shape
    if lhs_idx and (len(shape) != len(lhs_idx) or int(np.prod(shape)) > ELEMENTWISE_CAP):
        return None
    env = _env(der, values)
    try:
        if not lhs_idx:
            return _number(expr, env)
        out = np.empty(shape)
        for pos in np.ndindex(*shape):
            out[pos] = _number(expr.xreplace(dict(zip(lhs_idx, map(sp.Integer, pos)))), env)
        return out
    except (ValueError, TypeError, IndexError):
        return None  # a function of a whole vector (softmax(f3)[j]): its value is the step's, shown there


def _is_port(der, s) -> bool:
    return s.name == der.network.target.name  # a class-index target is an integer symbol, not an index


def _env(der, values: Values) -> dict:
    env = {}
    for name, s in der.symbols.items():
        v = values.get(name)
        if v is not None:
            env[s] = v
    return env


def _number(expr: sp.Expr, env: dict) -> float:
    """Substitute the numbers for every named symbol (Indexed entries one by one) and evaluate."""
    sub = {}
    for atom in expr.atoms(sp.Indexed):
        arr = env.get(atom.base)
        if arr is not None:
            sub[atom] = sp.Float(float(arr[tuple(int(i) for i in atom.indices)]))
    for atom in expr.free_symbols:
        if atom in env and not isinstance(atom, sp.Indexed) and np.ndim(env[atom]) == 0:
            sub[atom] = sp.Float(float(env[atom]))
    result = expr.xreplace(sub).doit().evalf()
    try:
        return float(result)
    except TypeError:
        raise ValueError(f"could not evaluate {expr} at the sample (left {result})") from None


# --------------------------------------------------------------------------- text


def fmt(v) -> str:
    """4 significant digits, the way a student writes numbers on the board."""
    v = float(v)
    if v == 0:
        return "0"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.4g}"


def show(value, volume: bool = False, full: bool = False) -> str:
    """A number, an array, or for a volume (unless ``full``) its shape and norm."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return fmt(arr)
    if (volume or arr.size > SHOW_CAP) and not full:
        return f"shape {'×'.join(map(str, arr.shape))}, ‖·‖ = {fmt(np.linalg.norm(arr))}, max |·| = {fmt(np.max(np.abs(arr)))}"
    return np.array2string(arr, precision=4, separator=", ", threshold=10**6, max_line_width=110,
                           formatter={"float_kind": fmt}).replace("\n", "\n      ")


def _numbers_printer():
    from derive.display import TextPrinter

    class NumbersPrinter(TextPrinter):
        """The text printer with each scalar symbol printed as its value: -(1.9 - 0.731)·0.731·0.269."""

        def __init__(self, env: dict):
            super().__init__()
            self.env = env

        def _print_Symbol(self, expr):
            if expr in self.env:
                s = fmt(self.env[expr])
                return f"({s})" if s.startswith("-") else s
            return super()._print_Symbol(expr)

    return NumbersPrinter


def substituted(expr: sp.Expr, der, values: Values) -> str | None:
    """``expr`` with numbers in place of its scalar symbols, unevaluated; None if anything is not a scalar."""
    env = {s: float(v) for s, v in _env(der, values).items() if isinstance(s, sp.Symbol) and np.ndim(v) == 0}
    if expr.atoms(sp.Indexed) or not expr.free_symbols <= set(env):
        return None
    if isinstance(expr, sp.Symbol) or expr.is_Number:
        return None  # "w3 = -0.9669" says it already
    with sp.core.parameters.distribute(False):
        out = _numbers_printer()(env).doprint(expr)
    return _DOUBLE.sub(r"(\1)", out)  # σ(-0.4791), not σ((-0.4791))


_DOUBLE = re.compile(r"\(\((-[0-9.e+-]+)\)\)")


def shown(der, step) -> sp.Expr:
    """A scalar step as the product of its chain in chain order (-(y - f3)·f3·(1 - f3), δ3·w3·f2·(1 - f2)),
    the way `derive explain` writes it; a vector step as derived."""
    if step.terms:  # a sum over paths: each path's term as it is shown
        return sp.Add(*(shown(der, t) for t in der.paths(step)), evaluate=False)
    if der.network.vector:
        return step.expression
    return _chain_product([der.symbols.get(f.name, f.value) if f.is_delta else f.value for f in step.factors])


def _chain_product(values) -> sp.Expr:
    """An unevaluated product in chain order, a leading minus pulled to the front (−(y − f3)·f3·…)."""
    vals = [v for v in values if v != 1] or [sp.S.One]
    if len(vals) == 1:
        return vals[0]
    flat, sign = [], 1
    for v in vals:
        if isinstance(v, sp.Mul) and v.args[0] == -1:
            sign, v = -sign, sp.Mul(*v.args[1:], evaluate=False)
        flat.extend(v.args if isinstance(v, sp.Mul) and not v.args[0].is_Number else [v])
    if sign < 0:
        flat.insert(0, sp.S.NegativeOne)
    return sp.Mul(*flat, evaluate=False)


def _header(net) -> list[str]:
    shape = lambda s: "scalar" if s == () else "×".join(map(str, s))
    return [f"Network {net.name}: input {net.input.name} ({shape(net.input.shape)}), target {net.target.name} "
            f"({shape(net.target.shape)}), loss {net.loss.type} ({net.loss.reduction} over the batch)", ""]


def _text(expr) -> str:
    from derive.display import text

    return text(expr)


def _volume_layers(net) -> set[int]:
    return {li.index for li in net.info if len(li.out_shape) == 3}


_MINUS = re.compile(r"(?<![0-9]e)-")  # every minus but a float's exponent (1e-08), as explain's text has it


def minus(s: str) -> str:
    """The typographic minus of the symbolic lines (notation.text) in numbers too: −0.4604, (1.9 − 0.4086)."""
    return _MINUS.sub("−", s)


def to_text(der, values: Values, full: bool = False, param: str | None = None) -> str:
    """The derivation with every quantity's number beside its symbol (``derive explain --at``)."""
    from derive.display import factor_name, text_name

    net = der.network
    vol = _volume_layers(net)
    scalar = all(np.ndim(v) == 0 for v in values.quantities.values())
    inp = ", ".join(f"{k} = {minus(show(v, len(net.input.shape) == 3 and k == net.input.name, full))}"
                    for k, v in values.inputs.items())
    out = _header(net)
    out += [f"At the sample {inp} (one sample: the batch mean's 1/B is 1)", "",
            f"Parameters ({values.params_from})" if values.params_from else "Parameters"]
    layer_of = {p: li.index for li in net.info for p in (li.weight, li.bias, li.slope_param) if p}
    for name, v in values.params.items():
        out.append(f"  {name} = {minus(show(v, layer_of.get(name) in vol, full))}")
    out += ["", "Forward pass"]

    def line(lhs: str, expr, value, volume: bool, indent: str = "  ") -> str:
        parts = [lhs, _text(expr)]
        sub = substituted(expr, der, values) if scalar else None
        if sub is not None and sub != parts[-1] and sub != fmt(value):
            parts.append(sub)
        val = show(value, volume, full)
        if not scalar or val != parts[-1]:
            parts.append(val)
        return indent + " = ".join(minus(p) for p in parts)

    for d in der.forward:
        out.append(line(_text(d.lhs), d.rhs, values.get(d.name), d.layer in vol))
    out += ["", "Loss (per sample)", line("L", der.loss.rhs, values.get("L"), False), "",
            "Backward pass: each δ is computed once and re-used below"]
    in_sum = {t for s in der.backward for t in s.terms}  # a path's term: shown inside its sum
    for s in der.backward:
        if s.kind == "param" or s.name in in_sum:
            continue
        v = values.get(s.name)
        if v is None:
            continue
        volume = s.layer in vol
        if s.terms:
            paths = " + ".join(" · ".join(factor_name(f.name) for f in t.factors) for t in der.paths(s))
            out.append(f"  {_text(s.lhs)} = {paths}  ({der.paths_note(s)})")
            out.append(line("  " + _text(s.lhs), shown(der, s), v, volume))
            continue
        if s.kind != "delta":
            out.append(line(_text(s.lhs), shown(der, s), v, volume))
            continue
        out.append(f"  {_text(s.lhs)} = " + " · ".join(factor_name(f.name) for f in s.factors))
        for i, f in enumerate(s.factors):
            fv = values.factors.get((s.name, i))
            label = factor_name(f.name)
            if f.reused:
                note = "computed above" if f.numerator == "L" else "re-used from above"
                out.append(f"      {label} = {minus(show(fv, volume, full))}  ({note})" if fv is not None
                           else f"      {label}  ({note})")
            elif fv is not None:
                out.append(line(f"    {label}", f.value, fv, volume))
            else:
                out.append(f"      {label} = {_text(f.value)}")
        out.append(line(f"  {_text(s.lhs)}", shown(der, s), v, volume))
    out += ["", "Gradients"]
    for s in der.gradients:
        if param is not None and s.param != param:
            continue
        out.append(line(f"  ∂L/∂{text_name(s.param)}", shown(der, s), values.get(s.name), s.layer in vol, ""))
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- JSON


def _jsonable(v):
    return None if v is None else np.asarray(v, dtype=np.float64).tolist()


def values_dict(der, values: Values) -> dict:
    """{"at": the sample, "params": .., "values": {name: number or nested list}, "factors": {step: [..]}}."""
    factors = {}
    for s in der.backward:
        factors[s.name] = [{"factor": f.name, "value": _jsonable(values.factors.get((s.name, i)))}
                           for i, f in enumerate(s.factors)]
    return {
        "at": {k: _jsonable(v) for k, v in values.inputs.items()},
        "params": {k: _jsonable(v) for k, v in values.params.items()},
        "params_from": values.params_from,
        "values": {k: _jsonable(v) for k, v in values.quantities.items()},
        "factor_values": factors,
    }


def annotate(doc: dict, der, values: Values) -> dict:
    """`derive explain --format json`'s document with "value" added under each step it names (forward entries,
    deltas, parameters, the loss), "factor_values" beside each chain, and the whole table under "at_sample"."""
    table = values_dict(der, values)

    def visit(node):
        if isinstance(node, dict):
            name = node.get("name")
            key = name if isinstance(name, str) and name in values.quantities else None
            if key is None and isinstance(node.get("element"), str) and node["element"] in values.quantities:
                key = node["element"]
            if key is not None and "value" not in node:
                node["value"] = _jsonable(values.quantities[key])
                if key in table["factor_values"] and "chain" in node:
                    node["factor_values"] = table["factor_values"][key]
            for v in list(node.values()):
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(doc)
    if isinstance(doc.get("loss"), dict):
        doc["loss"]["value"] = _jsonable(values.quantities.get("L"))
    doc["at_sample"] = table
    return doc

"""What the templates of every target share: the Jinja environment and the module-level context.

Templates receive only strings and plain lists: all math, naming and printing happen in Python.
"""

from __future__ import annotations

import math
from pathlib import Path

import jinja2

from derive.ir.nodes import KernelIR


def template_dir() -> Path:
    """templates/ beside the package (editable install, source tree) or inside it (wheel)."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "templates", package.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("derive: templates/ not found next to or inside the package")


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _init_expr(name: str, shape: tuple, role_fan_in: int, slope_init: float | None) -> str:
    if slope_init is not None:
        return f"np.full({shape!r}, {slope_init!r}, dtype=dtype)"
    bound = 1.0 / math.sqrt(role_fan_in)
    return f"np.asarray(rng.uniform({-bound!r}, {bound!r}, size={shape!r}), dtype=dtype)"


def _params_ctx(ir: KernelIR) -> list[dict]:
    fan = dict(ir.fan_ins)
    slopes = dict(ir.slope_inits)
    return [
        {"name": p.name, "shape": repr(p.shape), "init": _init_expr(p.name, p.shape, fan[p.name], slopes.get(p.name))}
        for p in ir.params
    ]


def _batch_shape(shape: tuple) -> str:
    """(batch,) or (batch, 4): a per-sample shape with the batch axis in front, for docstrings."""
    return "(" + ", ".join(["batch", *map(str, shape)]) + ("," if not shape else "") + ")"


def _common(ir: KernelIR, out_dir: str) -> dict:
    return {
        "optimizer": ir.optimizer,
        "schedule": ir.schedule,
        "hyper": [{"name": k, "value": repr(v)} for k, v in ir.hyper],
        "state": list(ir.state),
        "has_update": bool(ir.updates),
        "name": ir.name,
        "source": ir.source,
        "out_dir": out_dir,
        "params": _params_ctx(ir),
        "loss_type": ir.loss_type,
        "reduction": ir.reduction,
        "x": ir.input.name,
        "y": ir.target.name,
        "input_shape": repr(list(ir.input.shape)),
        "x_doc": _batch_shape(ir.input.shape),
        "y_doc": _batch_shape(ir.target.shape),
        "target_shape": repr(list(ir.target.shape)),
        "class_target": ir.target.dtype == "int",
    }

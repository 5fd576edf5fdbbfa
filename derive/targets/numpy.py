"""KernelIR -> the readable NumPy reference module."""

from __future__ import annotations

import re

from derive.ir.nodes import KernelIR
from derive.targets.common import _common, _env
from derive.targets.numpy_printer import NumpyCodePrinter


def render_numpy(ir: KernelIR, out_dir: str = "generated") -> str:
    pr = NumpyCodePrinter()
    line = lambda a: {"lhs": a.name, "rhs": pr.doprint(a.expr), "comment": a.comment}
    ctx = _common(ir, out_dir)
    ctx.update(
        forward=[line(a) for a in ir.forward],
        output=pr.doprint(ir.output.expr),
        loss_rhs=pr.doprint(ir.loss.expr),
        backward=[line(a) for a in ir.backward],
        grads=[{"param": p, "value": g} for p, g in ir.grads_by_param()],
        reduce="np.mean" if ir.reduction == "mean" else "np.sum",
        scale=f"1.0 / {ir.input.name}.shape[0]" if ir.reduction == "mean" else "1.0",
        forward_names=[a.name for a in ir.forward],
        # every named quantity of the derivation (not the t1, t2, … that CSE introduced)
        named=[a.name for a in ir.forward] + ["loss_per_sample"]
        + [a.name for a in ir.backward if a.comment != "shared subexpression"],
    )
    # intermediates() binds only the parameters its backward lines and its loss read (the forward pass
    # reads them from params itself)
    read = " ".join([ctx["loss_rhs"], *(b["rhs"] for b in ctx["backward"])])
    ctx["inter_params"] = [p for p in ir.params if re.search(rf"\b{re.escape(p.name)}\b", read)]
    ctx["scalars"] = [line(a) for a in ir.update_scalars]
    ctx["updates"] = [line(a) for a in ir.updates]
    ctx["helpers"] = pr.helper_sources()
    ctx["imports"] = ["import numpy as np"]
    return _env().get_template("numpy_module.py.jinja").render(**ctx)

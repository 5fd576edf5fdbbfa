"""KernelIR -> source files, one renderer per target (numpy.py, triton.py, torch.py).

Output is deterministic (sorted helpers, no ids or timestamps), so regenerating gives
byte-identical files, and files are written atomically.
"""

from __future__ import annotations

from pathlib import Path

from derive import fsutil
from derive.derivation.engine import derive
from derive.ir.lowering import lower
from derive.network import Network
from derive.targets.common import template_dir  # noqa: F401 (re-exported: tests and the wheel check use it)
from derive.targets.numpy import render_numpy
from derive.targets.torch import render_torch
from derive.targets import triton
from derive.targets.triton_planner import render_triton
from derive.targets.wrap import wrap

TARGETS = ("numpy", "triton", "torch")

RENDERERS = {"numpy": render_numpy, "triton": render_triton, "torch": render_torch}


# Why a target refuses a network it cannot generate yet (None: it takes it).
REFUSALS = {"triton": triton.refusal}


def generate(net: Network, source: str, targets=TARGETS, out_dir: str = "generated",
             skipped: dict | None = None) -> dict[str, str]:
    """file name -> source text, for each target.

    With ``skipped`` (a dict), a target that refuses the network is left out and its reason
    recorded there; without it, the refusal is the target's error.
    """
    ir = lower(derive(net), source)
    if skipped is not None:
        for t in targets:
            reason = REFUSALS[t](ir) if t in REFUSALS else None
            if reason:
                skipped[f"{net.name}_{t}.py"] = reason
        targets = [t for t in targets if f"{net.name}_{t}.py" not in skipped]
    # every target's text folded to 100 columns by one pass (derive.targets.wrap), not by each printer
    return {f"{net.name}_{t}.py": wrap(RENDERERS[t](ir, out_dir)) for t in targets}


def write_atomic(directory: Path, files: dict[str, str]) -> list[Path]:
    """Write each file atomically (derive.fsutil); every file is rendered before any is written."""
    written = []
    for fname, text in files.items():
        fsutil.write_atomic(directory / fname, lambda fh, text=text: fh.write(text), binary=False)
        written.append(directory / fname)
    return written

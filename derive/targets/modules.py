"""Import generated modules from a private temporary directory.

Triton's @jit reads a kernel's source file, so generated code must live in a real
file while it is used; the directory is removed when the context ends.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from derive.targets import codegen
from derive.network import Network


def triton_device() -> str | None:
    """'cuda' on a GPU, 'cpu' under the Triton interpreter, None without torch or triton.

    Without CUDA, TRITON_INTERPRET=1 is set before triton is first imported (it is read
    at import time).
    """
    try:
        import torch
    except ImportError:
        return None
    if "triton" not in sys.modules and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        import triton  # noqa: F401
    except ImportError:
        return None
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


def import_file(path: Path, module_name: str):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and triton look modules up by name
    spec.loader.exec_module(module)
    return module


@contextmanager
def generated_modules(net: Network, source: str, targets=("numpy", "triton"), skipped: dict | None = None):
    """Yield {target: module} for freshly generated code (with ``skipped``, a target that refuses the
    network is left out and its reason recorded there, keyed by the target)."""
    if "triton" in targets:
        triton_device()  # the interpreter must be chosen before triton is imported
    refused: dict[str, str] = {}
    files = codegen.generate(net, source, targets, skipped=refused if skipped is not None else None)
    for t in targets:
        if f"{net.name}_{t}.py" in refused:
            skipped[t] = refused[f"{net.name}_{t}.py"]
    targets = [t for t in targets if f"{net.name}_{t}.py" in files]
    with tempfile.TemporaryDirectory(prefix="derive-") as tmp:
        mods = {}
        try:
            for target, (fname, text) in zip(targets, files.items()):
                path = Path(tmp) / fname
                path.write_text(text, encoding="utf-8")
                mods[target] = import_file(path, f"_derive_generated_{Path(tmp).name}_{fname[:-3]}")
            yield mods
        finally:
            for m in mods.values():
                sys.modules.pop(m.__name__, None)

"""Stages in order: each stage of derive imports only itself and the stages before it (docs/architecture.md).

Every import inside the package is read from the source (module level and inside functions: a lazy
import is still a dependency).  There are no exceptions: an import of a later stage, or a circle, fails.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "derive"

# In order.  ir/nodes.py is the IR's vocabulary (frozen records and SymPy node classes, importing nothing of
# derive): the layer rules lower to it, so it sits with the base modules; ir/lowering.py is the ir stage.
STAGES = [
    ("base", ["derive.errors", "derive.version", "derive.names", "derive.fsutil", "derive.indices", "derive.display",
              "derive.ir.nodes"]),
    ("tables", ["derive.tables"]),
    ("layers", ["derive.layers"]),
    ("network", ["derive.limits", "derive.network", "derive.spec", "derive.builtin", "derive.checkpoint"]),
    ("derivation", ["derive.derivation"]),
    ("ir", ["derive.ir"]),
    ("targets", ["derive.targets"]),
    ("explain", ["derive.explain", "derive.evaluate"]),
    ("verify", ["derive.verify"]),
    ("train", ["derive.train"]),
    ("inspect", ["derive.inspect"]),
    ("testing", ["derive.testing"]),
    ("cli", ["derive.cli", "derive.__main__", "derive"]),
]


def _modules() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        name = ".".join(p.relative_to(ROOT.parent).with_suffix("").parts)
        mods[name[:-9] if name.endswith(".__init__") else name] = p
    return mods


def _edges() -> set[tuple[str, str]]:
    mods = _modules()
    out = set()
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    cand = f"{node.module}.{a.name}"
                    target = cand if cand in mods else node.module
                    if target in mods and target != m:
                        out.add((m, target))
            elif isinstance(node, ast.Import):
                out |= {(m, a.name) for a in node.names if a.name in mods and a.name != m}
    return out


def _stage(module: str) -> int:
    best = None
    for k, (_, prefixes) in enumerate(STAGES):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (k, len(p))
    assert best is not None, f"{module} is in no stage: add it to STAGES"
    return best[0]


def test_every_module_has_a_stage():
    for m in _modules():
        _stage(m)


def test_each_stage_imports_only_the_stages_before_it():
    backward = sorted((a, b) for a, b in _edges() if _stage(b) > _stage(a))
    assert not backward, "imports of a later stage: " + ", ".join(f"{a} -> {b}" for a, b in backward)


def test_no_import_circles():
    graph = defaultdict(set)
    for a, b in _edges():
        graph[a].add(b)
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(comp)

    for v in sorted(set(graph) | {b for bs in graph.values() for b in bs}):
        if v not in index:
            visit(v)
    assert not cycles, "import circles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def test_ir_does_not_import_explain():
    """The generated code's comment text comes from derive.display, not from the explain stage."""
    assert not [b for a, b in _edges() if a.startswith("derive.ir") and b.startswith("derive.explain")]

"""A kind is owned by its rule or its table entry: each "how to add" list in docs/architecture.md names
every file that an existing activation, loss or layer kind is written in.

A file names a kind where its code holds the kind's name as a string (``"conv2d"``, ``'hinge'``; not in a
docstring or a comment) or, for a layer kind, imports the module of its rule.  Every file that names one
of the package's kinds must be on that sort's list, so a new module that switches on a kind's name
(``if layer.kind == "conv2d"``, a dict keyed by kind names) fails here until it moves onto the rule or
the table entry, or the list (and the cost-of-change table beside it) says it is one more place.
"""

from __future__ import annotations

import ast
import inspect
import re
from functools import lru_cache
from pathlib import Path

import pytest
import sympy as sp

from derive.layers import RULES
from derive.tables import functions
from derive.tables.activations import ACTIVATIONS
from derive.tables.losses import LOSS_RULES

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"

# Files that hold a kind's name without being a place a new kind is written in, each with the reason.
EXAMPLES = {"derive/builtin.py": "the lecture's example network, written out as a spec would be"}
OTHER_MEANING = {("linear", "derive/train/plots.py"): "matplotlib's linear axis scale"}


def _sources() -> list[Path]:
    return sorted((ROOT / "derive").rglob("*.py")) + sorted((ROOT / "templates").rglob("*.jinja"))


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


@lru_cache(maxsize=None)
def _tree(path: Path):
    return ast.parse(path.read_text(encoding="utf-8"))


def _docstrings(tree) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _strings_in(path: Path, name: str) -> bool:
    if path.suffix != ".py":
        return re.search(rf"[\"']{re.escape(name)}[\"']", path.read_text(encoding="utf-8")) is not None
    tree = _tree(path)
    skip = _docstrings(tree)
    return any(isinstance(n, ast.Constant) and n.value == name and id(n) not in skip for n in ast.walk(tree))


def _imports(path: Path, module: str) -> bool:
    if path.suffix != ".py":
        return False
    package, _, leaf = module.rpartition(".")
    for n in ast.walk(_tree(path)):
        if isinstance(n, ast.ImportFrom) and (n.module == module or (n.module == package and any(
                a.name == leaf for a in n.names))):
            return True
        if isinstance(n, ast.Import) and any(a.name == module for a in n.names):
            return True
    return False


def files_naming(name: str, rule_module: str | None = None) -> set[str]:
    """The files under derive/ and templates/ that hold ``name`` as a string, or import ``rule_module``."""
    own = None if rule_module is None else ROOT / (rule_module.replace(".", "/") + ".py")
    return {_rel(p) for p in _sources()
            if _strings_in(p, name) or (own is not None and p != own and _imports(p, rule_module))}


def _section(title: str) -> str:
    """The numbered list under the bold ``title`` in docs/architecture.md's "How to add" section."""
    text = DOC.read_text(encoding="utf-8")
    m = re.search(rf"^\*\*{re.escape(title)}\*\*.*?\n((?:\d+\. .*\n)+)", text, re.M)
    assert m, f"docs/architecture.md has no list under **{title}**"
    return m.group(1)


def _listed(title: str, kind_module: str | None = None) -> set[str]:
    out = set()
    for path in re.findall(r"`([\w./<>-]+\.(?:py|jinja))`", _section(title)):
        if "<kind>" in path:
            assert kind_module is not None, path
            out.add(kind_module)
            continue
        out.add(path if path.startswith(("derive/", "templates/")) else f"derive/{path}")
    return out


def _unlisted(name: str, listed: set[str], rule_module: str | None = None) -> set[str]:
    return {f for f in files_naming(name, rule_module) - listed - set(EXAMPLES) if (name, f) not in OTHER_MEANING}


@pytest.mark.parametrize("title", ["An activation", "A loss", "A layer kind"])
def test_every_listed_file_exists(title):
    missing = sorted(f for f in _listed(title, "derive/layers/linear.py") if not (ROOT / f).is_file())
    assert not missing, f"docs/architecture.md, **{title}**: no such file: {missing}"


@pytest.mark.parametrize("kind", sorted(RULES))
def test_a_layer_kind_is_written_only_where_the_list_says(kind):
    module = type(RULES[kind]).__module__
    listed = _listed("A layer kind", _rel(Path(inspect.getsourcefile(type(RULES[kind])))))
    extra = _unlisted(kind, listed, module)
    assert not extra, (f"{sorted(extra)} name the layer kind {kind!r}: move what they know onto its rule ({module}), "
                       "or add them to docs/architecture.md's list for a layer kind")


def _cost_table() -> list[tuple[str, int]]:
    """(kind, files after) for every kind docs/architecture.md's cost-of-change table measures."""
    text = DOC.read_text(encoding="utf-8")
    head = text.index("| change | measured with |")
    rows = []
    for line in text[head:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        kinds, after = re.findall(r"`(\w+)`", cells[1]), [int(n) for n in re.findall(r"\d+", cells[4])]
        assert len(kinds) == len(after), f"docs/architecture.md, cost-of-change row {cells[0]!r}: one count per kind"
        rows += zip(kinds, after)
    return rows


def test_the_cost_of_change_table_holds():
    """The table's "files after" is what files_naming counts today, for every kind it names."""
    rows = _cost_table()
    assert {"add", "concat", "conv2d", "max_pool2d", "sigmoid", "cross_entropy"} <= {k for k, _ in rows}
    wrong = []
    for kind, after in rows:
        module = type(RULES[kind]).__module__ if kind in RULES else None
        found = files_naming(kind, module)
        if len(found) != after:
            wrong.append(f"{kind}: the table says {after}, the grep finds {len(found)} ({sorted(found)})")
    assert not wrong, "docs/architecture.md's cost-of-change table is out of date: " + "; ".join(wrong)


def test_a_layer_kind_is_its_rule_file_and_its_reference():
    """Issue 23's goal for a layer kind, held for every existing one: its name is written in its rule's module
    and the independent torch reference only (the Triton emitters find its IR nodes by class)."""
    for kind, rule in RULES.items():
        own = _rel(Path(inspect.getsourcefile(type(rule))))
        extra = _unlisted(kind, {own, "derive/verify/reference.py"}, type(rule).__module__)
        assert not extra, f"{kind!r} is also written in {sorted(extra)}"


def _own_function(name: str) -> bool:
    f = getattr(functions, name, None)
    return isinstance(f, type) and issubclass(f, sp.Function)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_an_activation_is_written_only_where_the_list_says(name):
    listed = _listed("An activation")
    if not _own_function(name):  # step 3 is only for an activation with its own SymPy function
        listed = {f for f in listed if f in ("derive/tables/activations.py", "derive/verify/reference.py")}
    extra = _unlisted(name, listed)
    assert not extra, (f"{sorted(extra)} name the activation {name!r}: move what they know onto its table entry "
                       "(derive/tables/activations.py), or add them to docs/architecture.md's list for an activation")


@pytest.mark.parametrize("name", sorted(LOSS_RULES))
def test_a_loss_is_written_only_where_the_list_says(name):
    listed = {f for f in _listed("A loss") if f in ("derive/tables/losses.py", "derive/verify/reference.py")}
    extra = _unlisted(name, listed)
    assert not extra, (f"{sorted(extra)} name the loss {name!r}: move what they know onto its table entry "
                       "(derive/tables/losses.py), or add them to docs/architecture.md's list for a loss")


def test_a_switch_on_a_kind_name_is_found(tmp_path, monkeypatch):
    """The grep sees a kind name in code, and not in a docstring: a planted switch in a new module is found."""
    planted = tmp_path / "derive" / "planted.py"
    planted.parent.mkdir()
    planted.write_text('"""Mentions max_pool2d and "max_pool2d" in prose only."""\n\n\n'
                       'def cost(layer):\n    return 2 if layer.kind == "max_pool2d" else 1\n', encoding="utf-8")
    prose = tmp_path / "derive" / "prose.py"
    prose.write_text('"""A "max_pool2d" layer."""\n# if layer.kind == "max_pool2d"\n', encoding="utf-8")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert files_naming("max_pool2d") == {"derive/planted.py"}


def test_every_helper_of_the_generated_code_is_refused_as_a_spec_name():
    """A helper's name is declared where its kind is (a rule's, a SymPy function's or a loss's ``helpers``), not
    in a list in names.py: each helper the NumPy, torch and Triton code can define must be one of them."""
    from derive.network import HELPERS
    from derive.names import RESERVED
    from derive.targets.numpy_printer import NumpyCodePrinter
    from derive.targets.torch_printer import TorchCodePrinter
    from derive.targets.triton_layers import HELPERS as TRITON_LAYER_HELPERS
    from derive.targets.triton_printer import TRITON_HELPERS

    defined = NumpyCodePrinter().known() | TorchCodePrinter().known() | set(TRITON_HELPERS) | set(TRITON_LAYER_HELPERS)
    free = sorted(h for h in defined if not h.startswith("_") and h not in HELPERS | RESERVED)
    assert not free, f"helpers a spec name may take: {free} (give them to their rule's, function's or loss's helpers)"


def test_a_helper_of_the_numpy_and_torch_code_is_written_once():
    """Each helper's source is one text with the rule or table entry that owns it, over xp. and the array
    primitives (tables/arrays.py): each target writes only the primitives, and torch its few helpers for
    speed.  A torch helper that shadows a shared one must be the one documented exception, softmax."""
    from derive.tables.arrays import PRIMITIVES
    from derive.targets.numpy_printer import OWNED, NumpyCodePrinter
    from derive.targets.torch_printer import TorchCodePrinter

    numpy, torch = NumpyCodePrinter(), TorchCodePrinter()
    assert set(numpy.primitives) == set(torch.primitives) == set(PRIMITIVES)
    assert not numpy.own
    assert set(torch.own) & set(OWNED) == {"softmax"}, "a torch helper written twice: say why, or write it once"
    assert not set(PRIMITIVES) & set(OWNED)
    for name in OWNED:  # the same text in both libraries, up to the library's name
        assert numpy.source(name).replace("np.", "xp.") == OWNED[name].replace("np.", "xp.")
        if name not in torch.own:
            assert torch.source(name).replace("torch.", "xp.") == OWNED[name].replace("torch.", "xp.")

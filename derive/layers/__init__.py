"""The layer-rule registry: one rule per layer kind, each in its own module.

A rule owns its spec keys and parsing, its ``Layer`` record, its forward definitions and local
partials, its lowering to the kernel IR, its description, its torch.nn equivalent, its eager cost
and its float32 rounding (see base.py).  Every stage looks the rule up here by ``layer.kind``;
adding a kind is one module here, found without a list (and the few other places docs/architecture.md
lists, which tests/test_ownership.py holds to).
"""

from __future__ import annotations

import importlib
import pkgutil

from derive.errors import DerivationError
from derive.layers.base import Layer, LayerRule, Param

_NOT_RULES = ("base", "checks")  # the modules here that every rule shares


def _rules_in(name: str) -> list[LayerRule]:
    """The rules a module of this package defines: each LayerRule instance of a class it defines, in order."""
    module = importlib.import_module(f"{__name__}.{name}")
    return [v for v in vars(module).values() if isinstance(v, LayerRule) and type(v).__module__ == module.__name__]


# Every rule of every module here, found by its module being here (in module name order): a new kind's
# module registers its rules by defining them, with no list to add it to.
RULES: dict[str, LayerRule] = {
    rule.kind: rule for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_RULES for rule in _rules_in(m.name)
}


def rule_for(layer) -> LayerRule:
    """The rule of a Layer record or a layer spec; an unknown kind is a loud, typed error naming it."""
    kind = getattr(layer, "kind", None)
    try:
        return RULES[kind]
    except KeyError:
        where = f"layer {layer.index}" if isinstance(layer, Layer) else type(layer).__name__
        raise DerivationError(f"{where}: no layer rule for kind {kind!r}; known: {', '.join(RULES)}") from None


__all__ = ["Layer", "LayerRule", "Param", "RULES", "rule_for"]

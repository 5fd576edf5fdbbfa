"""The layer-rule registry: one rule per layer kind, each in its own module.

A rule owns its spec keys and parsing, its ``Layer`` record, its forward definitions and local
partials, its lowering to the kernel IR, its description, its torch.nn equivalent, its eager cost
and its float32 rounding (see base.py).  Every stage looks the rule up here by ``layer.kind``;
adding a kind is one module plus one line below (and the few other places docs/architecture.md
lists, which tests/test_ownership.py holds to).
"""

from __future__ import annotations

from derive.errors import DerivationError
from derive.layers import conv, flatten, linear, merge, pool
from derive.layers.base import Layer, LayerRule, Param

RULES: dict[str, LayerRule] = {
    rule.kind: rule for rule in (linear.RULE, conv.CONV, conv.LOCAL, flatten.RULE, pool.MAX, pool.AVG, merge.ADD,
                                 merge.CONCAT)
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

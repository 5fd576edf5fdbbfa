"""Stage 3, Network -> Derivation: the chain rule, layer by layer (engine.py) into frozen records (records.py)."""

from derive.derivation.engine import derive
from derive.derivation.records import Definition, Derivation, Factor, Step

__all__ = ["Definition", "Derivation", "Factor", "Step", "derive"]

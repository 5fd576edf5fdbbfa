"""Stage 3, Network -> Derivation: the chain rule, layer by layer (engine.py), on index notation (indices.py)."""

from derive.derivation.engine import Definition, Derivation, Factor, Step, derive

__all__ = ["Definition", "Derivation", "Factor", "Step", "derive"]

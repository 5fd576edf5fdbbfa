"""Stage 4, Derivation -> KernelIR: whole-array assignments the targets print (nodes.py, lowering.py)."""

"""Stage 5, KernelIR -> source files: one printer and one template per target (codegen.py)."""

"""Tables of rules that every stage reads: activations, losses, optimizers (and the SymPy functions they use)."""

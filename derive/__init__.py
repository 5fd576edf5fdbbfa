"""derive: see and generate backpropagation.

A network is declared (TOML or Python), SymPy derives every gradient by the chain rule
as backprop is taught, and templates turn the derivation into NumPy and Triton code.
"""

from derive.builtin import lecture_network
from derive.derivation import Derivation, Factor, Step, derive
from derive.errors import DeriveError, SpecError
from derive.explain.api import Explanation, explain
from derive.limits import Limits
from derive.network import LAYER_TYPES, Loss, Network, Port
from derive.spec import load_spec, parse_spec

# the layer types (Linear, Conv2d, MaxPool2d, …), each defined with its rule (derive.network.LAYER_TYPES)
globals().update(LAYER_TYPES)

__all__ = sorted(LAYER_TYPES) + [
    "Derivation", "DeriveError", "Factor", "Limits", "Loss", "Network", "Port", "SpecError", "Step",
    "derive", "explain", "Explanation", "lecture_network", "load_spec", "parse_spec",
]
from derive.version import __version__  # noqa: E402  (re-exported)

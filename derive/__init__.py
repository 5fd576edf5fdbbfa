"""derive: see and generate backpropagation.

A network is declared (TOML or Python), SymPy derives every gradient by the chain rule
as backprop is taught, and templates turn the derivation into NumPy and Triton code.
"""

from derive.builtin import lecture_network
from derive.derivation import Derivation, Factor, Step, derive
from derive.errors import DeriveError, SpecError
from derive.explain.api import Explanation, explain
from derive.limits import Limits
from derive.network import Add, AvgPool2d, Concat, Conv2d, Flatten, Linear, LocallyConnected, Loss, MaxPool2d, Network, Port
from derive.spec import load_spec, parse_spec

__all__ = [
    "Add", "AvgPool2d", "Concat", "Conv2d", "Derivation", "DeriveError", "Factor", "Flatten", "Linear", "Limits", "LocallyConnected", "Loss", "MaxPool2d", "Network", "Port", "SpecError", "Step",
    "derive", "explain", "Explanation", "lecture_network", "load_spec", "parse_spec",
]
from derive.version import __version__  # noqa: E402  (re-exported)

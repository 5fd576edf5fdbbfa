"""What every target's printer shares.  One SymPy code printer per target (numpy_printer.py,
triton_printer.py); target differences are data (function tables), and a ``_print_X`` method
exists only where a target really spells X differently.

Both printers are strict: a SymPy node without a rule raises instead of printing a
"Not supported" comment.  Each records the helper functions it used, so a template
only includes those (the printer owns the imports).
"""

from __future__ import annotations

from sympy.printing.pycode import PythonCodePrinter

from derive.errors import DerivationError


class _Recording:
    helpers: set

    def _helper(self, name: str, *args) -> str:
        self.helpers.add(name)
        return "%s(%s)" % (name, ", ".join(self._print(a) for a in args))

    def emptyPrinter(self, expr):  # noqa: N802 (SymPy's name)
        raise DerivationError(f"{self.target} printer: no rule for {type(expr).__name__} in {expr}")

    def _print_Function(self, expr):
        raise DerivationError(f"{self.target} printer: no rule for function {type(expr).__name__}")


class HostPrinter(PythonCodePrinter):
    """Plain Python for the host scalars of an optimizer step (η_t = lr/√t, 1 − β^t)."""

    def __init__(self):
        super().__init__({"strict": True, "fully_qualified_modules": True})

"""Errors a user can cause, each rendered as one line (file, key path, what was expected)."""

from __future__ import annotations


class DeriveError(Exception):
    """Bad input: the CLI prints str(err) on one line and exits 2."""

    exit_code = 2


class SpecError(DeriveError):
    """A spec that does not describe a valid network.

    ``source`` is the file (or ``<python>`` for the Python API), ``path`` the key
    path inside it (``layers[2].activation``), ``message`` what was expected.
    """

    def __init__(self, path: str, message: str, source: str = "<python>"):
        self.source = source
        self.path = path
        self.message = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.source}: {self.path}" if self.path else self.source
        return f"{where}: {self.message}".replace("\n", " ")

    def in_file(self, source: str) -> "SpecError":
        """The same error, attributed to ``source`` (the loader knows the file, the model does not)."""
        return SpecError(self.path, self.message, source)


class DerivationError(DeriveError):
    """A network the engine cannot differentiate (a missing rule), naming the layer and op."""

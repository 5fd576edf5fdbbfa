"""Derivation -> what ``derive explain`` prints: text, LaTeX (a document, or ``fragment`` for the
body), Markdown or JSON.

Text, LaTeX and Markdown render one Document (model.py), so they carry the same content:
each parameter's chain of factors (∂L/∂f3 · ∂f3/∂a3 · ∂a3/∂w3), each factor's value as SymPy
derived it, the δ it re-uses (marked), the result, and the updates.  The JSON form is a stable
contract and linear in size: every chain stops at the δ it re-uses.
"""

from __future__ import annotations

from derive.derivation import Derivation
from derive.explain import latex, markdown, model, text
from derive.explain.json_format import to_json, to_json_dict


def to_text(der: Derivation, param: str | None = None, expand: bool = False, fragment: bool = False) -> str:
    return text.render(model.build(der, param, expand))


def to_latex(der: Derivation, param: str | None = None, expand: bool = False, fragment: bool = False) -> str:
    """A complete LaTeX document (article, amsmath/amssymb); ``fragment``: the body alone, to paste."""
    return latex.render(model.build(der, param, expand), fragment=fragment)


def to_markdown(der: Derivation, param: str | None = None, expand: bool = False, fragment: bool = False) -> str:
    return markdown.render(model.build(der, param, expand))


FORMATS = {"text": to_text, "json": to_json, "latex": to_latex, "markdown": to_markdown}

__all__ = ["FORMATS", "to_json", "to_json_dict", "to_latex", "to_markdown", "to_text"]

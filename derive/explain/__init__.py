"""Derivation -> what `derive explain` prints: one explainer (model.py) for every layer kind,
rendered as text, LaTeX, Markdown; JSON from the derivation directly; ``explain()`` for notebooks."""

from derive.explain.formats import FORMATS, to_json, to_json_dict, to_latex, to_markdown, to_text

__all__ = ["FORMATS", "to_json", "to_json_dict", "to_latex", "to_markdown", "to_text"]

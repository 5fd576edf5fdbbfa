"""Derivation -> what `derive explain` prints: text, LaTeX, Markdown, JSON."""

from derive.explain.formats import FORMATS, to_json, to_json_dict, to_latex, to_markdown, to_text

__all__ = ["FORMATS", "to_json", "to_json_dict", "to_latex", "to_markdown", "to_text"]

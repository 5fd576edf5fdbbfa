"""``derive.explain(spec)``: a derivation that displays itself in a notebook.

    import derive
    derive.explain("examples/lecture.toml")        # the last line of a Jupyter cell

Jupyter shows it through ``_repr_markdown_`` (headings and display math) or, where Markdown
is not rendered, ``_repr_latex_`` (display math only); ``str()`` is the text output.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from derive.derivation import Derivation, derive
from derive.explain import latex, markdown, model, text
from derive.explain.json_format import to_json_dict
from derive.network import Network


@dataclass(frozen=True)
class Explanation:
    derivation: Derivation
    param: str | None = None
    expand: bool = False

    @cached_property
    def document(self) -> model.Document:
        return model.build(self.derivation, self.param, self.expand)

    def text(self) -> str:
        return text.render(self.document)

    def latex(self, fragment: bool = False) -> str:
        return latex.render(self.document, fragment=fragment)

    def markdown(self) -> str:
        return markdown.render(self.document)

    def json(self) -> dict:
        return to_json_dict(self.derivation, self.param, self.expand)

    def __str__(self) -> str:
        return self.text()

    def _repr_markdown_(self) -> str:
        return self.markdown()

    def _repr_latex_(self) -> str:
        return markdown.latex_repr(self.document)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython's plain-text fallback
        p.text(self.text())


def explain(spec: str | Path | Network | Derivation | None = None, param: str | None = None,
            expand: bool = False) -> Explanation:
    """The derivation of a spec file, a Network, or a Derivation (None: the lecture's network)."""
    if isinstance(spec, Derivation):
        der = spec
    else:
        if spec is None:
            from derive.builtin import lecture_network

            net = lecture_network()
        elif isinstance(spec, Network):
            net = spec
        else:
            from derive.spec import load_spec

            net = load_spec(spec)
        der = derive(net)
    return Explanation(der, param, expand)

"""Document -> Markdown whose formulas strict parsers find: ``$…$`` with no space inside the
dollars, and ``$$`` blocks on their own lines holding an ``aligned`` environment.  GitHub, Jupyter,
pandoc and markdown-it's dollarmath (``allow_space=False``) all read these as math.

``latex_repr`` is the same content as display math only, for Jupyter's ``text/latex``.
"""

from __future__ import annotations

import re

from derive.explain import latex
from derive.explain.kinds import Code, Tex
from derive.explain.model import Document

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|$])")


def _escape(s: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", s)


def pieces(ps) -> str:
    out = []
    for p in ps:
        if isinstance(p, Tex):
            out.append(f"${p.tex.strip()}$")
        elif isinstance(p, Code):
            out.append(f"`{p.text}`")
        elif isinstance(p, str):
            out.append(_escape(p))
        else:
            out.append(f"${latex.math(p).strip()}$")
    return "".join(out).strip()


def mathjax_text(s: str) -> str:
    """Words inside \\text{} for MathJax and KaTeX, which read Unicode there as it stands."""
    return s.replace("\\", "").replace("{", "(").replace("}", ")").replace("$", "")


def _math_row(ps) -> str:
    """Prose as one row of display math: words in \\text{}, formulas as they are."""
    out = []
    for p in ps:
        if isinstance(p, Tex):
            out.append(p.tex)
        elif isinstance(p, Code):
            out.append(r"\texttt{%s}" % mathjax_text(p.text))
        elif isinstance(p, str):
            out.append(r"\text{%s}" % mathjax_text(p))
        else:
            out.append(latex.math(p))
    return " ".join(out)


def _display(rows: list[str]) -> str:
    return "$$\n\\begin{aligned}\n" + latex.join_rows(rows) + "\n\\end{aligned}\n$$"


def render(doc: Document) -> str:
    md = [f"# Backpropagation through `{doc.name}`", "", _escape(doc.header), ""]
    for sec in doc.sections:
        md += [f"## {sec.short}", ""]
        if sec.intro:
            md += [pieces(sec.intro), ""]
        for kind, payload in latex.blocks(sec, mathjax_text):
            if kind == "prose":
                if len(payload) == 1 and isinstance(payload[0], Tex):
                    md += [_display([payload[0].tex]), ""]
                else:
                    md += [pieces(payload), ""]
            else:
                md += [_display(payload), ""]
    return "\n".join(md).rstrip("\n") + "\n"


def latex_repr(doc: Document) -> str:
    """Display math only (MathJax has no sections): one aligned block per section, headed in bold."""
    out = []
    for sec in doc.sections:
        rows = [r"&\textbf{%s}" % latex.tex_text(sec.short)]
        for kind, payload in latex.blocks(sec, mathjax_text):
            if kind == "prose":
                if len(payload) == 1 and isinstance(payload[0], Tex):
                    rows.append("&" + payload[0].tex)
                else:
                    rows.append("&" + _math_row(payload))
            else:
                rows += payload
        out.append("$$\\begin{aligned}\n" + latex.join_rows(rows) + "\n\\end{aligned}$$")
    return "\n\n".join(out) + "\n"

"""Document -> LaTeX: a complete article that pdflatex compiles as emitted, or its body (``fragment``).

One section per part (forward, loss, backward, gradients, updates), each an ``align*`` that may
break across pages (``\\allowdisplaybreaks``).  Rows carry what the text shows: chain products
in chain order, each factor's value, the re-used δ marked, and the result.  ``rows`` is shared
with the Markdown and Jupyter renderings (``aligned`` blocks).
"""

from __future__ import annotations

import re
import textwrap

import sympy as sp

from derive.explain.kinds import Code, Tex
from derive.explain.model import (ELLIPSIS, Chain, Cont, Document, Eq, FactorLine, Partial, Paths, Product, Prose,
                                  Result, Section)
from derive.explain.notation import LaTeXPrinter, latex, name_latex

PREAMBLE = r"""\documentclass[11pt]{article}
\usepackage[a4paper,margin=2cm]{geometry}
\usepackage{amsmath}
\usepackage{amssymb}
\allowdisplaybreaks
\setlength{\parindent}{0pt}
\setlength{\emergencystretch}{3em}
"""

# Unicode in notes and titles, for pdflatex (\ensuremath works in text and in math).
_UNICODE = {
    "∂": r"\partial", "δ": r"\delta", "σ": r"\sigma", "η": r"\eta", "β": r"\beta", "μ": r"\mu", "ρ": r"\rho",
    "ε": r"\varepsilon", "θ": r"\theta", "Σ": r"\Sigma", "Δ": r"\Delta", "α": r"\alpha", "∇": r"\nabla",
    "·": r"\cdot", "×": r"\times", "−": "-", "←": r"\leftarrow", "≤": r"\le", "≥": r"\ge", "ŷ": r"\hat{y}",
    "½": r"\tfrac{1}{2}", "²": "^2", "₁": "_1", "‖": r"\Vert", "…": r"\dots", "ᵀ": r"^\top", "′": "'",
    "𝟙": r"\mathbf{1}", "∈": r"\in",
}
_SPECIAL = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#",
            "$": r"\$", "^": r"\^{}", "~": r"\~{}"}


def tex_text(s: str) -> str:
    """Plain text for LaTeX: specials escaped, the Unicode math symbols the notes use as math."""
    out = []
    for ch in s:
        if ch in _SPECIAL:
            out.append(_SPECIAL[ch])
        elif ch in _UNICODE:
            out.append(r"\ensuremath{%s}" % _UNICODE[ch])
        elif ord(ch) > 127:
            out.append("?")  # never reached by the shipped tables (the tests compile every example)
        else:
            out.append(ch)
    return "".join(out)


def math(m) -> str:
    if isinstance(m, Partial):
        if m.delta:
            return name_latex("delta" + _base(m.bottom)[1:], _idx(m.bottom))
        bottom = latex(m.bottom)
        top = "L" if m.top is None else latex(m.top)
        return r"\frac{\partial %s}{\partial %s}" % (top, bottom)
    if isinstance(m, Chain):
        return _over(m.over) + r" \, ".join(r"\cdots" if f == ELLIPSIS else math(f) for f in m.factors)
    if isinstance(m, Product):
        return _product(m)
    if isinstance(m, Paths):  # a Σ that is not the last term is bracketed: it does not run over the terms after it
        last = len(m.items) - 1
        return " + ".join(r"\left(%s\right)" % math(t) if t.over and k < last else math(t) for k, t in enumerate(m.items))
    return latex(m)


def _base(e) -> str:
    return str(e.base.label) if isinstance(e, sp.Indexed) else e.name


def _idx(e) -> str:
    if not isinstance(e, sp.Indexed):
        return ""
    return LaTeXPrinter()._indices(e.indices)


def _over(over) -> str:
    if not over:
        return ""
    return r"\sum_{%s} " % ",".join(latex(i) for i in over)


def _product(p: Product) -> str:
    out = []
    last = len(p.values) - 1
    for k, v in enumerate(p.values):
        if isinstance(v, Product):
            s = _product(v)
            out.append(r"\left(%s\right)" % s if v.over and k < last else s)
            continue
        s = latex(v)
        if isinstance(v, sp.Add) and len(p.values) > 1:
            s = r"\left(%s\right)" % s
        elif k > 0 and s.startswith("-"):
            s = r"\left(%s\right)" % s
        out.append(s)
    return _over(p.over) + r" \, ".join(out)


def pieces_text(ps) -> str:
    """Pieces in running text: strings escaped, formulas as inline math."""
    out = []
    for p in ps:
        if isinstance(p, Tex):
            out.append(f"${p.tex}$")
        elif isinstance(p, Code):
            out.append(r"\texttt{%s}" % tex_text(p.text))
        elif isinstance(p, str):
            out.append(tex_text(p))
        else:
            out.append(f"${math(p)}$")
    return "".join(out)


NOTE_INLINE = 40  # a note of more characters goes below its formula, in lines of at most NOTE_LINE
NOTE_LINE = 60


def _long(ps) -> bool:
    return sum(len(p) for p in ps if isinstance(p, str)) > NOTE_INLINE


def _note_rows(ps, esc=tex_text) -> list[str]:
    """A long note as rows of its own under the formula (a conv2d's note beside its sum ran 103 pt past
    the margin); one of words alone is wrapped at NOTE_LINE characters."""
    if len(ps) == 1 and isinstance(ps[0], str):
        return [r"&\qquad \text{%s}" % esc(line) for line in textwrap.wrap(ps[0].strip(), NOTE_LINE)]
    return [r"&\qquad" + _note(ps, esc)[len(r" \quad"):]]


def _note(ps, esc=tex_text) -> str:
    """A note inside a formula row (``esc``: how its words are escaped inside \\text{})."""
    if not ps:
        return ""
    out = []
    for k, p in enumerate(ps):
        if isinstance(p, str):
            s = p.lstrip() if k == 0 else p
            if s:
                out.append(r"\text{%s}" % esc(s))
        elif isinstance(p, Tex):
            out.append(p.tex)
        elif isinstance(p, Code):
            out.append(r"\texttt{%s}" % tex_text(p.text))
        else:
            out.append(math(p))
    return r" \quad " + " ".join(out)


GAP = "\x00"  # a row that starts a new derivation: a little space above it


def _is_eq_row(row: str) -> bool:
    return not row.startswith("&")


def join_rows(rows: list[str]) -> str:
    out = rows[0].lstrip(GAP)
    for r in rows[1:]:
        out += r" \\[4pt]" + "\n" + r[1:] if r.startswith(GAP) else r" \\" + "\n" + r
    return out


def rows(items, esc=tex_text) -> list[str]:
    """The align rows of a run of formula items (Eq, Cont, FactorLine, Result)."""
    out = []
    factors: list[str] = []
    for item in items:
        if isinstance(item, FactorLine):  # the factors of one chain share a row: "with A = …, B = …"
            value = "" if item.value is None else f" = {latex(item.value)}"
            factors.append(f"{math(item.label)}{value}{_note(item.note, esc)}")
            continue
        if factors:
            out += _with_rows(factors)
            factors = []
        if isinstance(item, Eq):
            rel = r"\leftarrow" if item.rel == "←" else "="
            rhs = " = ".join(math(r) for r in item.rhs)
            gap = GAP if out and not out[-1].startswith(GAP) and not _is_eq_row(out[-1]) else ""
            note = item.note
            out.append(f"{gap}{math(item.lhs)} &{rel} {rhs}{'' if _long(note) else _note(note, esc)}")
            out += _note_rows(note, esc) if _long(note) else []
        elif isinstance(item, (Cont, Result)):
            rhs = item.rhs if isinstance(item, Cont) else item.value
            note = getattr(item, "note", ())
            out.append(f"&= {math(rhs)}{'' if _long(note) else _note(note, esc)}")
            out += _note_rows(note, esc) if _long(note) else []
    if factors:
        out += _with_rows(factors)
    return out


WITH_WIDTH = 70  # about the characters a row of 11 pt math sets between 2 cm margins


def _width(tex: str) -> int:
    """The characters a row shows, roughly: TeX commands, braces and scripts markers not counted (a fraction
    counts numerator and denominator both, which errs on the wide side)."""
    return len(re.sub(r"\\[a-zA-Z]+|[{}_^&\\ ]", "", tex))


def _with_rows(factors: list[str]) -> list[str]:
    """The factors of one chain: one row "with A = …, B = …", or one factor a row where that would be too wide
    (a max-pool's ∂f2/∂f1 beside the re-used ∂L/∂f2 ran 102 pt past the margin)."""
    row = r"&\qquad \text{with } " + r", \quad ".join(factors)
    if len(factors) == 1 or _width(row) <= WITH_WIDTH:
        return [row]
    lead = r"&\qquad \text{with } "
    pad = r"&\qquad \phantom{\text{with }} "
    return [(lead if k == 0 else pad) + f + ("," if k < len(factors) - 1 else "") for k, f in enumerate(factors)]


def blocks(sec: Section, esc=tex_text):
    """(kind, payload) runs of a section: ("rows", [row, …]) or ("prose", pieces)."""
    run = []
    for item in sec.items:
        if isinstance(item, Prose):
            if run:
                yield "rows", rows(run, esc)
                run = []
            yield "prose", item.pieces
        else:
            run.append(item)
    if run:
        yield "rows", rows(run, esc)


def _prose_line(ps) -> str:
    # A lone formula (the loss as the lecture writes it) is display math; words are a paragraph.
    if len(ps) == 1 and isinstance(ps[0], Tex):
        return r"\[ %s \]" % ps[0].tex
    return pieces_text(ps) + "\n"


def body(doc: Document) -> str:
    out = [tex_text(doc.header) + "\n"]
    for sec in doc.sections:
        out.append(r"\section*{%s}" % tex_text(sec.short))
        if sec.intro:
            out.append(pieces_text(sec.intro) + "\n")
        for kind, payload in blocks(sec):
            if kind == "prose":
                out.append(_prose_line(payload))
            else:
                out.append("\\begin{align*}\n" + join_rows(payload) + "\n\\end{align*}")
    return "\n".join(out) + "\n"


def render(doc: Document, fragment: bool = False) -> str:
    if fragment:
        return f"% derive explain {doc.name}: paste into a document with amsmath and amssymb\n" + body(doc)
    title = r"\title{Backpropagation through \texttt{%s}}" % tex_text(doc.name)
    return (PREAMBLE + title + "\n\\date{}\n\n\\begin{document}\n\\maketitle\n\n" + body(doc)
            + "\n\\end{document}\n")

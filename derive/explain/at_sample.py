"""`derive explain --at` in LaTeX and Markdown: the numbered derivation of derive/evaluate.py's text, as math.

The rows are the text's, in the same order and with the same rules (evaluate.to_text): each forward quantity,
the loss, each ∂L/∂f, δ with its factors, and each gradient as ``symbol = expression = numbers substituted =
value``.  The values and the formatting decisions (4 significant digits, arrays over SHOW_CAP or conv volumes as
shape and norm) are evaluate.py's; the printing of symbols and partials is notation.py's and latex.py's, so the
numbered LaTeX reads like the plain one.  LaTeX is a complete document (latex.PREAMBLE) or its body; Markdown holds
``$$`` aligned blocks and ``$…$`` with no space inside the dollars, as markdown.py writes them.
"""

from __future__ import annotations

import re

import numpy as np
import sympy as sp

from derive import evaluate as ev
from derive.explain import latex as lx
from derive.explain import markdown as md
from derive.explain.model import Partial
from derive.explain.notation import LaTeXPrinter, latex


def number(v) -> str:
    """evaluate.fmt's digits as TeX: 1.2e-05 -> 1.2 \\cdot 10^{-5}."""
    s = ev.fmt(v)
    m = re.fullmatch(r"(-?[0-9.]+)e([+-][0-9]+)", s)
    if m:
        return r"%s \cdot 10^{%d}" % (m.group(1), int(m.group(2)))
    return {"inf": r"\infty", "-inf": r"-\infty", "nan": r"\text{NaN}"}.get(s, s)


ROW = 16  # a vector wraps after 16 entries, as the text's list wraps at its line width
# entries a line of a displayed array holds: 8 of 4 significant digits fit the text width with the row's
# indent and its note; a wider vector or matrix is set in blocks of 8 entries or columns, each on its own line
COLS = 8
WIDE = 4  # an array with more entries a line than this goes on the line below its formula
TYPESET_CAP = (64, 32)  # rows, columns: beyond this even --full prints shape and norm (TeX cannot set a 10×4704)


def value(v, volume: bool = False, full: bool = False) -> str:
    """A number, a vector or matrix of numbers, or (as evaluate.show decides) the shape and norm."""
    arr = np.asarray(v, dtype=np.float64)
    if arr.ndim == 0:
        return number(arr)
    rows = [arr[k:k + ROW] for k in range(0, arr.size, ROW)] if arr.ndim == 1 else arr
    typeset = arr.ndim <= 2 and len(rows) <= TYPESET_CAP[0] and max(len(r) for r in rows) <= TYPESET_CAP[1]
    if ((volume or arr.size > ev.SHOW_CAP) and not full) or not typeset:
        shape = r" \times ".join(map(str, arr.shape))
        return (r"\text{shape } %s,\ \lVert\cdot\rVert = %s,\ \max\lvert\cdot\rvert = %s"
                % (shape, number(np.linalg.norm(arr)), number(np.max(np.abs(arr)))))
    return _matrix(rows)


def _matrix(rows) -> str:
    return (r"\left[\begin{smallmatrix}%s\end{smallmatrix}\right]"
            % r" \\ ".join(" & ".join(map(number, row)) for row in rows))


def blocks(v, volume: bool = False, full: bool = False) -> tuple[list[str], int]:
    """value() for a display row, cut into blocks of at most COLS entries (a vector) or columns (a matrix), each
    block with its range: ([block, ...], entries a line); one block where it fits, or where value() gives a number
    or the shape and norm."""
    arr = np.asarray(v, dtype=np.float64)
    one = value(v, volume, full)
    if arr.ndim == 0 or not one.startswith(r"\left["):
        return [one], 0
    width = arr.shape[-1]
    if width <= COLS:
        return [one], width
    word = "entries" if arr.ndim == 1 else "columns"
    out = []
    for a in range(0, width, COLS):
        part = arr[a:a + COLS] if arr.ndim == 1 else arr[:, a:a + COLS]
        out.append((_matrix([part] if arr.ndim == 1 else part), f"({word} {a + 1} to {min(a + COLS, width)})"))
    return out, COLS


class _NumbersLaTeX(LaTeXPrinter):
    """notation's printer with each scalar symbol printed as its value; products written with \\cdot so that
    0.2739 · 2 never reads as 0.27392."""

    def __init__(self, env: dict):
        super().__init__()
        self.env = env
        self._settings["mul_symbol_latex"] = r" \cdot "
        self._settings["mul_symbol_latex_numbers"] = r" \cdot "

    def _print_Symbol(self, expr, style="plain"):
        if expr in self.env:
            s = number(self.env[expr])
            return f"({s})" if s.startswith("-") else s
        return super()._print_Symbol(expr, style)


_DOUBLE = re.compile(r"\(\((-[^()]+)\)\)")


def substituted(expr: sp.Expr, der, values) -> str | None:
    """``expr`` with the numbers in place of its scalar symbols (None where evaluate.substituted gives none)."""
    if ev.substituted(expr, der, values) is None:
        return None
    env = {s: float(v) for s, v in ev._env(der, values).items() if isinstance(s, sp.Symbol) and np.ndim(v) == 0}
    with sp.core.parameters.distribute(False):
        out = _NumbersLaTeX(env).doprint(expr)
    return _DOUBLE.sub(r"(\1)", out)  # \sigma(-0.4791), not \sigma((-0.4791))


def _label(f) -> str:
    return lx.math(Partial(None if f.numerator == "L" else sp.Symbol(f.numerator), sp.Symbol(f.denominator),
                           delta=f.is_delta))


def sections(der, values, full: bool = False, param: str | None = None, esc=lx.tex_text):
    """[(title, intro pieces (TeX strings), [align row, …])]: the numbered derivation as evaluate.to_text has it;
    ``esc`` escapes the words inside \\text{} (latex.tex_text for pdflatex, markdown.mathjax_text for MathJax)."""
    net = der.network
    vol = ev._volume_layers(net)
    scalar = all(np.ndim(v) == 0 for v in values.quantities.values())
    first_volume = len(net.input.shape) == 3

    def note(s: str) -> str:
        return r" \quad \text{%s}" % esc(s)

    def shown(lhs: str, parts: list[str], v, volume: bool, indent: str = "") -> str:
        """``lhs = parts… = v`` as align rows; a wide v on the lines below, in blocks (blocks()), so that no line
        runs past the margin.  ``indent`` (a factor's row under its δ) aligns nothing: its lines are indented."""
        eq, cont = (" = ", indent + r"\qquad ") if indent else (" &= ", "&")
        out, per_line = blocks(v, volume, full)
        if len(out) == 1 and (per_line <= WIDE or not parts):
            return f"{indent}{lhs}{eq}" + " = ".join([*parts, out[0]])
        first = out[0] if len(out) == 1 else out[0][0] + note(out[0][1])
        lines = [f"{indent}{lhs}{eq}{first}"] if not parts else \
            [f"{indent}{lhs}{eq}" + " = ".join(parts), f"{cont}= {first}"]
        lines += [f"{cont}\\phantom{{=}} {b}" + note(n) for b, n in out[1:]]
        return " \\\\\n".join(lines)

    def row(lhs: str, expr, v, volume: bool, indent: str = "") -> str:
        parts = [latex(expr)]
        sub = substituted(expr, der, values) if scalar else None
        if sub is not None and sub != parts[-1] and sub != number(v):
            parts.append(sub)
        if scalar and value(v, volume, full) == parts[-1]:
            parts.pop()  # the expression is its value already: shown() prints it once
        return shown(lhs, parts, v, volume, indent)

    sample = [f"{latex(sp.Symbol(k))} = {value(v, first_volume and k == net.input.name, full)}"
              for k, v in values.inputs.items()]
    layer_of = {p: li.index for li in net.info for p in (li.weight, li.bias, li.slope_param) if p}
    params = [shown(latex(sp.Symbol(k)), [], v, layer_of.get(k) in vol) for k, v in values.params.items()]
    out = [("Parameters", [f"Parameters ({values.params_from})." if values.params_from else "Parameters."],
            params)]
    forward = [row(latex(d.lhs), d.rhs, values.get(d.name), d.layer in vol) for d in der.forward]
    out.append(("Forward pass", [], forward))
    out.append(("Loss (per sample)", [], [row("L", der.loss.rhs, values.get("L"), False)]))
    back = []
    in_sum = {t for s in der.backward for t in s.terms}  # a path's term: shown inside its sum
    for s in der.backward:
        if s.kind == "param" or values.get(s.name) is None or s.name in in_sum:
            continue
        volume = s.layer in vol
        if s.terms:
            paths = " + ".join(r" \, ".join(_label(f) for f in t.factors) for t in der.paths(s))
            back.append(f"{latex(s.lhs)} &= {paths}" + note(f"({der.paths_note(s)})"))
            back.append(row(latex(s.lhs), ev.shown(der, s), values.get(s.name), volume))
            continue
        if s.kind != "delta":
            back.append(row(latex(s.lhs), ev.shown(der, s), values.get(s.name), volume))
            continue
        back.append(f"{latex(s.lhs)} &= " + r" \, ".join(_label(f) for f in s.factors))
        for i, f in enumerate(s.factors):
            fv = values.factors.get((s.name, i))
            if f.reused:
                said = "computed above" if f.numerator == "L" else "re-used from above"
                if fv is None:
                    back.append(r"&\qquad %s%s" % (_label(f), note(f"({said})")))
                else:
                    back.append(shown(_label(f), [], fv, volume, r"&\qquad ") + note(f"({said})"))
            elif fv is not None:
                back.append(row(_label(f), f.value, fv, volume, r"&\qquad "))
            else:
                back.append(r"&\qquad %s = %s" % (_label(f), latex(f.value)))
        back.append(row(latex(s.lhs), ev.shown(der, s), values.get(s.name), volume))
    out.append(("Backward pass", ["Each ", r"$\delta$", " is computed once and re-used below."], back))
    grads = [row(lx.math(Partial(None, sp.Symbol(s.param))), ev.shown(der, s), values.get(s.name), s.layer in vol)
             for s in der.gradients if param is None or s.param == param]
    out.append(("Gradients", [], grads))
    return sample, out


def _header(net) -> str:
    return ev._header(net)[0]


def to_latex(der, values, full: bool = False, param: str | None = None, fragment: bool = False) -> str:
    net = der.network
    sample, secs = sections(der, values, full, param)
    body = [lx.tex_text(_header(net)) + "\n",
            "At the sample $%s$ (one sample: the batch mean's $1/B$ is 1).\n" % r",\ ".join(sample)]
    for title, intro, rows in secs:
        body.append(r"\section*{%s}" % lx.tex_text(title))
        if intro:
            body.append("".join(p if p.startswith("$") else lx.tex_text(p) for p in intro) + "\n")
        if rows:
            body.append("\\begin{align*}\n" + " \\\\\n".join(rows) + "\n\\end{align*}")
    text = "\n".join(body) + "\n"
    if fragment:
        return (f"% derive explain {net.name} --at: paste into a document with amsmath and amssymb\n" + text)
    title = r"\title{Backpropagation through \texttt{%s} at one sample}" % lx.tex_text(net.name)
    return lx.PREAMBLE + title + "\n\\date{}\n\n\\begin{document}\n\\maketitle\n\n" + text + "\n\\end{document}\n"


def to_markdown(der, values, full: bool = False, param: str | None = None) -> str:
    net = der.network
    sample, secs = sections(der, values, full, param, esc=md.mathjax_text)
    out = [f"# Backpropagation through `{net.name}` at one sample", "", md._escape(_header(net)), "",
           "At the sample $%s$ (one sample: the batch mean's $1/B$ is 1)." % r",\ ".join(sample), ""]
    for title, intro, rows in secs:
        out += [f"## {title}", ""]
        if intro:
            out += ["".join(p if p.startswith("$") else md._escape(p) for p in intro), ""]
        if rows:
            out += ["$$\n\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}\n$$", ""]
    return "\n".join(out).rstrip("\n") + "\n"

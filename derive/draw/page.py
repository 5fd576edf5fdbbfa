"""`derive explain --format html`: one self-contained page, the derivation rendered with KaTeX beside its graph.

The derivation is the LaTeX/Markdown one (latex.blocks and latex.join_rows over model.build; with --at,
at_sample.sections), typeset in the browser by the vendored KaTeX (katex/, MIT; its fonts inlined as data: URLs),
so the page needs no network and works opened from a file.  The graph is dot.py's SVG, inline.  Each δ, ∂L/∂(·)
and local partial in the formulas is wrapped in KaTeX's \\htmlData, so that the page's script can tie it to the
graph: a local partial lights up its forward and backward edges and shows its value, a δ lights up every place
that re-uses it.  The layout is templates/explain_page.html.jinja; no math is written there.
"""

from __future__ import annotations

import base64
import html
import json
import re
from functools import lru_cache
from pathlib import Path

import jinja2

from derive.draw import dot, graph
from derive.explain import latex as lx
from derive.explain import markdown as md
from derive.explain import model
from derive.explain.kinds import Code, Tex
from derive.explain.notation import name_latex

KATEX = Path(__file__).resolve().parent / "katex"
_FONT = re.compile(r'src:url\(fonts/(KaTeX_[A-Za-z0-9_-]+)\.woff2\) format\("woff2"\)[^;}]*')


@lru_cache(maxsize=1)
def katex_assets() -> tuple[str, str]:
    """(CSS with every font inlined as a woff2 data: URL, the script)."""
    css = (KATEX / "katex.min.css").read_text(encoding="utf-8")

    def inline(m):
        data = base64.b64encode((KATEX / "fonts" / f"{m.group(1)}.woff2").read_bytes()).decode("ascii")
        return f'src:url(data:font/woff2;base64,{data}) format("woff2")'

    css = _FONT.sub(inline, css)
    if "url(fonts/" in css:
        raise RuntimeError("derive: the vendored KaTeX CSS names a font that is not inlined")
    return css, (KATEX / "katex.min.js").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- tying the formulas to the graph


class Tagger:
    """Wraps each δ, ∂L/∂q and local partial ∂n/∂d of a TeX string in \\htmlData{q=…} / \\htmlData{f=…}."""

    def __init__(self, g: graph.Graph):
        grads = [n for n in g.nodes if n.kind == "grad"]
        self.step_of = {n.of: n.name for n in grads if not n.via}  # ∂L/∂f1 is the sum, not one path's term
        self.factors = {f.key for f in g.factors}
        names = sorted({n.name for n in g.nodes if n.kind != "grad"} | {"L"}, key=lambda s: (-len(s), s))
        self._name = [(n, self._pattern(n)) for n in names]
        self._delta = [(n.name, self._pattern(n.name)) for n in grads if n.name.startswith("delta")]

    @staticmethod
    def _pattern(name: str) -> re.Pattern:
        bare = re.escape(name_latex(name))
        # indices may hold one level of braces (\mathrm{c''} of a padded volume's primed index)
        indexed = re.escape(name_latex(name, "\x00")).replace("\x00", r"(?:[^{}]|\{[^{}]*\})*")
        return re.compile(f"(?:{indexed}|{bare})\\Z")

    def _which(self, tex: str, table) -> str | None:
        for name, pat in table:
            if pat.match(tex):
                return name
        return None

    def tag(self, tex: str) -> str:
        out, k = [], 0
        while k < len(tex):
            if tex.startswith(r"\frac{\partial ", k):
                top, j = _group(tex, k + len(r"\frac"))
                bottom, end = _group(tex, j)
                if top is not None and bottom is not None and top.startswith(r"\partial ") \
                        and bottom.startswith(r"\partial "):
                    num = self._which(top[len(r"\partial "):], self._name)
                    den = self._which(bottom[len(r"\partial "):], self._name)
                    piece = tex[k:end]
                    if num == "L" and den in self.step_of:
                        out.append(r"\htmlData{q=%s}{%s}" % (self.step_of[den], piece))
                        k = end
                        continue
                    if num and den and f"{num}/{den}" in self.factors:
                        out.append(r"\htmlData{f=%s}{%s}" % (f"{num}/{den}", piece))
                        k = end
                        continue
            if tex.startswith(r"\delta_{", k):
                sub, end = _group(tex, k + len(r"\delta_"))
                if sub is not None:
                    name = self._which(tex[k:end], self._delta)
                    if name:
                        out.append(r"\htmlData{q=%s}{%s}" % (name, tex[k:end]))
                        k = end
                        continue
            out.append(tex[k])
            k += 1
        return "".join(out)


def _group(tex: str, k: int) -> tuple[str | None, int]:
    """The balanced {…} group starting at ``k``: (its content, the index after it), or (None, k)."""
    if k >= len(tex) or tex[k] != "{":
        return None, k
    depth = 0
    for j in range(k, len(tex)):
        if tex[j] == "{" and tex[j - 1:j] != "\\":
            depth += 1
        elif tex[j] == "}" and tex[j - 1:j] != "\\":
            depth -= 1
            if depth == 0:
                return tex[k + 1:j], j + 1
    return None, k


# ----------------------------------------------------------------------------- the page's content


def _inline(tex: str, tagger: Tagger) -> str:
    return f'<span class="math" data-tex="{html.escape(tagger.tag(tex.strip()))}"></span>'


def _display(tex: str, tagger: Tagger) -> dict:
    return {"kind": "math", "tex": tagger.tag(tex)}


def _pieces(ps, tagger: Tagger) -> str:
    """Prose pieces as HTML: words escaped, formulas as inline math."""
    out = []
    for p in ps:
        if isinstance(p, Tex):
            out.append(_inline(p.tex, tagger))
        elif isinstance(p, Code):
            out.append(f"<code>{html.escape(p.text)}</code>")
        elif isinstance(p, str):
            out.append(html.escape(p))
        else:
            out.append(_inline(lx.math(p), tagger))
    return "".join(out).strip()


_KATEX_TEXT = str.maketrans({"_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#"})


def katex_text(s: str) -> str:
    """Words inside \\text{} for KaTeX: as MathJax's, and its specials escaped (f1_pad, a spec's name, has an _
    that KaTeX's text mode refuses; a % would end the formula as a comment)."""
    return md.mathjax_text(s).translate(_KATEX_TEXT)


def _aligned(rows: list[str]) -> str:
    return "\\begin{aligned}\n" + lx.join_rows(rows) + "\n\\end{aligned}"


def _symbolic(der, param, expand, tagger) -> tuple[str, list[dict]]:
    doc = model.build(der, param, expand)
    sections = []
    for sec in doc.sections:
        blocks = []
        if sec.intro:
            blocks.append({"kind": "prose", "html": _pieces(sec.intro, tagger)})
        for kind, payload in lx.blocks(sec, katex_text):
            if kind == "prose":
                if len(payload) == 1 and isinstance(payload[0], Tex):
                    blocks.append(_display(_aligned([payload[0].tex]), tagger))
                else:
                    blocks.append({"kind": "prose", "html": _pieces(payload, tagger)})
            else:
                blocks.append(_display(_aligned(payload), tagger))
        sections.append({"title": sec.short, "blocks": blocks})
    return html.escape(doc.header), sections


def _numbered(der, values, full, param, tagger) -> tuple[str, list[dict]]:
    from derive import evaluate as ev
    from derive.explain import at_sample

    sample, secs = at_sample.sections(der, values, full, param, esc=katex_text)
    header = (html.escape(ev._header(der.network)[0]) + "<br>At the sample "
              + _inline(r",\ ".join(sample), tagger) + " (one sample: the batch mean's 1/B is 1).")
    sections = []
    for title, intro, rows in secs:
        blocks = []
        if intro:
            blocks.append({"kind": "prose", "html": "".join(
                _inline(p.strip("$"), tagger) if p.startswith("$") else html.escape(p) for p in intro)})
        if rows:
            blocks.append(_display(_aligned(rows), tagger))
        sections.append({"title": title, "blocks": blocks})
    return header, sections


def _svg(g: graph.Graph) -> str:
    svg = dot.render(dot.source(g), "svg").decode("utf-8")
    svg = svg[svg.index("<svg"):]  # no XML prolog or DOCTYPE inside HTML
    # fitted to the window by the page's style; its own width kept for the page's "actual size" button
    return re.sub(r'<svg width="([^"]*)" height="[^"]*"', r'<svg class="graph" data-width="\1"', svg, count=1)


def _data(g: graph.Graph) -> dict:
    """What the script shows on hover and click: each factor's text and value, each gradient's users, and for a
    sum over paths its terms (each with the local partial of its path), for one path's term its own chain."""
    title = {n.name: n.title for n in g.nodes}
    grads = {n.name: n for n in g.nodes if n.kind == "grad"}

    def path(n):
        return {"title": n.title, "formula": n.formula, "value": n.value, "node": n.id, "factor": n.factor}

    steps = {}
    for n in grads.values():
        s = {"title": n.title, "value": n.value, "node": n.id, "uses": [title[u] for u in n.uses],
             "useIds": [graph.grad_id(u) for u in n.uses]}
        if n.paths:
            s["note"] = n.formula
            s["paths"] = [path(grads[t]) for t in n.paths]
        if n.via:
            s["path"] = path(n)
        steps[n.name] = s
    return {"factors": {f.key: {"text": f.text, "value": f.value} for f in g.factors}, "steps": steps}


def render(der, values=None, full: bool = False, param: str | None = None, expand: bool = False) -> str:
    """The page as one string (KaTeX, fonts, SVG and script inside)."""
    g = graph.build(der, values)
    tagger = Tagger(g)
    if values is None:
        header, sections = _symbolic(der, param, expand, tagger)
    else:
        header, sections = _numbered(der, values, full, param, tagger)
    css, js = katex_assets()
    from derive.targets.common import template_dir

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir())), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    page = env.get_template("explain_page.html.jinja").render(
        name=der.network.name, header=jinja2.utils.markupsafe.Markup(header), sections=[
            {"title": s["title"], "blocks": [
                {**b, "html": jinja2.utils.markupsafe.Markup(b["html"])} if b["kind"] == "prose" else b
                for b in s["blocks"]]} for s in sections],
        numbers=values is not None, sums=any(n.paths for n in g.nodes), svg=jinja2.utils.markupsafe.Markup(_svg(g)),
        katex_license=jinja2.utils.markupsafe.Markup(
            (KATEX / "LICENSE").read_text(encoding="utf-8").strip().replace("--", "- -")),  # inside <!-- -->
        katex_css=jinja2.utils.markupsafe.Markup(css), katex_js=jinja2.utils.markupsafe.Markup(_script_safe(js)),
        data=jinja2.utils.markupsafe.Markup(_script_safe(json.dumps(_data(g), ensure_ascii=False, sort_keys=True))))
    return page


def _script_safe(s: str) -> str:
    """Text inside <script>: no "</script" can end it early."""
    return s.replace("</", "<\\/")


"""Graph -> Graphviz: the DOT source (the `graphviz` package) and the picture (the system `dot`).

Left to right; the forward pass in a box on top, the backward pass (∂L/∂·, red) in a box underneath, each
gradient in the column of the quantity it belongs to.  The output is deterministic: DOT is written in the
graph's own order, the SVG loses the comment naming the Graphviz version, and PDFs get SOURCE_DATE_EPOCH=0 so
that cairo writes no clock time (older cairo ignores it: its dates are then overwritten with the epoch, in place).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from derive.errors import DeriveError

FORMATS = ("svg", "png", "pdf")
INSTALL = "install Graphviz: scripts/install-graphviz, or apt-get install graphviz (brew install graphviz on macOS)"
FONT = "Helvetica"
FORWARD, BACKWARD, REUSED = "#1f3b73", "#b22222", "#d98c00"


def _shape(shape: tuple) -> str:
    return "×".join(map(str, shape)) if shape else ""


def _label(n) -> str:
    """A graph.Node's text: its symbol, shape, value and marks."""
    lines = [n.title]
    if n.kind == "input":
        lines[0] += " (input)"
    elif n.kind == "target":
        lines[0] += " (target)"
    if n.via:
        lines.append(f"= {n.formula}")
    if n.shape:
        lines.append(_shape(n.shape))
    if n.value:
        lines.append(n.value)
    if n.kind == "grad":
        if len(n.uses) > 1:
            lines.append(f"re-used by {len(n.uses)}")
        if n.paths:
            lines.append(n.formula)
    return "\n".join(lines)


def source(g) -> str:
    """The DOT text of a graph.Graph (duck-typed: dot.py imports no stage above it)."""
    import graphviz

    dot = graphviz.Digraph(name=g.name, graph_attr={
        "rankdir": "LR", "newrank": "true", "nodesep": "0.6", "ranksep": "0.7", "fontname": FONT,
        "label": f"{g.name}: forward (top) and backward (bottom) pass", "labelloc": "t", "fontsize": "16"},
        node_attr={"fontname": FONT, "fontsize": "12", "shape": "box", "style": "rounded,filled"},
        edge_attr={"fontname": FONT, "fontsize": "10"})
    fwd = graphviz.Digraph(name="cluster_forward", graph_attr={
        "label": "forward pass", "color": FORWARD, "fontcolor": FORWARD, "style": "dashed"})
    bwd = graphviz.Digraph(name="cluster_backward", graph_attr={
        "label": "backward pass: ∂L/∂(·), each computed once", "color": BACKWARD, "fontcolor": BACKWARD,
        "style": "dashed"})
    fill = {"input": "#e8f0e8", "target": "#e8f0e8", "param": "#fff4d6", "forward": "#e6eefb", "loss": "#f3e6fb"}
    # a sum over paths and its terms, boxed together: "these add up to that"
    sums = {n.id: graphviz.Digraph(name=f"cluster_{n.id}", graph_attr={
        "label": f"∂L/∂{n.of}: sum over {len(n.paths)} paths", "color": BACKWARD, "fontcolor": BACKWARD,
        "style": "dotted"}) for n in g.nodes if n.paths}
    box = {p: n.id for n in g.nodes for p in n.paths}
    placed, below = {}, set()
    for n in g.nodes:
        attrs = {"id": n.id, "class": f"node-{n.kind}", "label": _label(n)}
        if n.kind == "grad":
            reused = len(n.uses) > 1
            attrs.update(color=REUSED if reused else BACKWARD, fillcolor="#fdecea", fontcolor=BACKWARD,
                         penwidth="2" if reused else "1")
            if n.via:
                attrs.update(style="rounded,filled,dashed", fillcolor="#fff7f5")
                attrs["class"] += " path-term"
            elif n.paths:
                attrs.update(penwidth="2.5")
                attrs["class"] += " path-sum"
            if n.id in sums or n.name in box:
                placed[n.name] = attrs
            else:
                bwd.node(n.id, **attrs)
        else:
            attrs.update(color=FORWARD, fillcolor=fill[n.kind])
            if n.kind == "param":
                attrs["shape"] = "box"
                attrs["style"] = "filled"
            fwd.node(n.id, **attrs)
    for n in g.nodes:  # the sum in the middle of its terms: half of them above it, half below
        if n.paths:
            half = (len(n.paths) + 1) // 2
            for name in (*n.paths[:half], n.name, *n.paths[half:]):
                sums[n.id].node(graph_id(name), **placed[name])
            below.update({(graph_id(t), n.id) for t in n.paths[half:]})
            bwd.subgraph(sums[n.id])
    dot.subgraph(bwd)  # in an LR layout the first cluster defined lands at the bottom
    dot.subgraph(fwd)
    for k, e in enumerate(g.edges):
        attrs = {"id": f"e{k}-{e.kind}", "class": f"edge-{e.kind}" + (f" factor-{_css(e.factor)}" if e.factor else "")}
        if e.kind == "forward":
            attrs.update(color=FORWARD, label=e.label, fontcolor=FORWARD)
        elif e.kind in ("backward", "path"):
            attrs.update(color=BACKWARD, fontcolor=BACKWARD, label=e.label, constraint="false", style="bold")
            if e.kind == "path":
                attrs["class"] += f" paths-{e.head} path-{e.tail}"
                if (e.tail, e.head) in below:  # drawn upwards into the sum: given head first, arrow at the tail
                    dot.edge(e.head, e.tail, dir="back", **attrs)
                    continue
        elif e.kind == "column":  # placed by the rank below, not drawn
            continue
        else:  # the quantity above its gradient: same column, the forward one on top
            attrs.update(style="dotted", arrowhead="none", color="#999999")
        dot.edge(e.tail, e.head, **attrs)
    for e in g.edges:
        if e.kind in ("pair", "column"):
            dot.body.append(f"\t{{rank=same; {_quote(e.tail)}; {_quote(e.head)}}}\n")
    return dot.source


def graph_id(step: str) -> str:
    return f"g-{step}"  # graph.grad_id (dot.py imports no stage above it)


def _quote(s: str) -> str:
    return '"' + s.replace('"', r'\"') + '"'


def _css(key: str) -> str:
    return key.replace("/", "--")


_VERSION_COMMENT = re.compile(rb"<!-- Generated by graphviz version [^>]*-->\n")
_PDF_DATE = re.compile(rb"/(CreationDate|ModDate) \(D:\d{14}([^)]*)\)")


def _epoch(m: re.Match) -> bytes:
    """A PDF date as 1970-01-01, byte for byte as long (the xref table holds offsets)."""
    return b"/%s (D:19700101000000%s)" % (m.group(1), m.group(2))


def require_dot() -> str:
    exe = shutil.which("dot")
    if exe is None:
        raise DeriveError(f"Graphviz's dot is not on PATH; {INSTALL}")
    return exe


def render(dot_source: str, fmt: str) -> bytes:
    """The picture in ``fmt`` (svg, png, pdf), from the system ``dot``."""
    if fmt not in FORMATS:
        raise DeriveError(f"unknown picture format {fmt!r}: expected one of {', '.join(FORMATS)}")
    exe = require_dot()
    env = {**os.environ, "SOURCE_DATE_EPOCH": "0"}
    fmt_arg = {"svg": "svg", "png": "png:cairo", "pdf": "pdf:cairo"}[fmt]
    try:
        done = subprocess.run([exe, f"-T{fmt_arg}"], input=dot_source.encode("utf-8"), capture_output=True,
                              env=env, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DeriveError(f"dot failed: {err}") from None
    if done.returncode != 0:
        msg = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DeriveError(f"dot failed: {msg[-1] if msg else f'exit {done.returncode}'}")
    out = done.stdout
    if fmt == "svg":
        out = _VERSION_COMMENT.sub(b"", out)
    elif fmt == "pdf":
        out = _PDF_DATE.sub(_epoch, out)
    return out

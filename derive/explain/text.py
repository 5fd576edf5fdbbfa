"""Document -> the plain text `derive explain` prints (the lecture's notation, Unicode)."""

from __future__ import annotations

import sympy as sp

from derive.explain.kinds import Code, Tex
from derive.explain.model import (ELLIPSIS, Chain, Cont, Document, Eq, FactorLine, Partial, Paths, Product, Prose,
                                  Result)
from derive.explain.notation import text


def math(m) -> str:
    if isinstance(m, Partial):
        if m.delta:
            return text(_delta_symbol(m.bottom))
        top = "L" if m.top is None else text(m.top)
        return f"∂{top}/∂{text(m.bottom)}"
    if isinstance(m, Chain):
        return _over(m.over) + " · ".join(ELLIPSIS if f == ELLIPSIS else math(f) for f in m.factors)
    if isinstance(m, Product):
        return _product(m)
    if isinstance(m, Paths):  # a Σ that is not the last term is bracketed: it does not run over the terms after it
        last = len(m.items) - 1
        return " + ".join("(%s)" % math(t) if t.over and k < last else math(t) for k, t in enumerate(m.items))
    if isinstance(m, str):
        return m
    return text(m)


def _delta_symbol(bottom: sp.Expr) -> sp.Expr:
    base = str(bottom.base.label) if isinstance(bottom, sp.Indexed) else bottom.name
    name = "delta" + base[1:]
    return sp.IndexedBase(name)[bottom.indices] if isinstance(bottom, sp.Indexed) else sp.Symbol(name)


def _over(over) -> str:
    if not over:
        return ""
    names = [text(i) for i in over]
    return f"Σ_{names[0]} " if len(names) == 1 else "Σ_{" + ",".join(names) + "} "


def _product(p: Product) -> str:
    out = []
    last = len(p.values) - 1
    for k, v in enumerate(p.values):
        if isinstance(v, Product):
            s = _product(v)
            out.append(f"({s})" if v.over and k < last else s)
            continue
        s = text(v)
        if isinstance(v, sp.Add) and len(p.values) > 1:
            s = f"({s})"
        elif k > 0 and s.startswith("−"):
            s = f"({s})"
        out.append(s)
    return _over(p.over) + "·".join(out)


def pieces(ps) -> str:
    out = []
    for p in ps:
        if isinstance(p, Tex):
            out.append(p.text)
        elif isinstance(p, Code):
            out.append(p.text)
        elif isinstance(p, str):
            out.append(p)
        else:
            out.append(math(p))
    return "".join(out)


def render(doc: Document) -> str:
    lines = [doc.header, ""]
    for n, sec in enumerate(doc.sections):
        lines.append(sec.title)
        pad = ""
        for item in sec.items:
            if isinstance(item, Eq):
                lhs = math(item.lhs)
                pad = " " * (len(lhs) + 2)
                rhs = " = ".join(math(r) for r in item.rhs)
                lines.append(f"  {lhs} {item.rel} {rhs}{pieces(item.note)}")
            elif isinstance(item, Cont):
                lines.append(f"{pad}= {math(item.rhs)}{pieces(item.note)}")
            elif isinstance(item, FactorLine):
                value = "" if item.value is None else f" = {text(item.value)}"
                lines.append(f"      {math(item.label)}{value}{pieces(item.note)}")
            elif isinstance(item, Result):
                lines.append(f"    {math(item.lhs)} = {math(item.value)}")
            elif isinstance(item, Prose):
                lines.append(" " * item.indent + pieces(item.pieces))
        if n < len(doc.sections) - 1:
            lines.append("")
    return "\n".join(lines) + "\n"

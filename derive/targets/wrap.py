"""Generated Python folded to at most 100 bytes a line (UTF-8: at most 100 characters too), the same way for
every target.

The printers write each derivation step as one expression, and a step can be hundreds of characters
long.  This pass folds the rendered module with Python's own tokenizer, so it never changes what the
code means:
- a trailing comment too long for its line moves onto comment lines of its own above the statement;
- a comment line is re-wrapped at word boundaries;
- code is broken between two tokens inside brackets (implicit line joining), preferring the places
  after a comma, then before an operator, at the shallowest bracket depth; a statement with no
  brackets to break in (``a = b + c*d + ...``, ``return ...``) gets its right-hand side parenthesised.
- a docstring paragraph with a long line is re-filled (prose only: list items, tables and aligned
  columns keep their lines, and a long one of those is split at its last space that fits): that
  changes only what help() shows;
- a long one-line string inside brackets becomes adjacent literals cut after a space (outside an
  f-string's braces), which Python joins back into the same string.
Anything else it cannot shorten it leaves as it is (tests/test_generated_lint.py reports it).
"""

from __future__ import annotations

import io
import re
import textwrap
import tokenize

WIDTH = 100
OPENERS, CLOSERS = "([{", ")]}"
# operators a line may break before (inside brackets); the lower the rank, the better the place
BREAK_BEFORE = {"+": 1, "-": 1, "&": 1, "|": 1, "and": 1, "or": 1, "if": 1, "else": 1, "for": 1,
                "*": 2, "/": 2, "@": 2, "==": 2, "<": 2, ">": 2, "<=": 2, ">=": 2, "!=": 2}


def _cols(text: str) -> int:
    """A line's width as byte-counting tools measure it: its UTF-8 bytes (the derivation's ∂, δ, Σ and σ in
    comments take two or three each), so a line within ``width`` of them is within ``width`` characters too."""
    return len(text.encode("utf-8"))


def _fill(text: str, width: int, **kw) -> list[str]:
    """textwrap.wrap (which counts characters) narrowed until every line is within ``width`` bytes."""
    for w in range(width, 0, -1):
        lines = textwrap.wrap(text, w, **kw)
        if all(_cols(ln) <= width for ln in lines):
            return lines
    return textwrap.wrap(text, 1, **kw)


def wrap(text: str, width: int = WIDTH) -> str:
    """``text`` (a whole module) with every line folded to ``width`` where the tokenizer allows."""
    text = _reflow_docstrings(text, width)
    for _ in range(8):  # each pass folds every long line once; the pieces may need another pass
        lines = text.splitlines(keepends=True)
        if all(_cols(ln.rstrip("\n")) <= width for ln in lines):
            return text
        depth, docs = _depth_at_line_starts(text)
        out = []
        taken = set()  # comment lines re-wrapped with the long comment line above them
        for i, ln in enumerate(lines):
            body = ln.rstrip("\n")
            if i in taken:
                continue
            if _cols(body) > width and depth.get(i) is not None and _comment(body):
                para = _comment_paragraph(lines, i, depth)
                taken.update(range(i + 1, i + len(para)))
                out.append("\n".join(_fold(" ".join(para), depth[i], width)) + "\n")
                continue
            if _cols(body) <= width:
                out.append(ln)
            elif i in docs:
                out.append("\n".join(_split_words(body, docs[i], width)) + ln[len(body):])
            elif depth.get(i) is None:
                out.append(ln)
            else:
                out.append("\n".join(_fold(body, depth[i], width)) + ln[len(body):])
        new = "".join(out)
        if new == text:
            return text
        text = new
    return text


def _comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _comment_paragraph(lines: list[str], i: int, depth: dict) -> list[str]:
    """The comment line ``i`` and the comment lines that continue its sentence below it (same indent, not a
    new item or a blank comment), so that a long one is re-wrapped as one paragraph rather than leaving a
    short line behind."""
    first = lines[i].rstrip("\n")
    lead = first[: len(first) - len(first.lstrip())] + "# "
    para = [first]
    for ln in lines[i + 1:]:
        body = ln.rstrip("\n")
        words = body[len(lead):]
        if depth.get(i + len(para)) is None or not body.startswith(lead) or words[:1] in ("", " ", "-", "*") \
                or words[:1].isdigit():
            break
        para.append(words)
    return para


def _depth_at_line_starts(text: str) -> tuple[dict[int, int | None], dict[int, str]]:
    """(0-based line -> bracket depth at its start, or None for a line inside a multi-line string;
    0-based line of a docstring -> the indent its continuation lines take)."""
    depth, out, inside, docs = 0, {}, set(), {}
    toks = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
            if t.type not in (tokenize.COMMENT, tokenize.NL)]
    for k, tok in enumerate(toks):
        for row in range(len(out), tok.start[0]):  # every line up to this token's starts at this depth
            out[row] = depth
        if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
            inside.update(range(tok.start[0], tok.end[0]))  # 0-based: the lines after the string's first
        if (tok.type == tokenize.STRING and tok.string.endswith('"""') and depth == 0
                and (k == 0 or toks[k - 1].type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT))
                and k + 1 < len(toks) and toks[k + 1].type == tokenize.NEWLINE):
            first = " " * tok.start[1]
            lines = tok.string.splitlines()
            for row, body in zip(range(tok.start[0] - 1, tok.end[0]), lines):
                own = body[: len(body) - len(body.lstrip())]
                docs[row] = first if row == tok.start[0] - 1 else (own or first)
        if tok.type == tokenize.OP:
            depth += (tok.string in OPENERS) - (tok.string in CLOSERS)
    return {row: (None if row in inside else d) for row, d in out.items()}, docs


def _reflow_docstrings(text: str, width: int) -> str:
    """Each docstring paragraph with a line over ``width`` re-filled to ``width`` (a paragraph: lines of
    one indent between blank lines, none of them a list item or a table row, which keep their lines)."""
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return text
    lines = text.splitlines(keepends=True)
    edits = []
    for k, tok in enumerate(toks):
        if not (tok.type == tokenize.STRING and tok.string.startswith('"""') and tok.end[0] > tok.start[0]
                and (k == 0 or toks[k - 1].type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.NL,
                                                     tokenize.COMMENT))):
            continue
        rows = range(tok.start[0] - 1, tok.end[0])
        if all(_cols(lines[r].rstrip("\n")) <= width for r in rows):
            continue
        first_indent = " " * tok.start[1]
        body = [lines[r].rstrip("\n") for r in rows]
        out, para = [], []

        def flush():
            if para and any(_cols(p) > width for p in para) and _plain(para):
                head = _indent(para[0])
                cont = _indent(para[1]) if len(para) > 1 else (first_indent if para[0].lstrip().startswith('"""')
                                                                else head)
                words = " ".join(p.strip() for p in para)
                first = _fill(words, width - _cols(head), **WORDS)[0]
                rest = words[len(first):].strip()
                out.append(head + first)
                out.extend(cont + r for r in (_fill(rest, width - _cols(cont), **WORDS) if rest else []))
            else:
                out.extend(para)
            para.clear()

        for ln in body:
            if not ln.strip() or ln.strip() == '"""':
                flush()
                out.append(ln)
            else:
                if para and _indent(ln) != _indent(para[-1]) and not para[0].lstrip().startswith('"""'):
                    flush()
                para.append(ln)
        flush()
        edits.append((rows, out))
    for rows, out in reversed(edits):
        end = lines[rows.stop - 1][len(lines[rows.stop - 1].rstrip("\n")):]  # the last line's own newline
        lines[rows.start:rows.stop] = [ln + "\n" for ln in out[:-1]] + [out[-1] + end]
    return "".join(lines)


WORDS = {"break_long_words": False, "break_on_hyphens": False}


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _plain(para: list[str]) -> bool:
    """Prose: no list items, table rows or aligned columns (two spaces inside a line's text)."""
    for p in para:
        t = p.strip().lstrip('"')
        if re.match(r"([-*|•]|\d+[.)]) ", t) or re.search(r"\S {3,}\S", t):
            return False
    return True


def _split_words(line: str, indent: str, width: int) -> list[str]:
    """A docstring line split at its last space that fits; the rest at ``indent`` (folded again if long)."""
    lead = len(line) - len(line.lstrip())
    fits = max(i for i in range(len(line) + 1) if _cols(line[:i]) <= width)  # characters within width bytes
    cut = line.rfind(" ", lead + 1, fits + 1)
    if cut <= lead:
        return [line]
    return [line[:cut].rstrip(), indent + line[cut:].lstrip()]


def _tokens(code: str):
    """The tokens of one physical line (its brackets may close on a later line: the tokens up to the
    end of the line are all it needs)."""
    skip = (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT)
    out = []
    try:
        for t in tokenize.generate_tokens(io.StringIO(code + "\n").readline):
            if t.start[0] > 1:
                break
            if t.type not in skip:
                out.append(t)
    except tokenize.TokenError:  # "EOF in multi-line statement": the line ends inside brackets
        pass
    except (IndentationError, SyntaxError):
        return None
    if out and out[-1].type == tokenize.ERRORTOKEN:
        return None
    return out


def _fold(line: str, depth0: int, width: int) -> list[str]:
    indent = line[: len(line) - len(line.lstrip())]
    stripped = line.strip()
    if stripped.startswith("#"):  # a comment line: re-wrap its words
        text = stripped.lstrip("#").strip()
        return _fill(text, width, initial_indent=indent + "# ", subsequent_indent=indent + "# ",
                     break_long_words=False, break_on_hyphens=False) or [line]
    shift = depth0  # a line inside brackets tokenizes with its open brackets put back in front
    toks = _tokens("(" * shift + line.lstrip())
    if toks is None:
        return [line]
    comment = next((t for t in toks if t.type == tokenize.COMMENT), None)
    code = line.lstrip()
    above = []
    if comment is not None:
        code = code[: comment.start[1] - shift].rstrip()
        if _cols(indent + code) + 2 + _cols(comment.string) > width:  # the comment goes above
            above = _fold(indent + comment.string, depth0, width)
        else:
            code = code + "  " + comment.string
        toks = [t for t in toks if t.type != tokenize.COMMENT]
    if _cols(indent + code) > width:
        split = _split_strings(code, toks, shift, depth0)
        if split != code:
            code, toks = split, _tokens("(" * shift + split)
    target = re.match(r"([\w.]+(?:, [\w.]+)+) = (.*)$", code) if depth0 == 0 else None
    if target and _cols(indent + target.group(1)) + 3 > width:  # a long unpacking: (a1, ..., f100) = ...
        code = f"({target.group(1)}) = {target.group(2)}"
        toks = _tokens(code)
    lines = [_join_adjacent(ln) for ln in _break(indent, code, toks, shift, depth0, width)]
    return above + lines


# two pieces of a split literal that the fold left side by side on one line (no quote or backslash inside)
_ADJACENT = re.compile(r'(?<![\w"])(f?)"([^"\\]*)" (f?)"([^"\\]*)"')


def _join_adjacent(line: str) -> str:
    """Adjacent literals of one kind (f with f, plain with plain) on one line as one literal again."""
    while True:
        new = _ADJACENT.sub(lambda m: f'{m[1]}"{m[2]}{m[4]}"' if m[1] == m[3] else m[0], line)
        if new == line:
            return line
        line = new


def _split_strings(code: str, toks, shift: int, depth0: int, piece: int = 60) -> str:
    """Every one-line string literal inside brackets longer than ``piece`` as adjacent literals of at most
    about ``piece`` characters, cut after a space (outside an f-string's braces), which Python joins again."""
    out, last, depth = [], 0, 0
    for t in toks:
        col = t.start[1] - shift
        if t.type == tokenize.OP:
            depth += (t.string in OPENERS) - (t.string in CLOSERS)
        if t.type != tokenize.STRING or depth < 1 or col < 0 or len(t.string) <= piece:
            continue
        m = re.match(r"([a-zA-Z]*)(['\"])(.*)\2$", t.string, re.S)
        if not m or t.string.startswith(m.group(1) + m.group(2) * 3) or "\n" in t.string:
            continue
        prefix, q, body = m.groups()
        cuts, braces, start = [], 0, 0
        for i, ch in enumerate(body):
            braces += (ch == "{") - (ch == "}") if "f" in prefix.lower() else 0
            if ch == " " and braces == 0 and i - start >= piece - 10 and body[i - 1] != "\\" and i + 1 < len(body):
                cuts.append(i + 1)
                start = i + 1
        if not cuts:
            continue
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]
        lit = []
        for p in pieces:
            pre = prefix
            if "f" in prefix.lower() and "{" not in p and "}" not in p:
                pre = prefix.replace("f", "").replace("F", "")  # no placeholder: a plain literal (pyflakes F541)
            lit.append(f"{pre}{q}{p}{q}")
        out.append(code[last:col] + " ".join(lit))
        last = col + len(t.string)
    return "".join(out) + code[last:]


def _unclosed(toks) -> list:
    """The opening brackets that the tokens leave open."""
    stack = []
    for t in toks:
        if t.type == tokenize.OP and t.string in OPENERS:
            stack.append(t)
        elif t.type == tokenize.OP and t.string in CLOSERS and stack:
            stack.pop()
    return stack


def _balanced(code: str) -> bool:
    toks = _tokens(code) or []
    return sum((t.string in OPENERS) - (t.string in CLOSERS) for t in toks if t.type == tokenize.OP) == 0


def _break(indent: str, code: str, toks, shift: int, depth0: int, width: int) -> list[str]:
    if _cols(indent + code) <= width:
        return [indent + code]
    # places to break: before token k, where the depth is >= 1 (implicit joining), with a rank
    places, depth = [], 0
    for k, t in enumerate(toks):
        col = t.start[1] - shift  # negative for the brackets put back in front
        if col > 0 and depth >= 1 and t.type != tokenize.COMMENT and t.string not in CLOSERS:
            prev = toks[k - 1]
            if prev.string == "," or (prev.type == tokenize.STRING and t.type == tokenize.STRING):
                rank = 0
            elif t.string in BREAK_BEFORE and prev.type != tokenize.OP:
                rank = BREAK_BEFORE[t.string]
            elif prev.string in OPENERS:
                rank = 3
            else:
                rank = None
            if rank is not None:
                places.append((col, depth, rank))
        if t.type == tokenize.OP:
            if t.string in OPENERS:
                depth += 1
            elif t.string in CLOSERS:
                depth -= 1
    if not places and depth0 == 0:
        m = re.match(r"((?:return|[\w.\[\], ]+ [-+*/]?=) )(.*\S)$", code)
        if m and not m.group(2).startswith("(") and _balanced(m.group(2)):  # never around an open bracket
            new = f"{m.group(1)}({m.group(2)})"
            return _break(indent, new, _tokens(new), 0, 0, width)
        return [indent + code]
    cont = indent + "    "
    if depth0 > 0 and all(p[1] == shift for p in places):  # pieces of a line inside brackets that opens none
        cont = indent  # keep the column the line was given, as its neighbours do
    if depth0 == 0 and depth > 0:  # the statement goes on below, aligned under its open bracket: so do the pieces
        opener = max(t.start[1] - shift for t in _unclosed(toks))
        if opener + 1 <= width // 2:
            cont = indent + " " * (opener + 1)
    out, start, first = [], 0, True
    while True:
        lead = indent if first else cont
        rest = code[start:]
        if _cols(lead + rest) <= width:
            out.append(lead + rest)
            return out
        fits = [p for p in places if p[0] > start and _cols(lead + code[start:p[0]].rstrip()) <= width]
        if fits:
            best = min(p[1] for p in fits)  # the shallowest depth, then the best rank, then the furthest
            rank = min(p[2] for p in fits if p[1] == best)
            col = max(p[0] for p in fits if p[1] == best and p[2] == rank)
            if col - start < (width - len(lead)) // 3:  # too short a piece: take the furthest place instead
                col = max(p[0] for p in fits)
        else:
            later = [p[0] for p in places if p[0] > start]
            if not later:
                out.append(lead + rest)
                return out
            col = min(later)
        out.append(lead + code[start:col].rstrip())
        start = col
        first = False

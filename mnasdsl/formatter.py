"""The formatter: canonical text for IR values, and `fmt` for whole files.

``format(x)`` writes an IR value in canonical form. ``format_source`` rewrites a file
statement by statement in canonical spelling while keeping its order, comments and
(single) blank lines, like black does; it is idempotent and ``parse(format(x)) == x``.
"""

from __future__ import annotations

from typing import Any

from .blocks import decode_elems, format_block, format_space_block
from .diagnostics import DiagnosticSink
from .ir import Block, Network, SpaceBlock, SpaceDef
from .parser import Stmt, _statements, parse_units

INDENT = "  "


def _num(x: float) -> str:
    return repr(float(x))


def header_lines(x: Network | SpaceDef, *, full: bool = True) -> list[str]:
    h, w, c = x.input
    out = [f"input {h}x{w}x{c}", f"classes {x.classes}", f"width {_num(x.width)}"]
    if x.depth != 1.0 or full is False:
        out.append(f"depth {_num(x.depth)}")
    if x.divisor != 8:
        out.append(f"divisor {x.divisor}")
    if x.min_depth is not None:
        out.append(f"min_depth {x.min_depth}")
    out.append(f"dropout {_num(x.dropout)}")
    if x.bn_momentum != 0.99 or x.bn_eps != 1e-3:
        out.append(f"bn momentum {_num(x.bn_momentum)} eps {_num(x.bn_eps)}")
    if x.padding != "same":
        out.append(f"padding {x.padding}")
    if x.activation != "relu":
        out.append(f"activation {x.activation}")
    if x.expansion_divisor != 1:
        out.append(f"expansion_divisor {x.expansion_divisor}")
    return out


def format_unit(x: Network | SpaceDef) -> str:
    kind = "space" if isinstance(x, SpaceDef) else "network"
    lines = [f"{kind} {x.name}:"]
    lines += [INDENT + s for s in header_lines(x)]
    # A scaled stem (the default) is written without its mode, so existing files keep their form.
    lines.append(INDENT + "stem " + format_block(x.stem, "stem") + (" fixed" if x.stem_mode == "fixed" else ""))
    lines.append(INDENT + "blocks")
    for b in x.blocks:
        text = format_space_block(b) if isinstance(b, SpaceBlock) else format_block(b)
        lines.append(INDENT * 2 + text)
    lines.append(INDENT + "head " + format_block(x.head, "head") + " " + x.head_mode
                 + (" pooled" if x.head_pooled else ""))
    return "\n".join(lines) + "\n"


def format(x: Any) -> str:  # noqa: A001 - the public API name
    """Canonical text of a Network, SpaceDef, Space, Block or a list of units."""
    from .space import Space

    if isinstance(x, Space):
        x = x.spec
    if isinstance(x, Block):
        return format_block(x)
    if isinstance(x, SpaceBlock):
        return format_space_block(x)
    if isinstance(x, (Network, SpaceDef)):
        return format_unit(x)
    if isinstance(x, (list, tuple)):
        return "\n".join(format(u) for u in x)
    raise TypeError(f"cannot format {type(x).__name__}")


def _canon_block_text(text: str, line: int, col: int, kind: str, role: str) -> str:
    from .blocks import build_block, build_space_block

    sink = DiagnosticSink()
    elems = decode_elems(text, line, col)
    if kind == "space" and role == "block":
        sb = build_space_block(elems, None, sink)
        return format_space_block(sb) if sb is not None else text
    b = build_block(elems, None, sink, role)
    return format_block(b, role) if b is not None else text


def _format_stmt(s: Stmt, kind: str) -> str:
    a = s.args
    if s.kind == "header":
        return f"{a[0]} {a[1]}:"
    if s.kind == "input":
        parts = a[0].split("x")
        if len(parts) == 2:
            parts.append("3")
        return "input " + "x".join(str(int(p)) for p in parts)
    if s.kind in ("classes", "divisor", "min_depth", "expansion_divisor"):
        return f"{s.kind} {int(a[0])}"
    if s.kind in ("width", "depth", "dropout"):
        return f"{s.kind} {_num(float(a[0]))}"
    if s.kind == "bn":
        return "bn " + " ".join(f"{a[j]} {_num(float(a[j + 1]))}" for j in range(0, len(a), 2))
    if s.kind in ("padding", "activation"):
        return f"{s.kind} {a[0]}"
    if s.kind == "stem":
        text = "stem " + _canon_block_text(a[0], s.arg_spans[0].line, s.arg_spans[0].col, kind, "stem")
        return text + (" fixed" if len(a) > 1 and a[1] == "fixed" else "")
    if s.kind == "head":
        text = "head " + _canon_block_text(a[0], s.arg_spans[0].line, s.arg_spans[0].col, kind, "head")
        mode = next((w for w in a[1:] if w != "pooled"), "fixed")
        return text + " " + mode + (" pooled" if "pooled" in a[1:] else "")
    if s.kind == "blocks":
        if not a:
            return "blocks"
        return "blocks " + " ".join(_canon_block_text(t, sp.line, sp.col, kind, "block")
                                    for t, sp in zip(a, s.arg_spans))
    if s.kind == "block_line":
        return " ".join(_canon_block_text(t, sp.line, sp.col, kind, "block") for t, sp in zip(a, s.arg_spans))
    raise AssertionError(s.kind)


def format_source(text: str, path: str | None = None) -> str:
    """Canonical rewrite of a whole file; raises MnasError if the file is invalid."""
    parse_units(text, path)  # validates everything first: never reformat a broken file
    src = text if text.endswith("\n") else text + "\n"
    stmts = {s.span.line: s for s in _statements(src, DiagnosticSink(path))}
    out: list[str] = []
    kind = "network"
    blank = False
    last_is_stmt = False
    lines = src.split("\n")[:-1]
    levels: dict[int, int] = {}
    for ln, s in stmts.items():
        levels[ln] = 0 if s.kind == "header" else 2 if s.kind == "block_line" else 1
    pending: list[str] = []  # full-line comments, indented like the statement that follows them
    for i, raw in enumerate(lines, start=1):
        comment = ""
        hashpos = raw.find("#")
        if hashpos >= 0:
            comment = raw[hashpos:].rstrip()
        s = stmts.get(i)
        if s is None:
            if comment:
                if not pending and last_is_stmt and _next_is_header(stmts, i, len(lines)) and not blank:
                    out.append("")
                nxt = _next_level(levels, i, len(lines))
                pending.append(comment)
                out.append(INDENT * nxt + comment)
                blank = False
                last_is_stmt = False
            elif out and not blank:
                out.append("")
                blank = True
                pending = []
            continue
        level = levels[i]
        if s.kind == "header":
            kind = s.args[0]
            if out and last_is_stmt:
                out.append("")
        pending = []
        body = _format_stmt(s, kind)
        line = INDENT * level + body
        if comment:
            line += "  " + comment
        out.append(line)
        blank = False
        last_is_stmt = True
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def _next_level(levels: dict[int, int], i: int, n: int) -> int:
    for j in range(i + 1, n + 1):
        if j in levels:
            return levels[j]
    return 0


def _next_is_header(stmts: dict[int, Stmt], i: int, n: int) -> bool:
    for j in range(i + 1, n + 1):
        if j in stmts:
            return stmts[j].kind == "header"
    return False

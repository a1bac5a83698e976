"""`.mnas` files: Lark parse into statements, then units, then validated Network / SpaceDef IR.

All problems of a file are collected (syntax errors line by line, then every semantic rule)
and raised together as one MnasError, so a user fixes a file in one round.
"""

from __future__ import annotations

import difflib
import re
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .blocks import block_from_text, build_space_block, decode_elems, grammar_text
from .diagnostics import Diagnostic, DiagnosticSink, MnasError, Span
from .ir import (
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_MULTIPLIER,
    MAX_RESOLUTION,
    Block,
    Network,
    SpaceBlock,
    SpaceDef,
)
from .rounding import round_filters

MAX_FILE_BYTES = 4 * 1024 * 1024


class Stmt(NamedTuple):
    """One line of a file: what it says, where, and the spans of its parts."""

    kind: str
    args: tuple[Any, ...]
    span: Span
    arg_spans: tuple[Span, ...]


class Unit(NamedTuple):
    kind: str  # network | space
    name: str
    header: Stmt
    stmts: tuple[Stmt, ...]


@cache
def file_parser() -> Lark:
    return Lark(grammar_text("mnas.lark"), parser="lalr", propagate_positions=True, maybe_placeholders=False)


_TERM_DESC = {
    "INT": "an integer",
    "NUMBER": "a number",
    "DIMS": "dimensions HxWxC (e.g. 224x224x3)",
    "BLOCK": "a block string",
    "NAME": "a name",
    "KIND": "`network` or `space`",
    "_NL": "end of line",
    "$END": "end of file",
    "PADDING": "`same` or `symmetric`",
    "ACT": "an activation (relu, relu6, swish, hswish)",
    "HEADMODE": "`fixed` or `scaled`",
    "POOLED": "`pooled` (after `fixed`/`scaled`)",
    "BN_KEY": "`momentum` or `eps`",
    "COLON": "`:`",
}


def _describe_expected(expected: set[str] | frozenset[str]) -> str:
    parser = file_parser()
    names = []
    for term in sorted(expected):
        if term in _TERM_DESC:
            names.append(_TERM_DESC[term])
            continue
        try:
            pat = parser.get_terminal(term).pattern
            names.append(f"`{pat.value}`")
        except KeyError:
            names.append(term)
    names = sorted(set(names))
    if len(names) > 6:
        return "a setting (input, classes, width, depth, divisor, min_depth, dropout, bn, padding, activation, " \
               "expansion_divisor, stem, head, blocks) or a block string"
    return " or ".join(names)


def _span_tok(tok: Token) -> Span:
    return Span(tok.line or 1, tok.column or 1, tok.end_line or tok.line or 1,
                tok.end_column or ((tok.column or 1) + len(tok)))


def _syntax_error(e: UnexpectedInput, text: str, line_no: int | None = None) -> Diagnostic:
    if isinstance(e, UnexpectedCharacters):
        line = line_no or e.line
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        return Diagnostic(f"unexpected character {ch!r}", Span(line, e.column, line, e.column + 1))
    if isinstance(e, UnexpectedToken):
        tok = e.token
        if tok.type in ("$END", "_NL"):
            span = Span(line_no or tok.line or 1, tok.column or 1, line_no or tok.line or 1, (tok.column or 1) + 1)
            return Diagnostic(f"unexpected end of line; expected {_describe_expected(e.expected)}", span)
        span = _span_tok(tok)
        if line_no:
            span = Span(line_no, span.col, line_no, span.end_col)
        return Diagnostic(f"unexpected `{tok}`; expected {_describe_expected(e.expected)}", span)
    if isinstance(e, UnexpectedEOF):
        return Diagnostic("unexpected end of file")
    return Diagnostic(str(e))


def _statements(text: str, sink: DiagnosticSink) -> list[Stmt]:
    """Parse the whole file; on syntax errors reparse line by line to report every bad line."""
    fast = statements_fast(text)
    if fast is not None:
        return fast
    parser = file_parser()
    try:
        tree = parser.parse(text)
        return [_stmt(t) for t in tree.children if isinstance(t, Tree)]
    except UnexpectedInput:
        pass
    stmts: list[Stmt] = []
    for i, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            tree = parser.parse(line + "\n")
        except UnexpectedInput as e:
            header = _header_without_colon(line, i, sink)
            if header is not None:  # recovered: the unit's lines are not all "outside of a unit"
                stmts.append(header)
                continue
            sink.items.append(_syntax_error(e, line + "\n", i).with_path(sink.path))
            continue
        for t in tree.children:
            if isinstance(t, Tree):
                s = _stmt(t)
                stmts.append(s._replace(
                    span=Span(i, s.span.col, i, s.span.end_col),
                    arg_spans=tuple(Span(i, a.col, i, a.end_col) for a in s.arg_spans)))
    return stmts


_RE_HEADER_NO_COLON = re.compile(r"[ \t\f\r]*(network|space)[ \t\f\r]+([A-Za-z_][A-Za-z0-9_.\-]*)[ \t\f\r]*(#.*)?\Z")


def _header_without_colon(line: str, line_no: int, sink: DiagnosticSink) -> Stmt | None:
    """`network NAME` without its colon: one clear error, and the header kept, so that every
    following line is read as part of the unit instead of cascading into "outside of a unit"."""
    m = _RE_HEADER_NO_COLON.match(line)
    if m is None:
        return None
    kind, name = m.group(1), m.group(2)
    k0, n0, n1 = m.start(1) + 1, m.start(2) + 1, m.end(2) + 1
    sink.error(f"expected `:` after `{kind} {name}`", Span(line_no, n1, line_no, n1 + 1))
    return Stmt("header", (kind, name), Span(line_no, k0, line_no, n1),
                (Span(line_no, k0, line_no, k0 + len(kind)), Span(line_no, n0, line_no, n1)))


def _stmt(t: Tree) -> Stmt:
    kind = str(t.data)
    m = t.meta
    span = Span(m.line, m.column, m.end_line, m.end_column)
    toks: list[Token] = []
    for c in t.children:
        if isinstance(c, Token):
            toks.append(c)
        else:  # bn_opt
            toks.extend(x for x in c.children if isinstance(x, Token))
    if kind not in ("header", "block_line"):
        toks = toks[1:]  # the keyword itself
    return Stmt(kind, tuple(str(x) for x in toks), span, tuple(_span_tok(x) for x in toks))


_KEYWORDS = frozenset({"input", "classes", "width", "depth", "divisor", "min_depth", "dropout", "bn", "padding",
                       "activation", "stem", "head", "blocks", "expansion_divisor"})
_RE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
_RE_DIMS = re.compile(r"[0-9]+x[0-9]+(x[0-9]+)?\Z")
_RE_INT = re.compile(r"[+-]?[0-9]+\Z")
_RE_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
_RE_TOKEN = re.compile(r"[^ \t\f\r#]+")
_RE_PLAIN_TEXT = re.compile(r"(?:[ -~\t\n]|\r(?=\n))*\Z")  # printable ASCII, tabs, newlines only
_VALUE_RE = {"input": _RE_DIMS, "classes": _RE_INT, "divisor": _RE_INT, "min_depth": _RE_INT,
             "expansion_divisor": _RE_INT, "width": _RE_NUMBER, "depth": _RE_NUMBER, "dropout": _RE_NUMBER}
_ENUMS = {"padding": ("same", "symmetric"), "activation": ("relu6", "relu", "swish", "hswish")}


def statements_fast(text: str) -> list[Stmt] | None:
    """A hand-written line reader for plain files; None defers to the grammar, which also
    produces every diagnostic. A hypothesis test proves both give the same statements."""
    if not _RE_PLAIN_TEXT.match(text):
        return None
    out: list[Stmt] = []
    tnew = tuple.__new__
    ln = 0
    for raw in text.split("\n"):
        ln += 1
        h = raw.find("#")
        body = raw if h < 0 else raw[:h]
        parts = body.split()
        if not parts:
            continue
        if len(parts) == 1:
            t = parts[0]
            c = body.index(t) + 1
            toks = [(t, c)]
            whole = tnew(Span, (ln, c, ln, c + len(t)))
            spans: tuple[Span, ...] = (whole,)
        else:
            toks = []
            pos = 0
            for t in parts:
                pos = body.index(t, pos)
                toks.append((t, pos + 1))
                pos += len(t)
            spans = tuple([tnew(Span, (ln, c, ln, c + len(t))) for t, c in toks])
            whole = tnew(Span, (ln, toks[0][1], ln, spans[-1][3]))
        first = parts[0]
        if first in ("network", "space"):
            if len(toks) == 2 and toks[1][0].endswith(":") and _RE_NAME.match(toks[1][0][:-1]):
                name = toks[1][0][:-1]
                nsp = Span(ln, toks[1][1], ln, toks[1][1] + len(name))
            elif len(toks) == 3 and toks[2][0] == ":" and _RE_NAME.match(toks[1][0]):
                name, nsp = toks[1][0], spans[1]
            else:
                return None
            out.append(Stmt("header", (first, name), whole, (spans[0], nsp)))
            continue
        if first.startswith(("network:", "space:")):
            return None
        if first not in _KEYWORDS:
            out.append(Stmt("block_line", tuple(parts), whole, spans))
            continue
        args = tuple(parts[1:])
        asp = spans[1:]
        if first in _VALUE_RE:
            if len(args) != 1 or not _VALUE_RE[first].match(args[0]):
                return None
        elif first in _ENUMS:
            if len(args) != 1 or args[0] not in _ENUMS[first]:
                return None
        elif first == "bn":
            if not args or len(args) % 2 or any(
                    args[j] not in ("momentum", "eps") or not _RE_NUMBER.match(args[j + 1])
                    for j in range(0, len(args), 2)):
                return None
        elif first == "stem":
            if len(args) not in (1, 2) or (len(args) == 2 and args[1] not in ("fixed", "scaled")):
                return None
        elif first == "head":
            if (len(args) not in (1, 2, 3) or (len(args) == 3 and (args[1] not in ("fixed", "scaled")
                                                                   or args[2] != "pooled"))
                    or (len(args) == 2 and args[1] not in ("fixed", "scaled", "pooled"))):
                return None
        out.append(Stmt(first, args, whole, asp))
    return out


def units(text: str, sink: DiagnosticSink) -> list[Unit]:
    stmts = _statements(text, sink)
    out: list[Unit] = []
    cur: list[Stmt] | None = None
    header: Stmt | None = None
    for s in stmts:
        if s.kind == "header":
            if header is not None and cur is not None:
                out.append(Unit(header.args[0], header.args[1], header, tuple(cur)))
            header, cur = s, []
        elif cur is None:
            sink.error("setting outside of a unit: start with `network NAME:` or `space NAME:`", s.span)
        else:
            cur.append(s)
    if header is not None and cur is not None:
        out.append(Unit(header.args[0], header.args[1], header, tuple(cur)))
    return out


def _fmtb(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _num(text: str, span: Span, sink: DiagnosticSink, what: str, lo: float, hi: float,
         lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> Any:
    if len(text) > 24:
        sink.error(f"{what} `{text[:24]}...` is absurdly long", span)
        return None
    try:
        x: Any = int(text) if integer else float(text)
    except ValueError:
        sink.error(f"{what} must be {'an integer' if integer else 'a number'}, got `{text}`", span)
        return None
    if x != x or x in (float("inf"), float("-inf")):
        sink.error(f"{what} must be finite, got `{text}`", span)
        return None
    if x < lo or x > hi or (lo_open and x == lo) or (hi_open and x == hi):
        lo_s = f"> {_fmtb(lo)}" if lo_open else f">= {_fmtb(lo)}"
        hi_s = f"< {_fmtb(hi)}" if hi_open else f"<= {_fmtb(hi)}"
        sink.error(f"{what} must be {lo_s} and {hi_s}, got {text}", span)
        return None
    return x


_SETTING_NAMES = {
    "input": "input", "classes": "classes", "width": "width", "depth": "depth", "divisor": "divisor",
    "min_depth": "min_depth", "dropout": "dropout", "bn": "bn", "padding": "padding",
    "activation": "activation", "stem": "stem", "head": "head", "blocks": "blocks",
    "expansion_divisor": "expansion_divisor",
}


_RE_WORD = re.compile(r"[A-Za-z][A-Za-z_\-]*:?\Z")  # no digit: never a block string (they all have a k or o)


def _unknown_setting(word: str, in_blocks: bool) -> tuple[str, str | None] | None:
    """A block line that is really a misspelled setting (`widht 0.5`): its first token is a plain word
    close to a setting name or, outside `blocks`, any plain word. Returns the word and the likely setting."""
    if not _RE_WORD.match(word):
        return None
    word = word.rstrip(":")
    close = difflib.get_close_matches(word.lower().replace("-", "_"), sorted(_KEYWORDS), n=1, cutoff=0.6)
    if close:
        return word, close[0]
    return None if in_blocks else (word, None)


def _field_span(text: str, span: Span, field: str) -> Span:
    """The span of one ``_``-separated field of a block string (the whole string if absent)."""
    pos = 0
    for f in text.split("_"):
        if f == field:
            return Span(span.line, span.col + pos, span.line, span.col + pos + len(f))
        pos += len(f) + 1
    return span


def build_unit(unit: Unit, sink: DiagnosticSink, syntax_errors: bool = False) -> Network | SpaceDef | None:
    is_space = unit.kind == "space"
    n0 = len(sink.items)
    fields: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    seen: dict[str, Span] = {}
    blocks: list[Block | SpaceBlock | None] = []
    block_spans: list[Span] = []
    in_blocks = False
    head_span: Span | None = None
    guessed: set[str] = set()  # settings a misspelled line probably meant: not also reported missing
    for s in unit.stmts:
        if s.kind == "block_line" and _RE_WORD.match(s.args[0]):
            bad = _unknown_setting(s.args[0], in_blocks)
            if bad is not None:
                word, guess = bad
                if guess is None:
                    sink.error(f"unknown setting `{word}`", s.arg_spans[0],
                               "settings are " + ", ".join(sorted(_KEYWORDS)))
                else:
                    sink.error(f"unknown setting `{word}` (did you mean `{guess}`?)", s.arg_spans[0])
                    guessed.add(guess)
                    in_blocks = in_blocks or guess == "blocks"
                continue
        if s.kind == "block_line" and in_blocks and not is_space:  # the common line, first
            for text, bsp in zip(s.args, s.arg_spans):
                block_spans.append(bsp)
                blocks.append(block_from_text(text, bsp, sink))
            continue
        if s.kind != "block_line":
            if s.kind in seen:
                sink.error(f"duplicate `{_SETTING_NAMES[s.kind]}` (first given on line {seen[s.kind].line})", s.span)
                continue
            seen[s.kind] = s.span
            in_blocks = s.kind == "blocks"
        a, sp = s.args, s.arg_spans
        if s.kind == "input":
            parts = a[0].split("x")
            if len(parts) == 2:
                parts.append("3")
            vals = []
            for j, p in enumerate(parts):
                lim = MAX_RESOLUTION if j < 2 else MAX_CHANNELS
                what = ("height", "width", "channels")[j]
                vals.append(_num(p, sp[0], sink, f"input {what}", 1, lim, integer=True))
            if None not in vals:
                fields["input"] = tuple(vals)
                spans["input"] = sp[0]
        elif s.kind in ("classes", "divisor", "min_depth", "expansion_divisor"):
            hi = {"classes": MAX_CLASSES, "divisor": 1024, "min_depth": MAX_CHANNELS, "expansion_divisor": 1024}[s.kind]
            v = _num(a[0], sp[0], sink, s.kind, 1, hi, integer=True)
            if v is not None:
                fields[s.kind] = v
                spans[s.kind] = sp[0]
        elif s.kind in ("width", "depth"):
            v = _num(a[0], sp[0], sink, f"{s.kind} multiplier", 0, MAX_MULTIPLIER, lo_open=True)
            if v is not None:
                fields[s.kind] = v
                spans[s.kind] = sp[0]
        elif s.kind == "dropout":
            v = _num(a[0], sp[0], sink, "dropout", 0, 1, hi_open=True)
            if v is not None:
                fields["dropout"] = v
                spans["dropout"] = sp[0]
        elif s.kind == "bn":
            got: set[str] = set()
            for j in range(0, len(a), 2):
                key, val = a[j], a[j + 1]
                if key in got:
                    sink.error(f"duplicate `bn {key}`", sp[j])
                    continue
                got.add(key)
                if key == "momentum":
                    v = _num(val, sp[j + 1], sink, "bn momentum", 0, 1, hi_open=True)
                    if v is not None:
                        fields["bn_momentum"] = v
                        spans["bn_momentum"] = sp[j + 1]
                else:
                    v = _num(val, sp[j + 1], sink, "bn eps", 0, 1, lo_open=True)
                    if v is not None:
                        fields["bn_eps"] = v
                        spans["bn_eps"] = sp[j + 1]
        elif s.kind == "padding":
            fields["padding"] = a[0]
        elif s.kind == "activation":
            fields["activation"] = a[0]
        elif s.kind in ("stem", "head"):
            blk = block_from_text(a[0], sp[0], sink, role=s.kind)
            if blk is not None:
                fields[s.kind] = blk
            if s.kind == "head":
                head_span = sp[0]
                for word in a[1:]:
                    if word == "pooled":
                        fields["head_pooled"] = True
                    else:
                        fields["head_mode"] = word
                if fields.get("head_pooled") and blk is not None and blk.kernel != 1:
                    sink.error(f"a pooled head is a 1x1 conv on the pooled features: write `k1`, not `k{blk.kernel}`",
                               _field_span(a[0], sp[0], f"k{blk.kernel}"))
            elif len(a) > 1:
                fields["stem_mode"] = a[1]
        if s.kind in ("blocks", "block_line"):
            if s.kind == "block_line" and not in_blocks:
                sink.error("block string outside a `blocks` section", s.span)
                continue
            for text, bsp in zip(a, sp):
                block_spans.append(bsp)
                if not is_space:
                    blocks.append(block_from_text(text, bsp, sink))
                    continue
                try:
                    elems = decode_elems(text, bsp.line, bsp.col)
                except MnasError as err:
                    sink.items.extend(d.with_path(sink.path) for d in err.diagnostics)
                    blocks.append(None)
                    continue
                blocks.append(build_space_block(elems, bsp, sink))
    hs = unit.header.arg_spans[1] if len(unit.header.arg_spans) > 1 else unit.header.span
    missing = False
    for req in ("stem", "blocks", "head"):
        if req not in seen:
            missing = True
            if not syntax_errors and req not in guessed:
                sink.error(f"{unit.kind} `{unit.name}` has no `{req}`", hs)
    if "blocks" in seen and not blocks:
        sink.error(f"{unit.kind} `{unit.name}` has an empty `blocks` section", seen["blocks"])
    if not is_space and "stem" in fields:
        _check_channels_partial(fields["stem"], blocks, fields, sink)
    if len(sink.items) != n0 or missing or "stem" not in fields or "head" not in fields:
        return None
    common = dict(name=unit.name, span=unit.header.span, spans=spans, blocks=tuple(blocks), **fields)
    if is_space:
        space = SpaceDef.model_construct(**_with_defaults(common))
        _check_space(space, block_spans, sink)
        return space if len(sink.items) == n0 else None
    net = _new_network(_with_defaults(common))
    del head_span
    return net if len(sink.items) == n0 else None


_DEFAULTS: dict[str, Any] = dict(
    input=(224, 224, 3), classes=1000, width=1.0, depth=1.0, divisor=8, min_depth=None, dropout=0.2,
    bn_momentum=0.99, bn_eps=1e-3, padding="same", activation="relu", head_mode="fixed", stem_mode="scaled",
    expansion_divisor=1, head_pooled=False,
)


_NET_FIELDS = tuple(Network.model_fields)


def _new_network(values: dict[str, Any]) -> Network:
    """Construct an already-validated Network without pydantic's per-field machinery (hot path)."""
    n = Network.__new__(Network)
    object.__setattr__(n, "__dict__", {k: values[k] for k in _NET_FIELDS})
    object.__setattr__(n, "__pydantic_fields_set__", set(_NET_FIELDS))
    object.__setattr__(n, "__pydantic_extra__", None)
    object.__setattr__(n, "__pydantic_private__", None)
    return n


def _with_defaults(fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(_DEFAULTS)
    out.update(fields)
    return out


def _check_channels_partial(stem: Block, blocks: list[Block | SpaceBlock | None], fields: dict[str, Any],
                            sink: DiagnosticSink) -> None:
    """A block's explicit ``i`` must equal the channels it actually receives (checked up to the
    first block that failed to parse, so every real mismatch is still reported)."""
    w = fields.get("width", 1.0)
    div = fields.get("divisor", 8)
    mind = fields.get("min_depth")
    fixed_stem = fields.get("stem_mode") == "fixed"
    c = round_filters(stem.output, stem.output_factor, 1.0 if fixed_stem else w, div, mind)
    prev = "the stem"
    for bi, b in enumerate(blocks):
        if not isinstance(b, Block):
            return
        if b.input is not None:  # i names what the producer makes: after a fixed stem, unscaled
            declared = round_filters(b.input, 1.0, 1.0 if fixed_stem and bi == 0 else w, div, mind)
            if declared != c:
                got = f"i{b.input}" if declared == b.input else f"i{b.input}, {declared} after width {w:g}"
                sink.error(f"block {bi} declares {got} input channels but receives {c} from {prev}",
                           b.field_span("input"))
        c = round_filters(b.output, b.output_factor, w, div, mind)
        prev = f"block {bi}"


def _check_space(space: SpaceDef, block_spans: list[Span], sink: DiagnosticSink) -> None:
    from .space import check_space_blocks

    check_space_blocks(space, block_spans, sink)


def read_source(path: str | Path) -> str:
    """Read a spec file as text; unreadable, binary or oversized files are user errors."""
    p = Path(path)
    name = str(path)
    try:
        if p.is_dir():
            raise MnasError(Diagnostic("is a directory, not a .mnas file", path=name))
        data = p.read_bytes()
    except FileNotFoundError:
        raise MnasError(Diagnostic("no such file", path=name)) from None
    except PermissionError:
        raise MnasError(Diagnostic("permission denied", path=name)) from None
    except OSError as e:
        raise MnasError(Diagnostic(f"cannot read file: {e.strerror or e}", path=name)) from None
    return decode_source(data, name)


def decode_source(data: bytes, path: str | None = None) -> str:
    if len(data) > MAX_FILE_BYTES:
        raise MnasError(Diagnostic(f"file is {len(data)} bytes; spec files are limited to {MAX_FILE_BYTES}",
                                   path=path))
    if b"\x00" in data:
        off = data.index(b"\x00")
        line = data.count(b"\n", 0, off) + 1
        col = off - (data.rfind(b"\n", 0, off) + 1) + 1
        raise MnasError(Diagnostic("binary file: NUL byte found (not a .mnas text file)",
                                   Span(line, col, line, col + 1), path=path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise MnasError(Diagnostic(f"file is not valid UTF-8 (byte 0x{data[e.start]:02x})",
                                   Span(line, col, line, col + 1), path=path)) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


def parse_units(text: str, path: str | None = None) -> list[Network | SpaceDef]:
    """Parse every unit of a source text; all diagnostics raised together."""
    sink = DiagnosticSink(path)
    src = text if text.endswith("\n") else text + "\n"
    if not src.strip():
        sink.error("empty file: expected `network NAME:` or `space NAME:`", Span(1, 1, 1, 2))
        sink.raise_if_any(text)
    us = units(src, sink)
    syntax_errors = bool(sink)
    if not us and not sink:
        sink.error("empty file: no `network NAME:` or `space NAME:` in it", Span(1, 1, 1, 2))
    names: dict[str, Span] = {}
    out: list[Network | SpaceDef] = []
    for u in us:
        if u.name in names:
            sink.error(f"duplicate unit name `{u.name}` (first defined on line {names[u.name].line})",
                       u.header.arg_spans[1])
        names[u.name] = u.header.span
        x = build_unit(u, sink, syntax_errors)
        if x is not None:
            out.append(x)
    sink.raise_if_any(text)
    return out


def parse(text: str, path: str | None = None) -> list[Network | SpaceDef]:
    """Public API: all networks and spaces of a text."""
    return parse_units(text, path)


def select(units_: list[Network | SpaceDef], network: str | None, path: str | None, want: str = "network"
           ) -> Network | SpaceDef:
    """Pick one unit by name; several without a name is an error listing them."""
    cls = Network if want == "network" else SpaceDef
    cands = [u for u in units_ if isinstance(u, cls)]
    if network is not None:
        for u in cands:
            if u.name == network:
                return u
        names = ", ".join(u.name for u in cands) or "none"
        raise MnasError(Diagnostic(f"no {want} named `{network}` (this file has: {names})", path=path))
    if len(cands) == 1:
        return cands[0]
    if not cands:
        other = "space" if want == "network" else "network"
        hint = f"; it holds a {other} — use the command for {other}s" if units_ else ""
        raise MnasError(Diagnostic(f"file has no {want}{hint}", path=path))
    names = ", ".join(u.name for u in cands)
    raise MnasError(Diagnostic(f"file holds several {want}s ({names}); choose one with --network NAME", path=path))


def load(path: str | Path, network: str | None = None) -> Network:
    """Load one network from a file (``network`` names it when the file holds several)."""
    text = read_source(path)
    net = select(parse_units(text, str(path)), network, str(path), "network")
    assert isinstance(net, Network)
    return net


def load_all(path: str | Path) -> tuple[str, list[Network | SpaceDef]]:
    text = read_source(path)
    return text, parse_units(text, str(path))

"""Block strings: the Lark grammar decodes them into elements, one builder validates them.

Two front ends produce the same element list: the Lark LALR parser (the definition of what
is valid) and a regex fast path for concrete strings (search loops parse millions). A
hypothesis test proves they accept, reject and build exactly the same things.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache
from importlib import resources
from typing import Any, NamedTuple

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedInput

from .diagnostics import DiagnosticSink, MnasError, Span
from .ir import (
    ACT_ALIASES,
    Block,
    Choice,
    FieldValue,
    Option,
    SpaceBlock,
)
from .ops import OP_ALIASES, OP_NAMES, OP_TOKENS, OPS, SE_FLAGS, SE_KINDS
from .ops.fields import (
    FIELD_OF_KEY,
    FLOAT_RANGES,
    INT_RANGES,
    MAX_CHANNELS,
    MAX_DIGITS,
    MAX_NUMBER_TEXT,
    MAX_REPEATS,
    STRIDES,
    float_error,
    int_error,
)

SKIP_FLAGS = {"noskip": "noskip", "pool": "pool", "id": "default"}
DEFAULT_OP = "mb"  # a block string without an op token
# The op alternatives of the regexes, longest first so no token is read as a prefix of another.
_OP_RE = "|".join(sorted(OP_TOKENS, key=lambda t: (-len(t), t)))
# Canonical field order: the TF spelling plus the extensions.
FIELD_ORDER = ("op", "repeats", "repeats_delta", "fixed_repeats", "kernel", "stride", "expansion", "input", "output",
               "output_factor", "force_in", "se", "se_kind", "skip", "act")
_ORDER_INDEX = {f: i for i, f in enumerate(FIELD_ORDER)}


class Val(NamedTuple):
    text: str
    span: Span


class Elem(NamedTuple):
    """One ``_``-separated element of a block string."""

    key: str  # op | flag | r | k | s | e | i | o | se | group
    form: str  # one | many | rel | scaled | group
    vals: tuple[Val, ...]
    base: Val | None
    span: Span
    frags: tuple[tuple[Elem, ...], ...] = ()


@cache
def grammar_text(name: str) -> str:
    """A grammar file; the block grammar's op token is filled in from the op registry."""
    text = resources.files("mnasdsl.grammars").joinpath(name).read_text(encoding="utf-8")
    return text.replace("%OPS%", " | ".join(f'"{t}"' for t in OP_TOKENS))


@cache
def block_parser() -> Lark:
    return Lark(grammar_text("block.lark"), parser="lalr", propagate_positions=True, maybe_placeholders=False)


# ---------------------------------------------------------------------------------------------
# Front end 1: Lark


def _tok_span(tok: Token, line: int, col: int) -> Span:
    c0 = col + (tok.column or 1) - 1
    return Span(line, c0, line, c0 + len(tok))


def _tree_span(tree: Tree, line: int, col: int) -> Span:
    m = tree.meta
    return Span(line, col + m.column - 1, line, col + m.end_column - 1)


def _elems_from_tree(tree: Tree, line: int, col: int) -> tuple[Elem, ...]:
    out = []
    for child in tree.children:
        out.append(_elem_from_tree(child, line, col))
    return tuple(out)


def _elem_from_tree(node: Tree, line: int, col: int) -> Elem:
    span = _tree_span(node, line, col)
    kind = node.data
    if kind in ("op", "flag"):
        tok = node.children[0]
        return Elem(kind, "one", (Val(str(tok), _tok_span(tok, line, col)),), None, span)
    if kind == "group":
        frags = tuple(_elems_from_tree(frag, line, col) for frag in node.children)
        return Elem("group", "group", (), None, span, frags)
    val = node.children[0]
    toks = [Val(str(t), _tok_span(t, line, col)) for t in val.children]
    if val.data in ("one", "many"):
        return Elem(str(kind), str(val.data), tuple(toks), None, span)
    return Elem(str(kind), str(val.data), tuple(toks[1:]), toks[0], span)


def elems_lark(text: str, line: int = 1, col: int = 1) -> tuple[Elem, ...]:
    """Decode with the grammar; raises MnasError with a diagnostic that points into ``text``."""
    try:
        tree = block_parser().parse(text)
    except UnexpectedInput as e:
        raise MnasError(_syntax_diagnostic(text, e, line, col)) from None
    return _elems_from_tree(tree, line, col)


_KEY_DESC = {
    "r": "a repeat count (r2), a set (r{1,2}) or a relative set (r3{-1,0,+1})",
    "k": "an odd kernel size (k3) or a set (k{3,5})",
    "s": "a stride such as s11, s22, s12 or s2",
    "e": "an expansion ratio such as e6 or e2.5",
    "i": "an input channel count such as i16",
    "o": "an output channel count (o24), a scaled count (o24x0.75) or a relative set (o24x{0.75,1})",
    "se": "a squeeze-excitation ratio such as se0.25",
    "fc": "a forced input channel count such as fc24",
}
_OPS_TITLED = ", ".join(f"{n} ({OPS[n].title})" for n in OP_NAMES)  # the registry's ops, for notes
_FIELD_RE = re.compile(r"^(noskip|pool|id|relu6|relu|hswish|swish|nre|nr6|nhs|nsw|fixed|hsig|seact|" + _OP_RE
                       + r"|se|fc|r|k|s|e|i|o)(.*)$")


def _split_top(text: str) -> list[tuple[int, str]]:
    """Split at top-level underscores, remembering each field's 0-based start."""
    out, depth, start = [], 0, 0
    for j, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
        elif ch == "_" and depth == 0:
            out.append((start, text[start:j]))
            start = j + 1
    out.append((start, text[start:]))
    return out


def _syntax_diagnostic(text: str, e: UnexpectedInput, line: int, col: int) -> Any:
    from .diagnostics import Diagnostic

    pos = getattr(e, "pos_in_stream", None)
    if pos is None:
        tok = getattr(e, "token", None)
        pos = getattr(tok, "start_pos", None)
    if pos is None or pos > len(text):
        pos = len(text)
    if not text:
        return Diagnostic("empty block string", Span(line, col, line, col + 1))
    fields = _split_top(text)
    start, field = fields[-1]
    for j, (st, f) in enumerate(fields):
        if st <= pos <= st + len(f):
            start, field = st, f
            if pos == st + len(f) and j + 1 < len(fields) and not fields[j + 1][1]:
                start, field = fields[j + 1]
            break
    span = Span(line, col + start, line, col + start + max(1, len(field)))
    ws = next((j for j, ch in enumerate(field) if ch.isspace()), None)
    if ws is not None:
        c0 = col + start + ws
        return Diagnostic("block strings cannot contain spaces", Span(line, c0, line, c0 + 1))
    if not field:
        return Diagnostic("empty field in block string (an extra `_`?)", span)
    if field.startswith("{"):
        return Diagnostic(f"malformed choice `{field}`: expected `{{alt,alt,...}}`, each alternative "
                          "being fields joined by `_`, with no spaces", span)
    m = _FIELD_RE.match(field)
    if m and m.group(1) in _KEY_DESC:
        key = m.group(1)
        return Diagnostic(f"malformed value in `{field}`: `{key}` takes {_KEY_DESC[key]}", span)
    if m and m.group(2):
        return Diagnostic(f"unknown field `{field}` (did you forget a `_` after `{m.group(1)}`?)", span)
    if m:
        c0 = col + min(pos, max(len(text) - 1, 0))
        return Diagnostic(f"malformed block string `{text}`", Span(line, c0, line, c0 + 1))
    return Diagnostic(
        f"unknown field `{field}` in block string",
        span,
        notes=(f"fields are r, k, s, e, i, o, fc, se; ops {_OPS_TITLED}; flags noskip, pool, id, relu, relu6, "
               "swish, hswish, fixed, hsig, seact",),
    )


# ---------------------------------------------------------------------------------------------
# Front end 2: the regex fast path (concrete strings only; anything else goes to Lark)

_FAST_FIELD = re.compile(r"(?:(" + _OP_RE + r")|(noskip|pool|id|relu6|relu|hswish|swish|nre|nr6|nhs|nsw|fixed|hsig"
                         r"|seact)|(se|fc|r|k|s|e|i|o)([0-9][0-9.x]*|\.[0-9]+))\Z")
_NUM = re.compile(r"[0-9]+(\.[0-9]+)?\Z|\.[0-9]+\Z")
_DIG = re.compile(r"[0-9]+\Z")


def elems_fast(text: str, line: int = 1, col: int = 1) -> tuple[Elem, ...] | None:
    """Decode a concrete block string without Lark; None means 'let the grammar decide'."""
    if not text or "{" in text or "}" in text:
        return None
    out = []
    pos = 0
    for field in text.split("_"):
        m = _FAST_FIELD.match(field)
        if m is None:
            return None
        c0 = col + pos
        span = Span(line, c0, line, c0 + len(field))
        op, flag, key, value = m.groups()
        if op or flag:
            out.append(Elem("op" if op else "flag", "one", (Val(field, span),), None, span))
        else:
            vstart = c0 + len(key)
            if key == "o" and "x" in value:
                base, _, factor = value.partition("x")
                if not _DIG.match(base) or not _NUM.match(factor):
                    return None
                fstart = vstart + len(base) + 1
                out.append(Elem("o", "scaled", (Val(factor, Span(line, fstart, line, fstart + len(factor))),),
                                Val(base, Span(line, vstart, line, vstart + len(base))), span))
            else:
                if key in ("e", "se"):
                    if not _NUM.match(value):
                        return None
                elif not _DIG.match(value):
                    return None
                out.append(Elem(key, "one", (Val(value, Span(line, vstart, line, c0 + len(field))),), None, span))
        pos += len(field) + 1
    return tuple(out)


def decode_elems(text: str, line: int = 1, col: int = 1) -> tuple[Elem, ...]:
    fast = elems_fast(text, line, col)
    return fast if fast is not None else elems_lark(text, line, col)


# ---------------------------------------------------------------------------------------------
# The builder: elements -> validated Block / SpaceBlock


def _value(key: str, v: Val, sink: DiagnosticSink) -> FieldValue | None:
    """Convert and range-check one value (the rules of :mod:`mnasdsl.ops.fields`); every rule
    reports at the value's own span."""
    if key in INT_RANGES:
        what, _, hi = INT_RANGES[key]
        if len(v.text.lstrip("+-")) > MAX_DIGITS:
            sink.error(f"{what} `{v.text}` is absurdly large (at most {hi})", v.span)
            return None
        n = int(v.text)
        msg = int_error(key, n)
        if msg:
            sink.error(msg, v.span)
            return None
        return n
    if key in FLOAT_RANGES:
        if len(v.text) > MAX_NUMBER_TEXT:
            sink.error(f"{FLOAT_RANGES[key][0]} `{v.text[:MAX_NUMBER_TEXT]}...` is too long a number", v.span)
            return None
        x = float(v.text)
        msg = float_error(key, x, v.text)
        if msg:
            sink.error(msg, v.span)
            return None
        return x
    if key == "s":
        stride = STRIDES.get(v.text)
        if stride is None:
            sink.error(f"stride must be 1 or 2 per axis (s11, s22, s12, s21, s1 or s2), got `s{v.text}`", v.span)
        return stride
    if key == "dr":
        digits = v.text.lstrip("+-")
        if len(digits) > MAX_DIGITS:
            sink.error(f"repeat offset `{v.text}` is absurdly large", v.span)
            return None
        return int(v.text)
    raise AssertionError(key)


def _simple(e: Elem, sink: DiagnosticSink) -> list[tuple[str, FieldValue | None, Span]]:
    """Assignments of a non-choice element (op, flag, key=value, scaled output)."""
    text = e.vals[0].text if e.vals else ""
    if e.key == "op":
        return [("op", OP_ALIASES.get(text, text), e.span)]
    if e.key == "flag":
        if text in SKIP_FLAGS:
            return [("skip", SKIP_FLAGS[text], e.span)]
        if text == "fixed":
            return [("fixed_repeats", True, e.span)]
        if text in SE_FLAGS:
            return [("se_kind", SE_FLAGS[text], e.span)]
        return [("act", ACT_ALIASES.get(text, text), e.span)]
    if e.form == "scaled":
        assert e.base is not None
        return [("output", _value("o", e.base, sink), e.base.span),
                ("output_factor", _value("x", e.vals[0], sink), e.vals[0].span)]
    return [(FIELD_OF_KEY[e.key], _value(e.key, e.vals[0], sink), e.vals[0].span)]


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _label(e: Elem) -> str:
    if e.key in ("op", "flag"):
        return e.vals[0].text
    if e.form == "scaled":
        assert e.base is not None
        return f"o{e.base.text}x{e.vals[0].text}"
    return f"{e.key}{e.vals[0].text}"


class RawBlock(NamedTuple):
    """Builder output before it becomes a Block: fixed fields and decisions, with spans."""

    fixed: dict[str, FieldValue]
    spans: dict[str, Span]
    choices: list[Choice]
    ok: bool


def collect(elems: tuple[Elem, ...], sink: DiagnosticSink, allow_choices: bool) -> RawBlock:
    fixed: dict[str, FieldValue] = {}
    spans: dict[str, Span] = {}
    choices: list[Choice] = []
    n0 = len(sink.items)
    owner: dict[str, Span] = {}

    def claim(field: str, span: Span) -> bool:
        if field in owner:
            prev = owner[field]
            sink.error(f"duplicate field `{_FIELD_KEY.get(field, field)}` (already set at column {prev.col})", span)
            return False
        owner[field] = span
        return True

    for e in elems:
        if e.form in ("one", "scaled"):
            for field, value, span in _simple(e, sink):
                if claim(field, span) and value is not None:
                    fixed[field] = value
                    spans[field] = span
            continue
        if not allow_choices:
            sink.error("choices are only allowed inside a `space`, not in a `network`", e.span)
            continue
        if e.form == "many":
            field = FIELD_OF_KEY[e.key]
            opts = []
            for v in e.vals:
                value = _value(e.key, v, sink)
                if value is not None:
                    opts.append(Option(assign=((field, value),), label=f"{e.key}{v.text}", span=v.span))
            _dedupe_check(opts, e.span, sink)
            if claim(field, e.span):
                choices.append(Choice(fields=(field,), options=tuple(opts), form="set", span=e.span))
        elif e.form == "rel":
            assert e.base is not None
            if e.key == "r":
                base = _value("r", e.base, sink)
                if claim("repeats", e.base.span) and base is not None:
                    fixed["repeats"] = base
                    spans["repeats"] = e.base.span
                opts = []
                for v in e.vals:
                    d = _value("dr", v, sink)
                    if d is None:
                        continue
                    if base is not None and not 0 <= base + d <= MAX_REPEATS:
                        sink.error(f"repeats {base}{int(d):+d} = {base + d} is outside 0..{MAX_REPEATS}", v.span)
                        continue
                    opts.append(Option(assign=(("repeats_delta", d),), label=f"{int(d):+d}", span=v.span))
                _dedupe_check(opts, e.span, sink)
                if claim("repeats_delta", e.span):
                    choices.append(Choice(fields=("repeats_delta",), options=tuple(opts), form="rel", span=e.span))
            else:
                base = _value("o", e.base, sink)
                if claim("output", e.base.span) and base is not None:
                    fixed["output"] = base
                    spans["output"] = e.base.span
                opts = []
                for v in e.vals:
                    f = _value("x", v, sink)
                    if f is not None:
                        opts.append(Option(assign=(("output_factor", f),), label=_fmt_num(f), span=v.span))
                _dedupe_check(opts, e.span, sink)
                if claim("output_factor", e.span):
                    choices.append(Choice(fields=("output_factor",), options=tuple(opts), form="rel", span=e.span))
        else:  # joint group
            opts = []
            fields_set: list[str] = []
            for frag in e.frags:
                assign: list[tuple[str, FieldValue]] = []
                seen: set[str] = set()
                labels = []
                bad = False
                for fe in frag:
                    if fe.form not in ("one", "scaled"):
                        sink.error("choices cannot be nested inside `{...}`", fe.span)
                        bad = True
                        continue
                    labels.append(_label(fe))
                    for field, value, span in _simple(fe, sink):
                        if field in seen:
                            sink.error(f"duplicate field `{_FIELD_KEY.get(field, field)}` in one alternative", span)
                            bad = True
                        seen.add(field)
                        if value is None:
                            bad = True
                        else:
                            assign.append((field, value))
                        if field not in fields_set:
                            fields_set.append(field)
                if not bad:
                    fspan = Span(frag[0].span.line, frag[0].span.col, frag[-1].span.end_line, frag[-1].span.end_col)
                    opts.append(Option(assign=tuple(sorted(assign, key=lambda a: _ORDER_INDEX[a[0]])),
                                       label="_".join(labels), span=fspan))
            _dedupe_check(opts, e.span, sink)
            ok = all(claim(f, e.span) for f in fields_set)
            if ok:
                ordered = tuple(sorted(fields_set, key=lambda f: _ORDER_INDEX[f]))
                choices.append(Choice(fields=ordered, options=tuple(opts), form="joint", span=e.span))
    return RawBlock(fixed, spans, choices, len(sink.items) == n0)


_FIELD_KEY = {v: k for k, v in FIELD_OF_KEY.items()} | {"output_factor": "x", "repeats_delta": "r",
                                                       "fixed_repeats": "fixed", "se_kind": "hsig/seact"}


def _dedupe_check(opts: list[Option], span: Span, sink: DiagnosticSink) -> None:
    seen = set()
    for o in opts:
        if o.assign in seen:
            sink.error(f"choice lists `{o.label}` twice", o.span or span)
        seen.add(o.assign)
    if len(opts) == 1 and False:
        pass


def make_block(fields: dict[str, FieldValue], spans: dict[str, Span] | None, span: Span | None,
               sink: DiagnosticSink, role: str = "block") -> Block | None:
    """Cross-field rules and defaults; ``role`` is block, stem or head."""
    op = fields.get("op", "cv" if role != "block" else DEFAULT_OP)
    spec = OPS[str(op)]
    spans = spans or {}
    ok = True
    if "kernel" not in fields:
        sink.error(f"{role} string needs a kernel size (`k3`)", span)
        ok = False
    if "output" not in fields:
        sink.error(f"{role} string needs output channels (`o24`)", span)
        ok = False
    e = float(fields.get("expansion", 1.0))
    if not spec.expands and e != 1.0:
        expanding = ", ".join(f"`{s.name}`" for s in OPS.values() if s.expands)
        sink.error(f"expansion `e{_fmt_num(e)}` has no meaning for a `{op}` block (only {expanding} expand)",
                   spans.get("expansion", span))
        ok = False
    if spec.e1_op is not None and e == 1.0:
        op = spec.e1_op  # e.g. TF's MBConv skips the expansion when e = 1: the same computation as ds.
    # Optional fields other than e (reported above) that the op must declare (an SE variant needs SE).
    for f, need in (("force_in", "force_in"), ("se", "se"), ("se_kind", "se")):
        if f in fields and fields[f] not in (0.0, "tf") and not OPS[str(op)].takes(need) and role == "block":
            takers = ", ".join(f"`{s.name}`" for s in OPS.values() if s.takes(need))
            what = f"a `{op}` block" if op == spec.name else f"an e1 `{spec.name}` block (a `{op}` block)"
            verb = "takes" if "," not in takers else "take"
            sink.error(f"`{_format_value(f, fields[f])}` has no meaning for {what} (only {takers} {verb} it)",
                       spans.get(f, span))
            ok = False
    if role != "block":
        if not OPS[str(op)].stem_head:
            sink.error(f"the {role} is a regular convolution: write `cv_...`", spans.get("op", span))
            ok = False
        if fields.get("fixed_repeats"):
            sink.error(f"`fixed` in a block string fixes a block's repeats; the {role} has none (to keep its "
                       f"channels at every width, write `fixed` after the string: `{role} cv_... fixed`)",
                       spans.get("fixed_repeats", span))
            ok = False
        for f, key in (("expansion", "e"), ("input", "i"), ("force_in", "fc"), ("se", "se"),
                       ("se_kind", "hsig/seact"), ("skip", "noskip/pool/id"),
                       ("repeats", "r"), ("output_factor", "x")):
            if f in fields and not (f == "repeats" and fields[f] == 1) and not (f == "se" and fields[f] == 0):
                sink.error(f"`{key}` is not allowed in the {role}", spans.get(f, span))
                ok = False
        if role == "head" and fields.get("stride", (1, 1)) != (1, 1):
            sink.error("the head conv must have stride 1", spans.get("stride", span))
            ok = False
    if role == "block" and fields.get("se_kind", "tf") != "tf" and not fields.get("se"):
        flag = SE_KINDS[str(fields["se_kind"])].flag
        sink.error(f"`{flag}` picks a squeeze-excitation variant, but this block has no squeeze-excitation "
                   f"(add a ratio such as `se0.25`)", spans.get("se_kind", span))
        ok = False
    if not ok:
        return None
    output = int(fields["output"])  # type: ignore[arg-type]
    factor = float(fields.get("output_factor", 1.0))  # type: ignore[arg-type]
    if round(output * factor) > MAX_CHANNELS:
        sink.error(f"output channels {output} x {_fmt_num(factor)} exceed {MAX_CHANNELS}",
                   spans.get("output_factor", span))
        return None
    return new_block(span, dict(spans), op, int(fields.get("repeats", 1)),  # type: ignore[arg-type]
                     int(fields["kernel"]), fields.get("stride", (1, 1)), e,  # type: ignore[arg-type]
                     fields.get("input"), output, factor, float(fields.get("se", 0.0)),  # type: ignore[arg-type]
                     fields.get("skip", "default"), fields.get("act"), bool(fields.get("fixed_repeats", False)),
                     fields.get("force_in"), fields.get("se_kind", "tf"))  # type: ignore[arg-type]


# Shared: pydantic copies fields_set before mutating it (model_copy), so one set serves all.
_BLOCK_FIELDS_SET = set(Block.model_fields)
_obj_setattr = object.__setattr__


def new_block(span: Span | None, spans: dict[str, Span], op: Any, repeats: int, kernel: int, stride: Any,
              expansion: float, input: Any, output: int, output_factor: float, se: float, skip: Any,
              act: Any, fixed_repeats: bool = False, force_in: int | None = None, se_kind: Any = "tf") -> Block:
    """Construct an already-validated Block without pydantic's per-field machinery (hot path)."""
    b = Block.__new__(Block)
    _obj_setattr(b, "__dict__", {
        "span": span, "spans": spans, "op": op, "repeats": repeats, "kernel": kernel, "stride": stride,
        "expansion": expansion, "input": input, "output": output, "output_factor": output_factor,
        "force_in": force_in, "se": se, "se_kind": se_kind, "skip": skip, "act": act,
        "fixed_repeats": fixed_repeats})
    _obj_setattr(b, "__pydantic_fields_set__", _BLOCK_FIELDS_SET)
    _obj_setattr(b, "__pydantic_extra__", None)
    _obj_setattr(b, "__pydantic_private__", None)
    return b


_NUMRE = r"[0-9]+(?:\.[0-9]+)?"
_CANON = re.compile(
    r"(?:(" + _OP_RE + r")_)?(?:r([0-9]{1,9})_)?k([0-9]{1,9})(?:_s([0-9]{1,2}))?(?:_e(" + _NUMRE + r"))?"
    r"(?:_i([0-9]{1,9}))?_o([0-9]{1,9})(?:x(" + _NUMRE + r"))?(?:_fc([0-9]{1,9}))?(?:_se(" + _NUMRE + r"))?"
    r"(?:_(hsig|seact))?(?:_(noskip|pool|id))?(?:_(relu6|relu|hswish|swish|nre|nr6|nhs|nsw))?\Z")
_SKIPS = {None: "default", "id": "default", "noskip": "noskip", "pool": "pool"}


def _fast_int(key: str, text: str | None, default: int | None = None) -> int | None:
    if text is None:
        return default
    n = int(text)
    return None if int_error(key, n) else n


def _fast_float(key: str, text: str | None, default: float) -> float | None:
    if text is None:
        return default
    if len(text) > MAX_NUMBER_TEXT:
        return None
    x = float(text)
    return None if float_error(key, x, text) else x


def fast_block(text: str, line: int = 1, col: int = 1, role: str = "block", span: Span | None = None
               ) -> Block | None:
    """Concrete, valid, canonically ordered block strings in one regex; None defers to the
    grammar (which also produces every diagnostic). Proven equivalent by a hypothesis test."""
    m = _CANON.match(text)
    if m is None:
        return None
    op, r, k, st, e, i, o, x, fc, se, sek, skip, act = m.groups()
    op = OP_ALIASES.get(op, op) if op else None
    if role != "block":
        if ((op is not None and not OPS[op].stem_head) or (r is not None and r != "1") or e is not None
                or i is not None or x is not None or fc is not None or se is not None or sek is not None
                or skip is not None
                or (role == "head" and st not in (None, "1", "11"))):
            return None
        op = "cv"
    spec = OPS[op or DEFAULT_OP]
    repeats = _fast_int("r", r, 1)
    kernel = _fast_int("k", k)
    stride = STRIDES.get(st, None) if st is not None else (1, 1)
    exp = _fast_float("e", e, 1.0)
    cin = _fast_int("i", i)
    out = _fast_int("o", o)
    factor = _fast_float("x", x, 1.0)
    ratio = _fast_float("se", se, 0.0)
    force_in = _fast_int("fc", fc)
    if (repeats is None or kernel is None or stride is None or exp is None or (i is not None and cin is None)
            or out is None or factor is None or ratio is None or round(out * factor) > MAX_CHANNELS
            or (not spec.expands and exp != 1.0) or (fc is not None and force_in is None)
            or (sek is not None and not ratio)):
        return None
    if spec.e1_op is not None and exp == 1.0:
        spec = OPS[spec.e1_op]
    if (force_in is not None and not spec.takes("force_in")) or (ratio and not spec.takes("se")):
        return None
    if span is None:
        span = Span(line, col, line, col + len(text))
    spans = {}
    if cin is not None:
        a = m.start(6)
        spans["input"] = Span(line, col + a, line, col + m.end(6))
    return new_block(span, spans, spec.name, repeats, kernel, stride, exp, cin, out, factor, ratio, _SKIPS[skip],
                     ACT_ALIASES.get(act, act) if act else None, False, force_in, SE_FLAGS[sek] if sek else "tf")


def build_block(elems: tuple[Elem, ...], span: Span | None, sink: DiagnosticSink, role: str = "block") -> Block | None:
    raw = collect(elems, sink, allow_choices=False)
    if not raw.ok:
        return None
    return make_block(raw.fixed, raw.spans, span, sink, role)


def build_space_block(elems: tuple[Elem, ...], span: Span | None, sink: DiagnosticSink) -> SpaceBlock | None:
    raw = collect(elems, sink, allow_choices=True)
    if not raw.ok:
        return None
    if "input" in raw.fixed:
        sink.error("`i` is not written in a space: input channels are always inferred", raw.spans.get("input", span))
        return None
    fixed = tuple(sorted(raw.fixed.items(), key=lambda kv: _ORDER_INDEX[kv[0]]))
    choices = tuple(sorted(raw.choices, key=lambda c: _ORDER_INDEX[c.fields[0]]))
    return SpaceBlock(fixed=fixed, choices=choices, span=span, spans=raw.spans)


def block_from_text(text: str, span: Span, sink: DiagnosticSink, role: str = "block") -> Block | None:
    """Fast path first (blocks only), then the grammar and the builder."""
    b = fast_block(text, span.line, span.col, role, span)
    if b is not None:
        return b
    try:
        elems = decode_elems(text, span.line, span.col)
    except MnasError as err:
        sink.items.extend(d.with_path(sink.path) for d in err.diagnostics)
        return None
    return build_block(elems, span, sink, role)


def parse_block(text: str) -> Block:
    """Parse one concrete block string (API); raises MnasError on any problem."""
    if not isinstance(text, str):
        raise MnasError(f"parse_block expects a string, got {type(text).__name__}")
    b = fast_block(text)
    if b is not None:
        return b
    sink = DiagnosticSink()
    block = build_block(decode_elems(text), Span(1, 1, 1, len(text) + 1), sink)
    sink.raise_if_any(text)
    assert block is not None
    return block


@lru_cache(maxsize=65536)
def parse_block_cached(text: str) -> Block:
    """Memoized :func:`parse_block` for loops that see the same strings again (Blocks are immutable)."""
    return parse_block(text)


def parse_block_lark(text: str) -> Block:
    """Same as :func:`parse_block` but always through the grammar (for equivalence tests)."""
    sink = DiagnosticSink()
    block = build_block(elems_lark(text), Span(1, 1, 1, len(text) + 1), sink)
    sink.raise_if_any(text)
    assert block is not None
    return block


def format_block(b: Block, role: str = "block") -> str:
    """Canonical spelling: TF's field order plus the extensions; ``mb`` prefix and defaults omitted."""
    parts: list[str] = []
    if b.op != DEFAULT_OP or role != "block":
        parts.append(b.op)
    if role == "block":
        parts.append(f"r{b.repeats}")
        if b.fixed_repeats:
            parts.append("fixed")
    parts.append(f"k{b.kernel}")
    if role != "head" or b.stride != (1, 1):
        parts.append(f"s{b.stride[0]}{b.stride[1]}")
    if OPS[b.op].expands:
        parts.append(f"e{_fmt_num(b.expansion)}")
    if b.input is not None:
        parts.append(f"i{b.input}")
    parts.append(f"o{b.output}" + (f"x{_fmt_num(b.output_factor)}" if b.output_factor != 1.0 else ""))
    if b.force_in is not None:
        parts.append(f"fc{b.force_in}")
    if b.se:
        parts.append(f"se{_fmt_num(b.se)}")
    if b.se_kind != "tf":
        parts.append(str(SE_KINDS[b.se_kind].flag))
    if b.skip != "default":
        parts.append(b.skip)
    if b.act is not None:
        parts.append(b.act)
    return "_".join(parts)


def _format_value(field: str, value: FieldValue) -> str:
    if field == "op":
        return str(value)
    if field in ("skip", "act"):
        return "id" if value == "default" else str(value)
    if field == "fixed_repeats":
        return "fixed"
    if field == "se_kind":
        return str(SE_KINDS[str(value)].flag)
    if field == "stride":
        assert isinstance(value, tuple)
        return f"s{value[0]}{value[1]}"
    key = _FIELD_KEY[field]
    if field == "output_factor":
        return _fmt_num(float(value))  # type: ignore[arg-type]
    if field == "repeats_delta":
        return f"{int(value):+d}"  # type: ignore[call-overload]
    return f"{key}{_fmt_num(value) if isinstance(value, float) else value}"


def format_space_block(sb: SpaceBlock) -> str:
    fixed = dict(sb.fixed)
    items: list[tuple[int, str]] = []
    rel_fields = {c.fields[0] for c in sb.choices if c.form == "rel"}
    for field, value in sb.fixed:
        if field == "repeats" and "repeats_delta" in rel_fields:
            continue
        if field == "output" and "output_factor" in rel_fields:
            continue
        if field == "output_factor":
            continue
        text = _format_value(field, value)
        if field == "output" and fixed.get("output_factor", 1.0) != 1.0:
            text += "x" + _fmt_num(float(fixed["output_factor"]))  # type: ignore[arg-type]
        items.append((_ORDER_INDEX[field], text))
    for c in sb.choices:
        if c.form == "rel" and c.fields[0] == "repeats_delta":
            text = f"r{fixed['repeats']}{{" + ",".join(_format_value('repeats_delta', o.assign[0][1])
                                                       for o in c.options) + "}"
        elif c.form == "rel":
            text = f"o{fixed['output']}x{{" + ",".join(_fmt_num(float(o.assign[0][1])) for o in c.options) + "}"
        elif c.form == "set" and c.fields[0] not in ("op", "skip", "act"):
            key = _FIELD_KEY[c.fields[0]]
            text = key + "{" + ",".join(_format_value(c.fields[0], o.assign[0][1])[len(key):] for o in c.options) + "}"
        else:
            text = "{" + ",".join("_".join(_format_value(f, v) for f, v in o.assign) for o in c.options) + "}"
        items.append((_ORDER_INDEX[c.fields[0]], text))
    items.sort(key=lambda t: t[0])
    return "_".join(t for _, t in items)

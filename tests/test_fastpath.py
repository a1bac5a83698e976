"""The hand-written fast paths accept, reject and build exactly what the Lark grammar does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from lark import Tree
from lark.exceptions import UnexpectedInput

from mnasdsl import MnasError, parse_block
from mnasdsl.blocks import elems_fast, elems_lark, fast_block, parse_block_lark
from mnasdsl.parser import _stmt, file_parser, statements_fast

PIECES = [
    "r1", "r0", "r2", "r64", "r65", "r01", "k3", "k5", "k4", "k13", "k0", "k", "s11", "s22", "s12", "s21", "s2",
    "s1", "s3", "s123", "s", "e1", "e6", "e2.5", "e0.5", "e100", "e6.", "e.5", "e1.0", "i16", "i0", "i8",
    "o24", "o0", "o8", "o24x0.75", "o24x0", "o24x1", "o24x20", "o99999", "ox1", "se0", "se0.25", "se1", "se2",
    "se.5", "se", "noskip", "pool", "id", "relu", "relu6", "swish", "hswish", "nre", "nr6", "nsw", "nhs", "mb",
    "ds", "cv", "ir", "cn", "er", "fc24", "fc0", "fc", "fc8x2", "hsig", "seact", "sehsig",
    "q3", "", "k{3,5}", "{cv,ds}", "x", "r1{-1,+0}", "o24x{0.75,1}", "k3 ", "é",
    "12345678901", "se0.2500000000000000000000001",
]

block_strings = st.lists(st.sampled_from(PIECES), min_size=0, max_size=9).map("_".join) | st.text(
    alphabet="rkseiof0123456789._x{},+-nopldcvmbw", max_size=24)


def outcome(f, s):  # type: ignore[no-untyped-def]
    try:
        return ("ok", f(s))
    except MnasError as e:
        return ("err", [d.message for d in e.diagnostics])


@settings(max_examples=3000, deadline=None)
@given(block_strings)
def test_block_fast_path_equals_grammar(s: str) -> None:
    slow = outcome(parse_block_lark, s)
    fast = fast_block(s)
    if fast is not None:
        assert slow[0] == "ok" and slow[1] == fast
    assert outcome(parse_block, s) == slow


@settings(max_examples=3000, deadline=None)
@given(block_strings)
def test_element_front_ends_agree(s: str) -> None:
    fast = elems_fast(s)
    try:
        slow = elems_lark(s)
    except MnasError:
        assert fast is None
        return
    if fast is not None:
        assert fast == slow


LINES = [
    "network a:", "network a :", "space s:", "network:", "network a", "networka:", "network a::", "network a: x",
    "  input 224x224x3", "input 32x32", "input 32", "input 32x32x3x3", "input x", "  classes 10", "classes 1.5",
    "classes -3", "classes", "width 1.0", "width .5", "width 1e-3", "width 1.", "width abc", "depth 2",
    "divisor 8", "min_depth 16", "dropout 0.2", "bn momentum 0.9 eps 1e-3", "bn eps 0.1", "bn", "bn momentum",
    "padding same", "padding symmetric", "padding x", "activation swish", "activation tanh",
    "stem cv_k3_s22_o32", "stem", "stem a b", "head cv_k1_o1280", "head cv_k1_o1280 fixed", "head x scaled",
    "head x y", "blocks", "blocks r1_k3_e6_o8", "  r1_k3_s11_e6_o16 r2_k5_e3_o24", "inputs 3", "input_x",
    "expansion_divisor 8", "expansion_divisor 0", "expansion_divisor", "head cv_k1_o1280 fixed pooled",
    "head cv_k1_o1280 pooled", "head x pooled fixed", "head x pooled pooled",
    "r1 # c", "# comment", "", "   ", "\t classes\t10", "classes 10#c", "classes#c", "x : y", "network\ta:",
    "stem cv_k3_o8 # c", "é", "width\x0b1", "classes 10\r", "blocks#x", "head#", ":", "blocks input",
]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(LINES), min_size=0, max_size=8))
def test_statement_fast_path_equals_grammar(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    fast = statements_fast(text)
    try:
        tree = file_parser().parse(text)
    except UnexpectedInput:
        assert fast is None
        return
    slow = [_stmt(t) for t in tree.children if isinstance(t, Tree)]
    if fast is not None:
        assert fast == slow

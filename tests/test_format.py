"""Round trips: parse(format(x)) == x, the formatter is idempotent and keeps comments."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import mnasdsl
from mnasdsl import format, format_source, lower, parse, parse_block
from mnasdsl.space import space_from_text

from .conftest import SPECS
from .strategies import blocks, networks


@settings(max_examples=300, deadline=None)
@given(blocks())
def test_block_round_trip(b) -> None:  # type: ignore[no-untyped-def]
    text = format(b)
    assert parse_block(text) == b
    assert format(parse_block(text)) == text


@settings(max_examples=150, deadline=None)
@given(networks())
def test_network_round_trip(n) -> None:  # type: ignore[no-untyped-def]
    text = format(n)
    (again,) = parse(text)
    assert again == n
    assert format_source(text) == text  # idempotent on canonical text
    assert lower(again).signature() == lower(n).signature()


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_space_sample_round_trip(seed: int) -> None:
    sp = mnasdsl.load_space(SPECS / "spaces" / "mnasnet.mnas")
    n = sp.sample(seed)
    (again,) = parse(format(n))
    assert again == n


def test_fmt_idempotent_on_reference_specs() -> None:
    for path in sorted(SPECS.rglob("*.mnas")):
        text = path.read_text()
        once = format_source(text)
        assert format_source(once) == once
        assert parse(once) == parse(text)


def test_fmt_keeps_comments_and_order() -> None:
    text = ("# header comment\nnetwork   n :   # trailing\n  classes 10\n\n\n  input 32x32\n"
            "  stem cv_k3_s2_o16\n  blocks  # the blocks\n      # inner\n   r1_k3_s11_e1_i16_o16_noskip\n"
            "  head cv_k1_o64\n")
    out = format_source(text)
    assert out == ("# header comment\nnetwork n:  # trailing\n  classes 10\n\n  input 32x32x3\n"
                   "  stem cv_k3_s22_o16\n  blocks  # the blocks\n    # inner\n    ds_r1_k3_s11_i16_o16_noskip\n"
                   "  head cv_k1_o64 fixed\n")
    assert format_source(out) == out


def test_fmt_two_units_separated() -> None:
    text = "network a:\n stem cv_k3_o8\n blocks r1_k3_e6_o8\n head cv_k1_o8\nnetwork b:\n stem cv_k3_o8\n" \
           " blocks r1_k3_e6_o8\n head cv_k1_o8\n"
    out = format_source(text)
    assert "\n\nnetwork b:" in out
    assert parse(out) == parse(text)


def test_space_fmt() -> None:
    text = (SPECS / "spaces" / "mnasnet.mnas").read_text()
    out = format_source(text)
    assert space_from_text(out).spec == space_from_text(text).spec

"""Block strings: the TF reference spellings, extensions, normalization and every rule."""

from __future__ import annotations

import pytest

from mnasdsl import MnasError, parse_block
from mnasdsl.blocks import format_block, parse_block_lark

TF_STRINGS = [
    "r1_k3_s11_e1_i32_o16_noskip", "r2_k3_s22_e6_i16_o24", "r3_k5_s22_e3_i24_o40_se0.25",
    "r4_k3_s22_e6_i40_o80", "r2_k3_s11_e6_i80_o112_se0.25", "r3_k5_s22_e6_i112_o160_se0.25",
    "r1_k3_s11_e6_i160_o320", "r3_k3_s22_e3_i16_o24", "r4_k5_s22_e6_i96_o192",
    "r1_k3_s11_e6_i192_o320_noskip", "r1_k3_s11_e1_i16_o8", "r1_k7_s11_e6_i80_o320_noskip",
]


@pytest.mark.parametrize("s", TF_STRINGS)
def test_tf_reference_strings_parse_verbatim(s: str) -> None:
    b = parse_block(s)
    assert b == parse_block_lark(s)
    assert parse_block(format_block(b)) == b


def test_fields() -> None:
    b = parse_block("r3_k5_s22_e3_i24_o40_se0.25")
    assert (b.op, b.repeats, b.kernel, b.stride, b.expansion, b.input, b.output, b.se, b.skip) == (
        "mb", 3, 5, (2, 2), 3.0, 24, 40, 0.25, "default")


def test_stride_forms() -> None:
    assert parse_block("r1_k3_s12_e6_o8").stride == (1, 2)
    assert parse_block("r1_k3_s2_e6_o8").stride == (2, 2)
    assert parse_block("r1_k3_s1_e6_o8").stride == (1, 1)


def test_mb_e1_is_ds_and_formats_as_ds() -> None:
    a = parse_block("r1_k3_s11_e1_i32_o16_noskip")
    b = parse_block("ds_r1_k3_s11_i32_o16_noskip")
    assert a == b and a.op == "ds"
    assert format_block(a) == "ds_r1_k3_s11_i32_o16_noskip"


def test_aliases() -> None:
    assert parse_block("ir_r1_k3_s11_e6_o16") == parse_block("r1_k3_s11_e6_o16")
    assert parse_block("cn_r1_k3_s11_o16") == parse_block("cv_r1_k3_s11_o16")
    assert parse_block("r1_k3_s11_e6_o16_nsw").act == "swish"
    assert parse_block("r1_k3_s11_e6_o16_nhs").act == "hswish"
    assert parse_block("r1_k3_s11_e6_o16_nr6").act == "relu6"
    assert parse_block("r1_k3_s11_e6_o16_nre").act == "relu"


def test_skip_flags() -> None:
    assert parse_block("r1_k3_s11_e6_o16_pool").skip == "pool"
    assert parse_block("r1_k3_s11_e6_o16_id").skip == "default"
    assert parse_block("r1_k3_s11_e6_o16_noskip").skip == "noskip"


def test_field_order_free_and_canonical_output() -> None:
    a = parse_block("o24_e6_k3_r2_s22_i16_se0.25_swish_noskip")
    assert format_block(a) == "r2_k3_s22_e6_i16_o24_se0.25_noskip_swish"


def test_decimal_expansion_and_scaled_filters() -> None:
    b = parse_block("r1_k3_s11_e2.5_o24x0.75")
    assert b.expansion == 2.5 and b.output == 24 and b.output_factor == 0.75
    assert format_block(b) == "r1_k3_s11_e2.5_o24x0.75"


GOOD = ["r1_k1_s11_e6_o8", "r64_k11_s22_e64_o32768", "cv_r1_k3_s11_o16_se1", "ds_r1_k5_s21_o16_se0"]


@pytest.mark.parametrize("s", GOOD)
def test_good(s: str) -> None:
    parse_block(s)


BAD = [
    ("r1_k4_s11_e6_o16", "kernel must be odd"),
    ("r1_k13_s11_e6_o16", "kernel must be between 1 and 11"),
    ("r1_k3_s33_e6_o16", "stride must be 1 or 2"),
    ("r1_k3_s123_e6_o16", "stride must be 1 or 2"),
    ("r1_k3_s11_e0.5_o16", "expansion ratio must be at least 1"),
    ("r1_k3_s11_e6_o16_se1.5", "squeeze-excitation ratio must be at least 0 and at most 1"),
    ("r0_k3_s11_e6_o16", "repeats must be between 1"),
    ("r1_k3_s11_e6_o0", "output channels must be between 1"),
    ("r1_k3_s11_e6_o99999999", "output channels must be between 1"),
    ("r1_k3_s11_e6_o1234567890123", "absurdly large"),
    ("r1_k3_s11_e6_i0_o8", "input channels must be between 1"),
    ("r1_k3_k5_s11_e6_o8", "duplicate field `k`"),
    ("r1_k3_s11_e6_o8_noskip_pool", "duplicate field"),
    ("r1_k3_s11_e6_o8_relu_swish", "duplicate field"),
    ("r1_q3_s11_e6_o8", "unknown field `q3`"),
    ("r1_k3__s11_o8", "empty field"),
    ("r1_k_s11_o8", "malformed value in `k`"),
    ("r1_kx_s11_o8", "malformed value"),
    ("", "empty block string"),
    ("r1_s11_e6_o8", "needs a kernel size"),
    ("r1_k3_s11_e6", "needs output channels"),
    ("cv_r1_k3_s11_e6_o8", "has no meaning for a `cv` block"),
    ("ds_r1_k3_s11_e3_o8", "has no meaning for a `ds` block"),
    ("r1_k{3,5}_s11_e6_o8", "choices are only allowed inside a `space`"),
    ("r1_k3_s11_e6_o8x0", "filter factor must be greater than 0"),
    ("r1_k3_s11_e6_o8_se0.25_", "empty field"),
    ("r1_k3_s11_é6_o8", "unknown field"),
    ("r1_k3 s11", "cannot contain spaces"),
]


@pytest.mark.parametrize("s,msg", BAD)
def test_bad(s: str, msg: str) -> None:
    with pytest.raises(MnasError) as ei:
        parse_block(s)
    text = str(ei.value)
    assert msg in text, text
    assert "<input>:1:" in text  # points at a column


def test_error_points_at_the_value() -> None:
    with pytest.raises(MnasError) as ei:
        parse_block("r1_k4_s11_e6_o16")
    d = ei.value.diagnostics[0]
    assert (d.span.line, d.span.col, d.span.end_col) == (1, 5, 6)
    rendered = ei.value.render().splitlines()
    assert rendered[-1].endswith("^") and rendered[-1].index("^") == rendered[-2].index("4")


def test_all_errors_of_a_block_reported() -> None:
    with pytest.raises(MnasError) as ei:
        parse_block("r1_k4_s33_e6_o16_se2")
    assert len(ei.value.diagnostics) == 3


def test_non_string() -> None:
    with pytest.raises(MnasError):
        parse_block(42)  # type: ignore[arg-type]

"""Network files: settings, rules, multi-network files, overrides and diagnostics."""

from __future__ import annotations

import pytest

import mnasdsl
from mnasdsl import MnasError, cost, lower, parse
from mnasdsl.ir import Network

BASE = """network tiny:
  input 32x32x3
  classes 10
  width 1.0
  stem cv_k3_s22_o16
  blocks
    ds_r1_k3_s11_i16_o16
    r2_k3_s22_e6_o24_se0.25
  head cv_k1_o64 fixed
"""


def net(text: str = BASE) -> Network:
    (n,) = parse(text)
    assert isinstance(n, Network)
    return n


def errors(text: str) -> list[str]:
    with pytest.raises(MnasError) as ei:
        parse(text, "f.mnas")
    return [d.header() for d in ei.value.diagnostics]


def test_defaults() -> None:
    n = net()
    assert (n.depth, n.divisor, n.dropout, n.bn_momentum, n.bn_eps, n.padding, n.activation, n.head_mode) == (
        1.0, 8, 0.2, 0.99, 1e-3, "same", "relu", "fixed")


def test_all_settings() -> None:
    n = net(BASE.replace("  width 1.0\n", "  width 0.5\n  depth 1.5\n  divisor 4\n  min_depth 8\n  dropout 0.3\n"
                         "  bn momentum 0.9 eps 1e-5\n  padding symmetric\n  activation swish\n"))
    assert (n.width, n.depth, n.divisor, n.min_depth, n.dropout, n.bn_momentum, n.bn_eps, n.padding,
            n.activation) == (0.5, 1.5, 4, 8, 0.3, 0.9, 1e-5, "symmetric", "swish")


def test_input_default_channels() -> None:
    assert net(BASE.replace("32x32x3", "32x48")).input == (32, 48, 3)


def test_omitted_input_is_inferred() -> None:
    low = lower(net())
    assert low.layers[2].in_shape == (16, 16, 16)


def test_depth_multiplier_rounds_up() -> None:
    n = net(BASE.replace("  width 1.0\n", "  width 1.0\n  depth 1.2\n"))
    blocks = [ly for ly in lower(n).layers if ly.kind == "block"]
    assert [ly.block for ly in blocks] == [0, 0, 1, 1, 1]  # ceil(1.2)=2, ceil(2.4)=3
    assert blocks[2].stride == (2, 2) and blocks[3].stride == (1, 1)


def test_width_rounding_tf_rule() -> None:
    from mnasdsl.rounding import round_filters

    assert round_filters(36) == 36  # product equals the literal: no rounding at 1.0
    assert round_filters(36, width=1.0, divisor=8) == 36
    assert round_filters(32, width=0.35) == 16  # 11.2 -> 8 < 0.9*11.2 -> 16
    assert round_filters(24, factor=0.75) == 24  # 18 -> 16 < 16.2 -> 24
    assert round_filters(320, width=1.4) == 448
    assert round_filters(16, width=0.5, min_depth=16) == 16


def test_head_modes() -> None:
    fixed = lower(net(), width=2.0).layers[-2].out_shape[2]
    scaled = lower(net(BASE.replace("fixed", "scaled")), width=2.0).layers[-2].out_shape[2]
    assert (fixed, scaled) == (64, 128)
    assert lower(net(BASE.replace("fixed", "scaled")), width=0.5).layers[-2].out_shape[2] == 64


def test_overrides_replace_not_multiply() -> None:
    n = net(BASE.replace("width 1.0", "width 0.5"))
    assert n.scaled(width=1.0).width == 1.0
    assert cost(n, width=1.0) == cost(net())
    assert n.scaled(resolution=64).input == (64, 64, 3)
    assert n.scaled(classes=3).classes == 3
    with pytest.raises(MnasError):
        n.scaled(width=0)
    with pytest.raises(MnasError):
        n.scaled(resolution=0)


def test_multi_network_file() -> None:
    text = BASE + "\n" + BASE.replace("network tiny", "network tiny2")
    units = parse(text)
    assert [u.name for u in units] == ["tiny", "tiny2"]


def test_multi_network_selection(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "two.mnas"
    p.write_text(BASE + BASE.replace("network tiny", "network other"))
    with pytest.raises(MnasError, match="several networks .*tiny, other"):
        mnasdsl.load(p)
    assert mnasdsl.load(p, "other").name == "other"
    with pytest.raises(MnasError, match="no network named `nope`"):
        mnasdsl.load(p, "nope")


def test_spans_do_not_affect_equality() -> None:
    a = net()
    b = net("# a comment\n" + BASE.replace("  ", "    "))
    assert a == b and hash(a) == hash(b)
    assert a.span != b.span


def test_comments_and_crlf() -> None:
    n = net(BASE.replace("\n", "  # note\r\n").replace("blocks  # note", "blocks"))
    assert n == net()


RULES = [
    (BASE.replace("classes 10", "classes 0"), "f.mnas:3:11: error: classes must be >= 1"),
    (BASE.replace("width 1.0", "width 0"), "f.mnas:4:9: error: width multiplier must be > 0"),
    (BASE.replace("width 1.0", "width 1e9"), "width multiplier must be > 0 and <= 16"),
    (BASE.replace("32x32x3", "0x32x3"), "input height must be >= 1"),
    (BASE.replace("32x32x3", "99999x32x3"), "input height must be >= 1 and <= 8192"),
    (BASE.replace("width 1.0", "width 1.0\n  dropout 1.0"), "dropout must be >= 0 and < 1"),
    (BASE.replace("width 1.0", "width 1.0\n  bn eps 0"), "bn eps must be > 0"),
    (BASE.replace("width 1.0", "width 1.0\n  classes 3"), "duplicate `classes` (first given on line 3)"),
    (BASE.replace("i16_o16", "i24_o16"),
     "f.mnas:7:19: error: block 0 declares i24 input channels but receives 16 from the stem"),
    (BASE.replace("stem cv_k3_s22_o16", "stem r1_k3_s22_e6_o16"), "`e` is not allowed in the stem"),
    (BASE.replace("stem cv_k3_s22_o16", "stem mb_k3_s22_o16"), "the stem is a regular convolution"),
    (BASE.replace("head cv_k1_o64", "head cv_k1_s22_o64"), "the head conv must have stride 1"),
    (BASE.replace("  stem cv_k3_s22_o16\n", ""), "network `tiny` has no `stem`"),
    (BASE.replace("  head cv_k1_o64 fixed\n", ""), "network `tiny` has no `head`"),
    (BASE.replace("    ds_r1_k3_s11_i16_o16\n    r2_k3_s22_e6_o24_se0.25\n", ""), "empty `blocks` section"),
    (BASE.replace("classes 10", "classes ten"), "f.mnas:3:11: error: unexpected `ten`; expected an integer"),
    (BASE.replace("padding", "x").replace("width 1.0", "width 1.0\n  padding diagonal"),
     "expected `same` or `symmetric`"),
    ("  classes 3\n" + BASE, "f.mnas:1:3: error: setting outside of a unit"),
    (BASE + BASE, "duplicate unit name `tiny`"),
    ("", "empty file"),
    ("   \n\n# only a comment\n", "empty file"),
    ("network x:\n  input 3x3x3\u00e9\n", "f.mnas:2:9: error: unexpected `3x3x3\u00e9`"),
    (BASE.replace("r2_k3", "r2_k\u00e93"), "f.mnas:8:8: error: malformed value in `k\u00e93`"),
    (BASE.replace("r2_k3_s22_e6_o24_se0.25", "r2_k3_s22_e6_o24_se0.25_k{3,5}"), "choices are only allowed"),
    (BASE.replace("classes 10", "classes 10 20"), "unexpected `20`; expected end of line"),
    (BASE.replace("  blocks\n", "  blocks\n  dropout 0.1\n"),
     "f.mnas:8:5: error: block string outside a `blocks` section"),
    (BASE.replace("classes 10", "classes 123456789012345678901234567890"), "absurdly long"),
]


@pytest.mark.parametrize("text,expected", RULES)
def test_rules(text: str, expected: str) -> None:
    errs = errors(text)
    assert any(expected in e for e in errs), errs


def test_all_errors_reported() -> None:
    text = BASE.replace("classes 10", "classes 0").replace("r2_k3", "r2_k4").replace("width 1.0", "width -1")
    assert len(errors(text)) == 3


def test_syntax_and_semantic_errors_together() -> None:
    text = BASE.replace("classes 10", "classes ten").replace("r2_k3", "r2_k4")
    errs = errors(text)
    assert any("ten" in e for e in errs) and any("kernel must be odd" in e for e in errs)


def test_rendered_caret() -> None:
    with pytest.raises(MnasError) as ei:
        parse(BASE.replace("r2_k3", "r2_k4"), "f.mnas")
    lines = ei.value.render().splitlines()
    assert lines[0] == "f.mnas:8:9: error: kernel must be odd, got 4"
    assert lines[1].endswith("r2_k4_s22_e6_o24_se0.25")
    assert lines[2].index("^") == lines[1].index("4")


def test_binary_and_encoding(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "b.mnas"
    p.write_bytes(b"network a:\n\x00\x01\x02")
    with pytest.raises(MnasError, match="binary file"):
        mnasdsl.load(p)
    p.write_bytes(b"network a:\n  classes \xff\xfe\n")
    with pytest.raises(MnasError, match="not valid UTF-8"):
        mnasdsl.load(p)
    with pytest.raises(MnasError, match="no such file"):
        mnasdsl.load(tmp_path / "missing.mnas")
    with pytest.raises(MnasError, match="is a directory"):
        mnasdsl.load(tmp_path)


def test_truncated_file() -> None:
    errs = errors(BASE[: BASE.index("head") + 6])
    assert errs


def test_bom_is_accepted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "bom.mnas"
    p.write_bytes("\ufeff".encode() + BASE.encode())
    assert mnasdsl.load(p) == net()


def test_json_schema_has_no_spans() -> None:
    schema = Network.model_json_schema()
    assert "span" not in schema["properties"] and "blocks" in schema["properties"]


def test_pydantic_validation_agrees_with_builder() -> None:
    n = net()
    again = Network.model_validate(n.model_dump())
    assert again == n
    with pytest.raises(ValueError):
        Network.model_validate({**n.model_dump(), "classes": 0})

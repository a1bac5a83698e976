"""The op registry: every registered op is known to every backend table, and each op's rules
(fields, lowering widths) come from its one definition."""

from __future__ import annotations

from pathlib import Path

import pytest

import mnasdsl
from mnasdsl import MnasError, parse_block
from mnasdsl.backends import flax as flax_backend
from mnasdsl.cost import COST
from mnasdsl.interop.weights import TIMM_NAMES
from mnasdsl.latency.features import FEATURE_FNS
from mnasdsl.ops import OP_ALIASES, OP_NAMES, OPS

TABLES = {"cost.COST": COST, "backends.flax.FLAX": flax_backend.FLAX, "latency.features.FEATURE_FNS": FEATURE_FNS,
          "interop.weights.TIMM_NAMES": TIMM_NAMES}


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_op_has_an_entry_in_every_backend_table(table: str) -> None:
    assert set(TABLES[table]) == set(OP_NAMES), f"{table} is missing {set(OP_NAMES) - set(TABLES[table])}"


def test_grammar_and_fast_path_read_the_registry() -> None:
    for tok in (*OP_NAMES, *OP_ALIASES):
        spec = OPS[OP_ALIASES.get(tok, tok)]
        text = f"{tok}_r1_k3_s11" + ("_e4" if spec.expands else "") + "_o16"
        b = parse_block(text)
        assert b.op == spec.name
        assert mnasdsl.blocks.parse_block_lark(text) == b


def test_expansion_only_on_expanding_ops() -> None:
    for name, spec in OPS.items():
        if spec.expands:
            continue
        with pytest.raises(MnasError, match="has no meaning"):
            parse_block(f"{name}_r1_k3_e4_o16")


# --- er: fused MBConv -------------------------------------------------------------------------

ER_NET = """\
network er_net:
  input 32x32x3
  classes 10
  width WIDTH
  stem cv_k3_s22_o32
  blocks
    er_r1_k3_s11_e4_i32_o24_fc24_noskip
    er_r2_k3_s22_e8_i24_o32_se0.25
    r1_k5_s22_e6_i32_o40
  head cv_k1_o128
"""


def er_net(width: float = 1.0) -> mnasdsl.Network:
    return mnasdsl.parse(ER_NET.replace("WIDTH", repr(width)))[0]


def test_er_lowering_widths_and_skips() -> None:
    low = mnasdsl.lower(er_net())
    b = low.blocks
    assert [ly.op for ly in b] == ["er", "er", "er", "mb"]
    assert b[0].mid == 96 and b[0].skip == "none"  # fc24 x e4, not 32 x 4
    assert b[1].mid == 24 * 8 and b[1].se == 6 and b[1].stride == (2, 2) and b[1].skip == "none"
    assert b[2].mid == 32 * 8 and b[2].se == 8 and b[2].skip == "identity"
    # fc scales with the width multiplier as outputs do (timm rounds force_in_chs with round_chs_fn)
    half = mnasdsl.lower(er_net(0.5)).blocks[0]
    assert half.in_shape[2] == 16 and half.mid == 16 * 4


def test_er_e1_is_cv_and_formats_canonically() -> None:
    assert parse_block("er_r1_k3_e1_o16") == parse_block("cv_r1_k3_o16")
    b = parse_block("er_fc24_k3_e4_o24_r1_noskip_s11")
    assert mnasdsl.blocks.format_block(b) == "er_r1_k3_s11_e4_o24_fc24_noskip"
    assert parse_block(mnasdsl.blocks.format_block(b)) == b


def test_er_cost_equals_flax_params_per_layer() -> None:
    from flax import nnx

    for w in (1.0, 0.5, 1.4):
        net = er_net(w)
        model = flax_backend.abstract(net)
        assert model.layer_params() == [c.params for c in mnasdsl.cost(net).layers]
    k, cin, mid, cout = 3, 24, 192, 32
    ly = mnasdsl.lower(er_net()).blocks[1]
    p, macs = COST["er"](ly)
    assert p == k * k * cin * mid + 2 * mid + mid * cout + 2 * cout
    assert macs == 8 * 8 * (k * k * cin * mid + mid * cout)
    assert flax_backend.count_params(flax_backend.build(er_net(), rngs=nnx.Rngs(0))) == mnasdsl.cost(er_net()).params


@pytest.mark.parametrize("text, col, message", [
    ("mb_k3_e4_o16_fc24", 16, "`fc24` has no meaning for a `mb` block (only `er` takes it)"),
    ("er_k3_e1_o16_fc24", 16, "`fc24` has no meaning for an e1 `er` block (a `cv` block)"),
    ("er_k3_e4_o16_fc0", 16, "forced input channels must be between 1 and 32768, got 0"),
    ("ds_k3_e4_o16", 8, "expansion `e4` has no meaning for a `ds` block (only `mb`, `er` expand)"),
    ("r1_k3_e3_o16_hsig", 14, "`hsig` picks a squeeze-excitation variant, but this block has no squeeze-excitation"),
    ("r1_k3_e3_o16_se0_seact", 18, "`seact` picks a squeeze-excitation variant"),
    ("r1_k3_e3_o16_se0.25_hsig_seact", 26, "duplicate field"),
])
def test_field_errors_point_at_the_field(text: str, col: int, message: str) -> None:
    """`er`/`fc` where they do not apply, and SE variants on a block without SE: a caret at the field."""
    with pytest.raises(MnasError) as err:
        parse_block(text)
    d = err.value.diagnostics[0]
    assert message in d.message and d.span.col == col


def file_errors(tmp_path: Path, text: str) -> list[tuple[str, int, int]]:
    """(message, line, col) of every diagnostic loading ``text`` as a file gives (it must fail)."""
    path = tmp_path / "bad.mnas"
    path.write_text(text)
    with pytest.raises(MnasError) as err:
        mnasdsl.load(str(path))
    return [(d.message, d.span.line, d.span.col) for d in err.value.diagnostics]


def test_er_in_stem_or_head_is_an_error_with_a_caret(tmp_path: Path) -> None:
    msgs = file_errors(tmp_path, ER_NET.replace("WIDTH", "1.0").replace("stem cv_k3_s22_o32", "stem er_k3_s22_e4_o32")
                       .replace("head cv_k1_o128", "head cv_k1_o128_fc8"))
    assert ("the stem is a regular convolution: write `cv_...`", 5, 8) in msgs
    assert ("`fc` is not allowed in the head", 10, 21) in msgs and len(msgs) == 3


def test_er_latency_is_priced_from_features() -> None:
    from mnasdsl.latency import estimator
    from mnasdsl.latency.features import layer_features

    low = mnasdsl.lower(er_net())
    f = layer_features(low.blocks[1])
    k, cin, mid, cout, pout = 3, 24, 192, 32, 8 * 8
    assert f[0] * 1e6 == pytest.approx(pout * k * k * cin * mid + pout * mid * cout + 2 * mid * 6)
    assert f[1:4] == [0.0, 0.0, 0.0]  # no depthwise conv
    report = estimator.estimate(low, device="pixel1")
    rows = {r.name: r for r in report.layers}
    assert report.ms > 0 and all(rows[ly.name].source == "model" and rows[ly.name].ms > 0 for ly in low.blocks[:3])


def test_import_arch_accepts_er() -> None:
    from mnasdsl.interop.archs import Settings, arch_from_timm

    text, _ = arch_from_timm(["er_r1_k3_s1_e4_c24_fc24_noskip", "er_r2_k3_s2_e8_c32", "ir_r1_k5_s2_e8_c96"],
                             Settings(name="es"))
    assert "er_r1_k3_s11_e4_i32_o24_fc24_noskip" in text and "er_r2_k3_s22_e8_i24_o32" in text
    with pytest.raises(MnasError, match="only applies to er blocks"):
        arch_from_timm(["ir_r1_k3_s1_e4_c24_fc24"], Settings(name="x"))


def test_fast_constructor_keeps_the_model_field_order() -> None:
    """Block equality compares field values in order: the hot-path constructor must store them as pydantic does."""
    b = parse_block("er_r1_k3_s11_e4_i32_o24_fc24_se0.25_noskip_relu")
    assert list(b.__dict__) == list(mnasdsl.ir.Block.model_fields)
    assert b == mnasdsl.ir.Block(**{k: v for k, v in b.__dict__.items() if k not in ("span", "spans")})


def test_show_cost_fmt_handle_er(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mnasdsl.cli.main import main

    path = tmp_path / "er.mnas"
    path.write_text(ER_NET.replace("WIDTH", "1.0").replace("er_r1_k3_s11_e4_i32_o24_fc24_noskip",
                                                           "er_fc24_r1_k3_e4_i32_o24_noskip"))
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "er k3 s11 e4" in out
    assert main(["cost", str(path), "--json"]) == 0
    assert '"params": ' + str(mnasdsl.cost(mnasdsl.load(str(path))).params) in capsys.readouterr().out
    assert main(["fmt", str(path)]) == 0
    assert "er_r1_k3_s11_e4_i32_o24_fc24_noskip" in capsys.readouterr().out


def test_an_op_without_se_refuses_se_and_its_variants(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every op today takes SE; the rule still comes from the op's declared fields (a registry entry
    without `se` makes SE and SE variants caret errors, on the fast path too)."""
    from dataclasses import replace

    monkeypatch.setitem(OPS, "cv", replace(OPS["cv"], fields=frozenset()))
    with pytest.raises(MnasError) as err:
        parse_block("cv_r1_k3_s11_o16_se0.25_hsig")
    got = [(d.message, d.span.col) for d in err.value.diagnostics]
    assert got == [("`se0.25` has no meaning for a `cv` block (only `mb`, `ds`, `er` take it)", 20),
                   ("`hsig` has no meaning for a `cv` block (only `mb`, `ds`, `er` take it)", 25)]
    assert parse_block("cv_r1_k3_s11_o16").op == "cv"

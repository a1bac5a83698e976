"""The reference specs against the TF TPU MnasNet code's own semantics, restated here as a model.

TF (``mnasnet_model.py``): filters are rounded only when a depth multiplier is given; a block's
convs take the channels they receive, but its expansion width, SE width and skip test use the
*declared* ``input_filters`` (rounded like the outputs); repeats after the first declare their
input as the output, stride 1; the stem is rounded, the 1280 head never is.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import mnasdsl
from mnasdsl import parse
from mnasdsl.rounding import round_filters

from .conftest import SPECS

# TF TPU models/official/mnasnet/mnasnet_models.py: stem_size and block strings, as TF writes them.
TF_MODELS: dict[str, tuple[int, list[str]]] = {
    "mnasnet-a1": (32, ["r1_k3_s11_e1_i32_o16_noskip", "r2_k3_s22_e6_i16_o24", "r3_k5_s22_e3_i24_o40_se0.25",
                        "r4_k3_s22_e6_i40_o80", "r2_k3_s11_e6_i80_o112_se0.25", "r3_k5_s22_e6_i112_o160_se0.25",
                        "r1_k3_s11_e6_i160_o320"]),
    "mnasnet-b1": (32, ["r1_k3_s11_e1_i32_o16_noskip", "r3_k3_s22_e3_i16_o24", "r3_k5_s22_e3_i24_o40",
                        "r3_k5_s22_e6_i40_o80", "r2_k3_s11_e6_i80_o96", "r4_k5_s22_e6_i96_o192",
                        "r1_k3_s11_e6_i192_o320_noskip"]),
    "mnasnet-small": (8, ["r1_k3_s11_e1_i16_o8", "r1_k3_s22_e3_i8_o16", "r2_k3_s22_e6_i16_o16",
                          "r4_k5_s22_e6_i16_o32_se0.25", "r3_k3_s11_e6_i32_o32_se0.25",
                          "r3_k5_s22_e6_i32_o88_se0.25", "r1_k3_s11_e6_i88_o144"]),
    "mnasnet-d1": (32, ["r1_k3_s11_e9_i32_o24", "r3_k3_s22_e9_i24_o36", "r5_k3_s22_e9_i36_o48",
                        "r4_k5_s22_e9_i48_o96", "r5_k7_s11_e3_i96_o96", "r3_k3_s22_e9_i96_o80",
                        "r1_k7_s11_e6_i80_o320_noskip"]),
    "mnasnet-d1-320": (32, ["r3_k5_s11_e6_i32_o24", "r4_k7_s22_e9_i24_o36", "r5_k5_s22_e9_i36_o48",
                            "r5_k7_s22_e6_i48_o96", "r5_k3_s11_e9_i96_o144", "r5_k5_s22_e6_i144_o160",
                            "r1_k7_s11_e9_i160_o320"]),
}
WIDTHS = [round(0.5 + 0.05 * i, 2) for i in range(19)]  # 0.5 .. 1.4
SMALL_TF_BLOCK0 = "r1_k3_s11_e1_i8_o8_noskip"  # TF's network in the language's spelling

# (channels in, depthwise width, channels out, kernel, stride, SE width, identity residual)
Row = tuple[int, int, int, int, int, int, bool]


def tf_round_filters(filters: int, multiplier: float | None, divisor: int = 8, min_depth: int | None = None) -> int:
    """TF's rule, as written there."""
    if not multiplier:
        return filters
    scaled = filters * multiplier
    new = max(min_depth or divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def tf_rows(model: str, multiplier: float | None) -> tuple[int, list[Row], int]:
    """(stem channels, block layers, head channels) of TF's model, by TF's semantics."""
    stem, strings = TF_MODELS[model]
    c = tf_round_filters(stem, multiplier)
    rows: list[Row] = []
    for s in strings:
        opt = dict(re.split(r"(\d.*)", t)[:2] for t in s.split("_") if t != "noskip")  # TF's decoder
        reps, k, e = int(opt["r"]), int(opt["k"]), int(opt["e"])
        stride, se = int(opt["s"][0]), float(opt.get("se", 0))
        din, dout = tf_round_filters(int(opt["i"]), multiplier), tf_round_filters(int(opt["o"]), multiplier)
        for _ in range(reps):
            mid = c if e == 1 else din * e  # no expansion conv at e1: the depthwise sees what arrives
            rows.append((c, mid, dout, k, stride, max(1, int(din * se)) if se else 0,
                         "noskip" not in s and stride == 1 and din == dout))
            c, din, stride = dout, dout, 1
    return tf_round_filters(stem, multiplier), rows, 1280


def our_rows(net: mnasdsl.Network, width: float) -> tuple[int, list[Row], int]:
    low = mnasdsl.lower(net, width=width)
    rows = [(ly.in_shape[2], ly.mid, ly.out_shape[2], ly.kernel, ly.stride[0], ly.se, ly.skip == "identity")
            for ly in low.blocks]
    return low.layers[0].out_shape[2], rows, low.layers[-2].out_shape[2]


def _tf_multiplier(width: float) -> float | None:
    """The language's width 1.0 is TF's reference build, ``depth_multiplier=None``."""
    return None if width == 1.0 else width


def test_tf_round_filters_rule_on_concrete_values() -> None:
    assert tf_round_filters(36, None) == 36  # TF's reference models: no multiplier, no rounding
    assert tf_round_filters(36, 1.0) == 40  # an explicit 1.0 rounds: int(36 + 4) // 8 * 8 = 40 >= 32.4
    assert tf_round_filters(36, 0.5) == 24  # 18 -> 16 < 0.9 * 18 -> 24
    assert tf_round_filters(36, 1.4) == 48  # 50.4 -> 48
    assert tf_round_filters(32, 0.35) == 16
    assert round_filters(36) == tf_round_filters(36, None) == 36  # width 1.0, no factor: TF's None
    for w in WIDTHS:
        if w != 1.0:
            assert round_filters(36, width=w) == tf_round_filters(36, w), w
    # A multiplier is given, even though the product equals the literal: TF rounds.
    assert round_filters(36, factor=0.5, width=2.0) == tf_round_filters(36, 1.0) == 40
    assert round_filters(4, factor=2.0, width=0.5) == 8  # never below min_depth


@pytest.mark.parametrize("model", ["mnasnet-a1", "mnasnet-b1", "mnasnet-d1", "mnasnet-d1-320"])
def test_reference_specs_are_tf_at_every_width(model: str) -> None:
    net = mnasdsl.load(SPECS / f"{model}.mnas")
    for w in WIDTHS:
        assert our_rows(net, w) == tf_rows(model, _tf_multiplier(w)), w


def _tf_small_block0_residual(width: float) -> bool:
    """TF's skip test on the rounded declarations i16 and o8: equal (both 8) only at widths <= 0.55."""
    m = _tf_multiplier(width)
    return tf_round_filters(16, m) == tf_round_filters(8, m)


def test_mnasnet_small_differs_from_tf_only_in_block0_residual() -> None:
    net = mnasdsl.load(SPECS / "mnasnet-small.mnas")
    assert not _tf_small_block0_residual(1.0) and _tf_small_block0_residual(0.5)
    for w in WIDTHS:
        ours, tf = our_rows(net, w), tf_rows("mnasnet-small", _tf_multiplier(w))
        assert tf[1][0][6] is _tf_small_block0_residual(w), w
        assert ours[1][0] == (*tf[1][0][:6], True), w  # timm's residual, at every width
        assert (ours[0], ours[1][1:], ours[2]) == (tf[0], tf[1][1:], tf[2]), w


def test_mnasnet_small_tf_exact_spelling() -> None:
    """The spelling the spec's comment offers is TF's network (wherever TF has no residual there,
    width 1.0 included), at the same cost as timm's."""
    path = SPECS / "mnasnet-small.mnas"
    text = path.read_text()
    assert "\n    r1_k3_s11_e1_i8_o8\n" in text
    (tf_net,) = parse(text.replace("\n    r1_k3_s11_e1_i8_o8\n", f"\n    {SMALL_TF_BLOCK0}\n"), str(path))
    assert isinstance(tf_net, mnasdsl.Network)
    for w in WIDTHS:
        if not _tf_small_block0_residual(w):
            assert our_rows(tf_net, w) == tf_rows("mnasnet-small", _tf_multiplier(w)), w
    shipped, exact = mnasdsl.cost(mnasdsl.load(path)), mnasdsl.cost(tf_net)
    assert shipped.params == exact.params == 2_030_264 and shipped.macs == exact.macs


def test_specs_say_where_they_leave_tf() -> None:
    small = (SPECS / "mnasnet-small.mnas").read_text()
    comments = " ".join(line.strip() for line in small.splitlines() if line.strip().startswith("#"))
    assert "timm" in comments and "r1_k3_s11_e1_i16_o8" in comments and SMALL_TF_BLOCK0 in comments
    for name in ("mnasnet-d1", "mnasnet-d1-320"):
        text = (SPECS / f"{name}.mnas").read_text()
        assert "depth_multiplier=None" in text and "depth_multiplier=1.0" in text and "o40" in text, name


def test_only_d1_o36_at_width_1_differs_from_an_explicit_tf_multiplier() -> None:
    """Every literal of every shipped network at 0.5..1.4: ours against TF given that width as an
    explicit multiplier. The one difference is TF's explicit 1.0 on a non-multiple of 8."""
    diffs = set()
    for path in sorted(Path(SPECS).glob("*.mnas")):
        net = mnasdsl.load(path)
        lits = [(net.stem.output, net.stem.output_factor)] + [(b.output, b.output_factor) for b in net.blocks]
        lits += [(b.input, 1.0) for b in net.blocks if b.input is not None]
        for w in WIDTHS:
            for lit, fac in lits:
                ours = round_filters(lit, fac, w, net.divisor, net.min_depth)
                if ours != tf_round_filters(int(lit * fac), w, net.divisor, net.min_depth):
                    diffs.add((path.stem, w, lit, ours))
    assert diffs == {("mnasnet-d1", 1.0, 36, 36), ("mnasnet-d1-320", 1.0, 36, 36)}

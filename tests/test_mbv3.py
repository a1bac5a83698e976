"""MnasNet's descendants: MobileNetV3's elements (hard-sigmoid SE, SE with the block's activation,
expansions rounded to a multiple of 8, the pooled head) and the four reference specs."""

from __future__ import annotations

from pathlib import Path

import pytest

import mnasdsl
from mnasdsl import parse_block
from mnasdsl.blocks import format_block, parse_block_lark
from mnasdsl.latency.features import layer_features
from mnasdsl.latency.lut import _KEY, layer_for_key, op_key

from .test_ops import file_errors

ROOT = Path(__file__).resolve().parent.parent

# timm's own counts (timm.create_model(name).parameters()), independent of this code.
TIMM_PARAMS = {
    "mobilenet-v3-large": ("mobilenetv3_large_100", 5_483_032),
    "mobilenet-v3-small": ("mobilenetv3_small_100", 2_542_856),
    "efficientnet-edgetpu-s": ("efficientnet_es", 5_438_392),
    "efficientnetv2-b0": ("tf_efficientnetv2_b0", 7_139_704),
}


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS))
def test_spec_params_equal_timm(name: str) -> None:
    net = mnasdsl.load(ROOT / "specs" / f"{name}.mnas")
    assert mnasdsl.cost(net).params == TIMM_PARAMS[name][1]


NET = """\
network t:
  input 40x40x3
  classes 10
  activation hswish
  EXPDIV
  stem cv_k3_s22_o16
  blocks
    ds_r1_k3_s11_i16_o16_se0.25_hsig_relu
    r1_k3_s22_e2.3_i16_o20_relu
    r1_k5_s11_e3.67_i20_o20_se0.25_hsig
    r1_k3_s11_e4_i20_o24_se0.25_seact_swish
  head cv_k1_o64 fixed HEAD
"""


def net(expdiv: int = 8, head: str = "pooled") -> mnasdsl.Network:
    text = NET.replace("EXPDIV", f"expansion_divisor {expdiv}" if expdiv != 1 else "").replace("HEAD", head)
    return mnasdsl.parse(text)[0]


def test_hard_sigmoid_se_is_sized_from_the_expanded_width() -> None:
    b = mnasdsl.lower(net()).blocks
    assert (b[0].se_gate, b[0].se_act, b[0].mid, b[0].se) == ("hsigmoid", "relu", 16, 8)  # make_divisible(4, 8)
    assert b[2].mid == 72 and b[2].se == 24  # make_divisible(73.4) = 72; 72 x 0.25 = 18 -> 16 is < 0.9 x 18: 24
    assert (b[3].se_gate, b[3].se_act, b[3].se) == ("sigmoid", "swish", 5)  # the block's act, TF's int(20 x 0.25)


def test_expansion_divisor_rounds_expansions_to_multiples() -> None:
    assert mnasdsl.lower(net(8)).blocks[1].mid == 40  # make_divisible(16 x 2.3 = 36.8) = 40
    assert mnasdsl.lower(net(1)).blocks[1].mid == 37  # TF: round(36.8)


def test_pooled_head_layer_and_cost() -> None:
    low = mnasdsl.lower(net())
    head, cls = low.layers[-2], low.layers[-1]
    assert (head.kind, head.op, head.in_shape, head.out_shape, head.act) == ("head", "fc", (10, 10, 24), (1, 1, 64),
                                                                             "hswish")
    c = mnasdsl.cost(low).layers
    assert (c[-2].params, c[-2].macs) == (24 * 64 + 64, 24 * 64)  # conv with bias, no BN
    assert cls.in_shape == (1, 1, 64)
    plain = mnasdsl.lower(net(head="")).layers[-2]
    assert (plain.op, plain.out_shape) == ("cv", (10, 10, 64))


def test_cost_equals_flax_params_per_layer() -> None:
    from mnasdsl.backends import flax as fb

    for n in (net(), net(1, "")):
        assert fb.abstract(n).layer_params() == [c.params for c in mnasdsl.cost(n).layers]


@pytest.mark.parametrize("text", ["r1_k3_s11_e4_o24_se0.25_hsig", "ds_r2_k5_s22_o16_se0.5_seact_relu",
                                  "er_r1_k3_s11_e4_o24_fc16_se0.25_hsig_noskip"])
def test_se_variants_round_trip(text: str) -> None:
    b = parse_block(text)
    assert format_block(b) == text and parse_block_lark(text) == b
    shuffled = "_".join(reversed(text.split("_")))
    assert format_block(parse_block(shuffled)) == text


def test_file_errors_for_new_settings(tmp_path: Path) -> None:
    msgs = file_errors(tmp_path, NET.replace("EXPDIV", "expansion_divisor 0").replace("HEAD", "pooled")
                       .replace("head cv_k1_o64", "head cv_k3_o64_hsig"))
    assert any("expansion_divisor must be" in m and line == 5 for m, line, _ in msgs)
    assert ("`hsig/seact` is not allowed in the head", 12, 18) in msgs
    msgs = file_errors(tmp_path, NET.replace("EXPDIV", "").replace("HEAD", "pooled")
                       .replace("head cv_k1_o64", "head cv_k3_o64"))
    assert msgs == [("a pooled head is a 1x1 conv on the pooled features: write `k1`, not `k3`", 12, 11)]


def test_latency_keys_and_features() -> None:
    low = mnasdsl.lower(net())
    for ly in low.layers:
        key = op_key(ly)
        assert _KEY.match(key), key
        back = layer_for_key(key)
        assert (back.mid, back.se, back.se_gate, back.se_act) == (ly.mid, ly.se, ly.se_gate, ly.se_act)
        assert layer_features(back) == layer_features(ly)
    assert op_key(low.blocks[0]).endswith("-se:hsigmoid:relu:8")
    assert op_key(low.blocks[1]).endswith("-mid:40")
    assert op_key(low.layers[-2]).startswith("fc-i10x10x24-o1x1x64") and op_key(low.layers[-2]).endswith("hswish")
    est = mnasdsl.latency.estimate(low, device="pixel1")
    assert est.ms > 0 and all(r.ms > 0 for r in est.layers)


def test_space_offers_new_ops_and_se_variants() -> None:
    space = mnasdsl.space.Space(mnasdsl.parse("""\
space mbv3ish:
  input 32x32x3
  classes 10
  activation hswish
  expansion_divisor 8
  stem cv_k3_s22_o16
  blocks
    {mb_e3,mb_e6,er_e4}_r1_k3_s22_o24_{se0,se0.25_hsig,se0.25_seact}
    r2_k{3,5}_e{2.3,4}_o24
  head cv_k1_o64 fixed pooled
""")[0])
    assert space.size() == 3 * 3 * 2 * 2
    seen = set()
    for i in range(40):
        n = space.sample(i)
        assert space.decode(space.encode(n)) == n
        b = n.blocks[0]
        seen.add((b.op, b.se_kind))
        assert mnasdsl.parse(mnasdsl.format(n))[0] == n
    assert {op for op, _ in seen} == {"mb", "er"} and {k for _, k in seen} == {"tf", "hsig", "act"}
    assert "{se0,se0.25_hsig,se0.25_seact}" in mnasdsl.format(space)


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS))
def test_specs_are_canonical_and_show(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    from mnasdsl.cli.main import main

    path = str(ROOT / "specs" / f"{name}.mnas")
    assert main(["fmt", "--check", path]) == 0
    assert main(["show", path]) == 0
    out = capsys.readouterr().out
    if name.startswith("mobilenet-v3"):
        assert "pool+fc hswish" in out and "se0.25(" in out


def test_example_space_of_the_descendants() -> None:
    space = mnasdsl.load_space(ROOT / "specs" / "spaces" / "mnasnet-descendants.mnas")
    assert space.size() == 162 ** 5
    for seed in range(5):
        n = space.sample(seed)
        assert space.decode(space.encode(n)) == n
        assert mnasdsl.latency.estimate(n, device="pixel1", resolution=64).ms > 0
        assert mnasdsl.cost(n).params > 0

"""Search spaces: the paper's space size, decisions, sampling, mutation, encode/decode."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mnasdsl
from mnasdsl import MnasError, lower, parse
from mnasdsl.space import Space, space_from_text

from .conftest import SPECS

PAPER = mnasdsl.load_space(SPECS / "spaces" / "mnasnet.mnas")


def test_paper_space_size() -> None:
    assert PAPER.size() == 432**7
    per_block = {}
    for d in PAPER.decisions():
        per_block.setdefault(d.block, 1)
        per_block[d.block] *= len(d.choices)
    assert list(per_block.values()) == [432] * 7


def test_decisions_are_ordered_tokens() -> None:
    decs = PAPER.decisions()
    assert len(decs) == 42
    loc, choices = decs[0]
    assert loc == "blocks[0].op+expansion" and choices == ("cv", "ds", "mb_e3", "mb_e6")
    assert [d.fields for d in decs[:6]] == [("op", "expansion"), ("repeats_delta",), ("kernel",),
                                            ("output_factor",), ("se",), ("skip",)]


def test_joint_op_expansion_decision() -> None:
    idx = [0] * 42
    for choice, (op, e) in enumerate([("cv", 1.0), ("ds", 1.0), ("mb", 3.0), ("mb", 6.0)]):
        idx[0] = choice
        idx[1] = 1  # keep the block
        b = PAPER.decode(idx).blocks[0]
        assert (b.op, b.expansion) == (op, e)


def test_relative_filters_one_rounding() -> None:
    idx = [1] * 42
    idx[3] = 0  # x0.75 on block 0: 16*0.75 = 12 -> round_filters(12) = 16
    low = lower(PAPER.decode(idx))
    assert low.layers[1].out_shape[2] == 16
    idx[3] = 2  # x1.25: 20 -> 24
    assert lower(PAPER.decode(idx)).layers[1].out_shape[2] == 24


def test_relative_repeat_can_remove_a_block() -> None:
    idx = [1] * 42
    idx[1] = 0  # block 0 has r1 and offset -1
    n = PAPER.decode(idx)
    assert len(n.blocks) == 6
    assert PAPER.decode(idx) == n


def test_decode_is_many_to_one() -> None:
    idx = [1] * 42
    idx[1] = 0
    other = list(idx)
    other[2] = 0 if idx[2] else 1  # kernel of a vanished block
    assert PAPER.decode(idx) == PAPER.decode(other)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_sample_encode_decode(seed: int) -> None:
    n = PAPER.sample(seed)
    idx = PAPER.encode(n)
    assert PAPER.decode(idx) == n


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_mutate_one_decision_and_different(seed: int) -> None:
    rng = np.random.default_rng(seed)
    idx = PAPER.sample_indices(rng)
    new = PAPER.mutate_indices(idx, rng)
    assert sum(a != b for a, b in zip(idx, new)) == 1
    a, b = PAPER.decode(idx), PAPER.decode(new)
    assert lower(a).signature() != lower(b).signature()
    m = PAPER.mutate(a, rng)
    assert lower(m).signature() != lower(a).signature()
    assert sum(x != y for x, y in zip(PAPER.encode(m), PAPER.encode(a))) >= 1


def test_sample_is_seeded() -> None:
    assert PAPER.sample(7) == PAPER.sample(7)
    assert PAPER.sample(np.random.default_rng(3)) == PAPER.sample(np.random.default_rng(3))


def test_sample_round_trips_through_text() -> None:
    for seed in range(20):
        n = PAPER.sample(seed)
        (again,) = parse(mnasdsl.format(n))
        assert again == n


SMALL = """space s:
  input 32x32x3
  classes 10
  stem cv_k3_s22_o16
  blocks
    {cv,ds,mb_e3}_r1_k{3,5}_s11_o{16,24}
    r2{-1,+0}_k3_s22_e6_o32x{0.5,1}_se{0,0.25}_{id,noskip}
  head cv_k1_o64 fixed
"""


def test_small_space() -> None:
    sp = space_from_text(SMALL)
    assert sp.size() == 3 * 2 * 2 * 2 * 2 * 2 * 2
    assert [d.location for d in sp.decisions()] == [
        "blocks[0].op+expansion", "blocks[0].kernel", "blocks[0].output",
        "blocks[1].repeats_delta", "blocks[1].output_factor", "blocks[1].se", "blocks[1].skip"]
    seen = {mnasdsl.format(sp.sample(s)) for s in range(200)}
    assert len(seen) > 20


def test_space_format_round_trip() -> None:
    sp = space_from_text(SMALL)
    text = mnasdsl.format(sp)
    assert space_from_text(text).spec == sp.spec
    assert mnasdsl.format(space_from_text(text)) == text
    paper_text = mnasdsl.format(PAPER)
    assert space_from_text(paper_text).spec == PAPER.spec


def test_encode_rejects_foreign_network() -> None:
    with pytest.raises(MnasError, match="not in space"):
        PAPER.encode(mnasdsl.load(SPECS / "mnasnet-a1.mnas"))


def test_decode_rejects_bad_vectors() -> None:
    with pytest.raises(MnasError, match="42 decisions"):
        PAPER.decode([0, 1])
    with pytest.raises(MnasError, match="out of range"):
        PAPER.decode([9] * 42)


SPACE_ERRORS = [
    (SMALL.replace("{cv,ds,mb_e3}", "{cv,ds,mb_e3,cv}"), "choice lists `cv` twice"),
    (SMALL.replace("_s11_o{16,24}", "_s11_o{16,24}_i16"), "`i` is not written in a space"),
    (SMALL.replace("{cv,ds,mb_e3}_r1", "{cv,ds,mb_e3}_e6_r1"), "duplicate field `e`"),
    (SMALL.replace("r2{-1,+0}", "r2{-3,+0}"), "repeats 2-3 = -1 is outside"),
    (SMALL.replace("k{3,5}", "k{3,4}"), "kernel must be odd"),
    (SMALL.replace("k{3,5}", "k{3,{5,7}}"), "malformed"),
    (SMALL.replace("{cv,ds,mb_e3}_r1", "{cv,ds,mb_e3}_r1{-1,+0}").replace("r2{-1,+0}", "r1{-1,+0}"),
     "every block of this space can reach 0 repeats"),
]


@pytest.mark.parametrize("text,msg", SPACE_ERRORS)
def test_space_errors(text: str, msg: str) -> None:
    with pytest.raises(MnasError) as ei:
        space_from_text(text)
    assert msg in str(ei.value), str(ei.value)


def test_invalid_combination_reported() -> None:
    text = SMALL.replace("r2{-1,+0}_k3_s22_e6", "{cv,mb}_r2{-1,+0}_k3_s22_e6")
    with pytest.raises(MnasError, match="invalid combination of choices .*has no meaning for a `cv` block"):
        space_from_text(text)


def test_space_is_not_a_network(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "s.mnas"
    p.write_text(SMALL)
    with pytest.raises(MnasError, match="file has no network"):
        mnasdsl.load(p)
    assert isinstance(mnasdsl.load_space(p), Space)

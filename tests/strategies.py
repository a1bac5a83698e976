"""Hypothesis strategies for random concrete blocks and networks."""

from __future__ import annotations

from hypothesis import strategies as st

from mnasdsl.ir import Block, Network
from mnasdsl.ops import OP_NAMES, OPS

acts = st.sampled_from([None, "relu", "relu6", "swish", "hswish"])


@st.composite
def blocks(draw: st.DrawFn) -> Block:
    op = draw(st.sampled_from(OP_NAMES))
    e = draw(st.sampled_from([2.0, 3.0, 4.0, 6.0, 2.5, 1.5])) if OPS[op].expands else 1.0
    force_in = draw(st.sampled_from([None, 8, 24])) if OPS[op].takes("force_in") else None
    factor = draw(st.sampled_from([1.0, 1.0, 0.75, 1.25, 0.5]))
    return Block(
        op=op,
        repeats=draw(st.integers(1, 4)),
        kernel=draw(st.sampled_from([1, 3, 5, 7])),
        stride=draw(st.sampled_from([(1, 1), (2, 2), (1, 2), (2, 1)])),
        expansion=e,
        output=draw(st.integers(1, 96)),
        output_factor=factor,
        force_in=force_in,
        se=(se := draw(st.sampled_from([0.0, 0.25, 0.5, 0.125]))),
        se_kind=draw(st.sampled_from(["tf", "hsig", "act"])) if se else "tf",
        skip=draw(st.sampled_from(["default", "noskip", "pool"])),
        act=draw(acts),
    )


@st.composite
def networks(draw: st.DrawFn) -> Network:
    stem = Block(op="cv", kernel=draw(st.sampled_from([1, 3, 5])), stride=draw(st.sampled_from([(1, 1), (2, 2)])),
                 output=draw(st.integers(1, 64)), act=draw(acts))
    head = Block(op="cv", kernel=1, output=draw(st.integers(1, 256)), act=draw(acts))
    hw = draw(st.integers(1, 64))
    return Network(
        name=draw(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,12}", fullmatch=True)),
        input=(hw, draw(st.integers(1, 64)), draw(st.integers(1, 4))),
        classes=draw(st.integers(1, 2000)),
        width=draw(st.sampled_from([1.0, 0.5, 0.75, 1.4, 0.35, 2.0])),
        depth=draw(st.sampled_from([1.0, 1.2, 0.5, 2.0])),
        divisor=draw(st.sampled_from([8, 4, 16])),
        min_depth=draw(st.sampled_from([None, 8, 16])),
        dropout=draw(st.sampled_from([0.0, 0.2, 0.5])),
        bn_momentum=draw(st.sampled_from([0.99, 0.9, 0.997])),
        bn_eps=draw(st.sampled_from([1e-3, 1e-5])),
        padding=draw(st.sampled_from(["same", "symmetric"])),
        activation=draw(st.sampled_from(["relu", "relu6", "swish", "hswish"])),
        stem=stem,
        blocks=tuple(draw(st.lists(blocks(), min_size=1, max_size=6))),
        head=head,
        head_mode=draw(st.sampled_from(["fixed", "scaled"])),
        expansion_divisor=draw(st.sampled_from([1, 8])),
        head_pooled=draw(st.booleans()),
    )

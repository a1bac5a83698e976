"""The op registry: every registered op is known to every backend table, and each op's rules
(fields, lowering widths) come from its one definition."""

from __future__ import annotations

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

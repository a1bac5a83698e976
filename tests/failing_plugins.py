"""Evaluator plug-ins that fail, for the tests of how a search shows its failures (MODULE:FUNCTION)."""

from __future__ import annotations

from mnasdsl import cost
from mnasdsl.ir import Network


def boom(network: Network) -> float:
    """Fails on every network with the same long, multi-line message (a traceback-like wall of text)."""
    raise RuntimeError("simulated evaluator failure\n" + "\n".join(f"  detail line {i}" for i in range(1, 9)))


def distinct(network: Network) -> float:
    """Fails on every network with a message of its own, so no two errors are alike."""
    raise ValueError(f"no kernel for a network of {cost(network).params} params")

"""Evaluator plug-ins used by the search tests (loaded as MODULE:FUNCTION)."""

from __future__ import annotations

import os
import time

from mnasdsl import cost
from mnasdsl.ir import Network
from mnasdsl.search.evaluators import analytic_accuracy


def slow(network: Network) -> float:
    """The analytic proxy, slowly enough that a test can kill the search mid-run."""
    time.sleep(float(os.environ.get("MNASDSL_TEST_SLEEP", "0.02")))
    return analytic_accuracy(cost(network).macs, sum(b.repeats for b in network.blocks))


def flaky(network: Network) -> dict[str, float]:
    """Fails on every network whose first block is a regular conv."""
    if network.blocks[0].op == "cv":
        raise RuntimeError("cv blocks are not supported by this evaluator")
    return {"acc": 0.5}


def macs(network: Network) -> float:
    """The network's multiply-adds as its score: its rank agreement must equal the MACs baseline's."""
    return float(cost(network).macs)


def broken(network: Network) -> float:
    """Fails on every network."""
    raise RuntimeError("this evaluator is broken")

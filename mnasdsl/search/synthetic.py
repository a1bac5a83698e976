"""A synthetic search objective with a known optimum, for judging controllers.

Each (decision, choice) gets a fixed random score; a network's accuracy term is an affine map of
the sum of its decisions' scores into [0.5, 0.9], so the best vector is known exactly (the
per-decision argmax). The reward then applies the usual latency factor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def make_table(num_choices: Sequence[int], seed: int) -> list[list[float]]:
    rng = np.random.default_rng([seed, 7919])
    return [[float(x) for x in rng.normal(size=n)] for n in num_choices]


def table_bounds(table: list[list[float]]) -> tuple[float, float]:
    return sum(min(r) for r in table), sum(max(r) for r in table)


def score(decisions: Sequence[int], table: list[list[float]]) -> float:
    lo, hi = table_bounds(table)
    s = sum(row[i] for row, i in zip(table, decisions))
    return 0.5 + 0.4 * (s - lo) / (hi - lo)


def optimum(table: list[list[float]]) -> list[int]:
    return [int(np.argmax(r)) for r in table]

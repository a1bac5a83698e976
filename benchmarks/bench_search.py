"""Search throughput: evolution + the latency-only evaluator + the pixel1 latency model, one core.

Prints trials/s of the whole loop (controller, decode, lowering, latency estimate, SQLite WAL
commits) beside the bare controller + estimator loop without storage, from the same run.

    python benchmarks/bench_search.py [--trials 5000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import mnasdsl
from mnasdsl.cost import cost_lowered
from mnasdsl.latency import Estimator, load_device
from mnasdsl.lowering import lower
from mnasdsl.search.controllers import make_controller
from mnasdsl.search.evaluators import analytic_accuracy
from mnasdsl.search.loop import SearchConfig, reward, run_search

SPACE = Path(__file__).resolve().parent.parent / "specs" / "spaces" / "mnasnet.mnas"


def bare(space: mnasdsl.Space, trials: int) -> float:
    """The same work without persistence: what the storage layer costs on top."""
    est = Estimator(load_device("pixel1"))
    ctl = make_controller("evolution", space, 0)
    t = time.perf_counter()
    for _ in range(trials):
        (v,) = ctl.propose(1)
        low = lower(space.decode(v))
        acc = analytic_accuracy(cost_lowered(low).macs, len(low.blocks))
        ctl.observe([v], [reward(acc, est.estimate_ms(low), 75.0, -0.07, -0.07)])
    return trials / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=5000)
    args = ap.parse_args()
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    except (AttributeError, OSError):
        pass
    space = mnasdsl.load_space(SPACE)
    with tempfile.TemporaryDirectory() as d:
        cfg = SearchConfig(trials=args.trials, target_ms=75.0, algo="evolution", seed=0)
        s = run_search(space, Path(d) / "bench.sqlite", cfg)
    b = bare(space, args.trials)
    print(f"{'loop':<58}{'trials/s':>12}")
    print(f"{'mnasdsl search (evolution, latency-only, pixel1, SQLite WAL)':<58}{s.trials_per_s:>12,.0f}"
          "   (target >= 500/s)")
    print(f"{'same controller + estimator, no storage':<58}{b:>12,.0f}")
    print(f"{'ratio (storage overhead)':<58}{s.trials_per_s / b:>12.2f}x")
    print(f"best reward {s.best['reward']:.4f} over {s.trials} trials" if s.best else "no trial done")


if __name__ == "__main__":
    main()

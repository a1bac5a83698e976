"""Controller quality on a synthetic objective with a known optimum (the paper's space).

Accuracy term: an additive per-decision score mapped into [0.5, 0.9] (optimum known exactly:
the per-decision argmax); latency: the pixel1 model of the decoded network; reward: the soft
objective. 1,000 trials x 5 seeds per controller; prints mean best reward +- standard error
and whether evolution and PPO beat random by more than two standard errors.

    python benchmarks/bench_controllers.py [--trials 1000] [--seeds 5]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np

import mnasdsl
from mnasdsl.search.evaluators import EvalConfig
from mnasdsl.search.loop import SearchConfig, run_search
from mnasdsl.search.synthetic import make_table, optimum, score

SPACE = Path(__file__).resolve().parent.parent / "specs" / "spaces" / "mnasnet.mnas"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--target-ms", type=float, default=75.0)
    args = ap.parse_args()
    space = mnasdsl.load_space(SPACE)
    results: dict[str, list[float]] = {}
    times: dict[str, float] = {}
    for algo in ("random", "evolution", "ppo"):
        results[algo] = []
        t = time.perf_counter()
        for seed in range(args.seeds):
            table = make_table(space.num_choices, seed)
            ev = EvalConfig(kind="synthetic", extra={"table": table})
            cfg = SearchConfig(trials=args.trials, target_ms=args.target_ms, algo=algo, seed=seed, evaluator=ev)
            with tempfile.TemporaryDirectory() as d:
                s = run_search(space, Path(d) / "c.sqlite", cfg)
            assert s.best is not None
            results[algo].append(float(s.best["reward"]))
        times[algo] = time.perf_counter() - t
    opt = np.mean([score(optimum(make_table(space.num_choices, s)), make_table(space.num_choices, s))
                   for s in range(args.seeds)])
    print(f"synthetic objective, {args.trials} trials x {args.seeds} seeds; accuracy term of the per-decision "
          f"optimum = {opt:.3f} (before the latency factor)")
    print(f"{'controller':<12}{'mean best reward':>18}{'std err':>10}{'seconds':>10}   vs random")
    r_mean = np.mean(results["random"])
    r_se = np.std(results["random"], ddof=1) / math.sqrt(args.seeds) if args.seeds > 1 else 0.0
    for algo, vals in results.items():
        m = float(np.mean(vals))
        se = float(np.std(vals, ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else 0.0
        verdict = ""
        if algo != "random":
            gap = m - r_mean
            verdict = f"{gap:+.4f} ({'beats' if gap > 2 * math.hypot(se, r_se) else 'does NOT beat'} random by > 2 SE)"
        print(f"{algo:<12}{m:>18.4f}{se:>10.4f}{times[algo]:>10.1f}   {verdict}")


if __name__ == "__main__":
    main()

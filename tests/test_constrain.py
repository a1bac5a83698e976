"""`search --constrain`: proposals over the latency target are rejected before evaluation, the
resampling is bounded, and the counts survive a resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mnasdsl.latency.estimator import Estimator, load_device
from mnasdsl.parser import parse_units
from mnasdsl.search.evaluators import EvalConfig
from mnasdsl.search.loop import CONSTRAIN_TRIES, SearchConfig, run_search
from mnasdsl.search.storage import Store
from mnasdsl.space import Space

from .conftest import TINY_SPACE, run_cli


def _space() -> Space:
    (spec,) = parse_units(TINY_SPACE)
    return Space(spec)  # type: ignore[arg-type]


def _latencies(db: Path) -> list[float]:
    s = Store(db, create=False, read_only=True)
    try:
        return [t.latency_ms for t in s.trials("done")]  # type: ignore[misc]
    finally:
        s.close()


def _target(quantile: float) -> float:
    space = _space()
    est = Estimator(load_device("pixel1"))
    rng = np.random.default_rng(0)
    return float(np.quantile([est.estimate_ms(space.sample(rng)) for _ in range(400)], quantile))


@pytest.mark.parametrize("algo", ["random", "evolution", "ppo"])
def test_constrained_trials_are_within_the_target(tmp_path: Path, algo: str) -> None:
    target = _target(0.3)
    cfg = dict(trials=40, target_ms=target, algo=algo, population=8, tournament=3, seed=1,
               evaluator=EvalConfig(kind="latency-only"))
    free = run_search(_space(), tmp_path / "free.db", SearchConfig(**cfg))  # type: ignore[arg-type]
    assert free.rejected == 0 and max(_latencies(tmp_path / "free.db")) > target
    kept = run_search(_space(), tmp_path / "c.db", SearchConfig(**cfg, constrain=True))  # type: ignore[arg-type]
    assert kept.rejected > 0 and kept.over_target == 0
    assert max(_latencies(tmp_path / "c.db")) <= target


def test_resampling_is_bounded(tmp_path: Path) -> None:
    """A target no network meets: each trial gives up after CONSTRAIN_TRIES resamples and is still run."""
    cfg = SearchConfig(trials=3, target_ms=1e-6, algo="random", seed=0, evaluator=EvalConfig(kind="latency-only"),
                       constrain=True)
    s = run_search(_space(), tmp_path / "c.db", cfg)
    assert s.done == 3 and s.over_target == 3 and s.rejected == 3 * CONSTRAIN_TRIES


def test_counts_survive_resume_and_the_flag_is_part_of_the_search(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "c.db"
    space_file = tmp_path / "s.mnas"
    space_file.write_text(TINY_SPACE)
    base = ["search", str(space_file), "--db", str(db), "--target-ms", f"{_target(0.3):.6f}", "--algo", "random",
            "--json"]
    rc, out, err = run_cli(capsys, *base, "--trials", "10", "--constrain")
    assert rc == 0, err
    first = json.loads(out)["rejected_over_target"]
    rc, out, err = run_cli(capsys, *base, "--trials", "20", "--constrain", "--resume")
    assert rc == 0, err
    assert json.loads(out)["rejected_over_target"] >= first > 0
    rc, _, err = run_cli(capsys, *base, "--trials", "30", "--resume")  # without the flag: another search
    assert rc == 1 and "constrain" in err
    rc, _, err = run_cli(capsys, *base[:-1], "--trials", "5", "--constrain", "--measure")
    assert rc == 2 and "--constrain" in err

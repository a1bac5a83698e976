"""Fault injection: a search killed (SIGKILL) at each point of its loop, then resumed, loses and
repeats no finished trial and ends with exactly the database an uninterrupted run writes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mnasdsl.search.loop import KILL_ENV, KILL_POINTS

from .conftest import ROOT, SPECS

SPACE = str(SPECS / "spaces" / "mnasnet.mnas")
TRIALS = 6
# Everything but timestamps, timings and the worker's pid.
ROWS = ("SELECT round, slot, decisions, spec, arch_key, status, acc, latency_ms, params, macs, reward, cached_from, "
        "error FROM trials ORDER BY id")


def _search(db: Path, calls: Path, round_size: int, *extra: str, kill: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MNASDSL_TEST_CALLS": str(calls)}
    env.pop(KILL_ENV, None)
    if kill:
        env[KILL_ENV] = kill
    cmd = [sys.executable, "-m", "mnasdsl.cli.main", "search", SPACE, "--db", str(db), "--trials", str(TRIALS),
           "--target-ms", "60", "--algo", "evolution", "--population", "3", "--tournament", "2",
           "--round", str(round_size), "--evaluator", "tests.counting_evaluator:counted", "--json", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _calls(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _snapshot(db: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    con = sqlite3.connect(db)
    try:
        return (con.execute(ROWS).fetchall(),
                con.execute("SELECT round, phase, state FROM controller ORDER BY round, phase").fetchall())
    finally:
        con.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[object, int]]:
    """Uninterrupted runs (round size 1, the default of evolution with one worker, and 3): DB and calls."""
    out = {}
    for k in (1, 3):
        d = tmp_path_factory.mktemp(f"ref{k}")
        r = _search(d / "ref.sqlite", d / "calls", k)
        assert r.returncode == 0, r.stderr
        out[k] = (_snapshot(d / "ref.sqlite"), _calls(d / "calls"))
    return out


# POINT:N (the N-th time the loop gets there) and the round size; with population 3 the 4th
# proposal is the first mutation, so the kills land before, at and after the controller needs results.
CASES = [("after-evaluate:3", 1), ("after-commit:3", 1), ("in-observe:3", 1), ("in-propose:4", 1),
         ("between-rounds:3", 1), ("after-commit:5", 3), ("in-observe:1", 3), ("in-propose:2", 3)]


@pytest.mark.parametrize("kill, round_size", CASES)
def test_kill_at_each_point_then_resume(kill: str, round_size: int, reference: dict[int, tuple[object, int]],
                                        tmp_path: Path) -> None:
    ref_db, ref_calls = reference[round_size]
    assert ref_calls == TRIALS  # no duplicate networks: every trial is one evaluation
    db, calls = tmp_path / "s.sqlite", tmp_path / "calls"
    r = _search(db, calls, round_size, kill=kill)
    assert r.returncode == -signal.SIGKILL, f"never reached {kill}: {r.stderr}"
    killed_calls = _calls(calls)
    assert 0 < killed_calls < TRIALS
    r = _search(db, calls, round_size, "--resume")
    assert r.returncode == 0, r.stderr
    # Only an evaluation that returned but was not yet committed is run again.
    assert _calls(calls) == TRIALS + (kill.startswith("after-evaluate"))
    assert _snapshot(db) == ref_db


def test_every_point_is_covered() -> None:
    assert {k.split(":")[0] for k, _ in CASES} == set(KILL_POINTS)

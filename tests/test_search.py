"""The search loop: rewards, controllers, persistence, resume after kill -9, executors, reports."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mnasdsl
from mnasdsl import MnasError
from mnasdsl.search.controllers import make_controller
from mnasdsl.search.evaluators import EvalConfig
from mnasdsl.search.loop import SearchConfig, reward, run_search
from mnasdsl.search.synthetic import make_table, optimum, score
from mnasdsl.space import space_from_text

from .conftest import ROOT, SPECS
from .conftest import run_cli as run

SPACE_PATH = str(SPECS / "spaces" / "mnasnet.mnas")
PAPER = mnasdsl.load_space(SPACE_PATH)
TINY = """space tiny:
  input 32x32x3
  classes 10
  stem cv_k3_s22_o16
  blocks
    r1_k{3,5}_s11_e6_o16
    r1_k3_s22_e{3,6}_o24
  head cv_k1_o64 fixed
"""




def test_reward_is_eq2() -> None:
    assert reward(0.75, 80, 80, -0.07, -0.07) == pytest.approx(0.75)
    assert reward(0.75, 160, 80, -0.07, -0.07) == pytest.approx(0.75 * 2 ** -0.07)
    assert reward(0.75, 40, 80, -0.07, -0.07) == pytest.approx(0.75 * 0.5 ** -0.07)
    assert reward(0.75, 40, 80, 0.0, -1.0) == pytest.approx(0.75)  # hard: no bonus below T
    assert reward(0.75, 160, 80, 0.0, -1.0) == pytest.approx(0.375)


@pytest.mark.parametrize("algo", ["random", "evolution"])
def test_controller_state_round_trip(algo: str) -> None:
    c = make_controller(algo, PAPER, seed=1, population=5, tournament=2)
    for _ in range(8):
        v = c.propose(2)
        c.observe(v, [float(np.mean(x)) for x in v])
    c2 = make_controller(algo, PAPER, seed=99, population=5, tournament=2)
    c2.load_state(c.state())
    assert c2.propose(3) == c.propose(3)


def test_evolution_is_aging() -> None:
    c = make_controller("evolution", PAPER, seed=0, population=4, tournament=2)
    vs = c.propose(6)
    c.observe(vs, [1.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert [v for v, _ in c.population] == vs[2:]  # the oldest died, even the best one
    child = c.propose(1)[0]
    assert any(sum(a != b for a, b in zip(child, v)) == 1 for v, _ in c.population)


def cfg(**kw) -> SearchConfig:  # type: ignore[no-untyped-def]
    base = dict(trials=60, target_ms=60.0, algo="evolution", population=10, tournament=3, seed=0)
    base.update(kw)
    return SearchConfig(**base)  # type: ignore[arg-type]


def test_search_persists_every_field(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    s = run_search(PAPER, db, cfg())
    assert s.trials == 60 and s.done == 60
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = con.execute("SELECT spec, decisions, acc, latency_ms, params, macs, reward, status, worker, eval_s "
                       "FROM trials").fetchall()
    assert len(rows) == 60
    spec, dec, acc, lat, params, macs, rew, status, worker, eval_s = rows[0]
    net = mnasdsl.parse(spec)[0]
    assert PAPER.decode(json.loads(dec)) == net
    assert mnasdsl.cost(net).params == params and mnasdsl.cost(net).macs == macs
    assert rew == pytest.approx(reward(acc, lat, 60.0, -0.07, -0.07))
    assert status == "done" and worker and eval_s is not None


def test_identical_specs_evaluated_once(tmp_path: Path) -> None:
    sp = space_from_text(TINY)
    s = run_search(sp, tmp_path / "t.sqlite", cfg(trials=30, algo="random"))
    con = sqlite3.connect(tmp_path / "t.sqlite")
    fresh = con.execute("SELECT COUNT(*) FROM trials WHERE cached_from IS NULL").fetchone()[0]
    assert s.trials == 30 and fresh <= sp.size() == 4


def test_failed_trials_recorded_and_search_goes_on(tmp_path: Path) -> None:
    c = cfg(trials=40, algo="random", evaluator=EvalConfig(kind="tests.search_plugins:flaky"))
    s = run_search(PAPER, tmp_path / "f.sqlite", c)
    assert s.trials == 40 and s.failed > 0 and s.done > 0
    con = sqlite3.connect(tmp_path / "f.sqlite")
    err = con.execute("SELECT error FROM trials WHERE status='failed' LIMIT 1").fetchone()[0]
    assert "cv blocks are not supported" in err


def test_existing_db_needs_resume(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    run_search(PAPER, db, cfg(trials=5))
    with pytest.raises(MnasError, match="--resume"):
        run_search(PAPER, db, cfg(trials=5))
    with pytest.raises(MnasError, match="different settings .*algo"):
        run_search(PAPER, db, cfg(trials=10, algo="random"), resume=True)
    s = run_search(PAPER, db, cfg(trials=12), resume=True)
    assert s.trials == 12
    with pytest.raises(MnasError, match="nothing to resume"):
        run_search(PAPER, tmp_path / "none.sqlite", cfg(), resume=True)


def test_failed_start_does_not_lock_the_db(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A search that fails on its first trial leaves it pending; with nothing finished, the database
    is reused by any later run (with or without --resume, whatever the settings), starting afresh."""
    lut = tmp_path / "empty-lut.json"  # no entries and no fallback model: the first trial cannot be priced
    lut.write_text('{"format": "mnasdsl-lut", "version": 1, "device": "x", "runtime": "y", "entries": {}}')
    base = ["search", SPACE_PATH, "--trials", "4", "--target-ms", "60", "--json"]
    fresh = tmp_path / "fresh.sqlite"
    assert run(capsys, *base, "--db", str(fresh))[0] == 0
    q = "SELECT round, slot, decisions, status, reward FROM trials ORDER BY id"
    for extra in ([], ["--resume"], ["--resume", "--algo", "random"]):
        db = tmp_path / f"failed{len(extra)}.sqlite"
        rc, _, err = run(capsys, *base, "--db", str(db), "--lut", str(lut))
        assert rc == 1 and "no entry" in err
        assert sqlite3.connect(db).execute("SELECT status FROM trials").fetchall() == [("pending",)]
        rc, out, err = run(capsys, *base, "--db", str(db), *extra)
        assert rc == 0, err
        assert json.loads(out)["done"] == 4
        if "random" not in extra:
            assert sqlite3.connect(db).execute(q).fetchall() == sqlite3.connect(fresh).execute(q).fetchall()
    # Finished trials are kept: refused, with the way out in the message.
    rc, _, err = run(capsys, *base, "--db", str(fresh))
    assert rc == 1 and "4 finished trials" in err and "pass --resume" in err and "another --db" in err
    rc, _, err = run(capsys, *base, "--db", str(fresh), "--resume", "--algo", "random", "--seed", "3")
    assert rc == 1 and "algo: 'evolution' there, 'random' now" in err and "seed: 0 there, 3 now" in err
    assert "pass the settings it was started with" in err and "another --db" in err


def test_resume_equals_uninterrupted_in_process(tmp_path: Path) -> None:
    full = tmp_path / "full.sqlite"
    run_search(PAPER, full, cfg(trials=50))
    part = tmp_path / "part.sqlite"
    run_search(PAPER, part, cfg(trials=20))
    run_search(PAPER, part, cfg(trials=50), resume=True)
    q = "SELECT round, slot, decisions, reward FROM trials ORDER BY id"
    assert sqlite3.connect(full).execute(q).fetchall() == sqlite3.connect(part).execute(q).fetchall()


def _search_cmd(db: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mnasdsl.cli.main", "search", SPACE_PATH, "--db", str(db), "--trials",
            str(trials), "--target-ms", "60", "--algo", "evolution", "--population", "8", "--tournament", "3",
            "--evaluator", "tests.search_plugins:slow", "--round", "3", "--json", *extra]


def test_kill_9_then_resume(tmp_path: Path) -> None:
    env = {**os.environ, "MNASDSL_TEST_SLEEP": "0.05", "PYTHONPATH": str(ROOT)}
    ref = tmp_path / "ref.sqlite"
    subprocess.run(_search_cmd(ref, 40), check=True, capture_output=True, cwd=ROOT,
                   env={**env, "MNASDSL_TEST_SLEEP": "0"}, timeout=300)
    db = tmp_path / "killed.sqlite"
    proc = subprocess.Popen(_search_cmd(db, 40), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline:
        time.sleep(0.2)
        if db.exists():
            try:
                done = sqlite3.connect(db).execute("SELECT COUNT(*) FROM trials WHERE status='done'").fetchone()[0]
            except sqlite3.Error:
                continue
            if done >= 10:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 10 <= done < 40
    con = sqlite3.connect(db)
    q_done = "SELECT id, decisions, reward, finished FROM trials WHERE status='done' ORDER BY id"
    before = con.execute(q_done).fetchall()
    con.close()
    out = subprocess.run(_search_cmd(db, 40, "--resume"), capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    con = sqlite3.connect(db)
    after = con.execute(q_done).fetchall()
    assert set(before) <= set(after)  # nothing completed was lost or redone
    assert con.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 40
    assert con.execute("SELECT COUNT(*) FROM trials WHERE status != 'done'").fetchone()[0] == 0
    q = "SELECT round, slot, decisions, reward FROM trials ORDER BY id"
    assert con.execute(q).fetchall() == sqlite3.connect(ref).execute(q).fetchall()


def test_ppo_resume_and_state(tmp_path: Path) -> None:
    c = cfg(trials=30, algo="ppo", round_size=10)
    full = tmp_path / "full.sqlite"
    run_search(PAPER, full, c)
    part = tmp_path / "part.sqlite"
    run_search(PAPER, part, cfg(trials=20, algo="ppo", round_size=10))
    run_search(PAPER, part, c, resume=True)
    q = "SELECT decisions FROM trials ORDER BY id"
    assert sqlite3.connect(full).execute(q).fetchall() == sqlite3.connect(part).execute(q).fetchall()


def test_controllers_beat_random_on_synthetic(tmp_path: Path) -> None:
    """The weak, fixed-seed version of benchmarks/bench_controllers.py."""
    table = make_table(PAPER.num_choices, 0)
    best = {}
    for algo in ("random", "evolution", "ppo"):
        ev = EvalConfig(kind="synthetic", extra={"table": table})
        c = cfg(trials=300, algo=algo, target_ms=1e6, alpha=0.0, beta=0.0, population=20, tournament=5,
                round_size=10 if algo == "ppo" else None, evaluator=ev)
        best[algo] = run_search(PAPER, tmp_path / f"{algo}.sqlite", c).best["reward"]  # type: ignore[index]
    assert best["evolution"] > best["random"] and best["ppo"] > best["random"], best
    assert score(optimum(table), table) == pytest.approx(0.9)


def test_local_workers_spawn(tmp_path: Path) -> None:
    s = run_search(PAPER, tmp_path / "w.sqlite", cfg(trials=8, workers=2, algo="random"))
    assert s.done == 8
    workers = {r[0] for r in sqlite3.connect(tmp_path / "w.sqlite").execute("SELECT worker FROM trials")}
    assert len(workers) >= 1 and all(":" in w for w in workers)


def test_ray_executor(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    s = run_search(PAPER, tmp_path / "ray.sqlite", cfg(trials=6, workers=2, executor="ray", algo="random"))
    assert s.done == 6


def test_cli_search_and_report(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = str(tmp_path / "c.sqlite")
    rc, out, err = run(capsys, "search", SPACE_PATH, "--db", db, "--trials", "50", "--target-ms", "70", "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["trials"] == 50 and "proxy" in data["accuracy_is"]
    png = tmp_path / "p.png"
    rc, out, err = run(capsys, "report", db, "--json", "--plot", str(png))
    rep = json.loads(out)
    assert rc == 0 and rep["trials"] == 50 and png.stat().st_size > 1000
    assert set(rep["pareto"][0]) >= {"spec", "acc", "latency_ms", "reward"}
    accs = [p["acc"] for p in rep["pareto"]]
    lats = [p["latency_ms"] for p in rep["pareto"]]
    assert accs == sorted(accs) and lats == sorted(lats)
    assert rep["best"]["reward"] == max(t["reward"] for t in rep["top"])
    rc, out, _ = run(capsys, "report", db)
    assert rc == 0 and "Pareto front" in out
    # Reading never writes: a database in rollback-journal mode (as a copy or a VACUUM INTO leaves
    # it) is not converted to WAL by a report, and stays byte-identical.
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()
    before = Path(db).read_bytes()
    rc, out, err = run(capsys, "report", db, "--json")
    assert rc == 0, err
    assert json.loads(out)["trials"] == 50 and Path(db).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("c.sqlite")) == ["c.sqlite"]


@pytest.mark.parametrize("argv,code", [
    (["--alpha", "0.1"], 2),
    (["--reward", "hard", "--alpha", "0", "--beta", "-1"], 2),
    (["--evaluator", "nosuchkind"], 1),
    (["--evaluator", "nosuch.module:f"], 1),
    (["--lut", "/nonexistent/lut.json"], 1),
    (["--device", "nokia3310"], 1),
    (["--target-ms", "-5"], 2),
    (["--seed", "-1"], 2),
    (["--seed", "-1", "--evaluator", "synthetic"], 2),
    (["--proxy-steps", "nosuch"], 2),
])
def test_cli_errors(capsys, tmp_path: Path, argv: list[str], code: int) -> None:  # type: ignore[no-untyped-def]
    args = ["search", SPACE_PATH, "--db", str(tmp_path / "e.sqlite"), "--trials", "3", "--target-ms", "70", *argv]
    rc, _, err = run(capsys, *args)
    assert rc == code and "error" in err


def test_report_errors(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run(capsys, "report", str(tmp_path / "missing.sqlite"))
    assert rc == 1 and "no such search database" in err
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    rc, _, err = run(capsys, "report", str(junk))
    assert rc == 1 and "not" in err


def test_zero_cost_and_measured_latency(tmp_path: Path) -> None:
    sp = space_from_text(TINY)
    ev = EvalConfig(kind="zero-cost", resolution=16, batch=8)
    s = run_search(sp, tmp_path / "z.sqlite", cfg(trials=2, algo="random", evaluator=ev))
    assert s.done == 2 and s.best is not None and 0.0 < s.best["acc"] < 1.0
    ev = EvalConfig(kind="latency-only", measure=True)
    s = run_search(sp, tmp_path / "m.sqlite", cfg(trials=2, algo="random", latency="measure", evaluator=ev))
    assert s.done == 2 and s.best is not None and s.best["latency_ms"] > 0.0

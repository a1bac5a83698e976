"""How a search shows failing trials (as they happen, in `report`, in its exit status), plug-ins found in
the working directory, the report plot's layout, and the help of the search options."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import mnasdsl
from mnasdsl.cli.main import build_parser
from mnasdsl.search.evaluators import EvalConfig, check_config, evaluate
from mnasdsl.search.loop import SearchConfig, run_search
from mnasdsl.search.report import plot, summarize

from .conftest import ROOT, SPECS
from .conftest import run_cli as run

SPACE = str(SPECS / "spaces" / "mnasnet.mnas")
PAPER = mnasdsl.load_space(SPACE)




def search(capsys: pytest.CaptureFixture[str], db: Path, evaluator: str, trials: int = 5, *extra: str
           ) -> tuple[int, str, str]:
    return run(capsys, "search", SPACE, "--db", str(db), "--trials", str(trials), "--target-ms", "60",
               "--evaluator", evaluator, *extra)


# --- failures while searching -------------------------------------------------------------------

def test_every_trial_failing_is_shown_and_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "f.sqlite"
    rc, out, err = search(capsys, db, "tests.failing_plugins:boom")
    assert rc == 1, err
    assert "0 done, 5 failed" in out
    # The error, as it happened: trial number, the head of the message (not all of it), the spec.
    assert err.count("failed: RuntimeError: simulated evaluator failure") == 1  # one distinct error, shown once
    assert "trial 1 failed: RuntimeError: simulated evaluator failure" in err
    assert "detail line 2 [... 6 more lines]" in err and "detail line 3" not in err
    spec_lines = [line for line in err.splitlines() if line.startswith("  spec: ")]
    assert len(spec_lines) == 1 and "_k" in spec_lines[0]
    assert "5 trials failed (the error shown above)" in err
    # The exit: says every trial failed and points at the first error.
    assert "error: every trial failed (5 of 5)" in err and "the first error, trial 1: RuntimeError" in err
    assert f"mnasdsl report {db}" in err
    assert len(err.splitlines()) <= 12, err
    # With the evaluator fixed, the same command starts afresh: failures alone are not a search to resume.
    rc, out, err = search(capsys, db, "tests.search_plugins:slow")
    assert rc == 0 and "5 trials (5 done, 0 failed)" in out, err


def test_every_trial_failing_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, out, err = search(capsys, tmp_path / "j.sqlite", "tests.failing_plugins:boom", 4, "--json")
    assert rc == 1
    data = json.loads(out)
    assert data["done"] == 0 and data["failed"] == 4
    assert data["first_error"]["id"] == 1 and "simulated evaluator failure" in data["first_error"]["error"]
    assert "trial 1 failed" in err
    diags = json.loads(err.splitlines()[-1])
    assert "every trial failed" in diags[0]["message"]


def test_only_the_first_three_distinct_errors_are_printed(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    rc, _, err = search(capsys, tmp_path / "d.sqlite", "tests.failing_plugins:distinct", 12, "--algo", "random")
    assert rc == 1
    assert err.count(" failed: ValueError: no kernel") == 3
    assert "12 trials failed (" in err and "distinct errors, the first 3 shown above)" in err


def test_some_failing_trials_exit_0(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, out, err = search(capsys, tmp_path / "s.sqlite", "tests.search_plugins:flaky", 30, "--algo", "random")
    assert rc == 0, err
    assert "failed: RuntimeError: cv blocks are not supported by this evaluator" in err
    assert "every trial failed" not in err and "best reward" in out


def test_api_reports_failures(tmp_path: Path) -> None:
    seen: list[tuple[int, str, str]] = []
    c = SearchConfig(trials=3, target_ms=60.0, algo="random", evaluator=EvalConfig(kind="tests.failing_plugins:boom"))
    s = run_search(PAPER, tmp_path / "a.sqlite", c, on_failure=lambda *a: seen.append(a))
    assert s.done == 0 and s.failed == 3 and [t for t, _, _ in seen] == [1, 2, 3]
    assert s.first_error is not None and s.first_error["id"] == 1 and s.first_error["spec"] == seen[0][1]
    assert "simulated evaluator failure" in seen[0][2]


def test_brief_error() -> None:
    from mnasdsl.search.report import brief_error

    assert brief_error("") == "evaluation failed"
    assert brief_error("x" * 500, width=100) == "x" * 97 + "..."
    assert brief_error("a\n\nb\nc\nd\ne", lines=2) == "a\nb [... 3 more lines]"


# --- report -----------------------------------------------------------------------------------------

def test_report_lists_failed_trials(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    search(capsys, db, "tests.failing_plugins:boom")
    rc, out, err = run(capsys, "report", str(db))
    assert rc == 0, err
    assert "failed trials" in out and out.count("RuntimeError: simulated evaluator failure") == 5
    assert "Pareto front" not in out and "no trial finished" in out  # no empty tables
    rc, out, _ = run(capsys, "report", str(db), "--top", "2")
    assert "failed trials (first 2 of 5; --json lists all)" in out
    rc, out, _ = run(capsys, "report", str(db), "--json", "--top", "2")
    rep = json.loads(out)
    assert [f["id"] for f in rep["failures"]] == [1, 2, 3, 4, 5]
    assert all("simulated evaluator failure" in f["error"] and "network" in f["spec"] for f in rep["failures"])
    png = tmp_path / "empty.png"
    assert run(capsys, "report", str(db), "--plot", str(png))[0] == 0 and png.stat().st_size > 1000


def test_report_failures_of_a_mixed_search(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "m.sqlite"
    search(capsys, db, "tests.search_plugins:flaky", 30, "--algo", "random")
    rc, out, _ = run(capsys, "report", str(db), "--json")
    rep = json.loads(out)
    assert rep["failed"] == len(rep["failures"]) > 0 and rep["pareto"]
    rc, out, _ = run(capsys, "report", str(db))
    assert "Pareto front" in out and "failed trials" in out and "cv blocks are not supported" in out


def test_plot_panels_share_the_latency_axis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same width, same x range, tick labels on both panels (the colorbar once narrowed the top one)."""
    from matplotlib.figure import Figure

    db = tmp_path / "p.sqlite"
    run_search(PAPER, db, SearchConfig(trials=40, target_ms=60.0, population=10, tournament=3))
    figs: list[Any] = []
    savefig = Figure.savefig

    def spy(self: Figure, *a: Any, **k: Any) -> None:
        figs.append(self)
        savefig(self, *a, **k)

    monkeypatch.setattr(Figure, "savefig", spy)
    png = tmp_path / "p.png"
    plot(summarize(db), png)
    assert png.stat().st_size > 1000
    (fig,) = figs
    top = next(a for a in fig.axes if a.get_ylabel().startswith("accuracy"))
    hist = next(a for a in fig.axes if a.get_ylabel() == "models")
    fig.canvas.draw()
    p, q = top.get_position(), hist.get_position()
    assert p.x0 == pytest.approx(q.x0, abs=1e-3) and p.x1 == pytest.approx(q.x1, abs=1e-3), (p, q)
    assert top.get_shared_x_axes().joined(top, hist) and top.get_xlim() == hist.get_xlim()
    for a in (top, hist):
        labels = [t.label1 for t in a.xaxis.get_major_ticks() if t.label1.get_visible() and t.label1.get_text()]
        assert labels, f"no x tick labels on {a.get_ylabel()!r}"


# --- plug-ins from the working directory ----------------------------------------------------------

PLUGIN = """
import os
from mnasdsl import cost

def acc(network):
    return {"acc": 0.5, "latency_ms": 10.0 + cost(network).macs / 1e8}
"""


def _launcher(tmp_path: Path) -> Path:
    """A script outside the working directory, like the `mnasdsl` console script: Python puts the
    script's own directory on sys.path, not the working directory (which `python -m` would)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "mnasdsl_script.py"
    script.write_text("from mnasdsl.cli.main import entry\n\nif __name__ == '__main__':\n    entry()\n")
    return script


@pytest.mark.parametrize("workers", ["1", "2"])
def test_plugin_module_in_the_working_directory(tmp_path: Path, workers: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "cwd_plugin_eval.py").write_text(PLUGIN)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MNASDSL_JAX_CACHE": "0"}
    env.pop("PYTHONSAFEPATH", None)
    cmd = [sys.executable, str(_launcher(tmp_path)), "search", SPACE, "--db", "s.sqlite", "--trials", "4",
           "--target-ms", "60", "--evaluator", "cwd_plugin_eval:acc", "--workers", workers, "--json"]
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["done"] == 4 and data["failed"] == 0


def test_plugin_resolved_from_the_recorded_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that starts elsewhere (a Ray task) still finds the plug-in: the driver's directory
    travels in the EvalConfig and goes first on the worker's path."""
    plug = tmp_path / "plug"
    plug.mkdir()
    (plug / "recorded_dir_eval.py").write_text(PLUGIN)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    monkeypatch.delitem(sys.modules, "recorded_dir_eval", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = EvalConfig(kind="recorded_dir_eval:acc")
    with pytest.raises(mnasdsl.MnasError, match="No module named 'recorded_dir_eval'"):
        check_config(cfg)
    cfg = EvalConfig(kind="recorded_dir_eval:acc", cwd=str(plug))
    out = evaluate(cfg, mnasdsl.formatter.format(PAPER.sample(0)))
    assert out["acc"] == 0.5 and sys.path[0] == str(plug)
    monkeypatch.delitem(sys.modules, "recorded_dir_eval")
    with pytest.raises(mnasdsl.MnasError, match=r"looked in .*missing, then on sys.path"):
        check_config(EvalConfig(kind="nosuch_plugin_module:f", cwd=str(tmp_path / "missing")))


def test_cwd_is_not_part_of_the_search_identity(tmp_path: Path) -> None:
    """Resuming from another directory is the same search."""
    a = SearchConfig(trials=1, target_ms=60.0, evaluator=EvalConfig(cwd="/a"))
    b = SearchConfig(trials=1, target_ms=60.0, evaluator=EvalConfig(cwd="/b"))
    assert a.identity() == b.identity()


# --- help ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command, options", [
    ("search", ["--trials", "--population", "--tournament", "--workers", "--seed"]),
    ("report", ["--top"]),
])
def test_options_have_help(command: str, options: list[str]) -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    actions = {o: a for a in sub.choices[command]._actions for o in a.option_strings}
    assert all(actions[o].help for o in options), [o for o in options if not actions[o].help]

"""`mnasdsl fidelity`: rank statistics against independent definitions, stratified sampling, the
reference database (reused, foreign files refused untouched), and the command end to end."""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mnasdsl.diagnostics import MnasError
from mnasdsl.parser import parse_units
from mnasdsl.search import fidelity as fd
from mnasdsl.space import Space

from .conftest import TINY_SPACE, run_cli

pytestmark = pytest.mark.usefixtures("no_user_compile_cache")


def _kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b by counting pairs (the textbook definition, O(n^2))."""
    conc = disc = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tx += 1
        elif dy == 0:
            ty += 1
        elif dx == dy:
            conc += 1
        else:
            disc += 1
    return (conc - disc) / np.sqrt((conc + disc + tx) * (conc + disc + ty))


def _spearman(x: list[float], y: list[float]) -> float:
    """Pearson correlation of average ranks."""
    def ranks(v: list[float]) -> np.ndarray:
        a = np.asarray(v, float)
        order = a.argsort(kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a), dtype=float)
        for val in np.unique(a):  # ties share their average rank
            r[a == val] = r[a == val].mean()
        return r

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=4, max_size=15))
def test_rank_statistics_match_their_definitions(pairs: list[tuple[int, int]]) -> None:
    x, y = [float(a) for a, _ in pairs], [float(b) for _, b in pairs]
    a = fd.agreement(x, y, resamples=50)
    if len(set(x)) < 2 or len(set(y)) < 2:
        assert np.isnan(a.tau) and np.isnan(a.rho)
        return
    assert a.tau == pytest.approx(_kendall_tau_b(x, y), abs=1e-9)
    assert a.rho == pytest.approx(_spearman(x, y), abs=1e-9)
    lo, hi = a.tau_ci
    assert -1.0 <= lo <= hi <= 1.0


def test_agreement_extremes_and_missing_scores() -> None:
    ref = [0.1, 0.4, 0.2, 0.9, 0.5]
    same = fd.agreement([2 * v for v in ref], ref)
    assert same.tau == pytest.approx(1.0) and same.rho == pytest.approx(1.0)
    assert same.tau_ci == pytest.approx((1.0, 1.0))
    assert fd.agreement([-v for v in ref], ref).tau == pytest.approx(-1.0)
    partial = fd.agreement([0.1, float("nan"), 0.2, 0.9, 0.5], ref)  # a failed evaluation is left out
    assert partial.tau == pytest.approx(_kendall_tau_b([0.1, 0.2, 0.9, 0.5], [0.1, 0.2, 0.9, 0.5]))
    assert np.isnan(fd.agreement([1.0, float("nan"), float("nan")], [1.0, 2.0, 3.0]).tau)


def _space() -> Space:
    (spec,) = parse_units(TINY_SPACE)
    return Space(spec)  # type: ignore[arg-type]


def test_stratified_sample_spans_the_latency_range() -> None:
    from mnasdsl.latency.estimator import Estimator, load_device

    est = Estimator(load_device("pixel1"))
    space = _space()
    picks = fd.stratified_sample(space, 6, seed=3, latency_ms=est.estimate_ms)
    assert len({c.spec for c in picks}) == 6
    lat = [c.latency_ms for c in picks]
    assert lat == sorted(lat)  # one per stratum, strata in latency order
    pool = fd.stratified_sample(space, 120, seed=3, latency_ms=est.estimate_ms, pool=120)
    all_lat = sorted(c.latency_ms for c in pool)
    assert lat[0] <= all_lat[len(all_lat) // 6] and lat[-1] >= all_lat[-len(all_lat) // 6 - 1]
    assert [c.spec for c in fd.stratified_sample(space, 6, seed=3, latency_ms=est.estimate_ms)] == \
        [c.spec for c in picks]
    with pytest.raises(MnasError, match="distinct networks"):
        fd.stratified_sample(space, 10_000, seed=0, latency_ms=est.estimate_ms, pool=10_000)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    d = tmp_path_factory.mktemp("fidelity")
    (d / "tiny.mnas").write_text(TINY_SPACE)
    out = _fidelity(d, "--evaluator", "latency-only", "--evaluator", "tests.search_plugins:macs",
                    "--plot", str(d / "f.png"))
    return d, out


def _fidelity(d: Path, *extra: str) -> dict[str, Any]:
    import contextlib
    import io

    from mnasdsl.cli.main import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["fidelity", str(d / "tiny.mnas"), "--sample", "4", "--reference-epochs", "1", "--batch", "64",
                   "--db", str(d / "refs.db"), "--json", *extra])
    assert rc == 0
    return json.loads(buf.getvalue())  # type: ignore[no-any-return]


def test_fidelity_end_to_end(first_run: tuple[Path, dict[str, Any]]) -> None:
    d, out = first_run
    assert out["networks"] == 4 and out["reference_trained"] == 4 and out["reference_reused"] == 0
    refs = [c["reference_acc"] for c in out["candidates"]]
    assert all(0.0 <= a <= 1.0 for a in refs)
    by_name = {e["evaluator"]: e for e in out["evaluators"]}
    base = {b["baseline"]: b for b in out["baselines"]}
    # an evaluator that scores by MACs agrees with the reference exactly as the MACs baseline does
    macs = by_name["tests.search_plugins:macs"]
    assert macs["tau"] == base["MACs"]["tau"] and macs["rho"] == base["MACs"]["rho"]
    assert macs["scores"] == [float(c["macs"]) for c in out["candidates"]]
    assert by_name["latency-only"]["repeat_tau"] == 1.0  # deterministic: the two seeds agree
    assert by_name["latency-only"]["tau"] == pytest.approx(
        _kendall_tau_b(by_name["latency-only"]["scores"], refs), abs=1e-6)
    assert (d / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_run_reuses_the_references(first_run: tuple[Path, dict[str, Any]]) -> None:
    d, first = first_run
    again = _fidelity(d, "--evaluator", "latency-only", "--no-repeat")
    assert again["reference_trained"] == 0 and again["reference_reused"] == 4
    assert [c["reference_acc"] for c in again["candidates"]] == [c["reference_acc"] for c in first["candidates"]]
    assert again["evaluators"][0]["repeat_tau"] is None


def test_foreign_database_is_refused_untouched(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tiny.mnas").write_text(TINY_SPACE)
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    con.execute("INSERT INTO meta VALUES ('owner', 'someone')")
    con.commit()
    con.close()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    for path in (db, tmp_path / "notes.txt"):
        if path.suffix == ".txt":
            path.write_text("my notes\n")
            before = hashlib.sha256(path.read_bytes()).hexdigest()
        rc, _, err = run_cli(capsys, "fidelity", str(tmp_path / "tiny.mnas"), "--evaluator", "latency-only",
                             "--sample", "3", "--reference-epochs", "1", "--db", str(path))
        assert rc == 1 and "left untouched" in err and "Traceback" not in err
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "other.db", "tiny.mnas"]


@pytest.mark.parametrize(("extra", "needle"), [
    (["--evaluator", "latency-only", "--sample", "2"], "at least 3"),
    (["--evaluator", "synthetic"], "synthetic"),
    (["--evaluator", "bogus"], "unknown --evaluator"),
    (["--evaluator", "latency-only", "--evaluator", "latency-only"], "twice"),
    (["--evaluator", "latency-only", "--plot", "x.txt"], "--plot"),
    ([], "--evaluator"),
])
def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str) -> None:
    (tmp_path / "tiny.mnas").write_text(TINY_SPACE)
    rc, _, err = run_cli(capsys, "fidelity", str(tmp_path / "tiny.mnas"), "--db", str(tmp_path / "r.db"), *extra)
    assert rc == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "r.db").exists()


def test_an_evaluator_failing_everywhere_is_an_error(first_run: tuple[Path, dict[str, Any]],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    d, _ = first_run
    rc, _, err = run_cli(capsys, "fidelity", str(d / "tiny.mnas"), "--sample", "4", "--reference-epochs", "1",
                         "--batch", "64", "--db", str(d / "refs.db"), "--evaluator", "tests.search_plugins:broken")
    assert rc == 1 and "failed on every network" in err and "this evaluator is broken" in err

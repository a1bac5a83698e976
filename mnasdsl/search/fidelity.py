"""How faithful is an evaluator? Rank agreement with stand-alone training on the same networks.

A search only needs its evaluator to *rank* networks as full training would. This module samples
networks of a space stratified by estimated latency (so the sample spans the space's cost range
rather than crowding its most common size), trains each stand-alone as the reference (kept in a
SQLite file, so a second run with other evaluators reuses them), and scores any evaluator of
``search`` by Kendall's tau and Spearman's rho against the reference, with bootstrap intervals,
seed-to-seed repeatability and its cost per evaluation; MACs, parameters and estimated latency
are scored the same way as baselines an evaluator has to beat.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cost import cost_lowered
from ..diagnostics import MnasError
from ..formatter import format as format_ir
from ..space import Space

APPLICATION_ID = 0x4D4E4146  # b"MNAF": a fidelity reference database
FORMAT = "mnasdsl-fidelity/1"
POOL_PER_SAMPLE = 20  # random networks drawn per requested one, to stratify by latency
BOOTSTRAP = 2000
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE refs (key TEXT PRIMARY KEY, spec TEXT NOT NULL, setup TEXT NOT NULL, acc REAL NOT NULL,
                   loss REAL, seconds REAL NOT NULL, created REAL NOT NULL);
"""


@dataclass(frozen=True)
class Candidate:
    """One sampled network: its decisions, canonical spec and the costs the baselines rank by."""

    decisions: tuple[int, ...]
    spec: str
    latency_ms: float
    macs: int
    params: int


@dataclass(frozen=True)
class Agreement:
    """Rank agreement of scores with the reference, each with a bootstrap 90% interval."""

    tau: float
    tau_ci: tuple[float, float]
    rho: float
    rho_ci: tuple[float, float]

    def to_json(self) -> dict[str, Any]:
        return {"tau": _num(self.tau), "tau_ci": [_num(v) for v in self.tau_ci], "rho": _num(self.rho),
                "rho_ci": [_num(v) for v in self.rho_ci]}


@dataclass
class EvaluatorResult:
    name: str
    scores: list[float]
    agreement: Agreement
    repeat_scores: list[float] | None = None
    repeat_tau: float | None = None
    seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def seconds_per_eval(self) -> float:
        return float(np.median(self.seconds)) if self.seconds else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"evaluator": self.name, **self.agreement.to_json(),
                "repeat_tau": None if self.repeat_tau is None else _num(self.repeat_tau),
                "seconds_per_eval": _num(self.seconds_per_eval), "scores": [_num(s) for s in self.scores],
                "repeat_scores": None if self.repeat_scores is None else [_num(s) for s in self.repeat_scores],
                "errors": self.errors}


def _num(x: float) -> float | None:
    return round(float(x), 6) if math.isfinite(x) else None


# -- sampling -----------------------------------------------------------------------------------------------

def stratified_sample(space: Space, n: int, seed: int, latency_ms: Callable[[Any], float],
                      pool: int | None = None) -> list[Candidate]:
    """``n`` distinct networks, one from each of ``n`` equal-count latency strata of a random pool.

    Distinct means distinct lowered networks (several decision vectors can give one network). A
    space with fewer distinct networks than ``n`` in the pool is an error saying how many it has."""
    from ..lowering import lower

    rng = np.random.default_rng([seed, 0xF1DE])
    want = pool if pool is not None else n * POOL_PER_SAMPLE
    seen: dict[str, Candidate] = {}
    tries = 0
    while len(seen) < want and tries < want * 5:
        tries += 1
        idx = space.sample_indices(rng)
        net = space.decode(idx)
        spec = str(format_ir(net))
        if spec in seen:
            continue
        low = lower(net)
        c = cost_lowered(low)
        seen[spec] = Candidate(tuple(idx), spec, float(latency_ms(low)), int(c.macs), int(c.params))
    if len(seen) < n:
        raise MnasError(f"space `{space.name}` gave only {len(seen)} distinct networks in {tries} draws; "
                        f"--sample {n} needs at least {n}")
    ranked = sorted(seen.values(), key=lambda c: (c.latency_ms, c.spec))
    edges = np.linspace(0, len(ranked), n + 1)
    out = []
    for i in range(n):
        lo, hi = int(edges[i]), max(int(edges[i + 1]), int(edges[i]) + 1)
        out.append(ranked[int(rng.integers(lo, hi))])
    return out


# -- statistics ---------------------------------------------------------------------------------------------

def _tau(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import kendalltau

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(kendalltau(x, y).statistic)  # tau-b: ties in either ranking are accounted for


def _rho(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def agreement(scores: Sequence[float], reference: Sequence[float], seed: int = 0,
              resamples: int = BOOTSTRAP) -> Agreement:
    """Kendall's tau-b and Spearman's rho of ``scores`` against ``reference``, with percentile
    bootstrap 90% intervals over the networks (resampled with replacement; resamples in which
    either side is constant have no rank correlation and are skipped). Pairs with a missing score
    (NaN: the evaluator failed on that network) are left out."""
    x, y = np.asarray(scores, float), np.asarray(reference, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        nan = float("nan")
        return Agreement(nan, (nan, nan), nan, (nan, nan))
    rng = np.random.default_rng([seed, 0xB007])
    taus, rhos = [], []
    for _ in range(resamples):
        i = rng.integers(0, len(x), len(x))
        t = _tau(x[i], y[i])
        if math.isfinite(t):
            taus.append(t)
            rhos.append(_rho(x[i], y[i]))

    def ci(v: list[float]) -> tuple[float, float]:
        if not v:
            return float("nan"), float("nan")
        lo, hi = np.percentile(v, [5, 95])
        return float(lo), float(hi)

    return Agreement(_tau(x, y), ci(taus), _rho(x, y), ci(rhos))


def tau(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(x) & np.isfinite(y)
    return _tau(x[keep], y[keep]) if keep.sum() >= 3 else float("nan")


# -- the reference database ---------------------------------------------------------------------------------

class ReferenceStore:
    """Stand-alone results keyed by (network, data, resolution, epochs, batch, seed, recipe): each
    insert is its own transaction, so an interrupted run keeps every network it finished."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise MnasError(f"{self.path}: is a directory; --db names the reference database file")
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        if not fresh:
            self._check_foreign()
        try:
            self.db = sqlite3.connect(str(self.path), timeout=30)
            if fresh:
                with self.db:
                    self.db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    self.db.executescript(_SCHEMA)
                    self.db.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
            self.db.execute("PRAGMA journal_mode = WAL")
        except sqlite3.Error as e:
            raise MnasError(f"{self.path}: cannot use as a reference database: {e}") from None

    def _check_foreign(self) -> None:
        """Refuse, read-only and before any write, a file this module did not create."""
        with self.path.open("rb") as f:
            head = f.read(16)
        if head != b"SQLite format 3\x00":
            raise MnasError(f"{self.path}: not a fidelity reference database (not SQLite); it was left untouched")
        try:
            ro = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                app = ro.execute("PRAGMA application_id").fetchone()[0]
                fmt = ro.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() \
                    if app == APPLICATION_ID else None
            finally:
                ro.close()
        except sqlite3.Error as e:
            raise MnasError(f"{self.path}: not a fidelity reference database ({e}); it was left untouched") from None
        if app != APPLICATION_ID or fmt is None or fmt[0] != FORMAT:
            raise MnasError(f"{self.path}: not a fidelity reference database (another program's or another "
                            "mnasdsl file); it was left untouched: give --db a new path")

    @staticmethod
    def key(spec: str, setup: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps([spec, setup], sort_keys=True).encode()).hexdigest()

    def get(self, spec: str, setup: dict[str, Any]) -> dict[str, Any] | None:
        row = self.db.execute("SELECT acc, loss, seconds FROM refs WHERE key = ?", (self.key(spec, setup),)).fetchone()
        return None if row is None else {"acc": row[0], "loss": row[1], "seconds": row[2], "cached": True}

    def put(self, spec: str, setup: dict[str, Any], acc: float, loss: float | None, seconds: float) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO refs VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (self.key(spec, setup), spec, json.dumps(setup, sort_keys=True), acc, loss, seconds,
                             time.time()))

    def close(self) -> None:
        self.db.close()


def reference_setup(data: str, resolution: int | None, epochs: int, batch: int, seed: int) -> dict[str, Any]:
    return {"data": data, "resolution": resolution, "epochs": epochs, "batch": batch, "seed": seed,
            "recipe": "adam"}


def train_reference(spec: str, setup: dict[str, Any]) -> dict[str, Any]:
    """Stand-alone training of one network as the reference: every epoch, the final validation."""
    from ..train import fit
    from .evaluators import EvalConfig, _network, _source, steps_form

    src = _source(setup["data"])
    net = _network(spec)
    net = net.scaled(classes=src.num_classes, resolution=setup["resolution"]) if setup["resolution"] else \
        net.scaled(classes=src.num_classes)
    cfg = EvalConfig(kind="proxy", data=setup["data"], epochs=setup["epochs"], batch=setup["batch"])
    t0 = time.perf_counter()
    res = fit(net, src, epochs=setup["epochs"], batch=setup["batch"], recipe=setup["recipe"], seed=setup["seed"],
              out=None, steps_form=steps_form(cfg, src), final_eval_only=True)
    return {"acc": float(res.val_acc), "loss": float(res.val_loss), "seconds": time.perf_counter() - t0,
            "cached": False}


def run_fidelity(candidates: Sequence[Candidate], references: Sequence[float],
                 evaluate: Callable[[str, Candidate, int], float], evaluators: Sequence[str], seed: int,
                 repeat: bool = True, progress: Callable[[str], None] = lambda _m: None) -> list[EvaluatorResult]:
    """Score each evaluator on every candidate (and again with another seed for repeatability)."""
    out = []
    for name in evaluators:
        runs: list[list[float]] = []
        seconds: list[float] = []
        errors: list[str] = []
        for s in ((seed, seed + 1) if repeat else (seed,)):
            scores = []
            for i, c in enumerate(candidates):
                progress(f"{name} (seed {s}): network {i + 1}/{len(candidates)}")
                t0 = time.perf_counter()
                try:
                    scores.append(float(evaluate(name, c, s)))
                except MnasError as e:
                    scores.append(float("nan"))
                    errors.append(f"network {i + 1}, seed {s}: {e.diagnostics[0].message}")
                seconds.append(time.perf_counter() - t0)
            runs.append(scores)
        res = EvaluatorResult(name, runs[0], agreement(runs[0], references, seed), seconds=seconds, errors=errors)
        if repeat:
            res.repeat_scores = runs[1]
            res.repeat_tau = tau(runs[0], runs[1])
        out.append(res)
    return out


def baselines(candidates: Sequence[Candidate], references: Sequence[float], seed: int) -> dict[str, Agreement]:
    """What costs alone predict: larger networks are often better, so an evaluator must beat these."""
    return {"MACs": agreement([c.macs for c in candidates], references, seed),
            "params": agreement([c.params for c in candidates], references, seed),
            "estimated latency": agreement([c.latency_ms for c in candidates], references, seed)}


def plot(path: str | Path, candidates: Sequence[Candidate], references: Sequence[float],
         results: Sequence[EvaluatorResult]) -> None:
    """Evaluator score against reference accuracy, one panel per evaluator, tau in each title."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fsutil import atomic_write_bytes

    n = max(1, len(results))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False)
    ref = np.asarray(references, float)
    for ax, r in zip(axes[0], results):
        y = np.asarray(r.scores, float)
        ax.scatter(ref, y, s=22, color="#1f77b4", label="seed 1")
        if r.repeat_scores is not None:
            ax.scatter(ref, np.asarray(r.repeat_scores, float), s=14, marker="x", color="#ff7f0e", label="seed 2")
        t = r.agreement.tau
        ax.set_title(f"{r.name}\nKendall tau {t:.2f}" if math.isfinite(t) else f"{r.name}\nKendall tau n/a",
                     fontsize=9)
        ax.set_xlabel("stand-alone accuracy (reference)")
        ax.set_ylabel("evaluator score")
        ax.grid(alpha=0.3)
        if r.repeat_scores is not None:
            ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fmt = os.path.splitext(str(path))[1].lstrip(".").lower() or "png"
    try:
        fig.savefig(buf, format=fmt, dpi=120)
    except ValueError as e:
        raise MnasError(f"{path}: cannot write a plot in this format ({e})") from None
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())

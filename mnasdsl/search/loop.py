"""The search loop: the controller proposes, executors evaluate, SQLite remembers.

Reward is the paper's Eq. 2, ACC(m) x (LAT(m)/T)^w with w = alpha if LAT <= T else beta.
Rounds are the unit of controller work: a round's proposals and the controller state that made
them are committed together, each finished trial is committed as soon as its evaluation returns
(before the controller sees it), and the observed controller state rides on the next round's
commit. A killed search resumes from the last commit: finished trials are never re-run, unfinished
ones are run, and the controller continues from exactly the state it would have had (an observation
lost with the kill is recomputed from the committed results and the proposing state).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..diagnostics import MnasError
from ..formatter import format as format_ir
from ..latency.estimator import SOFT, objective_factor
from ..lowering import lower
from ..space import Space
from .controllers import Controller, make_controller
from .evaluators import EvalConfig, check_config
from .executors import make_executor
from .storage import _COLS, SCHEMA_VERSION, Store, _trial


def reward(acc: float, latency_ms: float, target_ms: float, alpha: float, beta: float) -> float:
    """Eq. 2: ACC x (LAT/T)^w."""
    return float(acc) * objective_factor(latency_ms, target_ms, alpha, beta)


@dataclass
class SearchConfig:
    trials: int
    target_ms: float
    algo: str = "evolution"
    alpha: float = SOFT[0]
    beta: float = SOFT[1]
    population: int = 50
    tournament: int = 10
    round_size: int | None = None
    seed: int = 0
    latency: str = "device"  # device | lut | measure
    device: str = "pixel1"
    lut: str | None = None
    evaluator: EvalConfig = field(default_factory=EvalConfig)
    executor: str = "local"
    workers: int = 1
    address: str | None = None
    ppo: dict[str, Any] = field(default_factory=dict)
    # Reject proposals whose estimated latency exceeds target_ms before evaluating them (OFA's
    # evolution does so): resampled up to CONSTRAIN_TRIES times per trial, then evaluated anyway.
    constrain: bool = False

    def identity(self) -> dict[str, Any]:
        """What must match for --resume to continue the same search."""
        ev = asdict(self.evaluator)
        # Where and how it runs, not what it computes (the proxy's step forms agree to float rounding).
        for k in ("threads", "cache_dir", "cwd", "steps"):
            ev.pop(k, None)
        return {"algo": self.algo, "alpha": self.alpha, "beta": self.beta, "target_ms": self.target_ms,
                "population": self.population, "tournament": self.tournament, "round_size": self.rounds(),
                "seed": self.seed, "latency": self.latency, "device": self.device, "lut": self.lut,
                "evaluator": ev, "ppo": self.ppo, **({"constrain": True} if self.constrain else {})}

    def rounds(self) -> int:
        if self.round_size:
            return self.round_size
        return max(self.workers, 10 if self.algo == "ppo" else 1)


@dataclass
class Summary:
    trials: int
    done: int
    failed: int
    best: dict[str, Any] | None
    seconds: float
    trials_per_s: float
    first_error: dict[str, Any] | None = None  # {"id", "spec", "error"} of the first failed trial in the database
    rejected: int = 0  # --constrain: proposals over the target dropped before evaluation
    over_target: int = 0  # --constrain: trials still over the target after CONSTRAIN_TRIES resamples


CONSTRAIN_TRIES = 100


Progress = Callable[[int, int, float | None], None]
# Called as each trial fails (trial id, canonical spec, error text), so a broken evaluator shows at once.
FailureHook = Callable[[int, str, str], None]


def arch_key(signature: tuple[object, ...]) -> str:
    """Identity of a network for dedupe: a hash of its lowered signature."""
    return hashlib.blake2b(repr(signature).encode(), digest_size=12).hexdigest()


KILL_ENV = "MNASDSL_TEST_KILL_AT"
KILL_POINTS = ("after-evaluate", "after-commit", "in-observe", "in-propose", "between-rounds")


class _KillSwitch:
    """Test-only fault injection: ``MNASDSL_TEST_KILL_AT=POINT[:N]`` SIGKILLs this process the N-th
    time (default 1) the loop reaches POINT, so tests can prove a kill -9 at any commit boundary
    loses and repeats no finished trial. Unset (always, outside tests) it costs a string compare."""

    def __init__(self, spec: str | None) -> None:
        self.point, self.n, self.seen = None, 1, 0
        if not spec:
            return
        point, _, n = spec.partition(":")
        if point not in KILL_POINTS or (n and not n.isdigit()):
            raise MnasError(f"{KILL_ENV}={spec!r}: expected POINT[:N] with POINT one of {', '.join(KILL_POINTS)}")
        self.point, self.n = point, int(n or 1)

    def __call__(self, point: str) -> None:
        if point == self.point:
            self.seen += 1
            if self.seen == self.n:
                os.kill(os.getpid(), signal.SIGKILL)


class _Latency:
    def __init__(self, cfg: SearchConfig) -> None:
        self.measure = cfg.latency == "measure"
        self.est = None
        if not self.measure:
            from ..latency import Estimator, load_table

            self.est = Estimator(load_table(device=cfg.device if cfg.latency == "device" else None,
                                            lut=cfg.lut if cfg.latency == "lut" else None))

    def __call__(self, low: Any) -> float | None:
        return None if self.est is None else float(self.est.estimate_ms(low))


def run_search(space: Space, db: str | Path, cfg: SearchConfig, *, resume: bool = False,
               progress: Progress | None = None, on_failure: FailureHook | None = None) -> Summary:
    """Run (or resume) a search until ``cfg.trials`` trials have finished. A failing trial never stops it:
    it is recorded with its error and passed to ``on_failure``; ``Summary.first_error`` names the first."""
    if cfg.trials < 1:
        raise MnasError(f"--trials must be >= 1, got {cfg.trials}")
    if not cfg.target_ms > 0:
        raise MnasError(f"--target-ms must be > 0, got {cfg.target_ms}")
    if cfg.seed < 0:
        raise MnasError(f"--seed must be >= 0, got {cfg.seed}")
    check_config(cfg.evaluator)
    dbp = Path(db)
    existed = dbp.exists() and dbp.stat().st_size > 0
    if resume and not existed:
        raise MnasError(f"{dbp}: nothing to resume (no such database)")
    store = Store(dbp, create=True)
    try:
        return _run(space, store, cfg, resume, existed, progress, on_failure)
    except (sqlite3.DatabaseError, UnicodeDecodeError) as e:  # a damaged file (or a full disk) found late
        raise MnasError(f"{dbp}: search database error: {e}") from None
    finally:
        store.close()


def _run(space: Space, store: Store, cfg: SearchConfig, resume: bool, existed: bool,
         progress: Progress | None, on_failure: FailureHook | None) -> Summary:
    space_text = format_ir(space.spec)
    ident = cfg.identity()
    kill = _KillSwitch(os.environ.get(KILL_ENV))
    finished = store.completed()
    if existed and store.counts().get("done", 0) == 0:
        # Nothing worth keeping (a start that failed on its first trial, or a search whose every trial
        # failed, say with a broken evaluator now fixed): start afresh, whatever the settings, rather than
        # lock the database behind --resume or count the failures towards --trials.
        store.reset()
        resume = False
    elif existed and not resume:
        raise MnasError(f"{store.path} already holds {finished} finished trials; pass --resume to continue that "
                        f"search with the settings it was started with, or choose another --db (or delete "
                        f"{store.path}) to start a new one")
    if resume:
        fresh = f"or choose another --db (or delete {store.path}) to start a new search"
        if store.get_meta("space") is None:
            raise MnasError(f"{store.path}: not a search database started by mnasdsl (no metadata); {fresh}")
        if store.get_meta("space") != space_text:
            raise MnasError(f"{store.path} was searched over a different space; resume it with the space it was "
                            f"started with (`mnasdsl report {store.path}` shows its networks), {fresh}")
        old = store.get_meta("config") or {}
        if not isinstance(old, dict):
            raise MnasError(f"{store.path}: corrupt search database: metadata `config` is not a search's settings")
        diff = _config_diff(old, ident)
        if diff:
            raise MnasError(f"{store.path} was started with different settings ({'; '.join(diff)}); cannot resume "
                            f"with these: pass the settings it was started with to continue it, {fresh}")
    store.set_meta({"schema_version": SCHEMA_VERSION, "space": space_text, "space_name": space.name,
                    "config": ident, "trials_requested": cfg.trials,
                    "proxy_label": cfg.evaluator.label})
    controller = make_controller(cfg.algo, space, cfg.seed, population=cfg.population, tournament=cfg.tournament,
                                 **cfg.ppo)
    latency = _Latency(cfg)
    if cfg.constrain and latency.est is None:
        raise MnasError("--constrain rejects proposals by their estimated latency before evaluating them; it "
                        "needs a latency table (--device or --lut), not --measure")
    rejected, over = (int(store.get_meta("constrain_rejected") or 0), int(store.get_meta("constrain_over") or 0)) \
        if resume else (0, 0)
    executor = make_executor(cfg.executor, cfg.evaluator, cfg.workers, cfg.address)
    t0 = time.perf_counter()
    start_done = store.completed()
    st = _State(store.total(), start_done, _best(store), progress, store.done_by_key(), on_failure)
    deferred: list[Any] = []
    try:
        saved = store.latest_state()
        rnd = -1
        if saved is not None:
            rnd, phase, blob = saved
            try:
                controller.load_state(blob)
            except Exception as e:  # noqa: BLE001 - decoding a damaged blob fails in many ways
                raise MnasError(f"{store.path}: corrupt search database: the controller state of round {rnd} "
                                f"cannot be read ({type(e).__name__}: {e})") from None
            if phase == "proposed":
                deferred = _finish_round(store, space, controller, executor, latency, cfg, rnd, {}, st, kill)
                kill("between-rounds")
        while st.total < cfg.trials or st.completed < st.total:
            rnd += 1
            n = min(cfg.rounds(), cfg.trials - st.total)
            vectors = controller.propose(n)
            rows = []
            built: dict[int, tuple[Any, Any]] = {}
            for slot, v in enumerate(vectors):
                net, low, sig = space.built(v)
                if cfg.constrain:
                    (v, net, low, sig), r, o = _within_target(space, controller, latency, cfg.target_ms, v,
                                                              (net, low, sig))
                    rejected, over = rejected + r, over + o
                built[slot] = (net, low)
                rows.append((v, format_ir(net), arch_key(sig)))
            kill("in-propose")
            if cfg.constrain:  # committed with the round, so a resumed search counts on exactly
                deferred = [*deferred, *(("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, json.dumps(v)))
                                         for k, v in (("constrain_rejected", rejected), ("constrain_over", over)))]
            trials = store.add_round(rnd, rows, controller.state(), prelude=deferred)
            st.total += len(rows)
            deferred = _finish_round(store, space, controller, executor, latency, cfg, rnd, built, st, kill, trials)
            kill("between-rounds")
        store.run_ops(deferred)
    finally:
        executor.close()
    dt = time.perf_counter() - t0
    counts = store.counts()
    ran = store.completed() - start_done
    return Summary(store.total(), counts.get("done", 0), counts.get("failed", 0), st.best, dt,
                   ran / dt if dt > 0 else 0.0, _first_error(store), rejected, over)


def _within_target(space: Space, controller: Controller, latency: _Latency, target_ms: float, v: list[int],
                   built: tuple[Any, Any, Any]) -> tuple[tuple[list[int], Any, Any, Any], int, int]:
    """A proposal whose estimated latency is within the target: ``v`` or a replacement the controller
    proposes instead, at most CONSTRAIN_TRIES times; then the last one, counted as over the target
    (its reward still penalizes it). Returns it with (rejected, over-target) counts."""
    net, low, sig = built
    rejected = 0
    while (latency(low) or 0.0) > target_ms:
        if rejected == CONSTRAIN_TRIES:
            return (v, net, low, sig), rejected, 1
        controller.discard([v])
        rejected += 1
        v = controller.propose(1)[0]
        net, low, sig = space.built(v)
    return (v, net, low, sig), rejected, 0


@dataclass
class _State:
    total: int
    completed: int
    best: dict[str, Any] | None
    progress: Progress | None
    by_key: dict[str, Any]
    on_failure: FailureHook | None = None

    def tick(self) -> None:
        self.completed += 1
        if self.progress is not None:
            self.progress(self.completed, self.total, self.best["reward"] if self.best else None)


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The settings that differ, each with both values (one level into nested ones such as the evaluator)."""
    out = []
    missing = object()
    for k in sorted(set(old) | set(new)):  # a setting only one side has (an option newer than the database)
        a, b = old.get(k, missing), new.get(k, missing)  # matches when the other side left it off
        if a == b or a is missing and not b or b is missing and not a:
            continue
        a, b = (None if a is missing else a), (None if b is missing else b)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(f"{k}.{sub}: {_short(a.get(sub))} there, {_short(b.get(sub))} now"
                       for sub in sorted(set(a) | set(b)) if a.get(sub) != b.get(sub))
        else:
            out.append(f"{k}: {_short(a)} there, {_short(b)} now")
    return out


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _first_error(store: Store) -> dict[str, Any] | None:
    row = store.db.execute(f"SELECT {_COLS} FROM trials WHERE status='failed' ORDER BY id LIMIT 1").fetchone()
    if row is None:
        return None
    t = _trial(row, store.path)
    return {"id": t.id, "spec": t.spec, "error": t.error or "evaluation failed"}


def _best(store: Store) -> dict[str, Any] | None:
    row = store.db.execute(f"SELECT {_COLS} FROM trials WHERE status='done' ORDER BY reward DESC, id "
                           "LIMIT 1").fetchone()
    if row is None:
        return None
    t = _trial(row, store.path)
    return {"id": t.id, "spec": t.spec, "acc": t.acc, "latency_ms": t.latency_ms, "reward": t.reward}


def _finish_round(store: Store, space: Space, controller: Controller, executor: Any, latency: _Latency,
                  cfg: SearchConfig, rnd: int, built: dict[int, tuple[Any, Any]], st: _State, kill: _KillSwitch,
                  trials: list[Any] | None = None) -> list[Any]:
    """Evaluate a round's pending trials and observe it. Every result is committed as soon as it is
    known, before anything else runs (an evaluation can be a whole training run); only the observed
    controller state is returned, for the commit that also proposes the next round: losing it to a
    kill costs a re-observation of committed results, never an evaluation."""
    if trials is None:
        trials = store.round_trials(rnd)
    by_id = {t.id: t for t in trials}
    result: dict[int, tuple[str, float | None]] = {t.id: (t.status, t.reward) for t in trials}
    jobs = []
    first_of: dict[str, int] = {}
    lows: dict[int, Any] = {}

    def done(tid: int, reward_: float | None, **kw: Any) -> None:
        store.finish(tid, **kw)
        result[tid] = (kw["status"], reward_)
        if reward_ is not None and (st.best is None or reward_ > st.best["reward"]):
            st.best = {"id": tid, "spec": by_id[tid].spec, "acc": kw["acc"], "latency_ms": kw["latency_ms"],
                       "reward": reward_}
        st.tick()
        if kw["status"] == "failed" and st.on_failure is not None:
            st.on_failure(tid, by_id[tid].spec, kw.get("error") or "evaluation failed")
        kill("after-commit")

    for t in trials:
        if t.status != "pending":
            continue
        net, low = built.get(t.slot) or (None, None)
        if low is None:
            net = space.decode(t.decisions)
            low = lower(net)
        lows[t.id] = low
        hit = st.by_key.get(t.arch_key)
        if hit is not None:  # identical specs are evaluated once
            done(t.id, hit.reward, status="done", acc=hit.acc, latency_ms=hit.latency_ms,
                 params=hit.params, macs=hit.macs, reward=hit.reward, cached_from=hit.id, worker=hit.worker,
                 eval_s=0.0)
            continue
        if t.arch_key in first_of:
            continue
        first_of[t.arch_key] = t.id
        jobs.append((t.id, t.spec, t.decisions, net, low))
    outcome: dict[int, dict[str, Any]] = {}
    for tid, status, payload in executor.run(jobs):
        kill("after-evaluate")
        if status == "ok":
            lat = payload.get("latency_ms")
            if lat is None:
                lat = latency(lows[tid])
            r, error = None, "no latency measurement"
            if lat is not None and lat > 0:
                try:  # a plug-in's own latency may be inf, and (LAT/T)^w may overflow: that trial fails
                    r = reward(payload["acc"], lat, cfg.target_ms, cfg.alpha, cfg.beta) if lat < math.inf else None
                    error = f"latency {lat} ms is not a finite number"
                except MnasError as e:
                    error = str(e)
            if r is None:
                outcome[tid] = dict(status="failed", error=error, worker=payload.get("worker"))
                done(tid, None, **outcome[tid])
            else:
                outcome[tid] = dict(status="done", acc=payload["acc"], latency_ms=lat, params=payload["params"],
                                    macs=payload["macs"], reward=r, worker=payload.get("worker"),
                                    eval_s=payload.get("eval_s"))
                done(tid, r, **outcome[tid])
                st.by_key.setdefault(by_id[tid].arch_key, _as_trial(by_id[tid], outcome[tid], tid))
        else:
            outcome[tid] = dict(status="failed", error=str(payload)[:4000])
            done(tid, None, **outcome[tid])
    # Duplicates inside the round copy the first evaluation.
    for t in trials:
        if result[t.id][0] == "pending":
            src = first_of.get(t.arch_key)
            o = outcome.get(src) if src is not None else None
            if o is None and src is not None and result.get(src, ("pending",))[0] != "pending":
                hit = next(x for x in store.round_trials(rnd) if x.id == src)
                o = dict(status=hit.status, acc=hit.acc, latency_ms=hit.latency_ms, params=hit.params,
                         macs=hit.macs, reward=hit.reward, error=hit.error, worker=hit.worker)
            if o is not None and o["status"] == "done":
                done(t.id, o["reward"], **{**o, "cached_from": src, "eval_s": 0.0})
            else:
                err = (o or {}).get("error") or "evaluation failed"
                done(t.id, None, status="failed", error=err, cached_from=src)
    controller.observe([t.decisions for t in trials],
                       [result[t.id][1] if result[t.id][0] == "done" else None for t in trials])
    kill("in-observe")
    deferred: list[Any] = []
    store.observed(rnd, controller.state(), defer=deferred)
    return deferred


def _as_trial(t: Any, o: dict[str, Any], tid: int) -> Any:
    from .storage import Trial

    return Trial(tid, t.round, t.slot, t.decisions, t.spec, t.arch_key, "done", o["acc"], o["latency_ms"],
                 o["params"], o["macs"], o["reward"], None, None, o.get("worker"), o.get("eval_s"))

"""Where evaluations run: in the driver, in spawned local processes, or as Ray tasks.

Local workers are started with ``spawn`` (forking after JAX has started can deadlock), with the
persistent XLA compilation cache on. Each of K workers is pinned to its own 1/K of the driver's
allowed CPUs before JAX starts: XLA:CPU sizes its thread pool from the affinity mask and has no
thread-count flag, so pinning is what keeps K workers from running K full pools on the same cores.
With Ray, each evaluation is a task with its CPU/GPU resources and the controller stays in the driver.
"""

from __future__ import annotations

import multiprocessing
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from ..diagnostics import MnasError
from .evaluators import EvalConfig, evaluate_safe

Job = tuple[int, str, list[int], Any, Any]  # trial id, canonical spec, decision vector, network, lowered
Result = tuple[int, str, Any]  # trial id, "ok" | "error", metrics or error text


class Executor(ABC):
    @abstractmethod
    def run(self, jobs: Sequence[Job]) -> Iterator[Result]:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - executors without resources have nothing to release
        """Release workers / the cluster connection."""


class InlineExecutor(Executor):
    """In the driver process: no start-up cost; the fast path for analytic evaluators."""

    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg = cfg

    def run(self, jobs: Sequence[Job]) -> Iterator[Result]:
        for tid, spec, dec, net, low in jobs:
            status, payload = evaluate_safe(self.cfg, spec, dec, net, low)
            yield tid, status, payload


def cpu_shares(allowed: Sequence[int], workers: int) -> list[tuple[int, ...]]:
    """Each worker's CPUs: contiguous, near-equal, disjoint slices of ``allowed``; with more workers
    than CPUs, one CPU each, round-robin (oversubscribed, but one thread per worker)."""
    cpus = sorted(allowed)
    if not cpus or workers < 1:
        raise ValueError(f"need CPUs and workers, got {len(cpus)} CPUs for {workers} workers")
    if workers >= len(cpus):
        return [(cpus[i % len(cpus)],) for i in range(workers)]
    q, r = divmod(len(cpus), workers)
    shares, start = [], 0
    for i in range(workers):
        size = q + (i < r)
        shares.append(tuple(cpus[start:start + size]))
        start += size
    return shares


def _allowed_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _set_xla_flag(flags: str, name: str, value: str) -> str:
    """``flags`` with ``--name=value`` replacing any earlier setting of it. Every token must start
    with ``--``: XLA's parser stops at the first one that does not and drops it and all after it."""
    kept = [t for t in flags.split() if t.split("=", 1)[0] != f"--{name}"]
    return " ".join([*kept, f"--{name}={value}"])


def limit_threads(cpus: Sequence[int]) -> None:
    """Confine this process to ``cpus`` before JAX starts: affinity (XLA:CPU sizes its pool from
    it), OpenMP/BLAS thread counts, and XLA's single-threaded Eigen path when one CPU is left
    (that flag alone does not shrink the pool in jax 0.10; the affinity does)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))
    n = str(len(cpus))
    os.environ["OMP_NUM_THREADS"] = n
    os.environ["OPENBLAS_NUM_THREADS"] = n
    if len(cpus) == 1:
        os.environ["XLA_FLAGS"] = _set_xla_flag(os.environ.get("XLA_FLAGS", ""), "xla_cpu_multi_thread_eigen", "false")


def _init_worker(shares: list[tuple[int, ...]], slot: Any) -> None:
    """Runs first in every spawned worker; ``slot`` (a shared counter) gives each its own share."""
    with slot.get_lock():
        i = slot.value
        slot.value += 1
    limit_threads(shares[i % len(shares)])


class ProcessExecutor(Executor):
    def __init__(self, cfg: EvalConfig, workers: int) -> None:
        self.cfg = cfg
        ctx = multiprocessing.get_context("spawn")
        self.shares = cpu_shares(_allowed_cpus(), workers)
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                        initargs=(self.shares, ctx.Value("i", 0)))

    def run(self, jobs: Sequence[Job]) -> Iterator[Result]:
        futs: dict[Future[Any], int] = {
            self.pool.submit(evaluate_safe, self.cfg, s, d): tid for tid, s, d, _, _ in jobs}
        pending = set(futs)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                try:
                    status, payload = f.result()
                except Exception as e:  # a worker died (out of memory, killed)
                    status, payload = "error", f"worker failed: {type(e).__name__}: {e}"
                yield futs[f], status, payload

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor(Executor):
    def __init__(self, cfg: EvalConfig, workers: int, address: str | None, cpus: float = 1.0, gpus: float = 0.0
                 ) -> None:
        try:
            import ray
        except ImportError:
            raise MnasError("--executor ray needs the `ray` package: pip install 'mnasdsl[ray]'") from None
        self.ray = ray
        self.cfg = cfg
        try:
            if not ray.is_initialized():
                if address:
                    ray.init(address=address, log_to_driver=False, include_dashboard=False)
                else:
                    ray.init(num_cpus=workers, log_to_driver=False, include_dashboard=False)
        except Exception as e:
            raise MnasError(f"cannot start or reach a Ray cluster ({address or 'local'}): {e}") from None
        self.task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(evaluate_safe)
        self.workers = workers
        self.started_here = not address

    def run(self, jobs: Sequence[Job]) -> Iterator[Result]:
        ray = self.ray
        refs = {self.task.remote(self.cfg, s, d): tid for tid, s, d, _, _ in jobs}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in done:
                try:
                    status, payload = ray.get(r)
                except Exception as e:
                    status, payload = "error", f"ray task failed: {type(e).__name__}: {e}"
                yield refs[r], status, payload

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


def make_executor(kind: str, cfg: EvalConfig, workers: int, address: str | None = None) -> Executor:
    if workers < 1:
        raise MnasError(f"--workers must be >= 1, got {workers}")
    if kind == "local":
        return InlineExecutor(cfg) if workers == 1 else ProcessExecutor(cfg, workers)
    if kind == "ray":
        gpus = 1.0 if cfg.extra.get("gpu_per_task") else 0.0
        return RayExecutor(cfg, workers, address, gpus=gpus)
    raise MnasError(f"unknown executor {kind!r} (choose local or ray)")

"""Worker thread limits that XLA actually honours: CPU affinity per worker and well-formed XLA_FLAGS.

XLA:CPU has no thread-count flag; it sizes its pool from the affinity mask. A bare
``intra_op_parallelism_threads=N`` token in ``XLA_FLAGS`` is not a flag: XLA's parser stops there
and silently drops it and every flag after it (checked below on the installed jaxlib).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mnasdsl.search.evaluators import EvalConfig
from mnasdsl.search.executors import ProcessExecutor, cpu_shares

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
needs_affinity = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs sched_setaffinity and at least 2 CPUs")

# Started in a fresh interpreter: a jitted matmul loop, then its busy threads and affinity as JSON.
PROBE = r'''
import glob, json, os

def ticks():
    out = {}
    for p in glob.glob("/proc/self/task/*/stat"):
        try:
            with open(p) as f:
                s = f.read()
        except OSError:
            continue
        fields = s.rsplit(")", 1)[1].split()
        out[p.split("/")[-2]] = int(fields[11]) + int(fields[12])  # utime + stime
    return out

def xla_probe(dump_dir):
    # Another component adding a flag after the executor's: it must survive.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={dump_dir}").strip()
    import jax
    import jax.numpy as jnp

    x = jnp.ones((512, 512), jnp.float32)
    f = jax.jit(lambda a: (a @ a) * (1.0 / 512))
    f(x).block_until_ready()
    t0 = ticks()
    for _ in range(150):
        x = f(x)
    x.block_until_ready()
    t1 = ticks()
    deltas = [t1[k] - t0.get(k, 0) for k in t1]
    total = sum(deltas)
    return {"pid": os.getpid(), "affinity": sorted(os.sched_getaffinity(0)), "backend": jax.default_backend(),
            "busy": sum(d >= max(3, 0.1 * total) for d in deltas), "ticks": sorted(deltas, reverse=True)[:6],
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "dumped": os.path.isdir(dump_dir)}
'''
_ns: dict[str, Any] = {}
exec(compile(PROBE, __file__ + ":PROBE", "exec"), _ns)


def worker_probe(barrier: Any, dump_dir: str) -> dict[str, Any]:
    """Run in a pool worker: the barrier makes each of the K workers take exactly one probe."""
    barrier.wait(timeout=180)
    return _ns["xla_probe"](dump_dir)  # type: ignore[no-any-return]


def _well_formed(flags: str) -> bool:
    return all(t.startswith("--") for t in flags.split())


def test_cpu_shares_split_disjoint_and_cover() -> None:
    assert cpu_shares([0, 1], 2) == [(0,), (1,)]
    assert cpu_shares([3, 0, 1, 2, 4], 2) == [(0, 1, 2), (3, 4)]
    assert cpu_shares(range(16), 3) == [tuple(range(6)), tuple(range(6, 11)), tuple(range(11, 16))]
    assert cpu_shares([0, 1], 5) == [(0,), (1,), (0,), (1,), (0,)]  # more workers than CPUs: one each
    for n in range(1, 9):
        for k in range(1, n + 1):
            shares = cpu_shares(range(n), k)
            flat = [c for s in shares for c in s]
            assert sorted(flat) == list(range(n)) and all(s for s in shares)
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_xla_parser_drops_a_bare_token_and_all_after_it(tmp_path: Path) -> None:
    """The premise of the fix, on the installed jaxlib: the flag after the bare token is ignored."""
    code = "import jax, jax.numpy as jnp; jax.jit(lambda x: x * 2)(jnp.ones(3)).block_until_ready()"
    dump = tmp_path / "dump"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1 --xla_dump_to={dump}")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=120)
    assert not dump.exists()


@needs_affinity
def test_process_workers_run_xla_on_their_own_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two spawned workers, each started by the executor, run a jitted matmul loop at once: each is
    pinned to its own disjoint share, uses no more busy threads than its share has CPUs, and XLA
    read every flag (one added after the executor's is applied)."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    ex = ProcessExecutor(EvalConfig(), workers=2)
    manager = multiprocessing.get_context("spawn").Manager()
    try:
        barrier = manager.Barrier(2)
        futs = [ex.pool.submit(worker_probe, barrier, str(tmp_path / f"dump{i}")) for i in range(2)]
        res = [f.result(timeout=300) for f in futs]
    finally:
        ex.close()
        manager.shutdown()
    info = json.dumps(res, indent=1)
    assert len({r["pid"] for r in res}) == 2, info
    shares = [set(r["affinity"]) for r in res]
    assert shares[0].isdisjoint(shares[1]) and shares[0] | shares[1] <= set(ALLOWED), info
    assert sorted(map(len, shares)) == sorted(map(len, ex.shares)), info
    for r in res:
        assert r["backend"] == "cpu", info
        assert _well_formed(r["xla_flags"]) and r["dumped"], info
        assert 1 <= r["busy"] <= len(r["affinity"]), info
        if len(r["affinity"]) == 1:
            assert "--xla_cpu_multi_thread_eigen=false" in r["xla_flags"].split(), info


@needs_affinity
def test_single_thread_xla_pins_one_cpu(tmp_path: Path) -> None:
    """profile's ``--clock cpu`` set-up: XLA then runs one busy thread, and later flags still apply."""
    code = PROBE + (
        "\nfrom mnasdsl.latency.profile import single_thread_xla\n"
        "assert single_thread_xla()\n"
        f"print(json.dumps(xla_probe({str(tmp_path / 'dump')!r})))\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True,
                         timeout=180, cwd=ROOT)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(r["affinity"]) == 1 and set(r["affinity"]) <= set(ALLOWED), r
    assert r["busy"] == 1, r
    assert _well_formed(r["xla_flags"]) and r["dumped"], r
    assert "--xla_cpu_multi_thread_eigen=false" in r["xla_flags"].split(), r


"""Inference runtimes on the CPU: MnasNet-A1 @224 (1000 classes) through every engine, one run.

    python benchmarks/bench_runtime.py [--threads 2] [--rounds 3] [--reps 20] [--batches 1,32]
    python benchmarks/bench_runtime.py --quick          # batch 1, one round: a smoke run

Rows, each at batch 1 and batch 32 (random weights; speed does not depend on them):

- mnasdsl XLA, weights embedded: ``backends.flax.inference_fn``, the variables closed over, so XLA
  sees them as constants (what ``mnasdsl compile`` exports);
- mnasdsl XLA, weights as arguments: ``jit(f(state, x))`` over ``nnx.split`` (what the latency
  profiler times), the weights on the device;
- LiteRT float32 and full-integer int8 (``backends.tflite``: the folded network converted without
  TensorFlow, XNNPACK), each at 1 thread and at ``--threads``; int8 is calibrated on a few random
  normalized batches (its speed does not depend on them);
- ONNX Runtime (``backends.onnx_export``), intra-op threads = ``--threads``, inter-op 1;
- PyTorch eager and ``torch.compile`` (inductor, static shapes) on timm's ``semnasnet_100`` (the
  same architecture, 3,887,038 params), in a separate interpreter so torch never joins mnasdsl's
  dependencies::

    python -m venv .venv-torch
    .venv-torch/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
    MNASDSL_TORCH_PYTHON=.venv-torch/bin/python python benchmarks/bench_runtime.py

Threads are enforced, the same for every row marked with ``--threads``: the process is confined to
that many cores before jax starts (XLA:CPU sizes its pools by the cores it may use; the PyTorch
interpreter inherits the mask and re-applies it), LiteRT gets ``num_threads``, ONNX Runtime
``intra_op_num_threads`` (inter-op 1), PyTorch ``set_num_threads`` (inter-op 1). The 1-thread
LiteRT rows are marked so.

All rows take turns: each round times every row once per batch, in an order that reverses between
rounds, so drift in a shared machine's speed lands on all alike. Each row warms up on first use
(``torch.compile`` compiles there), outside the timing. Medians over all rounds are reported, with
ratios ``row / mnasdsl XLA (embedded)`` (above 1: XLA is faster) and their per-round values. A row
that cannot be set up or run (a missing package, no PyTorch interpreter) is reported as skipped
with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch_peer import TorchPeer, timer

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "mnasnet-a1.mnas"
REF = "xla_embedded"  # the row every ratio is taken against
CALIBRATION_BATCHES = 2  # random batches for the int8 ranges; speed does not depend on them
PAUSE_S = 0.05  # between turns: lets the last engine's spinning worker threads go to sleep

# The PyTorch side: builds the model, then answers "ROW REPS" lines on stdin (ROW: eager_b<B> or
# compile_b<B>) with {"ms": per-rep milliseconds}, or {"error": why} if the row cannot run, so a
# failing torch.compile skips its row instead of ending the peer. Each row warms up on first use.
TORCH_SIDE = r"""
import json, os, sys, time
threads, cpus = int(sys.argv[1]), [int(c) for c in sys.argv[2].split(",")]
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, cpus)
import torch, timm
torch.set_num_threads(threads)
torch.set_num_interop_threads(1)
torch.manual_seed(0)
model = timm.create_model("semnasnet_100", num_classes=1000).eval()
params = sum(p.numel() for p in model.parameters())
compiled = None
inputs = {}
def fn_for(row):
    global compiled
    kind, b = row.split("_b")
    b = int(b)
    if b not in inputs:
        inputs[b] = torch.randn(b, 3, 224, 224)
    x = inputs[b]
    if kind == "eager":
        net = model
    elif kind == "compile":
        if compiled is None:
            compiled = torch.compile(model, dynamic=False)
        net = compiled
    else:
        raise ValueError(f"unknown row {row!r}")
    def fn():
        with torch.inference_mode():
            net(x)
    return fn
fns, failed = {}, {}
print(json.dumps({"params": params, "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}),
      flush=True)
for line in sys.stdin:
    row, reps = line.split()
    if row in failed:
        print(json.dumps({"error": failed[row]}), flush=True)
        continue
    try:
        if row not in fns:
            t = time.perf_counter()
            fn = fn_for(row)
            for _ in range(3 if row.endswith("_b1") else 2):
                fn()
            fns[row] = fn
            warm_s = time.perf_counter() - t
        else:
            warm_s = None
        fn = fns[row]
        ts = []
        for _ in range(int(reps)):
            t = time.perf_counter(); fn(); ts.append((time.perf_counter() - t) * 1e3)
        print(json.dumps({"ms": ts, "warm_s": warm_s}), flush=True)
    except Exception as e:
        failed[row] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        print(json.dumps({"error": failed[row]}), flush=True)
"""


class Skip(Exception):
    """A row that cannot run here; the message says why."""


@dataclass
class Row:
    key: str
    label: str
    threads: int
    # batch -> (reps -> per-rep ms); filled at setup. A batch missing here is skipped with the reason.
    timers: dict[int, Callable[[int], list[float]]] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    ms: dict[int, list[float]] = field(default_factory=dict)
    round_ms: dict[int, list[float]] = field(default_factory=dict)  # per-round medians

    def skip(self, batch: int, why: str) -> None:
        self.timers.pop(batch, None)
        self.skipped.setdefault(batch, why)


def _why(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _warm(batch: int) -> int:
    return 3 if batch == 1 else 2


def mnasdsl_rows(batches: list[int], threads: int, info: dict[str, object]) -> list[Row]:
    """The XLA, LiteRT and ONNX Runtime rows, set up for every batch (compile, convert, quantize)."""
    import jax
    from flax import nnx

    import mnasdsl
    from mnasdsl.backends import flax as fb
    from mnasdsl.backends.folded import fold

    model = fb.build(mnasdsl.load(str(SPEC)), rngs=nnx.Rngs(0), platform="cpu")
    info.update(params=fb.count_params(model), jax=jax.__version__, device=str(jax.devices()[0]))
    folded = fold(model)
    embedded = fb.inference_fn(model)
    graphdef, state = nnx.split(model)
    state = jax.block_until_ready(jax.device_put(state))  # on the device, as deployed (see latency.profile)

    def with_args(s, x):  # type: ignore[no-untyped-def]
        return nnx.merge(graphdef, s)(x, train=False)

    as_args = jax.jit(with_args)
    lite_threads = sorted({1, threads})
    rows = [Row("xla_embedded", "mnasdsl XLA, weights embedded", threads),
            Row("xla_args", "mnasdsl XLA, weights as args", threads)]
    rows += [Row(f"litert_f32_t{t}", "LiteRT float32", t) for t in lite_threads]
    rows += [Row(f"litert_int8_t{t}", "LiteRT int8", t) for t in lite_threads]
    rows.append(Row("ort", "ONNX Runtime float32", threads))
    by_key = {r.key: r for r in rows}
    setup: dict[str, float] = {}
    info["setup_s"] = setup
    rng = np.random.default_rng(0)

    for b in batches:
        x_np = rng.standard_normal((b, 224, 224, 3), np.float32)
        x = jax.block_until_ready(jax.device_put(x_np))
        t = time.perf_counter()
        c = embedded.lower(x).compile()
        setup[f"xla_embedded_b{b}"] = time.perf_counter() - t
        by_key["xla_embedded"].timers[b] = timer(lambda c=c, x=x: c(x).block_until_ready(), _warm(b))
        t = time.perf_counter()
        c = as_args.lower(state, x).compile()
        setup[f"xla_args_b{b}"] = time.perf_counter() - t
        by_key["xla_args"].timers[b] = timer(lambda c=c, x=x: c(state, x).block_until_ready(), _warm(b))
        ref = np.asarray(embedded(x))

        try:
            from mnasdsl.backends import tflite as tl

            t = time.perf_counter()
            f32 = tl.convert(folded, b)
            setup[f"litert_convert_b{b}"] = time.perf_counter() - t
            for th in lite_threads:
                m = tl.load(f32, threads=th, name=f"a1_b{b}.tflite")
                if th == lite_threads[0]:
                    info[f"litert_f32_maxdiff_b{b}"] = float(np.max(np.abs(m.run(x_np) - ref)))
                by_key[f"litert_f32_t{th}"].timers[b] = timer(m.invoker(), _warm(b))
            try:
                t = time.perf_counter()
                calib = [np.random.default_rng(i).standard_normal((b, 224, 224, 3), np.float32)
                         for i in range(CALIBRATION_BATCHES)]
                i8 = tl.quantize_int8(f32, calib)
                setup[f"litert_int8_quantize_b{b}"] = time.perf_counter() - t
                for th in lite_threads:
                    m = tl.load(i8, threads=th, name=f"a1_b{b}_int8.tflite")
                    by_key[f"litert_int8_t{th}"].timers[b] = timer(m.invoker(), _warm(b))
            except Exception as e:  # noqa: BLE001 - a row that cannot run is reported, not fatal
                for th in lite_threads:
                    by_key[f"litert_int8_t{th}"].skip(b, _why(e))
        except Exception as e:  # noqa: BLE001
            for th in lite_threads:
                by_key[f"litert_f32_t{th}"].skip(b, _why(e))
                by_key[f"litert_int8_t{th}"].skip(b, _why(e))

        try:
            from mnasdsl.backends.onnx_export import load_onnx, to_onnx

            t = time.perf_counter()
            om = load_onnx(to_onnx(folded, batch=b), intra_op_num_threads=threads, name=f"a1_b{b}.onnx")
            setup[f"ort_export_load_b{b}"] = time.perf_counter() - t
            info[f"ort_maxdiff_b{b}"] = float(np.max(np.abs(om.run(x_np) - ref)))
            by_key["ort"].timers[b] = timer(lambda om=om, x=x_np: om.run(x), _warm(b))
        except Exception as e:  # noqa: BLE001
            by_key["ort"].skip(b, _why(e))
    return rows


def torch_rows(batches: list[int], threads: int, info: dict[str, object]) -> tuple[list[Row], TorchPeer | None]:
    rows = [Row("torch_eager", "PyTorch eager (timm)", threads),
            Row("torch_compile", "PyTorch torch.compile (timm)", threads)]

    def skip_all(why: str) -> tuple[list[Row], None]:
        for r in rows:
            for b in batches:
                r.skip(b, why)
        return rows, None

    torch_py = os.environ.get("MNASDSL_TORCH_PYTHON")
    if not torch_py:
        print("MNASDSL_TORCH_PYTHON is unset: PyTorch rows skipped. Make an interpreter for them with\n"
              "  python -m venv .venv-torch && .venv-torch/bin/pip install torch==2.14.1 "
              "torchvision==0.29.1 timm\n  export MNASDSL_TORCH_PYTHON=.venv-torch/bin/python", file=sys.stderr)
        return skip_all("MNASDSL_TORCH_PYTHON is unset")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    try:
        peer = TorchPeer(torch_py, TORCH_SIDE, [str(threads), ",".join(map(str, cpus))], env)
    except (OSError, RuntimeError, ValueError) as e:
        return skip_all(f"the PyTorch interpreter did not start ({_why(e)})")
    info["torch"] = peer.info

    def asker(kind: str, b: int) -> Callable[[int], list[float]]:
        def run(reps: int) -> list[float]:
            got = peer.ask(f"{kind}_b{b} {reps}")
            if "error" in got:
                raise Skip(got["error"])
            if got.get("warm_s") is not None:
                info[f"torch_{kind}_warm_b{b}_s"] = got["warm_s"]
            return [float(v) for v in got["ms"]]

        return run

    for r, kind in zip(rows, ("eager", "compile"), strict=True):
        for b in batches:
            r.timers[b] = asker(kind, b)
    return rows, peer


def _fmt_ms(ms: float) -> str:
    return f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="threads for every multi-threaded row (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="turns every row takes at every batch")
    ap.add_argument("--reps", type=int, default=20,
                    help="timed inferences per row and round at batch 1; batch B gets max(3, REPS // B)")
    ap.add_argument("--batches", default="1,32", help="comma-separated batch sizes (default 1,32)")
    ap.add_argument("--quick", action="store_true", help="smoke run: batch 1 only, one round")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",") if b.strip()]
    rounds = 1 if args.quick else args.rounds
    n = args.threads
    if n < 1 or rounds < 1 or args.reps < 1 or not batches or min(batches) < 1:
        ap.error("--threads, --rounds, --reps and every batch must be positive")
    # Same cores for every row: XLA:CPU sizes its pools by the cores it may use, so confine the
    # process (and the torch subprocess, which inherits the mask) to n of them; before jax starts.
    have = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if n < len(have) and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, have[:n])
    elif n > len(have):
        print(f"warning: --threads {n} but only {len(have)} cores here; threads will share cores", file=sys.stderr)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else have
    print(f"threads: {n} on every row marked {n} (cores {cpus} of {os.cpu_count()})", flush=True)

    info: dict[str, object] = {}
    t0 = time.perf_counter()
    rows = mnasdsl_rows(batches, n, info)
    t_rows, peer = torch_rows(batches, n, info)
    rows += t_rows
    info["setup_total_s"] = time.perf_counter() - t0
    reps = {b: args.reps if b == 1 else max(3, args.reps // b) for b in batches}

    try:
        for r in range(rounds):
            for b in batches:
                order = rows if r % 2 == 0 else rows[::-1]
                for row in order:
                    timer = row.timers.get(b)
                    if timer is None:
                        continue
                    time.sleep(PAUSE_S)
                    try:
                        ts = timer(reps[b])
                    except Skip as e:
                        row.skip(b, str(e))
                        continue
                    except (RuntimeError, OSError, ValueError) as e:  # the PyTorch interpreter died
                        if not row.key.startswith("torch"):
                            raise
                        for tr in t_rows:
                            for bb in batches:
                                tr.skip(bb, _why(e))
                        continue
                    row.ms.setdefault(b, []).extend(ts)
                    row.round_ms.setdefault(b, []).append(float(np.median(ts)))
            print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    finally:
        if peer is not None:
            try:
                peer.close()
            except OSError:
                pass

    ref = next(x for x in rows if x.key == REF)

    def stats(row: Row, b: int) -> dict[str, object]:
        if b in row.skipped or b not in row.ms:
            return {"skipped": row.skipped.get(b, "no measurement")}
        ms = float(np.median(row.ms[b]))
        out: dict[str, object] = {"ms": ms}
        if b in ref.ms:
            out["ratio"] = ms / float(np.median(ref.ms[b]))
            out["round_ratios"] = [m / rm for m, rm in zip(row.round_ms[b], ref.round_ms[b], strict=False)]
        return out

    result = {"threads": n, "rounds": rounds, "reps": reps, "info": info,
              "rows": {row.key: {"label": row.label, "threads": row.threads,
                                 **{f"b{b}": stats(row, b) for b in batches}} for row in rows}}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0

    t_info = info.get("torch")
    print(f"MnasNet-A1 @224, 1000 classes; params: mnasdsl {info['params']:,}"
          + (f", timm {t_info['params']:,} (torch {t_info['torch']}, {t_info['threads']} threads)"  # type: ignore[index]
             if isinstance(t_info, dict) else "") + f"; jax {info['jax']}")
    setup = info["setup_s"]
    assert isinstance(setup, dict)
    warm = {k[:-2]: v for k, v in info.items() if k.startswith("torch_") and k.endswith("_s")}
    print("setup (compile, convert, quantize; torch: first calls): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in {**setup, **warm}.items()))
    checks = [f"{k.replace('_maxdiff_', ' ')} {v:.1e}" for k, v in info.items() if "maxdiff" in k]
    if checks:
        print("max |logit - XLA logit|: " + ", ".join(checks))
    print(f"{rounds} round(s), turns alternating; reps per round {', '.join(f'b{b}: {k}' for b, k in reps.items())}; "
          f"medians over all rounds; ratio = row / {ref.label}")
    width = max(len(r.label) for r in rows) + 2
    for b in batches:
        print(f"\nbatch {b}")
        print(f"{'row':<{width}}{'threads':>7}{'ms':>10}{'ratio':>9}   per-round ratios")
        best: tuple[float, Row] | None = None
        for row in rows:
            s = stats(row, b)
            head = f"{row.label:<{width}}{row.threads:>7}"
            if "skipped" in s:
                print(f"{head}{'-':>10}{'-':>9}   skipped: {s['skipped']}")
                continue
            ms = float(s["ms"])  # type: ignore[arg-type]
            if best is None or ms < best[0]:
                best = (ms, row)
            if row is ref:
                print(f"{head}{_fmt_ms(ms):>10}{'1.00x':>9}   (reference)")
            elif "ratio" in s:
                rr = " ".join(f"{v:.2f}" for v in s["round_ratios"])  # type: ignore[attr-defined]
                print(f"{head}{_fmt_ms(ms):>10}{s['ratio']:>8.2f}x   {rr}")
            else:
                print(f"{head}{_fmt_ms(ms):>10}{'-':>9}")
        if best is not None:
            ms, row = best
            plural = "s" if row.threads > 1 else ""
            line = f"fastest at batch {b}: {row.label} ({row.threads} thread{plural}), {_fmt_ms(ms)} ms"
            if b in ref.ms and row is not ref:
                line += f", {float(np.median(ref.ms[b])) / ms:.2f}x faster than {ref.label}"
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

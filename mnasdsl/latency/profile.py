"""On-device profiling with the Flax backend: per-op tables and whole-network timings.

Each distinct op signature is built alone (the backend's own layer module), jitted on the local
default XLA device, warmed up and timed; the median of the repeats is recorded because on a
shared machine the noise is one-sided (preemption only ever adds time).
"""

from __future__ import annotations

import itertools
import platform as _platform
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ..diagnostics import MnasError
from ..lowering import Layer, LoweredNetwork, lower
from ..space import Space
from .lut import Entry, Lut, op_key


def _backend() -> Any:
    try:
        from ..backends import flax as fb
    except ImportError as e:  # pragma: no cover - depends on the install
        raise MnasError(f"profiling needs the Flax backend (jax, flax): {e}") from None
    return fb


def device_info() -> dict[str, str]:
    """Where measurements are taken: recorded as the table's provenance."""
    import jax

    d = jax.devices()[0]
    return {"platform": d.platform, "device_kind": getattr(d, "device_kind", d.platform),
            "host": _platform.node(), "cpu": _platform.processor() or _platform.machine(),
            "jax": jax.__version__}


def _concrete(make: Callable[[], Any], pick: Callable[[Any], Any] = lambda m: m) -> tuple[Any, Any]:
    """(graphdef, state) of ``pick(module)``, the module built abstractly and filled in numpy.

    Running initializers eagerly can compile one tiny XLA program per new weight shape (seconds
    per op); timing does not depend on the values, so they are drawn in numpy instead. Values are
    positive and moderate so that BN variances are valid and no denormals slow the arithmetic."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(pick(nnx.eval_shape(make)))
    rng = np.random.default_rng(0)

    def fill(a: Any) -> Any:
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.key(0)
        if np.issubdtype(a.dtype, np.integer):
            return np.zeros(a.shape, a.dtype)
        return rng.uniform(0.05, 0.2, a.shape).astype(a.dtype)

    return graphdef, jax.tree.map(fill, state)


def _classifier_of(shape: tuple[int, int, int], classes: int) -> Layer:
    return Layer("classifier", "classifier", "fc", -1, 0, shape, (1, 1, classes), 1, (1, 1), 1.0, shape[2], 0.0, 0,
                 "none", False, "none")


def _jitted(graphdef: Any, state: Any, x_shape: tuple[int, ...]) -> tuple[Callable[..., Any], Any, Any]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    def f(s: Any, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, s)(x, train=False)

    x = jnp.asarray(np.random.default_rng(0).standard_normal(x_shape, np.float32))
    # Weights live on the device, as in deployment. Left as numpy arrays, every call would copy
    # each one that is not suitably aligned for zero-copy: a random, per-process cost (a 5 MB
    # classifier took 0.45 or 1.1 ms depending on where numpy placed its weights).
    state = jax.block_until_ready(jax.device_put(state))
    return jax.jit(f), state, x


def _layer_fn(layer: Layer, lowered: LoweredNetwork | None, batch: int) -> tuple[Callable[..., Any], Any, Any]:
    """(jitted f(state, x), state, x) computing exactly one lowered layer in eval mode.

    Only the backend's public contract is used: ``build`` a network holding just this layer
    (and a 1-class classifier it needs), then run its ``layers[0]`` alone. The classifier layer
    is timed as a whole network of only itself, which is exactly global pool + dense."""
    from flax import nnx

    fb = _backend()
    base = lowered or LoweredNetwork("op", layer.in_shape, 1, 0.0, 0.99, 1e-3, "same", ())
    if layer.kind == "classifier":
        one = base._replace(input_shape=layer.in_shape, classes=layer.out_shape[2], dropout=0.0, layers=(layer,))
        graphdef, state = _concrete(lambda: fb.build(one, rngs=nnx.Rngs(0)))
    else:
        one = base._replace(input_shape=layer.in_shape, classes=1, dropout=0.0,
                            layers=(layer, _classifier_of(layer.out_shape, 1)))
        graphdef, state = _concrete(lambda: fb.build(one, rngs=nnx.Rngs(0)), lambda m: m.layers[0])
    return _jitted(graphdef, state, (batch, *layer.in_shape))


def _network_fn(lowered: LoweredNetwork, batch: int) -> tuple[Callable[..., Any], Any, Any]:
    from flax import nnx

    fb = _backend()
    graphdef, state = _concrete(lambda: fb.build(lowered, rngs=nnx.Rngs(0)))
    return _jitted(graphdef, state, (batch, *lowered.input_shape))


CLOCKS = ("wall", "cpu")


def single_thread_xla() -> bool:
    """Give XLA:CPU one compute thread, so that the ``cpu`` clock means latency. Must run before
    the CPU backend starts; returns False when it already has.

    XLA has no thread-count flag (a bare ``intra_op_parallelism_threads=1`` in ``XLA_FLAGS`` is
    not one, and the parser drops it and every flag after it); it sizes its pool from the CPU
    affinity, so the process is pinned to one of its allowed CPUs (the one it is running on)."""
    import os

    from jax._src import xla_bridge

    if getattr(xla_bridge, "_backends", None):
        return False
    if hasattr(os, "sched_setaffinity"):
        allowed = os.sched_getaffinity(0)
        try:  # field 39 of /proc/self/stat: the CPU this process last ran on
            with open("/proc/self/stat") as f:
                here = int(f.read().rsplit(")", 1)[1].split()[36])
        except (OSError, ValueError, IndexError):
            here = -1
        os.sched_setaffinity(0, {here if here in allowed else min(allowed)})
    flags = [t for t in os.environ.get("XLA_FLAGS", "").split() if not t.startswith("--xla_cpu_multi_thread_eigen")]
    os.environ["XLA_FLAGS"] = " ".join([*flags, "--xla_cpu_multi_thread_eigen=false"])
    return True


def _clock(name: str) -> Callable[[], float]:
    """``wall``: elapsed time (a dedicated device). ``cpu``: CPU time of this process with XLA
    single-threaded — on a shared machine, time spent waiting for a core is not counted, so
    measurements taken minutes apart under different load agree."""
    if name not in CLOCKS:
        raise ValueError(f"unknown clock {name!r}")
    return time.perf_counter if name == "wall" else time.process_time


def time_fn(f: Callable[..., Any], *args: Any, repeats: int = 10, warmup: int = 2,
            clock: str = "wall") -> tuple[float, float, int]:
    """(median ms, std ms, count) of ``repeats`` timed calls after ``warmup`` untimed ones.
    With ``args`` ``f`` is a jitted function (waited on); without, a synchronous call (LiteRT)."""
    now = _clock(clock)
    call = (lambda: f(*args).block_until_ready()) if args else f
    for _ in range(warmup):
        call()
    ts = np.empty(repeats)
    for i in range(repeats):
        t0 = now()
        call()
        ts[i] = (now() - t0) * 1e3
    return float(np.median(ts)), float(ts.std()), repeats


def call_overhead_ms(clock: str = "wall", repeats: int = 200, runtime: str = "xla", threads: int = 1) -> float:
    """The fixed cost of dispatching one jitted call (a trivial one), subtracted from every
    measurement: otherwise a sum of N isolated ops counts it N times, a network once."""
    if runtime == "litert":
        from . import litert

        call = litert.trivial_invoker(threads)
        return min(time_fn(call, repeats=repeats, warmup=5, clock=clock)[0] for _ in range(3))
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda x: x + 1.0)
    x = jnp.zeros((8,), jnp.float32)
    return min(time_fn(f, x, repeats=repeats, warmup=5, clock=clock)[0] for _ in range(3))


# XLA: (compiled f, state, x); LiteRT: a zero-argument call running one inference.
Prepared = tuple[Callable[..., Any], Any, Any] | Callable[[], Any]
RUNTIMES = ("xla", "litert")


def prepare_layer(layer: Layer, lowered: LoweredNetwork | None = None, *, batch: int = 1, runtime: str = "xla",
                  threads: int = 1) -> Prepared:
    if runtime == "litert":
        from . import litert

        return litert.prepare_layer(layer, lowered, batch=batch, threads=threads)
    f, state, x = _layer_fn(layer, lowered, batch)
    return f.lower(state, x).compile(), state, x  # type: ignore[attr-defined]


def prepare_network(lowered: LoweredNetwork, *, batch: int = 1, runtime: str = "xla", threads: int = 1) -> Prepared:
    if runtime == "litert":
        from . import litert

        return litert.prepare_network(lowered, batch=batch, threads=threads)
    f, state, x = _network_fn(lowered, batch)
    return f.lower(state, x).compile(), state, x  # type: ignore[attr-defined]


def _time(p: Prepared, **kw: Any) -> tuple[float, float, int]:
    return time_fn(*p, **kw) if isinstance(p, tuple) else time_fn(p, **kw)


# A fixed mid-sized op (MBConv e3 k5 at 28x28x40, identity skip) timed beside every measurement.
REFERENCE_LAYER = Layer("reference", "block", "mb", 0, 0, (28, 28, 40), (28, 28, 40), 5, (1, 1), 3.0, 120, 0.0, 0,
                        "identity", False, "relu")


# A fixed whole network (MnasNet-A1's layout, 224x224) timed beside whole-network measurements.
REFERENCE_NETWORK_SPEC = """network reference_a1:
  input 224x224x3
  classes 1000
  stem cv_k3_s22_o32
  blocks
    ds_r1_k3_s11_i32_o16_noskip
    r2_k3_s22_e6_i16_o24
    r3_k5_s22_e3_i24_o40_se0.25
    r4_k3_s22_e6_i40_o80
    r2_k3_s11_e6_i80_o112_se0.25
    r3_k5_s22_e6_i112_o160_se0.25
    r1_k3_s11_e6_i160_o320
  head cv_k1_o1280 fixed
"""


def reference_network() -> LoweredNetwork:
    from ..parser import parse

    net = parse(REFERENCE_NETWORK_SPEC)[0]
    return lower(net)  # type: ignore[arg-type]


class Reference:
    """Normalizes timings by a reference measured right before and right after each one.

    On a shared machine, other tenants slow everything down together (time slicing, a busy
    hyperthread sibling, cache and memory-bandwidth pressure), by tens of percent over minutes.
    Reporting each measurement as (its time / the reference's time just before) x ``baseline_ms``
    cancels that common factor, so ops profiled now and networks measured later agree. A table
    records ``baseline_ms``; `lut check --measure` normalizes networks to the same baseline.

    Ops and whole networks need references of their own kind: a small op keeps its weights in cache
    and barely notices another tenant's cache and memory traffic, while a network streaming 15 MB
    of weights per inference slows down 2-3x under the same load (measured in LiteRT on a shared
    2-core VM: the reference op steady at 0.27 ms while A1 went from 7.5 to 24 ms). So ``network``
    selects a whole reference network (:data:`REFERENCE_NETWORK_SPEC`) for network measurements."""

    def __init__(self, *, clock: str = "wall", repeats: int = 10, overhead_ms: float = 0.0,
                 baseline_ms: float | None = None, runtime: str = "xla", threads: int = 1,
                 network: bool = False) -> None:
        self.clock, self.repeats, self.overhead_ms = clock, repeats, overhead_ms
        self.network = network
        if network:
            self.prepared = prepare_network(reference_network(), runtime=runtime, threads=threads)
        else:
            self.prepared = prepare_layer(REFERENCE_LAYER, runtime=runtime, threads=threads)
        _time(self.prepared, repeats=2, warmup=3, clock=clock)
        self.baseline_ms = baseline_ms if baseline_ms is not None else min(self.now_ms() for _ in range(3))

    def now_ms(self) -> float:
        """The reference's time now. Two untimed calls first: right after another program (a whole
        network above all) its first call runs ~45% slower, its second ~15% (cold caches)."""
        med, _, _ = _time(self.prepared, repeats=self.repeats, warmup=2, clock=self.clock)
        return max(med - self.overhead_ms, 1e-4)


def time_rounds(prepared: Sequence[Prepared], *, repeats: int = 10, rounds: int = 3, warmup: int = 2,
                on_round: Callable[[list[Entry]], None] | None = None,
                on_item: Callable[[], None] | None = None, clock: str = "wall",
                overhead_ms: float = 0.0,
                reference: Reference | Sequence[Reference | None] | None = None) -> list[Entry]:
    """Time every compiled function in ``rounds`` round-robin passes of ``repeats`` calls each.

    Within a pass the median rejects outliers. Across passes, spread over the whole run, the
    minimum of the medians is kept, because load from other processes only ever adds time and
    comes in spells longer than one pass over one op. With a ``reference``, each median is
    divided by the reference's time around it (the geometric mean of its readings just before
    and just after, so a load change during a long item is half seen) and the median of those
    normalized values is kept instead (the ratio's noise is two-sided). ``reference`` may also be
    one reference per item (ops and networks each with their own kind)."""
    best = [np.inf] * len(prepared)
    meds: list[list[float]] = [[] for _ in prepared]
    out: list[Entry] = []
    refs = list(reference) if isinstance(reference, Sequence) else [reference] * len(prepared)
    last: dict[int, float] = {}  # the latest reading of each reference: the one between two items serves both
    for r in range(rounds):
        for i, p in enumerate(prepared):
            ref = refs[i]
            if ref is not None and id(ref) not in last:
                last[id(ref)] = ref.now_ms()
            med, _, _ = _time(p, repeats=repeats, warmup=warmup if r == 0 else 1, clock=clock)
            med = max(med - overhead_ms, 1e-4)
            if ref is not None:
                ref_before, ref_after = last[id(ref)], ref.now_ms()
                med *= ref.baseline_ms / float(np.sqrt(ref_before * ref_after))
                last[id(ref)] = ref_after
            meds[i].append(med)
            best[i] = min(best[i], med)
            if on_item:
                on_item()
        def pick(i: int) -> float:
            return float(np.median(meds[i])) if refs[i] is not None else float(best[i])

        out = [Entry(pick(i), float(np.std(meds[i])), repeats * len(meds[i])) for i in range(len(prepared))]
        if on_round:
            on_round(out)
    return out


def time_layer(layer: Layer, lowered: LoweredNetwork | None = None, *, batch: int = 1, repeats: int = 10,
               warmup: int = 2, rounds: int = 1) -> Entry:
    return time_rounds([prepare_layer(layer, lowered, batch=batch)], repeats=repeats, rounds=rounds,
                       warmup=warmup)[0]


def time_network(lowered: LoweredNetwork, *, batch: int = 1, repeats: int = 10, warmup: int = 2,
                 rounds: int = 1, runtime: str = "xla", threads: int = 1) -> Entry:
    return time_rounds([prepare_network(lowered, batch=batch, runtime=runtime, threads=threads)], repeats=repeats,
                       rounds=rounds, warmup=warmup)[0]


# -- which signatures to measure --------------------------------------------------------------

def network_signatures(networks: Iterable[LoweredNetwork]) -> dict[str, tuple[Layer, LoweredNetwork]]:
    out: dict[str, tuple[Layer, LoweredNetwork]] = {}
    for low in networks:
        for layer in low.layers:
            out.setdefault(op_key(layer), (layer, low))
    return out


def space_signatures(space: Space, max_ops: int | None = None, *, base: Sequence[int] | None = None,
                     **overrides: Any) -> dict[str, tuple[Layer, LoweredNetwork]]:
    """Every op a block position can become: each position's own decision combinations, the
    other positions held at ``base`` (default: each decision's middle option). Positions are
    interleaved so a ``max_ops`` cap still covers all of them; stem, head and classifier first."""
    decs = space.decisions()
    if base is None:
        base = [len(d.choices) // 2 for d in decs]
    base = list(base)
    per_block: dict[int, list[int]] = {}
    for d in decs:
        per_block.setdefault(d.block, []).append(d.index)
    streams = []
    for b in sorted(per_block):
        idx = per_block[b]
        combos = itertools.product(*[range(len(decs[i].choices)) for i in idx])
        streams.append((idx, combos))
    out: dict[str, tuple[Layer, LoweredNetwork]] = {}
    low0 = lower(space.decode(base), **overrides)
    for layer in low0.layers:
        if layer.kind != "block":
            out.setdefault(op_key(layer), (layer, low0))
    live = list(streams)
    while live and (max_ops is None or len(out) < max_ops):
        nxt = []
        for idx, combos in live:
            picks = next(combos, None)
            if picks is None:
                continue
            nxt.append((idx, combos))
            vec = list(base)
            for i, p in zip(idx, picks, strict=True):
                vec[i] = p
            try:
                low = lower(space.decode(vec), **overrides)
            except MnasError:
                continue
            for layer in low.layers:
                if layer.kind == "block":
                    out.setdefault(op_key(layer), (layer, low))
                    if max_ops is not None and len(out) >= max_ops:
                        return out
        live = nxt
    return out


def new_table(device: str | None = None, batch: int = 1, *, repeats: int = 10, rounds: int = 3, clock: str = "wall",
              overhead_ms: float = 0.0, reference: Reference | None = None, runtime: str = "xla",
              threads: int = 1) -> Lut:
    if runtime == "litert":
        from . import litert

        info: dict[str, Any] = litert.device_info(threads)
        backend = "mnasdsl.backends.tflite: one converted .tflite per op, LiteRT interpreter"
        name = litert.runtime_name(threads)
    else:
        info = device_info()
        backend = "mnasdsl.backends.flax, jax.jit, eval mode"
        name = f"XLA/{info['platform']} via jax {info['jax']}"
    prov = {"source": "mnasdsl profile", "runtime_kind": runtime, **info,
            "statistic": "minimum over rounds of the median of repeats (stored as mean)",
            "clock": clock if clock == "wall" else "cpu (process CPU time, XLA single-threaded)",
            "call_overhead_ms_subtracted": round(overhead_ms, 5),
            "repeats": repeats, "rounds": rounds, "backend": backend, "weights": "device-resident"}
    if reference is not None:
        prov.update({"statistic": "median over rounds of (median of repeats / geometric mean of the reference just "
                                  "before and just after) x reference_ms",
                     "reference_op": op_key(REFERENCE_LAYER), "reference_ms": reference.baseline_ms})
    return Lut(device or f"{info['platform']}:{info['host']}", name, batch, "ms", prov, {}, None)

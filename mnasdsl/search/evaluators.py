"""Evaluators: the accuracy term of a trial (and, with ``--measure``, its measured latency).

An evaluator runs wherever the executor puts it (the driver, a spawned process, a Ray task),
so it is described by a small picklable :class:`EvalConfig` and receives the network as its
canonical spec text. Kinds:

- ``proxy``: train N epochs with :func:`mnasdsl.train.fit` (the paper's proxy task); accuracy is
  the validation accuracy.
- ``latency-only``: no model is built; accuracy is an analytic proxy (:func:`analytic_accuracy`),
  labelled as such in every output.
- ``zero-cost``: the gradient norm of the loss at initialization on a real batch, squashed into
  (0, 1); a proxy, compiled per network (the persistent XLA cache is on).
- ``MODULE:FUNCTION``: a user's function ``f(network) -> float | dict`` (``acc`` key), imported with the
  directory the search was started from first on the path, as ``python -m`` would (``EvalConfig.cwd``).
- ``synthetic``: the additive per-decision objective of the controller benchmark (known optimum).
"""

from __future__ import annotations

import importlib
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..cost import cost_lowered
from ..diagnostics import MnasError
from ..ir import Network
from ..lowering import lower
from ..parser import parse_units

KINDS = ("proxy", "latency-only", "zero-cost", "synthetic")
PROXY_LABELS = {
    "latency-only": "analytic proxy: 1 - exp(-(sqrt(MACs/1e8) + layers/20))",
    "zero-cost": "zero-cost proxy: gradient norm at init, g/(1+g)",
    "synthetic": "synthetic additive objective",
}


@dataclass(frozen=True)
class EvalConfig:
    kind: str = "latency-only"
    data: str = "digits"
    epochs: int = 2
    resolution: int | None = 32
    batch: int = 64
    seed: int = 0
    measure: bool = False
    measure_runtime: str = "xla"  # xla | litert
    threads: int | None = None
    cache_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # How the proxy trains: "fused" (one executable per network), "layerwise" (per-layer executables
    # reused across trials, see mnasdsl.train.layerwise) or "auto" (layerwise for short proxies).
    steps: str = "auto"
    # Where a MODULE:FUNCTION plug-in is looked for first: the driver's working directory, recorded here
    # because workers (spawned processes, Ray tasks) may start elsewhere and with another sys.path.
    cwd: str | None = None

    @property
    def label(self) -> str | None:
        """None when the accuracy is a real measurement, else what kind of proxy it is."""
        if ":" in self.kind:
            return None
        return PROXY_LABELS.get(self.kind)


def analytic_accuracy(macs: int, layers: int) -> float:
    """A monotone stand-in for accuracy in constraint-driven exploration without training:
    more multiply-adds and more layers never score lower. Not a prediction of real accuracy."""
    return 1.0 - math.exp(-(math.sqrt(max(macs, 0) / 1e8) + layers / 20.0))


def _cwd_on_path(cwd: str) -> None:
    """Put ``cwd`` first on the import path, as ``python -m`` does, so ``--evaluator myeval:f`` finds
    ``./myeval.py`` in the console script and in every worker. Idempotent: workers resolve per trial."""
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()


def _plugin(target: str, cwd: str | None = None) -> Callable[[Network], Any]:
    mod, _, fn = target.partition(":")
    if not mod or not fn:
        raise MnasError(f"evaluator plug-in must be MODULE:FUNCTION, got {target!r}")
    if cwd is not None:
        _cwd_on_path(cwd)
    try:
        f = getattr(importlib.import_module(mod), fn)
    except ModuleNotFoundError as e:
        missing = e.name is not None and (mod == e.name or mod.startswith(f"{e.name}."))
        where = f" (looked in {cwd}, then on sys.path)" if cwd and missing else ""
        raise MnasError(f"cannot load evaluator {target!r}: {e}{where}") from None
    except AttributeError as e:
        raise MnasError(f"cannot load evaluator {target!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a plug-in that fails to import is the user's error, not a crash
        raise MnasError(f"cannot load evaluator {target!r}: importing {mod} raised {type(e).__name__}: {e}") from None
    if not callable(f):
        raise MnasError(f"evaluator {target!r} is not callable")
    return f  # type: ignore[no-any-return]


def check_config(cfg: EvalConfig) -> None:
    """Fail fast in the driver, before any worker starts."""
    if cfg.kind not in KINDS and ":" not in cfg.kind:
        raise MnasError(f"unknown evaluator {cfg.kind!r} (choose from {', '.join(KINDS)} or MODULE:FUNCTION)")
    if ":" in cfg.kind:
        _plugin(cfg.kind, cfg.cwd)
    if cfg.kind == "proxy":
        _source(cfg.data)
    if cfg.epochs < 1:
        raise MnasError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.steps not in STEPS_FORMS:
        raise MnasError(f"unknown proxy step form {cfg.steps!r} (choose from {', '.join(STEPS_FORMS)})")


STEPS_FORMS = ("auto", "fused", "layerwise")
# Up to this many optimizer steps the proxy trains layer by layer: a fresh network's whole-network
# compile (7-10 s on 2 cores) outweighs the per-step cost of chaining per-layer executables below it.
LAYERWISE_MAX_STEPS = 1500


def steps_form(cfg: EvalConfig, src: Any) -> str:
    """The proxy's step form: cfg.steps, or for "auto" layerwise while the run is short and on one device."""
    if cfg.steps != "auto":
        return cfg.steps
    import jax

    steps = cfg.epochs * max(1, len(src.train) // max(1, cfg.batch))
    return "layerwise" if len(jax.local_devices()) == 1 and steps <= LAYERWISE_MAX_STEPS else "fused"


_SOURCES: dict[str, Any] = {}


def _source(data: str) -> Any:
    """The proxy data, opened once per process: every trial of a search reads the same images (and
    the bundled digits take 0.2 s to load and resize each time)."""
    from ..train import open_source

    if data not in _SOURCES:
        _SOURCES[data] = open_source(data)
    return _SOURCES[data]


_SETUP_DONE: set[str] = set()


def setup_worker(cfg: EvalConfig) -> None:
    """Per-process setup: thread limits and the persistent XLA compilation cache."""
    key = f"{cfg.threads}:{cfg.cache_dir}"
    if key in _SETUP_DONE:
        return
    _SETUP_DONE.add(key)
    if cfg.cache_dir:
        import jax

        jax.config.update("jax_compilation_cache_dir", cfg.cache_dir)
        # Low enough that per-layer executables (0.05-0.5 s each) are shared by every worker and run:
        # identical layers lower to identical programs, so they hit across processes.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.05)


def _network(spec: str) -> Network:
    (net,) = parse_units(spec)
    assert isinstance(net, Network)
    return net


def _zero_cost(net: Network, cfg: EvalConfig) -> float:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from ..backends.flax import build
    src = _source(cfg.data)
    net = net.scaled(classes=src.num_classes, resolution=cfg.resolution) if cfg.resolution else \
        net.scaled(classes=src.num_classes)
    h, w, c = net.input
    split = src.train
    n = min(cfg.batch, len(split), 32)
    rng = np.random.default_rng(cfg.seed)
    idx = rng.choice(len(split), size=n, replace=False)
    loaded = [(split.load(int(i), (h, w), c, None), int(split.labels[int(i)])) for i in idx]
    loaded = [(im, lab) for im, lab in loaded if im is not None]
    if not loaded:
        raise MnasError(f"no readable images in {src.name} for the zero-cost score")
    labels = np.asarray([lab for _, lab in loaded], np.int32)
    if steps_form(cfg, src) == "layerwise":  # per-layer executables shared with earlier trials
        return _zero_cost_layerwise(net, cfg, np.stack([im for im, _ in loaded]), labels)
    model = build(net, rngs=nnx.Rngs(cfg.seed))  # after the layerwise branch, which builds its own
    images = np.stack([im for im, _ in loaded]).astype(np.float32) / 255.0
    x, y = jnp.asarray(images), jnp.asarray(labels)

    def loss(m: Any) -> jax.Array:
        logits = m(x, train=True)  # batch statistics, as in training
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    # nnx.grad differentiates w.r.t. the parameters and lets BN update its running statistics.
    grads = nnx.jit(nnx.grad(loss))(model)
    g = float(jnp.sqrt(sum(jnp.sum(jnp.square(v)) for v in jax.tree.leaves(grads))))
    if not math.isfinite(g):
        raise MnasError("zero-cost score is not finite")
    return g / (1.0 + g)


def _zero_cost_layerwise(net: Network, cfg: EvalConfig, images: Any, labels: Any) -> float:
    """The zero-cost score from one layer-by-layer step: the same gradient (inputs scaled to 0..1,
    BN on batch statistics, dropout on) from executables that earlier trials already compiled."""
    import numpy as np

    from ..train.data import Batch
    from ..train.layerwise import LayerwiseTrainer

    c = net.input[2]
    n = len(labels)
    tr = LayerwiseTrainer(net, recipe="adam", batch=n, steps_per_epoch=1, epochs=1, seed=cfg.seed,
                          norm=(np.zeros(c, np.float32), np.full(c, 255.0, np.float32)), train_only=True)
    tr.step(Batch(np.asarray(images, np.uint8), labels, np.ones(n, np.float32)))
    import jax

    g = math.sqrt(sum(float(np.sum(np.square(np.asarray(v, np.float64))))
                      for v in jax.tree.leaves(jax.device_get(tr.last_grads))))
    if not math.isfinite(g):
        raise MnasError("zero-cost score is not finite")
    return g / (1.0 + g)


def evaluate(cfg: EvalConfig, spec: str, decisions: list[int] | None = None, network: Network | None = None,
             lowered: Any = None) -> dict[str, Any]:
    """Evaluate one trial; returns acc, params, macs, optional measured latency, timing. In the
    driver the already-built ``network``/``lowered`` skip re-parsing the spec text."""
    setup_worker(cfg)
    t0 = time.perf_counter()
    net = network if network is not None else _network(spec)
    low = lowered if lowered is not None else lower(net)
    c = cost_lowered(low)
    out: dict[str, Any] = {"params": c.params, "macs": c.macs,
                           "worker": f"{socket.gethostname()}:{os.getpid()}"}
    if cfg.kind == "latency-only":
        acc = analytic_accuracy(c.macs, len(low.blocks))
    elif cfg.kind == "synthetic":
        from .synthetic import score

        if decisions is None:
            raise MnasError("the synthetic evaluator needs the decision vector")
        acc = score(decisions, cfg.extra["table"])
    elif cfg.kind == "zero-cost":
        acc = _zero_cost(net, cfg)
    elif cfg.kind == "proxy":
        from ..train import fit

        src = _source(cfg.data)
        scaled = net.scaled(classes=src.num_classes, resolution=cfg.resolution) if cfg.resolution else \
            net.scaled(classes=src.num_classes)
        res = fit(scaled, src, epochs=cfg.epochs, batch=cfg.batch, recipe="adam", seed=cfg.seed, out=None,
                  steps_form=steps_form(cfg, src), final_eval_only=True)
        acc = float(res.val_acc)
        out["val_loss"] = float(res.val_loss)
    else:
        r = _plugin(cfg.kind, cfg.cwd)(net)
        if isinstance(r, dict):
            acc = float(r["acc"])
            if "latency_ms" in r:
                out["latency_ms"] = float(r["latency_ms"])
        else:
            acc = float(r)
    if not math.isfinite(acc):
        raise MnasError(f"evaluator returned a non-finite accuracy ({acc})")
    out["acc"] = acc
    if cfg.measure:
        from ..latency.profile import time_network

        out["latency_ms"] = float(time_network(low, batch=1, repeats=10, runtime=cfg.measure_runtime).mean)
    out["eval_s"] = time.perf_counter() - t0
    return out


def evaluate_safe(cfg: EvalConfig, spec: str, decisions: list[int] | None = None, network: Network | None = None,
                  lowered: Any = None) -> tuple[str, Any]:
    """Never raises: a failing trial is recorded with its error and the search goes on."""
    try:
        return "ok", evaluate(cfg, spec, decisions, network, lowered)
    except MnasError as e:
        return "error", "; ".join(d.message for d in e.diagnostics)
    except MemoryError:
        return "error", "out of memory"
    except Exception as e:  # a user's plug-in or a backend failure must not stop the search
        return "error", f"{type(e).__name__}: {e}"

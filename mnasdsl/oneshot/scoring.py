"""Scoring subnets of a supernet: BN recalibration on a few training batches, then validation accuracy.

Each subnet gets its own BN statistics (Once-for-All's recalibration): the average of the batch
statistics of a fixed set of training batches, computed by the subnet itself. Two executables serve
every subnet (one recalibrates over all the batches at once, one evaluates a batch), because the
subnet is an input, so scoring thousands of subnets compiles nothing new.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..train.data import Batch
from ..train.loop import _eval_metrics, _finish
from . import model as M
from .plan import SharedSpace

CACHED_PLANS = 4  # plans whose compiled scoring functions a process keeps
VAL_CACHE_BYTES = 512 << 20  # validation images kept on the device between subnets up to this size


@dataclass(frozen=True)
class SubnetScore:
    """A subnet's supernet accuracy on the validation split (after its own BN recalibration)."""

    indices: tuple[int, ...]
    acc: float
    top5: float
    loss: float
    images: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"decisions": list(self.indices), "acc": self.acc, "top5": self.top5, "loss": self.loss,
                "images": self.images, "seconds": self.seconds}


class _Compiled:
    """The two jitted scoring functions of one (plan, normalization, lowering); ``traces`` counts traces."""

    def __init__(self, plan: Any, norm: tuple[tuple[float, ...], tuple[float, ...]], impl: str) -> None:
        self.traces: dict[str, int] = {"recalibrate": 0, "evaluate": 0}
        traces = self.traces
        mean, std = (np.asarray(a, np.float32) for a in norm)

        def normalize(images: jax.Array) -> jax.Array:
            return (images.astype(jnp.float32) - mean) / std

        def recalibrate(params: Any, stats: Any, images: jax.Array, cfg: Any) -> Any:
            traces["recalibrate"] += 1

            def one(total: Any, x: jax.Array) -> tuple[Any, None]:
                _, batch_stats = M.forward(plan, params, stats, normalize(x), cfg, train=True, impl=impl,
                                           momentum=0.0)
                return jax.tree.map(jnp.add, total, batch_stats), None

            zero = jax.tree.map(jnp.zeros_like, stats)
            total, _ = lax.scan(one, zero, images)
            n = jnp.float32(images.shape[0])
            return jax.tree.map(lambda t: t / n, total)

        def evaluate(params: Any, stats: Any, images: jax.Array, labels: jax.Array, mask: jax.Array,
                     cfg: Any) -> dict[str, jax.Array]:
            traces["evaluate"] += 1
            logits, _ = M.forward(plan, params, stats, normalize(images), cfg, train=False, impl=impl)
            return _eval_metrics(logits, labels, mask)

        self.recalibrate = jax.jit(recalibrate)
        self.evaluate = jax.jit(evaluate)


_COMPILED: OrderedDict[Any, _Compiled] = OrderedDict()


def compiled(plan: Any, norm: tuple[Any, Any], impl: str) -> _Compiled:
    """The scoring functions of a plan, kept per process (a few plans): a second evaluator of the same
    supernet, or a training run and the evaluations after it, reuse the executables."""
    key = (plan, tuple(tuple(float(v) for v in np.ravel(a)) for a in norm), impl)
    hit = _COMPILED.get(key)
    if hit is None:
        hit = _COMPILED[key] = _Compiled(plan, key[1], impl)
        while len(_COMPILED) > CACHED_PLANS:
            _COMPILED.popitem(last=False)
    _COMPILED.move_to_end(key)
    return hit


class Scorer:
    """Recalibrates and evaluates subnets of one plan with one executable each (whatever the subnet)."""

    def __init__(self, shared: SharedSpace, norm: tuple[np.ndarray, np.ndarray], impl: str,
                 recal: Sequence[Batch], val: Callable[[], Any]) -> None:
        self.shared, self.plan = shared, shared.plan
        self._fns = compiled(self.plan, norm, impl)
        self.recal_images = jax.device_put(np.stack([b.images for b in recal])) if recal else None
        self._val_source = val
        self._val_cache: list[tuple[jax.Array, jax.Array, jax.Array]] | None = None

    @property
    def traces(self) -> dict[str, int]:
        return dict(self._fns.traces)

    def _val(self) -> Any:
        if self._val_cache is not None:
            return self._val_cache
        batches = [(b.images, b.labels, b.mask) for b in self._val_source()]
        size = sum(b[0].nbytes for b in batches)
        put = [tuple(jax.device_put(a) for a in b) for b in batches]
        if size <= VAL_CACHE_BYTES:
            self._val_cache = put  # type: ignore[assignment]
        return put

    def recalibrate(self, params: Any, stats: Any, cfg: dict[str, np.ndarray]) -> Any:
        """The subnet's BN statistics: the mean over the recalibration batches of its batch statistics."""
        if self.recal_images is None:
            return stats
        return self._fns.recalibrate(params, stats, self.recal_images, cfg)

    def evaluate(self, params: Any, stats: Any, cfg: dict[str, np.ndarray]) -> dict[str, float]:
        totals = [self._fns.evaluate(params, stats, x, y, m, cfg) for x, y, m in self._val()]
        return _finish(totals)

    def score(self, params: Any, stats: Any, indices: Sequence[int]) -> tuple[SubnetScore, Any]:
        """Recalibrate and evaluate subnet ``indices``: its score and its recalibrated statistics."""
        t0 = time.perf_counter()
        cfg = self.shared.config(indices)
        bs = self.recalibrate(params, stats, cfg)
        m = self.evaluate(params, bs, cfg)
        return SubnetScore(tuple(int(i) for i in indices), m["acc"], m["top5"], m["loss"], int(m["count"]),
                           time.perf_counter() - t0), bs

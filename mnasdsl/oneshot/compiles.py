"""Counting XLA executables: the promise that sampling subnets never recompiles, made measurable.

JAX reports every backend compile (and every executable loaded from the persistent cache instead) to
its monitoring listeners; a :class:`CompileCounter` counts those that happen while it is open.
"""

from __future__ import annotations

import threading
from typing import Any

_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"
_lock = threading.Lock()
_totals = {"compiled": 0, "cached": 0}
_registered = False


def _on_duration(event: str, _secs: float, **_kw: Any) -> None:
    if event == _COMPILE:
        with _lock:
            _totals["compiled"] += 1


def _on_event(event: str, **_kw: Any) -> None:
    if event == _CACHE_HIT:
        with _lock:
            _totals["cached"] += 1


def _register() -> None:
    global _registered
    with _lock:
        if _registered:
            return
        import jax

        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        jax.monitoring.register_event_listener(_on_event)
        _registered = True


class CompileCounter:
    """Executables built (compiled, or loaded from the persistent cache) since the counter was made."""

    def __init__(self) -> None:
        _register()
        with _lock:
            self._start = dict(_totals)

    def counts(self) -> dict[str, int]:
        with _lock:
            return {k: _totals[k] - self._start[k] for k in _totals}

    @property
    def total(self) -> int:
        c = self.counts()
        return c["compiled"] + c["cached"]

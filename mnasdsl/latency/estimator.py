"""Latency estimates from a lowered network: a table entry per layer when present, else the model.

Only the lowered Layer list is read. Every distinct Layer is priced once and cached (its final,
calibrated milliseconds), so an estimate after warm-up is one dict lookup per layer; that keeps
estimation far cheaper than the lowering that precedes it in a search loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..diagnostics import MnasError
from ..ir import Network
from ..lowering import Layer, LoweredNetwork, lower
from .features import N_FEATURES, layer_features
from .lut import Calibration, Lut, key_variants, op_key, parse_lut, read_lut

_CACHE_LIMIT = 200_000  # distinct layers kept priced; a search space's reachable set is far smaller

# The paper's objective ACC * (LAT/T)^w, w = alpha if LAT <= T else beta (Tan et al. 2019, eq. 2).
SOFT = (-0.07, -0.07)
HARD = (0.0, -1.0)


class LayerEstimate(NamedTuple):
    name: str
    key: str
    ms: float
    source: str  # "lut" | "model"


class Estimate(NamedTuple):
    ms: float
    coverage: float  # fraction of `ms` that came from table entries
    layers: tuple[LayerEstimate, ...]
    overhead_ms: float  # the per-network calibration term, not attributed to a layer

    def to_json(self) -> dict[str, object]:
        return {"ms": self.ms, "coverage": self.coverage, "overhead_ms": self.overhead_ms,
                "layers": [lay._asdict() for lay in self.layers]}


def objective_factor(latency_ms: float, target_ms: float, alpha: float, beta: float) -> float:
    """(LAT/T)^w of the MnasNet reward."""
    w = alpha if latency_ms <= target_ms else beta
    try:
        f = float((latency_ms / target_ms) ** w)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):  # far from T with a large |w|: no number to rank by
        raise MnasError(f"the objective factor (LAT/T)^w = ({latency_ms:g} ms / {target_ms:g} ms)^{w:g} is not finite")
    return f


def available_devices() -> list[str]:
    root = resources.files("mnasdsl.latency") / "devices"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def load_device(name: str) -> Lut:
    """A built-in device model shipped with mnasdsl (``pixel1``)."""
    names = available_devices()
    if name not in names:
        raise MnasError(f"unknown device {name!r} (built in: {', '.join(names) or 'none'}); "
                        "use --lut FILE for your own table")
    res = resources.files("mnasdsl.latency") / "devices" / f"{name}.json"
    return parse_lut(res.read_text(encoding="utf-8"), f"<built-in device {name}>")


def load_table(device: str | None = None, lut: str | Path | None = None) -> Lut:
    if lut is not None:
        return read_lut(lut)
    return load_device(device or "pixel1")


class Estimator:
    """Prices lowered networks against one LUT (entries + optional fallback model)."""

    def __init__(self, lut: Lut) -> None:
        self.lut = lut
        m = lut.model
        self.calibration = m.calibration if m is not None else Calibration()
        self._coef = np.array(m.coef, float) if m is not None else None
        self._ms: dict[Layer, float] = {}
        self._info: dict[Layer, tuple[str, str]] = {}

    # -- per layer -------------------------------------------------------------------------
    def _price(self, layer: Layer) -> float:
        cal = self.calibration
        feats = layer_features(layer)
        for k in key_variants(layer, self.lut.act_equivalent):
            e = self.lut.entries.get(k)
            if e is not None:
                base, src, key = e.mean, "lut", k
                break
        else:
            key = op_key(layer)
            if self._coef is None:
                raise MnasError(f"the latency table for {self.lut.device} has no entry for {layer.name} ({key}) and "
                                "no fallback model; fit one with `mnasdsl lut fit`")
            base, src = float(np.dot(self._coef, feats)), "model"
        ms = cal.scale * base + cal.per_op_ms * feats[N_FEATURES - 1]
        if len(self._ms) >= _CACHE_LIMIT:
            self._ms.clear()
            self._info.clear()
        self._ms[layer] = ms
        self._info[layer] = (key, src)
        return ms

    def layer_ms(self, layer: Layer) -> float:
        ms = self._ms.get(layer)
        return ms if ms is not None else self._price(layer)

    # -- per network -----------------------------------------------------------------------
    @staticmethod
    def _lowered(network: Network | LoweredNetwork, **overrides: object) -> LoweredNetwork:
        if isinstance(network, LoweredNetwork):
            return network
        return lower(network, **overrides)  # type: ignore[arg-type]

    def estimate_ms(self, network: Network | LoweredNetwork) -> float:
        """Total milliseconds only: the fast path for search loops."""
        layers = network.layers if isinstance(network, LoweredNetwork) else lower(network).layers
        try:
            return sum(map(self._ms.__getitem__, layers)) + self.calibration.per_network_ms
        except KeyError:
            return sum(map(self.layer_ms, layers)) + self.calibration.per_network_ms

    def estimate_batch(self, networks: Sequence[LoweredNetwork]) -> np.ndarray:
        """Totals of many lowered networks at once (one flat lookup and a segmented sum)."""
        if not networks:
            return np.zeros(0)
        flat: list[Layer] = []
        starts = np.empty(len(networks), dtype=np.intp)
        for i, low in enumerate(networks):
            starts[i] = len(flat)
            flat.extend(low.layers)
        try:
            vals = np.fromiter(map(self._ms.__getitem__, flat), float, len(flat))
        except KeyError:
            vals = np.fromiter(map(self.layer_ms, flat), float, len(flat))
        return np.add.reduceat(vals, starts) + self.calibration.per_network_ms

    def estimate(self, network: Network | LoweredNetwork, **overrides: object) -> Estimate:
        """Total, per-layer breakdown with the source of each number, and table coverage."""
        low = self._lowered(network, **overrides)
        rows = []
        for layer in low.layers:
            ms = self.layer_ms(layer)
            key, src = self._info[layer]
            rows.append(LayerEstimate(layer.name, key, ms, src))
        over = self.calibration.per_network_ms
        total = sum(r.ms for r in rows) + over
        from_lut = sum(r.ms for r in rows if r.source == "lut")
        return Estimate(total, from_lut / total if total > 0 else 0.0, tuple(rows), over)


def estimate(network: Network | LoweredNetwork, *, device: str = "pixel1", lut: Lut | None = None,
             **overrides: object) -> Estimate:
    """One-off estimate (builds an Estimator; keep one around in loops)."""
    return Estimator(lut or load_device(device)).estimate(network, **overrides)

"""Latency: per-op lookup tables, a fitted physical fallback model, built-in devices, profiling.

The estimator reads only lowered layers (``mnasdsl.lower``); see ``lut`` for the file format.
"""

from __future__ import annotations

from .estimator import (
    HARD,
    SOFT,
    Estimate,
    Estimator,
    LayerEstimate,
    available_devices,
    estimate,
    load_device,
    load_table,
    objective_factor,
)
from .features import FEATURES, layer_features
from .lut import Calibration, Entry, Lut, Model, import_proxylessnas, op_key, parse_lut, read_lut

__all__ = [
    "FEATURES", "HARD", "SOFT", "Calibration", "Entry", "Estimate", "Estimator", "LayerEstimate", "Lut", "Model",
    "available_devices", "estimate", "import_proxylessnas", "layer_features", "load_device", "load_table",
    "objective_factor", "op_key", "parse_lut", "read_lut",
]

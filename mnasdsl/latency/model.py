"""Fitting the fallback model: non-negative least squares weighted for relative error.

Non-negativity keeps every coefficient a physical rate (ms per MAC, per element, per launch),
which is what lets the model extrapolate to op kinds it was never fitted on; weighting rows by
1/y makes a 1 ms op and a 10 ms op count alike, as the latency objective (a ratio) does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import nnls

from ..diagnostics import MnasError
from ..lowering import Layer, LoweredNetwork
from .features import N_FEATURES, layer_features
from .lut import Calibration, Lut, Model, layer_for_key

CALIBRATION_TERMS = ("scale", "per_op_ms", "per_network_ms")
MIN_FIT_MS = 1e-6  # a nanosecond: below any real op, and far from where 1/y overflows


def nnls_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin_{c >= 0} sum(((x c - y) / y)^2)."""
    y = np.asarray(y, float)
    a = np.asarray(x, float) / y[:, None]
    scale = np.maximum(np.abs(a).max(axis=0), 1e-30)  # column scaling: better conditioned NNLS
    c, _ = nnls(a / scale, np.ones(len(y)), maxiter=50 * a.shape[1])
    return c / scale


def mape(pred: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> float:
    """Mean absolute percentage error, in percent."""
    p, t = np.asarray(pred, float), np.asarray(true, float)
    return float(np.mean(np.abs(p - t) / t) * 100)


def fit_ops(lut: Lut) -> np.ndarray:
    """Per-op coefficients from the table's own entries."""
    if not lut.entries:
        raise ValueError("the table has no entries to fit on")
    keys = sorted(lut.entries)
    small = [k for k in keys if not lut.entries[k].mean >= MIN_FIT_MS]
    if small:  # relative error divides by the time
        raise MnasError(f"entry {small[0]!r}: {lut.entries[small[0]].mean:g} ms; fitting needs times of at least "
                        f"{MIN_FIT_MS:g} ms ({len(small)} entries below)")
    x = np.array([layer_features(layer_for_key(k)) for k in keys])
    y = np.array([lut.entries[k].mean for k in keys])
    return nnls_relative(x, y)


def network_terms(layer_ms: Sequence[float], layers: Sequence[Layer]) -> tuple[float, float]:
    """(sum of per-layer ms, kernel launches) of one network: the calibration regressors."""
    return float(sum(layer_ms)), float(sum(layer_features(ly)[N_FEATURES - 1] for ly in layers))


def fit_calibration(sums: np.ndarray, ops: np.ndarray, measured: np.ndarray,
                    terms: Sequence[str] = CALIBRATION_TERMS) -> Calibration:
    """A few global terms on whole-network measurements (never per-op coefficients, so a handful
    of networks cannot overfit the per-op physics)."""
    cols = {"scale": sums, "per_op_ms": ops, "per_network_ms": np.ones_like(sums)}
    unknown = set(terms) - set(cols)
    if unknown:
        raise ValueError(f"unknown calibration terms {sorted(unknown)}")
    x = np.stack([cols[t] for t in terms], axis=1)
    c = nnls_relative(x, measured)
    vals = dict(zip(terms, (float(v) for v in c), strict=True))
    return Calibration(vals.get("scale", 1.0), vals.get("per_op_ms", 0.0), vals.get("per_network_ms", 0.0))


def apply_calibration(cal: Calibration, sums: np.ndarray, ops: np.ndarray) -> np.ndarray:
    return cal.scale * sums + cal.per_op_ms * ops + cal.per_network_ms


def loo_calibration(sums: np.ndarray, ops: np.ndarray, measured: np.ndarray,
                    terms: Sequence[str] = CALIBRATION_TERMS) -> np.ndarray:
    """Leave-one-out predictions: each network predicted by a calibration fitted without it."""
    out = np.empty_like(measured, dtype=float)
    for i in range(len(measured)):
        keep = np.arange(len(measured)) != i
        cal = fit_calibration(sums[keep], ops[keep], measured[keep], terms)
        out[i] = apply_calibration(cal, sums[i:i + 1], ops[i:i + 1])[0]
    return out


def uncalibrated_layer_ms(lut: Lut, coef: np.ndarray, layer: Layer) -> tuple[float, str]:
    """A layer's time before calibration: its table entry if any, else the model."""
    from .lut import key_variants

    for k in key_variants(layer, lut.act_equivalent):
        e = lut.entries.get(k)
        if e is not None:
            return e.mean, "lut"
    return float(np.dot(coef, layer_features(layer))), "model"


def fit_lut(lut: Lut, networks: Sequence[tuple[LoweredNetwork, float]] = (), *,
            terms: Sequence[str] = CALIBRATION_TERMS, use_entries: bool = True, note: str = "") -> Lut:
    """Fit per-op coefficients on the entries, then (given whole-network measurements) the global
    calibration; record fit quality. ``use_entries=False`` calibrates the model alone, for a
    device shipped as coefficients without its table."""
    coef = fit_ops(lut)
    keys = sorted(lut.entries)
    x = np.array([layer_features(layer_for_key(k)) for k in keys])
    y = np.array([lut.entries[k].mean for k in keys])
    fit: dict[str, object] = {"entries": len(keys), "entries_mape_pct": round(mape(x @ coef, y), 3)}
    cal = Calibration()
    if networks:
        bare = lut.replace(entries={}) if not use_entries else lut
        sums, ops = [], []
        for low, _ in networks:
            ms = [uncalibrated_layer_ms(bare, coef, ly)[0] for ly in low.layers]
            s, o = network_terms(ms, low.layers)
            sums.append(s)
            ops.append(o)
        s_arr, o_arr = np.array(sums), np.array(ops)
        t = np.array([m for _, m in networks], float)
        cal = fit_calibration(s_arr, o_arr, t, terms)
        pred = apply_calibration(cal, s_arr, o_arr)
        fit.update({
            "networks": len(networks), "calibration_terms": list(terms),
            "networks_mape_pct_uncalibrated": round(mape(s_arr, t), 3),
            "networks_mape_pct_in_sample": round(mape(pred, t), 3),
        })
        if len(networks) > len(terms) + 1:
            fit["networks_mape_pct_leave_one_out"] = round(mape(loo_calibration(s_arr, o_arr, t, terms), t), 3)
    if note:
        fit["note"] = note
    return lut.replace(model=Model(tuple(float(c) for c in coef), cal, fit))

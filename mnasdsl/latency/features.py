"""Physical cost features of one lowered layer, shared by every op kind.

The fallback model is linear in these, so an op kind a lookup table never measured (SE, a
regular-conv block, a pool skip, an unseen width or resolution) is priced by the same
per-multiply-add, per-element and per-kernel-launch rates that the measured ops determined.
"""

from __future__ import annotations

from collections.abc import Callable

from ..lowering import Layer

# Order is the order of model coefficients in a LUT file; changing it is a format change.
FEATURES: tuple[str, ...] = (
    "dense_macs_m",  # pointwise / regular-conv / FC multiply-adds (GEMM work), millions
    "dw3_macs_m",  # depthwise multiply-adds by kernel size (k<=3, 5, >=7): efficiency differs
    "dw5_macs_m",
    "dw7_macs_m",
    "act_elems_m",  # activation elements read + written (incl. im2col, SE pool/scale, residual add)
    "weights_m",  # weights read once per inference (dominates small-spatial GEMMs and the FC)
    "ops",  # kernel launches: the per-op interpreter/dispatch overhead
)
N_FEATURES = len(FEATURES)


def _dw_slot(k: int) -> int:
    """Depthwise kernels are bucketed to the measured sizes; MACs already scale with k*k."""
    if k <= 3:
        return 1
    if k <= 5:
        return 2
    return 3


class _Acc:
    """Running totals of one layer's features."""

    __slots__ = ("dense", "elems", "weights", "ops", "dw")

    def __init__(self) -> None:
        self.dense = self.elems = self.weights = 0.0
        self.ops = 0
        self.dw = [0.0, 0.0, 0.0]  # depthwise MACs (millions) by kernel bucket

    def depthwise(self, k: int, macs: float) -> None:
        self.dw[_dw_slot(k) - 1] += macs / 1e6


def _cv(layer: Layer, a: _Acc) -> None:
    """Regular conv: im2col (k>1) then GEMM."""
    (hi, wi, cin), (ho, wo, cout), k = layer.in_shape, layer.out_shape, layer.kernel
    pin, pout = hi * wi, ho * wo
    a.dense += pout * k * k * cin * cout
    a.elems += pin * cin + pout * cout + (2 * pout * k * k * cin if k > 1 else 0)
    a.weights += k * k * cin * cout
    a.ops += 1


def _dw_project(layer: Layer, a: _Acc) -> None:
    """Depthwise k x k over ``mid`` channels, then the 1x1 projection."""
    (ho, wo, cout), k, mid = layer.out_shape, layer.kernel, layer.mid
    pout = ho * wo
    a.depthwise(k, pout * k * k * mid)
    a.elems += 2 * pout * mid  # depthwise output written and read by the projection
    a.weights += k * k * mid
    a.dense += pout * mid * cout
    a.elems += pout * cout
    a.weights += mid * cout
    a.ops += 2


def _ds(layer: Layer, a: _Acc) -> None:
    hi, wi, cin = layer.in_shape
    a.elems += hi * wi * cin
    _dw_project(layer, a)


def _mb(layer: Layer, a: _Acc) -> None:
    """1x1 expansion, then as ds over the expanded width."""
    (hi, wi, cin), mid = layer.in_shape, layer.mid
    pin = hi * wi
    a.dense += pin * cin * mid
    a.elems += pin * cin + 2 * pin * mid  # read input, write + re-read the expansion
    a.weights += cin * mid
    a.ops += 1
    _dw_project(layer, a)


def _er(layer: Layer, a: _Acc) -> None:
    """Fused MBConv: a k x k regular conv to the expanded width (im2col for k>1), then the 1x1 projection."""
    (hi, wi, cin), (ho, wo, cout), k, mid = layer.in_shape, layer.out_shape, layer.kernel, layer.mid
    pin, pout = hi * wi, ho * wo
    a.dense += pout * k * k * cin * mid
    a.elems += pin * cin + 2 * pout * mid + (2 * pout * k * k * cin if k > 1 else 0)
    a.weights += k * k * cin * mid
    a.dense += pout * mid * cout
    a.elems += pout * cout
    a.weights += mid * cout
    a.ops += 2


# One entry per registered op (mnasdsl.ops): the features of its own convs; SE, skips shared below.
FEATURE_FNS: dict[str, Callable[[Layer, _Acc], None]] = {"cv": _cv, "ds": _ds, "mb": _mb, "er": _er}


def layer_features(layer: Layer) -> list[float]:
    """The feature vector of one layer (see FEATURES), in the units of the coefficients."""
    hi, wi, cin = layer.in_shape
    ho, wo, cout = layer.out_shape
    pin, pout = hi * wi, ho * wo
    a = _Acc()
    if layer.op == "fc":  # global average pool + FC (the classifier, a pooled head)
        a.dense += cin * cout
        a.elems += pin * cin + cin + cout
        a.weights += cin * cout
        a.ops += 2
    else:
        FEATURE_FNS[layer.op](layer, a)
    dense, elems, weights, ops = a.dense, a.elems, a.weights, a.ops
    if layer.se:  # pool (read), two tiny FCs, gate multiply (read + write) over the SE'd tensor
        ch = layer.mid
        elems += 3 * pout * ch
        dense += 2 * ch * layer.se
        weights += 2 * ch * layer.se
        ops += 4
    if layer.skip == "identity":
        elems += 2 * pout * cout
        ops += 1
    elif layer.skip == "pool":
        if layer.stride != (1, 1):
            elems += pin * cin + pout * cin
            ops += 1
        if layer.pool_proj:
            dense += pout * cin * cout
            elems += pout * cin + pout * cout
            weights += cin * cout
            ops += 1
        elems += 2 * pout * cout
        ops += 1
    f = [0.0] * N_FEATURES
    f[1:4] = a.dw
    f[0] = dense / 1e6
    f[4] = elems / 1e6
    f[5] = weights / 1e6
    f[6] = float(ops)
    return f


def layer_ops(layer: Layer) -> int:
    """Kernel launches of a layer (the `ops` feature), for per-op calibration terms."""
    return int(layer_features(layer)[6])

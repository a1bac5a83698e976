"""Physical cost features of one lowered layer, shared by every op kind.

The fallback model is linear in these, so an op kind a lookup table never measured (SE, a
regular-conv block, a pool skip, an unseen width or resolution) is priced by the same
per-multiply-add, per-element and per-kernel-launch rates that the measured ops determined.
"""

from __future__ import annotations

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


def layer_features(layer: Layer) -> list[float]:
    """The feature vector of one layer (see FEATURES), in the units of the coefficients."""
    f = [0.0] * N_FEATURES
    hi, wi, cin = layer.in_shape
    ho, wo, cout = layer.out_shape
    k = layer.kernel
    pin, pout = hi * wi, ho * wo
    dense = elems = weights = 0.0
    ops = 0
    if layer.kind == "classifier":  # global average pool + FC
        dense += cin * cout
        elems += pin * cin + cin + cout
        weights += cin * cout
        ops += 2
    elif layer.op == "cv":  # regular conv: im2col (k>1) then GEMM
        dense += pout * k * k * cin * cout
        elems += pin * cin + pout * cout + (2 * pout * k * k * cin if k > 1 else 0)
        weights += k * k * cin * cout
        ops += 1
    else:  # ds / mb: [1x1 expand] -> depthwise -> 1x1 project
        mid = layer.mid
        if layer.op == "mb":
            dense += pin * cin * mid
            elems += pin * cin + 2 * pin * mid  # read input, write + re-read the expansion
            weights += cin * mid
            ops += 1
        else:
            elems += pin * cin
        f[_dw_slot(k)] = pout * k * k * mid / 1e6
        elems += 2 * pout * mid  # depthwise output written and read by the projection
        weights += k * k * mid
        dense += pout * mid * cout
        elems += pout * cout
        weights += mid * cout
        ops += 2
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
    f[0] = dense / 1e6
    f[4] = elems / 1e6
    f[5] = weights / 1e6
    f[6] = float(ops)
    return f


def layer_ops(layer: Layer) -> int:
    """Kernel launches of a layer (the `ops` feature), for per-op calibration terms."""
    return int(layer_features(layer)[6])

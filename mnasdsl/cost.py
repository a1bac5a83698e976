"""The cost model: parameters and multiply-adds per lowered layer.

Conventions (those of the published counts): params are all trainable weights, BN scale and
bias included, running statistics excluded; MACs are the multiply-adds of every conv and FC
(SE's two 1x1 convs included) plus the SE gate's H*W*C multiplies; BN, activations, pooling
and residual adds are free.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from .ir import Network
from .lowering import Layer, LoweredNetwork, lower


class LayerCost(NamedTuple):
    name: str
    params: int
    macs: int


class Cost(NamedTuple):
    params: int
    macs: int
    layers: tuple[LayerCost, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "params": self.params,
            "macs": self.macs,
            "layers": [{"name": c.name, "params": c.params, "macs": c.macs} for c in self.layers],
        }


def _cv(layer: Layer) -> tuple[int, int]:
    """Regular k x k conv + BN."""
    (_, _, cin), (ho, wo, cout), k = layer.in_shape, layer.out_shape, layer.kernel
    return k * k * cin * cout + 2 * cout, ho * wo * k * k * cin * cout


def _ds(layer: Layer) -> tuple[int, int]:
    """Depthwise k x k + BN, pointwise 1x1 + BN."""
    (_, _, cin), (ho, wo, cout), k = layer.in_shape, layer.out_shape, layer.kernel
    return k * k * cin + 2 * cin + cin * cout + 2 * cout, ho * wo * (k * k * cin + cin * cout)


def _mb(layer: Layer) -> tuple[int, int]:
    """1x1 expansion + BN, depthwise k x k + BN, 1x1 projection + BN."""
    (hi, wi, cin), (ho, wo, cout), k, mid = layer.in_shape, layer.out_shape, layer.kernel, layer.mid
    params = cin * mid + 2 * mid + k * k * mid + 2 * mid + mid * cout + 2 * cout
    return params, hi * wi * cin * mid + ho * wo * (k * k * mid + mid * cout)


def _er(layer: Layer) -> tuple[int, int]:
    """k x k expansion conv + BN (strided), 1x1 projection + BN."""
    (_, _, cin), (ho, wo, cout), k, mid = layer.in_shape, layer.out_shape, layer.kernel, layer.mid
    return k * k * cin * mid + 2 * mid + mid * cout + 2 * cout, ho * wo * (k * k * cin * mid + mid * cout)


# The op's own convs (SE and the pool skip's projection are shared, below). One entry per registered op.
COST: dict[str, Callable[[Layer], tuple[int, int]]] = {"cv": _cv, "ds": _ds, "mb": _mb, "er": _er}


def layer_cost(layer: Layer) -> tuple[int, int]:
    """(params, macs) of one lowered layer."""
    if layer.op == "fc":  # global pool + dense with bias: the classifier, MobileNetV3's pooled head
        cin, cout = layer.in_shape[2], layer.out_shape[2]
        return cin * cout + cout, cin * cout
    params, macs = COST[layer.op](layer)
    ho, wo, cout = layer.out_shape
    cin = layer.in_shape[2]
    if layer.se:
        ch, r = layer.mid, layer.se
        params += ch * r + r + r * ch + ch
        macs += 2 * ch * r + ho * wo * ch
    if layer.pool_proj:
        params += cin * cout + 2 * cout
        macs += ho * wo * cin * cout
    return params, macs


def cost_lowered(lowered: LoweredNetwork) -> Cost:
    rows = []
    tp = tm = 0
    new = tuple.__new__
    for layer in lowered.layers:
        p, m = layer_cost(layer)
        tp += p
        tm += m
        rows.append(new(LayerCost, (layer.name, p, m)))
    return Cost(tp, tm, tuple(rows))


def cost(network: Network | LoweredNetwork, **overrides: object) -> Cost:
    """Params and multiply-adds of a network, total and per layer."""
    lowered = network if isinstance(network, LoweredNetwork) else lower(network, **overrides)  # type: ignore[arg-type]
    return cost_lowered(lowered)

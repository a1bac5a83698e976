"""The cost model: parameters and multiply-adds per lowered layer.

Conventions (those of the published counts): params are all trainable weights, BN scale and
bias included, running statistics excluded; MACs are the multiply-adds of every conv and FC
(SE's two 1x1 convs included) plus the SE gate's H*W*C multiplies; BN, activations, pooling
and residual adds are free.
"""

from __future__ import annotations

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


def layer_cost(layer: Layer) -> tuple[int, int]:
    """(params, macs) of one lowered layer."""
    hi, wi, cin = layer.in_shape
    ho, wo, cout = layer.out_shape
    k = layer.kernel
    if layer.kind == "classifier":
        return cin * cout + cout, cin * cout
    if layer.op == "cv":
        params = k * k * cin * cout + 2 * cout
        macs = ho * wo * k * k * cin * cout
    elif layer.op == "ds":
        params = k * k * cin + 2 * cin + cin * cout + 2 * cout
        macs = ho * wo * (k * k * cin + cin * cout)
    else:  # mb
        mid = layer.mid
        params = cin * mid + 2 * mid + k * k * mid + 2 * mid + mid * cout + 2 * cout
        macs = hi * wi * cin * mid + ho * wo * (k * k * mid + mid * cout)
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

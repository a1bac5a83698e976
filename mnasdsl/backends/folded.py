"""The inference form of a network: batch norm folded into its conv, plain numpy arrays.

Every deployment exporter (TFLite, ONNX) reads this and nothing else, so BN folding, the
depthwise-as-grouped-conv convention and the explicit padding are decided once. It is built from
the Flax module's variables (trained, imported or fresh) and the lowered layers it was made from.

A folded conv computes ``act(conv(x, kernel, stride, pads, groups) + bias)`` with ``kernel`` in
HWIO layout (``I`` = input channels / groups); a depthwise conv has ``groups`` = channels and
kernel ``(k, k, 1, C)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..lowering import Layer, LoweredNetwork
from .flax_ops import conv_pads, same_pads

Pads = tuple[tuple[int, int], tuple[int, int]]


@dataclass(frozen=True)
class FoldedConv:
    kernel: np.ndarray  # (kh, kw, cin // groups, cout), float32
    bias: np.ndarray  # (cout,)
    stride: tuple[int, int]
    pads: Pads  # explicit (before, after) for H and W
    groups: int
    act: str  # relu | relu6 | swish | hswish | none
    part: str = "conv"  # the Flax slot it was folded from (expand, dw, conv, project, pool_proj): its name

    @property
    def depthwise(self) -> bool:
        return self.groups > 1


@dataclass(frozen=True)
class FoldedSE:
    """mean over H, W -> dense (bias) -> act -> dense (bias) -> gate -> multiply."""

    reduce_kernel: np.ndarray  # (C, S)
    reduce_bias: np.ndarray
    expand_kernel: np.ndarray  # (S, C)
    expand_bias: np.ndarray
    act: str = "relu"  # relu | relu6 | swish | hswish
    gate: str = "sigmoid"  # sigmoid | hsigmoid


@dataclass(frozen=True)
class FoldedPool:
    """Global average pool to a 1x1 map (MobileNetV3's pooled head starts with it)."""


@dataclass(frozen=True)
class FoldedLayer:
    layer: Layer
    ops: tuple[FoldedConv | FoldedSE | FoldedPool, ...]  # the main path, in order
    skip: Literal["none", "identity", "pool"]
    pool_stride: tuple[int, int]
    pool_pads: Pads  # the pool skip's SAME padding (window = stride)
    pool_proj: FoldedConv | None  # 1x1 conv after the pool when channels differ


@dataclass(frozen=True)
class FoldedNetwork:
    lowered: LoweredNetwork
    layers: tuple[FoldedLayer, ...]  # stem, blocks and head (the classifier is separate)
    classifier_kernel: np.ndarray  # (C, classes)
    classifier_bias: np.ndarray

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.lowered.input_shape


def _arr(v: Any) -> np.ndarray:
    return np.asarray(v[...] if hasattr(v, "__getitem__") and not isinstance(v, np.ndarray) else v, np.float32)


def _fold_bn(kernel: np.ndarray, bn: Any) -> tuple[np.ndarray, np.ndarray]:
    """kernel * gamma/sqrt(var+eps) per output channel, bias = beta - mean * that (float64 math)."""
    scale, beta = np.asarray(bn.scale[...], np.float64), np.asarray(bn.bias[...], np.float64)
    mean, var = np.asarray(bn.mean[...], np.float64), np.asarray(bn.var[...], np.float64)
    mul = scale / np.sqrt(var + float(bn.epsilon))
    k = np.asarray(kernel[...], np.float64) * mul
    return k.astype(np.float32), (beta - mean * mul).astype(np.float32)


def _conv(module: Any, hw: tuple[int, int], padding: str, groups: int = 1, part: str = "conv") -> FoldedConv:
    kernel, bias = _fold_bn(module.kernel, module.bn)
    ksize = int(kernel.shape[0])
    pads = conv_pads(hw, ksize, tuple(module.stride), padding)
    return FoldedConv(kernel, bias, tuple(module.stride), pads, groups, module.act, part)


def _after(hw: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    return -(-hw[0] // stride[0]), -(-hw[1] // stride[1])


def fold(model: Any) -> FoldedNetwork:
    """The inference form of a Flax ``MnasNet`` module (see :mod:`mnasdsl.backends.flax`)."""
    from .flax import Block, ConvBN, PooledHead

    low: LoweredNetwork = model.lowered
    pad = low.padding
    out: list[FoldedLayer] = []
    for ly, mod in zip(low.layers[:-1], model.layers, strict=True):
        hw = (ly.in_shape[0], ly.in_shape[1])
        if isinstance(mod, ConvBN):
            out.append(FoldedLayer(ly, (_conv(mod, hw, pad),), "none", (1, 1), ((0, 0), (0, 0)), None))
            continue
        if isinstance(mod, PooledHead):  # no BN to fold: the 1x1 conv's own weights and bias
            k = _arr(mod.kernel)
            conv = FoldedConv(k[None, None], _arr(mod.bias), (1, 1), ((0, 0), (0, 0)), 1, mod.act)
            out.append(FoldedLayer(ly, (FoldedPool(), conv), "none", (1, 1), ((0, 0), (0, 0)), None))
            continue
        assert isinstance(mod, Block)
        ops: list[FoldedConv | FoldedSE | FoldedPool] = []
        cur = hw
        if mod.expand is not None:
            ops.append(_conv(mod.expand, cur, pad, part="expand"))
        if mod.dw is not None:
            ops.append(_conv(mod.dw, cur, pad, groups=ly.mid, part="dw"))
            cur = _after(cur, ly.stride)
        if mod.conv is not None:
            ops.append(_conv(mod.conv, cur, pad))
            cur = _after(cur, ly.stride)
        if mod.se is not None:
            se = mod.se
            ops.append(FoldedSE(_arr(se.reduce_kernel), _arr(se.reduce_bias), _arr(se.expand_kernel),
                                _arr(se.expand_bias), se.act, se.gate))
        if mod.project is not None:
            ops.append(_conv(mod.project, cur, pad, part="project"))
        pool_pads: Pads = ((0, 0), (0, 0))
        proj = None
        if ly.skip == "pool":
            pool_pads = (same_pads(hw[0], ly.stride[0], ly.stride[0]), same_pads(hw[1], ly.stride[1], ly.stride[1]))
            if mod.pool_proj is not None:
                proj = _conv(mod.pool_proj, _after(hw, ly.stride), pad, part="pool_proj")
        out.append(FoldedLayer(ly, tuple(ops), ly.skip, ly.stride, pool_pads, proj))
    return FoldedNetwork(low, tuple(out), _arr(model.classifier_kernel), _arr(model.classifier_bias))


def node_census(net: FoldedNetwork) -> dict[str, int]:
    """How many convs, SEs and skips the folded network has (for export sanity checks)."""
    convs = sum(isinstance(o, FoldedConv) for fl in net.layers for o in fl.ops)
    convs += sum(fl.pool_proj is not None for fl in net.layers)
    dw = sum(isinstance(o, FoldedConv) and o.depthwise for fl in net.layers for o in fl.ops)
    se = sum(isinstance(o, FoldedSE) for fl in net.layers for o in fl.ops)
    return {"conv": convs - dw, "depthwise": dw, "se": se,
            "identity": sum(fl.skip == "identity" for fl in net.layers),
            "pool": sum(fl.skip == "pool" for fl in net.layers)}

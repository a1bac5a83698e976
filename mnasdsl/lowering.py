"""Lowering: a validated Network (plus overrides) becomes the concrete layer list.

Multipliers and rounding are applied, repeats expanded, only the first repeat strided, and
every layer carries its input and output shape. Every backend (cost, Flax, latency) reads
this and never the raw syntax.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from .diagnostics import Diagnostic, MnasError
from .ir import Block, Network
from .ops import OPS, SE_KINDS
from .rounding import round_filters, round_repeats

LayerKind = Literal["stem", "block", "head", "classifier"]
ResolvedSkip = Literal["none", "identity", "pool"]


class Layer(NamedTuple):
    """One concrete layer. ``mid`` is the width the depthwise conv and SE act on, as the op's
    :class:`~mnasdsl.ops.OpSpec` sizes it (``cin`` for ds, ``cin*e`` for mb, ``cout`` for cv)."""

    name: str
    kind: LayerKind
    op: str  # a registered op (mnasdsl.ops), or "fc" (global pool + dense: the classifier, a pooled head)
    block: int  # index of the source block (-1 for stem/head/classifier)
    repeat: int
    in_shape: tuple[int, int, int]  # H, W, C
    out_shape: tuple[int, int, int]
    kernel: int
    stride: tuple[int, int]
    expansion: float
    mid: int
    se_ratio: float
    se: int  # SE bottleneck channels, 0 when absent
    skip: ResolvedSkip
    pool_proj: bool  # pool skip needs a 1x1 conv + BN projection (channels differ)
    act: str
    se_gate: str = "sigmoid"  # the SE's gate: sigmoid | hsigmoid (mnasdsl/ops/se.py)
    se_act: str = "relu"  # the SE bottleneck's activation

    def signature(self) -> tuple[object, ...]:
        """What the layer computes, without naming: used for dedupe and latency tables."""
        return (self.op, self.in_shape, self.out_shape, self.kernel, self.stride, self.expansion,
                self.mid, self.se, self.skip, self.pool_proj, self.act, self.se_gate, self.se_act)


class LoweredNetwork(NamedTuple):
    name: str
    input_shape: tuple[int, int, int]
    classes: int
    dropout: float
    bn_momentum: float
    bn_eps: float
    padding: str
    layers: tuple[Layer, ...]

    def signature(self) -> tuple[object, ...]:
        """Two networks are the same network when this is equal."""
        return (self.input_shape, self.classes, self.padding, tuple(layer.signature() for layer in self.layers))

    @property
    def blocks(self) -> tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if layer.kind == "block")


def _out_hw(h: int, w: int, stride: tuple[int, int]) -> tuple[int, int]:
    # SAME and symmetric (k//2) padding give ceil(H/s) for every odd kernel.
    return -(-h // stride[0]), -(-w // stride[1])


def lower(
    network: Network,
    *,
    width: float | None = None,
    depth: float | None = None,
    resolution: int | tuple[int, int] | None = None,
    classes: int | None = None,
) -> LoweredNetwork:
    """Turn a Network into concrete layers with shapes (overrides replace the file's values)."""
    if width is None and depth is None and resolution is None and classes is None:
        net = network
    else:
        net = network.scaled(width=width, depth=depth, resolution=resolution, classes=classes)
    w_mult, d_mult, div, mind = net.width, net.depth, net.divisor, net.min_depth
    default_act = net.activation
    h, w, c = net.input
    new = tuple.__new__  # the hot path: a search loop lowers every sampled network
    layers: list[Layer] = []

    stem = net.stem
    fixed_stem = net.stem_mode == "fixed"  # EfficientNet-Lite: the stem keeps its channels at every width
    cout = round_filters(stem.output, stem.output_factor, 1.0 if fixed_stem else w_mult, div, mind)
    oh, ow = _out_hw(h, w, stem.stride)
    layers.append(Layer("stem", "stem", "cv", -1, 0, (h, w, c), (oh, ow, cout), stem.kernel, stem.stride,
                        1.0, cout, 0.0, 0, "none", False, stem.act or default_act))
    h, w, c = oh, ow, cout

    for bi, blk in enumerate(net.blocks):
        cout = round_filters(blk.output, blk.output_factor, w_mult, div, mind)
        if blk.input is not None:  # i is rounded as its producer is: after a fixed stem, unscaled
            expect = round_filters(blk.input, 1.0, 1.0 if fixed_stem and bi == 0 else w_mult, div, mind)
            if expect != c:
                raise MnasError(Diagnostic(
                    f"block {bi} declares {expect} input channels (i{blk.input}) but receives {c}",
                    blk.field_span("input")))
        act = blk.act or default_act
        op, k, e, ratio, bskip = blk.op, blk.kernel, blk.expansion, blk.se, blk.skip
        mid_of, sek, ediv = OPS[op].mid, SE_KINDS[blk.se_kind], net.expansion_divisor
        se_act = sek.act or act
        # `fc`: the expansion is sized from this width, scaled as the block's outputs are (timm's rule).
        force_in = round_filters(blk.force_in, 1.0, w_mult, div, mind) if blk.force_in is not None else None
        repeats = blk.repeats if d_mult == 1.0 or blk.fixed_repeats else round_repeats(blk.repeats, d_mult)
        stride = blk.stride
        for r in range(repeats):
            if r:
                stride = (1, 1)
            cin = c
            oh, ow = -(-h // stride[0]), -(-w // stride[1])
            mid = mid_of(cin, cout, e, force_in, ediv)
            same = cin == cout and stride == (1, 1)
            if bskip == "noskip":
                skip: ResolvedSkip = "none"
            elif same:
                skip = "identity"
            else:
                skip = "pool" if bskip == "pool" else "none"
            se = sek.width(cin, mid, ratio)
            layers.append(new(Layer, (
                f"blocks.{bi}.{r}", "block", op, bi, r, (h, w, cin), (oh, ow, cout), k, stride,
                e, mid, ratio, se, skip, skip == "pool" and cin != cout, act, sek.gate, se_act)))
            h, w, c = oh, ow, cout

    head = net.head
    if net.head_mode == "fixed":
        hout = round_filters(head.output, head.output_factor, 1.0, div, mind)
    else:
        hout = round_filters(head.output, head.output_factor, max(1.0, w_mult), div, mind)
    if net.head_pooled:  # MobileNetV3: global pool, then the 1x1 conv (a dense layer with bias, no BN) + act
        layers.append(Layer("head", "head", "fc", -1, 0, (h, w, c), (1, 1, hout), 1, (1, 1), 1.0, c, 0.0, 0, "none",
                            False, head.act or default_act))
        oh, ow = 1, 1
    else:
        oh, ow = _out_hw(h, w, head.stride)
        layers.append(Layer("head", "head", "cv", -1, 0, (h, w, c), (oh, ow, hout), head.kernel, head.stride,
                            1.0, hout, 0.0, 0, "none", False, head.act or default_act))
    h, w, c = oh, ow, hout
    layers.append(Layer("classifier", "classifier", "fc", -1, 0, (h, w, c), (1, 1, net.classes), 1, (1, 1),
                        1.0, c, 0.0, 0, "none", False, "none"))
    return LoweredNetwork(net.name, net.input, net.classes, net.dropout, net.bn_momentum, net.bn_eps,
                          net.padding, tuple(layers))


def block_of(network: Network, layer: Layer) -> Block | None:
    return network.blocks[layer.block] if layer.kind == "block" else None

"""Squeeze-excitation variants: the gate, the bottleneck's activation and its width, defined once.

``tf`` is TF MnasNet's (the default): ReLU, sigmoid gate, ``max(1, int(cin * r))`` channels from the
block's actual input. ``hsig`` is MobileNetV3's: ReLU, hard-sigmoid gate, ``mid * r`` rounded to a
multiple of 8 (from the expanded width). ``act`` is EfficientNetV2's and timm's default: the block's
own activation, sigmoid gate, TF's width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .base import make_divisible, se_channels


@dataclass(frozen=True)
class SeKind:
    name: str  # the IR value
    flag: str | None  # the block-string flag that selects it (None: the default)
    gate: str  # sigmoid | hsigmoid
    act: str | None  # the bottleneck's activation; None: the block's own
    width: Callable[[int, int, float], int]  # (block input channels, mid, ratio) -> bottleneck channels
    title: str


SE_KINDS: dict[str, SeKind] = {k.name: k for k in (
    SeKind("tf", None, "sigmoid", "relu", lambda cin, mid, r: se_channels(cin, r), "ReLU, sigmoid gate (TF)"),
    SeKind("hsig", "hsig", "hsigmoid", "relu",
           lambda cin, mid, r: make_divisible(mid * r, 8) if r > 0 else 0, "ReLU, hard-sigmoid gate (MobileNetV3)"),
    SeKind("act", "seact", "sigmoid", None, lambda cin, mid, r: se_channels(cin, r),
           "the block's activation, sigmoid gate (EfficientNetV2)"),
)}
SE_FLAGS: dict[str, str] = {k.flag: k.name for k in SE_KINDS.values() if k.flag}

"""``er``: fused MBConv (EfficientNet-EdgeTPU / EfficientNetV2 "EdgeResidual").

A k×k expansion conv + BN + act (strided), SE, then a linear 1×1 projection + BN. With e1 TF's
fused MBConv is a single k×k conv + BN + act, which is ``cv``. ``fc24`` (timm's ``force_in_chs``)
sizes the expansion from 24 channels instead of the actual input's.
"""

from __future__ import annotations

from .base import OpSpec, expanded_channels

SPEC = OpSpec(
    name="er",
    title="fused MBConv",
    fields=frozenset({"expansion", "se", "force_in"}),
    e1_op="cv",
    mid=lambda cin, cout, e, force_in, div: expanded_channels(force_in or cin, e, div),
)

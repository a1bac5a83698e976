"""``mb``: MBConv. 1×1 expansion + BN + act, depthwise k×k + BN + act, SE, linear 1×1 projection + BN.

With e1 the expansion is skipped (TF's rule), which is exactly ``ds``.
"""

from __future__ import annotations

from .base import OpSpec, expanded_channels

SPEC = OpSpec(
    name="mb",
    title="MBConv",
    aliases=("ir",),
    fields=frozenset({"expansion", "se"}),
    e1_op="ds",
    mid=lambda cin, cout, e, force_in, div: expanded_channels(cin, e, div),
)

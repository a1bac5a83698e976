"""``cv``: a regular k×k conv + BN + act, then SE (timm's ``cn``, ConvBnAct)."""

from __future__ import annotations

from .base import OpSpec

SPEC = OpSpec(
    name="cv",
    title="regular conv",
    aliases=("cn",),
    fields=frozenset({"se"}),
    mid=lambda cin, cout, e, force_in, div: cout,
    stem_head=True,
)

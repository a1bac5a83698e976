"""``ds``: depthwise k×k + BN + act, SE, linear pointwise 1×1 + BN (depthwise-separable)."""

from __future__ import annotations

from .base import OpSpec

SPEC = OpSpec(
    name="ds",
    title="depthwise-separable",
    fields=frozenset({"se"}),
    mid=lambda cin, cout, e, force_in, div: cin,
)

"""What an op is, once: its token, the block fields it takes, and how a layer of it is sized.

An :class:`OpSpec` holds no backend code. Backends keep their per-op code in one table each,
keyed by :attr:`OpSpec.name` (``COST``, ``FLAX``, ``FEATURES``, ``TIMM_NAMES``, ...), and a test
proves every registered op has an entry in every table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def expanded_channels(cin: int, expansion: float, divisor: int = 1) -> int:
    """Channels after an expansion: TF's ``cin * e`` rounded half up, or, with ``divisor`` > 1,
    timm's ``make_divisible`` (nearest multiple, never 10% below) so ``e2.3`` lands on a multiple."""
    if divisor <= 1:
        return int(cin * expansion + 0.5)
    return make_divisible(cin * expansion, divisor)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Nearest multiple of ``divisor`` (at least ``divisor``), bumped up when 10% below ``v``."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def se_channels(cin: int, ratio: float) -> int:
    """TF's SE bottleneck: from the block's *actual* input channels, ``max(1, int(cin * ratio))``."""
    return max(1, int(cin * ratio)) if ratio > 0 else 0


# (input channels, output channels, expansion, expansion base override or None, expansion divisor) -> mid
MidRule = Callable[[int, int, float, "int | None", int], int]


@dataclass(frozen=True)
class OpSpec:
    """One ConvOp: its canonical token, aliases, the optional fields it takes, and its widths.

    ``fields`` names the optional block fields the op accepts beyond those every block takes
    (repeats, kernel, stride, input, output, skip, activation): ``expansion``, ``se`` and
    ``force_in``. ``e1_op`` is what a block of an expanding op is at expansion 1 (TF's MBConv
    with e1 is exactly ``ds``). ``mid`` sizes the width its depthwise conv and SE act on.
    """

    name: str
    title: str
    mid: MidRule
    fields: frozenset[str]
    aliases: tuple[str, ...] = ()
    e1_op: str | None = None
    stem_head: bool = False  # the op a stem or head string may be

    @property
    def expands(self) -> bool:
        return "expansion" in self.fields

    def takes(self, field: str) -> bool:
        return field in self.fields

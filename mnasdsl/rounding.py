"""Channel and repeat rounding, exactly as the TF TPU MnasNet reference does it."""

from __future__ import annotations

import math


def round_filters(
    filters: int, factor: float = 1.0, width: float = 1.0, divisor: int = 8, min_depth: int | None = None
) -> int:
    """TF's ``round_filters``: scale, round to the nearest multiple of ``divisor`` (never below
    ``min_depth``, never more than 10% below the scaled value).

    TF skips rounding only when no multiplier is given (``if not multiplier: return filters``),
    which is how its reference models are built (``depth_multiplier=None``). Here that state is
    width 1.0 with no relative factor: ``o36`` stays 36 at width 1.0, as in TF's MnasNet-D1. Any
    multiplier rounds, even when the product equals the literal (``o36x0.5`` at width 2.0 is 40),
    so what the language cannot say is TF's explicit ``depth_multiplier=1.0`` (write ``o40``).
    A relative filter ``o24x0.75`` is one product ``24 * 0.75 * width`` and one rounding.
    """
    if factor == 1.0 and width == 1.0:
        return filters
    product = filters * factor * width
    min_d = min_depth or divisor
    new = max(min_d, int(product + divisor / 2) // divisor * divisor)
    if new < 0.9 * product:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float = 1.0) -> int:
    """TF's ``round_repeats``: ceil(depth * repeats); a tiny tolerance keeps 1.1*10 at 11."""
    if depth == 1.0:
        return repeats
    return int(math.ceil(depth * repeats - 1e-9))

"""Block fields: their keys, their ranges and the one check of each value.

The grammar's builder, the regex fast path and the IR's validators all read these, so a range
rule exists once. Nothing here imports the IR (the IR imports this).
"""

from __future__ import annotations

# Sanity limits: reject absurd values with a message instead of a MemoryError later.
MAX_CHANNELS = 32768
MAX_RESOLUTION = 8192
MAX_CLASSES = 1_000_000
MAX_REPEATS = 64
MAX_EXPANSION = 64.0
MAX_KERNEL = 11
MAX_FACTOR = 16.0
MAX_MULTIPLIER = 16.0
MAX_DIGITS = 9  # integer fields longer than this are reported as absurd before int() runs
MAX_NUMBER_TEXT = 24  # decimal fields longer than this are reported as too long

# key -> (block field, what the message calls it)
FIELD_OF_KEY: dict[str, str] = {"r": "repeats", "k": "kernel", "s": "stride", "e": "expansion", "i": "input",
                                "o": "output", "se": "se", "fc": "force_in"}
# Optional block fields an op must declare (OpSpec.fields) to accept, with their spelling.
OP_FIELDS: dict[str, str] = {"expansion": "e", "se": "se", "force_in": "fc"}
# Integer fields: key -> (message name, lowest, highest)
INT_RANGES: dict[str, tuple[str, int, int]] = {
    "r": ("repeats", 1, MAX_REPEATS),
    "k": ("kernel", 1, MAX_KERNEL),
    "i": ("input channels", 1, MAX_CHANNELS),
    "o": ("output channels", 1, MAX_CHANNELS),
    "fc": ("forced input channels", 1, MAX_CHANNELS),
}
# Decimal fields: key -> (message name, lowest, highest, lowest excluded)
FLOAT_RANGES: dict[str, tuple[str, float, float, bool]] = {
    "e": ("expansion ratio", 1.0, MAX_EXPANSION, False),
    "se": ("squeeze-excitation ratio", 0.0, 1.0, False),
    "x": ("filter factor", 0.0, MAX_FACTOR, True),
}
STRIDES: dict[str, tuple[int, int]] = {"1": (1, 1), "2": (2, 2), "11": (1, 1), "22": (2, 2), "12": (1, 2),
                                       "21": (2, 1)}


def int_error(key: str, n: int) -> str | None:
    """The message for an integer value out of its range, or None when it is valid."""
    what, lo, hi = INT_RANGES[key]
    if not lo <= n <= hi:
        return f"{what} must be between {lo} and {hi}, got {n}"
    if key == "k" and n % 2 == 0:
        return f"kernel must be odd, got {n}"
    return None


def float_error(key: str, x: float, text: str) -> str | None:
    """The message for a decimal value out of its range, or None when it is valid."""
    what, lo, hi, lo_open = FLOAT_RANGES[key]
    if x < lo or x > hi or (lo_open and x == lo):
        bound = f"greater than {lo:g}" if lo_open else f"at least {lo:g}"
        return f"{what} must be {bound} and at most {hi:g}, got {text}"
    return None

"""Validation of command-line and API overrides (the file's own rules live in the parser)."""

from __future__ import annotations

from .diagnostics import MnasError
from .ir import MAX_CLASSES, MAX_MULTIPLIER, MAX_RESOLUTION


def check_overrides(
    *,
    width: float | None = None,
    depth: float | None = None,
    resolution: int | tuple[int, int] | None = None,
    classes: int | None = None,
) -> None:
    problems = []
    for name, v in (("width", width), ("depth", depth)):
        if v is not None and not (isinstance(v, (int, float)) and 0 < v <= MAX_MULTIPLIER):
            problems.append(f"{name} multiplier must be > 0 and <= {MAX_MULTIPLIER:g}, got {v}")
    if resolution is not None:
        hw = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        if len(hw) != 2 or not all(isinstance(x, int) and 1 <= x <= MAX_RESOLUTION for x in hw):
            problems.append(f"resolution must be between 1 and {MAX_RESOLUTION}, got {resolution}")
    if classes is not None and not (isinstance(classes, int) and 1 <= classes <= MAX_CLASSES):
        problems.append(f"classes must be between 1 and {MAX_CLASSES}, got {classes}")
    if problems:
        raise MnasError("; ".join(problems))

"""Class names that ship with the package: ImageNet-1k, in the standard index order.

A network with 1,000 classes and no class names of its own (fresh weights, an imported ImageNet
model) is labelled with these, so `predict` says "espresso" rather than "class967".
"""

from __future__ import annotations

from functools import cache
from importlib import resources

IMAGENET_CLASSES = 1000


@cache
def imagenet1k() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k names (index i is logit i)."""
    text = resources.files("mnasdsl").joinpath("data/imagenet1k.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    names = tuple(r[2] for r in rows)
    if len(names) != IMAGENET_CLASSES or [int(r[0]) for r in rows] != list(range(IMAGENET_CLASSES)):
        raise RuntimeError("mnasdsl/data/imagenet1k.tsv is damaged (reinstall mnasdsl)")
    return names


def default_names(classes: int) -> tuple[str, ...]:
    """Names for a network without its own: ImageNet's for 1,000 classes, else class0, class1, ..."""
    if classes == IMAGENET_CLASSES:
        return imagenet1k()
    return tuple(f"class{i}" for i in range(classes))

"""Training: `fit` any network on real image data with optax, checkpointed and resumable.

Independent of the CLI (``mnasdsl train`` is a thin layer over :func:`fit`); the search's proxy
evaluator calls :func:`fit` with ``out=None`` so nothing touches disk. Names load on first use, so
`predict` (which needs none of optax or the loop) starts faster.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"DataSource": "data", "open_source": "data", "Trainer": "loop", "TrainResult": "loop",
          "evaluate_model": "loop", "fit": "loop", "predict_images": "predict", "RECIPES": "recipes"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)

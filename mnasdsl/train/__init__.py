"""Training: `fit` any network on real image data with optax, checkpointed and resumable.

Independent of the CLI (``mnasdsl train`` is a thin layer over :func:`fit`); the search's proxy
evaluator calls :func:`fit` with ``out=None`` so nothing touches disk.
"""

from __future__ import annotations

from .data import DataSource, open_source
from .loop import Trainer, TrainResult, evaluate_model, fit, predict_images
from .recipes import RECIPES

__all__ = ["RECIPES", "DataSource", "TrainResult", "Trainer", "evaluate_model", "fit", "open_source",
           "predict_images"]

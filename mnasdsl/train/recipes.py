"""Training recipes: optimizer, learning-rate schedule, regularization and evaluation weights.

``mnasnet`` reproduces the TF TPU MnasNet reference (mnasnet_main.py); ``adam`` is AdamW with
warm-up and cosine decay, the better default on small datasets and short runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import optax

from ..diagnostics import MnasError

RECIPES = ("adam", "mnasnet")


@dataclass(frozen=True)
class Recipe:
    """Everything the loop needs from a recipe; ``lr`` is the peak rate at the actual batch size."""

    name: str
    tx: optax.GradientTransformation
    schedule: Callable[[Any], Any]
    lr: float
    label_smoothing: float
    ema_decay: float | None  # EMA of the weights used for evaluation (None: evaluate the raw weights)
    warmup_steps: int
    # The same per-leaf optimizer with the learning rate injected as a state entry instead of a schedule,
    # for one group of parameters given its weight-decay mask (None: the recipe cannot be split per layer).
    split_tx: Callable[[Any], optax.GradientTransformation] | None = None


def _mnasnet_schedule(base: float, steps_per_epoch: int, warmup_steps: int) -> Callable[[Any], Any]:
    """Linear warm-up, then staircase exponential decay x0.97 every 2.4 epochs counted from step 0 (as TF)."""
    decay_steps = max(1, int(2.4 * steps_per_epoch))

    def schedule(step: Any) -> Any:
        step = jnp.asarray(step, jnp.float32)
        decayed = base * 0.97 ** jnp.floor(step / decay_steps)
        warm = base * step / max(1, warmup_steps)
        return jnp.where(step < warmup_steps, warm, decayed)

    return schedule


ADAMW = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 0.05}


def _adamw_injected(mask: Any) -> optax.GradientTransformation:
    """AdamW whose step size is ``state.hyperparams["learning_rate"]``, set by the caller each step:
    elementwise the same update as the scheduled adamw (Adam moments, decoupled decay, -lr scale)."""
    return optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, **ADAMW, mask=mask)


def make_recipe(name: str, *, batch: int, steps_per_epoch: int, epochs: int, wd_mask: Any,
                lr: float | None = None) -> Recipe:
    """Build a recipe for a run of ``epochs`` epochs of ``steps_per_epoch`` steps of ``batch`` images.

    ``wd_mask`` is a pytree of bools like the parameters: True where weight decay applies (not BN).
    """
    total = max(1, steps_per_epoch * epochs)
    if name == "mnasnet":
        base = lr if lr is not None else 0.016 * batch / 256
        # Five warm-up epochs, capped at a fifth of a shorter run so short proxies still reach the peak rate.
        warmup = int(min(5.0, 0.2 * epochs) * steps_per_epoch)
        schedule = _mnasnet_schedule(base, steps_per_epoch, warmup)
        tx = optax.chain(
            # L2 added to the gradient before RMSProp scales it: TF's `loss += 1e-5 * sum(l2_loss(w))`.
            optax.add_decayed_weights(1e-5, mask=wd_mask),
            # TF's RMSProp: decay 0.9, momentum 0.9, epsilon 1e-3 inside the sqrt, accumulator starting at 1.
            optax.rmsprop(schedule, decay=0.9, eps=1e-3, initial_scale=1.0, eps_in_sqrt=True, momentum=0.9),
        )
        return Recipe(name, tx, schedule, base, 0.1, 0.9999, warmup)
    if name == "adam":
        base = lr if lr is not None else 1e-2
        warmup = max(1, min(total // 10, 5 * steps_per_epoch))
        schedule = optax.warmup_cosine_decay_schedule(0.0, base, warmup, max(total, warmup + 1), end_value=base * 0.01)
        tx = optax.adamw(schedule, **ADAMW, mask=wd_mask)
        return Recipe(name, tx, schedule, base, 0.0, None, warmup, split_tx=_adamw_injected)
    raise MnasError(f"unknown recipe {name!r} (choose from {', '.join(RECIPES)})")


def ema_decay_at(decay: float, step: Any) -> Any:
    """TF's ExponentialMovingAverage with num_updates: min(decay, (1 + t) / (10 + t)), so early EMAs track."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))

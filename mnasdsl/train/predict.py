"""Class probabilities for a handful of images: what `predict` runs, kept apart from the training
loop so that answering one image does not import the optimizer stack."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .data import norm_stats

QUICK_PREDICT_IMAGES = 4  # up to this many, predict compiles for compile time (see quick_compile_fn)


def predict_images(model: nnx.Module, images: np.ndarray, channels: int,
                   norm: tuple[Any, Any] | None = None) -> np.ndarray:
    """Class probabilities (N, classes) for uint8 NHWC images, in one compiled forward with the
    input scaling and softmax inside it (run eagerly, the network would compile each of its few
    hundred ops on its own: seconds per image). ``norm`` is the (mean, std) the weights expect,
    in 0..255 units (default: what mnasdsl's training uses)."""
    mean, std = norm if norm is not None else norm_stats(channels)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)

    def pre(x: jax.Array) -> jax.Array:
        return (x.astype(jnp.float32) - mean) / std

    def post(logits: jax.Array) -> jax.Array:
        return jax.nn.softmax(logits, -1)

    if len(images) <= QUICK_PREDICT_IMAGES:  # compiling is most of the time: compile for that
        from ..backends.flax import quick_compile_fn

        return np.asarray(quick_compile_fn(model, pre, post)(images))
    graphdef, state = nnx.split(model)

    @jax.jit
    def probs(state: Any, x: jax.Array) -> jax.Array:
        return post(nnx.merge(graphdef, state)(pre(x), train=False))

    return np.asarray(probs(state, images))

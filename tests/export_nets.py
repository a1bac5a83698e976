"""Networks and weights shared by the export tests (ONNX, TFLite): every language feature in one
network, the pool skip on odd sizes, and BN statistics randomized so that folding is exercised."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import mnasdsl
from mnasdsl.backends import flax as fb

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-4
SPECS = ["mnasnet-a1", "mnasnet-b1", "mnasnet-small", "mnasnet-d1", "mobilenet-v2"]

# Every feature of the language in one network: cv/ds/mb/er (with a forced input width), SE,
# identity, pool with and without the projection (and a stride-1 pool that is only a projection),
# noskip, strides 2x2, 1x2, 2x1 on odd sizes, and all activations (swish the default, hswish on the stem).
EVERY = """\
network every_feature:
  input 25x21x3
  classes 10
  dropout 0.3
  bn momentum 0.9 eps 0.01
  padding PADDING
  activation swish
  stem cv_k3_s22_o16_hswish
  blocks
    ds_r1_k3_s11_i16_o16_se0.25_relu6
    r2_k5_s22_e3_i16_o24_se0.25_pool_hswish
    cv_r1_k3_s12_i24_o24_se0.5_pool
    r1_k3_s21_e2.5_i24_o32_pool_relu
    r1_k3_s11_e6_i32_o40_pool
    cv_r1_k3_s22_i40_o40_noskip_relu6
    r1_k7_s22_e4_i40_o48_se0.25_pool
    er_r2_k3_s11_e4_i48_o48_se0.25
    er_r1_k5_s22_e3_i48_o56_fc32_pool_relu
  head cv_k1_o64 fixed
"""

# The pool skip alone (window = stride, SAME pads, valid pixels averaged) on odd/tiny sizes.
POOL = """\
network pool_only:
  input 9x7x4
  classes 3
  stem cv_k1_o8
  blocks
    r1_k3_s22_e2_i8_o8_pool
    r1_k3_s21_e2_i8_o16_pool
    r1_k3_s12_e2_i16_o16_pool
  head cv_k1_o16 fixed
"""


def every(padding: str = "same") -> mnasdsl.Network:
    return mnasdsl.parse(EVERY.replace("PADDING", padding))[0]


def spec(name: str, resolution: int | tuple[int, int]) -> mnasdsl.Network:
    return mnasdsl.load(ROOT / "specs" / f"{name}.mnas").scaled(resolution=resolution, classes=10)


def randomize(model: fb.MnasNet, seed: int = 0, var_scale: float = 1.0) -> None:
    """Random BN statistics and affine terms of every conv (and SE/classifier biases), so the folded
    kernel and bias really differ from the raw ones.

    The variance is drawn around the conv's output variance for unit-variance input (the sum of its
    squared kernel weights per output channel), so activations stay O(1) through 50 layers and the
    logits O(1-10): with unit variances they reach 1e3 and float32 alone is off by 1e-4 there.
    ``var_scale`` < 1 keeps the image's signal alive through hard-swish/SE stacks, whose activations
    shrink per block when the statistics assume unit-variance inputs."""
    rng = np.random.default_rng(seed)

    def put(var: Any, values: np.ndarray) -> None:
        var[...] = jnp.asarray(values.astype(np.float32))

    n_bn = 0
    for _, m in nnx.iter_modules(model):
        if isinstance(m, fb.ConvBN | fb.DepthwiseBN):
            kernel = np.asarray(m.kernel[...], np.float64)
            cout = kernel.shape[-1]
            gain = np.square(kernel).reshape(-1, cout).sum(axis=0)
            put(m.bn.var, gain * var_scale * rng.uniform(0.5, 2.0, cout))
            put(m.bn.mean, rng.normal(0.0, 0.2, cout) * np.sqrt(gain))
            put(m.bn.scale, rng.uniform(0.5, 1.5, cout))
            put(m.bn.bias, rng.normal(0.0, 0.2, cout))
            n_bn += 1
        elif isinstance(m, fb.SqueezeExcite):
            put(m.reduce_bias, rng.normal(0.0, 0.2, m.reduce_bias.shape))
            put(m.expand_bias, rng.normal(0.0, 0.2, m.expand_bias.shape))
        elif isinstance(m, fb.PooledHead):
            put(m.bias, rng.normal(0.0, 0.2, m.bias.shape))
    assert n_bn == sum(isinstance(m, fb.BatchNorm) for _, m in nnx.iter_modules(model))
    put(model.classifier_bias, rng.normal(0.0, 0.2, model.classifier_bias.shape))


@nnx.jit
def flax_eval(model: fb.MnasNet, x: jax.Array) -> jax.Array:
    return model(x, train=False)


def built(net: mnasdsl.Network, seed: int = 0, var_scale: float = 1.0) -> fb.MnasNet:
    model = fb.build(mnasdsl.lower(net), rngs=nnx.Rngs(seed))
    randomize(model, seed, var_scale)
    return model


def images(model: fb.MnasNet, batch: int, seed: int = 1) -> np.ndarray:
    h, w, c = model.lowered.input_shape
    return np.random.default_rng(seed).normal(size=(batch, h, w, c)).astype(np.float32)



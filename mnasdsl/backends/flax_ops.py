"""Pure JAX kernels behind the Flax backend: padding, the two depthwise lowerings, pooling.

Kept free of nnx so they can be tested against each other and reused by the export path.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Pads = tuple[tuple[int, int], tuple[int, int]]

# Which depthwise implementation each platform gets. XLA:CPU lowers grouped convolutions to a
# slow generic loop (~8 ms for 3x3 over 56x56x144); k*k fused strided slices take ~0.3 ms.
# GPU/TPU compilers have dedicated depthwise kernels, so there the grouped conv stays.
DEPTHWISE_IMPL = {"cpu": "fused", "cuda": "grouped", "rocm": "grouped", "gpu": "grouped", "tpu": "grouped"}

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "swish": lambda x: x * jax.nn.sigmoid(x),
    "hswish": lambda x: x * jax.nn.relu6(x + 3.0) * (1.0 / 6.0),
    "none": lambda x: x,
}


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF SAME: output ceil(size/stride), the odd pixel of padding goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_pads(hw: tuple[int, int], kernel: int, stride: tuple[int, int], padding: str) -> Pads:
    """Explicit (before, after) pads for H and W: ``same`` is TF's, ``symmetric`` is PyTorch's k//2."""
    if padding == "symmetric":
        p = kernel // 2
        return (p, p), (p, p)
    return same_pads(hw[0], kernel, stride[0]), same_pads(hw[1], kernel, stride[1])


def _trim_axis(size: int, k: int, s: int, before: int, after: int) -> tuple[int, int, int, int]:
    """Along one axis: the taps [first, last) that read at least one real (unpadded) pixel, and the
    pads that keep the output size with only those taps.

    Tap a reads padded positions a + s*i, i < out; the real ones are [before, before + size). The
    live taps are contiguous (ceil(size/s) windows of length size, s apart, or one when size < s)."""
    out = (size + before + after - k) // s + 1
    live = [a for a in range(k) if any(before <= a + s * i < before + size for i in range(out))]
    if not live or (live[0], live[-1] + 1) == (0, k):
        return 0, k, before, after
    first, last = live[0], live[-1] + 1
    return first, last, before - first, (out - 1) * s + (last - first) - size - (before - first)


def trim_taps(hw: tuple[int, int], w: jax.Array, stride: tuple[int, int], pads: Pads) -> tuple[jax.Array, Pads]:
    """The same convolution without the kernel taps that only ever read padding.

    When the input is smaller than the kernel (late stages of a network trained at low resolution:
    a 5x5 kernel over a 1x1 map, with 24 of its 25 taps on padding), those taps add exact zeros:
    dropping them leaves every output (and the input gradient) unchanged and their weight gradient
    zero, for a fraction of the work. The pads shrink by the dropped rows, so the output keeps its size."""
    a0, a1, pt, pb = _trim_axis(hw[0], int(w.shape[0]), stride[0], *pads[0])
    b0, b1, pl, pr = _trim_axis(hw[1], int(w.shape[1]), stride[1], *pads[1])
    if (a0, a1, b0, b1) == (0, w.shape[0], 0, w.shape[1]):
        return w, pads
    return w[a0:a1, b0:b1], ((pt, pb), (pl, pr))


def conv2d(x: jax.Array, w: jax.Array, stride: tuple[int, int], pads: Pads) -> jax.Array:
    """Dense NHWC conv with an HWIO kernel; a 1x1 stride-1 conv is a plain matmul (cheaper on CPU).

    The matmul is on (N*H*W, C) rows: with the 4-D operand, XLA:CPU lowers the weight gradient's
    contraction over (N, H, W) with a full transposed copy of the output gradient (fused with its
    BN backward, so read out of order); on the 2-D view it contracts in place (-40% on a BN+ReLU
    1x1 conv's backward at 112x112x96). Taps that only read padding are dropped (:func:`trim_taps`)."""
    w, pads = trim_taps((x.shape[1], x.shape[2]), w, stride, pads)
    if w.shape[0] == 1 and w.shape[1] == 1 and stride == (1, 1) and pads == ((0, 0), (0, 0)):
        return jnp.dot(x.reshape(-1, x.shape[-1]), w[0, 0]).reshape(*x.shape[:-1], w.shape[-1])
    return lax.conv_general_dilated(x, w, stride, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def depthwise_grouped(x: jax.Array, w: jax.Array, stride: tuple[int, int], pads: Pads) -> jax.Array:
    """Depthwise conv as a grouped convolution (kernel (k, k, 1, C)): the GPU/TPU form."""
    return lax.conv_general_dilated(x, w, stride, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=x.shape[-1])


def _pad(x: jax.Array, pads: Pads) -> jax.Array:
    (pt, pb), (pl, pr) = pads
    return jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))


def _taps_sum(xp: jax.Array, w: jax.Array, stride: tuple[int, int]) -> jax.Array:
    """sum over taps (a, b) of xp[:, a::s, b::s] * w[a, b]: the depthwise conv of a padded input."""
    n, hp, wp, c = xp.shape
    kh, kw = w.shape[0], w.shape[1]
    sh, sw = stride
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    out = None
    for a in range(kh):
        for b in range(kw):
            tap = lax.slice(xp, (0, a, b, 0), (n, a + (ho - 1) * sh + 1, b + (wo - 1) * sw + 1, c), (1, sh, sw, 1))
            term = tap * w[a, b, 0]
            out = term if out is None else out + term
    assert out is not None
    return out


def _fused_forward(x: jax.Array, w: jax.Array, stride: tuple[int, int], pads: Pads) -> jax.Array:
    return _taps_sum(_pad(x, pads), w, stride)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_fused(x: jax.Array, w: jax.Array, stride: tuple[int, int], pads: Pads) -> jax.Array:
    """Depthwise conv as a sum of k*k strided slices times per-channel weights; XLA fuses it
    into one loop, which on CPU beats the grouped convolution by an order of magnitude.

    The backward pass dominates a CPU training step, so it is written by hand: the input gradient
    is the same fused form over the stride-dilated output gradient with the kernel flipped (see
    ``_dx``), the weight gradient one variadic reduction (see ``_wgrad``)."""
    return _fused_forward(x, w, stride, pads)


def _fused_fwd(x: jax.Array, w: jax.Array, stride: tuple[int, int], pads: Pads) -> tuple[jax.Array, Any]:
    # The padded input is the residual: the forward materializes it anyway, and keeping x as well
    # would hold a second activation-sized buffer until the backward pass.
    xp = _pad(x, pads)
    return _taps_sum(xp, w, stride), (xp, w)


def _dx(g: jax.Array, w: jax.Array, xshape: tuple[int, ...], stride: tuple[int, int], pads: Pads) -> jax.Array:
    """The input gradient in the fused form, instead of autodiff's k*k scattered pads (-11% per step).

    Stride 1: dx_padded[p] = sum_a g[p - a] * w[a], the forward form with the kernel flipped.
    Stride s > 1, per output phase r (p = s*m + r): dx_padded[s*m + r] = sum_t g[m - t] * w[r + s*t],
    a stride-1 correlation of g with the sub-kernel w[r::s] flipped. The s*s phases are interleaved
    by interior padding and summed, all in one fusion: k*k/s^2 multiply-adds per input pixel instead
    of the k*k of correlating a zero-dilated gradient."""
    h, wd = xshape[1], xshape[2]
    kh, kw = w.shape[0], w.shape[1]
    (pt, pb), (pl, pr) = pads
    sh, sw = stride
    hp, wp = h + pt + pb, wd + pl + pr
    mh, mw = -(-hp // sh), -(-wp // sw)  # rows/cols per phase, enough to cover the padded input
    zero = jnp.array(0, g.dtype)
    dxp = None
    for rh in range(min(sh, kh)):
        for rw in range(min(sw, kw)):
            sub = w[rh::sh, rw::sw]
            th, tw = sub.shape[0], sub.shape[1]
            gp = lax.pad(g, zero, ((0, 0, 0), (th - 1, mh - g.shape[1], 0), (tw - 1, mw - g.shape[2], 0), (0, 0, 0)))
            phase = _taps_sum(gp, sub[::-1, ::-1], (1, 1))  # (n, mh, mw, c)
            placed = lax.pad(phase, zero, ((0, 0, 0), (rh, sh - 1 - rh, sh - 1), (rw, sw - 1 - rw, sw - 1), (0, 0, 0)))
            dxp = placed if dxp is None else dxp + placed
    assert dxp is not None
    return dxp[:, pt:pt + h, pl:pl + wd, :]


def _wgrad(xp: jax.Array, g: jax.Array, kh: int, kw: int, stride: tuple[int, int]) -> jax.Array:
    """The weight gradient: per kernel tap, the sum over (n, i, j) of tap * g, shape (kh*kw, C).

    XLA:CPU hands plain reductions to its library (YNNPACK), which cannot fuse the strided tap
    slices, so each of the k*k products would be written out at activation size and read back.
    One variadic reduction over the W axis is XLA's own loop instead: it reads the padded input
    and the gradient once for all taps and leaves k*k (N, H, C) partial sums for the library to
    finish (2-3x faster per layer than chunked library reductions; a whole-batch reduction over
    (N, H, W) in XLA's loop is slower than either)."""
    n, c = xp.shape[0], xp.shape[3]
    lh, lw = (g.shape[1] - 1) * stride[0] + 1, (g.shape[2] - 1) * stride[1] + 1
    acc = jnp.promote_types(g.dtype, jnp.float32)  # bfloat16 compute still sums in float32
    xp, g = xp.astype(acc), g.astype(acc)
    products = [lax.slice(xp, (0, a, b, 0), (n, a + lh, b + lw, c), (1, *stride, 1)) * g
                for a in range(kh) for b in range(kw)]
    zeros = [jnp.zeros((), acc)] * len(products)
    sums = lax.reduce(products, zeros, lambda s, v: [p + q for p, q in zip(s, v, strict=True)], (2,))
    return jnp.stack([jnp.sum(p, axis=(0, 1)) for p in sums])


def _fused_bwd(stride: tuple[int, int], pads: Pads, res: Any, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    xp, w = res
    kh, kw = w.shape[0], w.shape[1]
    (pt, pb), (pl, pr) = pads
    xshape = (xp.shape[0], xp.shape[1] - pt - pb, xp.shape[2] - pl - pr, xp.shape[3])
    dx = _dx(g, w, xshape, stride, pads)
    dw = _wgrad(xp, g, kh, kw, stride)
    return dx.astype(xp.dtype), dw.reshape(kh, kw, 1, xp.shape[3]).astype(w.dtype)


depthwise_fused.defvjp(_fused_fwd, _fused_bwd)


def _depthwise_trimmed(x: jax.Array, w: jax.Array, stride: tuple[int, int], pads: Pads) -> jax.Array:
    w, pads = trim_taps((x.shape[1], x.shape[2]), w, stride, pads)
    return depthwise_fused(x, w, stride, pads)


def depthwise(x: jax.Array, w: jax.Array, stride: tuple[int, int], pads: Pads, impl: str) -> jax.Array:
    """Dispatch on ``impl``: "fused", "grouped", or "dynamic" (chosen per platform when lowered,
    so one multi-platform StableHLO export carries the right form for each)."""
    if impl == "fused":
        return _depthwise_trimmed(x, w, stride, pads)
    if impl == "grouped":
        return depthwise_grouped(x, w, stride, pads)
    return lax.platform_dependent(
        x, w,
        cpu=lambda x, w: _depthwise_trimmed(x, w, stride, pads),
        default=lambda x, w: depthwise_grouped(x, w, stride, pads),
    )


def avg_pool_same(x: jax.Array, stride: tuple[int, int]) -> jax.Array:
    """Average pool, window = stride, TF SAME padding, averaging valid pixels only
    (count_include_pad=False): the pool skip's downsampling, output ceil(H/s)."""
    sh, sw = stride
    if (sh, sw) == (1, 1):
        return x
    n, h, w, c = x.shape
    pads = ((0, 0), same_pads(h, sh, sh), same_pads(w, sw, sw), (0, 0))
    # Pad, then sum each stride x stride tile by a reshape: differentiable (reverse mode) and
    # fused by XLA, unlike a generic reduce_window.
    xp = jnp.pad(x, pads)
    ho, wo = xp.shape[1] // sh, xp.shape[2] // sw
    total = xp[:, : ho * sh, : wo * sw].reshape(n, ho, sh, wo, sw, c).sum(axis=(2, 4))
    # The valid-pixel counts are static: compute them once in numpy at trace time.
    ones = np.pad(np.ones((h, w), np.float32), pads[1:3])
    counts = ones[: ho * sh, : wo * sw].reshape(ho, sh, wo, sw).sum(axis=(1, 3))
    return total * jnp.asarray(1.0 / counts, x.dtype)[None, :, :, None]


def resolve_impl(platform: str | None) -> str:
    """The depthwise implementation for a platform name (None: the current default backend)."""
    name = (platform or jax.default_backend()).lower()
    if name not in DEPTHWISE_IMPL:
        raise ValueError(f"unknown platform {platform!r} (expected one of cpu, gpu, cuda, rocm, tpu)")
    return DEPTHWISE_IMPL[name]

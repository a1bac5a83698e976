"""The supernet in JAX: one forward pass that runs any subnet of a :class:`~.plan.Plan`.

The subnet is an *input* (the integer arrays of :meth:`~.plan.SharedSpace.config`), never a Python
value, so every subnet runs through one compiled program: ``lax.switch`` picks the op family of a
slot (or skips the layer), and channel counts, kernel sizes, SE widths, gates and skips become masks
and selects. Weights and BN statistics are plain nested dicts whose leaf names match the Flax
backend's modules (:mod:`mnasdsl.backends.flax`), so a subnet's weights are slices of them
(:func:`subnet_variables`).

Masking keeps the prefix invariant: channels beyond a layer's width are exactly zero after every
layer (the mask is applied after BN and the activation, with ``where``, so a stray inf/NaN cannot leak
through a multiply), and BN's per-channel statistics of the active channels never see the others.
Running statistics are only updated where a channel is active. The op kernels are the backend's own
(:mod:`mnasdsl.backends.flax_ops`), so a subnet computes what its standalone network computes, up to
the order in which exact zeros are added.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..backends.flax import GATES
from ..backends.flax_ops import ACTIVATIONS, Pads, avg_pool_same, conv2d, conv_pads, depthwise, trim_taps
from .plan import Family, Plan, Slot

Tree = dict[str, Any]
Make = Callable[[tuple[int, ...], str, int], Any]


# --- parameters ------------------------------------------------------------------------------------------

def _maker(seed: int | None) -> Make:
    """Leaf factory: NumPy values (TF's conv init N(0, sqrt(2/fan_out)), as the backend draws them, without an
    XLA compile per shape) or, with ``seed`` None, shapes only (restore targets)."""
    rng = np.random.default_rng([seed, 0x5E]) if seed is not None else None

    def make(shape: tuple[int, ...], kind: str, fan: int) -> Any:
        if rng is None:
            return jax.ShapeDtypeStruct(shape, jnp.float32)
        if kind == "conv":
            return rng.normal(0.0, np.sqrt(2.0 / fan), shape).astype(np.float32)
        if kind == "uniform":
            r = 1.0 / float(np.sqrt(fan))
            return rng.uniform(-r, r, shape).astype(np.float32)
        return np.full(shape, 1.0 if kind == "ones" else 0.0, np.float32)

    return make


def _conv_bn(make: Make, k: int, cin: int, cout: int, depthwise_: bool = False) -> tuple[Tree, Tree]:
    shape = (k, k, 1, cout) if depthwise_ else (k, k, cin, cout)
    fan = k * k if depthwise_ else k * k * cout
    return ({"kernel": make(shape, "conv", fan), "bn": {"scale": make((cout,), "ones", 0),
                                                          "bias": make((cout,), "zeros", 0)}},
            {"bn": {"mean": make((cout,), "zeros", 0), "var": make((cout,), "ones", 0)}})


def _family_params(make: Make, f: Family) -> tuple[Tree, Tree]:
    p: Tree = {}
    s: Tree = {}
    if f.op == "mb":
        p["expand"], s["expand"] = _conv_bn(make, 1, f.cin, f.mid)
    if f.op in ("mb", "ds"):
        p["dw"], s["dw"] = _conv_bn(make, f.kernel, f.mid, f.mid, depthwise_=True)
    if f.op in ("cv", "er"):
        p["conv"], s["conv"] = _conv_bn(make, f.kernel, f.cin, f.mid if f.op == "er" else f.cout)
    if f.se:
        ch = f.mid
        p["se"] = {"reduce_kernel": make((ch, f.se), "conv", f.se), "reduce_bias": make((f.se,), "zeros", 0),
                   "expand_kernel": make((f.se, ch), "conv", ch), "expand_bias": make((ch,), "zeros", 0)}
    if f.op != "cv":
        p["project"], s["project"] = _conv_bn(make, 1, f.mid, f.cout)
    return p, s


def init(plan: Plan, seed: int | None = 0) -> tuple[Tree, Tree]:
    """(params, batch_stats) of the supernet; ``seed`` None gives ShapeDtypeStructs."""
    make = _maker(seed)
    params: Tree = {}
    stats: Tree = {}
    st = plan.stem
    params["stem"], stats["stem"] = _conv_bn(make, st.kernel, st.cin, st.cout)
    params["slots"], stats["slots"] = {}, {}
    for i, slot in enumerate(plan.slots):
        sp: Tree = {}
        ss: Tree = {}
        for f in slot.families:
            sp[f.op], ss[f.op] = _family_params(make, f)
        if slot.pool_proj is not None:
            sp["pool_proj"], ss["pool_proj"] = _conv_bn(make, 1, *slot.pool_proj)
        params["slots"][str(i)], stats["slots"][str(i)] = sp, ss
    hd = plan.head
    if hd.op == "fc":
        params["head"] = {"kernel": make((hd.cin, hd.cout), "conv", hd.cout), "bias": make((hd.cout,), "zeros", 0)}
        stats["head"] = {}
    else:
        params["head"], stats["head"] = _conv_bn(make, hd.kernel, hd.cin, hd.cout)
    params["classifier"] = {"kernel": make((hd.cout, plan.classes), "uniform", plan.classes),
                            "bias": make((plan.classes,), "zeros", 0)}
    return params, stats


def weight_decay_mask(params: Tree) -> Tree:
    """True for every weight outside a BatchNorm (decay never touches BN scale and bias)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(getattr(k, "key", None) == "bn" for k in path), params)


# --- the forward pass ------------------------------------------------------------------------------------

def _fit(x: jax.Array, width: int) -> jax.Array:
    """``x`` with exactly ``width`` channels: cut (the rest is zero by the prefix invariant) or zero-padded."""
    c = x.shape[-1]
    if c == width:
        return x
    if c > width:
        return x[..., :width]
    return jnp.pad(x, ((0, 0),) * (x.ndim - 1) + ((0, width - c),))


def _select(idx: jax.Array, names: tuple[str, ...], table: dict[str, Callable[[jax.Array], jax.Array]],
            x: jax.Array) -> jax.Array:
    if len(names) == 1:
        return table[names[0]](x)
    return lax.switch(idx, [table[n] for n in names], x)


def _prefix(n: int, count: jax.Array) -> jax.Array:
    return jnp.arange(n) < count


def _kernel_mask(f: Family, k: jax.Array) -> jax.Array | None:
    """The superkernel's centre k x k taps (None when this family only ever uses its full kernel)."""
    if len(f.kernels) == 1:
        return None
    d = jnp.abs(jnp.arange(f.kernel) - f.kernel // 2) <= k // 2
    return (d[:, None] & d[None, :]).astype(jnp.float32)


class _Ctx:
    """The settings one forward pass shares: mode, BN constants, padding, depthwise lowering."""

    def __init__(self, plan: Plan, train: bool, momentum: float | None, impl: str) -> None:
        self.train, self.impl, self.padding = train, impl, plan.padding
        self.momentum = plan.bn_momentum if momentum is None else momentum
        self.eps = plan.bn_eps

    def bn(self, p: Tree, s: Tree, y: jax.Array, active: jax.Array | None) -> tuple[jax.Array, Tree]:
        """TF-semantics BatchNorm (the backend's formula); running statistics move only where ``active``."""
        if self.train:
            mean = jnp.mean(y, axis=(0, 1, 2))
            var = jnp.maximum(jnp.mean(jnp.square(y), axis=(0, 1, 2)) - jnp.square(mean), 0.0)
            m = self.momentum
            new_mean = m * s["mean"] + (1.0 - m) * mean
            new_var = m * s["var"] + (1.0 - m) * var
            if active is not None:
                new_mean = jnp.where(active, new_mean, s["mean"])
                new_var = jnp.where(active, new_var, s["var"])
            s = {"mean": new_mean, "var": new_var}
        else:
            mean, var = s["mean"], s["var"]
        mul = p["scale"] * lax.rsqrt(var + self.eps)
        add = p["bias"] - mean * mul
        return y * mul + add, s

    def conv(self, x: jax.Array, w: jax.Array, stride: tuple[int, int]) -> jax.Array:
        pads = conv_pads((x.shape[1], x.shape[2]), w.shape[0], stride, self.padding)
        if self.impl == "fused":
            return conv_patches(x, w, stride, pads)
        return conv2d(x, w, stride, pads)

    def dw(self, x: jax.Array, w: jax.Array, stride: tuple[int, int]) -> jax.Array:
        pads = conv_pads((x.shape[1], x.shape[2]), w.shape[0], stride, self.padding)
        return depthwise(x, w, stride, pads, self.impl)


def conv_patches(x: jax.Array, w: jax.Array, stride: tuple[int, int], pads: Pads) -> jax.Array:
    """A dense NHWC conv as one matmul over its k*k shifted (strided) slices: the CPU form of the supernet.

    XLA:CPU runs a convolution's gradient inside a conditional (an op-family branch of ``lax.switch``)
    through a slow generic loop, 15-20x slower than outside one; a matmul there is as fast as anywhere.
    Taps that only read padding are dropped first, as :func:`~mnasdsl.backends.flax_ops.conv2d` does."""
    w, pads = trim_taps((x.shape[1], x.shape[2]), w, stride, pads)
    kh, kw, cin, cout = w.shape
    if kh == kw == 1 and stride == (1, 1) and pads == ((0, 0), (0, 0)):
        return jnp.dot(x.reshape(-1, cin), w[0, 0]).reshape(*x.shape[:-1], cout)
    (pt, pb), (pl, pr) = pads
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    n, hp, wp, _ = xp.shape
    sh, sw = stride
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    cols = [lax.slice(xp, (0, a, b, 0), (n, a + (ho - 1) * sh + 1, b + (wo - 1) * sw + 1, cin), (1, sh, sw, 1))
            for a in range(kh) for b in range(kw)]
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    return jnp.dot(patches.reshape(-1, kh * kw * cin), w.reshape(kh * kw * cin, cout)).reshape(n, ho, wo, cout)


def _masked(y: jax.Array, keep: jax.Array | None) -> jax.Array:
    return y if keep is None else jnp.where(keep, y, 0.0)


def _family_forward(ctx: _Ctx, slot: Slot, f: Family, p: Tree, s: Tree, x: jax.Array,
                    c: dict[str, jax.Array]) -> tuple[jax.Array, Tree]:
    """One op family's layer at this slot (its main path, SE and skip), widened to the slot's output."""
    s = dict(s)
    fs = dict(s[f.op])
    mid = _prefix(f.mid, c["mid"])
    out = _prefix(f.cout, c["cout"])
    km = _kernel_mask(f, c["kernel"])

    def act(y: jax.Array) -> jax.Array:
        return _select(c["act"], slot.acts, ACTIVATIONS, y)

    def kernel(w: jax.Array) -> jax.Array:
        return w if km is None else w * km[:, :, None, None]

    y = x[..., :f.cin]
    if f.op == "mb":
        y, fs["expand"] = _bn_of(ctx, p["expand"], fs["expand"], ctx.conv(y, p["expand"]["kernel"], (1, 1)), mid)
        y = _masked(act(y), mid)
    if f.op in ("mb", "ds"):
        y, fs["dw"] = _bn_of(ctx, p["dw"], fs["dw"], ctx.dw(y, kernel(p["dw"]["kernel"]), slot.stride), mid)
        y = _masked(act(y), mid)
    if f.op in ("cv", "er"):
        keep = out if f.op == "cv" else mid
        y, fs["conv"] = _bn_of(ctx, p["conv"], fs["conv"], ctx.conv(y, kernel(p["conv"]["kernel"]), slot.stride),
                               keep)
        y = _masked(act(y), keep)
    if f.se:
        y = _se(slot, f, p["se"], y, c)
    if f.op != "cv":
        y, fs["project"] = _bn_of(ctx, p["project"], fs["project"], ctx.conv(y, p["project"]["kernel"], (1, 1)),
                                  out)
        y = _masked(y, out)
    s[f.op] = fs
    res = None
    if slot.identity:
        res = jnp.where(c["skip"] == 1, _fit(x, f.cout), 0.0)
    if slot.pool:
        pooled = avg_pool_same(x, slot.stride)
        r_pool = _fit(pooled, f.cout)
        if slot.pool_proj is not None:
            pp, ps = p["pool_proj"], s["pool_proj"]
            used = (c["pool_proj"] == 1) & (c["skip"] == 2)
            pp_out = _prefix(slot.pool_proj[1], c["cout"])
            proj, ps = ctx.bn(pp["bn"], ps["bn"], ctx.conv(pooled[..., :slot.pool_proj[0]], pp["kernel"], (1, 1)),
                              pp_out & used)
            s["pool_proj"] = {"bn": ps}
            r_pool = jnp.where(c["pool_proj"] == 1, _fit(_masked(proj, pp_out), f.cout), r_pool)
        res = jnp.where(c["skip"] == 2, r_pool, 0.0 if res is None else res)
    if res is not None:
        y = y + res
    return _fit(y, slot.out_width), s


def _bn_of(ctx: _Ctx, p: Tree, s: Tree, y: jax.Array, active: jax.Array | None) -> tuple[jax.Array, Tree]:
    out, bs = ctx.bn(p["bn"], s["bn"], y, active)
    return out, {"bn": bs}


def _se(slot: Slot, f: Family, p: Tree, y: jax.Array, c: dict[str, jax.Array]) -> jax.Array:
    """Squeeze-excitation over the first ``mid`` channels with a ``se``-wide bottleneck (its act and gate
    selected per subnet); off when ``se`` is 0."""
    s = jnp.mean(y, axis=(1, 2))
    s = _select(c["se_act"], slot.se_acts, ACTIVATIONS, s @ p["reduce_kernel"] + p["reduce_bias"])
    s = jnp.where(_prefix(f.se, c["se"]), s, 0.0)
    g = _select(c["gate"], slot.gates, GATES, s @ p["expand_kernel"] + p["expand_bias"])
    gated = y * g[:, None, None, :]
    return gated if f.se_always else jnp.where(c["se"] > 0, gated, y)


def _slot_forward(ctx: _Ctx, slot: Slot, p: Tree, s: Tree, x: jax.Array,
                  c: dict[str, jax.Array]) -> tuple[jax.Array, Tree]:
    branches: list[Callable[[Tree], tuple[jax.Array, Tree]]] = []
    if slot.branches[0] == "skip":
        branches.append(lambda st: (_fit(x, slot.out_width), st))
    for f in slot.families:
        branches.append(lambda st, f=f: _family_forward(ctx, slot, f, p[f.op] | _extra(p), st, x, c))
    if len(branches) == 1:
        return branches[0](s)
    return lax.switch(c["branch"], branches, s)


def _extra(p: Tree) -> Tree:
    """The slot-level weights a family's layer also uses (the pool skip's projection)."""
    return {"pool_proj": p["pool_proj"]} if "pool_proj" in p else {}


def forward(plan: Plan, params: Tree, stats: Tree, x: jax.Array, cfg: dict[str, jax.Array], *, train: bool,
            impl: str, momentum: float | None = None, dropout_key: jax.Array | None = None
            ) -> tuple[jax.Array, Tree]:
    """Logits (batch, classes) of subnet ``cfg`` on NHWC float images, and the BN statistics after it
    (updated in train mode: running averages with the plan's momentum, or ``momentum``; 0 stores the batch's
    own statistics, which is how BN is recalibrated). Dropout applies in train mode given ``dropout_key``."""
    ctx = _Ctx(plan, train, momentum, impl)
    new: Tree = {"slots": {}}
    st = plan.stem
    y, new["stem"] = _bn_of(ctx, params["stem"], stats["stem"], ctx.conv(x, params["stem"]["kernel"], st.stride),
                            None)
    y = ACTIVATIONS[st.act](y)
    for i, slot in enumerate(plan.slots):
        c = {k: v[i] for k, v in cfg.items() if k != "head_cin"}
        key = str(i)
        y, new["slots"][key] = _slot_forward(ctx, slot, params["slots"][key], stats["slots"][key], y, c)
    hd = plan.head
    y = y[..., :hd.cin]
    if hd.op == "fc":
        s = jnp.mean(y, axis=(1, 2))
        y = ACTIVATIONS[hd.act](s @ params["head"]["kernel"] + params["head"]["bias"])
        new["head"] = {}
    else:
        y, new["head"] = _bn_of(ctx, params["head"], stats["head"], ctx.conv(y, params["head"]["kernel"], hd.stride),
                                None)
        y = jnp.mean(ACTIVATIONS[hd.act](y), axis=(1, 2))
    if train and dropout_key is not None and plan.dropout > 0:
        keep = jax.random.bernoulli(dropout_key, 1.0 - plan.dropout, y.shape)
        y = jnp.where(keep, y / (1.0 - plan.dropout), 0.0)
    logits = y @ params["classifier"]["kernel"] + params["classifier"]["bias"]
    return logits.astype(jnp.float32), (new if train else stats)


# --- a subnet's own weights ------------------------------------------------------------------------------

def _crop(src: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The subnet's part of a supernet weight: the centre of a conv kernel's spatial taps, the first entries
    of every other axis (channel prefixes)."""
    src = np.asarray(src)
    if src.shape == tuple(shape):
        return src
    idx: list[slice] = []
    for axis, (have, want) in enumerate(zip(src.shape, shape, strict=True)):
        if want > have:
            raise ValueError(f"a {shape} weight does not fit in the supernet's {src.shape}")
        if src.ndim == 4 and axis < 2:
            o = (have - want) // 2
            idx.append(slice(o, o + want))
        else:
            idx.append(slice(0, want))
    return src[tuple(idx)]


def subnet_variables(low: Any, slot_of_layer: list[int | None], params: Tree, stats: Tree,
                     template: dict[str, Any]) -> dict[str, Any]:
    """The standalone network's {"params", "batch_stats"} (the backend's pure-dict layout, ``template``)
    cut out of the supernet's: layer by layer, the leaves named alike, each cropped to its shape."""
    out: dict[str, Any] = {}
    for kind, tree in (("params", params), ("batch_stats", stats)):
        tmpl = template[kind]
        layers: dict[Any, Any] = {}
        for li, ly in enumerate(low.layers):
            if ly.kind == "classifier" or li not in tmpl["layers"]:  # no such leaves (a pooled head has no BN)
                continue
            if ly.kind == "stem":
                src = tree["stem"]
            elif ly.kind == "head":
                src = tree["head"]
            else:
                k = slot_of_layer[li]
                assert k is not None
                slot = tree["slots"][str(k)]
                src = slot[ly.op] | ({"pool_proj": slot["pool_proj"]} if ly.pool_proj else {})
            layers[li] = _cut(src, tmpl["layers"][li])
        cut: dict[str, Any] = {"layers": layers}
        if kind == "params":
            cut["classifier_kernel"] = _crop(tree["classifier"]["kernel"], tmpl["classifier_kernel"].shape)
            cut["classifier_bias"] = _crop(tree["classifier"]["bias"], tmpl["classifier_bias"].shape)
        out[kind] = cut
    return out


def _cut(src: Any, tmpl: Any) -> Any:
    if isinstance(tmpl, dict):
        return {k: _cut(src[k], v) for k, v in tmpl.items()}
    return _crop(src, tuple(tmpl.shape))

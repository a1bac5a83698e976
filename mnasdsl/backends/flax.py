"""Flax backend: the lowered layer list becomes flax.nnx modules that XLA compiles.

Semantics are those of the TF TPU MnasNet reference (models/official/mnasnet/mnasnet_model.py):
bias-free convs followed by BN, linear projections, SE with biased 1x1 convs, TF SAME padding.
Only :class:`~mnasdsl.lowering.Layer` fields are read, so the parameter count of the module equals
the cost model's for every network. The depthwise convolution is lowered per platform (see
:mod:`mnasdsl.backends.flax_ops`) with the same parameters either way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..diagnostics import MnasError
from ..fsutil import staged_dir
from ..ir import Network
from ..lowering import Layer, LoweredNetwork, lower
from .flax_ops import ACTIVATIONS, avg_pool_same, conv2d, conv_pads, depthwise, resolve_impl

__all__ = [
    "MnasNet",
    "abstract",
    "build",
    "count_params",
    "export_stablehlo",
    "load_params",
    "resolve_ckpt_dir",
    "save_params",
    "set_platform",
    "variables",
]

PARAMS_FORMAT = "mnasdsl-flax-params/1"


def _np_rng(rngs: nnx.Rngs) -> np.random.Generator:
    """A NumPy generator seeded from the params stream. Initializing in NumPy avoids one XLA
    compile per distinct initializer shape, which made an eager A1 build take tens of seconds."""
    key = rngs.params()
    try:
        seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    except jax.errors.TracerArrayConversionError:  # built under a trace (eval_shape): values unused
        seed = [0]
    return np.random.default_rng(seed)


def _put(a: np.ndarray) -> jax.Array:
    """A host array on the device without an XLA compile: ``jnp.asarray`` compiles a copy per
    distinct shape (about 10 ms each, most of an eager build), ``device_put`` is a plain transfer."""
    return jax.device_put(np.asarray(a, np.float32))


def _conv_param(rng: np.random.Generator, shape: tuple[int, ...], fan_out: int) -> nnx.Param:
    """TF reference conv init: N(0, sqrt(2 / fan_out)), fan_out = k*k*out (k*k for depthwise)."""
    return nnx.Param(_put(rng.normal(0.0, np.sqrt(2.0 / fan_out), shape)))


class BatchNorm(nnx.Module):
    """BatchNorm over the channel axis with TF semantics: ``running = m*running + (1-m)*batch``
    (TF momentum 0.99 means the same number here); train normalizes with the biased batch
    variance and updates the running statistics, eval only reads them."""

    def __init__(self, ch: int, momentum: float, epsilon: float, dtype: Any) -> None:
        self.scale = nnx.Param(_put(np.ones(ch, np.float32)))
        self.bias = nnx.Param(_put(np.zeros(ch, np.float32)))
        self.mean = nnx.BatchStat(_put(np.zeros(ch, np.float32)))
        self.var = nnx.BatchStat(_put(np.ones(ch, np.float32)))
        self.momentum, self.epsilon, self.dtype = momentum, epsilon, dtype

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if train:
            xf = x.astype(jnp.float32)
            mean = jnp.mean(xf, axis=(0, 1, 2))
            var = jnp.maximum(jnp.mean(jnp.square(xf), axis=(0, 1, 2)) - jnp.square(mean), 0.0)
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1.0 - m) * mean
            self.var[...] = m * self.var[...] + (1.0 - m) * var
        else:
            mean, var = self.mean[...], self.var[...]
        # Fold into one multiply-add per element: scale/sqrt(var+eps) and a shifted bias.
        mul = self.scale[...] * jax.lax.rsqrt(var + self.epsilon)
        add = self.bias[...] - mean * mul
        return x * mul.astype(self.dtype) + add.astype(self.dtype)


class ConvBN(nnx.Module):
    """Bias-free kxk conv + BatchNorm + optional activation (``act="none"`` keeps it linear)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: tuple[int, int], act: str, padding: str,
                 bn: tuple[float, float], dtype: Any, rng: np.random.Generator) -> None:
        self.kernel = _conv_param(rng, (kernel, kernel, cin, cout), kernel * kernel * cout)
        self.bn = BatchNorm(cout, bn[0], bn[1], dtype)
        self.ksize, self.stride, self.act, self.padding, self.dtype = kernel, stride, act, padding, dtype

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        pads = conv_pads((x.shape[1], x.shape[2]), self.ksize, self.stride, self.padding)
        y = conv2d(x, self.kernel[...].astype(self.dtype), self.stride, pads)
        return ACTIVATIONS[self.act](self.bn(y, train))


class DepthwiseBN(nnx.Module):
    """Bias-free depthwise kxk conv + BatchNorm + activation; ``impl`` picks the lowering."""

    def __init__(self, ch: int, kernel: int, stride: tuple[int, int], act: str, padding: str,
                 bn: tuple[float, float], dtype: Any, impl: str, rng: np.random.Generator) -> None:
        self.kernel = _conv_param(rng, (kernel, kernel, 1, ch), kernel * kernel)
        self.bn = BatchNorm(ch, bn[0], bn[1], dtype)
        self.ksize, self.stride, self.act, self.padding, self.dtype = kernel, stride, act, padding, dtype
        self.impl = impl

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        pads = conv_pads((x.shape[1], x.shape[2]), self.ksize, self.stride, self.padding)
        y = depthwise(x, self.kernel[...].astype(self.dtype), self.stride, pads, self.impl)
        return ACTIVATIONS[self.act](self.bn(y, train))


GATES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "hsigmoid": lambda x: jax.nn.relu6(x + 3.0) * (1.0 / 6.0),
}


class SqueezeExcite(nnx.Module):
    """Global mean -> 1x1 conv (bias) -> act -> 1x1 conv (bias) -> gate; TF's is ReLU and sigmoid,
    MobileNetV3's ReLU and hard sigmoid, EfficientNetV2's the block's activation and sigmoid."""

    def __init__(self, ch: int, se: int, dtype: Any, rng: np.random.Generator, act: str = "relu",
                 gate: str = "sigmoid") -> None:
        self.reduce_kernel = _conv_param(rng, (ch, se), se)
        self.reduce_bias = nnx.Param(_put(np.zeros(se, np.float32)))
        self.expand_kernel = _conv_param(rng, (se, ch), ch)
        self.expand_bias = nnx.Param(_put(np.zeros(ch, np.float32)))
        self.dtype, self.act, self.gate = dtype, act, gate

    def __call__(self, x: jax.Array) -> jax.Array:
        d = self.dtype
        s = jnp.mean(x, axis=(1, 2))
        s = ACTIVATIONS[self.act](s @ self.reduce_kernel[...].astype(d) + self.reduce_bias[...].astype(d))
        s = GATES[self.gate](s @ self.expand_kernel[...].astype(d) + self.expand_bias[...].astype(d))
        return x * s[:, None, None, :]


class PooledHead(nnx.Module):
    """MobileNetV3's efficient head: global mean -> 1x1 conv with bias, no BN -> act. Returns a 1x1 map."""

    def __init__(self, cin: int, cout: int, act: str, dtype: Any, rng: np.random.Generator) -> None:
        self.kernel = _conv_param(rng, (cin, cout), cout)
        self.bias = nnx.Param(_put(np.zeros(cout, np.float32)))
        self.act, self.dtype = act, dtype

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        d = self.dtype
        s = jnp.mean(x, axis=(1, 2))
        s = ACTIVATIONS[self.act](s @ self.kernel[...].astype(d) + self.bias[...].astype(d))
        return s[:, None, None, :]


class _Ctx(NamedTuple):
    """What every op's module builder needs besides the layer."""

    padding: str
    bn: tuple[float, float]
    dtype: Any
    impl: str
    rng: np.random.Generator


Make = Callable[[], nnx.Module]


class _Parts(NamedTuple):
    """An op's main-path modules as factories; Block builds them in this order with the SE between
    ``conv`` and ``project`` (the order fixes which random numbers each weight draws)."""

    expand: Make | None = None
    dw: Make | None = None
    conv: Make | None = None
    project: Make | None = None


def _cv(ly: Layer, c: _Ctx) -> _Parts:
    return _Parts(conv=lambda: ConvBN(ly.in_shape[2], ly.out_shape[2], ly.kernel, ly.stride, ly.act, c.padding,
                                      c.bn, c.dtype, c.rng))


def _ds(ly: Layer, c: _Ctx) -> _Parts:
    return _Parts(
        dw=lambda: DepthwiseBN(ly.mid, ly.kernel, ly.stride, ly.act, c.padding, c.bn, c.dtype, c.impl, c.rng),
        project=lambda: ConvBN(ly.mid, ly.out_shape[2], 1, (1, 1), "none", c.padding, c.bn, c.dtype, c.rng))


def _mb(ly: Layer, c: _Ctx) -> _Parts:
    return _ds(ly, c)._replace(
        expand=lambda: ConvBN(ly.in_shape[2], ly.mid, 1, (1, 1), ly.act, c.padding, c.bn, c.dtype, c.rng))


def _er(ly: Layer, c: _Ctx) -> _Parts:
    return _Parts(
        conv=lambda: ConvBN(ly.in_shape[2], ly.mid, ly.kernel, ly.stride, ly.act, c.padding, c.bn, c.dtype, c.rng),
        project=lambda: ConvBN(ly.mid, ly.out_shape[2], 1, (1, 1), "none", c.padding, c.bn, c.dtype, c.rng))


# One entry per registered op (mnasdsl.ops): the modules of its main path. SE and skips are shared.
FLAX: dict[str, Callable[[Layer, _Ctx], _Parts]] = {"cv": _cv, "ds": _ds, "mb": _mb, "er": _er}


def _make(f: Make | None) -> nnx.Module | None:
    return f() if f is not None else None


class Block(nnx.Module):
    """One lowered block with its SE and skip, exactly as the Layer describes it; the op's own
    modules come from :data:`FLAX`."""

    def __init__(self, layer: Layer, padding: str, bn: tuple[float, float], dtype: Any, impl: str,
                 rng: np.random.Generator) -> None:
        cin, cout = layer.in_shape[2], layer.out_shape[2]
        self.op, self.skip = layer.op, layer.skip
        self.stride = layer.stride
        parts = FLAX[layer.op](layer, _Ctx(padding, bn, dtype, impl, rng))
        # Absent sub-modules are None, declared as data so nnx treats the slot uniformly.
        self.expand = nnx.data(_make(parts.expand))
        self.dw = nnx.data(_make(parts.dw))
        self.conv = nnx.data(_make(parts.conv))
        self.se = nnx.data(SqueezeExcite(layer.mid, layer.se, dtype, rng, layer.se_act, layer.se_gate)
                           if layer.se else None)
        self.project = nnx.data(_make(parts.project))
        self.pool_proj = nnx.data(ConvBN(cin, cout, 1, (1, 1), "none", padding, bn, dtype, rng)
                                  if layer.pool_proj else None)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = x
        if self.expand is not None:
            y = self.expand(y, train)
        if self.dw is not None:
            y = self.dw(y, train)
        if self.conv is not None:
            y = self.conv(y, train)
        if self.se is not None:
            y = self.se(y)
        if self.project is not None:
            y = self.project(y, train)
        if self.skip == "identity":
            y = y + x
        elif self.skip == "pool":
            s = avg_pool_same(x, self.stride)
            if self.pool_proj is not None:
                s = self.pool_proj(s, train)
            y = y + s
        return y


class MnasNet(nnx.Module):
    """The whole network: stem, blocks, head (conv + BN + act, global pool, dropout, dense)."""

    def __init__(self, lowered: LoweredNetwork, *, rngs: nnx.Rngs, impl: str, dtype: Any = jnp.float32) -> None:
        bn = (lowered.bn_momentum, lowered.bn_eps)
        pad = lowered.padding
        self.lowered = lowered
        self.dtype = dtype
        rng = _np_rng(rngs)
        layers: list[nnx.Module] = []
        for ly in lowered.layers:
            cin, cout = ly.in_shape[2], ly.out_shape[2]
            if ly.kind == "head" and ly.op == "fc":
                layers.append(PooledHead(cin, cout, ly.act, dtype, rng))
            elif ly.kind in ("stem", "head"):
                layers.append(ConvBN(cin, cout, ly.kernel, ly.stride, ly.act, pad, bn, dtype, rng))
            elif ly.kind == "block":
                layers.append(Block(ly, pad, bn, dtype, impl, rng))
            else:  # classifier: TF's dense init, uniform(+-1/sqrt(classes))
                r = 1.0 / float(np.sqrt(cout))
                w = rng.uniform(-r, r, (cin, cout))
                self.classifier_kernel = nnx.Param(_put(w))
                self.classifier_bias = nnx.Param(_put(np.zeros(cout, np.float32)))
        self.layers = nnx.List(layers)
        self.dropout = nnx.data(nnx.Dropout(lowered.dropout, rngs=rngs) if lowered.dropout > 0 else None)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """NHWC images -> logits (batch, classes), float32. ``train`` uses batch statistics
        (and updates the running ones) and applies dropout; eval is deterministic."""
        y = x.astype(self.dtype)
        for layer in self.layers:
            y = layer(y, train)
        y = jnp.mean(y, axis=(1, 2))
        if self.dropout is not None:
            y = self.dropout(y, deterministic=not train)
        y = y @ self.classifier_kernel[...].astype(self.dtype) + self.classifier_bias[...].astype(self.dtype)
        return y.astype(jnp.float32)

    def layer_params(self) -> list[int]:
        """Trainable parameters per lowered layer (the classifier last), to set beside the cost model."""
        out = [count_params(m) for m in self.layers]
        out.append(int(np.prod(self.classifier_kernel.shape) + np.prod(self.classifier_bias.shape)))
        return out


def _as_lowered(network: Network | LoweredNetwork) -> LoweredNetwork:
    return network if isinstance(network, LoweredNetwork) else lower(network)


def _impl_for(platform: str | Sequence[str] | None) -> str:
    if platform is None or isinstance(platform, str):
        return resolve_impl(platform)
    impls = {resolve_impl(p) for p in platform}
    return impls.pop() if len(impls) == 1 else "dynamic"


def build(network: Network | LoweredNetwork, *, rngs: nnx.Rngs, platform: str | Sequence[str] | None = None,
          dtype: Any = jnp.float32) -> MnasNet:
    """Build the nnx module of a network (lowered here if it is not yet).

    ``platform`` picks the depthwise lowering (``cpu`` fused slices, ``gpu``/``tpu`` grouped conv;
    several platforms: chosen per platform when lowered); None means the current default backend.
    Parameters are stored in float32; ``dtype`` is the compute dtype.
    """
    return MnasNet(_as_lowered(network), rngs=rngs, impl=_impl_for(platform), dtype=dtype)


def abstract(network: Network | LoweredNetwork, platform: str | Sequence[str] | None = None,
             dtype: Any = jnp.float32) -> MnasNet:
    """The module with shapes but no values (nothing computed): for counting and checkpoint targets."""
    return nnx.eval_shape(lambda: build(network, rngs=nnx.Rngs(0), platform=platform, dtype=dtype))


def set_platform(model: MnasNet, platform: str | Sequence[str] | None) -> MnasNet:
    """Switch the depthwise lowering of an existing model in place (the parameters are shared)."""
    impl = _impl_for(platform)
    for _, m in nnx.iter_modules(model):
        if isinstance(m, DepthwiseBN):
            m.impl = impl
    return model


def quick_compile_fn(model: MnasNet, pre: Any = None, post: Any = None) -> Any:
    """``images -> post(logits(pre(images)))`` compiled for the least compile time, not the fastest
    run: the grouped depthwise form and XLA's backend optimizations off. For a few images, where
    compiling is most of the wall time (mnasnet-small at 32 px: 0.4 s instead of 1.9 s); the fused
    form pays off beyond a handful of images at full size. ``pre``/``post`` (input scaling, softmax)
    run inside the one executable: eager jnp calls would each compile on their own."""
    graphdef, state = nnx.split(model)
    quick = nnx.merge(graphdef, state)  # a copy of the module tree: the caller's keeps its lowering
    for _, m in nnx.iter_modules(quick):
        if isinstance(m, DepthwiseBN):
            m.impl = "grouped"
    qgraph, qstate = nnx.split(quick)
    cache: dict[tuple[int, ...], Any] = {}
    pre = pre or (lambda v: v)
    post = post or (lambda v: v)
    options = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

    def run(x: Any) -> jax.Array:
        key = tuple(np.shape(x))
        if key not in cache:
            fn = jax.jit(lambda s, v: post(nnx.merge(qgraph, s)(pre(v), train=False)))
            cache[key] = fn.lower(qstate, jax.ShapeDtypeStruct(key, np.asarray(x).dtype)).compile(
                compiler_options=options)
        return cache[key](qstate, x)

    return run


def count_params(module: nnx.Module) -> int:
    """Trainable parameters (BN scale and bias included, running statistics not)."""
    return int(sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(module, nnx.Param))))


# --- checkpoints -----------------------------------------------------------------------------------
#
# Layout of a params directory (written by save_params, read by load_params):
#   DIR/params/        Orbax StandardCheckpointer checkpoint of {"params": ..., "batch_stats": ...}
#                      (nnx pure dicts of the nnx.Param and nnx.BatchStat state)
#   DIR/mnasdsl.json   {"format", "network", "params", "input", "classes"}: what it was saved from
# A training output directory may instead hold DIR/ckpt.json = {"latest": "<path relative to DIR>"}
# naming such a checkpoint (a params directory or a bare Orbax checkpoint); it takes precedence.


def variables(model: nnx.Module) -> dict[str, Any]:
    """{"params": ..., "batch_stats": ...} as nnx pure dicts: the checkpoint layout, and what
    weight importers fill."""
    return {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
            "batch_stats": nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))}


def save_params(model: MnasNet, directory: str | os.PathLike[str]) -> Path:
    """Write the model's variables as an Orbax checkpoint under ``directory`` (never pickle).

    The new directory is assembled beside the target and renamed into place, so a crash never
    leaves a half-written checkpoint where a good one was.
    """
    import orbax.checkpoint as ocp

    target = Path(directory).absolute()
    with staged_dir(target) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "params", variables(model))
            ckptr.wait_until_finished()
        low = model.lowered
        meta = {"format": PARAMS_FORMAT, "network": low.name, "params": count_params(model),
                "input": list(low.input_shape), "classes": low.classes}
        (tmp / "mnasdsl.json").write_text(json.dumps(meta, indent=2) + "\n")
    return target


def resolve_ckpt_dir(directory: str | os.PathLike[str]) -> Path:
    """The Orbax checkpoint a params or training directory points to (see the layout above)."""
    d = Path(directory).absolute()
    if not d.is_dir():
        raise MnasError(f"{d}: no such checkpoint directory")
    for _ in range(8):  # follow ckpt.json -> params directory -> params/
        pointer = d / "ckpt.json"
        if pointer.is_file():
            try:
                latest = json.loads(pointer.read_text())["latest"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise MnasError(f"{pointer}: unreadable checkpoint pointer ({e})") from None
            nxt = (d / str(latest)).absolute()
            if not nxt.is_dir():
                raise MnasError(f"{pointer}: points to {nxt}, which does not exist")
            d = nxt
            continue
        if (d / "params").is_dir():
            return d / "params"
        return d
    raise MnasError(f"{directory}: ckpt.json pointers nest too deep")


def load_params(network: Network | LoweredNetwork, directory: str | os.PathLike[str], *,
                rngs: nnx.Rngs | None = None, platform: str | Sequence[str] | None = None,
                dtype: Any = jnp.float32) -> MnasNet:
    """Build the network and fill it with the variables saved under ``directory`` (by save_params
    or by training); a checkpoint of another architecture is a MnasError, not a silent mismatch.
    The error names both networks (from ``mnasdsl.json``) and the first differing variable, found in
    the stored metadata once restoring fails: Orbax's own structure-mismatch message lists every key
    (kilobytes on one line)."""
    import orbax.checkpoint as ocp

    model = build(network, rngs=rngs or nnx.Rngs(0), platform=platform, dtype=dtype)
    path = resolve_ckpt_dir(directory)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables(model))
    with ocp.StandardCheckpointer() as ckptr:
        try:
            restored = ckptr.restore(path, abstract)
        except Exception as e:  # noqa: BLE001 - any failure to restore means a checkpoint that does not fit
            # Only now read the stored metadata (a tenth of a second) to name the first difference.
            diff = _first_difference(ckptr, path, abstract)
            raise _mismatch(directory, path, model, diff or _clip(str(e).strip() or type(e).__name__)) from None
    # Orbax restores the stored shapes even when the target's differ: compare them explicitly.
    want = {kp: tuple(a.shape) for kp, a in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    for kp, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]:
        shape = np.shape(leaf)
        if tuple(shape) != want.get(kp, ()):
            with ocp.StandardCheckpointer() as ckptr:
                diff = _first_difference(ckptr, path, abstract)
            raise _mismatch(directory, path, model, diff or f"{_key(kp)} is {tuple(shape)} there, "
                                                            f"{tuple(want.get(kp, ()))} here")
    for key, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        state = nnx.state(model, kind)
        nnx.replace_by_pure_dict(state, restored[key])
        nnx.update(model, state)
    return model


def _key(kp: Sequence[Any]) -> str:
    """``params/layers/3/dw/kernel``: one spelling for the model's int list indices and Orbax's str keys."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in kp)


def _clip(text: str, width: int = 160) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= width else line[:width - 3] + "..."


def _first_difference(ckptr: Any, path: Path, abstract: Any) -> str | None:
    """The first variable whose name or shape differs between the checkpoint and the model (None when
    all match, or when the stored metadata cannot be read: restoring then reports what is wrong)."""
    try:
        stored = ckptr.metadata(path).item_metadata.tree
        there = {_key(kp): tuple(leaf.shape) for kp, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]}
    except Exception:  # noqa: BLE001 - best effort: Orbax's metadata layout is not a stable API
        return None
    here = {_key(kp): tuple(a.shape) for kp, a in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    order = sorted(here, key=lambda k: not k.startswith("params/"))  # weights say more than BN statistics
    diffs = [f"{k} is missing there" if k not in there else f"{k} is {there[k]} there, {here[k]} here"
             for k in order if there.get(k) != here[k]]
    diffs += [f"{k} there has no counterpart here" for k in there if k not in here]
    if not diffs:
        return None
    more = len(diffs) - 1
    return diffs[0] + (f" (and {more} more difference{'s' if more > 1 else ''})" if more else "")


def _network_text(name: Any, params: Any, input_shape: Any, classes: Any) -> str:
    shape = "x".join(str(x) for x in input_shape) if isinstance(input_shape, list | tuple) else "?"
    count = f"{params:,}" if isinstance(params, int) else "?"
    return f"`{name}` ({count} params, input {shape}, {classes} classes)"


def _mismatch(directory: str | os.PathLike[str], path: Path, model: MnasNet, detail: str) -> MnasError:
    """Two lines naming both networks: what the checkpoint's mnasdsl.json says it holds, and what was asked."""
    from ..diagnostics import Diagnostic

    low = model.lowered
    params = count_params(model)
    here = _network_text(low.name, params, list(low.input_shape), low.classes)
    note = f"not a checkpoint of network {low.name!r} at this size: {detail}"
    saved: Any = None
    for cand in (path.parent / "mnasdsl.json", path / "mnasdsl.json"):
        try:
            saved = json.loads(cand.read_text())
            break
        except (OSError, ValueError):
            continue
    if not isinstance(saved, dict) or "network" not in saved:
        return MnasError(f"{path}: {note}")
    if (saved.get("network"), saved.get("params"), saved.get("classes")) == (low.name, params, low.classes):
        return MnasError(Diagnostic(f"checkpoint {directory} of network {here} cannot be restored",
                                    notes=(_clip(detail, 300),)))
    there = _network_text(saved.get("network"), saved.get("params"), saved.get("input"), saved.get("classes"))
    return MnasError(Diagnostic(f"checkpoint {directory} holds network {there}, not {here}", notes=(note,)))


# --- StableHLO export ------------------------------------------------------------------------------

def export_platforms(platforms: Sequence[str]) -> list[str]:
    """jax.export platform names (``gpu`` means ``cuda``), deduplicated, order kept."""
    out: list[str] = []
    for p in platforms:
        name = {"gpu": "cuda"}.get(p.lower(), p.lower())
        resolve_impl(name)
        if name not in out:
            out.append(name)
    return out


def inference_fn(model: MnasNet) -> Any:
    """A jitted ``images -> logits`` eval function with the variables closed over (embedded)."""
    graphdef, state = nnx.split(model)

    def infer(x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state)(x, train=False)

    return jax.jit(infer)


def export_stablehlo(model: MnasNet, batch: int, platforms: Sequence[str] | None = None) -> bytes:
    """Serialize the eval forward as a jax.export artifact taking one (batch, H, W, C) float32
    argument; it loads with ``jax.export.deserialize(data).call(x)`` and needs no mnasdsl.
    Several platforms: one artifact, the depthwise form chosen per platform inside it."""
    plats = export_platforms(platforms or [jax.default_backend()])
    before = {id(m): m.impl for _, m in nnx.iter_modules(model) if isinstance(m, DepthwiseBN)}
    set_platform(model, plats)
    h, w, c = model.lowered.input_shape
    spec = jax.ShapeDtypeStruct((batch, h, w, c), jnp.float32)
    try:
        exported = jax.export.export(inference_fn(model), platforms=plats)(spec)
    finally:  # leave the caller's model lowered as it was
        for _, m in nnx.iter_modules(model):
            if isinstance(m, DepthwiseBN):
                m.impl = before[id(m)]
    try:
        return bytes(exported.serialize())
    except ImportError as e:  # jax serializes with flatbuffers, an optional dependency of jax
        raise MnasError(f"cannot serialize the StableHLO artifact: {e} (pip install flatbuffers)") from None

"""Layer-granular training steps: executables compiled per lowered-layer signature and reused
across networks, so a search pays XLA compilation only for layers no earlier trial compiled.

A whole-network step compiles every layer again for each new architecture (7-10 s on a 2-core
CPU for mnasnet-small at 32 px, against about 2 s of training in a 2-epoch proxy). Here a step
chains small executables, each keyed by what determines its code (the layer's module structure,
parameter and input shapes):

- ``fwd``: the layer in train mode; returns its output, its updated BN statistics and the VJP
  residuals (a ``jax.vjp`` object's leaves; those that are the layer's own weights or input are
  not written out, see :class:`_Rebuild`). The BN momentum is an argument, so BN recalibration
  (momentum 0: the statistics of the batch) reuses it.
- ``bwd``: the VJP applied to the output gradient, then the optimizer update of the layer's
  parameters; returns the input gradient (and, for checks, the parameter gradients).
- ``eval``: the layer in eval mode; ``tail`` and ``tail_eval``: pooling, dropout, classifier,
  loss and metrics (with the classifier's update).

The optimizer must be per-leaf (AdamW is; the recipe says so with ``split_tx``): each layer owns
its optimizer state and receives the learning rate that the fused step's schedule would compute.
Same initialization, data order, dropout stream and arithmetic as :class:`~mnasdsl.train.loop.Trainer`;
results agree to float rounding (the tests compare gradients and a whole proxy trial).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ..diagnostics import MnasError
from ..ir import Network
from ..lowering import lower
from .data import Batch, norm_stats
from .recipes import Recipe, make_recipe

_F32 = jnp.float32
_CACHE: dict[tuple[Any, ...], Any] = {}  # executable key -> jax Compiled, for the life of the process
_LOCK = threading.Lock()
_SCHEDULES: dict[tuple[Any, ...], Any] = {}
_IN_FLIGHT: dict[tuple[Any, ...], threading.Lock] = {}
_STATS: dict[str, int] = {"compiled": 0, "reused": 0}


def cache_stats() -> dict[str, int]:
    """Executables compiled and found already compiled, in all and per kind (``compiled:train`` ...):
    for tests and benchmarks, a second network sharing layers with the first compiles only its new ones."""
    return dict(_STATS)


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
        _SCHEDULES.clear()
        _STATS.clear()
        _STATS.update(compiled=0, reused=0)


# XLA:CPU's MLIR fusion emitters take about a third of a layer's compile time (mnasnet-a1 at 32 px:
# 12-13 s of compiles against 8.5-9 s), and the classic emitter's steps are as fast within noise. The
# two round a few ulps apart in some fusions (the tests compile their whole-network references alike).
CPU_COMPILER_OPTIONS: dict[str, Any] = {"xla_cpu_use_fusion_emitters": False}
# Executables that run once (the zero-cost score's gradient step) compile for compile time, not
# speed: LLVM's optimizations off halves their compile time (mnasnet-a1: 5.0-5.7 s to 2.6 s).
CPU_RUN_ONCE_OPTIONS: dict[str, Any] = {**CPU_COMPILER_OPTIONS, "xla_backend_optimization_level": 0,
                                        "xla_llvm_disable_expensive_passes": True}


def _opts(run_once: bool = False) -> dict[str, Any]:
    options = CPU_RUN_ONCE_OPTIONS if run_once else CPU_COMPILER_OPTIONS
    if jax.default_backend() == "cpu" and options:
        return {"compiler_options": dict(options)}
    return {}


def _aval(x: Any) -> Any:
    return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype)


def _sig(tree: Any) -> tuple[Any, ...]:
    leaves, treedef = jax.tree.flatten(tree)
    return (treedef, *((tuple(v.shape), str(v.dtype)) for v in leaves))


def _set_momentum(module: nnx.Module, momentum: Any) -> None:
    """Every BatchNorm of ``module`` takes ``momentum`` (a traced scalar) for this call only: the
    module is a fresh merge inside the trace, so the checkpointed structure never sees it."""
    from .loop import _is_bn

    for _, m in nnx.iter_modules(module):
        if _is_bn(m) and hasattr(m, "momentum"):
            object.__setattr__(m, "momentum", momentum)


def _compile(key: tuple[Any, ...], make: Any) -> Any:
    """The cached executable for ``key``, else ``make()`` (lower + compile) stored under it. Two
    threads asking for the same key (a network's repeated layers) compile it once."""
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _STATS["reused"] += 1
            return hit
        gate = _IN_FLIGHT.setdefault(key, threading.Lock())
    with gate:
        with _LOCK:
            hit = _CACHE.get(key)
            if hit is not None:
                _STATS["reused"] += 1
                return hit
        exe = make()
        with _LOCK:
            _STATS["compiled"] += 1
            _STATS[f"compiled:{key[0]}"] = _STATS.get(f"compiled:{key[0]}", 0) + 1
            _CACHE[key] = exe
            _IN_FLIGHT.pop(key, None)
            return exe


@dataclass
class _Layer:
    graphdef: Any
    params: Any
    stats: Any
    opt: Any
    tx: Any
    mask_key: tuple[Any, ...]
    fwd: Any = None
    bwd: Any = None
    evaluate: Any = None


class LayerwiseTrainer:
    """The training interface of :class:`~mnasdsl.train.loop.Trainer` (``step``, ``recalibrate``,
    ``evaluate``, ``eval_model``) on per-layer executables; one device, recipes with ``split_tx``."""

    n_dev = 1

    def __init__(self, network: Network, *, recipe: str, batch: int, steps_per_epoch: int, epochs: int,
                 seed: int, lr: float | None = None, norm: tuple[np.ndarray, np.ndarray] | None = None,
                 eval_batch: int | None = None, train_only: bool = False, keep_grads: bool = False) -> None:
        from ..backends.flax import build
        from .loop import weight_decay_mask

        self.network, self.seed, self.batch = network, seed, batch
        model = build(network, rngs=nnx.Rngs(seed))
        params = nnx.state(model, nnx.Param)
        self.recipe: Recipe = make_recipe(recipe, batch=batch, steps_per_epoch=steps_per_epoch, epochs=epochs,
                                          wd_mask=weight_decay_mask(model, params), lr=lr)
        if self.recipe.split_tx is None or self.recipe.ema_decay:
            raise MnasError(f"recipe {recipe!r} cannot train layer by layer (its optimizer is not per-leaf)")
        mean, std = norm if norm is not None else norm_stats(network.input[2])
        self._mean, self._std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self._model = model
        self._lowered = lower(network)
        # Gradients only (the zero-cost score): no optimizer state, no evaluation executables, and
        # layers are not updated.
        self.train_only = train_only
        # Also return each step's parameter gradients (``last_grads``: checks against the fused step).
        # Off in training: writing them out costs a parameter-sized buffer per layer and step.
        self.keep_grads = keep_grads or train_only
        self.layers: list[_Layer] = []
        for layer in model.layers:  # the tail keeps its optimizer: its one executable updates it
            self.layers.append(self._split(layer, with_opt=not train_only))
        # The tail: the model itself with no layers (pool, dropout, classifier), fed the last features.
        tail = nnx.merge(*nnx.split(model))
        tail.layers = nnx.List([])
        tail.lowered = None  # static metadata of the whole network: it would key the tail to this network
        self.tail = self._split(tail)
        self.tail_rest = nnx.state(tail, nnx.Not(nnx.Any(nnx.Param, nnx.BatchStat)))
        self.eval_batch = eval_batch or batch
        self._count = jnp.zeros((), jnp.int32)  # the optimizer step, as the fused step's state["step"]
        self._momentum = jnp.asarray(network.bn_momentum, _F32)
        self.state = {"step": self._count}
        sched_key = ("schedule", recipe, batch, steps_per_epoch, epochs, lr)
        with _LOCK:  # one executable per schedule, so a trial whose layers are all cached compiles nothing
            if sched_key not in _SCHEDULES:
                schedule = self.recipe.schedule
                _SCHEDULES[sched_key] = jax.jit(lambda c: (jnp.asarray(schedule(c), _F32), c + 1))
            self._lr_fn = _SCHEDULES[sched_key]
        self.last_grads: list[Any] = []
        self._eval_ready: list[Any] = []
        self._compile_all()

    # --- construction ------------------------------------------------------------------------------

    def _split(self, module: nnx.Module, with_opt: bool = True) -> _Layer:
        from .loop import weight_decay_mask

        graphdef, params, stats, *_ = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
        mask_key = tuple(bool(v) for v in jax.tree.leaves(weight_decay_mask(module, params)))
        tx = self.recipe.split_tx(_GROUP_MASK)  # type: ignore[misc]
        if not with_opt:
            return _Layer(graphdef, params, stats, None, tx, mask_key)
        init = _compile(("init", _sig(params), mask_key),
                        lambda: jax.jit(lambda p: tx.init(_groups(p, mask_key))).lower(params).compile(**_opts()))
        return _Layer(graphdef, params, stats, init(params), tx, mask_key)

    def _compile_all(self) -> None:
        """Look up or compile every executable of this network before training starts, in parallel
        (XLA's compiler releases the interpreter lock). A layer's forward and backward are one cache
        entry: the backward is compiled for the residual structure of that very forward."""
        h, w, c = self.network.input
        shapes = [(h, w, c)] + [ly.out_shape for ly in self._lowered.layers if ly.kind != "classifier"]
        if len(shapes) != len(self.layers) + 1:
            raise MnasError("layer-by-layer steps: the model's layers do not match the lowered network")
        momentum = jax.ShapeDtypeStruct((), _F32)
        lr = jax.ShapeDtypeStruct((), _F32)

        def layer_job(i: int) -> None:
            ly = self.layers[i]
            xin = jax.ShapeDtypeStruct((self.batch, *shapes[i]), _F32)
            base = (ly.graphdef, _sig(ly.params), _sig(ly.stats))

            def make_pair() -> tuple[Any, Any]:
                box: dict[str, Any] = {}
                lowered = jax.jit(_fwd_fn(ly.graphdef, box)).lower(ly.params, ly.stats, xin, momentum)
                y, _, res = lowered.out_info
                rebuild = _Rebuild(box["treedef"], box["spec"])
                if self.train_only:  # gradients only: no optimizer update in the backward executable
                    bwd = jax.jit(_grad_fn(rebuild)).lower(res, y, ly.params, xin)
                else:
                    bwd = jax.jit(_bwd_fn(ly.tx, ly.mask_key, self.keep_grads, rebuild),
                                  donate_argnums=(2, 3)).lower(res, y, ly.params, ly.opt, lr, xin)
                # The two compiles run side by side: a child network often brings a single new layer.
                done: dict[str, Any] = {}
                opts = _opts(run_once=self.train_only)
                helper = threading.Thread(target=lambda: done.setdefault("bwd", bwd.compile(**opts)))
                helper.start()
                fwd = lowered.compile(**opts)
                helper.join()
                if "bwd" not in done:  # the helper failed: compile here to raise its error
                    done["bwd"] = bwd.compile(**opts)
                return fwd, done["bwd"]

            form = "grad" if self.train_only else "train+grads" if self.keep_grads else "train"
            ly.fwd, ly.bwd = _compile((form, *base, _sig(xin), ly.mask_key), make_pair)

        # What the background compiles lower against: shapes only, since training donates (deletes)
        # the arrays themselves as it updates them.
        abstract = [(jax.tree.map(_aval, ly.params), jax.tree.map(_aval, ly.stats)) for ly in self.layers]
        tail_abstract = (jax.tree.map(_aval, self.tail.params), jax.tree.map(_aval, self.tail.stats),
                         jax.tree.map(_aval, self.tail_rest))

        def eval_job(i: int) -> None:
            ly = self.layers[i]
            params, stats = abstract[i]
            xev = jax.ShapeDtypeStruct((self.eval_batch, *shapes[i]), _F32)
            ly.evaluate = _compile(("eval", ly.graphdef, _sig(params), _sig(stats), _sig(xev)),
                                   lambda: jax.jit(_eval_fn(ly.graphdef)).lower(params, stats, xev).compile(**_opts()))

        feat = jax.ShapeDtypeStruct((self.batch, *shapes[-1]), _F32)
        feat_eval = jax.ShapeDtypeStruct((self.eval_batch, *shapes[-1]), _F32)

        def tail_job() -> None:
            t, classes = self.tail, self.network.classes
            lab = jax.ShapeDtypeStruct((self.batch,), jnp.int32)
            msk = jax.ShapeDtypeStruct((self.batch,), _F32)
            base = (t.graphdef, _sig(t.params), _sig(t.stats), _sig(self.tail_rest), classes)
            once = self.train_only
            t.fwd = _compile(("tail", *base, _sig(feat), t.mask_key, once), lambda: jax.jit(
                _tail_fn(t.graphdef, t.tx, t.mask_key, classes), donate_argnums=(0, 1)).lower(
                    t.params, t.opt, t.stats, self.tail_rest, feat, lab, msk, lr).compile(**_opts(once)))

        def tail_eval_job() -> None:
            t = self.tail
            params, stats, rest = tail_abstract
            base = (t.graphdef, _sig(params), _sig(stats), _sig(rest), self.network.classes)
            lab_e = jax.ShapeDtypeStruct((self.eval_batch,), jnp.int32)
            msk_e = jax.ShapeDtypeStruct((self.eval_batch,), _F32)
            t.evaluate = _compile(("tail_eval", *base, _sig(feat_eval)), lambda: jax.jit(
                _tail_eval_fn(t.graphdef)).lower(params, stats, rest, feat_eval, lab_e, msk_e).compile(**_opts()))

        h0, w0, c0 = self.network.input
        self._prep = {b: _compile(("prep", b, h0, w0, c0, self._mean.tobytes(), self._std.tobytes()),
                                  lambda b=b: jax.jit(_prep_fn(self._mean, self._std)).lower(
                                      jax.ShapeDtypeStruct((b, h0, w0, c0), jnp.uint8)).compile(**_opts()))
                      for b in ({self.batch} if self.train_only else {self.batch, self.eval_batch})}
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(layer_job, i) for i in range(len(self.layers))] + [pool.submit(tail_job)]
            for f in futures:
                f.result()
        if not self.train_only:
            # Evaluation executables are needed only after training: they compile on a background
            # thread while the first steps run (on a CPU the training threads do not use every core
            # all the time), and evaluate() waits for them.
            background = ThreadPoolExecutor(1)
            self._eval_ready = [background.submit(eval_job, i) for i in range(len(self.layers))]
            self._eval_ready.append(background.submit(tail_eval_job))
            background.shutdown(wait=False)

    # --- steps ---------------------------------------------------------------------------------------

    def step(self, batch: Batch) -> dict[str, jax.Array]:
        lr, self._count = self._lr_fn(self._count)
        self.state["step"] = self._count
        x = self._prep[self.batch](batch.images)
        momentum = self._momentum
        saved = []  # per layer: its input and the residuals its backward needs beyond input and weights
        for ly in self.layers:
            xin = x
            x, ly.stats, res = ly.fwd(ly.params, ly.stats, xin, momentum)
            saved.append((xin, res))
        t = self.tail
        t.params, t.opt, self.tail_rest, g, tail_grads, metrics = t.fwd(
            t.params, t.opt, t.stats, self.tail_rest, x, batch.labels, batch.mask, lr)
        grads = []
        for ly, (xin, res) in zip(reversed(self.layers), reversed(saved), strict=True):
            if self.train_only:
                gp, g = ly.bwd(res, g, ly.params, xin)
            else:
                g, ly.params, ly.opt, gp = ly.bwd(res, g, ly.params, ly.opt, lr, xin)
            grads.append(gp)
        # The gradients of this step (per layer, then the tail's), for checks against the fused step.
        if self.keep_grads:
            self.last_grads = [*reversed(grads), tail_grads]
        return metrics  # type: ignore[no-any-return]

    def ready(self) -> None:
        """Wait for the evaluation executables compiling in the background (and raise their errors)."""
        for f in self._eval_ready:
            f.result()

    def lr_at(self, step: int) -> float:
        return float(self._lr_fn(jnp.asarray(step, jnp.int32))[0])

    def eval_weights(self) -> tuple[Any, Any]:
        return [ly.params for ly in self.layers], [ly.stats for ly in self.layers]

    def recalibrate(self, batches: Iterable[Batch]) -> Any:
        """Per-layer BN statistics averaged over training batches (the fused Trainer's recalibration:
        each batch's own statistics, summed and divided in float32)."""
        acc: list[list[np.ndarray]] | None = None
        n = 0
        zero = jnp.zeros((), _F32)
        for b in batches:
            x = self._prep[self.batch](b.images)
            got = []
            for ly in self.layers:
                x, stats, _ = ly.fwd(ly.params, ly.stats, x, zero)
                got.append(stats)
            leaves = [[np.asarray(v) for v in jax.tree.leaves(s)] for s in jax.device_get(got)]
            acc = leaves if acc is None else [[a + v for a, v in zip(al, vl, strict=True)]
                                              for al, vl in zip(acc, leaves, strict=True)]
            n += 1
        if acc is None:
            return None
        div = np.float32(n)
        return [jax.tree.unflatten(jax.tree.structure(ly.stats), [a / div for a in al])
                for ly, al in zip(self.layers, acc, strict=True)]

    def evaluate(self, batches: Iterable[Batch], batch_stats: Any = None) -> dict[str, float]:
        from .loop import _finish

        if self.train_only:
            raise MnasError("a gradient-only trainer has no evaluation executables")
        self.ready()

        stats = batch_stats if batch_stats is not None else [ly.stats for ly in self.layers]
        totals = []
        for b in batches:
            x = self._prep[self.eval_batch](b.images)
            for ly, s in zip(self.layers, stats, strict=True):
                x = ly.evaluate(ly.params, s, x)
            totals.append(self.tail.evaluate(self.tail.params, self.tail.stats, self.tail_rest, x, b.labels,
                                             b.mask))
        return _finish(totals)

    def eval_model(self, batch_stats: Any = None) -> nnx.Module:
        """The trained network as one nnx module (the fused backend's), with these weights."""
        stats = batch_stats if batch_stats is not None else [ly.stats for ly in self.layers]
        model = nnx.merge(*nnx.split(self._model))  # a new module each time, as the fused trainer's
        for module, ly, s in zip(model.layers, self.layers, stats, strict=True):
            nnx.update(module, jax.tree.map(jnp.copy, ly.params), jax.tree.map(jnp.copy, s))
        nnx.update(model, jax.tree.map(jnp.copy, self.tail.params), jax.tree.map(jnp.copy, self.tail_rest))
        return model


# --- the traced functions (module level: one definition, keyed by graphdef and shapes) -------------------


def _prep_fn(mean: np.ndarray, std: np.ndarray) -> Any:
    def prep(images: jax.Array) -> jax.Array:
        return (images.astype(_F32) - mean) / std
    return prep


@dataclass(frozen=True)
class _Rebuild:
    """How a backward executable reassembles its layer's VJP: the residual pytree's structure, and for
    each leaf where it comes from: ("r", i) the forward's i-th output residual, ("p", i) the i-th
    weight, ("x", 0) the layer's input. Weights and input are arguments of the backward anyway, so the
    forward does not write copies of them out (a parameter- plus an activation-sized buffer per layer
    and step)."""

    treedef: Any
    spec: tuple[tuple[str, int], ...]

    def __call__(self, res: list[jax.Array], params: Any, x: jax.Array) -> Any:
        weights = jax.tree.leaves(params)
        src = {"r": res, "p": weights, "x": [x]}
        return jax.tree.unflatten(self.treedef, [src[k][i] for k, i in self.spec])


def _fwd_fn(graphdef: Any, box: dict[str, Any] | None = None) -> Any:
    def fwd(params: Any, stats: Any, x: jax.Array, momentum: jax.Array) -> tuple[Any, Any, Any]:
        def f(p: Any, v: jax.Array) -> tuple[jax.Array, Any]:
            m = nnx.merge(graphdef, p, stats, copy=True)
            _set_momentum(m, momentum)
            y = m(v, True)
            return y, nnx.state(m, nnx.BatchStat)

        y, vjp, new_stats = jax.vjp(f, params, x, has_aux=True)
        leaves, treedef = jax.tree.flatten(vjp)
        # Residuals that are the forward's own inputs are matched by identity (the same traced values).
        inputs = {id(v): ("p", i) for i, v in enumerate(jax.tree.leaves(params))}
        inputs[id(x)] = ("x", 0)
        spec, kept = [], []
        for v in leaves:
            where = inputs.get(id(v))
            if where is None:
                where = ("r", len(kept))
                kept.append(v)
            spec.append(where)
        if box is not None:
            box.update(treedef=treedef, spec=tuple(spec))
        return y, new_stats, kept
    return fwd


def _bwd_fn(tx: optax.GradientTransformation, mask: tuple[bool, ...], keep_grads: bool, rebuild: _Rebuild) -> Any:
    def bwd(res: Any, gy: jax.Array, params: Any, opt: Any, lr: jax.Array,
            x: jax.Array) -> tuple[jax.Array, Any, Any, Any]:
        gp, gx = rebuild(res, params, x)(gy)
        new_params, opt = _update(tx, mask, gp, params, opt, lr)
        return gx, new_params, opt, gp if keep_grads else None
    return bwd


def _grad_fn(rebuild: _Rebuild) -> Any:
    def grad(res: Any, gy: jax.Array, params: Any, x: jax.Array) -> tuple[Any, jax.Array]:
        return rebuild(res, params, x)(gy)  # type: ignore[no-any-return]
    return grad


# The optimizer runs on two flat vectors per layer, the weight-decayed parameters and the rest (BN):
# elementwise the same AdamW as per leaf, in a handful of kernels instead of several per leaf (the
# per-leaf update compiled as long as the layer's backward pass).
_GROUP_MASK = {"decay": True, "plain": False}


def _groups(tree: Any, mask: tuple[bool, ...]) -> dict[str, jax.Array]:
    leaves = jax.tree.leaves(tree)
    return {name: jnp.concatenate([jnp.ravel(v) for v, m in zip(leaves, mask, strict=True) if m is want] or
                                  [jnp.zeros((0,), _F32)])
            for name, want in (("decay", True), ("plain", False))}


def _ungroup(flat: dict[str, jax.Array], like: Any, mask: tuple[bool, ...]) -> Any:
    leaves, treedef = jax.tree.flatten(like)
    offsets = {"decay": 0, "plain": 0}
    out = []
    for v, m in zip(leaves, mask, strict=True):
        name = "decay" if m else "plain"
        n = int(np.prod(v.shape))
        out.append(flat[name][offsets[name]:offsets[name] + n].reshape(v.shape))
        offsets[name] += n
    return jax.tree.unflatten(treedef, out)


def _update(tx: optax.GradientTransformation, mask: tuple[bool, ...], grads: Any, params: Any, opt: Any,
            lr: jax.Array) -> tuple[Any, Any]:
    opt = opt._replace(hyperparams={**opt.hyperparams, "learning_rate": lr})
    flat = _groups(params, mask)
    updates, opt = tx.update(_groups(grads, mask), opt, flat)
    return _ungroup(optax.apply_updates(flat, updates), params, mask), opt


def _eval_fn(graphdef: Any) -> Any:
    def ev(params: Any, stats: Any, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params, stats)(x, False)  # type: ignore[no-any-return]
    return ev


def _tail_fn(graphdef: Any, tx: optax.GradientTransformation, decay: tuple[bool, ...], classes: int) -> Any:
    def tail(params: Any, opt: Any, stats: Any, rest: Any, feats: jax.Array, labels: jax.Array, mask: jax.Array,
             lr: jax.Array) -> tuple[Any, Any, Any, jax.Array, dict[str, jax.Array]]:
        targets = jax.nn.one_hot(labels, classes)
        count = jnp.maximum(mask.sum(), 1.0)

        def loss_fn(p: Any, f: jax.Array) -> tuple[jax.Array, tuple[jax.Array, Any]]:
            m = nnx.merge(graphdef, p, stats, rest, copy=True)
            logits = m(f, train=True)
            loss = (optax.softmax_cross_entropy(logits, targets) * mask).sum() / count
            return loss, (logits, nnx.state(m, nnx.Not(nnx.Any(nnx.Param, nnx.BatchStat))))

        (loss, (logits, new_rest)), (gp, gf) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(params, feats)
        new_params, opt = _update(tx, decay, gp, params, opt, lr)
        correct = ((jnp.argmax(logits, -1) == labels) * mask).sum()
        return new_params, opt, new_rest, gf, gp, {"loss": loss * mask.sum(), "correct": correct,
                                                   "count": mask.sum()}
    return tail


def _tail_eval_fn(graphdef: Any) -> Any:
    from .loop import _eval_metrics

    def tail_eval(params: Any, stats: Any, rest: Any, feats: jax.Array, labels: jax.Array,
                  mask: jax.Array) -> dict[str, jax.Array]:
        return _eval_metrics(nnx.merge(graphdef, params, stats, rest)(feats, train=False), labels, mask)
    return tail_eval

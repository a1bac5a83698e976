"""The training loop: a jitted, data-parallel step over (graphdef, state), evaluation, BN
recalibration, per-epoch checkpoints and the run's outputs.

The model is split once into a static graphdef and array state (params, BN statistics, the rest,
e.g. dropout RNG); the jitted step takes and returns that state, so nothing Python-side is mutated
inside jit and the whole state can be checkpointed and restored bit for bit.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .. import preprocess
from ..diagnostics import MnasError
from ..formatter import format as format_ir
from ..ir import Network
from ..lowering import lower
from . import checkpoint as ck
from .data import EVAL_CROP, Batch, DataSource, Loader, Split, norm_stats, open_source
from .recipes import Recipe, ema_decay_at, make_recipe

RECALIBRATE_BELOW_EPOCHS = 5  # default: recalibrate BN statistics for runs shorter than this, or shorter
# than 20 BN time constants (2,000 steps at momentum 0.99), where the running averages still lag the weights
RECALIBRATE_BATCHES = 10

Log = Callable[[str], None]


@dataclass
class TrainResult:
    """What a run produced; ``model`` holds the evaluation weights (EMA, recalibrated BN when on)."""

    val_acc: float
    val_loss: float
    val_top5: float
    train_acc: float
    train_loss: float
    epochs: int
    images_per_s: float
    wall_s: float
    history: list[dict[str, float]]
    class_names: tuple[str, ...]
    model: Any = field(default=None, repr=False)
    out: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {"val_acc": self.val_acc, "val_loss": self.val_loss, "val_top5": self.val_top5,
                "train_acc": self.train_acc, "train_loss": self.train_loss, "epochs": self.epochs,
                "images_per_s": self.images_per_s, "wall_s": self.wall_s, "classes": list(self.class_names),
                "history": self.history}


def _is_bn(module: Any) -> bool:
    """nnx.BatchNorm or any module holding BatchStat variables itself (the backend's TF-style BatchNorm)."""
    return isinstance(module, nnx.BatchNorm) or any(isinstance(v, nnx.BatchStat) for v in vars(module).values())


def _bn_paths(model: nnx.Module) -> list[tuple[Any, ...]]:
    return [tuple(p) for p, m in nnx.iter_modules(model) if _is_bn(m)]


def _key_tuple(path: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def weight_decay_mask(model: nnx.Module, params: Any) -> Any:
    """True for every parameter outside a BatchNorm: L2 / weight decay never touches BN scale and bias."""
    bns = _bn_paths(model)

    def keep(path: tuple[Any, ...], _: Any) -> bool:
        keys = _key_tuple(path)
        return not any(keys[:len(b)] == b for b in bns)

    return jax.tree_util.tree_map_with_path(keep, params)


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _mesh(devices: int | None) -> Mesh:
    devs = jax.local_devices()
    if devices is not None:
        if devices > len(devs):
            raise MnasError(f"asked for {devices} devices but only {len(devs)} are available")
        devs = devs[:devices]
    return Mesh(np.array(devs), ("batch",))


class Trainer:
    """A network, its optimizer and the jitted steps, data-parallel over a 1-D device mesh."""

    def __init__(self, network: Network, *, recipe: str, batch: int, steps_per_epoch: int, epochs: int,
                 seed: int, lr: float | None = None, devices: int | None = None,
                 init: str | Path | None = None, norm: tuple[np.ndarray, np.ndarray] | None = None,
                 freeze_backbone: bool = False) -> None:
        from ..backends.flax import build

        self.network, self.seed, self.batch = network, seed, batch
        self.mesh = _mesh(devices)
        self.n_dev = self.mesh.devices.size
        if batch % self.n_dev:
            raise MnasError(f"batch {batch} is not a multiple of the {self.n_dev} devices")
        self.repl = NamedSharding(self.mesh, P())
        self.data_sharding = NamedSharding(self.mesh, P("batch"))

        model = build(network, rngs=nnx.Rngs(seed))
        self.fresh_from_init: list[str] = []
        if init is not None:
            from .init import init_from

            self.fresh_from_init = init_from(model, network, init)
        self.graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
        self.recipe: Recipe = make_recipe(recipe, batch=batch, steps_per_epoch=steps_per_epoch, epochs=epochs,
                                          wd_mask=weight_decay_mask(model, params), lr=lr)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:  # only the classifier learns; every other parameter gets a zero update
            labels = jax.tree_util.tree_map_with_path(
                lambda path, _: "train" if "classifier" in jax.tree_util.keystr(path) else "frozen", params)
            self.recipe = dataclasses.replace(self.recipe, tx=optax.multi_transform(
                {"train": self.recipe.tx, "frozen": optax.set_to_zero()}, labels))
        ema = {"params": params, "batch_stats": batch_stats} if self.recipe.ema_decay else None
        state = {"params": params, "batch_stats": batch_stats, "rest": rest,
                 "opt": jax.jit(self.recipe.tx.init)(params), "ema": ema, "step": jnp.zeros((), jnp.int32)}
        self.state = jax.device_put(state, self.repl)
        if ema is not None:  # its own buffers: the step donates the state, and a buffer cannot be donated twice
            self.state["ema"] = jax.jit(lambda t: jax.tree.map(lambda x: x * 1, t), out_shardings=self.repl)(ema)
        # A copy of the graph whose BatchNorms have momentum 0: one train-mode pass stores the batch's statistics.
        recal = nnx.merge(self.graphdef, params, batch_stats, rest)
        n_bn = 0
        for _, m in nnx.iter_modules(recal):
            if _is_bn(m) and hasattr(m, "momentum"):
                m.momentum, n_bn = 0.0, n_bn + 1
        if n_bn != len(_bn_paths(recal)):
            raise MnasError("BN recalibration: a BatchNorm of this backend has no `momentum` to set")
        self.recal_graphdef = nnx.split(recal, nnx.Param, nnx.BatchStat, ...)[0]
        mean, std = norm if norm is not None else norm_stats(network.input[2])
        self._mean, self._std = mean, std
        self._lr_fn: Any = None
        self._compile()

    # --- jitted functions ------------------------------------------------------------------------------

    def _normalize(self, images: jax.Array) -> jax.Array:
        return (images.astype(jnp.float32) - self._mean) / self._std

    def _compile(self) -> None:
        gd, recipe, classes = self.graphdef, self.recipe, self.network.classes
        normalize = self._normalize
        # A frozen backbone runs in eval mode: BN reads its running statistics and never updates them
        # (so the backbone stays bit-identical), and dropout is off.
        train_mode = not self.freeze_backbone

        def train_step(state: dict[str, Any], images: jax.Array, labels: jax.Array,
                       mask: jax.Array) -> tuple[dict[str, Any], dict[str, jax.Array]]:
            x = normalize(images)
            targets = jax.nn.one_hot(labels, classes)
            if recipe.label_smoothing:
                targets = optax.smooth_labels(targets, recipe.label_smoothing)
            count = jnp.maximum(mask.sum(), 1.0)

            def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any, Any]]:
                model = nnx.merge(gd, params, state["batch_stats"], state["rest"], copy=True)
                logits = model(x, train=train_mode)
                loss = (optax.softmax_cross_entropy(logits, targets) * mask).sum() / count
                return loss, (logits, nnx.state(model, nnx.BatchStat), nnx.state(model, nnx.Not(
                    nnx.Any(nnx.Param, nnx.BatchStat))))

            (loss, (logits, batch_stats, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
            updates, opt = recipe.tx.update(grads, state["opt"], state["params"])
            params = optax.apply_updates(state["params"], updates)
            ema = state["ema"]
            if ema is not None:
                d = ema_decay_at(recipe.ema_decay, state["step"])
                new = {"params": params, "batch_stats": batch_stats}
                # e + (1-d)(v-e): the same average, and exactly e where v did not move (a frozen backbone)
                ema = jax.tree.map(lambda e, v: e + (1.0 - d) * (v - e), ema, new)
            correct = ((jnp.argmax(logits, -1) == labels) * mask).sum()
            new_state = {"params": params, "batch_stats": batch_stats, "rest": rest, "opt": opt, "ema": ema,
                         "step": state["step"] + 1}
            return new_state, {"loss": loss * mask.sum(), "correct": correct, "count": mask.sum()}

        def eval_step(params: Any, batch_stats: Any, rest: Any, images: jax.Array, labels: jax.Array,
                      mask: jax.Array) -> dict[str, jax.Array]:
            logits = nnx.merge(gd, params, batch_stats, rest)(normalize(images), train=False)
            return _eval_metrics(logits, labels, mask)

        rgd = self.recal_graphdef

        def recal_step(params: Any, batch_stats: Any, rest: Any, images: jax.Array) -> Any:
            model = nnx.merge(rgd, params, batch_stats, rest)
            model(normalize(images), train=True)
            return nnx.state(model, nnx.BatchStat)

        r, d = self.repl, self.data_sharding
        self.train_step = jax.jit(train_step, in_shardings=(r, d, d, d), out_shardings=(r, r), donate_argnums=0)
        self.eval_step = jax.jit(eval_step, in_shardings=(r, r, r, d, d, d), out_shardings=r)
        self.recal_step = jax.jit(recal_step, in_shardings=(r, r, r, d), out_shardings=r)

    # --- steps -------------------------------------------------------------------------------------------

    def put(self, batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
        return (jax.device_put(batch.images, self.data_sharding), jax.device_put(batch.labels, self.data_sharding),
                jax.device_put(batch.mask, self.data_sharding))

    def step(self, batch: Batch) -> dict[str, jax.Array]:
        self.state, metrics = self.train_step(self.state, *self.put(batch))
        return metrics

    def lr_at(self, step: int) -> float:
        """The schedule's learning rate at ``step``, from one small executable (evaluated eagerly, the
        schedule's jnp ops would each compile on their own)."""
        if self._lr_fn is None:
            self._lr_fn = jax.jit(self.recipe.schedule)
        return float(self._lr_fn(jnp.asarray(step, jnp.int32)))

    def eval_weights(self) -> tuple[Any, Any]:
        src = self.state["ema"] if self.state["ema"] is not None else self.state
        return src["params"], src["batch_stats"]

    def recalibrate(self, batches: Iterable[Batch]) -> Any:
        """BN statistics re-estimated as the average over a few training batches (as torch's update_bn):
        a short run leaves the running averages (momentum 0.99) near their initial values."""
        params, bs = self.eval_weights()
        acc, n = None, 0
        for b in batches:
            stats = self.recal_step(params, bs, self.state["rest"], jax.device_put(b.images, self.data_sharding))
            # Summed on the host in float32: the same rounding as on the device, without an eager XLA
            # compile per statistics shape.
            stats = jax.tree.map(np.asarray, jax.device_get(stats))
            acc = stats if acc is None else jax.tree.map(np.add, acc, stats)
            n += 1
        if acc is None:
            return bs
        div = np.float32(n)
        return jax.device_put(jax.tree.map(lambda a: a / div, acc), self.repl)

    def evaluate(self, batches: Iterable[Batch], batch_stats: Any = None) -> dict[str, float]:
        params, bs = self.eval_weights()
        bs = bs if batch_stats is None else batch_stats
        totals = [self.eval_step(params, bs, self.state["rest"], *self.put(b)) for b in batches]
        return _finish(totals)

    def eval_model(self, batch_stats: Any = None) -> nnx.Module:
        params, bs = self.eval_weights()
        return nnx.merge(self.graphdef, jax.device_get(params),
                         jax.device_get(bs if batch_stats is None else batch_stats), jax.device_get(self.state["rest"]))

    # --- checkpoint leaves ------------------------------------------------------------------------------

    def leaves(self) -> list[np.ndarray]:
        out = []
        for x in jax.tree.leaves(self.state):
            out.append(np.asarray(jax.random.key_data(x) if _is_key(x) else x))
        return out

    def template(self) -> list[np.ndarray]:
        return [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in self.leaves()]  # type: ignore[misc]

    def restore(self, leaves: list[Any]) -> None:
        old, treedef = jax.tree.flatten(self.state)
        new = [jax.random.wrap_key_data(jnp.asarray(v), impl=jax.random.key_impl(o)) if _is_key(o) else jnp.asarray(v)
               for o, v in zip(old, leaves, strict=True)]
        self.state = jax.device_put(jax.tree.unflatten(treedef, new), self.repl)


def _eval_metrics(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    k = min(5, logits.shape[-1])
    top = jax.lax.top_k(logits, k)[1]
    return {"loss": (ce * mask).sum(), "correct": ((top[:, 0] == labels) * mask).sum(),
            "correct5": ((top == labels[:, None]).any(-1) * mask).sum(), "count": mask.sum()}


def _finish(totals: list[dict[str, jax.Array]]) -> dict[str, float]:
    if not totals:
        return {"loss": float("nan"), "acc": float("nan"), "top5": float("nan"), "count": 0.0}
    s = {k: float(sum(np.asarray(t[k], np.float64) for t in totals)) for k in totals[0]}
    n = max(s["count"], 1.0)
    return {"loss": s["loss"] / n, "acc": s["correct"] / n, "top5": s.get("correct5", float("nan")) / n,
            "count": s["count"]}


# --- the run ----------------------------------------------------------------------------------------------


def _stderr_log(msg: str) -> None:
    import sys

    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def _leave_nothing_on_error(run: Callable[..., TrainResult]) -> Callable[..., TrainResult]:
    """A run that fails (or is interrupted) before it saves an epoch removes what it made: the TensorBoard
    events in OUT/tb/, and OUT/tb/ and OUT themselves when it created them, so an error leaves nothing that
    was not there. Once an epoch is saved everything stays: --resume continues from it."""

    @functools.wraps(run)
    def guarded(network: Network, data: str | DataSource, **kw: Any) -> TrainResult:
        if kw.get("out") is None:
            return run(network, data, **kw)
        out = Path(kw["out"])
        tb = out / "tb"
        try:
            made = [d for d in (out, *out.parents) if not d.exists()]  # what mkdir -p will create, deepest first
            tb_before = set(tb.iterdir()) if tb.is_dir() else None
            saved_before = ck.epoch_dirs(out)
        except OSError:  # an unreadable OUT: the run reports it
            return run(network, data, **kw)
        try:
            return run(network, data, **kw)
        except BaseException:
            try:
                if ck.epoch_dirs(out) == saved_before:
                    _remove_new(tb, tb_before, made)
            except OSError:
                pass  # never hide the run's own error behind a cleanup failure
            raise

    return guarded


def _remove_new(tb: Path, tb_before: set[Path] | None, made: list[Path]) -> None:
    if tb.is_dir():
        for p in tb.iterdir():
            if tb_before is not None and p in tb_before:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        if tb_before is None:
            tb.rmdir()
    for d in made:  # only empty ones: whatever else appeared there is not this run's to delete
        try:
            d.rmdir()
        except OSError:
            break


@_leave_nothing_on_error
def fit(network: Network, data: str | DataSource, *, epochs: int, batch: int = 64, recipe: str = "adam",
        seed: int = 0, out: str | Path | None = None, lr: float | None = None, resume: bool = False,
        recalibrate_bn: bool | None = None, verbose: bool = False, devices: int | None = None,
        workers: int | None = None, log: Log | None = None, init: str | Path | None = None,
        freeze_backbone: bool = False, steps_form: str = "fused", final_eval_only: bool = False) -> TrainResult:
    """Train ``network`` on ``data`` (a DataSource or `digits` / `synthetic` / an ImageFolder path).

    With ``out`` None nothing touches disk (the search's proxy evaluator); otherwise every epoch
    ends with a checkpoint, metrics.csv, TensorBoard events and curves.png, and the run with
    result.json. ``recalibrate_bn`` (default: on for runs under 5 epochs or 20/(1-bn_momentum) steps)
    re-estimates BN statistics on a few training batches before each evaluation. ``init`` starts from
    the weights of an import, params or training directory (a new class count re-initializes only the
    classifier). ``resume`` with another ``epochs`` lengthens (or shortens) the run: the recipe's LR
    schedule is rebuilt for the new length, and ``log`` says how; resuming on other data is refused.
    ``steps_form`` is ``fused`` (one executable per step: the fastest steps, one compile per network)
    or ``layerwise`` (per-layer executables shared across networks: see :mod:`.layerwise`; a run
    without ``out``, ``init`` or ``resume``, on one device, with a per-leaf recipe).
    ``final_eval_only`` (runs without ``out``: a proxy needs only the final accuracy) skips the
    recalibration and evaluation of earlier epochs; their history rows carry NaN validation metrics.
    Neither touches the training state, so the final result is the same.
    User errors raise MnasError.
    """
    t_start = time.perf_counter()
    if epochs < 1:
        raise MnasError(f"epochs must be >= 1, got {epochs}")
    if batch < 1:
        raise MnasError(f"batch must be >= 1, got {batch}")
    if final_eval_only and out is not None:
        raise MnasError("every epoch of a run with an output directory is evaluated (its checkpoints record it)")
    log = log or (_stderr_log if verbose else (lambda _m: None))
    source = open_source(data)
    if network.classes != source.num_classes:
        raise MnasError(f"the network has {network.classes} classes but {source.name} has {source.num_classes} "
                        f"({', '.join(source.class_names[:5])}{', ...' if source.num_classes > 5 else ''})")
    h, w, c = network.input
    n_dev = len(jax.local_devices()) if devices is None else devices
    n_train = len(source.train)
    if n_train < n_dev:
        raise MnasError(f"{source.name}: only {n_train} training images")
    if len(source.val) == 0:
        raise MnasError(f"{source.name}: no validation images")
    tb = max(n_dev, min(batch, n_train) // n_dev * n_dev)  # the batch actually used (one compiled shape)
    steps = n_train // tb
    out_dir = Path(out) if out is not None else None
    if freeze_backbone:  # the backbone's BN statistics are part of what is frozen
        if recalibrate_bn:
            raise MnasError("--recalibrate-bn would change the frozen backbone's BN statistics")
        recal = False
    elif recalibrate_bn is None:  # running averages lag for a window of ~1/(1-momentum) steps
        recal = epochs < RECALIBRATE_BELOW_EPOCHS or steps * epochs < 20 / (1.0 - network.bn_momentum)
    else:
        recal = recalibrate_bn

    spec = format_ir(network)
    # The input preprocessing: what the --init weights expect (an import's TF-style 127/128 and its
    # published crop), what a resumed run used, else mnasdsl's default. It is recorded so eval,
    # predict and exports apply the same; a source with a fixed eval transform (digits) says so.
    h0, w0, c0 = network.input
    if resume and out_dir is not None and ck.epoch_dirs(out_dir):
        last = ck.epoch_dirs(out_dir)[-1][1]
        try:
            pre = preprocess.resolve(ck.read_meta(last).get("preprocess"), (h0, w0), c0, where=str(last))
        except ValueError as e:
            raise MnasError(f"{last / 'meta.json'}: invalid {e}") from None
    else:
        pre = ck.load_preprocess(init, (h0, w0), c0)
    if source.fixed_crop is not None:
        pre = pre.model_copy(update={"crop": source.fixed_crop})
    mean0, std0 = pre.norm
    run_meta = {"spec": spec, "network": network.name, "classes": list(source.class_names), "recipe": recipe,
                "batch": tb, "seed": seed, "lr": lr, "data": _data_id(source.name),
                "data_size": [n_train, len(source.val)], "epochs": epochs, "input": list(network.input),
                "signature": repr(lower(network).signature()), "freeze_backbone": freeze_backbone,
                "preprocess": pre.model_dump(mode="json", exclude={"channels"})}
    start_epoch, history = 0, []
    if out_dir is not None:
        ck.check_writable(out_dir)
        existing = ck.epoch_dirs(out_dir)
        if existing and not resume:
            raise MnasError(f"{out_dir}: already holds a training run (epoch {existing[-1][0]}); "
                            "pass --resume to continue it or choose another output directory")
    if resume:
        if out_dir is None:
            raise MnasError("resuming needs an output directory")
        existing = ck.epoch_dirs(out_dir)
        if not existing:
            raise MnasError(f"{out_dir}: nothing to resume (no completed epoch checkpoint)")
        meta = ck.read_meta(existing[-1][1])
        _check_same_data(meta, run_meta, out_dir)
        for key in ("signature", "classes", "recipe", "batch", "seed", "lr", "input", "freeze_backbone"):
            if meta.get(key, False if key == "freeze_backbone" else None) != run_meta[key]:  # older runs: unfrozen
                what = "network" if key == "signature" else key
                raise MnasError(f"{existing[-1][1]}: incompatible checkpoint: its {what} differs from this run's "
                                f"({_short(meta.get(key))} vs {_short(run_meta[key])})")

    trainer: Any
    if steps_form == "layerwise":
        if out is not None or init is not None or resume or freeze_backbone or n_dev != 1:
            raise MnasError("layer-by-layer steps are for in-memory runs on one device without --init, "
                            "--resume or --freeze-backbone")
        from .layerwise import LayerwiseTrainer

        trainer = LayerwiseTrainer(network, recipe=recipe, batch=tb, steps_per_epoch=steps, epochs=epochs,
                                   seed=seed, lr=lr, norm=(mean0, std0), eval_batch=_eval_batch(tb, 1))
    elif steps_form == "fused":
        trainer = Trainer(network, recipe=recipe, batch=tb, steps_per_epoch=steps, epochs=epochs, seed=seed,
                          lr=lr, devices=devices, init=None if resume else init, norm=(mean0, std0),
                          freeze_backbone=freeze_backbone)
    else:
        raise MnasError(f"unknown steps form {steps_form!r} (fused or layerwise)")
    if init is not None and not resume:
        log(f"initialized from {init}" + (f" (fresh: {', '.join(trainer.fresh_from_init)})"
                                          if trainer.fresh_from_init else ""))
    if resume and out_dir is not None:
        epoch_no, edir = ck.epoch_dirs(out_dir)[-1]
        meta = ck.read_meta(edir)
        tmpl = trainer.template()
        if meta.get("leaves") != [[list(x.shape), str(x.dtype)] for x in tmpl]:
            raise MnasError(f"{edir}: incompatible checkpoint: its training state does not match this run's")
        trainer.restore(ck.load_leaves(edir, tmpl))
        start_epoch, history = epoch_no, list(meta.get("history", []))
        if start_epoch >= epochs:
            log(f"{out_dir}: already trained for {start_epoch} epochs")
        else:
            log(f"resuming from epoch {start_epoch} ({edir})")
            if meta.get("epochs") is not None and meta["epochs"] != epochs:
                log(_schedule_note(trainer, int(meta["epochs"]), epochs, start_epoch, steps, lr))

    writer = None
    if out_dir is not None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:  # optional: metrics.csv and curves.png carry the same numbers
            log("no TensorBoard events (tb/): pip install 'mnasdsl[tensorboard]' for them")
        else:
            writer = SummaryWriter(str(out_dir / "tb"), purge_step=start_epoch + 1 if start_epoch else None)
    log(f"training {network.name} on {source.name}: {n_train} train / {len(source.val)} val images, "
        f"{source.num_classes} classes, batch {tb} x {steps} steps, recipe {recipe}, {trainer.n_dev} device(s)")

    reported_bad = 0
    train_images, train_time = 0, 0.0
    eval_bs = None
    try:
        for epoch in range(start_epoch, epochs):
            loader = Loader(source.train, batch=tb, size=(h, w), channels=c, train=True, augment=source.augment,
                            seed=seed, epoch=epoch, workers=workers)
            t0 = time.perf_counter()
            totals, first_done, t_first, n_timed = [], False, t0, 0
            with _progress(verbose, f"epoch {epoch + 1}/{epochs}", len(loader), tb) as advance:
                pending: dict[str, jax.Array] | None = None
                for i, b in enumerate(loader):
                    m = trainer.step(b)
                    totals.append(m)
                    if pending is not None:
                        _check_finite(pending, epoch, i, out_dir, len(history))
                        advance(float(pending["loss"]) / max(float(pending["count"]), 1.0))
                    pending = m
                    if not first_done:  # the first step compiles: keep it out of images/s
                        jax.block_until_ready(m["loss"])
                        first_done, t_first = True, time.perf_counter()
                    else:
                        n_timed += tb
                if pending is not None:
                    _check_finite(pending, epoch, len(loader), out_dir, len(history))
                    advance(float(pending["loss"]) / max(float(pending["count"]), 1.0))
            jax.block_until_ready(trainer.state["step"])
            t_end = time.perf_counter()
            ips = n_timed / (t_end - t_first) if n_timed and t_end > t_first else float("nan")
            train_images += n_timed
            train_time += (t_end - t_first) if n_timed else 0.0
            tr = _finish(totals)
            eval_bs = None
            nan = float("nan")
            va = {"loss": nan, "acc": nan, "top5": nan}
            if not (final_eval_only and epoch + 1 < epochs):
                if recal:
                    rl = Loader(source.train, batch=tb, size=(h, w), channels=c, train=True, augment=False,
                                seed=seed, epoch=1_000_000 + epoch, workers=workers, limit=RECALIBRATE_BATCHES,
                                crop=pre.crop)
                    eval_bs = trainer.recalibrate(rl)
                vb = _eval_batch(tb, trainer.n_dev)
                va = trainer.evaluate(Loader(source.val, batch=vb, size=(h, w), channels=c, train=False,
                                             workers=workers, crop=pre.crop), eval_bs)
            bad = source.corrupt_count()
            if bad > reported_bad:
                log(f"warning: skipped {bad} corrupt or unreadable image(s) so far")
                reported_bad = bad
            row = {"epoch": epoch + 1, "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"],
                   "val_acc": va["acc"], "val_top5": va["top5"],
                   "lr": trainer.lr_at(int(trainer.state["step"])),
                   "images_per_s": ips, "epoch_s": t_end - t0}
            history.append(row)
            log(f"epoch {epoch + 1}/{epochs}: train loss {tr['loss']:.4f} acc {tr['acc']:.4f} | "
                f"val loss {va['loss']:.4f} acc {va['acc']:.4f} top5 {va['top5']:.4f} | "
                f"{ips:.0f} img/s, {t_end - t0:.1f}s")
            if out_dir is not None:
                ck.save_epoch(out_dir, epoch + 1, trainer.leaves(), {**run_meta, "history": history},
                              trainer.eval_model(eval_bs))
                _write_outputs(out_dir, history, writer, row)
    finally:
        if writer is not None:
            writer.close()

    if not history:
        raise MnasError("no epoch was trained")
    last = history[-1]
    rate = train_images / train_time if train_time > 0 else _mean_finite(r["images_per_s"] for r in history)
    result = TrainResult(val_acc=last["val_acc"], val_loss=last["val_loss"], val_top5=last["val_top5"],
                         train_acc=last["train_acc"], train_loss=last["train_loss"], epochs=len(history),
                         images_per_s=rate, wall_s=time.perf_counter() - t_start, history=history,
                         class_names=source.class_names, out=out_dir)
    if start_epoch < epochs or out_dir is None:
        result.model = trainer.eval_model(eval_bs)
    if out_dir is not None:
        ck.atomic_write_text(out_dir / "result.json", json.dumps(result.to_json(), indent=2) + "\n")
    return result


def _data_id(name: str) -> str:
    """A data source as recorded in checkpoints: an ImageFolder by its absolute path (so a resume from
    another working directory matches), the built-in sources by name."""
    if name in ("digits", "synthetic") or not Path(name).is_dir():
        return name
    return str(Path(name).resolve())


def _check_same_data(meta: dict[str, Any], run_meta: dict[str, Any], out: Path) -> None:
    """Refuse to resume on another data source: the epochs' data order, the steps per epoch and the
    classes' meaning all come from it. (Checkpoints written before the size was recorded skip that part.)"""
    old, new = meta.get("data"), run_meta["data"]
    if old is None:
        return
    old_size, new_size = meta.get("data_size"), run_meta["data_size"]
    if _data_id(old) == new and (old_size is None or old_size == new_size):
        return

    def show(name: str, size: Any) -> str:
        return f"{name} ({size[0]} train / {size[1]} val images)" if size else name

    raise MnasError(f"{out}: cannot resume: this run was trained on {show(old, old_size)}, not "
                    f"{show(new, new_size)}; resume it with --data {old}, or train on the new data in another "
                    f"output directory, starting from these weights with --init {out}")


def _schedule_note(trainer: Trainer, old_epochs: int, epochs: int, done: int, steps: int, lr: float | None) -> str:
    """What a resume with another --epochs does to the learning rate: both recipes build their
    schedule from the run's length, so it is rebuilt, and the user is told how."""
    r = trainer.recipe
    before = make_recipe(r.name, batch=trainer.batch, steps_per_epoch=steps, epochs=old_epochs, wd_mask=None, lr=lr)
    step = int(trainer.state["step"])
    warm = f"{r.warmup_steps} warm-up steps" + (f" (was {before.warmup_steps})"
                                               if r.warmup_steps != before.warmup_steps else "")
    if r.name == "adam":
        how = f"cosine decay now spans {epochs} epochs, after {warm}"
    else:
        how = f"{warm}, then the same x0.97 every 2.4 epochs decay, which does not depend on the run's length"
    kept = f"the {done} completed epoch keeps its rates" if done == 1 else \
        f"the {done} completed epochs keep their rates"
    return (f"--epochs {epochs} differs from the {old_epochs} this run was started with: the {r.name} learning-rate "
            f"schedule is rebuilt for {epochs} epochs: {how}; {kept}, and epoch {done + 1} starts at lr "
            f"{float(r.schedule(step)):.3g} ({float(before.schedule(step)):.3g} on the {old_epochs}-epoch schedule)")


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 40 else s[:37] + "..."


def _mean_finite(xs: Iterable[float]) -> float:
    v = [x for x in xs if math.isfinite(x)]
    return sum(v) / len(v) if v else float("nan")


def _eval_batch(train_batch: int, n_dev: int) -> int:
    return max(n_dev, train_batch * 2 // n_dev * n_dev)


def _check_finite(m: dict[str, jax.Array], epoch: int, step: int, out: Path | None, good_epoch: int) -> None:
    if not math.isfinite(float(m["loss"])):
        kept = f"; the last good checkpoint (epoch {good_epoch}) is kept in {out}" if out is not None and good_epoch \
            else ""
        raise MnasError(f"training diverged: the loss is not finite at epoch {epoch + 1}, step {step}{kept} "
                        "(try a lower --lr)")


class _progress:
    """A rich progress bar on stderr (step, loss, images/s) when verbose; a no-op otherwise.

    ``advance`` is called once a step's loss is known; images/s counts from the first call on, so the
    first step's XLA compile (seconds, against milliseconds per step) never drags the rate down.
    """

    def __init__(self, enabled: bool, desc: str, total: int, batch: int) -> None:
        self.enabled, self.desc, self.total, self.batch = enabled, desc, total, batch
        self._p: Any = None

    def __enter__(self) -> Callable[[float], None]:
        if not self.enabled:
            return lambda _loss: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[ips]} img/s"),
                           TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        self._p.start()
        task = self._p.add_task(self.desc, total=self.total, loss="-", ips="-")
        done, t_first = [0], [0.0]

        def advance(loss: float) -> None:
            done[0] += 1
            now = time.perf_counter()
            if done[0] == 1:
                t_first[0] = now
            dt = now - t_first[0]
            ips = f"{(done[0] - 1) * self.batch / dt:.1f}" if dt > 0 else "-"
            self._p.update(task, advance=1, loss=f"{loss:.4f}", ips=ips)

        return advance

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()


FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "images_per_s", "epoch_s")


def _write_outputs(out: Path, history: list[dict[str, float]], writer: Any, row: dict[str, float]) -> None:
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    wr.writeheader()
    for r in history:
        wr.writerow(r)
    ck.atomic_write_text(out / "metrics.csv", buf.getvalue())
    if writer is not None:
        e = int(row["epoch"])
        for k in ("loss", "acc"):
            writer.add_scalars(k, {"train": row[f"train_{k}"], "val": row[f"val_{k}"]}, e)
        writer.add_scalar("val/top5", row["val_top5"], e)
        writer.add_scalar("lr", row["lr"], e)
        writer.add_scalar("images_per_s", row["images_per_s"], e)
        writer.flush()
    plot_curves(history, out / "curves.png")


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Accuracy and loss, train vs val, per epoch (the seed article's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ep = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4))
    for ax, k, title in ((fig.add_subplot(1, 2, 1), "acc", "Accuracy"), (fig.add_subplot(1, 2, 2), "loss", "Loss")):
        ax.plot(ep, [r[f"train_{k}"] for r in history], "o-", label=f"Training {title.lower()}")
        ax.plot(ep, [r[f"val_{k}"] for r in history], "o-", label=f"Validation {title.lower()}")
        ax.set_title(f"Training and validation {title.lower()}")
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    ck.atomic_write_bytes(path, buf.getvalue())


# --- inference on a trained model ------------------------------------------------------------------------


def evaluate_model(model: nnx.Module, split: Split, *, size: tuple[int, int], channels: int,
                   batch: int = 128, workers: int | None = None,
                   norm: tuple[Any, Any] | None = None, crop: float = EVAL_CROP) -> dict[str, float]:
    """Top-1/top-5 accuracy and loss of a model over a split (eval transform with the weights' recorded
    center-crop fraction ``crop``). ``norm`` is the (mean, std) the weights expect, in 0..255 units
    (default: what mnasdsl's training uses)."""
    graphdef, state = nnx.split(model)
    mean, std = norm if norm is not None else norm_stats(channels)

    @jax.jit
    def step(state: Any, images: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
        logits = nnx.merge(graphdef, state)((images.astype(jnp.float32) - mean) / std, train=False)
        return _eval_metrics(logits, labels, mask)

    loader = Loader(split, batch=batch, size=size, channels=channels, train=False, workers=workers, crop=crop)
    return _finish([step(state, b.images, b.labels, b.mask) for b in loader])

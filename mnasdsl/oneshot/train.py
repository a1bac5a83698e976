"""Training a supernet: one weight-sharing network for every network of a space.

Sampling rules from the literature:

- ``spos`` (Single Path One-Shot, Guo et al. 2020): each step trains one subnet drawn uniformly (every
  decision independently uniform).
- ``sandwich`` (BigNAS, Yu et al. 2020): each step trains the largest subnet on the labels, then the
  smallest and ``SANDWICH_RANDOM`` random ones on the largest's predictions (in-place distillation), and
  applies the sum of their gradients. Largest and smallest are by multiply-adds, exactly.

The subnet is an input of the compiled step, so a run compiles the same executables whatever it samples;
their number is counted and recorded. BN uses batch statistics in every step; each evaluated subnet
recalibrates its own (:mod:`.scoring`). Checkpoints follow ``train``'s: the whole training state after
every epoch, written atomically, so ``--resume`` after a kill -9 continues bit for bit.

Layout of a supernet directory::

    DIR/supernet.json                       {"format", "latest": "checkpoints/epoch_0003", "epoch": 3}
    DIR/checkpoints/epoch_0003/state/       Orbax: every leaf of the training state, keyed by position
    DIR/checkpoints/epoch_0003/weights/     Orbax: {"params", "batch_stats"} of the supernet
    DIR/checkpoints/epoch_0003/meta.json    the space, data, preprocessing, settings, history, executables
    DIR/metrics.csv, DIR/curves.png, DIR/result.json
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import preprocess
from ..backends.flax_ops import resolve_impl
from ..diagnostics import MnasError
from ..formatter import format as format_ir
from ..fsutil import atomic_write_text, staged_dir
from ..space import Space
from ..train import checkpoint as ck
from ..train.data import DataSource, Loader, open_source
from ..train.loop import _data_id, _eval_batch, _progress, _stderr_log, plot_curves
from ..train.recipes import RECIPES, make_recipe
from . import model as M
from .compiles import CompileCounter
from .plan import SharedSpace
from .scoring import CACHED_PLANS, Scorer

SUPERNET_FORMAT = "mnasdsl-supernet/1"
RULES = ("spos", "sandwich")
DEFAULT_RULE = "spos"
SANDWICH_RANDOM = 2  # random subnets per sandwich step besides the largest and the smallest (BigNAS: 2)
RECAL_BATCHES = 10  # training batches each evaluated subnet recalibrates its BN statistics on
RECAL_EPOCH = 1_000_000  # the data-order epoch of the recalibration batches (fixed: every subnet sees the same)
KEEP = 2  # epoch checkpoints kept
FIELDS = ("epoch", "train_loss", "train_acc", "val_acc_largest", "val_acc_smallest", "val_loss_largest",
          "val_loss_smallest", "lr", "images_per_s", "epoch_s")

Log = Callable[[str], None]


@dataclass
class SupernetResult:
    """What a supernet run produced."""

    out: Path
    epochs: int
    rule: str
    history: list[dict[str, float]]
    wall_s: float
    train_s: float
    images_per_s: float
    executables: int  # XLA executables built by this run (compiled, or loaded from the persistent cache)
    traces: dict[str, int]  # how often this run traced each jitted function (at most once: no retracing)
    subnets: int  # subnets trained on (steps x subnets per step)
    val_acc_largest: float
    val_acc_smallest: float
    class_names: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "epochs": self.epochs, "rule": self.rule, "wall_s": self.wall_s,
                "train_s": self.train_s, "images_per_s": self.images_per_s, "executables": self.executables,
                "traces": self.traces, "subnets": self.subnets, "val_acc_largest": self.val_acc_largest,
                "val_acc_smallest": self.val_acc_smallest, "classes": list(self.class_names),
                "history": self.history}


def _soft_ce(logits: jax.Array, soft: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy(logits, soft)


class _Steps:
    """The jitted training step of one rule over one plan; ``traces`` counts its traces."""

    def __init__(self, shared: SharedSpace, rule: str, recipe: Any, seed: int, norm: tuple[np.ndarray, np.ndarray],
                 impl: str) -> None:
        plan = shared.plan
        classes = plan.classes
        mean, std = (np.asarray(a, np.float32) for a in norm)
        self.traces = {"train_step": 0}
        traces = self.traces

        def normalize(images: jax.Array) -> jax.Array:
            return (images.astype(jnp.float32) - mean) / std

        def run(params: Any, stats: Any, x: jax.Array, cfg: Any, key: jax.Array) -> tuple[jax.Array, Any]:
            return M.forward(plan, params, stats, x, cfg, train=True, impl=impl, dropout_key=key)

        def train_step(state: dict[str, Any], images: jax.Array, labels: jax.Array, mask: jax.Array,
                       cfg: Any) -> tuple[dict[str, Any], dict[str, jax.Array]]:
            traces["train_step"] += 1
            x = normalize(images)
            targets = jax.nn.one_hot(labels, classes)
            if recipe.label_smoothing:
                targets = optax.smooth_labels(targets, recipe.label_smoothing)
            count = jnp.maximum(mask.sum(), 1.0)
            key = jax.random.fold_in(jax.random.key(seed), state["step"])

            def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array, Any]]:
                first = cfg["largest"] if rule == "sandwich" else cfg
                logits, stats = run(params, state["stats"], x, first, jax.random.fold_in(key, 0))
                loss = ce = (optax.softmax_cross_entropy(logits, targets) * mask).sum() / count
                if rule == "sandwich":  # in-place distillation: the largest's predictions teach the rest
                    soft = jax.lax.stop_gradient(jax.nn.softmax(logits))
                    others = cfg["others"]
                    n = next(iter(others.values())).shape[0]

                    def one(carry: tuple[Any, jax.Array], item: tuple[Any, jax.Array]) -> tuple[Any, None]:
                        st, total = carry
                        c, i = item
                        lg, st = run(params, st, x, c, jax.random.fold_in(key, i + 1))
                        return (st, total + (_soft_ce(lg, soft) * mask).sum() / count), None

                    (stats, kd), _ = jax.lax.scan(one, (stats, jnp.float32(0.0)), (others, jnp.arange(n)))
                    loss = loss + kd
                return loss, (ce, logits, stats)

            # The reported loss is the (first) subnet's loss on the labels, comparable between the rules.
            (_, (loss, logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
            updates, opt = recipe.tx.update(grads, state["opt"], state["params"])
            params = optax.apply_updates(state["params"], updates)
            correct = ((jnp.argmax(logits, -1) == labels) * mask).sum()
            new = {"params": params, "stats": stats, "opt": opt, "step": state["step"] + 1}
            return new, {"loss": loss * mask.sum(), "correct": correct, "count": mask.sum()}

        self.step = jax.jit(train_step, donate_argnums=0)


_STEPS: OrderedDict[Any, _Steps] = OrderedDict()


def _steps_for(shared: SharedSpace, rule: str, recipe: Any, key: tuple[Any, ...], seed: int,
               norm: tuple[np.ndarray, np.ndarray], impl: str) -> _Steps:
    """The jitted step for these settings, kept per process (a few): runs with the same plan and settings
    (a resumed run, a rerun) reuse its executable."""
    full = (shared.plan, rule, key, seed, tuple(tuple(float(v) for v in np.ravel(a)) for a in norm), impl)
    hit = _STEPS.get(full)
    if hit is None:
        hit = _STEPS[full] = _Steps(shared, rule, recipe, seed, norm, impl)
        while len(_STEPS) > CACHED_PLANS:
            _STEPS.popitem(last=False)
    _STEPS.move_to_end(full)
    return hit


def _subnets(shared: SharedSpace, rule: str, seed: int, epoch: int, i: int, extremes: tuple[Any, Any]) -> Any:
    """The step's subnet settings; the draw is a function of (seed, epoch, step) alone, so a resumed run
    samples what an uninterrupted one would."""
    rng = np.random.default_rng([seed, epoch, i, 0x5B])
    if rule == "spos":
        return shared.config(shared.sample(rng))
    largest, smallest = extremes
    others = [smallest] + [shared.config(shared.sample(rng)) for _ in range(SANDWICH_RANDOM)]
    return {"largest": largest, "others": {k: np.stack([o[k] for o in others]) for k in largest}}


def _leaves(state: Any) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def load_space_text(text: str, where: str) -> Space:
    """The space a supernet was trained on, from its recorded text."""
    from ..ir import SpaceDef
    from ..parser import parse_units

    try:
        units = parse_units(text, where)
    except MnasError as e:
        raise MnasError(f"{where}: the recorded space does not parse: {e.diagnostics[0].message}") from None
    spaces = [u for u in units if isinstance(u, SpaceDef)]
    if len(spaces) != 1:
        raise MnasError(f"{where}: the recorded space is missing")
    return Space(spaces[0])


def epoch_dirs(out: Path) -> list[tuple[int, Path]]:
    """Completed supernet epoch checkpoints, oldest first."""
    return [(n, p) for n, p in ck.epoch_dirs(out) if (p / "weights").is_dir()]


def read_meta(epoch_dir: Path) -> dict[str, Any]:
    try:
        meta = json.loads((epoch_dir / "meta.json").read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise MnasError(f"{epoch_dir}: unreadable supernet metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != SUPERNET_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise MnasError(f"{epoch_dir}: not a mnasdsl supernet checkpoint (format {got!r})")
    return meta


def latest(out: Path) -> tuple[int, Path]:
    """The newest complete epoch of a supernet directory (the pointer's, else the newest on disk)."""
    if not out.is_dir():
        raise MnasError(f"{out}: no such supernet directory")
    found = epoch_dirs(out)
    pointer = out / "supernet.json"
    if pointer.is_file():
        try:
            doc = json.loads(pointer.read_text())
            p = (out / str(doc["latest"])).resolve()
            for n, d in found:
                if d.resolve() == p:
                    return n, d
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            pass
    if not found:
        raise MnasError(f"{out}: not a supernet directory (no completed epoch; train one with "
                        "`mnasdsl supernet train SPACE --data SRC --out DIR`)")
    return found[-1]


def _save_epoch(out: Path, epoch: int, leaves: list[np.ndarray], weights: dict[str, Any],
                meta: dict[str, Any]) -> Path:
    import orbax.checkpoint as ocp

    final = out / "checkpoints" / f"epoch_{epoch:04d}"
    with staged_dir(final) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save((tmp / "state").absolute(), {f"{i:05d}": x for i, x in enumerate(leaves)})
            ckptr.save((tmp / "weights").absolute(), weights)
            ckptr.wait_until_finished()
        meta = {"format": SUPERNET_FORMAT, **meta, "epoch": epoch,
                "leaves": [[list(x.shape), str(x.dtype)] for x in leaves]}
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1) + "\n")
    atomic_write_text(out / "supernet.json", json.dumps({"format": SUPERNET_FORMAT,
                                                         "latest": f"checkpoints/{final.name}", "epoch": epoch},
                                                        indent=1) + "\n")
    for _, old in epoch_dirs(out)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    for p in (out / "checkpoints").iterdir():  # temporaries of runs killed mid-write
        if p.name.startswith(".epoch_") and (p.name.endswith(".tmp") or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True)
    return final


def _write_metrics(out: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    wr.writeheader()
    for r in history:
        wr.writerow(r)
    atomic_write_text(out / "metrics.csv", buf.getvalue())
    # The curves show the largest subnet as "validation" (the smallest is in metrics.csv).
    plot_curves([r | {"val_acc": r["val_acc_largest"], "val_loss": r["val_loss_largest"]} for r in history],
                out / "curves.png")


def recal_loader(source: DataSource, batch: int, size: tuple[int, int], channels: int, seed: int, crop: float,
                 n: int = RECAL_BATCHES, workers: int | None = None) -> Loader:
    """The fixed training batches every subnet recalibrates its BN statistics on (no augmentation)."""
    return Loader(source.train, batch=batch, size=size, channels=channels, train=True, augment=False, seed=seed,
                  epoch=RECAL_EPOCH, workers=workers, limit=n, crop=crop)


def train_supernet(space: Space, data: str | DataSource, *, out: str | Path, epochs: int = 10, batch: int = 64,
                   resolution: int | tuple[int, int] | None = None, seed: int = 0, rule: str = DEFAULT_RULE,
                   recipe: str = "adam", lr: float | None = None, resume: bool = False,
                   steps_per_epoch: int | None = None, workers: int | None = None, verbose: bool = False,
                   log: Log | None = None, on_epoch: Callable[[dict[str, Any]], None] | None = None
                   ) -> SupernetResult:
    """Train the supernet of ``space`` on ``data`` into ``out`` (see the module docstring).

    ``steps_per_epoch`` caps the steps of an epoch (quick runs); ``on_epoch`` is called with each
    epoch's history row once its checkpoint is written. User errors raise MnasError."""
    t_start = time.perf_counter()
    counter = CompileCounter()
    if rule not in RULES:
        raise MnasError(f"unknown sampling rule {rule!r} (choose from {', '.join(RULES)})")
    if recipe not in RECIPES:
        raise MnasError(f"unknown recipe {recipe!r} (choose from {', '.join(RECIPES)})")
    if epochs < 1 or batch < 1:
        raise MnasError("epochs and batch must be >= 1")
    log = log or (_stderr_log if verbose else (lambda _m: None))
    source = open_source(data)
    shared = SharedSpace(space, resolution, source.num_classes)
    plan = shared.plan
    h, w, c = plan.input
    n_train = len(source.train)
    if n_train < 1 or len(source.val) == 0:
        raise MnasError(f"{source.name}: needs training and validation images")
    tb = min(batch, n_train)
    steps = n_train // tb
    if steps_per_epoch is not None:
        steps = min(steps, steps_per_epoch)
    out_dir = Path(out)
    pre = preprocess.default((h, w), c)
    if source.fixed_crop is not None:
        pre = pre.model_copy(update={"crop": source.fixed_crop})
    run_meta = {"space": format_ir(space.spec), "space_name": space.name, "input": list(plan.input),
                "classes": list(source.class_names), "data": _data_id(source.name),
                "data_size": [n_train, len(source.val)], "rule": rule, "recipe": recipe, "batch": tb, "seed": seed,
                "lr": lr, "steps_per_epoch": steps, "epochs": epochs, "sandwich_random": SANDWICH_RANDOM,
                "recal_batches": RECAL_BATCHES, "preprocess": pre.model_dump(mode="json", exclude={"channels"}),
                "plan": plan.summary()}
    ck.check_writable(out_dir)
    existing = epoch_dirs(out_dir)
    start_epoch, history = 0, []
    meta: dict[str, Any] = {}
    if existing and not resume:
        raise MnasError(f"{out_dir}: already holds a supernet run (epoch {existing[-1][0]}); pass --resume to "
                        "continue it or choose another output directory")
    if not existing and ck.epoch_dirs(out_dir):
        raise MnasError(f"{out_dir}: holds a `train` run, not a supernet; choose another output directory")
    if resume:
        if not existing:
            raise MnasError(f"{out_dir}: nothing to resume (no completed epoch checkpoint)")
        start_epoch, edir = latest(out_dir)
        meta = read_meta(edir)
        for key in ("data", "data_size", "space", "input", "classes", "rule", "recipe", "batch", "seed", "lr",
                    "steps_per_epoch"):
            if meta.get(key) != run_meta[key]:
                raise MnasError(f"{edir}: cannot resume: its {key} differs from this run's "
                                f"({str(meta.get(key))[:40]!r} vs {str(run_meta[key])[:40]!r})")
        history = list(meta.get("history", []))

    impl = resolve_impl(None)
    params, stats = M.init(plan, seed)
    rec = make_recipe(recipe, batch=tb, steps_per_epoch=steps, epochs=epochs, wd_mask=M.weight_decay_mask(params),
                      lr=lr)
    state = jax.device_put({"params": params, "stats": stats, "opt": None, "step": np.zeros((), np.int32)})
    state["opt"] = jax.jit(rec.tx.init)(state["params"])
    if resume:
        tmpl = _leaves(state)
        if meta.get("leaves") != [[list(x.shape), str(x.dtype)] for x in tmpl]:
            raise MnasError(f"{edir}: incompatible checkpoint: its training state does not match this run's")
        restored = ck.load_leaves(edir, tmpl)
        state = jax.device_put(jax.tree.unflatten(jax.tree.structure(state), [np.asarray(x) for x in restored]))
        if start_epoch >= epochs:
            log(f"{out_dir}: already trained for {start_epoch} epochs")
        else:
            log(f"resuming from epoch {start_epoch} ({edir})")
    steps_fn = _steps_for(shared, rule, rec, (recipe, tb, steps, epochs, lr), seed, pre.norm, impl)
    extremes = (shared.config(shared.largest()), shared.config(shared.smallest()))
    recal = list(recal_loader(source, tb, (h, w), c, seed, pre.crop, workers=workers))
    vb = _eval_batch(tb, 1)
    scorer = Scorer(shared, pre.norm, impl, recal,
                    lambda: Loader(source.val, batch=vb, size=(h, w), channels=c, train=False, workers=workers,
                                   crop=pre.crop))
    traced_before = steps_fn.traces | scorer.traces  # functions may be shared with earlier runs of this process

    def traces() -> dict[str, int]:
        return {k: v - traced_before[k] for k, v in (steps_fn.traces | scorer.traces).items()}

    lr_fn = jax.jit(rec.schedule)
    per_step = 1 if rule == "spos" else 2 + SANDWICH_RANDOM
    log(f"supernet of space {space.name} ({plan.summary()}) on {source.name}: {n_train} train / "
        f"{len(source.val)} val images, {source.num_classes} classes, {w}x{h} px, batch {tb} x {steps} steps, "
        f"rule {rule}, recipe {recipe}")
    train_images, train_time, subnets = 0, 0.0, 0
    for epoch in range(start_epoch, epochs):
        loader = Loader(source.train, batch=tb, size=(h, w), channels=c, train=True, augment=source.augment,
                        seed=seed, epoch=epoch, workers=workers, limit=steps)
        t0 = time.perf_counter()
        totals = []
        t_first, n_timed = t0, 0
        with _progress(verbose, f"epoch {epoch + 1}/{epochs}", len(loader), tb) as advance:
            for i, b in enumerate(loader):
                cfg = _subnets(shared, rule, seed, epoch, i, extremes)
                state, m = steps_fn.step(state, b.images, b.labels, b.mask, cfg)
                totals.append(m)
                loss = float(m["loss"]) / max(float(m["count"]), 1.0)
                if not np.isfinite(loss):
                    raise MnasError(f"supernet training diverged: the loss is not finite at epoch {epoch + 1}, "
                                    f"step {i} (try a lower --lr)")
                advance(loss)
                subnets += per_step
                if i == 0:
                    t_first = time.perf_counter()  # the first step compiles: keep it out of images/s
                else:
                    n_timed += tb
        t_end = time.perf_counter()
        ips = n_timed / (t_end - t_first) if n_timed and t_end > t_first else float("nan")
        train_images += n_timed
        train_time += t_end - t_first if n_timed else 0.0
        s = {k: float(sum(np.asarray(t[k], np.float64) for t in totals)) for k in ("loss", "correct", "count")}
        large, _ = scorer.score(state["params"], state["stats"], shared.largest())
        small, _ = scorer.score(state["params"], state["stats"], shared.smallest())
        row = {"epoch": epoch + 1, "train_loss": s["loss"] / max(s["count"], 1.0),
               "train_acc": s["correct"] / max(s["count"], 1.0), "val_acc_largest": large.acc,
               "val_acc_smallest": small.acc, "val_loss_largest": large.loss, "val_loss_smallest": small.loss,
               "lr": float(lr_fn(state["step"])), "images_per_s": ips, "epoch_s": time.perf_counter() - t0}
        history.append(row)
        log(f"epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | val acc "
            f"largest {large.acc:.4f} smallest {small.acc:.4f} | {ips:.0f} img/s, {row['epoch_s']:.1f}s")
        traced = traces()
        weights = {"params": jax.device_get(state["params"]), "batch_stats": jax.device_get(state["stats"])}
        _save_epoch(out_dir, epoch + 1, _leaves(state), weights,
                    {**run_meta, "history": history, "executables": counter.total, "traces": traced})
        _write_metrics(out_dir, history)
        if on_epoch is not None:
            on_epoch(row | {"executables": counter.total, "traces": traced})
    if not history:
        raise MnasError("no epoch was trained")
    last = history[-1]
    rate = train_images / train_time if train_time > 0 else float("nan")
    result = SupernetResult(out_dir, len(history), rule, history, time.perf_counter() - t_start, train_time, rate,
                            counter.total, traces(), subnets, last["val_acc_largest"],
                            last["val_acc_smallest"], tuple(source.class_names))
    atomic_write_text(out_dir / "result.json", json.dumps(result.to_json(), indent=2) + "\n")
    return result

"""Per-epoch training checkpoints (Orbax), written so that a kill -9 at any moment loses nothing.

Layout of a training output directory::

    DIR/ckpt.json                      {"latest": "checkpoints/epoch_0007/weights", "epoch": 7}
    DIR/checkpoints/epoch_0007/
        weights/                       the evaluation weights, written by the Flax backend's save_params
                                       (so `load_params(network, DIR)` and `compile --ckpt DIR` read them)
        state/                         Orbax: every leaf of the training state (params, BN statistics, RNG,
                                       optimizer state, EMA, step), keyed by position
        meta.json                      spec text, class names, recipe, seed, data-order state, history

An epoch directory is assembled under a temporary name and renamed into place, then the pointer
is replaced atomically; resuming scans for the newest complete epoch directory, so a kill between
the two steps is harmless. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import preprocess
from ..diagnostics import MnasError
from ..fsutil import atomic_write_bytes, atomic_write_text, staged_dir  # noqa: F401 - used by loop via this module
from ..preprocess import Preprocess

TRAIN_FORMAT = "mnasdsl-train/1"
KEEP = 2  # completed epoch checkpoints kept (the newest and one before it)
_EPOCH_RE = re.compile(r"^epoch_(\d{4,})$")


def check_writable(out: Path) -> None:
    """Fail before training, not after an hour of it, when the output directory cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=out)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise MnasError(f"{out}: output directory is not writable: {e.strerror or e}") from None


def epoch_dirs(out: Path) -> list[tuple[int, Path]]:
    """Completed epoch checkpoints, oldest first (temporary directories are never matched)."""
    d = out / "checkpoints"
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _EPOCH_RE.match(p.name)
        if m and (p / "meta.json").is_file() and (p / "state").is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_epoch(out: Path, epoch: int, leaves: list[np.ndarray], meta: dict[str, Any], weights_model: Any) -> Path:
    """Write epoch ``epoch``'s checkpoint atomically, repoint DIR/ckpt.json, prune old ones."""
    import orbax.checkpoint as ocp

    from ..backends.flax import save_params

    ck = out / "checkpoints"
    final = ck / f"epoch_{epoch:04d}"
    # Assembled beside its final name and renamed into place (a re-run of an epoch after resuming
    # from an older one replaces it only when complete), then the pointer is moved atomically.
    with staged_dir(final) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save((tmp / "state").absolute(), {f"{i:05d}": np.asarray(x) for i, x in enumerate(leaves)})
            ckptr.wait_until_finished()
        save_params(weights_model, tmp / "weights")
        meta = {"format": TRAIN_FORMAT, **meta, "epoch": epoch, "leaves": [[list(x.shape), str(x.dtype)]
                                                                            for x in leaves]}
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1) + "\n")
    atomic_write_text(out / "ckpt.json", json.dumps({"latest": f"checkpoints/{final.name}/weights",
                                                     "epoch": epoch}, indent=1) + "\n")
    for _, old in epoch_dirs(out)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    for p in ck.iterdir():  # temporaries of runs killed mid-write
        if p.name.startswith(".epoch_") and (p.name.endswith(".tmp") or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True)
    return final


def read_meta(epoch_dir: Path) -> dict[str, Any]:
    try:
        meta = json.loads((epoch_dir / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise MnasError(f"{epoch_dir}: unreadable checkpoint metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != TRAIN_FORMAT:
        raise MnasError(f"{epoch_dir}: not a mnasdsl training checkpoint (format {meta.get('format')!r})"
                        if isinstance(meta, dict) else f"{epoch_dir}: not a mnasdsl training checkpoint")
    return meta


def load_leaves(epoch_dir: Path, template: list[Any]) -> list[Any]:
    """Restore the state leaves; shapes and dtypes must match ``template`` (checked by the caller's meta)."""
    import jax
    import orbax.checkpoint as ocp

    abstract = {f"{i:05d}": jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if not hasattr(x, "dtype")
                                                 else x.dtype) for i, x in enumerate(template)}
    try:
        with ocp.StandardCheckpointer() as ckptr:
            restored = ckptr.restore((epoch_dir / "state").absolute(), abstract)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MnasError(f"{epoch_dir}: cannot restore training state: {msg}") from None
    return [restored[f"{i:05d}"] for i in range(len(template))]


def find_meta(ckpt: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The training metadata behind a checkpoint directory (a training DIR, an epoch dir or its weights)."""
    d = Path(ckpt)
    pointer = d / "ckpt.json"
    if pointer.is_file():
        try:
            latest = json.loads(pointer.read_text())["latest"]
            cand = (d / str(latest)).parent
        except (OSError, ValueError, KeyError, TypeError):
            cand = d
        if (cand / "meta.json").is_file():
            return read_meta(cand)
    for cand in (d, d.parent):
        if (cand / "meta.json").is_file():
            return read_meta(cand)
    return None


def _preprocess_record(ckpt: str | os.PathLike[str]) -> tuple[Any, str]:
    """The raw ``preprocess`` record behind ``ckpt`` and the file it was read from ("" when none)."""
    d = Path(ckpt)
    meta = find_meta(ckpt)
    if meta is not None and "preprocess" in meta:
        return meta["preprocess"], f"{d} (training metadata)"
    from ..backends.flax import resolve_ckpt_dir

    try:
        params = resolve_ckpt_dir(ckpt)
    except MnasError:
        return None, ""
    for cand in (params.parent, params):
        card = cand / "mnasdsl.json"
        if card.is_file():
            try:
                doc = json.loads(card.read_text())
            except (OSError, ValueError, RecursionError) as e:
                raise MnasError(f"{card}: unreadable checkpoint card: {e}") from None
            return (doc.get("preprocess") if isinstance(doc, dict) else None), str(card)
    return None, ""


def find_preprocess(ckpt: str | os.PathLike[str]) -> dict[str, Any] | None:
    """How the weights behind ``ckpt`` expect their input: ``{"mean", "std"}`` per channel in 0..255
    units (plus ``size``/``crop`` when known), from a training run's metadata or an import's
    ``mnasdsl.json``. None when neither says (weights trained by mnasdsl before this was recorded)."""
    record, _ = _preprocess_record(ckpt)
    return dict(record) if isinstance(record, dict) else None


def load_preprocess(ckpt: str | os.PathLike[str] | None, size: tuple[int, int], channels: int) -> Preprocess:
    """The validated preprocessing for the weights behind ``ckpt`` at ``size``: the recorded crop,
    mean and std (an import's published eval transform, a training run's own), else mnasdsl's
    defaults. A damaged record is an error naming its file and field, never a silent default."""
    if ckpt is None:
        return preprocess.default(size, channels)
    record, where = _preprocess_record(ckpt)
    try:
        return preprocess.resolve(record, size, channels, where=where)
    except ValueError as e:
        raise MnasError(f"{where}: invalid {e}") from None


def norm_of(preprocess_record: dict[str, Any] | None, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std) arrays of a preprocess record, validated against the channel count."""
    if preprocess_record is None:
        return None
    try:
        return preprocess.resolve(preprocess_record, (1, 1), channels).norm
    except ValueError as e:
        raise MnasError(f"invalid {e}") from None

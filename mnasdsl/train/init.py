"""Starting a training run from existing weights (``train --init DIR``): an imported model, a
params directory or another run. Fine-tuning to a new class count keeps everything but the
classifier, which starts fresh; any other difference is an error, not a partial load."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flax import nnx

from ..diagnostics import MnasError
from ..ir import Network

CLASSIFIER = ("classifier_kernel", "classifier_bias")


def _saved_classes(path: Path) -> int | None:
    """The class count recorded beside an Orbax params checkpoint (``mnasdsl.json``), if any."""
    for cand in (path.parent / "mnasdsl.json", path / "mnasdsl.json"):
        if cand.is_file():
            try:
                return int(json.loads(cand.read_text())["classes"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
    return None


def init_from(model: Any, network: Network, directory: str | os.PathLike[str]) -> list[str]:
    """Copy the weights under ``directory`` into ``model`` (built from ``network``); returns the
    names of the variables left at their fresh initialization (the classifier, when the class
    counts differ)."""
    from ..backends.flax import load_params, resolve_ckpt_dir

    path = resolve_ckpt_dir(directory)
    classes = _saved_classes(path) or network.classes
    source_net = network if classes == network.classes else network.scaled(classes=classes)
    try:
        source = load_params(source_net, directory)
    except MnasError as e:
        raise MnasError(f"--init {directory}: {e.diagnostics[0].message if e.diagnostics else e}") from None
    fresh: list[str] = []
    for kind in (nnx.Param, nnx.BatchStat):
        src = nnx.to_pure_dict(nnx.state(source, kind))
        dst_state = nnx.state(model, kind)
        dst = nnx.to_pure_dict(dst_state)
        for key in list(dst):
            if key in CLASSIFIER and classes != network.classes:
                fresh.append(key)
                continue
            dst[key] = src[key]
        nnx.replace_by_pure_dict(dst_state, dst)
        nnx.update(model, dst_state)
    return fresh

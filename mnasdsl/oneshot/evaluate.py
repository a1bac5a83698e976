"""A trained supernet, loaded once: score its subnets and extract them as standalone checkpoints.

:class:`Supernet` is the API a search evaluator builds on: ``Supernet(DIR).evaluate(network)`` gives a
network's supernet accuracy after its own BN recalibration, reusing one compiled recalibration and one
compiled evaluation executable for every subnet (and across Supernet objects of the same plan).
``extract`` writes the subnet in the layout of a training output (``params/`` + ``mnasdsl.json``
as the Flax backend's ``save_params`` writes them, and ``meta.json`` with the spec, class names and
preprocessing), so ``compile --ckpt``, ``eval``, ``predict``, ``train --init`` and the exports read it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .. import preprocess
from ..backends.flax_ops import resolve_impl
from ..diagnostics import MnasError
from ..formatter import format as format_ir
from ..fsutil import atomic_write_text, staged_dir
from ..ir import Network
from ..lowering import lower
from ..train import checkpoint as ck
from ..train.data import DataSource, Loader, open_source
from ..train.loop import _data_id, _eval_batch
from . import model as M
from .plan import SharedSpace
from .scoring import Scorer, SubnetScore
from .train import SUPERNET_FORMAT, latest, load_space_text, read_meta, recal_loader

Subnet = Network | Sequence[int]


class Supernet:
    """A supernet directory's weights, space and data; ``recal_batches`` overrides the recorded count."""

    def __init__(self, directory: str | os.PathLike[str], *, data: str | DataSource | None = None,
                 recal_batches: int | None = None, workers: int | None = None) -> None:
        import orbax.checkpoint as ocp

        self.directory = Path(directory)
        self.epoch, edir = latest(self.directory)
        meta = read_meta(edir)
        self.meta = meta
        try:
            h, w, c = (int(v) for v in meta["input"])
            self.class_names = tuple(str(x) for x in meta["classes"])
            batch, seed = int(meta["batch"]), int(meta["seed"])
            recorded_data = str(meta["data"])
        except (KeyError, TypeError, ValueError) as e:
            raise MnasError(f"{edir / 'meta.json'}: incomplete supernet metadata ({e})") from None
        self.space = load_space_text(str(meta.get("space", "")), str(edir / "meta.json"))
        self.shared = SharedSpace(self.space, (h, w), len(self.class_names))
        self.plan = self.shared.plan
        params, stats = M.init(self.plan, None)
        try:
            with ocp.StandardCheckpointer() as ckptr:
                restored = ckptr.restore((edir / "weights").absolute(), {"params": params, "batch_stats": stats})
        except Exception as e:  # noqa: BLE001 - any failure to restore is a damaged or foreign checkpoint
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise MnasError(f"{edir}: cannot restore the supernet's weights: {msg}") from None
        self.params = jax.device_put(restored["params"])
        self.stats = jax.device_put(restored["batch_stats"])
        self.source = open_source(data if data is not None else recorded_data)
        if tuple(self.source.class_names) != self.class_names:
            raise MnasError(f"{self.source.name}: its classes are not the supernet's "
                            f"({', '.join(self.class_names[:5])}{', ...' if len(self.class_names) > 5 else ''})")
        try:
            self.pre = preprocess.resolve(meta.get("preprocess"), (h, w), c, where=str(edir / "meta.json"))
        except ValueError as e:
            raise MnasError(f"{edir / 'meta.json'}: invalid {e}") from None
        n = int(recal_batches if recal_batches is not None else meta.get("recal_batches", 10))
        recal = list(recal_loader(self.source, batch, (h, w), c, seed, self.pre.crop, n=n, workers=workers))
        vb = _eval_batch(batch, 1)
        self.scorer = Scorer(self.shared, self.pre.norm, resolve_impl(None), recal,
                             lambda: Loader(self.source.val, batch=vb, size=(h, w), channels=c, train=False,
                                            workers=workers, crop=self.pre.crop))

    # -- subnets ---------------------------------------------------------------------------------------
    def indices(self, subnet: Subnet) -> list[int]:
        """A subnet's decision vector (a Network outside the space: a MnasError naming the decision)."""
        if isinstance(subnet, Network):
            return self.shared.indices_of(subnet)
        idx = [int(i) for i in subnet]
        self.space.decode(idx)  # range and length errors name the decision
        return idx

    def evaluate(self, subnet: Subnet) -> SubnetScore:
        """Validation accuracy of the subnet with the supernet's weights and its own recalibrated BN."""
        score, _ = self.scorer.score(self.params, self.stats, self.indices(subnet))
        return score

    def extract(self, subnet: Subnet, out: str | os.PathLike[str]) -> tuple[Path, SubnetScore]:
        """Write the subnet as a standalone checkpoint directory (its BN statistics the recalibrated ones)."""
        from flax import nnx

        from ..backends import flax as fb

        target = Path(out)
        check_target(target)
        idx = self.indices(subnet)
        name = subnet.name if isinstance(subnet, Network) else self.space.name
        score, bs = self.scorer.score(self.params, self.stats, idx)
        net = self.shared.network(idx, name=name)
        low, slot_of = self.shared.layout(idx)
        low = low._replace(name=name)
        model = fb.build(low, rngs=nnx.Rngs(0))
        v = M.subnet_variables(low, slot_of, jax.device_get(self.params), jax.device_get(bs), fb.variables(model))
        for key, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
            state = nnx.state(model, kind)
            nnx.replace_by_pure_dict(state, jax.tree.map(np.asarray, v[key]))
            nnx.update(model, state)
        pre = self.pre.model_dump(mode="json", exclude={"channels"})
        origin = {"supernet": str(self.directory.absolute()), "epoch": self.epoch, "decisions": idx,
                  "supernet_acc": score.acc}
        card = {"format": fb.PARAMS_FORMAT, "network": name, "params": fb.count_params(model),
                "input": list(low.input_shape), "classes": low.classes, "preprocess": pre, "origin": origin}
        meta = {"format": ck.TRAIN_FORMAT, "spec": format_ir(net), "network": name, "classes": list(self.class_names),
                "input": list(low.input_shape), "data": _data_id(self.source.name),
                "data_size": [len(self.source.train), len(self.source.val)], "signature": repr(lower(net).signature()),
                "preprocess": pre, "history": [], "origin": origin}
        import orbax.checkpoint as ocp

        with staged_dir(target) as tmp:
            with ocp.StandardCheckpointer() as ckptr:
                ckptr.save((tmp / "params").absolute(), fb.variables(model))
                ckptr.wait_until_finished()
            atomic_write_text(tmp / "mnasdsl.json", json.dumps(card, indent=2) + "\n")
            atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1) + "\n")
        return target, score

    def to_json(self) -> dict[str, Any]:
        return {"supernet": str(self.directory), "epoch": self.epoch, "space": self.space.name,
                "input": list(self.plan.input), "data": self.source.name, "format": SUPERNET_FORMAT}


def check_target(target: Path) -> None:
    """Replace only an earlier checkpoint: never a directory of other files (``-o .`` would empty it)."""
    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise MnasError(f"{target}: exists and is not a directory")
    try:
        names = {p.name for p in target.iterdir()}
    except OSError as e:
        raise MnasError(f"{target}: cannot read: {e.strerror or e}") from None
    if names and not (names <= {"params", "mnasdsl.json", "meta.json"} and "mnasdsl.json" in names):
        raise MnasError(f"{target}: exists and holds other files; choose a new or empty directory")

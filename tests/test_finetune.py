"""Fine-tuning and the preprocessing that travels with weights: a frozen backbone stays bit-identical,
training records its normalization and --init inherits an import's, predict is one compiled forward,
and a 1,000-class network is labelled with the ImageNet names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

import mnasdsl
from mnasdsl.backends import flax as fb
from mnasdsl.cli.main import main
from mnasdsl.labels import default_names, imagenet1k
from mnasdsl.train import fit
from mnasdsl.train.checkpoint import find_meta, find_preprocess, norm_of

from .test_train import TINY


def _leaves(model: Any) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(fb.variables(model))[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


@pytest.mark.parametrize("recipe", ["adam", "mnasnet"])  # mnasnet keeps an EMA of the weights
def test_frozen_backbone_is_bit_identical(tmp_path: Path, recipe: str) -> None:
    net = mnasdsl.parse(TINY)[0]
    base = tmp_path / "base"
    fit(net, "digits", epochs=1, batch=32, seed=0, out=base)
    tuned = tmp_path / "tuned"
    five = net.scaled(classes=3)
    from mnasdsl.train.data import synthetic

    fit(five, synthetic(96, 32, classes=3), epochs=2, batch=16, seed=1, out=tuned, init=base, freeze_backbone=True,
        recipe=recipe)
    before = _leaves(fb.load_params(net, base))
    after = _leaves(fb.load_params(five, tuned))
    moved = [k for k in after if "classifier" not in k and not np.array_equal(before[k], after[k])]
    assert moved == []
    assert after["['params']['classifier_kernel']"].shape == (32, 3)
    assert not np.allclose(after["['params']['classifier_kernel']"], 0.0)
    assert find_meta(tuned)["freeze_backbone"] is True  # type: ignore[index]


def test_recalibration_is_refused_with_a_frozen_backbone(tmp_path: Path) -> None:
    from mnasdsl.diagnostics import MnasError

    with pytest.raises(MnasError, match="frozen"):
        fit(mnasdsl.parse(TINY)[0], "digits", epochs=1, batch=32, freeze_backbone=True, recalibrate_bn=True)


def test_training_records_and_init_inherits_the_normalization(tmp_path: Path) -> None:
    net = mnasdsl.parse(TINY)[0]
    imported = tmp_path / "imported"
    fb.save_params(fb.build(mnasdsl.lower(net), rngs=__import__("flax").nnx.Rngs(0)), imported)
    card = json.loads((imported / "mnasdsl.json").read_text())
    card["preprocess"] = {"size": [16, 16], "crop": 0.875, "mean": [127.0] * 3, "std": [128.0] * 3}
    (imported / "mnasdsl.json").write_text(json.dumps(card))
    assert norm_of(find_preprocess(imported), 3)[0].tolist() == [127.0] * 3  # type: ignore[index]
    out = tmp_path / "run"
    fit(net, "digits", epochs=1, batch=32, out=out, init=imported)
    pre = find_preprocess(out)
    assert pre is not None and pre["mean"] == [127.0] * 3 and pre["std"] == [128.0] * 3 and pre["size"] == [16, 16]
    plain = tmp_path / "plain"
    fit(net, "digits", epochs=1, batch=32, out=plain)
    mean = find_preprocess(plain)["mean"]  # type: ignore[index]
    assert mean == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255])


def test_predict_applies_the_recorded_normalization(tmp_path: Path, capsys: Any) -> None:
    """Shifting the recorded mean shifts what the network sees: predict reads it, it is not ignored."""
    from flax import nnx
    from PIL import Image

    spec = tmp_path / "tiny.mnas"
    spec.write_text(TINY)
    net = mnasdsl.parse(TINY)[0]
    d = tmp_path / "w"
    fb.save_params(fb.build(mnasdsl.lower(net), rngs=nnx.Rngs(3)), d)
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(img)
    probs = []
    for mean in (0.0, 200.0):
        card = json.loads((d / "mnasdsl.json").read_text())
        card["preprocess"] = {"mean": [mean] * 3, "std": [64.0] * 3}
        (d / "mnasdsl.json").write_text(json.dumps(card))
        assert main(["predict", str(spec), "--ckpt", str(d), str(img), "--json", "--top", "10"]) == 0
        top = json.loads(capsys.readouterr().out)["predictions"][0]["top"]
        probs.append({t["index"]: t["prob"] for t in top})
    assert probs[0] != probs[1]


def test_imagenet_names() -> None:
    names = imagenet1k()
    assert len(names) == 1000 and names[967] == "espresso" and names[281] == "tabby"
    assert default_names(1000) == names and default_names(3) == ("class0", "class1", "class2")

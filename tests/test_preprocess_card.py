"""The recorded preprocessing reaches every consumer, and model cards and ONNX files are untrusted input.

The crop an import records (timm's Lite1-4 evaluate at 0.882-0.922) must be what eval, predict,
calibration and the exported card use; a card is validated field by field; an ONNX model may not
pull weights from files beside it; a model and its card land together or not at all.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import mnasdsl
from mnasdsl import preprocess
from mnasdsl.backends import artifact
from mnasdsl.diagnostics import MnasError

from .conftest import ROOT, run_cli

TINY = """network tiny:
  input 16x16x3
  classes 4
  stem cv_k3_s22_o8
  blocks
    r1_k3_s11_e1_i8_o8
  head cv_k1_o16 fixed
"""
SMALL = str(ROOT / "specs" / "mnasnet-small.mnas")


@pytest.fixture(scope="module", autouse=True)
def _no_user_compile_cache(no_user_compile_cache: None) -> None:
    """The CLI turns on JAX's persistent cache in ~/.cache; tests must not write there."""


def _photo(path: Path, w: int = 120, h: int = 90, seed: int = 0) -> Path:
    """A smooth image whose border differs from its centre, so the crop changes what is seen."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - h / 2, xx - w / 2) / max(w, h)
    rng = np.random.default_rng(seed)
    img = np.stack([255 * r, 255 * (1 - r), 128 + 100 * np.sin(xx / 7.0)], -1) + rng.normal(0, 3, (h, w, 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


# --- the crop ----------------------------------------------------------------------------------------------

def test_center_box_follows_the_crop() -> None:
    """0.904 and 0.875 keep different boxes of the same image: the exact box, from first principles."""
    w, h, size = 400, 300, (224, 224)
    for crop in (0.875, 0.904, 1.0):
        x0, y0, x1, y1 = preprocess.center_box(w, h, size, crop)
        side = h * crop  # shorter side resized to 224/crop: a 224 crop keeps crop x the shorter side
        assert (x1 - x0, y1 - y0) == pytest.approx((side, side))
        assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((w / 2, h / 2))
    assert preprocess.center_box(w, h, size, 0.904) != preprocess.center_box(w, h, size, 0.875)


def test_decode_image_applies_the_crop(tmp_path: Path) -> None:
    from mnasdsl.train.data import decode_image

    img = _photo(tmp_path / "p.png")
    a = decode_image(img, (32, 32), 3, crop=0.875)
    b = decode_image(img, (32, 32), 3, crop=0.904)
    assert a.shape == b.shape == (32, 32, 3) and not np.array_equal(a, b)
    np.testing.assert_array_equal(a, decode_image(img, (32, 32), 3))  # the default is the usual 0.875


def _lite_state_dict(name: str) -> tuple[Any, dict[str, np.ndarray]]:
    """A random state dict in timm's layout for ``name`` at 32 px (shapes from the import's own plan)."""
    from flax import nnx

    from mnasdsl.backends.flax import build, variables
    from mnasdsl.interop import find_model, model_text, parsed_network
    from mnasdsl.interop.weights import _get, slots, torch_shape
    from mnasdsl.lowering import lower

    m = find_model("timm", name)
    low = lower(parsed_network(model_text(m, resolution=(32, 32), classes=10)))
    var = variables(build(low, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    sd = {}
    for s in slots(low, m.scheme, m.stages):
        shape = torch_shape(s, tuple(_get(var[s.collection], s.path).shape))
        sd[s.key] = (np.abs(rng.normal(0, 0.05, shape)) + 0.5 if s.key.endswith("running_var")
                     else rng.normal(0, 0.05, shape)).astype(np.float32)
    return m, sd


def test_lite4_import_carries_its_crop_to_the_card(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.numpy import save_file

    m, sd = _lite_state_dict("efficientnet_lite4")
    assert m.crop not in (0.875, 1.0)
    weights = tmp_path / "lite4.safetensors"
    save_file(sd, str(weights))
    out = tmp_path / "lite4"
    rc, _, err = run_cli(capsys, "import", "timm", "efficientnet_lite4", "--weights", str(weights), "--resolution",
                         "32", "--classes", "10", "-o", str(out))
    assert rc == 0, err
    from mnasdsl.train.checkpoint import load_preprocess

    pre = load_preprocess(out, (32, 32), 3)
    assert pre.crop == m.crop and "efficientnet_lite4" in pre.recorded
    onnx_path = tmp_path / "lite4.onnx"
    rc, _, err = run_cli(capsys, "compile", str(out / "efficientnet_lite4.mnas"), "--ckpt", str(out), "--emit", "onnx",
                         "-o", str(onnx_path))
    assert rc == 0, err
    card = json.loads((tmp_path / "lite4.onnx.json").read_text())
    assert card["preprocess"]["crop"] == m.crop and card["preprocess"]["mean"] == pytest.approx(
        [255 * v for v in preprocess.IMAGENET_MEAN])


def _tiny_ckpt(tmp_path: Path, crop: float) -> tuple[Path, Path]:
    from flax import nnx

    from mnasdsl.backends import flax as fb

    spec = tmp_path / "tiny.mnas"
    spec.write_text(TINY)
    d = tmp_path / f"w{crop}"
    fb.save_params(fb.build(mnasdsl.lower(mnasdsl.parse(TINY)[0]), rngs=nnx.Rngs(3)), d)
    card = json.loads((d / "mnasdsl.json").read_text())
    card["preprocess"] = {"crop": crop, "mean": [127.0] * 3, "std": [64.0] * 3}
    (d / "mnasdsl.json").write_text(json.dumps(card))
    return spec, d


def _probs(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[int, float]:
    rc, out, err = run_cli(capsys, *argv, "--json", "--top", "4")
    assert rc == 0, err
    return {t["index"]: t["prob"] for t in json.loads(out)["predictions"][0]["top"]}


def test_predict_eval_and_export_apply_the_recorded_crop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same weights recorded with crop 0.5 and 1.0 see different pixels: predict on the checkpoint,
    the exported card, and predict/eval of the export all follow the record."""
    img = _photo(tmp_path / "p.png")
    folder = tmp_path / "data"
    for c in range(4):
        for i in range(2):
            (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
            _photo(folder / f"class{c}" / f"{i}.png", seed=c * 10 + i)
    results = []
    for crop in (0.5, 1.0):
        spec, ck = _tiny_ckpt(tmp_path, crop)
        via_ckpt = _probs(capsys, "predict", str(spec), "--ckpt", str(ck), str(img))
        model = tmp_path / f"m{crop}.onnx"
        rc, _, err = run_cli(capsys, "compile", str(spec), "--ckpt", str(ck), "--emit", "onnx", "-o", str(model))
        assert rc == 0, err
        assert artifact.read_card(model).preprocess.crop == crop  # type: ignore[union-attr]
        via_export = _probs(capsys, "predict", str(model), str(img))
        assert via_export.keys() == via_ckpt.keys()
        assert [via_export[k] for k in sorted(via_export)] == pytest.approx([via_ckpt[k] for k in sorted(via_ckpt)],
                                                                            abs=1e-4)
        rc, out, err = run_cli(capsys, "eval", str(model), "--data", str(folder), "--split", "train", "--json")
        assert rc == 0, err
        rc, out2, err = run_cli(capsys, "eval", str(spec), "--ckpt", str(ck), "--data", str(folder), "--split",
                                "train", "--json")
        assert rc == 0, err
        assert json.loads(out)["loss"] == pytest.approx(json.loads(out2)["loss"], abs=1e-4)
        results.append((via_ckpt, json.loads(out)["loss"]))
    assert results[0][0] != results[1][0] and results[0][1] != pytest.approx(results[1][1], abs=1e-7)


def test_calibration_batches_use_the_recorded_crop(tmp_path: Path) -> None:
    from mnasdsl.cli.deploy import calibration_batches

    folder = tmp_path / "data"
    for c in range(2):
        (folder / f"class{c}").mkdir(parents=True)
        for i in range(3):
            _photo(folder / f"class{c}" / f"{i}.png", seed=c * 10 + i)
    low = mnasdsl.lower(mnasdsl.parse(TINY)[0])
    batches = {}
    for crop in (0.5, 1.0):
        _, ck = _tiny_ckpt(tmp_path, crop)
        batches[crop] = next(iter(calibration_batches(str(folder), 2, 2, low, str(ck))))
    assert not np.allclose(batches[0.5], batches[1.0])


# --- the model card ----------------------------------------------------------------------------------------

def _card(**pre: Any) -> dict[str, Any]:
    p = {"size": [4, 4], "channels": 3, "mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0], "crop": 0.875,
         "resize": "bilinear"}
    p.update(pre)
    return {"format": artifact.FORMAT, "network": "n", "runtime": "onnx", "input": [1, 4, 4, 3],
            "classes": ["a", "b"], "preprocess": p}


def _write(tmp_path: Path, card: Any, raw: str | None = None) -> Path:
    model = tmp_path / "m.onnx"
    artifact.card_path(model).write_text(raw if raw is not None else json.dumps(card))
    return model


@pytest.mark.parametrize(("change", "field"), [
    ({"std": [float("nan")] * 3}, "preprocess.std"),
    ({"std": [0.0, 1.0, 1.0]}, "preprocess.std"),
    ({"std": "inf"}, "preprocess.std"),
    ({"std": ["1", "1", "1"]}, "preprocess.std"),
    ({"mean": [1e308] * 3}, "preprocess.mean"),
    ({"mean": [float("inf")] * 3}, "preprocess.mean"),
    ({"mean": [1.0, 2.0]}, "3 channels"),
    ({"size": [4.0, 4]}, "preprocess.size"),
    ({"size": [4, 0]}, "preprocess.size"),
    ({"size": [True, 4]}, "preprocess.size"),
    ({"resize": "lanczos"}, "preprocess.resize"),
    ({"crop": 0.0}, "preprocess.crop"),
    ({"crop": float("nan")}, "preprocess.crop"),
    ({"crop": 1.5}, "preprocess.crop"),
    ({"unknown": 1}, "preprocess.unknown"),
])
def test_invalid_preprocess_names_the_field(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    model = _write(tmp_path, _card(**change))
    with pytest.raises(MnasError, match=field.replace(".", r"\.")) as e:
        artifact.read_card(model)
    assert str(artifact.card_path(model)) in str(e.value)


@pytest.mark.parametrize(("key", "value", "field"), [
    ("input", [1, 4, 4], "input"), ("input", [1, 4.5, 4, 3], "input"), ("input", [1, 8, 8, 3], "preprocess describes"),
    ("classes", "ab", "classes"), ("classes", [1, 2], "classes"), ("classes", [], "classes"),
    ("runtime", "tensorflow", "runtime"), ("quantize", "int4", "quantize"), ("network", 5, "network"),
    ("format", "other/1", "not a mnasdsl-model-card/1"),
])
def test_invalid_card_fields(tmp_path: Path, key: str, value: Any, field: str) -> None:
    card = _card()
    card[key] = value
    with pytest.raises(MnasError, match=field):
        artifact.read_card(_write(tmp_path, card))


@pytest.mark.parametrize("raw", ["[" * 100_000 + "]" * 100_000, '{"extra": ' + "[" * 50_000 + "]" * 50_000 + "}",
                                 "{" * 30_000, "", "not json", "[1, 2]", '"a string"', "\xff"])
def test_unreadable_cards_are_one_error(tmp_path: Path, raw: str) -> None:
    with pytest.raises(MnasError, match="m.onnx.json"):
        artifact.read_card(_write(tmp_path, None, raw))


def test_deeply_nested_card_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.onnx"
    rc, _, err = run_cli(capsys, "compile", SMALL, "--resolution", "32",
                         "--emit", "onnx", "-o", str(model))
    assert rc == 0, err
    artifact.card_path(model).write_text('{"format": "mnasdsl-model-card/1", "extra": ' + "[" * 100_000 + "]" * 100_000
                                         + "}")
    img = _photo(tmp_path / "p.png")
    rc, _, err = run_cli(capsys, "predict", str(model), str(img))
    assert rc == 1 and "m.onnx.json" in err and "Traceback" not in err and "internal error" not in err


def test_card_class_count_must_match_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.onnx"
    rc, _, err = run_cli(capsys, "compile", SMALL, "--resolution", "32", "--classes", "5", "--emit", "onnx",
                         "-o", str(model))
    assert rc == 0, err
    card = json.loads(artifact.card_path(model).read_text())
    card["classes"] = ["a", "b", "c"]
    artifact.card_path(model).write_text(json.dumps(card))
    rc, _, err = run_cli(capsys, "predict", str(model), str(_photo(tmp_path / "p.png")))
    assert rc == 1 and "3 classes" in err and "outputs 5" in err


@settings(max_examples=60, deadline=None)
@given(mean=st.lists(st.floats(allow_nan=False, allow_infinity=False, min_value=-300, max_value=300), min_size=3,
                     max_size=3),
       std=st.lists(st.floats(min_value=1e-3, max_value=300), min_size=3, max_size=3),
       crop=st.floats(min_value=0.05, max_value=1.0), h=st.integers(1, 512), w=st.integers(1, 512),
       classes=st.lists(st.text(max_size=12), min_size=1, max_size=8))
def test_valid_cards_round_trip(tmp_path_factory: pytest.TempPathFactory, mean: list[float], std: list[float],
                                crop: float, h: int, w: int, classes: list[str]) -> None:
    pre = preprocess.Preprocess(size=(h, w), channels=3, mean=tuple(mean), std=tuple(std), crop=crop)
    card = artifact.ModelCard(network="n", runtime="litert", input=(1, h, w, 3), classes=tuple(classes),
                              preprocess=pre)
    model = tmp_path_factory.mktemp("card") / "m.tflite"
    artifact.card_path(model).write_text(artifact.dumps(card))
    assert artifact.read_card(model) == card


def test_damaged_checkpoint_record_names_its_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec, ck = _tiny_ckpt(tmp_path, 0.875)
    card = json.loads((ck / "mnasdsl.json").read_text())
    card["preprocess"] = {"mean": [127.0] * 3, "std": [float("nan")] * 3}
    (ck / "mnasdsl.json").write_text(json.dumps(card))
    rc, _, err = run_cli(capsys, "predict", str(spec), "--ckpt", str(ck), str(_photo(tmp_path / "p.png")))
    assert rc == 1 and "mnasdsl.json" in err and "std" in err and "Traceback" not in err


def test_single_mean_applies_to_every_channel() -> None:
    pre = preprocess.resolve({"mean": 127.0, "std": [128.0]}, (8, 8), 3)
    assert pre.mean == (127.0,) * 3 and pre.std == (128.0,) * 3 and pre.crop == preprocess.EVAL_CROP
    assert math.isclose(preprocess.default((8, 8), 1).std[0], 0.25 * 255)


# --- ONNX external data ------------------------------------------------------------------------------------

def _onnx_with_external(tmp_path: Path, where: str) -> tuple[Path, bytes]:
    """An mnasdsl export whose first initializer (or a Constant node's tensor) says its bytes are in
    ``secret.bin``, a file the attacker expects in the working directory."""
    import onnx
    from onnx import external_data_helper as ext

    from mnasdsl.backends import onnx_export
    from mnasdsl.backends.folded import fold

    from .export_nets import built, spec

    m = onnx.load_model_from_string(onnx_export.to_onnx(fold(built(spec("mnasnet-small", 32))), batch=1))
    if where == "initializer":
        t = m.graph.initializer[0]
    else:
        t = onnx.helper.make_tensor("c", onnx.TensorProto.FLOAT, [4], np.zeros(4, np.float32).tobytes(), raw=True)
        m.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["unused_c"], value=t))
        t = m.graph.node[0].attribute[0].t
    raw = bytes(t.raw_data) or np.asarray(t.float_data, np.float32).tobytes()
    ext.set_external_data(t, "secret.bin", offset=0, length=len(raw))
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    path = tmp_path / "model.onnx"
    path.write_bytes(m.SerializeToString())
    return path, raw


@pytest.mark.parametrize("where", ["initializer", "constant"])
def test_onnx_external_data_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    model, raw = _onnx_with_external(tmp_path, where)
    (tmp_path / "secret.bin").write_bytes(raw)
    monkeypatch.chdir(tmp_path)
    img = _photo(tmp_path / "p.png")
    for argv in (["predict", str(model), str(img)], ["eval", str(model), "--data", "synthetic:8"]):
        rc, out, err = run_cli(capsys, *argv)
        assert rc == 1 and "external data" in err and "model.onnx" in err, err
        assert "Traceback" not in err and out == ""


# --- the model and its card are one write ------------------------------------------------------------------

def test_failed_card_write_keeps_the_old_model_and_card(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.onnx"
    rc, _, err = run_cli(capsys, "compile", SMALL, "--resolution", "32", "--emit", "onnx", "-o", str(out))
    assert rc == 0, err
    model, card = out.read_bytes(), artifact.card_path(out).read_bytes()
    rc, _, err = run_cli(capsys, "compile", SMALL, "--resolution", "48", "--emit", "onnx", "-o", str(out))
    assert rc == 0, err
    assert out.read_bytes() != model
    model, card = out.read_bytes(), artifact.card_path(out).read_bytes()
    # the card's name is taken by a directory: nothing may change, not even the model
    artifact.card_path(out).unlink()
    artifact.card_path(out).mkdir()
    rc, _, err = run_cli(capsys, "compile", SMALL, "--resolution", "32", "--emit", "onnx", "-o", str(out))
    assert rc == 1 and "x.onnx.json" in err and "Traceback" not in err
    assert out.read_bytes() == model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.onnx", "x.onnx.json"]
    artifact.card_path(out).rmdir()
    artifact.card_path(out).write_bytes(card)
    fresh = tmp_path / "new.onnx"
    artifact.card_path(fresh).mkdir()
    rc, _, err = run_cli(capsys, "compile", SMALL, "--resolution", "32", "--emit", "onnx", "-o", str(fresh))
    assert rc == 1 and not fresh.exists()  # no model left without its card


@pytest.mark.parametrize(("name", "emit"), [("x.tflite", "onnx"), ("x.onnx", "tflite"), ("x.ONNX", "stablehlo"),
                                            ("x.stablehlo", "onnx")])
def test_output_suffix_must_agree_with_emit(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                                            emit: str) -> None:
    rc, _, err = run_cli(capsys, "compile", SMALL, "--resolution", "32", "--emit", emit, "-o", str(tmp_path / name))
    assert rc == 2 and "--emit" in err and not any(tmp_path.iterdir())

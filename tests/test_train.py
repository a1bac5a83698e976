"""Training: data sources and loader, recipes, fit, checkpoints (kill -9 + resume), sharding, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mnasdsl
from mnasdsl.cli.main import main
from mnasdsl.diagnostics import MnasError
from mnasdsl.train import data as D

TINY = textwrap.dedent("""\
    network tiny:
      input 16x16x3
      classes 10
      dropout 0.2
      bn momentum 0.9 eps 0.001
      stem cv_k3_s22_o8
      blocks
        r1_k3_s11_e1_i8_o8
        r1_k3_s22_e3_i8_o16_se0.25
      head cv_k1_o32 fixed
    """)


@pytest.fixture(scope="module", autouse=True)
def _no_user_compile_cache(no_user_compile_cache: None) -> None:
    """The CLI turns on JAX's persistent cache in ~/.cache; tests must not write there."""


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("spec") / "tiny.mnas"
    p.write_text(TINY)
    return p


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Subprocesses share a compilation cache so only the first one compiles."""
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jaxcache"))
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _folder(root: Path, classes: dict[str, int], corrupt: int = 0) -> Path:
    rng = np.random.default_rng(0)
    for name, n in classes.items():
        d = root / name
        d.mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i}.png")
        for i in range(corrupt):
            (d / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return root


# --- data ---------------------------------------------------------------------------------------------------


def test_digits_source_and_stratified_split() -> None:
    src = D.open_source("digits")
    assert src.num_classes == 10 and len(src.train) + len(src.val) == 1797
    assert abs(len(src.val) / 1797 - 0.2) < 0.01
    counts = np.bincount(src.val.labels, minlength=10)
    assert counts.min() >= 30  # every class in validation, ~20% of each
    b = next(iter(D.Loader(src.train, batch=8, size=(12, 12), channels=3, train=True, seed=0, epoch=0)))
    assert b.images.shape == (8, 12, 12, 3) and b.images.dtype == np.uint8
    assert np.array_equal(b.images[..., 0], b.images[..., 2])  # grey replicated
    tr, va = D.stratified_split(src.train.labels)
    tr2, va2 = D.stratified_split(src.train.labels)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2) and not set(tr) & set(va)


def test_loader_is_deterministic_whatever_the_threads(tmp_path: Path) -> None:
    src = D.open_source(str(_folder(tmp_path / "d", {"a": 6, "b": 5})))
    kw = dict(batch=4, size=(16, 16), channels=3, train=True, seed=3, epoch=1)
    one = list(D.Loader(src.train, workers=1, prefetch=1, **kw))
    many = list(D.Loader(src.train, workers=4, prefetch=3, **kw))
    assert len(one) == len(many) == len(src.train) // 4
    for a, b in zip(one, many, strict=True):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    other = list(D.Loader(src.train, workers=2, **{**kw, "epoch": 2}))
    assert not all(np.array_equal(a.images, b.images) for a, b in zip(one, other, strict=False))
    ev = list(D.Loader(src.val, batch=4, size=(16, 16), channels=3, train=False))
    assert sum(float(b.mask.sum()) for b in ev) == len(src.val)  # eval pads, never drops


def test_image_folder_skips_corrupt_files_and_uses_train_val(tmp_path: Path) -> None:
    root = _folder(tmp_path / "tv" / "train", {"cat": 4, "dog": 4}, corrupt=1).parent
    _folder(root / "val", {"cat": 2, "dog": 2})
    src = D.open_source(str(root))
    assert src.class_names == ("cat", "dog") and len(src.train) == 10 and len(src.val) == 4
    batches = list(D.Loader(src.train, batch=10, size=(8, 8), channels=1, train=True, seed=0, epoch=0))
    assert batches[0].images.shape == (10, 8, 8, 1)
    assert float(batches[0].mask.sum()) == 8.0 and src.corrupt_count() == 2


@pytest.mark.parametrize("layout, message", [
    ({}, "no images found"),
    ({"only": 3}, "only one class"),
])
def test_bad_data_directories(tmp_path: Path, layout: dict[str, int], message: str) -> None:
    root = tmp_path / "data"
    root.mkdir()
    _folder(root, layout)
    with pytest.raises(MnasError, match=message):
        D.open_source(str(root))
    with pytest.raises(MnasError, match="does not exist"):
        D.open_source(str(tmp_path / "missing"))


# --- recipes ------------------------------------------------------------------------------------------------


def test_mnasnet_recipe_matches_the_tf_reference() -> None:
    import jax.numpy as jnp
    import optax

    from mnasdsl.train.recipes import make_recipe

    params = {"w": jnp.ones(3), "bn": jnp.ones(3)}
    r = make_recipe("mnasnet", batch=128, steps_per_epoch=10, epochs=50, wd_mask={"w": True, "bn": False})
    assert r.lr == pytest.approx(0.008) and r.label_smoothing == 0.1 and r.ema_decay == 0.9999
    assert float(r.schedule(25)) == pytest.approx(0.008 * 25 / 50)  # 5 warm-up epochs
    assert float(r.schedule(50)) == pytest.approx(0.008 * 0.97 ** 2)  # x0.97 every 2.4 epochs (24 steps)
    g = {"w": jnp.full(3, 0.5), "bn": jnp.full(3, 0.5)}
    upd, _ = r.tx.update(g, r.tx.init(params), params)
    lr = float(r.schedule(0))  # 0 at step 0: check the direction with a fixed rate instead
    assert lr == 0.0
    tx = optax.chain(optax.add_decayed_weights(1e-5, mask={"w": True, "bn": False}),
                     optax.rmsprop(1.0, decay=0.9, eps=1e-3, initial_scale=1.0, momentum=0.9))
    upd, _ = tx.update(g, tx.init(params), params)
    gw = 0.5 + 1e-5  # L2 on weights only
    assert float(upd["w"][0]) == pytest.approx(-gw / np.sqrt(0.9 + 0.1 * gw * gw + 1e-3), rel=1e-5)
    assert float(upd["bn"][0]) == pytest.approx(-0.5 / np.sqrt(0.9 + 0.1 * 0.25 + 1e-3), rel=1e-5)


def test_weight_decay_mask_skips_batchnorm(tiny_spec: Path) -> None:
    import jax
    from flax import nnx

    from mnasdsl.backends.flax import build
    from mnasdsl.train.loop import weight_decay_mask

    model = nnx.eval_shape(lambda: build(mnasdsl.load(tiny_spec), rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    mask = weight_decay_mask(model, params)
    flags = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert any(v for k, v in flags.items() if "kernel" in k)
    assert all(not v for k, v in flags.items() if "bn" in k) and any("bn" in k for k in flags)


# --- training -----------------------------------------------------------------------------------------------


def test_fit_in_memory_touches_no_disk(tiny_spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mnasdsl.train import fit

    monkeypatch.chdir(tmp_path)
    r = fit(mnasdsl.load(tiny_spec), "digits", epochs=1, batch=32, recipe="mnasnet", seed=0)
    assert 0.0 <= r.val_acc <= 1.0 and np.isfinite(r.val_loss) and r.epochs == 1 and len(r.history) == 1
    assert r.images_per_s > 0 and r.model is not None and r.out is None
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MnasError, match="5 classes"):
        fit(mnasdsl.load(tiny_spec).scaled(classes=5), "digits", epochs=1)


def test_nan_loss_stops_with_a_message(tiny_spec: Path, tmp_path: Path) -> None:
    from mnasdsl.train import fit

    with pytest.raises(MnasError, match="not finite"):
        fit(mnasdsl.load(tiny_spec), "digits", epochs=1, batch=32, recipe="mnasnet", lr=float("inf"), seed=0,
            out=tmp_path / "nan")


@pytest.fixture(scope="module")
def trained(tiny_spec: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    rc = main(["train", str(tiny_spec), "--data", "digits", "--out", str(out), "--epochs", "2", "--batch", "32",
               "--json", "-q"])
    assert rc == 0
    return out


def test_train_writes_every_output(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mnasdsl.fsutil import current_umask

    mask = current_umask()
    for name in ("metrics.csv", "result.json", "curves.png", "ckpt.json"):
        assert (trained / name).is_file(), name
        # as a plain open() would have made them, not mkstemp's 0600
        assert (trained / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
    epoch = trained / "checkpoints" / "epoch_0002"
    assert epoch.stat().st_mode & 0o777 == (trained / "checkpoints").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (epoch / "meta.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (epoch / "weights").stat().st_mode & 0o777 == 0o777 & ~mask
    assert list((trained / "tb").glob("events.out.tfevents.*"))
    res = json.loads((trained / "result.json").read_text())
    assert {"val_acc", "val_loss", "epochs", "images_per_s"} <= set(res) and res["epochs"] == 2
    assert res["val_acc"] > 0.3  # well above chance (0.1) after two epochs
    lines = (trained / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,train_acc,val_loss,val_acc") and len(lines) == 3
    meta = json.loads(next((trained / "checkpoints").glob("epoch_0002/meta.json")).read_text())
    assert meta["classes"] == [str(i) for i in range(10)] and "network tiny" in meta["spec"]


def test_eval_and_predict_from_the_checkpoint(trained: Path, tiny_spec: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["eval", str(tiny_spec), "--ckpt", str(trained), "--data", "digits", "--batch", "64", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    res = json.loads((trained / "result.json").read_text())
    assert ev["top1"] == pytest.approx(res["val_acc"], abs=1e-9) and ev["images"] == 359
    assert ev["top5"] >= ev["top1"]
    src = D.open_source("digits")
    img = src.val.load(0, (16, 16), 1, None)
    Image.fromarray(img[:, :, 0]).save(tmp_path / "digit.png")
    assert main(["predict", str(tiny_spec), "--ckpt", str(trained), str(tmp_path / "digit.png"), "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)["predictions"][0]
    assert len(pred["top"]) == 5 and pred["top"][0]["class"] in [str(i) for i in range(10)]
    assert sum(t["prob"] for t in pred["top"]) <= 1.0 + 1e-6
    # the params directory is what the Flax backend's shared loader reads
    from mnasdsl.backends.flax import load_params

    load_params(mnasdsl.load(tiny_spec), trained)


@pytest.mark.parametrize("extra, message", [
    (["--resume", "--lr", "0.1"], "incompatible checkpoint"),
    ([], "already holds a training run"),
    (["--classes", "5"], "5 classes"),
    (["--resume", "--data", "synthetic"], "trained on digits (1438 train / 359 val images), not synthetic "
                                          "(2048 train / 256 val images); resume it with --data digits"),
])
def test_train_refuses_to_clobber_or_mix_runs(trained: Path, tiny_spec: Path, extra: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    before = sorted(p.name for p in (trained / "checkpoints").iterdir())
    rc = main(["train", str(tiny_spec), "--data", "digits", "--out", str(trained), "--epochs", "2", "--batch", "32",
               "-q", *extra])
    assert rc == 1 and message in capsys.readouterr().err
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == before


def test_cli_user_errors(tiny_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        (["--data", "digits", "--out", str(blocker / "out")], "not writable"),
        (["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "does not exist"),
        (["--data", "digits", "--out", str(tmp_path / "fresh"), "--resume"], "nothing to resume"),
    ]
    for args, message in cases:
        rc = main(["train", str(tiny_spec), "-q", *args])
        err = capsys.readouterr().err
        assert rc == 1 and message in err and "Traceback" not in err, (args, err)
    assert main(["eval", str(tiny_spec), "--ckpt", str(tmp_path / "none"), "--data", "digits"]) == 1


def test_resume_with_other_epochs_rebuilds_the_schedule(tiny_spec: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    base = ["train", str(tiny_spec), "--data", "digits", "--out", str(out), "--batch", "32", "--json"]
    assert main([*base, "--epochs", "1", "-q"]) == 0
    first = json.loads((out / "result.json").read_text())["history"]
    capsys.readouterr()
    assert main([*base, "--epochs", "2", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "--epochs 2 differs from the 1 this run was started with" in err
    assert "schedule is rebuilt for 2 epochs: cosine decay now spans 2 epochs" in err
    assert "the 1 completed epoch keeps its rates, and epoch 2 starts at lr" in err
    res = json.loads((out / "result.json").read_text())
    assert res["epochs"] == 2 and res["history"][0] == first[0]
    assert json.loads((out / "checkpoints" / "epoch_0002" / "meta.json").read_text())["epochs"] == 2
    assert main([*base, "--epochs", "2", "--resume"]) == 0  # the run is now a 2-epoch one: nothing to say
    assert "differs" not in capsys.readouterr().err


def _train_cmd(spec: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mnasdsl.cli.main", "train", str(spec), "--data", "digits", "--out", str(out),
            "--epochs", "3", "--batch", "32", "--recipe", "mnasnet", "--seed", "5", "-q", *extra]


def test_kill_9_then_resume_matches_an_uninterrupted_run(tiny_spec: Path, tmp_path: Path,
                                                         cache_env: dict[str, str]) -> None:
    full = tmp_path / "full"
    subprocess.run(_train_cmd(tiny_spec, full), env=cache_env, check=True, timeout=300)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(tiny_spec, killed), env=cache_env)
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "epoch_0001").is_dir():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside epoch 2 (or its checkpoint)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "result.json").exists()
    subprocess.run(_train_cmd(tiny_spec, killed, "--resume"), env=cache_env, check=True, timeout=300)
    a = json.loads((full / "result.json").read_text())
    b = json.loads((killed / "result.json").read_text())
    for k in ("val_acc", "val_loss", "train_loss", "train_acc"):
        assert a[k] == b[k], k
    assert [r["val_loss"] for r in a["history"]] == [r["val_loss"] for r in b["history"]]


SHARDED = textwrap.dedent("""\
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax, numpy as np
    import mnasdsl
    from mnasdsl.train.data import Loader, open_source
    from mnasdsl.train.loop import Trainer
    assert len(jax.local_devices()) == 2
    net = mnasdsl.load(sys.argv[1])
    src = open_source("digits")
    batches = list(Loader(src.train, batch=32, size=(16, 16), channels=3, train=True, seed=0, epoch=0, limit=2))
    states = []
    for n in (1, 2):
        t = Trainer(net, recipe="mnasnet", batch=32, steps_per_epoch=10, epochs=2, seed=0, devices=n)
        assert t.n_dev == n
        for b in batches:
            t.step(b)
        states.append(t.leaves())
    for a, b in zip(*states, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    print("OK", len(states[0]))
    """)


def test_two_device_step_equals_single_device_step(tiny_spec: Path, tmp_path: Path,
                                                   cache_env: dict[str, str]) -> None:
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED)
    env = {k: v for k, v in cache_env.items() if k != "XLA_FLAGS"}
    r = subprocess.run([sys.executable, str(script), str(tiny_spec)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]

"""The on-phone kit's logs are phone time: a re-export never drops them silently, a log is only ever
matched to the very model it timed, and run_on_device.sh works from any directory name."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mnasdsl
from mnasdsl.diagnostics import MnasError
from mnasdsl.latency.lut import op_key
from mnasdsl.latency.phone import KitModel, import_logs, read_manifest, write_kit
from mnasdsl.lowering import Layer

from .conftest import SPECS, run_cli
from .test_phone import PHONE, bench_log

DEV = "/data/local/tmp/mnasdsl_kit"


def layers_of(spec: str) -> dict[str, Layer]:
    low = mnasdsl.lower(mnasdsl.load(SPECS / f"{spec}.mnas").scaled(resolution=32))
    out: dict[str, Layer] = {}
    for ly in low.layers:
        out.setdefault(op_key(ly), ly)
    return out


SMALL = layers_of("mnasnet-small")


def op_models(layers: dict[str, Layer], changed: set[int] = frozenset(), shift: int = 0) -> list[KitModel]:  # type: ignore[assignment]
    """One model per op whose bytes encode the op, as a converted model's do; ``changed`` ops get
    other bytes (a new converter), ``shift`` renumbers them all."""
    return [KitModel(f"op_{i + shift:04d}", b"TFL3" + k.encode() + (b"-v2" if i in changed else b""), "op", key=k,
                     input_shape=ly.in_shape) for i, (k, ly) in enumerate(layers.items())]


def write(root: Path, models: list[KitModel], **kw: object):  # type: ignore[no-untyped-def]
    return write_kit(root, models, converter="ai-edge-torch 0.2.0", runtime="LiteRT 1.0.1", **kw)  # type: ignore[arg-type]


def log_name(m: KitModel) -> str:
    """What run_on_device.sh calls the log of ``m``."""
    return m.file.removesuffix(".tflite") + ".log"


def log_models(root: Path, models: list[KitModel]) -> dict[str, Path]:
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    out = {}
    for i, m in enumerate(models):
        p = logs / log_name(m)
        p.write_text(bench_log(m.file, 1000.0 + 37 * i, header={"sha256": m.sha256, **PHONE}))
        out[m.key or m.file] = p
    return out


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` with its bytes and mtime."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def no_staging(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if p.name.startswith(".")]


# -- re-exporting into a kit that holds logs --------------------------------------------------

def test_reexport_of_the_same_models_keeps_every_log(tmp_path: Path) -> None:
    root = tmp_path / "kit"
    models = op_models(SMALL)
    write(root, models)
    log_models(root, models)
    part = root / "logs" / (log_name(models[0]) + ".part")  # a failed run of an unchanged model
    part.write_text("# mnasdsl-kit sha256: " + models[0].sha256 + "\nERROR: Failed to load model\n")
    before = {k: v for k, v in snapshot(root).items() if k.startswith("logs/")}
    table, _ = import_logs(root / "logs")
    done = write(root, op_models(SMALL))
    assert done.replaced and done.removed == ()
    assert sorted(done.kept) == sorted(p.name for p in (tmp_path / "kit" / "logs").iterdir())
    assert len(done.kept) == len(models) + 1
    assert {k: v for k, v in snapshot(root).items() if k.startswith("logs/")} == before  # bytes and mtimes
    again, _ = import_logs(root / "logs")
    assert again.entries == table.entries
    assert no_staging(tmp_path)


def test_reexport_refuses_to_orphan_a_log_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "kit"
    models = op_models(SMALL)
    write(root, models)
    logs = log_models(root, models)
    (root / "logs" / "notes.md").write_text("phone was hot after op 7")
    before = snapshot(root)
    gone = list(SMALL)[3]
    with pytest.raises(MnasError) as e:
        write(root, op_models(SMALL, changed={3}))
    msg = str(e.value)
    assert logs[gone].name in msg and "notes.md (not a log)" in msg and "Nothing was changed" in msg
    assert "--force" in msg and f"the {len(models) - 1} logs of unchanged models are kept" in msg
    assert str(root / "logs") in msg
    assert not any(p.name in msg for k, p in logs.items() if k != gone)  # only the stale ones are listed
    assert snapshot(root) == before and no_staging(tmp_path)


def test_force_removes_only_the_stale_logs(tmp_path: Path) -> None:
    root = tmp_path / "kit"
    models = op_models(SMALL)
    write(root, models)
    logs = log_models(root, models)
    (root / "logs" / "notes.md").write_text("x")
    gone = list(SMALL)[3]
    kept_before = {k: v for k, v in snapshot(root).items() if k.startswith("logs/") and logs[gone].name not in k
                   and "notes.md" not in k}
    done = write(root, op_models(SMALL, changed={3}), force=True)
    assert sorted(done.removed) == sorted([logs[gone].name, "notes.md"])
    assert sorted(done.kept) == sorted(p.name for k, p in logs.items() if k != gone)
    assert {k: v for k, v in snapshot(root).items() if k.startswith("logs/")} == kept_before
    table, rep = import_logs(root / "logs")
    assert rep.missing == [gone] and set(table.entries) == set(SMALL) - {gone}


def test_renumbered_or_rethreaded_kit_orphans_its_logs(tmp_path: Path) -> None:
    root = tmp_path / "kit"
    models = op_models(SMALL)
    write(root, models)
    log_models(root, models)
    before = snapshot(root)
    with pytest.raises(MnasError, match=r"is not in the new kit"):
        write(root, op_models(SMALL, shift=1))  # same bytes, other names: the logs' graphs are gone
    with pytest.raises(MnasError, match=r"timed with 1 thread\(s\), the new kit asks for 2"):
        write(root, models, threads=2)
    assert snapshot(root) == before
    done = write(root, models, num_runs=100)  # more runs of the same models: the logs still hold
    assert len(done.kept) == len(models) and done.removed == ()


def test_reexport_over_a_format1_kit_keeps_its_logs_safe(tmp_path: Path) -> None:
    root = tmp_path / "old"
    legacy_kit(root, op_models(SMALL))
    before = snapshot(root)
    with pytest.raises(MnasError, match="older mnasdsl") as e:
        write(root, op_models(SMALL))
    assert "op_0000.log (its model op_0000.tflite is not in the new kit)" in str(e.value)
    assert snapshot(root) == before
    done = write(root, op_models(SMALL), force=True)
    assert len(done.removed) == len(SMALL) and not (root / "logs").exists()


def test_logs_written_during_the_export_are_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_on_device.sh finishing a model while the kit is re-exported: the swap is called off."""
    from mnasdsl.latency import phone

    root = tmp_path / "kit"
    models = op_models(SMALL)
    write(root, models)
    log_models(root, models[:3])
    real = phone._carry

    def carry_while_the_phone_runs(src: Path, dst: Path) -> None:
        real(src, dst)
        (root / "logs" / log_name(models[5])).write_text(bench_log(models[5].file, 900.0, header=PHONE))

    monkeypatch.setattr(phone, "_carry", carry_while_the_phone_runs)
    with pytest.raises(MnasError, match="changed while"):
        write(root, models)
    assert (root / "logs" / log_name(models[5])).is_file() and len(list((root / "logs").iterdir())) == 4
    assert read_manifest(root / "manifest.json").models[0].file == models[0].file and no_staging(tmp_path)


N_OPS = 6


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changed=st.sets(st.integers(0, N_OPS - 1)), logged=st.sets(st.integers(0, N_OPS - 1)), force=st.booleans())
def test_kept_logs_are_exactly_those_of_unchanged_models(changed: set[int], logged: set[int], force: bool) -> None:
    layers = dict(list(SMALL.items())[:N_OPS])
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "kit"
        old = op_models(layers)
        write(root, old)
        if logged:
            log_models(root, [old[i] for i in sorted(logged)])
        before = snapshot(root)
        stale = {log_name(old[i]) for i in logged & changed}
        kept = {log_name(old[i]) for i in logged - changed}
        if stale and not force:
            with pytest.raises(MnasError, match="would orphan"):
                write(root, op_models(layers, changed=changed))
            assert snapshot(root) == before
            return
        done = write(root, op_models(layers, changed=changed), force=force)
        assert (set(done.kept), set(done.removed)) == (kept, stale)
        have = {p.name for p in (root / "logs").iterdir()} if (root / "logs").exists() else set()
        assert have == kept
        assert {f"logs/{n}": before[f"logs/{n}"] for n in kept} == {
            k: v for k, v in snapshot(root).items() if k.startswith("logs/")}


def test_force_needs_export_ops(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = run_cli(capsys, "profile", str(SPECS / "mnasnet-small.mnas"), "-o", str(tmp_path / "t.json"),
                         "--force")
    assert rc == 2 and "--force goes with --export-ops" in err


def test_cli_reexport_says_what_it_kept_and_removed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("litert_converter", reason="needs litert-converter (pip install 'mnasdsl[litert]')")
    pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert (pip install 'mnasdsl[litert]')")
    from .test_litert_latency import TINY_SPACE

    space = tmp_path / "tiny.mnas"
    space.write_text(TINY_SPACE)
    kit = tmp_path / "kit"
    export = ("profile", str(space), "--runtime", "litert", "--export-ops", str(kit), "--calibrate", "2")
    rc, _, err = run_cli(capsys, *export)
    assert rc == 0, err
    man = read_manifest(kit / "manifest.json")
    (kit / "logs").mkdir()
    for i, m in enumerate(man.models):
        (kit / "logs" / (m.file.removesuffix(".tflite") + ".log")).write_text(
            bench_log(m.file, 1000.0 + i, header={"sha256": m.sha256, **PHONE}))
    names = sorted(p.name for p in (kit / "logs").iterdir())
    rc, _, err = run_cli(capsys, *export)  # the converter is deterministic: the same bytes again
    assert rc == 0, err
    assert f"kept {len(names)} logs in {kit / 'logs'}" in err and names[0] in err and "removed" not in err
    before = snapshot(kit)
    rc, _, err = run_cli(capsys, *export, "--threads", "2")
    assert rc == 1 and "would orphan" in err and names[0] in err and "--force" in err and "Traceback" not in err
    assert snapshot(kit) == before
    rc, _, err = run_cli(capsys, *export, "--threads", "2", "--force")
    assert rc == 0, err
    assert f"removed {len(names)} stale entries" in err and "kept 0 logs" in err and not (kit / "logs").exists()


# -- a log matches only the model it timed ----------------------------------------------------

def test_kit_file_names_carry_the_model_sha256(tmp_path: Path) -> None:
    write(tmp_path / "a", op_models(SMALL))
    write(tmp_path / "b", op_models(layers_of("mobilenet-v2")))
    files = {}
    for kit in ("a", "b"):
        man = json.loads((tmp_path / kit / "manifest.json").read_text())
        for row in man["models"]:
            digest = hashlib.sha256((tmp_path / kit / "models" / row["file"]).read_bytes()).hexdigest()
            assert row["sha256"] == digest
            assert re.fullmatch(r"op_\d{4}-[0-9a-f]{8}\.tflite", row["file"]) and row["file"][-15:-7] == digest[:8]
        files[kit] = {r["file"] for r in man["models"]}
    assert files["a"].isdisjoint(files["b"])  # position op_0000 in both, different models, different names
    # a manifest whose names disagree with its sha256 is refused, naming the row
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    man["models"][0]["sha256"], man["models"][1]["sha256"] = man["models"][1]["sha256"], man["models"][0]["sha256"]
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(MnasError, match=r"models\[0\]: `sha256`"):
        read_manifest(tmp_path / "a" / "manifest.json")


def test_logs_of_another_kit_are_refused_naming_the_log(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    small, mbv2 = tmp_path / "small", tmp_path / "mbv2"
    models = op_models(SMALL)
    write(small, models)
    write(mbv2, op_models(layers_of("mobilenet-v2")))
    log_models(small, models)
    out = tmp_path / "phone.json"
    rc, _, err = run_cli(capsys, "lut", "import", "benchmark-model", str(small / "logs"), "-o", str(out),
                         "--manifest", str(mbv2 / "manifest.json"))
    assert rc == 1 and "Traceback" not in err and not out.exists()
    assert re.search(rf"{re.escape(str(small / 'logs'))}/op_\d{{4}}-[0-9a-f]{{8}}\.log:\d+:\d+: error: graph "
                     rf"{DEV}/op_\d{{4}}-[0-9a-f]{{8}}\.tflite is not in the kit manifest", err), err
    rc, _, err = run_cli(capsys, "lut", "import", "benchmark-model", str(small / "logs"), "-o", str(out))
    assert rc == 0 and f"{len(SMALL)} ops measured" in err  # against their own kit they are fine


def test_a_log_whose_header_sha256_differs_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "kit"
    models = op_models(SMALL)
    write(root, models)
    logs = log_models(root, models)
    k = list(SMALL)[2]
    logs[k].write_text(bench_log(models[2].file, 500.0, header={"sha256": "ab" * 32, **PHONE}))
    with pytest.raises(MnasError, match="sha256 abababab") as e:
        import_logs(root / "logs")
    assert str(e.value).startswith(f"{logs[k]}:") and "another kit" in str(e.value)


def legacy_kit(root: Path, models: list[KitModel]) -> None:
    """A kit as format 1 wrote it: files named by position only, logs named after them."""
    (root / "models").mkdir(parents=True)
    (root / "logs").mkdir()
    rows = []
    for i, m in enumerate(models):
        (root / "models" / f"{m.name}.tflite").write_bytes(m.data)
        rows.append({"file": f"{m.name}.tflite", "kind": "op", "key": m.key, "input_shape": list(m.input_shape),
                     "batch": 1, "bytes": len(m.data), "sha256": m.sha256})
        (root / "logs" / f"{m.name}.log").write_text(bench_log(f"{m.name}.tflite", 800.0 + i, header=PHONE))
    (root / "manifest.json").write_text(json.dumps({
        "format": "mnasdsl-phone-kit", "version": 1, "converter": "c", "runtime": "r", "threads": 1, "num_runs": 50,
        "warmup_runs": 10, "batch": 1, "device_dir": DEV, "models": rows}))


def test_format1_kit_logs_are_accepted_only_from_its_own_folder(tmp_path: Path) -> None:
    root = tmp_path / "old"
    legacy_kit(root, op_models(SMALL))
    table, rep = import_logs(root / "logs")
    assert len(table.entries) == len(SMALL) and any("format-1" in w and "unchecked" in w for w in rep.warnings)
    moved = tmp_path / "elsewhere"
    shutil.copytree(root / "logs", moved)
    with pytest.raises(MnasError, match="older mnasdsl") as e:
        import_logs(moved, root / "manifest.json")
    assert str(e.value).startswith(str(root / "manifest.json"))
    new = tmp_path / "new"
    write(new, op_models(SMALL))
    with pytest.raises(MnasError, match="not in the kit manifest") as e:
        import_logs(root / "logs", new / "manifest.json")
    assert re.match(rf"{re.escape(str(root / 'logs'))}/op_\d{{4}}\.log:", str(e.value))


# -- run_on_device.sh from any directory ------------------------------------------------------

FAKE_ADB = r'''#!/usr/bin/env bash
# adb and a phone: records its argv, pushes nothing, and runs `adb shell` command lines with sh, as
# the phone's shell would (so BENCHMARK_MODEL may name a local stand-in for benchmark_model).
{ printf 'CALL\0'; printf '%s\0' "$@"; } >>"$FAKE_ADB_LOG"
args=("$@")
if [[ "${args[0]}" == -s ]]; then args=("${args[@]:2}"); fi
case "${args[0]}" in
  get-state) echo device ;;
  push)
    n=${#args[@]}
    [[ "${args[n-1]}" == /data/local/tmp/mnasdsl_kit/ ]] || { echo "bad destination ${args[n-1]}" >&2; exit 1; }
    for ((k = 1; k < n - 1; k++)); do
      [[ -f "${args[k]}" ]] || { echo "adb: error: cannot stat '${args[k]}'" >&2; exit 1; }
    done ;;
  shell)
    cmd="${args[*]:1}"
    case "$cmd" in
      "getprop ro.product.model") printf '%s\r\n' "$FAKE_MODEL" ;;
      "getprop ro.board.platform") printf 'gs201\r\n' ;;
      "getprop ro.build.version.release") printf '14\r\n' ;;
      "mkdir -p /data/local/tmp/mnasdsl_kit") ;;
      *) exec sh -c "$cmd" ;;
    esac ;;
  *) echo "fake adb: unexpected $*" >&2; exit 1 ;;
esac
'''

FAKE_BENCHMARK_MODEL = r'''#!/usr/bin/env bash
for a in "$@"; do case "$a" in --graph=*) graph="${a#--graph=}" ;; esac; done
printf 'INFO: Num threads: [1]\r\nINFO: Graph: [%s]\r\nINFO: Use xnnpack: [1]\r\n' "$graph"
printf 'INFO: count=10 first=1 curr=1 min=1 max=1 avg=1210 std=1\r\n'
printf 'INFO: count=50 first=1 curr=1 min=1 max=1 avg=1100 std=2\r\n'
printf 'INFO: Inference timings in us: Init: 1, First inference: 1, Warmup (avg): 1210, Inference (avg): 1100\r\n'
'''


def adb_calls(path: Path) -> list[list[str]]:
    calls: list[list[str]] = []
    for word in path.read_bytes().decode().split("\0")[:-1]:
        if word == "CALL":
            calls.append([])
        else:
            calls[-1].append(word)
    return calls


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sh") is None, reason="needs bash and sh")
@pytest.mark.parametrize("odd, relative", [
    ("a b&c'd$e", False),  # bash 5.2 turned the & of `${MODELS[@]/#/$HERE/models/}` into the match
    ("x*y\\\\z [1]", False),  # and read two backslashes in it as one
    ("plain", True),  # run by a relative path with CDPATH set: `cd` printed the directory twice
])
def test_run_on_device_from_an_odd_directory(tmp_path: Path, odd: str, relative: bool) -> None:
    parent = tmp_path / odd
    root = parent / "kit"
    models = op_models(dict(list(SMALL.items())[:4]))
    write(root, models)
    bindir, phone = tmp_path / "bin", tmp_path / "pho ne's $dir"
    bindir.mkdir()
    phone.mkdir()
    for path, text in ((bindir / "adb", FAKE_ADB), (phone / "bench'model", FAKE_BENCHMARK_MODEL)):
        path.write_text(text)
        path.chmod(0o755)
    calls = tmp_path / "calls.bin"
    model_name = 'Pixel 7 "Pro" & co\'s $HOME'
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "FAKE_ADB_LOG": str(calls),
           "FAKE_MODEL": model_name, "BENCHMARK_MODEL": str(phone / "bench'model")}
    for name in ("ADB_SERIAL", "CPU_MASK", "PAUSE"):
        env.pop(name, None)
    if relative:
        env["CDPATH"] = str(tmp_path)
        argv, cwd = ["bash", os.path.join(odd, "kit", "run_on_device.sh")], tmp_path
    else:
        argv, cwd = ["bash", str(root / "run_on_device.sh")], Path("/")
    run = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    pushes = [c for c in adb_calls(calls) if c[:1] == ["push"]]
    assert len(pushes) == 1 and pushes[0][-1] == f"{DEV}/"
    pushed = pushes[0][1:-1]
    assert [Path(p).resolve() for p in pushed] == [(root / "models" / m.file).resolve() for m in models]
    assert all(p.endswith(f"/{odd}/kit/models/{m.file}") for p, m in zip(pushed, models, strict=True))
    timed = [c for c in adb_calls(calls) if c[:1] == ["shell"] and "--graph=" in c[-1]]
    assert [re.search(r"--graph=(\S+)", c[-1]).group(1) for c in timed] == [  # type: ignore[union-attr]
        f"{DEV}/{m.file}" for m in models]
    for m in models:
        text = (root / "logs" / log_name(m)).read_text()
        assert text.startswith(f"# mnasdsl-kit sha256: {m.sha256}\n# mnasdsl-kit device: {model_name}\n")
    table, rep = import_logs(root / "logs")
    assert rep.missing == [] and table.device == model_name and set(table.entries) == {m.key for m in models}
    hint = run.stderr.strip().splitlines()[-1]
    words = shlex.split(hint)
    assert words[:4] == ["mnasdsl", "lut", "import", "benchmark-model"]
    assert Path(words[4]).resolve() == (root / "logs").resolve()
    assert Path(words[words.index("--manifest") + 1]).resolve() == (root / "manifest.json").resolve()

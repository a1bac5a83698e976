"""The on-phone kit: writing it, parsing benchmark_model logs, importing them into a LUT, the CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import mnasdsl
from mnasdsl.cli.main import main
from mnasdsl.diagnostics import MnasError
from mnasdsl.latency import Estimator, read_lut
from mnasdsl.latency.features import layer_features
from mnasdsl.latency.lut import op_key
from mnasdsl.latency.model import mape
from mnasdsl.latency.phone import KitModel, import_logs, parse_benchmark_log, read_manifest, write_kit
from mnasdsl.lowering import Layer, LoweredNetwork

from .conftest import SPECS

DEV = "/data/local/tmp/mnasdsl_kit"
LOGCAT = "01-02 03:04:05.678  4321  4321 I tflite  : "


def bench_log(graph: str, avg_us: float, *, std: float = 31.0, count: int = 824, prefix: str = "INFO: ",
              summary: bool = True, counts: bool = True, header: dict[str, str] | None = None) -> str:
    """A benchmark_model log in the tool's own format (header lines as run_on_device.sh writes them)."""
    head = [f"# mnasdsl-kit {k}: {v}" for k, v in (header or {}).items()]
    warm = avg_us * 1.01
    body = [
        "STARTING!",
        "Log parameter values verbosely: [0]",
        "Num threads: [1]",
        f"Graph: [{DEV}/{graph}]",
        "#threads used for CPU inference: [1]",
        "Use xnnpack: [1]",
        f"Loaded model {DEV}/{graph}",
        "Created TensorFlow Lite XNNPACK delegate for CPU.",
        "The input model file size (MB): 0.0112",
        "Initialized session in 12.345ms.",
        "Running benchmark for at least 10 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.",
    ]
    if counts:
        body.append(f"count=412 first=1520 curr=1190 min=1150 max=1620 avg={warm:.6f} std=62")
    body += ["", "Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding "
             "150 seconds."]
    if counts:
        body.append(f"count={count} first=1201 curr=1188 min=1149 max=1400 avg={avg_us:.6f} std={std:g}")
    body.append("")
    if summary:
        body.append(f"Inference timings in us: Init: 12345, First inference: 1520, Warmup (avg): {warm:.6f}, "
                    f"Inference (avg): {avg_us:.6f}")
    body.append("Memory footprint delta from the start of the tool (MB): init=1.2 overall=1.5")
    return "\n".join(head + [(prefix + line) if line else line for line in body]) + "\n"


# -- a kit of mnasnet-small at 32x32, at a few widths -----------------------------------------

PHONE = {"device": "Pixel 7", "soc": "gs201", "android": "14", "cpu_mask": "none"}


def networks(widths: tuple[float, ...]) -> list[tuple[str, LoweredNetwork]]:
    net = mnasdsl.load(SPECS / "mnasnet-small.mnas")
    out = []
    for w in widths:
        n = net.scaled(resolution=32, width=w)
        out.append((mnasdsl.format(n), mnasdsl.lower(n)))
    return out


def op_ms(layer: Layer) -> float:
    """A made-up but physical op time: per-launch cost plus rates on the work."""
    f = layer_features(layer)
    return 0.01 * f[-1] + 0.5 * f[0] + 0.3 * sum(f[1:4]) + 0.2 * f[4] + 0.1 * f[5]


class Kit:
    def __init__(self, root: Path, nets: list[tuple[str, LoweredNetwork]]) -> None:
        self.root = root
        self.logs = root / "logs"
        self.nets = nets
        self.layers: dict[str, Layer] = {}
        for _, low in nets:
            for ly in low.layers:
                self.layers.setdefault(op_key(ly), ly)
        ops = [KitModel(f"op_{i:04d}", b"TFL3" + bytes([i % 256]), "op", key=k, input_shape=ly.in_shape)
               for i, (k, ly) in enumerate(self.layers.items())]
        net_models = [KitModel(f"net_{i}", b"TFL3net", "network", spec=spec, input_shape=low.input_shape)
                      for i, (spec, low) in enumerate(nets)]
        # file names end in the model's sha256 prefix: op_0000-1a2b3c4d.tflite
        self.op_file = {m.key: m.file for m in ops if m.key is not None}
        self.net_file = [m.file for m in net_models]
        write_kit(root, ops + net_models, converter="ai-edge-torch 0.2.0", runtime="LiteRT 1.0.1")

    def log(self, file: str, avg_us: float, name: str | None = None, **kw: object) -> Path:
        self.logs.mkdir(exist_ok=True)
        p = self.logs / (name or file.replace(".tflite", ".log"))
        p.write_text(bench_log(file, avg_us, header=PHONE, **kw))  # type: ignore[arg-type]
        return p

    def log_ops(self, skip: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        for k, ly in self.layers.items():
            if k not in skip:
                self.log(self.op_file[k], op_ms(ly) * 1000)

    def truth(self, scale: float = 1.25, per_op: float = 0.0, per_net: float = 0.0) -> list[float]:
        """Whole-network times that the global terms can explain exactly."""
        out = []
        for _, low in self.nets:
            s = sum(op_ms(ly) for ly in low.layers)
            launches = sum(layer_features(ly)[-1] for ly in low.layers)
            out.append(scale * s + per_op * launches + per_net)
        return out

    def log_nets(self, ms: list[float]) -> None:
        for f, m in zip(self.net_file, ms, strict=True):
            self.log(f, m * 1000)


@pytest.fixture
def kit(tmp_path: Path) -> Kit:
    return Kit(tmp_path / "kit", networks((0.5, 0.75, 1.0)))


# -- parsing ----------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["INFO: ", "", LOGCAT])
def test_parse_log_any_prefix(prefix: str) -> None:
    text = bench_log("op_0001.tflite", 1201.8, prefix=prefix, header=PHONE)
    lg = parse_benchmark_log(text, "a.log")
    assert lg.graph == f"{DEV}/op_0001.tflite"
    assert (lg.threads, lg.xnnpack, lg.count) == (1, True, 824)
    assert lg.avg_us == pytest.approx(1201.8) and lg.std_us == 31 and (lg.min_us, lg.max_us) == (1149, 1400)
    assert lg.warmup_avg_us == pytest.approx(1201.8 * 1.01) and lg.init_us == 12345 and lg.first_us == 1520
    assert (lg.device, lg.soc, lg.android) == ("Pixel 7", "gs201", "14")


def test_parse_the_documented_example() -> None:
    text = """INFO: STARTING!
INFO: Num threads: [1]
INFO: Graph: [/data/local/tmp/mnasdsl_kit/op_0001.tflite]
INFO: Use xnnpack: [1]
INFO: Initialized session in 12.345ms.
INFO: count=412 first=1520 curr=1190 min=1150 max=1620 avg=1213.5 std=62

INFO: count=824 first=1201 curr=1188 min=1149 max=1400 avg=1201.8 std=31

INFO: Inference timings in us: Init: 12345, First inference: 1520, Warmup (avg): 1213.5, Inference (avg): 1201.8
"""
    lg = parse_benchmark_log(text, "x.log")
    assert (lg.avg_us, lg.std_us, lg.count, lg.warmup_avg_us, lg.init_us) == (1201.8, 31, 824, 1213.5, 12345)
    assert lg.header == {}


def test_parse_summary_only_and_count_only() -> None:
    s = parse_benchmark_log(bench_log("a.tflite", 900.0, counts=False), "s.log")
    assert (s.avg_us, s.std_us, s.count, s.warmup_avg_us, s.first_us) == (900.0, None, None, 909.0, 1520)
    c = parse_benchmark_log(bench_log("a.tflite", 900.0, summary=False), "c.log")
    assert (c.avg_us, c.std_us, c.count) == (900.0, 31, 824)
    assert c.warmup_avg_us == pytest.approx(909.0) and c.first_us == 1520 and c.init_us == pytest.approx(12345)


def _where(err: MnasError) -> tuple[str, int, int]:
    m = re.match(r"^(.*):(\d+):(\d+): error: ", str(err))
    assert m, str(err)
    return m.group(1), int(m.group(2)), int(m.group(3))


def test_truncated_log_names_file_and_line() -> None:
    full = bench_log("a.tflite", 900.0).splitlines()
    cut = next(i for i, line in enumerate(full) if "count=824" in line)
    text = "\n".join(full[:cut]) + "\n"  # the warm-up finished, the timed run did not
    with pytest.raises(MnasError, match="truncated") as e:
        parse_benchmark_log(text, "logs/a.log")
    assert _where(e.value)[:2] == ("logs/a.log", cut)
    before = "\n".join(full[:5]) + "\nERROR: Failed to allocate tensors!\n"
    with pytest.raises(MnasError, match="truncated") as e:
        parse_benchmark_log(before, "logs/b.log")
    assert _where(e.value)[:2] == ("logs/b.log", 6)
    assert "Failed to allocate tensors" in str(e.value)  # what benchmark_model said is kept as a note


def test_garbled_numbers_point_at_the_token() -> None:
    text = bench_log("a.tflite", 900.0).replace("avg=900.000000 std=31", "avg=9O0.5 std=31")
    with pytest.raises(MnasError, match="garbled `avg`") as e:
        parse_benchmark_log(text, "g.log")
    path, line, col = _where(e.value)
    row = text.splitlines()[line - 1]
    assert path == "g.log" and row[col - 1:].startswith("9O0.5")
    bad_summary = bench_log("a.tflite", 900.0).replace("Inference (avg): 900.000000", "Inference (avg): 900.0.0")
    with pytest.raises(MnasError, match="Inference \\(avg\\)"):
        parse_benchmark_log(bad_summary, "g.log")
    with pytest.raises(MnasError, match="count"):
        parse_benchmark_log(bench_log("a.tflite", 900.0).replace("count=824", "count=8.5"), "g.log")


def test_missing_graph_disagreement_and_two_runs_are_errors() -> None:
    no_graph = "\n".join(x for x in bench_log("a.tflite", 900.0).splitlines() if "Graph:" not in x)
    with pytest.raises(MnasError, match="Graph") as e:
        parse_benchmark_log(no_graph, "n.log")
    assert _where(e.value)[:2] == ("n.log", 1)
    off = bench_log("a.tflite", 900.0).replace("Inference (avg): 900.000000", "Inference (avg): 950")
    with pytest.raises(MnasError, match="disagrees"):
        parse_benchmark_log(off, "d.log")
    twice = bench_log("a.tflite", 900.0) + bench_log("b.tflite", 800.0)
    with pytest.raises(MnasError, match="two runs"):
        parse_benchmark_log(twice, "t.log")


# -- importing --------------------------------------------------------------------------------

def test_import_missing_op_is_priced_by_the_model(kit: Kit) -> None:
    gone = next(iter(kit.layers))
    kit.log_ops(skip={gone})
    lut, rep = import_logs(kit.logs)
    assert rep.missing == [gone] and gone not in lut.entries and len(rep.measured) == len(kit.layers) - 1
    assert lut.model is not None and lut.provenance["ops_missing"] == [gone]
    assert (lut.device, lut.runtime) == ("Pixel 7", "LiteRT benchmark_model, XNNPACK, 1 thread")
    prov = lut.provenance
    assert (prov["converter"], prov["android"], prov["soc"], prov["threads"], prov["num_runs"]) == (
        "ai-edge-torch 0.2.0", "14", "gs201", 1, 50)
    k = next(iter(lut.entries))
    assert lut.entries[k].mean == pytest.approx(op_ms(kit.layers[k])) and lut.entries[k].count == 824
    est = Estimator(lut).estimate(kit.nets[0][1])
    assert {r.source for r in est.layers if r.key == gone} == {"model"}
    assert all(r.source == "lut" for r in est.layers if r.key != gone)


def test_import_rejects_foreign_graphs_and_keeps_the_later_duplicate(kit: Kit) -> None:
    kit.log_ops()
    first = kit.op_file[next(iter(kit.layers))]
    older = kit.log(first, 5000.0, name="again.txt")
    os.utime(older, (1, 1))
    lut, rep = import_logs(kit.logs)
    assert any("again.txt" in w and "kept" in w for w in rep.warnings)
    assert lut.entries[next(iter(kit.layers))].mean != pytest.approx(5.0)
    kit.log("op_9999.tflite", 100.0, name="stray.log")
    with pytest.raises(MnasError, match="not in the kit manifest") as e:
        import_logs(kit.logs)
    assert _where(e.value)[0].endswith("stray.log")


def test_import_device_override_and_bad_dirs(kit: Kit, tmp_path: Path) -> None:
    kit.log_ops()
    lut, _ = import_logs(kit.logs, kit.root / "manifest.json", device="pixel7-bigcore", runtime="LiteRT 1.0")
    assert (lut.device, lut.runtime) == ("pixel7-bigcore", "LiteRT 1.0")
    with pytest.raises(MnasError, match="logs/ folder|log folder"):
        import_logs(kit.root)
    with pytest.raises(MnasError, match="no such file"):
        import_logs(kit.logs, tmp_path / "nope.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MnasError, match="no benchmark_model logs"):
        import_logs(tmp_path / "empty", kit.root / "manifest.json")


def _check_calibration(kit: Kit, truth: list[float], terms: tuple[str, ...]) -> None:
    kit.log_ops()
    kit.log_nets(truth)
    lut, rep = import_logs(kit.logs)
    assert rep.calibration_terms == terms and len(rep.networks) == len(kit.nets)
    assert lut.model is not None and lut.provenance["calibration"]["networks"] == len(kit.nets)
    est = Estimator(lut)
    pred = [est.estimate_ms(low) for _, low in kit.nets]
    assert mape(pred, truth) <= lut.model.fit["networks_mape_pct_in_sample"] + 1e-6
    assert pred == pytest.approx(truth, rel=1e-4)
    assert rep.mape_after_pct is not None and rep.mape_before_pct is not None
    assert rep.mape_after_pct < rep.mape_before_pct
    assert [r.estimated_ms for r in rep.networks] == pytest.approx(pred)


def test_calibration_from_three_networks_fits_the_scale(kit: Kit) -> None:
    truth = kit.truth(scale=1.25)
    _check_calibration(kit, truth, ("scale",))
    lut, _ = import_logs(kit.logs)
    assert lut.model is not None and lut.model.calibration.scale == pytest.approx(1.25, rel=1e-4)


def test_calibration_from_five_networks_fits_all_terms(tmp_path: Path) -> None:
    kit = Kit(tmp_path / "kit5", networks((0.35, 0.5, 0.75, 1.0, 1.4)))
    truth = kit.truth(scale=1.1, per_op=0.002, per_net=0.3)
    _check_calibration(kit, truth, ("scale", "per_op_ms", "per_network_ms"))


def test_no_networks_no_calibration(kit: Kit) -> None:
    kit.log_ops()
    lut, rep = import_logs(kit.logs)
    assert rep.networks == [] and rep.missing_networks == kit.net_file
    assert lut.model is not None and lut.model.calibration.scale == 1.0 and "calibration" not in lut.provenance


# -- writing the kit --------------------------------------------------------------------------

def test_write_kit_manifest_and_script(kit: Kit) -> None:
    man = json.loads((kit.root / "manifest.json").read_text())
    assert (man["format"], man["version"], man["converter"], man["runtime"]) == (
        "mnasdsl-phone-kit", 2, "ai-edge-torch 0.2.0", "LiteRT 1.0.1")
    assert (man["threads"], man["num_runs"], man["warmup_runs"], man["batch"]) == (1, 50, 10, 1)
    rows = {r["file"]: r for r in man["models"]}
    assert set(rows) == set(kit.op_file.values()) | set(kit.net_file)
    k, f = next(iter(kit.op_file.items()))
    data = (kit.root / "models" / f).read_bytes()
    assert rows[f]["key"] == k and rows[f]["bytes"] == len(data) and rows[f]["kind"] == "op"
    import hashlib

    assert rows[f]["sha256"] == hashlib.sha256(data).hexdigest()
    assert rows[f]["input_shape"] == list(kit.layers[k].in_shape)
    net0 = kit.net_file[0]
    assert rows[net0]["spec"] == kit.nets[0][0] and "key" not in rows[net0]
    assert len(read_manifest(kit.root / "manifest.json").models) == len(rows)
    script = kit.root / "run_on_device.sh"
    text = script.read_text()
    assert os.access(script, os.X_OK) and text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert (f"--graph={DEV}/$f --num_threads=1 --use_xnnpack=true --num_runs=50 --warmup_runs=10") in text
    for word in ("BENCHMARK_MODEL:-/data/local/tmp/benchmark_model", "ADB_SERIAL", "CPU_MASK", "taskset",
                 '"${ADB[@]}" push', "getprop", "ro.product.model", "ro.board.platform", "ro.build.version.release",
                 "# mnasdsl-kit device:", "# mnasdsl-kit soc:", "# mnasdsl-kit android:", "logs"):
        assert word in text, word
    assert all(f"  {f}\n" in text for f in rows)
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(script)], check=True)
    readme = (kit.root / "README.txt").read_text()
    assert "run_on_device.sh" in readme and "lut import benchmark-model" in readme and "--manifest" in readme
    assert "pip install ai-edge-litert mnasdsl" in readme and "--runtime litert" in readme


def test_write_kit_never_overwrites_a_foreign_directory(tmp_path: Path, kit: Kit) -> None:
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    model = KitModel("op_0", b"x", "op", key=next(iter(kit.layers)), input_shape=next(iter(kit.layers.values()))
                     .in_shape)
    with pytest.raises(MnasError, match="not a phone kit"):
        write_kit(other, [model], converter="c", runtime="r")
    assert (other / "thesis.tex").read_text() == "precious" and sorted(p.name for p in other.iterdir()) == [
        "thesis.tex"]
    (other / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(MnasError, match="not a phone kit"):
        write_kit(other, [model], converter="c", runtime="r")
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(MnasError, match="not a directory"):
        write_kit(afile, [model], converter="c", runtime="r")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_kit(empty, [model], converter="c", runtime="r").path == empty and (empty / "manifest.json").is_file()
    # With force, an existing kit is replaced whole: no stale model or log of the old kit survives.
    kit.log_ops()
    write_kit(kit.root, [model], converter="c2", runtime="r2", threads=4, force=True)
    assert sorted(p.name for p in kit.root.iterdir()) == ["README.txt", "manifest.json", "models",
                                                          "run_on_device.sh"]
    assert [p.name for p in (kit.root / "models").iterdir()] == [model.file]
    assert read_manifest(kit.root / "manifest.json").threads == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


@pytest.mark.parametrize("bad, words", [
    (dict(name="a b"), "name"),
    (dict(key="conv-3x3"), "canonical"),
    (dict(batch=2), "batch"),
    (dict(data=b""), "bytes"),
    (dict(kind="layer"), "kind"),
])
def test_write_kit_rejects_bad_models(tmp_path: Path, kit: Kit, bad: dict[str, object], words: str) -> None:
    k, ly = next(iter(kit.layers.items()))
    fields: dict[str, object] = dict(name="op", data=b"x", kind="op", key=k, input_shape=ly.in_shape)
    fields.update(bad)
    with pytest.raises(MnasError, match=words):
        write_kit(tmp_path / "k", [KitModel(**fields)], converter="c", runtime="r")  # type: ignore[arg-type]
    assert not (tmp_path / "k").exists()


# -- the CLI ----------------------------------------------------------------------------------

def test_cli_import_benchmark_model(capsys, kit: Kit, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gone = list(kit.layers)[:2]
    kit.log_ops(skip=set(gone))
    kit.log_nets(kit.truth())
    out = tmp_path / "phone.json"
    assert main(["lut", "import", "benchmark-model", str(kit.logs), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    lut = read_lut(out)
    assert lut.device == "Pixel 7" and len(lut.entries) == len(kit.layers) - 2 and lut.model is not None
    assert f"{len(kit.layers) - 2} ops measured" in err and "2 ops missing" in err and all(k in err for k in gone)
    assert "3 networks calibrated" in err and "MAPE" in err
    # broken input: exit 1, a diagnostic naming the file, no traceback
    stem = list(kit.op_file.values())[5].removesuffix(".tflite")
    log = kit.logs / f"{stem}.log"
    log.write_text("\n".join(log.read_text().splitlines()[:12]) + "\n")
    assert main(["lut", "import", "benchmark-model", str(kit.logs), "-o", str(tmp_path / "x.json")]) == 1
    err = capsys.readouterr().err
    assert f"{stem}.log:12:1: error: truncated" in err and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()
    assert main(["lut", "import", "benchmark-model", str(tmp_path / "nowhere"), "-o", str(out)]) == 1
    assert "Traceback" not in capsys.readouterr().err
    assert main(["lut", "import", "benchmark-model", str(kit.logs), "-o", str(out), "--manifest",
                 str(kit.root / "README.txt")]) == 1
    assert "manifest" in capsys.readouterr().err


def test_cli_proxylessnas_defaults_unchanged(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "px.yaml"
    src.write_text("Conv-input:224x224x3-output:112x112x32: {mean: 1.5, var: 0.01, count: 10}\n")
    out = tmp_path / "px.json"
    assert main(["lut", "import", "proxylessnas", str(src), "-o", str(out)]) == 0
    lut = read_lut(out)
    assert (lut.device, lut.runtime) == ("pixel1", "TFLite")
    assert np.isclose(next(iter(lut.entries.values())).mean, 1.5)
    capsys.readouterr()


FAKE_ADB = r'''#!PYTHON
"""A stand-in for adb and a phone: enough of `adb shell` for run_on_device.sh."""
import os, re, sys
args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a") as f:
    f.write(" ".join(args) + "\n")
if args[:1] == ["-s"]:
    args = args[2:]
cmd, rest = args[0], " ".join(args[1:])
if cmd == "get-state":
    print("device")
elif cmd == "push":
    assert args[-1] == "/data/local/tmp/mnasdsl_kit/", args
    assert all(os.path.isfile(a) for a in args[1:-1]), args
elif rest.startswith("getprop"):
    sys.stdout.write({"ro.product.model": "Pixel 7", "ro.board.platform": "gs201",
                      "ro.build.version.release": "14"}[args[2]] + "\r\n")
elif "echo ok" in rest:
    sys.stdout.write("ok\r\n")
elif rest.startswith("mkdir"):
    pass
else:
    graph = re.search(r"--graph=(\S+)", rest).group(1)
    if os.path.basename(graph) == os.environ.get("FAKE_ADB_FAIL"):
        sys.stdout.write("ERROR: Failed to load model\r\n")
        sys.exit(1)
    avg = 100.0 + sum(map(ord, graph)) % 97
    sys.stdout.write(f"INFO: Num threads: [1]\r\nINFO: Graph: [{graph}]\r\n"
                     f"INFO: count=10 first=1 curr=1 min=1 max=1 avg={avg * 1.1} std=1\r\n"
                     f"INFO: count=50 first=1 curr=1 min=1 max=1 avg={avg} std=2\r\n"
                     f"INFO: Inference timings in us: Init: 1, First inference: 1, Warmup (avg): {avg * 1.1}, "
                     f"Inference (avg): {avg}\r\n")
'''


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_run_on_device_script_with_a_fake_adb(kit: Kit, tmp_path: Path) -> None:
    import sys

    bindir = tmp_path / "bin"
    bindir.mkdir()
    adb = bindir / "adb"
    adb.write_text(FAKE_ADB.replace("PYTHON", sys.executable))
    adb.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "FAKE_ADB_LOG": str(calls),
           "ADB_SERIAL": "emulator-5554", "CPU_MASK": "f0", "FAKE_ADB_FAIL": kit.net_file[1]}
    run = subprocess.run(["bash", str(kit.root / "run_on_device.sh")], env=env, capture_output=True, text=True)
    assert run.returncode == 1 and "1 model(s) failed" in run.stderr
    net1 = kit.net_file[1].removesuffix(".tflite")
    assert (kit.logs / f"{net1}.log.part").exists() and not (kit.logs / f"{net1}.log").exists()
    lines = calls.read_text().splitlines()
    assert all(line.startswith("-s emulator-5554 ") for line in lines)
    assert any("taskset f0 /data/local/tmp/benchmark_model --graph=" in line for line in lines)
    lut, rep = import_logs(kit.logs)
    assert rep.missing == [] and rep.missing_networks == [kit.net_file[1]] and lut.device == "Pixel 7"
    assert lut.provenance["cpu_mask"] == "f0" and len(rep.networks) == 2
    # a rerun times only what is missing
    calls.write_text("")
    env["FAKE_ADB_FAIL"] = ""
    run = subprocess.run(["bash", str(kit.root / "run_on_device.sh")], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    timed = [line for line in calls.read_text().splitlines() if "--graph=" in line]
    assert len(timed) == 1 and kit.net_file[1] in timed[0]
    _, rep = import_logs(kit.logs)
    assert rep.missing_networks == [] and len(rep.networks) == 3

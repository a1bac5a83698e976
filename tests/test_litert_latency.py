"""LiteRT as a latency device: per-op tables from converted .tflite models, whole-network timing,
the on-phone kit written by `profile --export-ops` and read back by `lut import benchmark-model`,
and search with measured LiteRT latency. Tiny networks only: the timings are not asserted, only
that they are real (positive, recorded with their provenance) and consistent with each other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("litert_converter", reason="needs litert-converter (pip install 'mnasdsl[litert]')")
pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert (pip install 'mnasdsl[litert]')")

import mnasdsl  # noqa: E402
from mnasdsl.backends import tflite as tl  # noqa: E402
from mnasdsl.latency import litert  # noqa: E402
from mnasdsl.latency.lut import read_lut  # noqa: E402
from mnasdsl.latency.phone import read_manifest  # noqa: E402

from .test_latency import run  # noqa: E402

TINY_SPACE = ("space tiny:\n  input 32x32x3\n  classes 10\n  stem cv_k3_s22_o8\n  blocks\n"
              "    {ds,mb_e3}_r1_k{3,5}_s22_o16_se0_noskip\n    mb_e3_r1_k3_s11_o16_se{0,0.25}_{id,pool}\n"
              "  head cv_k1_o32 fixed\n")
TINY_NET = ("network tinynet:\n  input 32x32x3\n  classes 10\n  stem cv_k3_s22_o8\n  blocks\n"
            "    r1_k3_s22_e3_i8_o16_se0.25\n    r2_k5_s11_e6_i16_o16_pool\n  head cv_k1_o32 fixed\n")


@pytest.fixture()
def space(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.mnas"
    p.write_text(TINY_SPACE)
    return p


def test_layer_models_are_the_exported_ops() -> None:
    """Each op's .tflite computes just that layer: the same ops the whole export uses for it."""
    low = mnasdsl.lower(mnasdsl.parse(TINY_NET)[0])
    for layer in low.layers:
        census = tl.op_census(litert.layer_tflite(layer, low))
        assert tl.non_builtin(census) == []
        if layer.kind == "classifier":
            assert census == {"MEAN": 1, "FULLY_CONNECTED": 1}
        elif layer.kind in ("stem", "head"):
            assert census == {"CONV_2D": 1}
        elif layer.se:
            assert census["LOGISTIC"] == 1 and census["DEPTHWISE_CONV_2D"] == 1
    assert litert.network_tflite(low)[4:8] == b"TFL3"


def test_profile_litert_table_and_provenance(space: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "lit.json"
    code, _, err = run(capsys, "profile", str(space), "--runtime", "litert", "-o", str(out), "--rounds", "1",
                       "--repeats", "3", "--reference", "--calibrate", "3")
    assert code == 0, err
    lut = read_lut(out)
    assert lut.provenance["runtime_kind"] == "litert" and lut.provenance["threads"] == 1
    assert lut.provenance["delegate"] == "XNNPACK" and "ai-edge-litert" in lut.provenance["runtime_version"]
    assert lut.provenance["reference_ms"] > 0 and lut.provenance["reference_network_ms"] > 0
    assert "LiteRT" in lut.runtime and len(lut.entries) >= 8
    assert all(e.mean > 0 for e in lut.entries.values())
    assert lut.model is not None and lut.model.fit["calibration_terms"] == ["scale"]
    # resuming with another runtime or thread count is refused, not mixed into the table
    code, _, err = run(capsys, "profile", str(space), "--runtime", "litert", "--threads", "2", "-o", str(out))
    assert code == 1 and "use another output file" in err
    code, _, err = run(capsys, "profile", str(space), "-o", str(out))
    assert code == 1 and "use another output file" in err
    # whole networks timed in LiteRT against the table; the drift of both references is reported
    code, outp, err = run(capsys, "lut", "check", "--lut", str(out), "--measure", str(space), "--sample", "3",
                          "--seed", "5", "--rounds", "1", "--repeats", "3", "--json")
    assert code == 0, err
    res = json.loads(outp)
    assert res["measured_with"] == "litert" and set(res["drift_pct"]) == {"op", "network"}
    assert all(n["measured_ms"] > 0 and n["predicted_ms"] > 0 for n in res["networks"])


def test_latency_measure_litert(tmp_path: Path, capsys: Any) -> None:
    net = tmp_path / "n.mnas"
    net.write_text(TINY_NET)
    code, out, err = run(capsys, "latency", str(net), "--measure", "litert", "--repeats", "5", "--json")
    assert code == 0, err
    m = json.loads(out)["measured"]
    assert m["ms"] > 0 and "LiteRT" in m["runtime"] and m["repeats"] == 5
    code, _, err = run(capsys, "latency", str(net), "--measure", "tpu")
    assert code == 2 and "--measure" in err


def test_export_ops_kit_round_trip(space: Path, tmp_path: Path, capsys: Any) -> None:
    """The kit's manifest maps every model file to its LUT key; logs in benchmark_model's format
    come back as a table holding those keys."""
    kit = tmp_path / "kit"
    code, _, err = run(capsys, "profile", str(space), "--runtime", "litert", "--export-ops", str(kit),
                       "--calibrate", "2")
    assert code == 0, err
    man = read_manifest(kit / "manifest.json")
    ops = [m for m in man.models if m.kind == "op"]
    nets = [m for m in man.models if m.kind == "network"]
    assert len(nets) == 2 and len(ops) >= 8
    for m in man.models:
        data = (kit / "models" / m.file).read_bytes()
        assert data[4:8] == b"TFL3" and len(data) == m.bytes
    assert (kit / "run_on_device.sh").stat().st_mode & 0o111
    logs = kit / "logs"
    logs.mkdir()
    for i, m in enumerate(man.models):
        us = 1000.0 + 10 * i if m.kind == "op" else 30000.0 + 100 * i
        (logs / f"run{i}.log").write_text(
            f"INFO: Num threads: [1]\nINFO: Graph: [/data/local/tmp/mnasdsl_kit/{m.file}]\n"
            f"INFO: count=50 first={us:.0f} curr={us:.0f} min={us:.0f} max={us:.0f} avg={us} std=3\n"
            f"INFO: Inference timings in us: Init: 100, First inference: {us:.0f}, Warmup (avg): {us}, "
            f"Inference (avg): {us}\n")
    out = tmp_path / "phone.json"
    code, _, err = run(capsys, "lut", "import", "benchmark-model", str(logs), "-o", str(out), "--device", "testphone")
    assert code == 0, err
    lut = read_lut(out)
    assert lut.device == "testphone" and {m.key for m in ops} == set(lut.entries)
    # an existing directory that is not a kit is never overwritten
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    code, _, err = run(capsys, "profile", str(space), "--runtime", "litert", "--export-ops", str(other))
    assert code == 1 and (other / "notes.txt").read_text() == "keep me"
    code, _, err = run(capsys, "profile", str(space), "--export-ops", str(tmp_path / "k2"))
    assert code == 2 and "--runtime litert" in err


def test_search_measures_litert(space: Path, tmp_path: Path, capsys: Any) -> None:
    db = tmp_path / "s.db"
    code, _, err = run(capsys, "search", str(space), "--trials", "3", "--target-ms", "1", "--measure", "litert",
                       "--db", str(db), "--json")
    assert code == 0, err
    import sqlite3

    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT latency_ms FROM trials WHERE status = 'done'").fetchall()
    assert len(rows) == 3 and all(r[0] > 0 for r in rows)

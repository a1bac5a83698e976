"""Latency: LUT format and import, the estimator, the pixel1 device, the CLI, profiling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mnasdsl.cli.main import main
from mnasdsl.diagnostics import MnasError
from mnasdsl.latency import (
    HARD,
    SOFT,
    Estimator,
    available_devices,
    import_proxylessnas,
    layer_features,
    load_device,
    objective_factor,
    op_key,
    parse_lut,
)
from mnasdsl.latency.lut import Entry, Lut, layer_for_key
from mnasdsl.latency.model import fit_lut, nnls_relative
from mnasdsl.lowering import lower
from mnasdsl.parser import parse_units, read_source
from mnasdsl.space import load_space

from .conftest import SPECS

MBV2 = str(SPECS / "mobilenet-v2.mnas")
A1 = str(SPECS / "mnasnet-a1.mnas")


def _net(path: str):  # type: ignore[no-untyped-def]
    return parse_units(read_source(path), path)[0]


def run(capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse usage errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def px_lut() -> Lut:
    from .conftest import SHARED_DATA

    path = SHARED_DATA / "pixel1_proxylessnas_lut.yaml"
    if not path.exists():
        pytest.skip(f"public measurements not found at {SHARED_DATA} (the ../shared/data folder beside the repo)")
    return import_proxylessnas(path.read_text(), str(path))


# -- signatures and the file format ---------------------------------------------------------

def test_op_key_round_trips_every_spec_layer() -> None:
    space = load_space(SPECS / "spaces" / "mnasnet.mnas")
    rng = np.random.default_rng(1)
    lows = [lower(_net(str(p))) for p in sorted(SPECS.glob("*.mnas"))]
    lows += [lower(space.decode(space.sample_indices(rng))) for _ in range(20)]
    for low in lows:
        for ly in low.layers:
            key = op_key(ly)
            back = layer_for_key(key)
            assert op_key(back) == key
            assert layer_features(back) == layer_features(ly), key


def test_lut_json_round_trip(px_lut: Lut) -> None:
    again = parse_lut(px_lut.dumps())
    assert again == px_lut
    assert len(px_lut.entries) == 72


@pytest.mark.parametrize("text, words", [
    ('{"format": "mnasdsl-lut", "version": 1, "device": "x"', "truncated"),
    ('{"format": "mnasdsl-lut", "version": 1, @}', "corrupt"),
    ('[1, 2]', "not a latency table"),
    ('{"format": "other"}', "not a latency table"),
    ('{"format": "mnasdsl-lut", "version": 7, "device": "x", "runtime": "y"}', "incompatible"),
    ('{"format": "mnasdsl-lut", "version": 1, "device": "x", "runtime": "y", "entries": {"bogus": {}}}',
     "canonical op signature"),
    ('{"format": "mnasdsl-lut", "version": 1, "device": "x", "runtime": "y", "entries": '
     '{"cv-i8x8x3-o4x4x8-k3-s2-e1-se0-skip:none-act:relu": {"mean": -1}}}', "`mean`"),
    ('{"format": "mnasdsl-lut", "version": 1, "device": "x", "runtime": "y", "model": '
     '{"features": ["macs"], "coef": [1]}}', "incompatible model"),
])
def test_bad_tables_are_clear_errors(text: str, words: str) -> None:
    with pytest.raises(MnasError, match=words):
        parse_lut(text, "t.json")


def test_bad_tables_exit_1_without_traceback(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "t.json"
    for data in (b'{"format": "mnasdsl-lut", "ver', b"\xff\xfe\x00garbage", b""):
        bad.write_bytes(data)
        code, _, err = run(capsys, "latency", A1, "--lut", str(bad))
        assert code == 1 and "Traceback" not in err and "t.json" in err
    code, _, err = run(capsys, "latency", A1, "--lut", str(tmp_path / "missing.json"))
    assert code == 1 and "no such file" in err
    code, _, err = run(capsys, "latency", A1, "--device", "nokia3310")
    assert code == 1 and "unknown device" in err


def test_proxylessnas_import_maps_keys(px_lut: Lut) -> None:
    low = lower(_net(MBV2))
    keys = {op_key(ly) for ly in low.layers}
    # stem, the e1 (ds) block, 16->24 and 24->24 at 56, head and logits are in the table
    for k in ("cv-i224x224x3-o112x112x32-k3-s2-e1-se0-skip:none-act:relu6",
              "ds-i112x112x32-o112x112x16-k3-s1-e1-se0-skip:none-act:relu6",
              "mb-i56x56x24-o56x56x24-k3-s1-e6-se0-skip:identity-act:relu6",
              "cv-i7x7x320-o7x7x1280-k1-s1-e1-se0-skip:none-act:relu6",
              "fc-i7x7x1280-o1x1x1000-k1-s1-e1-se0-skip:none-act:none"):
        assert k in px_lut.entries and k in keys
    assert px_lut.entries["fc-i7x7x1280-o1x1x1000-k1-s1-e1-se0-skip:none-act:none"].count == 949


@pytest.mark.parametrize("key", ["Conv-input:8x8x3-output:0x0x8", "Conv_1-input:0x7x320-output:7x7x1280",
                                 "Logits-input:7x7x0-output:1000",
                                 "expanded_conv-input:8x8x16-output:8x8x16-expand:0-kernel:3-stride:1-idskip:1",
                                 "expanded_conv-input:8x8x16-output:8x8x16-expand:6-kernel:3-stride:0-idskip:1"])
def test_proxylessnas_zero_sized_keys_are_errors(key: str) -> None:
    """A zero-sized tensor, stride or expansion is an unrecognised key, not a division by zero."""
    from mnasdsl.latency.lut import import_proxylessnas

    with pytest.raises(MnasError, match="unrecognised ProxylessNAS op key"):
        import_proxylessnas(f"{key}:\n  mean: 1.0\n", "t.yaml")


def test_relu_layers_use_relu6_entries(px_lut: Lut) -> None:
    est = Estimator(fit_lut(px_lut)).estimate(lower(_net(A1)))  # A1 uses ReLU
    stem = est.layers[0]
    assert stem.source == "lut" and stem.key.endswith("act:relu6")
    with pytest.raises(MnasError, match="no fallback model"):
        Estimator(px_lut.replace(model=None)).estimate_ms(lower(_net(MBV2)))


# -- the estimator ----------------------------------------------------------------------------

def test_estimate_paths_agree_and_coverage(px_lut: Lut) -> None:
    fitted = fit_lut(px_lut)
    est = Estimator(fitted)
    space = load_space(SPECS / "spaces" / "mnasnet.mnas")
    rng = np.random.default_rng(0)
    lows = [lower(space.decode(space.sample_indices(rng))) for _ in range(30)] + [lower(_net(MBV2))]
    batch = est.estimate_batch(lows)
    for low, b in zip(lows, batch, strict=True):
        e = est.estimate(low)
        assert e.ms == pytest.approx(est.estimate_ms(low)) == pytest.approx(b)
        assert e.ms == pytest.approx(sum(r.ms for r in e.layers) + e.overhead_ms)
        assert 0.0 <= e.coverage <= 1.0
    mbv2 = est.estimate(lows[-1])
    assert 0.3 < mbv2.coverage < 1.0
    assert {r.source for r in mbv2.layers} == {"lut", "model"}
    full = Estimator(Lut("d", "r", entries={op_key(ly): Entry(1.0) for ly in lows[-1].layers}))
    assert full.estimate(lows[-1]).coverage == 1.0
    assert full.estimate_ms(lows[-1]) == pytest.approx(len(lows[-1].layers))


def test_nnls_recovers_nonnegative_rates() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, (50, 4))
    c = np.array([0.5, 0.0, 2.0, 0.1])
    got = nnls_relative(x, x @ c)
    assert np.allclose(got, c, atol=1e-6) and (got >= 0).all()


def test_objective_factor() -> None:
    assert objective_factor(80, 80, *SOFT) == 1.0
    assert objective_factor(160, 80, *SOFT) == pytest.approx(2 ** -0.07)
    assert objective_factor(40, 80, *HARD) == 1.0
    assert objective_factor(160, 80, *HARD) == pytest.approx(0.5)


# -- the pixel1 device ------------------------------------------------------------------------

def test_pixel1_ships_with_provenance_and_no_table() -> None:
    assert "pixel1" in available_devices()
    lut = load_device("pixel1")
    assert lut.entries == {} and lut.model is not None
    assert all(c >= 0 for c in lut.model.coef)
    assert "ProxylessNAS" in lut.provenance["per_op_source"]
    assert "MobileNetV2" in lut.provenance["calibration_source"]
    fit = lut.model.fit
    assert fit["networks_mape_pct_in_sample"] <= 10 and fit["networks_mape_pct_leave_one_out"] <= 10


def test_pixel1_physics_is_monotone() -> None:
    est = Estimator(load_device("pixel1"))
    a1 = _net(A1)
    base = est.estimate_ms(lower(a1))
    assert 40 < base < 150
    assert est.estimate_ms(lower(a1, width=1.4)) > base > est.estimate_ms(lower(a1, width=0.5))
    assert est.estimate_ms(lower(a1, resolution=192)) < base
    ly = lower(a1).layers[5]
    assert ly.se
    assert est.layer_ms(ly) > est.layer_ms(ly._replace(se=0, se_ratio=0.0))
    assert est.layer_ms(ly) > est.layer_ms(ly._replace(kernel=3))
    assert est.layer_ms(ly._replace(skip="pool", pool_proj=False)) > est.layer_ms(ly._replace(skip="none"))


def test_pixel1_mobilenet_v2_mape(capsys, shared_data: Path) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, "lut", "check", "--device", "pixel1", "--published",
                       str(shared_data / "pixel1_mobilenet_v2.csv"), "--spec", MBV2, "--json")
    assert code == 0
    d = json.loads(out)
    assert len(d["networks"]) == 22
    assert d["errors"]["as_is"]["mape_pct"] <= 10
    assert d["errors"]["leave_one_out_calibrated"]["mape_pct"] <= 10


def test_fit_script_reproduces_shipped_device(shared_data: Path) -> None:
    from mnasdsl.latency.fit_pixel1 import build

    fresh = parse_lut(build())
    shipped = load_device("pixel1")
    assert fresh.model is not None and shipped.model is not None
    assert np.allclose(fresh.model.coef, shipped.model.coef, rtol=1e-6, atol=1e-12)
    assert fresh.model.calibration == pytest.approx(shipped.model.calibration) or \
        fresh.model.calibration.to_json() == pytest.approx(shipped.model.calibration.to_json())


# -- CLI --------------------------------------------------------------------------------------

def test_latency_cli_json_and_target(capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, "latency", A1, "--json", "--target-ms", "75", "--width", "0.75")
    assert code == 0
    d = json.loads(out)
    assert {"ms", "coverage", "layers", "objective"} <= d.keys()
    assert d["coverage"] == 0.0 and len(d["layers"]) == 19
    assert d["objective"]["hard"]["factor"] == 1.0 if d["ms"] <= 75 else d["objective"]["hard"]["factor"] < 1
    code, out, _ = run(capsys, "latency", A1, "--target-ms", "75")
    assert code == 0 and "objective factor" in out and "coverage" in out


def test_lut_import_fit_check_cli(capsys, tmp_path: Path, shared_data: Path) -> None:  # type: ignore[no-untyped-def]
    imp, fit = tmp_path / "px.json", tmp_path / "fit.json"
    csv = str(shared_data / "pixel1_mobilenet_v2.csv")
    code, _, _ = run(capsys, "lut", "import", "proxylessnas", str(shared_data / "pixel1_proxylessnas_lut.yaml"),
                     "-o", str(imp))
    assert code == 0
    code, _, err = run(capsys, "latency", MBV2, "--lut", str(imp))
    assert code == 1 and "no fallback model" in err
    code, out, _ = run(capsys, "lut", "fit", str(imp), "-o", str(fit), "--published", csv, "--spec", MBV2)
    assert code == 0 and "leave_one_out" in out
    code, out, _ = run(capsys, "latency", MBV2, "--lut", str(fit), "--json")
    d = json.loads(out)
    assert code == 0 and 0.3 < d["coverage"] < 1
    code, out, _ = run(capsys, "lut", "check", "--lut", str(fit), "--published", csv, "--spec", MBV2, "--json")
    assert code == 0 and json.loads(out)["errors"]["as_is"]["mape_pct"] <= 10
    code, _, err = run(capsys, "lut", "import", "proxylessnas", MBV2, "-o", str(tmp_path / "x.json"))
    assert code == 1 and "Traceback" not in err
    code, _, err = run(capsys, "lut", "check", "--device", "pixel1")
    assert code == 2


# -- profiling (local XLA device) ----------------------------------------------------------------

def test_profile_is_resumable_and_check_measures(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("flax")
    small = tmp_path / "tiny.mnas"
    small.write_text("network tiny:\n  input 32x32x3\n  classes 10\n  stem cv_k3_s22_o8\n  blocks\n"
                     "    r2_k3_s22_e3_i8_o16_se0.25\n    r1_k5_s11_e6_i16_o16\n  head cv_k1_o32 fixed\n")
    out = tmp_path / "prof.json"
    code, _, err = run(capsys, "profile", str(small), "-o", str(out), "--repeats", "2", "--max-ops", "3")
    assert code == 0, err
    lut = parse_lut(out.read_text())
    assert len(lut.entries) == 3 and lut.provenance["source"] == "mnasdsl profile"
    code, _, err = run(capsys, "profile", str(small), "-o", str(out), "--repeats", "2")
    assert code == 0 and "3 already" in err
    lut = parse_lut(out.read_text())
    assert len(lut.entries) == 6  # stem, 2 distinct blocks of r2, the k5 block, head, classifier
    assert all(e.mean > 0 for e in lut.entries.values())
    code, _, err = run(capsys, "profile", str(small), "-o", str(out), "--batch", "2")
    assert code == 1 and "batch" in err
    code, res, err = run(capsys, "lut", "check", "--lut", str(out), "--measure", str(small), "--repeats", "2",
                         "--json", "--save", str(tmp_path / "m"))
    assert code == 0, err
    d = json.loads(res)
    assert d["networks"][0]["coverage"] == 1.0 and d["networks"][0]["measured_ms"] > 0
    assert (tmp_path / "m" / "measured.csv").read_text().startswith("spec,width,resolution,ms")
    code, _, err = run(capsys, "profile", str(small), "-o", str(out), "--clock", "cpu")
    assert code == 1 and "clock" in err  # a table is never resumed with a different clock
    code, res, err = run(capsys, "lut", "check", "--lut", str(out), "--measure", str(small), "--repeats", "2",
                         "--rounds", "1", "--clock", "cpu", "--json")
    assert code == 0, err
    code, _, err = run(capsys, "profile", str(small), "-o", str(out), "--reference")
    assert code == 1 and "--reference" in err


def test_profile_reference_normalization(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("flax")
    out = tmp_path / "ref.json"
    code, _, err = run(capsys, "profile", A1, "-o", str(out), "--reference", "--max-ops", "2", "--repeats", "2",
                       "--rounds", "2", "--resolution", "64")
    assert code == 0, err
    lut = parse_lut(out.read_text())
    assert lut.provenance["reference_ms"] > 0 and lut.provenance["reference_op"].startswith("mb-i28x28x40")
    code, res, err = run(capsys, "lut", "fit", str(out), "-o", str(tmp_path / "f.json"))
    assert code == 0, err
    code, res, err = run(capsys, "lut", "check", "--lut", str(tmp_path / "f.json"), "--measure", A1,
                         "--resolution", "64", "--repeats", "2", "--rounds", "1", "--json")
    assert code == 0 and "reference" in err
    assert json.loads(res)["networks"][0]["measured_ms"] > 0


def test_space_signatures_cap_and_cover_positions() -> None:
    from mnasdsl.latency.profile import space_signatures

    space = load_space(SPECS / "spaces" / "mnasnet.mnas")
    sigs = space_signatures(space, 60, resolution=64)
    assert len(sigs) == 60
    blocks = {ly.block for ly, _ in sigs.values() if ly.kind == "block"}
    assert len(blocks) == 7  # every position represented despite the cap
    assert {ly.kind for ly, _ in sigs.values()} == {"stem", "head", "classifier", "block"}

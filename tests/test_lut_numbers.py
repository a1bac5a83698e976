"""Numbers in latency-table keys and kit manifests: one strict pattern, so a malformed number is a
diagnostic naming the key (exit 1), never a float() or int() failure further on ("internal error")."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mnasdsl
from mnasdsl.latency.lut import _KEY, FORMAT, INT, NUMBER, VERSION, layer_for_key, op_key

from .conftest import SPECS
from .conftest import run_cli as run
from .test_phone import Kit, networks

_NUMBER = re.compile(NUMBER)
_INT = re.compile(INT)
GOOD = "mb-i8x8x16-o8x8x16-k3-s1-e6-se0-skip:none-act:relu"

# Each was taken by the old key pattern and then failed in float() or int(), or overflowed to inf.
BAD_NUMBERS = ["1..2", "1.2.3", "1e", "1e+", "6-", "1e999", "9" * 400, "1.5e3.0", "1ee2"]


def _id(x: object) -> str:
    s = str(x)
    return s if len(s) <= 24 else f"{s[:12]}...({len(s)} chars)"


@settings(max_examples=300, deadline=None)
@given(st.from_regex(_NUMBER, fullmatch=True))
def test_every_accepted_number_is_a_finite_float(text: str) -> None:
    v = float(text)
    assert math.isfinite(v) and v >= 0


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789.eE+-_ naif\u0663", max_size=12))
def test_whatever_the_pattern_takes_float_reads(text: str) -> None:
    """Near misses included: if the pattern accepts a string, float() reads it, finite."""
    if _NUMBER.fullmatch(text):
        assert math.isfinite(float(text))
    if _INT.fullmatch(text):
        assert int(text) < 10**9


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=1e99, allow_nan=False, allow_infinity=False))
def test_formatted_floats_round_trip(x: float) -> None:
    """What a key holds (``f"{x:g}"``, six significant digits) is accepted and read back to within them."""
    text = f"{x:g}"
    assert _NUMBER.fullmatch(text), text
    assert math.isclose(float(text), x, rel_tol=5e-6, abs_tol=0.0)


@pytest.mark.parametrize("bad", BAD_NUMBERS + ["٣", "1_0", "nan", "inf", " 1", "+1", "-1", ".5", "1."], ids=_id)
def test_bad_numbers_are_refused(bad: str) -> None:
    assert not _NUMBER.fullmatch(bad)
    assert not _KEY.match(GOOD.replace("-e6-", f"-e{bad}-"))
    assert not _KEY.match(GOOD.replace("-se0-", f"-se{bad}-"))


@pytest.mark.parametrize("spec", sorted(p.name for p in SPECS.glob("*.mnas")))
def test_every_real_key_round_trips(spec: str) -> None:
    """Every op of every shipped network (each op, SE gate and activation) has a key the pattern takes."""
    for layer in mnasdsl.lower(mnasdsl.load(SPECS / spec)).layers:
        key = op_key(layer)
        assert _KEY.match(key), key
        assert op_key(layer_for_key(key)) == key


def _table(path: Path, keys: list[str]) -> None:
    path.write_text(json.dumps({"format": FORMAT, "version": VERSION, "device": "d", "runtime": "r",
                                "entries": {k: {"mean": 1.0 + i} for i, k in enumerate(keys)}}))


@pytest.mark.parametrize("where,bad", [("e", b) for b in BAD_NUMBERS] + [("se", "1..2"), ("i", "9" * 400)], ids=_id)
def test_lut_fit_names_a_key_with_a_bad_number(capsys, tmp_path: Path, where: str, bad: str) -> None:  # type: ignore[no-untyped-def]
    old = {"e": "-e6-", "se": "-se0-", "i": "-i8x"}[where]
    key = GOOD.replace(old, old.replace({"e": "6", "se": "0", "i": "8"}[where], bad))
    assert key != GOOD
    others = [GOOD.replace("-k3-", f"-k{k}-").replace("o8x8x16", f"o8x8x{c}") for k in (3, 5) for c in (16, 24, 32)]
    lut = tmp_path / "t.json"
    _table(lut, [*others, key])
    rc, _, err = run(capsys, "lut", "fit", str(lut), "-o", str(tmp_path / "f.json"))
    assert rc == 1, err
    assert str(lut) in err and repr(key) in err and "not a canonical op signature" in err
    assert "internal error" not in err and "Traceback" not in err
    assert not (tmp_path / "f.json").exists()


def test_lut_import_benchmark_model_names_a_manifest_key_with_a_bad_number(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kit = Kit(tmp_path / "kit", networks((0.5,)))
    kit.log_ops()
    manifest = kit.root / "manifest.json"
    man = json.loads(manifest.read_text())
    row = next(m for m in man["models"] if m["kind"] == "op" and re.search(r"-e\d", m["key"]))
    bad = re.sub(r"-e[^-]+-", "-e1..2-", row["key"], count=1)
    row["key"] = bad
    manifest.write_text(json.dumps(man, indent=1))
    out = tmp_path / "phone.json"
    rc, _, err = run(capsys, "lut", "import", "benchmark-model", str(kit.logs), "-o", str(out),
                     "--manifest", str(manifest))
    assert rc == 1, err
    assert str(manifest) in err and repr(bad) in err and "not a canonical op signature" in err
    assert "internal error" not in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("key", [f"expanded_conv-input:8x8x16-output:8x8x16-expand:{'9' * 400}-kernel:3-stride:1"
                                 "-idskip:1",
                                 f"Conv-input:{'9' * 400}x8x3-output:4x4x16"], ids=_id)
def test_proxylessnas_import_refuses_numbers_out_of_any_range(capsys, tmp_path: Path, key: str) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "px.yaml"
    src.write_text(f"{key}: {{mean: 1.5, var: 0.01, count: 10}}\n")
    out = tmp_path / "px.json"
    rc, _, err = run(capsys, "lut", "import", "proxylessnas", str(src), "-o", str(out))
    assert rc == 1 and "unrecognised ProxylessNAS op key" in err and "internal error" not in err, err
    assert not out.exists()

"""The command line: outputs, JSON, exit codes, diagnostics and never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnasdsl.cli.main import main

from .conftest import SPECS

A1 = str(SPECS / "mnasnet-a1.mnas")
SPACE = str(SPECS / "spaces" / "mnasnet.mnas")


def run(capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse usage errors
        rc = int(e.code or 0)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cost_json(capsys) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run(capsys, "cost", A1, "--json")
    data = json.loads(out)
    assert rc == 0 and data["params"] == 3_887_038 and isinstance(data["macs"], int)
    assert data["layers"][0]["name"] == "stem" and len(data["layers"]) == 19


def test_cost_overrides(capsys) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run(capsys, "cost", A1, "--json", "--width", "1.4")
    assert json.loads(out)["params"] == 6_105_992
    rc, out, _ = run(capsys, "cost", A1, "--json", "--resolution", "192", "--classes", "10")
    data = json.loads(out)
    assert data["input"] == [192, 192, 3] and data["layers"][-1]["params"] == 1280 * 10 + 10


def test_cost_table(capsys) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run(capsys, "cost", A1)
    assert rc == 0 and "3,887,038" in out and "312.18M" in out


def test_show(capsys) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run(capsys, "show", A1)
    assert rc == 0 and "blocks.2.0" in out and "112x112x32" in out
    rc, out, _ = run(capsys, "show", A1, "--json")
    layers = json.loads(out)["layers"]
    assert layers[2]["skip"] == "none" and layers[3]["skip"] == "identity"


def test_check(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run(capsys, "check", *[str(p) for p in SPECS.rglob("*.mnas")])
    assert rc == 0 and out.count(": ok") == len(list(SPECS.rglob("*.mnas")))
    bad = tmp_path / "bad.mnas"
    bad.write_text("network a:\n  classes 0\n")
    rc, out, err = run(capsys, "check", A1, str(bad))
    assert rc == 1 and f"{bad}:2:11: error: classes must be" in err and ": ok" in out


def test_check_json_diagnostics(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.mnas"
    bad.write_text("network a:\n  classes 0\n  stem cv_k3_o8\n  blocks r1_k4_e6_o8\n  head cv_k1_o8\n")
    rc, out, err = run(capsys, "check", str(bad), "--json")
    assert rc == 1
    report = json.loads(out)
    assert report["ok"] is False and len(report["files"][0]["diagnostics"]) == 2
    diags = json.loads(err.strip().splitlines()[-1])
    assert [(d["line"], d["col"]) for d in diags] == [(2, 11), (4, 14)]


def test_fmt_check_and_write(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "a.mnas"
    p.write_text((SPECS / "mnasnet-a1.mnas").read_text())
    rc, _, err = run(capsys, "fmt", "--check", str(p))
    assert rc == 1 and "would reformat" in err
    rc, _, _ = run(capsys, "fmt", "--write", str(p))
    assert rc == 0
    assert "ds_r1_k3_s11_i32_o16_noskip" in p.read_text()
    rc, _, _ = run(capsys, "fmt", "--check", str(p))
    assert rc == 0
    rc, out, _ = run(capsys, "fmt", str(p))
    assert out == p.read_text()


def test_fmt_never_touches_a_broken_file(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "b.mnas"
    text = "network a:\n  classes 0\n"
    p.write_text(text)
    rc, _, err = run(capsys, "fmt", "--write", str(p))
    assert rc == 1 and p.read_text() == text


def test_sample(capsys) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run(capsys, "sample", SPACE, "-n", "3", "--seed", "5")
    assert rc == 0 and out.count("network mnasnet_") == 3
    rc2, out2, _ = run(capsys, "sample", SPACE, "-n", "3", "--seed", "5")
    assert out == out2
    rc, out, _ = run(capsys, "sample", SPACE, "--json", "-n", "2")
    data = json.loads(out)
    assert data["size"] == 432**7 and len(data["samples"][0]["decisions"]) == 42


def test_schema(capsys) -> None:  # type: ignore[no-untyped-def]
    rc, out, _ = run(capsys, "schema")
    schema = json.loads(out)
    assert rc == 0 and "Network" in schema["$defs"] and "Span" not in schema["$defs"]


def test_multi_network_needs_name(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "two.mnas"
    p.write_text((SPECS / "mnasnet-a1.mnas").read_text() + (SPECS / "mnasnet-b1.mnas").read_text())
    rc, _, err = run(capsys, "cost", str(p))
    assert rc == 1 and "mnasnet_a1, mnasnet_b1" in err and "--network" in err
    rc, out, _ = run(capsys, "cost", str(p), "--network", "mnasnet_b1", "--json")
    assert json.loads(out)["params"] == 4_383_312


@pytest.mark.parametrize("argv", [
    ["cost"], ["cost", A1, "--width", "-1"], ["cost", A1, "--width", "abc"], ["nosuchcommand"],
    ["cost", A1, "--resolution", "0"], ["fmt", "--check", "--write", A1], ["sample", SPACE, "-n", "0"],
])
def test_usage_errors_exit_2(capsys, argv: list[str]) -> None:  # type: ignore[no-untyped-def]
    rc, _, err = run(capsys, *argv)
    assert rc == 2 and "error" in err


BROKEN = [
    b"",
    b"\x00\x01\x02\xff",
    b"network a:\n  input 224x224x3\n  classes 1000\n  stem cv_k3_s22_o32\n  blocks\n    r1_k3_s11_e1_i3",
    b"network a:\n  classes 99999999999999999999999999999999999999999\n",
    b"network a:\n  input 999999999x999999999x3\n  stem cv_k3_o8\n  blocks r1_k3_e6_o8\n  head cv_k1_o8\n",
    b"network a:\n  stem cv_k3_o8\n  blocks r99999_k3_e6_o99999999\n  head cv_k1_o8\n",
    "network caf\u00e9:\n  classes 3\n".encode(),
    b"\xef\xbb\xbf",
    b"network a:\n" + b"  blocks " + b"r1_k3_e6_o8 " * 5000 + b"\n",
    b"network a:\n  stem cv_k3_o8\n  blocks {{{{{{{{\n  head cv_k1_o8\n",
    b"network a:\n  width nan\n  depth inf\n",
    b"space s:\n  stem cv_k3_o8\n  blocks k{3,5}_o{8,16}_r1{-1}\n  head cv_k1_o8\n",
    b"\n\n\n   \t\n",
    b"network",
]


@pytest.mark.parametrize("data", BROKEN)
def test_broken_inputs_clean_errors(capsys, tmp_path: Path, data: bytes) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "broken.mnas"
    p.write_bytes(data)
    for cmd in (["check"], ["cost"], ["show"], ["fmt", "--check"], ["sample"]):
        rc, _, err = run(capsys, *cmd, str(p))
        assert rc == 1, (cmd, err)
        assert "internal error" not in err and "error:" in err, err


@pytest.mark.parametrize("data", [BROKEN[1], BROKEN[2], BROKEN[9]])
def test_broken_inputs_real_process(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "broken.mnas"
    p.write_bytes(data)
    proc = subprocess.run([sys.executable, "-m", "mnasdsl.cli.main", "cost", str(p)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "MNASDSL_DEBUG": ""})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "error:" in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_usage_error_real_process() -> None:
    proc = subprocess.run([sys.executable, "-m", "mnasdsl.cli.main", "cost", A1, "--width", "x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr

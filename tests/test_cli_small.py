"""Small command-line fixes: seeds and overrides as usage errors, `fmt --diff`, `import --list`, data
source typos, subcommand usage lines, human-scale counts, wide tables when piped, the GPU-lowering note,
the `lut fit` warning, the progress bar's img/s and a failed `train` leaving nothing behind."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from .conftest import SPECS
from .conftest import run_cli as run

A1 = str(SPECS / "mnasnet-a1.mnas")
SPACE = str(SPECS / "spaces" / "mnasnet.mnas")
TINY = textwrap.dedent("""\
    network tiny:
      input 16x16x3
      classes 10
      stem cv_k3_s22_o8
      blocks
        r1_k3_s11_e1_i8_o8
      head cv_k1_o32 fixed
    """)




@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.mnas"
    p.write_text(TINY)
    return p


# -- seeds -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["sample", "train", "profile"])
def test_negative_seed_is_a_usage_error(capsys: pytest.CaptureFixture[str], tiny: Path, tmp_path: Path,
                                        command: str) -> None:
    out = tmp_path / "out"
    argv = {"sample": ["sample", SPACE],
            "train": ["train", str(tiny), "--data", "synthetic", "--out", str(out), "--epochs", "1", "-q"],
            "profile": ["profile", str(tiny), "-o", str(out / "t.json"), "--max-ops", "1", "--repeats", "1"]}[command]
    rc, _, err = run(capsys, *argv, "--seed", "-1")
    assert rc == 2 and f"usage: mnasdsl {command}" in err and "--seed" in err and "internal error" not in err, err
    assert not out.exists()


# -- train leaves nothing behind on an error ---------------------------------------------------------------


def test_fit_error_before_training_removes_the_new_output_dir(tmp_path: Path) -> None:
    import mnasdsl
    from mnasdsl.diagnostics import MnasError
    from mnasdsl.train import fit

    out = tmp_path / "new" / "run"
    with pytest.raises(MnasError, match="nothing to resume"):
        fit(mnasdsl.parse(TINY)[0], "synthetic:64", epochs=1, batch=8, out=out, resume=True)
    assert not (tmp_path / "new").exists()


class _FailingTrainer:
    """Stands in for the Trainer (no JAX compile): the run gets as far as the first step, then fails."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.n_dev, self.fresh_from_init = 1, []

    def step(self, batch: Any) -> Any:
        from mnasdsl.diagnostics import MnasError

        raise MnasError("boom at the first step")


@pytest.mark.parametrize("existed", [False, True])
def test_fit_error_in_first_epoch_removes_tb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existed: bool) -> None:
    import mnasdsl
    from mnasdsl.diagnostics import MnasError
    from mnasdsl.train import fit
    from mnasdsl.train import loop as L

    monkeypatch.setattr(L, "Trainer", _FailingTrainer)
    out = tmp_path / "run"
    if existed:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    with pytest.raises(MnasError, match="boom"):
        fit(mnasdsl.parse(TINY)[0], "synthetic:64", epochs=1, batch=8, out=out, workers=1)
    if existed:
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    else:
        assert not out.exists()


def test_progress_rate_counts_from_the_first_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first step compiles (10 s here); img/s is (steps after the first) x batch / time since it."""
    from mnasdsl.train import loop as L

    now = [0.0]
    monkeypatch.setattr(L, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    bar = L._progress(True, "epoch 1/1", 3, 32)
    with bar as advance:
        for t in (10.0, 11.0, 12.0):
            now[0] = t
            advance(1.0)
        assert bar._p.tasks[0].fields["ips"] == "32.0"


# -- overrides, fmt --diff, import --list, data sources ----------------------------------------------------


def test_sample_overrides_typed_like_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "sample", SPACE, "--width", "-1")
    assert rc == 2 and "usage: mnasdsl sample" in err
    rc, out, err = run(capsys, "sample", SPACE, "--resolution", "64x48", "--classes", "10")
    assert rc == 0 and "input 64x48x3" in out and "classes 10" in out, err


def test_fmt_diff_implies_check(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = tmp_path / "ugly.mnas"
    p.write_text(TINY.replace("r1_k3_s11_e1_i8_o8", "o8_i8_k3_r1"))
    rc, out, err = run(capsys, "fmt", str(p), "--diff")
    assert rc == 1 and out.startswith("---") and "+    ds_r1_k3_s11_i8_o8" in out and "would reformat" in err
    rc, _, err = run(capsys, "fmt", str(p), "--diff", "--write")
    assert rc == 2 and "--diff" in err
    assert "o8_i8_k3_r1" in p.read_text()


def test_import_list_needs_no_model(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "import", "timm", "--list", "--json")
    assert rc == 0 and any(m["model"] == "semnasnet_100" for m in json.loads(out)["models"]), err
    rc, _, err = run(capsys, "import", "timm")
    assert rc == 2 and "--list" in err


@pytest.mark.parametrize("source,guess", [("digitz", "digits"), ("synthetc:40", "synthetic:40")])
def test_data_source_typo_suggests_a_builtin(capsys: pytest.CaptureFixture[str], tiny: Path, tmp_path: Path,
                                             source: str, guess: str) -> None:
    rc, _, err = run(capsys, "train", str(tiny), "--data", source, "--out", str(tmp_path / "o"))
    assert rc == 1 and f"did you mean `{guess}`?" in err and "synthetic:N" in err
    assert not (tmp_path / "o").exists()


# -- usage lines -------------------------------------------------------------------------------------------


def _lut(path: Path, n: int) -> Path:
    from mnasdsl import load, lower
    from mnasdsl.latency.lut import Entry, Lut, op_key

    keys = sorted({op_key(ly) for ly in lower(load(A1)).layers})[:n]
    path.write_text(Lut("test", "test", entries={k: Entry(0.1 * (i + 1)) for i, k in enumerate(keys)}).dumps())
    return path


def test_usage_error_in_a_command_prints_its_usage(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = run(capsys, "compile", A1, "--emit", "bogus")
    assert rc == 2 and err.startswith("usage: mnasdsl compile ") and "\nmnasdsl compile: error: unknown --emit" in err
    lut = _lut(tmp_path / "l.json", 4)
    rc, _, err = run(capsys, "lut", "fit", str(lut), "-o", str(tmp_path / "f.json"), "--terms", "bogus")
    assert rc == 2 and err.startswith("usage: mnasdsl lut fit ") and "mnasdsl lut fit: error: --terms" in err


# -- output ------------------------------------------------------------------------------------------------


def test_lut_fit_warns_on_too_few_entries(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = run(capsys, "lut", "fit", str(_lut(tmp_path / "l.json", 4)), "-o", str(tmp_path / "f.json"))
    assert rc == 0 and "warning:" in err and "4 entries fit 7 coefficients" in err
    rc, _, err = run(capsys, "lut", "fit", str(_lut(tmp_path / "l.json", 14)), "-o", str(tmp_path / "f.json"))
    assert rc == 0 and "warning" not in err


def test_huge_totals_at_a_human_scale(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from mnasdsl.cli.common import human_count

    assert [human_count(n) for n in (999, 45_000, 312_180_000, 2_216_946_899_549, 999_999_999)] == \
        ["999", "45.00K", "312.18M", "2.22T", "1.00G"]
    p = tmp_path / "huge.mnas"
    p.write_text(TINY.replace("16x16x3", "8192x8192x3").replace("cv_k3_s22_o8", "cv_k3_s11_o1024")
                 .replace("r1_k3_s11_e1_i8_o8", "r1_k1_s22_o8"))
    rc, out, err = run(capsys, "cost", str(p))
    assert rc == 0, err
    assert re.search(r"MACs [\d,]+ \(\d\.\d\dT\)", out) and not re.search(r"\d{5,}\.\d+M", out), out
    rc, out, _ = run(capsys, "show", str(p))
    assert re.search(r"\d\.\d\dT MACs", out)


def test_tables_not_wrapped_at_80_when_piped(monkeypatch: pytest.MonkeyPatch) -> None:
    from mnasdsl.cli.common import PIPE_WIDTH, stderr_console, stdout_console

    monkeypatch.delenv("COLUMNS", raising=False)
    assert stdout_console().width == stderr_console().width == PIPE_WIDTH > 80
    monkeypatch.setenv("COLUMNS", "100")
    assert stdout_console().width == 100


def test_compile_for_another_platform_says_where_it_timed(capsys: pytest.CaptureFixture[str], tiny: Path) -> None:
    jax = pytest.importorskip("jax")
    if jax.default_backend() != "cpu":
        pytest.skip("needs a CPU-only host")
    rc, out, err = run(capsys, "compile", str(tiny), "--platform", "gpu", "--repeats", "1", "--json")
    assert rc == 0 and json.loads(out)["forward_ms"] > 0, err
    assert "note: lowered for --platform gpu" in err and "cpu" in err
    rc, _, err = run(capsys, "compile", str(tiny), "--platform", "cpu", "--repeats", "1", "--json")
    assert rc == 0 and "note:" not in err


def test_import_spec_json_with_out(capsys: Any, tmp_path: Path) -> None:
    """`import --json -o FILE` writes the spec to FILE and still prints its one JSON object."""
    out = tmp_path / "b1.mnas"
    rc, stdout, err = run(capsys, "import", "timm", "mnasnet_100", "--json", "-o", str(out))
    assert rc == 0, err
    data = json.loads(stdout)
    assert data["model"] == "mnasnet_100" and data["out"] == str(out) and "spec" not in data
    assert out.read_text().startswith("#") and "network mnasnet_100:" in out.read_text()
    rc, stdout, _ = run(capsys, "import", "timm", "mnasnet_100", "--json")
    assert rc == 0 and json.loads(stdout)["spec"] == out.read_text()

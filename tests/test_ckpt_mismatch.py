"""Loading another network's checkpoint: a two-line error naming both networks, not Orbax's dump."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from flax import nnx

import mnasdsl
from mnasdsl.backends import flax as fb

from .conftest import ROOT, SPECS

TINY_V2 = """network tiny_v2:
  input 32x32x3
  classes 10
  stem cv_k3_s22_o8
  blocks
    r1_k3_s11_e1_i8_o8
    r1_k3_s22_e3_i8_o16
  head cv_k1_o64 fixed
"""


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ckpt")
    fb.save_params(fb.build(mnasdsl.parse(TINY_V2)[0], rngs=nnx.Rngs(0)), d / "tiny")
    return d / "tiny"


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MNASDSL_JAX_CACHE": "0"}
    return subprocess.run([sys.executable, "-m", "mnasdsl.cli.main", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_compile_other_networks_ckpt_is_two_lines(tiny_ckpt: Path) -> None:
    r = _cli("compile", str(SPECS / "mnasnet-a1.mnas"), "--ckpt", str(tiny_ckpt))
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert len(lines) <= 2, f"{len(r.stderr)} bytes of stderr:\n{r.stderr[:2000]}"
    assert lines[0] == (f"mnasdsl: error: checkpoint {tiny_ckpt} holds network `tiny_v2` (3,122 params, input "
                        f"32x32x3, 10 classes), not `mnasnet_a1` (3,887,038 params, input 224x224x3, 1000 classes)")
    assert "Traceback" not in r.stderr and "Metadata keys" not in r.stderr


def test_eval_other_networks_ckpt_is_two_lines(tiny_ckpt: Path) -> None:
    r = _cli("eval", str(SPECS / "mnasnet-small.mnas"), "--ckpt", str(tiny_ckpt), "--data", "digits")
    assert r.returncode == 1
    assert len(r.stderr.splitlines()) <= 2, r.stderr[:2000]
    assert "`tiny_v2`" in r.stderr and "`mnasnet_small`" in r.stderr


def test_load_params_names_both_and_first_difference(tiny_ckpt: Path) -> None:
    small = mnasdsl.load(str(SPECS / "mnasnet-small.mnas"))
    with pytest.raises(mnasdsl.MnasError) as e:
        fb.load_params(small, tiny_ckpt)
    (d,) = e.value.diagnostics
    assert d.message.startswith(f"checkpoint {tiny_ckpt} holds network `tiny_v2`")
    assert "not `mnasnet_small`" in d.message
    assert len(str(e.value)) < 600 and len(str(e.value).splitlines()) == 2
    assert "is (" in d.notes[0] and "more difference" in d.notes[0]
    # Same network, other class count: one differing variable pair, named.
    with pytest.raises(mnasdsl.MnasError, match=r"params/classifier_bias is \(10,\) there, \(5,\) here"):
        fb.load_params(mnasdsl.parse(TINY_V2)[0].scaled(classes=5), tiny_ckpt)


def test_bare_checkpoint_without_metadata_is_short(tiny_ckpt: Path, tmp_path: Path) -> None:
    """An Orbax checkpoint with no mnasdsl.json (saved by hand) still gets one short line."""
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_ckpt / "params", bare)
    with pytest.raises(mnasdsl.MnasError) as e:
        fb.load_params(mnasdsl.load(str(SPECS / "mnasnet-a1.mnas")), bare)
    assert len(str(e.value).splitlines()) == 1 and len(str(e.value)) < 400
    assert "not a checkpoint of network 'mnasnet_a1'" in str(e.value)


def test_matching_checkpoint_still_loads(tiny_ckpt: Path) -> None:
    net = mnasdsl.parse(TINY_V2)[0]
    assert fb.count_params(fb.load_params(net, tiny_ckpt)) == 3122
    assert fb.count_params(fb.load_params(net.scaled(resolution=48), tiny_ckpt)) == 3122  # weights fit any size

"""Shared fixtures: paths to the reference specs and the public measurements beside the repo."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
SHARED_DATA = ROOT.parent / "shared" / "data"
# A small space with every kind of decision (op, repeats, kernel, width, SE, skip) for quick searches.
TINY_SPACE = """\
space tinyspace:
  input 32x32x3
  classes 10
  stem cv_k3_s22_o8
  blocks
    {ds,mb_e3}_r1{+0,+1}_k{3,5}_s22_o8x{0.75,1}_se{0,0.25}_{id,noskip}
    {cv,mb_e6}_r1_k3_s11_o16_{pool,id}
  head cv_k1_o32 fixed
"""


@pytest.fixture
def specs() -> Path:
    return SPECS


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public measurements not found at {SHARED_DATA} (the ../shared/data folder beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def no_user_compile_cache() -> Iterator[None]:
    """The CLI turns on JAX's persistent cache in ~/.cache; tests must not write there."""
    old = os.environ.get("MNASDSL_JAX_CACHE")
    os.environ["MNASDSL_JAX_CACHE"] = "0"
    yield
    if old is None:
        os.environ.pop("MNASDSL_JAX_CACHE", None)
    else:
        os.environ["MNASDSL_JAX_CACHE"] = old


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``mnasdsl ARGV`` in-process: (exit code, stdout, stderr); argparse's SystemExit is a code."""
    from mnasdsl.cli.main import main

    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = int(e.code or 0)
    out = capsys.readouterr()
    return rc, out.out, out.err

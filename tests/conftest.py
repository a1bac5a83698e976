"""Shared fixtures: paths to the reference specs and the public measurements beside the repo."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def specs() -> Path:
    return SPECS


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public measurements not found at {SHARED_DATA} (the ../shared/data folder beside the repo)")
    return SHARED_DATA


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``mnasdsl ARGV`` in-process: (exit code, stdout, stderr); argparse's SystemExit is a code."""
    from mnasdsl.cli.main import main

    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = int(e.code or 0)
    out = capsys.readouterr()
    return rc, out.out, out.err

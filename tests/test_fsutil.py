"""Atomic writes give the modes a plain open()/mkdir would (umask), or keep the replaced file's."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mnasdsl.fsutil import atomic_write_bytes, atomic_write_text, current_umask, staged_dir


@pytest.fixture(params=[0o022, 0o077, 0o027], ids=["022", "077", "027"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_current_umask_does_not_change_it(umask: int) -> None:
    assert current_umask() == umask
    assert current_umask() == umask


def test_atomic_file_gets_the_mode_of_a_plain_open(tmp_path: Path, umask: int) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "new.txt", "x")
    atomic_write_bytes(tmp_path / "sub" / "deep.bin", b"x")  # parents created as mkdir would
    assert _mode(tmp_path / "new.txt") == _mode(plain) == 0o666 & ~umask
    assert _mode(tmp_path / "sub" / "deep.bin") == 0o666 & ~umask
    assert _mode(tmp_path / "sub") == 0o777 & ~umask


def test_atomic_file_keeps_the_mode_it_replaces(tmp_path: Path, umask: int) -> None:
    p = tmp_path / "kept.txt"
    p.write_text("old")
    p.chmod(0o640)
    atomic_write_text(p, "new")
    assert p.read_text() == "new" and _mode(p) == 0o640
    p.chmod(0o604)
    atomic_write_bytes(p, b"newer")
    assert _mode(p) == 0o604


def test_staged_dir_gets_the_mode_of_a_plain_mkdir(tmp_path: Path, umask: int) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with staged_dir(tmp_path / "out") as d:
        (d / "f").write_text("x")
        atomic_write_text(d / "meta.json", "{}")
    out = tmp_path / "out"
    assert _mode(out) == _mode(plain) == 0o777 & ~umask
    assert _mode(out / "meta.json") == _mode(out / "f") == 0o666 & ~umask


def test_staged_dir_keeps_the_mode_it_replaces(tmp_path: Path, umask: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o750)
    with staged_dir(out) as d:
        (d / "f").write_text("x")
    assert (out / "f").is_file() and _mode(out) == 0o750
    out.chmod(0o555)  # read-only: still filled, then given that mode
    with staged_dir(out) as d:
        (d / "g").write_text("x")
    assert (out / "g").is_file() and not (out / "f").exists() and _mode(out) == 0o555
    out.chmod(0o755)

"""``staged_dir`` through a symbolic link: the link's destination is replaced, the link is kept, and
nothing stale (the old contents, a moved-aside link, a temporary) remains on either side."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mnasdsl.diagnostics import MnasError
from mnasdsl.fsutil import staged_dir


def _tree(d: Path) -> dict[str, str]:
    """Every entry under ``d`` (hidden ones included), links shown as links, files with their text."""
    out: dict[str, str] = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        if p.is_symlink():
            out[rel] = f"-> {os.readlink(p)}"
        elif p.is_file():
            out[rel] = p.read_text()
        else:
            out[rel] = "/"
    return out


def _fill(d: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)


@pytest.mark.parametrize("relative", [True, False], ids=["relative-link", "absolute-link"])
def test_replacing_a_linked_directory_keeps_the_link(tmp_path: Path, relative: bool) -> None:
    """The link and its destination in different directories, so leftovers on either side show."""
    (tmp_path / "store").mkdir()
    (tmp_path / "work").mkdir()
    real = tmp_path / "store" / "out"
    real.mkdir()
    _fill(real, {"old.txt": "old", "sub/deep.txt": "old"})
    link = tmp_path / "work" / "out"
    link.symlink_to(Path("..") / "store" / "out" if relative else real)
    before_link = os.readlink(link)

    with staged_dir(link) as d:
        _fill(d, {"new.txt": "new"})

    assert link.is_symlink() and os.readlink(link) == before_link
    assert _tree(tmp_path / "work") == {"out": f"-> {before_link}"}  # no `.out.old-PID` link, no temporary
    assert _tree(tmp_path / "store") == {"out": "/", "out/new.txt": "new"}  # the old contents are gone
    assert _tree(link) == {"new.txt": "new"}


def test_a_dangling_link_is_filled_at_its_destination(tmp_path: Path) -> None:
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "elsewhere" / "out")
    with staged_dir(link) as d:
        _fill(d, {"new.txt": "new"})
    assert link.is_symlink() and _tree(link) == {"new.txt": "new"}
    assert _tree(tmp_path) == {"elsewhere": "/", "elsewhere/out": "/", "elsewhere/out/new.txt": "new",
                               "out": f"-> {tmp_path / 'elsewhere' / 'out'}"}


def test_a_linked_parent_directory_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    _fill(tmp_path / "real" / "out", {"old.txt": "old"})
    (tmp_path / "via").symlink_to(tmp_path / "real")
    with staged_dir(tmp_path / "via" / "out") as d:
        _fill(d, {"new.txt": "new"})
    assert (tmp_path / "via").is_symlink()
    assert _tree(tmp_path / "real") == {"out": "/", "out/new.txt": "new"}


def test_a_failed_fill_through_a_link_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "out"
    _fill(real, {"old.txt": "old"})
    link = tmp_path / "out"
    link.symlink_to(real)
    before = _tree(tmp_path)
    with pytest.raises(RuntimeError), staged_dir(link) as d:
        _fill(d, {"half.txt": "half"})
        raise RuntimeError("interrupted")
    assert _tree(tmp_path) == before


def test_a_link_loop_is_a_clear_error(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop")
    with pytest.raises(MnasError, match="cannot write"), staged_dir(loop / "out") as d:
        _fill(d, {"new.txt": "new"})


@pytest.mark.parametrize("several", [False, True])
def test_file_write_through_a_link_keeps_the_link(tmp_path: Path, several: bool) -> None:
    """A file output reached through a symbolic link is replaced where the link points, like open()."""
    from mnasdsl.fsutil import atomic_write_bytes, atomic_write_files

    real = tmp_path / "real" / "model.onnx"
    real.parent.mkdir()
    real.write_bytes(b"old")
    link = tmp_path / "model.onnx"
    link.symlink_to(Path("real") / "model.onnx")
    if several:
        atomic_write_files({link: b"new", tmp_path / "card.json": b"{}"})
    else:
        atomic_write_bytes(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"
    assert sorted(p.name for p in real.parent.iterdir()) == ["model.onnx"]

"""Atomic file and directory writes shared by every layer (CLI, training, latency tables, imports).

Write to a temporary file (or directory) beside the target, then rename: readers and a later run
see the old one or the new one, never half of one, even after a kill -9.

``mkstemp``/``mkdtemp`` create their temporaries 0600/0700 (private until renamed); the result is
given the mode a plain ``open()``/``mkdir`` would have had under the current umask, or the mode of
the file or directory it replaces, so an atomic write is never more private than an ordinary one.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .diagnostics import MnasError

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask. Read from /proc where possible: ``os.umask`` can only be read by setting it,
    which briefly changes the mode of files other threads create."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _mode_for(target: Path, *, directory: bool) -> int:
    """Permission bits for a new ``target``: those of the file (or directory) it replaces, else what a
    plain ``open()`` (0666) or ``mkdir`` (0777) would give under the umask."""
    try:
        st = os.stat(target)
        if stat.S_ISDIR(st.st_mode) == directory:
            return stat.S_IMODE(st.st_mode) if directory else st.st_mode & 0o777
    except OSError:
        pass
    return (0o777 if directory else 0o666) & ~current_umask()


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _stage_file(p: Path, data: bytes) -> str:
    """``data`` written and synced to a new temporary file beside ``p`` (removed again on failure)."""
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_dir():
            raise IsADirectoryError(21, "Is a directory")
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as e:
        raise MnasError(f"{p}: cannot write: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _mode_for(p, directory=False))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        _unlink_quietly(tmp)
        if isinstance(e, OSError):
            raise MnasError(f"{p}: cannot write: {e.strerror or e}") from None
        raise
    return tmp


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _through_links(path: str | Path) -> Path:
    """Where a write to ``path`` lands: a symbolic link is written through (the file it points to is
    replaced and the link kept), as ``open(path, "w")`` would, not replaced by a plain file."""
    p = Path(path)
    return Path(os.path.realpath(p)) if p.is_symlink() else p


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    p = _through_links(path)
    tmp = _stage_file(p, data)
    try:
        os.replace(tmp, p)
    except BaseException as e:
        _unlink_quietly(tmp)
        if isinstance(e, OSError):
            raise MnasError(f"{p}: cannot write: {e.strerror or e}") from None
        raise


@contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty directory beside ``target`` to fill; when the block ends normally it replaces
    ``target`` (an existing one is moved aside first and removed after), otherwise it is deleted.

    A ``target`` reached through a symbolic link is written where the link points: the directory
    there is replaced and the link kept, as writing a file through a link would. (Renaming over the
    link itself would swap the link for a directory, leave the old contents behind at its
    destination, and the moved-aside link could not be removed as a directory.)"""
    target = Path(target).absolute()
    real = Path(os.path.realpath(target))  # staged beside the real directory: the same file system
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent))
    except OSError as e:
        raise MnasError(f"{target}: cannot write: {e.strerror or e}") from None
    try:
        yield tmp
        # Set only once filled: the mode of a read-only directory being replaced would stop the filling.
        # The setgid bit a shared parent gave the new directory stays, as it would with mkdir.
        os.chmod(tmp, _mode_for(real, directory=True) | (os.stat(tmp).st_mode & stat.S_ISGID))
        old = None
        if os.path.lexists(real):
            old = real.parent / f".{real.name}.old-{os.getpid()}"
            os.replace(real, old)
        os.replace(tmp, real)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MnasError(f"{target}: cannot write: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_files(files: dict[Path, bytes]) -> None:
    """Write several files as one unit (an exported model and its card): every file is written and
    synced under a temporary name first, then the old files are moved aside and the new ones renamed
    in. If any step fails, the files that were already replaced get their old contents back and
    the temporaries are removed, so a failure leaves exactly what was there before. (Between two
    renames a kill -9 can still leave a mix: POSIX has no rename of two files at once.)"""
    staged: list[tuple[Path, str]] = []
    try:
        for path, data in files.items():
            p = _through_links(path)
            staged.append((p, _stage_file(p, data)))
        _commit(staged)
    finally:
        for _, tmp in staged:
            _unlink_quietly(tmp)


def _commit(staged: list[tuple[Path, str]]) -> None:
    """Rename each temporary over its target, keeping the replaced files aside until all succeed."""
    done: list[tuple[Path, Path | None]] = []  # target, where its old version was moved (None: there was none)
    current = staged[0][0] if staged else Path()
    try:
        for p, tmp in staged:
            current = p
            old: Path | None = None
            if os.path.lexists(p):
                old = p.parent / f".{p.name}.old-{os.getpid()}"
                os.replace(p, old)
            done.append((p, old))
            os.replace(tmp, p)
    except OSError as e:
        for p, old in reversed(done):
            try:
                if old is not None:
                    os.replace(old, p)
                else:
                    p.unlink(missing_ok=True)
            except OSError:
                pass
        raise MnasError(f"{current}: cannot write: {e.strerror or e}; nothing was changed") from None
    for _, old in done:
        if old is not None:
            old.unlink(missing_ok=True)

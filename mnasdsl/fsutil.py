"""Atomic file writes shared by every layer (CLI, training, latency tables).

Write to a temporary file beside the target, fsync, then rename: readers and a later run see
the old file or the new one, never half of one, even after a kill -9.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .diagnostics import MnasError


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as e:
        raise MnasError(f"{p}: cannot write: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if p.exists():
            os.chmod(tmp, p.stat().st_mode & 0o777)
        os.replace(tmp, p)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise MnasError(f"{p}: cannot write: {e.strerror or e}") from None
        raise

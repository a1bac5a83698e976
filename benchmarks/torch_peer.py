"""The PyTorch side of a benchmark: a script in the benchmark-only interpreter, kept running beside
ours and answering one JSON line per request line, so the two sides can take turns; and the timed
row both sides' rows are built from."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any


class TorchPeer:
    """Start ``python -c script args...``; its first output line (JSON) is ``info``."""

    def __init__(self, python: str, script: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([python, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.info: dict[str, Any] = json.loads(self._line())

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the PyTorch side exited with status {self.proc.wait()}")
        return line

    def ask(self, request: str) -> Any:
        """Send one request line, return the decoded JSON answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        return json.loads(self._line())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait()


def timer(fn: Callable[[], object], warm: int) -> Callable[[int], list[float]]:
    """A benchmark row: ``reps -> per-rep milliseconds``, warming up on first use (shared by the
    alternating-rounds benchmarks, whichever side a row runs on)."""
    pending = [warm]

    def run(reps: int) -> list[float]:
        for _ in range(pending[0]):
            fn()
        pending[0] = 0
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
        return ts

    return run

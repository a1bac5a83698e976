"""Whole-network measurements (CSV: width, resolution, ms) paired with a spec, for calibration
and checks. Columns: ``width``, ``resolution`` and a latency column (``ms`` or ``pixel1_ms``);
an optional ``spec`` column names the .mnas file of each row."""

from __future__ import annotations

import csv
from pathlib import Path

from ..diagnostics import Diagnostic, MnasError, Span
from ..ir import Network
from ..lowering import LoweredNetwork, lower
from ..parser import parse_units, read_source, select
from .lut import MAX_NUMBER
from .model import MIN_FIT_MS

MS_COLUMNS = ("ms", "pixel1_ms", "latency_ms")


def load_spec(path: str | Path, name: str | None = None) -> Network:
    p = str(path)
    net = select(parse_units(read_source(p), p), name, p, "network")
    assert isinstance(net, Network)
    return net


def _row(path: str, line: int, msg: str) -> MnasError:
    return MnasError(Diagnostic(msg, Span(line, 1, line, 2), path))


def read_published(path: str | Path, spec: Network | None = None) -> list[tuple[str, LoweredNetwork, float]]:
    """Rows as (label, lowered network, measured ms)."""
    p = str(path)
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise MnasError("no such file", path=p) from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MnasError(f"cannot read measurements: {e}", path=p) from None
    if not rows:
        raise MnasError("no measurements", path=p)
    cols = rows[0].keys()
    ms_col = next((c for c in MS_COLUMNS if c in cols), None)
    if ms_col is None or "width" not in cols or "resolution" not in cols:
        raise MnasError(f"expected columns width, resolution and one of {', '.join(MS_COLUMNS)}", path=p)
    out = []
    specs: dict[str, Network] = {}
    for i, r in enumerate(rows, start=2):
        try:
            width, res, ms = float(r["width"]), int(float(r["resolution"])), float(r[ms_col])
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
            raise _row(p, i, f"width, resolution and {ms_col} must be numbers") from None
        if not (width > 0 and res > 0 and ms > 0):
            raise _row(p, i, f"width, resolution and {ms_col} must be positive")
        if not MIN_FIT_MS <= ms <= MAX_NUMBER:  # errors are relative: ms divides
            raise _row(p, i, f"{ms_col} {ms:g} is not a measured time (expected {MIN_FIT_MS:g} to {MAX_NUMBER:g} ms)")
        net = spec
        if r.get("spec"):
            rel = Path(p).parent / r["spec"]  # spec paths are relative to the CSV, as `lut check --save` writes
            sp = str(rel) if rel.exists() else r["spec"]
            net = specs.get(sp) or specs.setdefault(sp, load_spec(sp))
        if net is None:
            raise _row(p, i, "no spec for this row (pass --spec FILE or add a `spec` column)")
        out.append((f"{net.name} w{width:g} r{res}", lower(net, width=width, resolution=res), ms))
    return out

"""The on-phone kit: tiny .tflite models timed by LiteRT's ``benchmark_model`` over adb, then imported.

``write_kit`` lays out one model per distinct op signature (its LUT key) plus a few whole
calibration networks, a manifest saying which file is which, and a script that times each file on
a phone and pulls one log per file. ``import_logs`` reads those logs back into a LUT: op logs
become entries, network logs calibrate the global terms, ops without a log are priced by the
fallback model fitted on the measured ones (and listed, never dropped).

The model bytes come from the exporter; nothing here parses them. Logs are matched to the
manifest by the ``Graph: [PATH]`` line benchmark_model prints, so renaming a log is harmless. Every
file name ends in the first 8 hex digits of the model's sha256 (``op_0003-1a2b3c4d.tflite``) and
the script heads each log with the full sha256, so a log can only match the very bytes it timed:
logs of another kit, or of an earlier export of this one, are refused rather than misread.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, Literal, NamedTuple

from ..diagnostics import Diagnostic, MnasError, Span
from ..fsutil import staged_dir
from ..lowering import LoweredNetwork
from .lut import _KEY, MAX_NUMBER, Entry, Lut
from .model import MIN_FIT_MS

KIT_FORMAT = "mnasdsl-phone-kit"
KIT_VERSION = 2  # 2: file names carry the model's sha256 prefix, logs are headed with the full sha256
READ_VERSIONS = (1, 2)  # 1: names by position only; its logs are accepted from the kit's own logs/ alone
DEVICE_DIR = "/data/local/tmp/mnasdsl_kit"
DEFAULT_BENCHMARK_MODEL = "/data/local/tmp/benchmark_model"
LOG_SUFFIXES = (".log", ".txt")

Kind = Literal["op", "network"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HASHED_FILE = re.compile(r"^(.+)-([0-9a-f]{8})\.tflite$")  # a format-2 file name: NAME-SHA8.tflite
SHA_PREFIX = 8  # hex digits of the sha256 in a file name: 32 bits tell kits apart, the log header checks all 256


# -- the kit ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class KitModel:
    """One file of the kit: an isolated op (``key``) or a whole calibration network (``spec``)."""

    name: str  # file stem: letters, digits, ``_ . -`` (it is pasted into a shell script and a device path)
    data: bytes  # the .tflite flatbuffer, opaque here
    kind: Kind
    key: str | None = None  # LUT key (``op_key``) of an op
    spec: str | None = None  # canonical .mnas text of a network
    input_shape: tuple[int, int, int] = (1, 1, 1)  # H, W, C
    batch: int = 1

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def file(self) -> str:
        """``NAME-SHA8.tflite``: the name alone (a position) would let another kit's log match."""
        return f"{self.name}-{self.sha256[:SHA_PREFIX]}.tflite"


@dataclass(frozen=True)
class ManifestModel:
    file: str
    kind: Kind
    key: str | None
    spec: str | None
    input_shape: tuple[int, int, int]
    batch: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a kit holds and how it is to be run (read back when its logs are imported)."""

    converter: str
    runtime: str
    threads: int
    num_runs: int
    warmup_runs: int
    batch: int
    models: tuple[ManifestModel, ...]
    version: int = KIT_VERSION

    def to_json(self) -> dict[str, Any]:
        rows = []
        for m in self.models:
            row: dict[str, Any] = {"file": m.file, "kind": m.kind}
            if m.kind == "op":
                row["key"] = m.key
            else:
                row["spec"] = m.spec
            row.update({"input_shape": list(m.input_shape), "batch": m.batch, "bytes": m.bytes, "sha256": m.sha256})
            rows.append(row)
        return {"format": KIT_FORMAT, "version": self.version, "converter": self.converter, "runtime": self.runtime,
                "threads": self.threads, "num_runs": self.num_runs, "warmup_runs": self.warmup_runs,
                "batch": self.batch, "device_dir": DEVICE_DIR, "models": rows}


def _lower_spec(spec: str, where: str) -> LoweredNetwork:
    """The one network of a calibration spec, lowered (its diagnostics name ``where``)."""
    from ..ir import Network
    from ..lowering import lower
    from ..parser import parse

    units = parse(spec, where)
    nets = [u for u in units if isinstance(u, Network)]
    if len(units) != 1 or len(nets) != 1:
        raise MnasError(f"a calibration spec must hold exactly one network, this one has {len(units)} unit(s)",
                        path=where)
    return lower(nets[0])


def _check_model(m: KitModel, batch: int) -> None:
    where = f"kit model {m.name!r}"
    if not isinstance(m.name, str) or not _NAME.match(m.name):
        raise MnasError(f"{where}: the name must be 1-100 letters, digits, `_`, `.` or `-` (starting with a letter "
                        "or digit): it becomes a file name on the phone and a word in a shell script")
    if not isinstance(m.data, (bytes, bytearray)) or not m.data:
        raise MnasError(f"{where}: no model bytes")
    shape = tuple(m.input_shape)
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise MnasError(f"{where}: input_shape must be three positive integers (H, W, C), got {m.input_shape!r}")
    if m.batch != batch:
        raise MnasError(f"{where}: batch {m.batch}, but the kit is timed at batch {batch} (a table has one batch)")
    if m.kind == "op":
        if not m.key or not _KEY.match(m.key) or m.spec is not None:
            raise MnasError(f"{where}: an op needs a canonical LUT key (`op_key(layer)`) and no spec, "
                            f"got key {m.key!r}")
    elif m.kind == "network":
        if not m.spec or m.key is not None:
            raise MnasError(f"{where}: a network needs its .mnas spec text and no key")
        low = _lower_spec(m.spec, f"<{where}>")
        if low.input_shape != shape:
            raise MnasError(f"{where}: input_shape {shape} differs from its spec's input {low.input_shape}")
    else:
        raise MnasError(f"{where}: kind must be \"op\" or \"network\", got {m.kind!r}")


def _is_kit(directory: Path) -> bool:
    try:
        obj = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(obj, dict) and obj.get("format") == KIT_FORMAT


def _run_order(models: list[KitModel]) -> list[KitModel]:
    """Ops with the networks spread evenly among them: a phone heats up over a long run, and the
    calibration networks should see the same mix of cool and warm as the ops they calibrate."""
    ops = [m for m in models if m.kind == "op"]
    nets = [m for m in models if m.kind == "network"]
    if not nets:
        return ops
    out: list[KitModel] = []
    step = len(ops) / len(nets)
    j = 0
    for i, net in enumerate(nets):
        end = round((i + 0.5) * step)
        out.extend(ops[j:end])
        j = end
        out.append(net)
    out.extend(ops[j:])
    return out


@dataclass(frozen=True)
class KitWrite:
    """What ``write_kit`` wrote, and what became of the logs of the kit it replaced (names in ``logs/``)."""

    path: Path
    replaced: bool = False  # an existing kit was replaced
    kept: tuple[str, ...] = ()  # logs of models byte-identical in the new kit: carried into it
    removed: tuple[str, ...] = ()  # the rest of the old logs/ (only ever with force=True)


class _Stale(NamedTuple):
    name: str  # entry of logs/
    why: str


_SCAN_BYTES = 1 << 20  # benchmark_model prints its parameters (the graph) first; a log is a few KB


class _LogId(NamedTuple):
    graph: str | None  # the kit file it timed
    sha256: str | None  # as its header records it
    threads: int | None  # as benchmark_model printed it


def _log_model(p: Path) -> _LogId:
    """Which model a log (or a failed run's ``.part``) timed, read leniently: a truncated log still
    names its model, by its ``Graph:`` line or else its file name."""
    try:
        with open(p, "rb") as f:
            text = f.read(_SCAN_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return _LogId(None, None, None)
    graph = sha = None
    threads: int | None = None
    for line in text.splitlines():
        if m := _HEADER.match(line):
            if m.group(1).lower() == "sha256":
                sha = m.group(2).strip().lower()
        elif graph is None and (m := _GRAPH.search(line)) and m.group(1).strip():
            graph = PurePosixPath(m.group(1).strip()).name
        elif threads is None and (m := _THREADS.search(line) or _THREADS_USED.search(line)):
            threads = int(m.group(1)) if m.group(1).strip().isdigit() else None
    if graph is None:
        stem = p.name.removesuffix(".part")
        graph = next((stem[: -len(s)] + ".tflite" for s in LOG_SUFFIXES if stem.endswith(s)), None)
    return _LogId(graph, sha, threads)


def _listing(logs: Path) -> tuple[str, ...] | None:
    """The names in ``logs/``: None if there is none, ``("",)`` if it is not a plain directory."""
    if not logs.exists() and not logs.is_symlink():
        return None
    if logs.is_symlink() or not logs.is_dir():
        return ("",)
    try:
        return tuple(sorted(p.name for p in logs.iterdir()))
    except OSError as e:
        raise MnasError(f"cannot read the kit's logs: {e.strerror or e}; not replacing the kit",
                        path=str(logs)) from None


def _plan_logs(target: Path, new: Manifest) -> tuple[list[str], list[_Stale]]:
    """Which entries of the old kit's ``logs/`` timed a model the new kit holds byte for byte, with
    the thread count it asks for (kept), and which would be orphaned (stale), each with the reason.
    (A change of ``num_runs`` keeps a log: the table records each entry's own run count.)"""
    logs = target / "logs"
    listing = _listing(logs)
    if listing is None:
        return [], []
    if listing == ("",):
        return [], [_Stale("logs", "a symbolic link or not a directory")]
    try:
        old_man: Manifest | None = read_manifest(target / "manifest.json")
    except MnasError:
        old_man = None
    old = {m.file: m.sha256 for m in old_man.models} if old_man else {}
    want = {m.file: m.sha256 for m in new.models}
    kept: list[str] = []
    stale: list[_Stale] = []
    for name in listing:
        p = logs / name
        if p.is_symlink() or not p.is_file():
            stale.append(_Stale(name, "not a regular file"))
            continue
        if not name.removesuffix(".part").endswith(LOG_SUFFIXES):
            stale.append(_Stale(name, "not a log"))
            continue
        graph, sha, threads = _log_model(p)
        if threads is None and old_man is not None:
            threads = old_man.threads
        if graph is None:
            stale.append(_Stale(name, "names no model"))
        elif graph not in want:
            stale.append(_Stale(name, f"its model {graph} is not in the new kit"))
        elif (sha or old.get(graph)) != want[graph]:
            stale.append(_Stale(name, f"its model {graph} differs in the new kit"))
        elif threads != new.threads:
            how = f"timed with {threads} thread(s)" if threads is not None else "its thread count is unknown"
            stale.append(_Stale(name, f"{how}, the new kit asks for {new.threads}"))
        else:
            kept.append(name)
    return kept, stale


def _refuse_stale(logs: Path, kept: list[str], stale: list[_Stale]) -> MnasError:
    shown = "; ".join(f"{s.name} ({s.why})" for s in stale[:10])
    more = f"; and {len(stale) - 10} more" if len(stale) > 10 else ""
    keep = f"; the {len(kept)} logs of unchanged models are kept either way" if kept else ""
    return MnasError(
        f"re-exporting the kit would orphan {len(stale)} of the {len(kept) + len(stale)} entries of its logs/, "
        f"which no longer fit the new kit (a model is gone when it changed, was renumbered, or the old kit was "
        f"written by an older mnasdsl): {shown}{more}. Nothing was changed. Import them first (mnasdsl lut import "
        f"benchmark-model {logs} -o phone.json), move the folder aside, or pass --force to remove them{keep}",
        path=str(logs))


def _carry(src: Path, dst: Path) -> None:
    """A kept log into the staged kit: a hard link (same bytes, same mtime, nothing copied), or a copy
    where the file system has none. The old kit keeps its own until the swap."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst)


def write_kit(directory: str | Path, models: list[KitModel] | tuple[KitModel, ...], *, converter: str,
              runtime: str, threads: int = 1, num_runs: int = 50, warmup_runs: int = 10, batch: int = 1,
              force: bool = False) -> KitWrite:
    """Write ``DIR/models/*.tflite``, ``DIR/manifest.json``, ``DIR/run_on_device.sh`` and ``DIR/README.txt``.

    The directory is staged beside the target and renamed into place, so a kill leaves the old
    kit or the new one. An existing kit is replaced, but its logs are phone time: those of models the
    new kit holds byte for byte move into it, and if any other entry of ``logs/`` would be lost the
    export is refused unless ``force``. Any other non-empty directory, or a file, is never touched."""
    target = Path(directory)
    for name, v, lo in (("threads", threads, 1), ("num_runs", num_runs, 1), ("warmup_runs", warmup_runs, 0),
                        ("batch", batch, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise MnasError(f"phone kit: {name} must be an integer >= {lo}, got {v!r}")
    if not converter or not runtime:
        raise MnasError("phone kit: record the converter and runtime versions the models were made with")
    models = list(models)
    if not models:
        raise MnasError("phone kit: no models to write")
    names: dict[str, str] = {}
    keys: dict[str, str] = {}
    for m in models:
        _check_model(m, batch)
        if m.name.lower() in names:  # case-insensitive: the kit may be copied through a macOS/Windows disk
            raise MnasError(f"phone kit: two models named {m.name!r} and {names[m.name.lower()]!r}")
        names[m.name.lower()] = m.name
        if m.key is not None:
            if m.key in keys:
                raise MnasError(f"phone kit: models {keys[m.key]!r} and {m.name!r} both measure {m.key}")
            keys[m.key] = m.name
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise MnasError("exists and is not a directory; not overwriting it with a phone kit", path=str(target))
        if not _is_kit(target) and any(target.iterdir()):
            raise MnasError(f"is a non-empty directory that is not a phone kit (no manifest.json with format "
                            f"{KIT_FORMAT!r}); not overwriting it: choose another directory", path=str(target))
    ordered = _run_order(models)
    manifest = Manifest(converter, runtime, threads, num_runs, warmup_runs, batch, tuple(
        ManifestModel(m.file, m.kind, m.key, m.spec, (m.input_shape[0], m.input_shape[1], m.input_shape[2]), m.batch,
                      len(m.data), m.sha256) for m in ordered))
    replaced = target.is_dir() and _is_kit(target)
    old_logs = target / "logs"
    before = _listing(old_logs) if replaced else None
    kept, stale = _plan_logs(target, manifest) if replaced else ([], [])
    if stale and not force:
        raise _refuse_stale(old_logs, kept, stale)
    with staged_dir(target) as tmp:
        (tmp / "models").mkdir()
        for m in ordered:
            (tmp / "models" / m.file).write_bytes(bytes(m.data))
        if kept:
            (tmp / "logs").mkdir()
            for name in kept:
                _carry(old_logs / name, tmp / "logs" / name)
            shutil.copystat(old_logs, tmp / "logs")
        if replaced and _listing(old_logs) != before:  # run_on_device.sh still writing? nothing is lost then
            raise MnasError("the kit's logs/ changed while the new kit was being written (is run_on_device.sh "
                            "running?); nothing was changed: export again when it is done", path=str(old_logs))
        (tmp / "manifest.json").write_text(json.dumps(manifest.to_json(), indent=1) + "\n", encoding="utf-8")
        script = tmp / "run_on_device.sh"
        script.write_text(_script(manifest), encoding="utf-8")
        mode = script.stat().st_mode
        script.chmod(mode | (mode & 0o444) >> 2)  # executable by whoever may read it (the umask's choice)
        (tmp / "README.txt").write_text(_readme(manifest), encoding="utf-8")
    return KitWrite(target, replaced, tuple(kept), tuple(s.name for s in stale))


def _script(man: Manifest) -> str:
    """The bash script that times the kit over adb. Every path it builds is quoted, and nothing is
    pasted into a pattern substitution: the kit may sit under any directory name (a space, ``&``,
    ``'``, ``$``, ``*`` or a backslash; bash 5.2 reads ``&`` in a replacement as the match). What
    runs on the phone goes through the phone's shell, so the one user-given word there is quoted."""
    files = "\n".join(f"  {m.file}" for m in man.models)
    shas = "\n".join(f"  {m.sha256}" for m in man.models)
    cmd = (f"--graph={DEVICE_DIR}/$f --num_threads={man.threads} --use_xnnpack=true "
           f"--num_runs={man.num_runs} --warmup_runs={man.warmup_runs}")
    return f"""#!/usr/bin/env bash
# Written by mnasdsl (phone kit format {KIT_VERSION}): times every model in models/ on an Android phone
# with LiteRT's benchmark_model and pulls one log per model into logs/. Then, on the computer:
#   mnasdsl lut import benchmark-model logs -o phone.json --manifest manifest.json
#
# benchmark_model is LiteRT's (TensorFlow Lite's) prebuilt Android benchmark binary: download
# android_aarch64_benchmark_model (64-bit ARM phones) from the LiteRT performance measurement page
# (https://ai.google.dev/edge/litert/models/measurement) and push it once:
#   adb push android_aarch64_benchmark_model {DEFAULT_BENCHMARK_MODEL}
#   adb shell chmod +x {DEFAULT_BENCHMARK_MODEL}
#
# Environment:
#   ADB_SERIAL=SERIAL     the phone, when several are connected (adb -s SERIAL)
#   BENCHMARK_MODEL=PATH  the binary on the phone (default {DEFAULT_BENCHMARK_MODEL})
#   CPU_MASK=HEX          pin every run to these cores with taskset (e.g. 80 = core 7, often a big core;
#                         one pinned big core gives the steadiest numbers); default: not pinned
#   PAUSE=SECONDS         sleep between models so the phone stays cool (default 0)
# Logs already in logs/ are kept: after an interruption, run it again to time only the rest.
set -euo pipefail

HERE="$(CDPATH='' cd -- "$(dirname -- "${{BASH_SOURCE[0]}}")" && pwd)"
BENCHMARK_MODEL="${{BENCHMARK_MODEL:-{DEFAULT_BENCHMARK_MODEL}}}"
CPU_MASK="${{CPU_MASK:-}}"
PAUSE="${{PAUSE:-0}}"
LOGS="$HERE/logs"
MODELS=(
{files}
)
SHA256=(
{shas}
)

die() {{ echo "run_on_device.sh: $*" >&2; exit 1; }}
# One word for the phone's shell (adb shell hands it a command line): 'quoted' unless plainly safe.
sq() {{
  if [[ "$1" =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then printf '%s' "$1"; return; fi
  local s=${{1//\\'/\\'\\\\\\'\\'}}
  printf "'%s'" "$s"
}}

command -v adb >/dev/null 2>&1 || die "adb not found: install Android platform-tools and put adb on PATH"
ADB=(adb)
if [[ -n "${{ADB_SERIAL:-}}" ]]; then ADB+=(-s "$ADB_SERIAL"); fi
state="$("${{ADB[@]}}" get-state 2>/dev/null || true)"
[[ "$state" == device ]] ||
  die "no phone ready (adb get-state: ${{state:-none}}); connect one, allow USB debugging, or set ADB_SERIAL"
BM="$(sq "$BENCHMARK_MODEL")"
ok="$("${{ADB[@]}}" shell "[ -x $BM ] && echo ok" </dev/null | tr -d '\\r' || true)"
[[ "$ok" == ok ]] ||
  die "$BENCHMARK_MODEL is not an executable on the phone: push LiteRT's benchmark_model (see the top of this script)"
PIN=""
if [[ -n "$CPU_MASK" ]]; then
  [[ "$CPU_MASK" =~ ^[0-9a-fA-F]+$ ]] || die "CPU_MASK must be a hex core mask, got $CPU_MASK"
  PIN="taskset $CPU_MASK "
fi
[[ "$PAUSE" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "PAUSE must be a number of seconds, got $PAUSE"

prop() {{ "${{ADB[@]}}" shell getprop "$1" </dev/null | tr -d '\\r\\n'; }}
DEVICE="$(prop ro.product.model)"
SOC="$(prop ro.board.platform)"
ANDROID="$(prop ro.build.version.release)"

echo "pushing ${{#MODELS[@]}} models to {DEVICE_DIR}/ on $DEVICE ($SOC, Android $ANDROID)" >&2
"${{ADB[@]}}" shell mkdir -p {DEVICE_DIR} </dev/null
paths=()
for f in "${{MODELS[@]}}"; do paths+=("$HERE/models/$f"); done
"${{ADB[@]}}" push "${{paths[@]}}" {DEVICE_DIR}/ >/dev/null

mkdir -p "$LOGS"
failed=0
for i in "${{!MODELS[@]}}"; do
  f="${{MODELS[i]}}"
  log="$LOGS/${{f%.tflite}}.log"
  [[ -s "$log" ]] && continue
  echo "[$((i + 1))/${{#MODELS[@]}}] $f" >&2
  if {{
    echo "# mnasdsl-kit sha256: ${{SHA256[i]}}"
    echo "# mnasdsl-kit device: $DEVICE"
    echo "# mnasdsl-kit soc: $SOC"
    echo "# mnasdsl-kit android: $ANDROID"
    echo "# mnasdsl-kit cpu_mask: ${{CPU_MASK:-none}}"
    "${{ADB[@]}}" shell "${{PIN}}$BM {cmd}" </dev/null 2>&1 | tr -d '\\r'
  }} >"$log.part"; then
    mv -- "$log.part" "$log"
  else
    failed=$((failed + 1))
    echo "  failed: see $log.part" >&2
  fi
  sleep "$PAUSE"
done

if ((failed)); then
  die "$failed model(s) failed (see logs/*.part): run again to retry them, or import without them" \\
    "(they are then priced by the model)"
fi
echo "done: logs in $LOGS; import them with" >&2
printf '  mnasdsl lut import benchmark-model %q -o phone.json --manifest %q\\n' "$LOGS" "$HERE/manifest.json" >&2
"""


def _readme(man: Manifest) -> str:
    n_ops = sum(m.kind == "op" for m in man.models)
    n_nets = len(man.models) - n_ops
    return f"""mnasdsl phone kit (format {KIT_VERSION})
=========================

{n_ops} isolated ops (one .tflite per distinct op signature) and {n_nets} whole calibration
network(s) in models/, made with {man.converter} for {man.runtime}; timed with {man.threads} thread(s),
{man.num_runs} runs after {man.warmup_runs} warm-up runs, batch {man.batch}. manifest.json says which
file is which op (its latency-table key) or network (its .mnas spec). Each file name ends in the first
8 hex digits of its sha256, and each log is headed with the full sha256, so the import accepts a log
only for the very model it timed. Exporting into this directory again keeps the logs of models that
are unchanged byte for byte and refuses to drop any other log unless given --force.

Route 1: an Android phone (adb)
-------------------------------
1. Get LiteRT's prebuilt Android benchmark binary (android_aarch64_benchmark_model, from
   https://ai.google.dev/edge/litert/models/measurement) and push it once:
     adb push android_aarch64_benchmark_model {DEFAULT_BENCHMARK_MODEL}
     adb shell chmod +x {DEFAULT_BENCHMARK_MODEL}
2. Plug the phone in, screen on, nothing else running, not hot. Then:
     ./run_on_device.sh
   (ADB_SERIAL picks a phone, CPU_MASK=80 pins to one core, PAUSE=2 cools between models; an
   interrupted run resumes where it stopped.) One log per model lands in logs/.
3. Turn the logs into a latency table:
     mnasdsl lut import benchmark-model DIR/logs -o phone.json --manifest DIR/manifest.json
   Ops whose log is missing are priced by a model fitted on the measured ops (the import lists
   them); the network logs calibrate the table's global terms.

Route 2: a Linux ARM board (Raspberry Pi, Jetson CPU, ...)
----------------------------------------------------------
No kit needed: install the LiteRT Python runtime and profile on the board itself.
     pip install ai-edge-litert mnasdsl
     mnasdsl profile SPACE --runtime litert -o board.json

Use the table with `mnasdsl latency --lut phone.json ...` or in a search.
"""


# -- reading the manifest ---------------------------------------------------------------------

def read_manifest(path: str | Path) -> Manifest:
    """Read and fully validate a kit manifest: every defect names the file and the model."""
    p = str(path)
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MnasError("no such file (the kit's manifest.json; pass --manifest PATH)", path=p) from None
    except (OSError, UnicodeDecodeError) as e:
        raise MnasError(f"cannot read the kit manifest: {e}", path=p) from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise MnasError(f"corrupt kit manifest: {e}", path=p) from None
    if not isinstance(obj, dict) or obj.get("format") != KIT_FORMAT:
        raise MnasError(f"not a phone kit manifest (expected format {KIT_FORMAT!r})", path=p)
    version = obj.get("version")
    if isinstance(version, bool) or version not in READ_VERSIONS:
        raise MnasError(f"phone kit version {version!r} (this mnasdsl reads versions "
                        f"{', '.join(map(str, READ_VERSIONS))})", path=p)

    def integer(o: dict[str, Any], name: str, lo: int, where: str) -> int:
        v = o.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise MnasError(f"{where}`{name}` must be an integer >= {lo}, got {v!r}", path=p)
        return v

    def text(o: dict[str, Any], name: str, where: str) -> str:
        v = o.get(name)
        if not isinstance(v, str) or not v:
            raise MnasError(f"{where}`{name}` must be a non-empty string", path=p)
        return v

    rows = obj.get("models")
    if not isinstance(rows, list) or not rows:
        raise MnasError("`models` must be a non-empty list", path=p)
    models: list[ManifestModel] = []
    files: set[str] = set()
    keys: set[str] = set()
    for i, r in enumerate(rows):
        where = f"models[{i}]: "
        if not isinstance(r, dict):
            raise MnasError(f"{where}expected an object", path=p)
        file = text(r, "file", where)
        hashed = _HASHED_FILE.match(file) if version >= 2 else None
        stem = hashed.group(1) if hashed else file.removesuffix(".tflite")
        if (not file.endswith(".tflite") or not _NAME.match(stem) or file in files
                or (version >= 2 and hashed is None)):
            raise MnasError(f"{where}bad or repeated file name {file!r}"
                            f"{' (format 2 names end in -SHA8.tflite)' if version >= 2 else ''}", path=p)
        files.add(file)
        kind = r.get("kind")
        key = spec = None
        if kind == "op":
            key = text(r, "key", where)
            if not _KEY.match(key) or key in keys:
                raise MnasError(f"{where}{key!r} is not a canonical op signature, or is repeated", path=p)
            keys.add(key)
        elif kind == "network":
            spec = text(r, "spec", where)
        else:
            raise MnasError(f"{where}`kind` must be \"op\" or \"network\", got {kind!r}", path=p)
        shape = r.get("input_shape")
        if (not isinstance(shape, list) or len(shape) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
            raise MnasError(f"{where}`input_shape` must be three positive integers", path=p)
        sha = text(r, "sha256", where)
        if version >= 2 and (not _SHA256.match(sha) or hashed is None or sha[:SHA_PREFIX] != hashed.group(2)):
            raise MnasError(f"{where}`sha256` must be 64 lowercase hex digits that {file!r} ends with (its first "
                            f"{SHA_PREFIX}), got {sha!r}", path=p)
        models.append(ManifestModel(file, kind, key, spec, (shape[0], shape[1], shape[2]),
                                    integer(r, "batch", 1, where), integer(r, "bytes", 0, where), sha))
    batch = integer(obj, "batch", 1, "")
    if any(m.batch != batch for m in models):
        raise MnasError(f"models of several batch sizes in one kit (the kit says batch {batch})", path=p)
    return Manifest(text(obj, "converter", ""), text(obj, "runtime", ""), integer(obj, "threads", 1, ""),
                    integer(obj, "num_runs", 1, ""), integer(obj, "warmup_runs", 0, ""), batch, tuple(models),
                    version)


# -- parsing benchmark_model logs -------------------------------------------------------------

@dataclass(frozen=True)
class BenchLog:
    """One benchmark_model run. Times are microseconds, as the tool prints them; ``None`` where the
    log did not say (a summary-only log has no std, min, max or count)."""

    path: str
    graph: str
    graph_line: int
    threads: int | None
    xnnpack: bool | None
    avg_us: float
    std_us: float | None
    min_us: float | None
    max_us: float | None
    count: int | None
    warmup_avg_us: float | None
    init_us: float | None
    first_us: float | None
    header: dict[str, str] = field(default_factory=dict)  # the `# mnasdsl-kit NAME: VALUE` lines

    @property
    def device(self) -> str | None:
        return self.header.get("device") or None

    @property
    def soc(self) -> str | None:
        return self.header.get("soc") or None

    @property
    def android(self) -> str | None:
        return self.header.get("android") or None

    @property
    def sha256(self) -> str | None:
        """The sha256 of the model run_on_device.sh pushed for this run (format 2 kits)."""
        return self.header.get("sha256", "").strip().lower() or None


_HEADER = re.compile(r"^\s*#\s*mnasdsl-kit\s+([A-Za-z_][A-Za-z0-9_]*):[ \t]?(.*?)\s*$")
# Content is anchored at the start of the line or after whitespace, so `INFO: `, logcat's
# `01-02 03:04:05.678  123  123 I tflite  : ` and similar prefixes all pass.
_GRAPH = re.compile(r"(?:^|\s)Graph: \[(.*)\]\s*$")
_LOADED = re.compile(r"(?:^|\s)Loaded model (\S+)\s*$")
_THREADS = re.compile(r"(?:^|\s)Num threads: \[(.*)\]\s*$")
_THREADS_USED = re.compile(r"(?:^|\s)#threads used for CPU inference: \[(.*)\]\s*$")
_XNNPACK = re.compile(r"(?:^|\s)Use xnnpack: \[(.*)\]\s*$")
_INIT = re.compile(r"(?:^|\s)Initialized session in (\S+?)ms\.?\s*$")
_COUNT = re.compile(r"(?:^|\s)(count=\S.*?)\s*$")
_SUMMARY = re.compile(r"(?:^|\s)Inference timings in us: (.*?)\s*$")
_FAILURE = re.compile(r"\b(ERROR|Error|error|Failed|failed|Aborted|Segmentation fault|not found)\b")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_COUNT_FIELDS = ("count", "min", "max", "avg", "std")


class _Timing(NamedTuple):
    line: int
    values: dict[str, float]


def _err(path: str, msg: str, line: int, col: int = 1, end_col: int | None = None, source: str | None = None,
         notes: tuple[str, ...] = ()) -> MnasError:
    span = Span(line, col, line, end_col if end_col is not None else col + 1)
    return MnasError(Diagnostic(msg, span, path, "error", notes), source=source)


def parse_benchmark_log(text: str, path: str = "<log>") -> BenchLog:
    """Read one ``benchmark_model`` log (tolerant of line prefixes, strict on numbers).

    The timed run is the last ``count=...`` line; the ``Inference timings in us`` summary must agree
    with it when both are there. A log without either is a run that never finished."""
    lines = text.splitlines()

    def fail(msg: str, line: int, col: int = 1, end_col: int | None = None, notes: tuple[str, ...] = ()) -> MnasError:
        return _err(path, msg, line, col, end_col, text, notes)

    def number(raw: str, line: int, col: int, what: str, *, integer: bool = False, positive: bool = False) -> float:
        ok = _NUMBER.match(raw) is not None
        v = float(raw) if ok else math.nan
        if not ok or not 0 <= v <= MAX_NUMBER or (positive and v <= 0) or (integer and v != int(v)):
            kind = "a positive number" if positive else "a non-negative integer" if integer else "a non-negative number"
            raise fail(f"garbled {what}: {raw!r} is not {kind}", line, col, col + max(1, len(raw)))
        return v

    def bracket(m: re.Match[str], ln: int, what: str, *, boolean: bool = False) -> float:
        raw = m.group(1).strip()
        col = m.start(1) + 1
        if boolean:
            if raw.lower() in ("1", "true"):
                return 1.0
            if raw.lower() in ("0", "false"):
                return 0.0
            raise fail(f"garbled {what}: {raw!r} is not 0/1/true/false", ln, col, col + max(1, len(raw)))
        return number(raw, ln, col, what, integer=True)

    header: dict[str, str] = {}
    graph: tuple[str, int] | None = None
    loaded: tuple[str, int] | None = None
    threads: int | None = None
    threads_used: int | None = None
    xnnpack: bool | None = None
    init_ms: float | None = None
    counts: list[_Timing] = []
    summary: _Timing | None = None
    failure: tuple[int, str] | None = None
    for ln, line in enumerate(lines, 1):
        if m := _HEADER.match(line):
            header[m.group(1).lower()] = m.group(2)
        elif m := _GRAPH.search(line):
            g = m.group(1).strip()
            if not g:
                raise fail("empty `Graph: []`: benchmark_model was run without --graph", ln, m.start(1) + 1)
            if graph is not None and graph[0] != g:
                raise fail(f"a second `Graph:` line ({g}; the first, line {graph[1]}, says {graph[0]}): "
                           "two runs in one log?", ln, m.start(1) + 1, m.end(1) + 1)
            graph = (g, ln)
        elif m := _LOADED.search(line):
            loaded = (m.group(1), ln)
        elif m := _THREADS.search(line):
            threads = int(bracket(m, ln, "thread count"))
        elif m := _THREADS_USED.search(line):
            threads_used = int(bracket(m, ln, "thread count"))
        elif m := _XNNPACK.search(line):
            xnnpack = bracket(m, ln, "xnnpack flag", boolean=True) == 1.0
        elif m := _INIT.search(line):
            init_ms = number(m.group(1), ln, m.start(1) + 1, "session init time")
        elif m := _SUMMARY.search(line):
            if summary is not None:
                raise fail(f"a second `Inference timings` line (the first is line {summary.line}): two runs in one "
                           "log?", ln, m.start() + 1)
            summary = _Timing(ln, _summary_values(m, ln, number, fail))
        elif m := _COUNT.search(line):
            counts.append(_Timing(ln, _count_values(m, ln, number, fail)))
        elif failure is None and _FAILURE.search(line):
            failure = (ln, line.strip())
    last = max(len(lines), 1)
    end_col = len(lines[-1]) + 1 if lines else 1
    if graph is None:
        raise fail("not a benchmark_model log: no `Graph: [PATH]` line (benchmark_model prints it among its "
                   "parameters; was the output cut off at the start?)", 1)
    if loaded is not None and PurePosixPath(loaded[0]).name != PurePosixPath(graph[0]).name:
        raise fail(f"loaded model {loaded[0]} but `Graph:` (line {graph[1]}) says {graph[0]}", loaded[1])
    notes = (f"benchmark_model said at line {failure[0]}: {failure[1][:200]}",) if failure else ()
    if summary is None and not counts:
        raise fail(f"truncated log: no inference timings (no `count=...` or `Inference timings` line) by its end "
                   f"at line {last}; the run did not finish", last, 1, max(end_col, 2), notes)
    if summary is None and len(counts) == 1:
        raise fail(f"truncated log: only the warm-up run's timings (line {counts[0].line}) before its end at line "
                   f"{last}; the timed run did not finish", last, 1, max(end_col, 2), notes)
    timed = counts[-1] if counts else None
    warm = counts[0] if len(counts) >= 2 else None
    if summary is not None:
        if "Inference (avg)" not in summary.values:
            raise fail("`Inference timings` line without `Inference (avg)`", summary.line)
        avg = summary.values["Inference (avg)"]
        if timed is not None and not math.isclose(avg, timed.values["avg"], rel_tol=1e-4, abs_tol=0.051):
            raise fail(f"the summary's Inference (avg) {avg:g} us disagrees with the timed run's avg="
                       f"{timed.values['avg']:g} (line {timed.line})", summary.line)
    else:
        assert timed is not None
        avg = timed.values["avg"]
    if avg < MIN_FIT_MS * 1e3:  # microseconds; too short a time to fit on (relative error divides by it)
        raise fail(f"garbled inference time: an average of {avg:g} us", summary.line if summary else 1)
    sv = summary.values if summary else {}
    tv = timed.values if timed else {}
    first = sv.get("First inference", warm.values.get("first") if warm else None)
    return BenchLog(
        path=path, graph=graph[0], graph_line=graph[1], threads=threads if threads is not None else threads_used,
        xnnpack=xnnpack, avg_us=avg, std_us=tv.get("std"), min_us=tv.get("min"), max_us=tv.get("max"),
        count=int(tv["count"]) if "count" in tv else None,
        warmup_avg_us=sv.get("Warmup (avg)", warm.values["avg"] if warm else None),
        init_us=sv.get("Init", init_ms * 1000 if init_ms is not None else None), first_us=first, header=header)


def _count_values(m: re.Match[str], ln: int, number: Any, fail: Any) -> dict[str, float]:
    """``count=412 first=1520 curr=1190 min=1150 max=1620 avg=1213.5 std=62`` (extra numeric
    fields such as percentiles are allowed; each of count, min, max, avg, std is required)."""
    values: dict[str, float] = {}
    for tok in re.finditer(r"\S+", m.group(1)):
        col = m.start(1) + tok.start() + 1
        name, eq, raw = tok.group().partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise fail(f"garbled timing line: {tok.group()!r} is not NAME=NUMBER", ln, col, col + len(tok.group()))
        if name in values:
            raise fail(f"garbled timing line: `{name}` twice", ln, col, col + len(name))
        values[name] = number(raw, ln, col + len(name) + 1, f"`{name}`", integer=name == "count",
                              positive=name in ("count", "avg"))
    missing = [f for f in _COUNT_FIELDS if f not in values]
    if missing:
        raise fail(f"incomplete timing line: no {', '.join(missing)} (cut off?)", ln, m.start(1) + 1,
                   m.end(1) + 1)
    return values


def _summary_values(m: re.Match[str], ln: int, number: Any, fail: Any) -> dict[str, float]:
    """``Init: 12345, First inference: 1520, Warmup (avg): 1213.5, Inference (avg): 1201.8``."""
    values: dict[str, float] = {}
    body, base = m.group(1), m.start(1)
    pos = 0
    for part in body.split(","):
        start = pos + len(part) - len(part.lstrip())
        pos += len(part) + 1
        name, colon, raw = part.strip().partition(":")
        col = base + start + 1
        if not colon or not name:
            raise fail(f"garbled `Inference timings` line: {part.strip()!r} is not `NAME: NUMBER`", ln, col,
                       col + max(1, len(part.strip())))
        raw_s = raw.strip()
        vcol = col + len(name) + 1 + (len(raw) - len(raw.lstrip()))
        values[name.strip()] = number(raw_s, ln, vcol, f"`{name.strip()}`")
    return values


# -- importing a kit's logs -------------------------------------------------------------------

class NetworkResult(NamedTuple):
    file: str
    measured_ms: float
    estimated_ms: float  # by the imported table, calibrated


@dataclass
class ImportReport:
    """What an import did: which ops were measured, which are priced by the model, calibration fit."""

    logs: int = 0
    measured: list[str] = field(default_factory=list)  # op keys with a log
    missing: list[str] = field(default_factory=list)  # op keys without one: priced by the fallback model
    missing_networks: list[str] = field(default_factory=list)  # calibration files without a log
    networks: list[NetworkResult] = field(default_factory=list)
    calibration_terms: tuple[str, ...] = ()
    mape_before_pct: float | None = None  # networks as a plain sum of per-op times
    mape_after_pct: float | None = None  # after the global terms
    warnings: list[str] = field(default_factory=list)


def _read_log(p: Path) -> BenchLog:
    try:
        data = p.read_bytes()
    except OSError as e:
        raise MnasError(f"cannot read: {e.strerror or e}", path=str(p)) from None
    return parse_benchmark_log(data.decode("utf-8", errors="replace"), str(p))


def _one(logs: list[BenchLog], get: Any) -> tuple[str | None, list[BenchLog]]:
    """The value all logs that state it agree on, or (None, two logs that disagree)."""
    vals: dict[str, BenchLog] = {}
    for lg in logs:
        v = get(lg)
        if v:
            vals.setdefault(v, lg)
    if len(vals) > 1:
        return None, list(vals.values())[:2]
    return (next(iter(vals)) if vals else None), []


def import_logs(logdir: str | Path, manifest_path: str | Path | None = None, *, device: str | None = None,
                runtime: str | None = None) -> tuple[Lut, ImportReport]:
    """A LUT from a kit's benchmark_model logs (manifest default: ``LOGDIR/../manifest.json``).

    ``device`` overrides the phone model recorded in the logs, ``runtime`` the runtime string."""
    from .estimator import Estimator
    from .model import CALIBRATION_TERMS, fit_lut

    root = Path(logdir)
    if not root.is_dir():
        what = "no such directory" if not root.exists() else "not a directory"
        raise MnasError(f"{what}: benchmark-model imports a directory of benchmark_model logs", path=str(root))
    if _is_kit(root) and (root / "logs").is_dir():
        raise MnasError(f"this is the kit itself; pass its log folder: {root / 'logs'}", path=str(root))
    mpath = Path(manifest_path) if manifest_path is not None else root.resolve().parent / "manifest.json"
    manifest = read_manifest(mpath)
    by_file = {m.file: m for m in manifest.models}
    files = sorted(p for p in root.iterdir() if p.suffix in LOG_SUFFIXES and p.is_file())
    if not files:
        raise MnasError(f"no benchmark_model logs (*{', *'.join(LOG_SUFFIXES)}) in this directory", path=str(root))
    report = ImportReport(logs=len(files))
    if manifest.version < 2:
        # Format 1 named files by position only (op_0000.tflite in every kit): nothing in a log tells
        # whose it is, so only the kit's own logs/ folder, beside its manifest, is trusted.
        if mpath.resolve() != (root.resolve().parent / "manifest.json").resolve():
            raise MnasError(f"this kit was written by an older mnasdsl (format {manifest.version}), whose file names "
                            f"do not identify the kit: logs can be imported against it only from its own logs/ "
                            f"folder, not from {root}; re-export the kit (profile --export-ops) to check any logs "
                            "against it", path=str(mpath))
        report.warnings.append(f"{mpath} is a format-{manifest.version} kit (file names without a content hash): "
                               "its logs are taken as its own, unchecked (kits exported now check every log)")
    chosen: dict[str, tuple[float, Path, BenchLog]] = {}
    for p in files:
        lg = _read_log(p)
        name = PurePosixPath(lg.graph).name
        if name not in by_file:
            raise _err(str(p), f"graph {lg.graph} is not in the kit manifest {mpath}: a log of another kit, or of "
                       "an earlier export of this one (a file name ends in the first 8 hex digits of its model's "
                       "sha256)", lg.graph_line)
        if lg.sha256 is not None and lg.sha256 != by_file[name].sha256:
            raise _err(str(p), f"this log timed a model with sha256 {lg.sha256[:16]}..., but {name} in {mpath} has "
                       f"sha256 {by_file[name].sha256[:16]}...: a log of another kit", lg.graph_line)
        mtime = p.stat().st_mtime
        if name in chosen:
            old_t, old_p, _ = chosen[name]
            keep_new = (mtime, p.name) > (old_t, old_p.name)
            kept, dropped = (p, old_p) if keep_new else (old_p, p)
            report.warnings.append(f"two logs of {name}: {old_p.name} and {p.name}; kept {kept.name} "
                                   f"(modified later), ignored {dropped.name}")
            if not keep_new:
                continue
        chosen[name] = (mtime, p, lg)
    logs = [lg for _, _, lg in chosen.values()]

    for what, get in (("phone", lambda g: g.device), ("SoC", lambda g: g.soc)):
        _, clash = _one(logs, get)
        if clash:
            a, b = clash
            raise MnasError(f"logs from two different {what}s: {a.path} says {get(a)!r}, {b.path} says {get(b)!r}; "
                            "import each phone's logs into its own table")
    android, clash = _one(logs, lambda g: g.android)
    if clash:
        report.warnings.append(f"Android versions differ: {clash[0].path} says {clash[0].android}, "
                               f"{clash[1].path} says {clash[1].android}")
    phone, _ = _one(logs, lambda g: g.device)
    soc, _ = _one(logs, lambda g: g.soc)
    thread_set = {lg.threads for lg in logs if lg.threads is not None}
    if len(thread_set) > 1:
        raise MnasError(f"logs timed with different thread counts {sorted(thread_set)}: one table, one setting",
                        path=str(root))
    threads = thread_set.pop() if thread_set else manifest.threads
    if threads != manifest.threads:
        report.warnings.append(f"timed with {threads} threads, the kit asked for {manifest.threads}")
    xnn = {lg.xnnpack for lg in logs if lg.xnnpack is not None}
    if len(xnn) > 1:
        raise MnasError("logs timed with and without XNNPACK: one table, one setting", path=str(root))
    xnnpack = xnn.pop() if xnn else True
    masks = {lg.header.get("cpu_mask") for lg in logs} - {None, "", "none"}

    entries: dict[str, Entry] = {}
    nets: list[tuple[str, LoweredNetwork, float]] = []
    for m in manifest.models:
        got = chosen.get(m.file)
        if got is None:
            (report.missing if m.kind == "op" else report.missing_networks).append(m.key or m.file)
            continue
        lg = got[2]
        if m.kind == "op":
            assert m.key is not None
            entries[m.key] = Entry(lg.avg_us / 1000, (lg.std_us or 0.0) / 1000,
                                   lg.count if lg.count is not None else manifest.num_runs)
            report.measured.append(m.key)
        else:
            assert m.spec is not None
            nets.append((m.file, _lower_spec(m.spec, f"{mpath} ({m.file})"), lg.avg_us / 1000))
    if not entries:
        raise MnasError(f"none of the {sum(m.kind == 'op' for m in manifest.models)} ops of the kit has a log "
                        "here: nothing to build a table from", path=str(root))

    dev = device or phone
    if not dev:
        dev = "android"
        report.warnings.append("the logs do not name the phone (no `# mnasdsl-kit device:` line): recorded as "
                               "'android'; pass --device NAME")
    rt = runtime or (f"LiteRT benchmark_model, {'XNNPACK' if xnnpack else 'built-in CPU kernels'}, "
                     f"{threads} thread{'s' if threads != 1 else ''}")
    prov: dict[str, Any] = {
        "source": "LiteRT benchmark_model on an Android phone (mnasdsl phone kit)",
        "imported_from": root.resolve().name, "kit": mpath.resolve().parent.name, "converter": manifest.converter,
        "runtime_version": manifest.runtime, "device_model": phone, "soc": soc, "android": android,
        "threads": threads, "xnnpack": xnnpack, "num_runs": manifest.num_runs,
        "warmup_runs": manifest.warmup_runs, "cpu_mask": ",".join(sorted(m for m in masks if m)) or None,
        "ops_measured": len(entries), "ops_missing": sorted(report.missing),
    }
    prov = {k: v for k, v in prov.items() if v is not None}
    n_ops = len(entries)
    if nets:
        terms = tuple(CALIBRATION_TERMS) if len(nets) >= len(CALIBRATION_TERMS) + 1 else ("scale",)
        prov["calibration"] = {"networks": len(nets), "files": [f for f, _, _ in nets], "terms": list(terms),
                               "measured_ms": [round(ms, 6) for _, _, ms in nets]}
        note = (f"fallback model fitted on {n_ops} measured ops; {', '.join(terms)} fitted on {len(nets)} "
                "whole networks timed in the same run")
        table = Lut(dev, rt, manifest.batch, "ms", prov, entries, None)
        lut = fit_lut(table, [(low, ms) for _, low, ms in nets], terms=terms, note=note)
        assert lut.model is not None
        report.calibration_terms = terms
        report.mape_before_pct = lut.model.fit.get("networks_mape_pct_uncalibrated")
        report.mape_after_pct = lut.model.fit.get("networks_mape_pct_in_sample")
        est = Estimator(lut)
        report.networks = [NetworkResult(f, ms, est.estimate_ms(low)) for f, low, ms in nets]
    else:
        table = Lut(dev, rt, manifest.batch, "ms", prov, entries, None)
        lut = fit_lut(table, note=f"fallback model fitted on {n_ops} measured ops; no calibration networks")
    return lut, report

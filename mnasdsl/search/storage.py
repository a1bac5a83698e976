"""Trial storage: one SQLite database per search, in WAL mode.

A database is mnasdsl's only if it carries mnasdsl's marker: ``PRAGMA application_id`` set to
APPLICATION_ID and a ``format`` row in ``meta``, both written in the transaction that creates the
schema. Any other non-empty file (another program's SQLite database, whatever its tables) is refused
before anything is written to it. Databases of earlier mnasdsl versions (no application id) are
recognized by their schema, which is exactly this one, and get the marker on first open.

Every completed trial is committed on its own, so a kill -9 loses at most the trials still in
flight. Controller state is saved in the same transaction that proposes a round (phase
``proposed``) and again, once it has observed the round's results (phase ``observed``), in the
transaction that proposes the next one, so a resumed search replays exactly what an
uninterrupted one would have done.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..diagnostics import MnasError

SCHEMA_VERSION = 1
APPLICATION_ID = int.from_bytes(b"MNAS", "big")  # 0x4D4E4153, in the SQLite file header
FORMAT = "mnasdsl-search"  # the `format` row in `meta`: the marker a person reading the file sees

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY,
    round INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    decisions TEXT NOT NULL,
    spec TEXT NOT NULL,
    arch_key TEXT NOT NULL,
    status TEXT NOT NULL,            -- pending | done | failed
    acc REAL, latency_ms REAL, params INTEGER, macs INTEGER, reward REAL,
    cached_from INTEGER,
    error TEXT,
    worker TEXT,
    eval_s REAL,
    created REAL NOT NULL,
    finished REAL,
    UNIQUE (round, slot)
);
CREATE INDEX IF NOT EXISTS trials_key ON trials (arch_key, status);
CREATE TABLE IF NOT EXISTS controller (
    round INTEGER NOT NULL,
    phase TEXT NOT NULL,
    state BLOB NOT NULL,
    saved REAL NOT NULL,
    PRIMARY KEY (round, phase)
);
"""


@dataclass
class Trial:
    id: int
    round: int
    slot: int
    decisions: list[int]
    spec: str
    arch_key: str
    status: str
    acc: float | None
    latency_ms: float | None
    params: int | None
    macs: int | None
    reward: float | None
    cached_from: int | None
    error: str | None
    worker: str | None
    eval_s: float | None

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("id", "round", "decisions", "spec", "status", "acc", "latency_ms",
                                             "params", "macs", "reward", "cached_from", "error", "worker", "eval_s")}


Op = tuple[str, tuple[Any, ...]]

_COLS = "id, round, slot, decisions, spec, arch_key, status, acc, latency_ms, params, macs, reward, cached_from, " \
        "error, worker, eval_s"


_STATUSES = ("pending", "done", "failed")
# Columns 7.. of _COLS: acc, latency_ms, params, macs, reward, cached_from, error, worker, eval_s.
_OPTIONAL = ((float,), (float,), (int,), (int,), (float,), (int,), (str,), (str,), (float,))


def _trial(row: tuple[Any, ...], path: Path | str = "search database") -> Trial:
    """A row as a Trial, checked: SQLite keeps whatever a damaged or hand-edited file holds, and a
    string where a number belongs would otherwise surface as a TypeError deep inside a report."""
    r = list(row)
    try:
        r[3] = json.loads(r[3])
    except (TypeError, ValueError):
        r[3] = None

    def fits(v: Any, types: tuple[type, ...]) -> bool:
        if isinstance(v, bool):
            return False
        if float in types and isinstance(v, int):
            return True
        return isinstance(v, types) and (not isinstance(v, float) or math.isfinite(v))

    ok = (all(fits(v, (int,)) for v in r[:3]) and isinstance(r[3], list) and all(fits(d, (int,)) for d in r[3])
          and isinstance(r[4], str) and isinstance(r[5], str) and r[6] in _STATUSES
          and all(v is None or fits(v, t) for v, t in zip(r[7:], _OPTIONAL, strict=True))
          and (r[6] != "done" or all(fits(v, (float,)) for v in (r[7], r[8], r[11]))
               and all(fits(v, (int,)) for v in (r[9], r[10]))))
    if not ok:
        raise MnasError(f"{path}: corrupt search database: trial {r[0]!r} is not a valid row")
    return Trial(*r)


def _statements(script: str) -> list[str]:
    return [st for st in script.split(";") if st.strip()]


def _schema_objects(db: sqlite3.Connection) -> set[tuple[str, str, str | None]]:
    """Tables and indexes of a database as SQLite recorded them (its own ANALYZE tables aside)."""
    return set(db.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_stat%'"))


def _our_schema() -> set[tuple[str, str, str | None]]:
    """What ``_SCHEMA`` leaves in sqlite_master, statement text included (it never changed across mnasdsl
    versions, so it identifies a database written by one of them)."""
    db = sqlite3.connect(":memory:")
    try:
        for st in _statements(_SCHEMA):
            db.execute(st)
        return _schema_objects(db)
    finally:
        db.close()


_OURS = _our_schema()
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


class Store:
    def __init__(self, path: str | Path, *, create: bool, read_only: bool = False) -> None:
        """``read_only`` (reports): opened with SQLite's ``mode=ro`` and no journal pragma, so
        reading a database never converts, checkpoints or otherwise writes it.

        Nothing is written before the file is known to be mnasdsl's (or empty, with ``create``): the
        journal mode is switched only after that."""
        self.path = Path(path)
        if not create and not self.path.exists():
            raise MnasError(f"{self.path}: no such search database")
        if create:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise MnasError(f"{self.path}: cannot create directory: {e.strerror or e}") from None
        self._sniff()
        try:
            if read_only and not create:
                self.db = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True, timeout=30,
                                          isolation_level=None)
            else:
                self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:  # sqlite's message may quote damaged bytes
            raise MnasError(f"{self.path}: not a usable mnasdsl search database ({e})") from None
        try:
            self._claim(create and not read_only, upgrade=not read_only)
            if not read_only:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
            self._check()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            self.db.close()
            raise MnasError(f"{self.path}: not a usable mnasdsl search database ({e})") from None
        except BaseException:
            self.db.close()  # a refused file: closing removes the -wal/-shm that reading a WAL database made
            raise

    def _sniff(self) -> None:
        """Refuse a non-empty file that is not SQLite at all, before SQLite opens it."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except OSError:
            return  # missing (created next), or a directory: SQLite's own error names it
        if head and head != _SQLITE_MAGIC:
            raise self._foreign("not a SQLite file")

    def _identify(self) -> Literal["ours", "legacy", "empty"]:
        """``ours``, ``legacy`` (an earlier mnasdsl's, without the marker) or ``empty`` (a 0-byte file);
        anything else is refused, by reading alone."""
        app = int(self.db.execute("PRAGMA application_id").fetchone()[0])
        objects = _schema_objects(self.db)
        if app == APPLICATION_ID:
            try:
                row = self.db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            except sqlite3.OperationalError:  # no meta table, or not one of key and value
                row = None
            if row is not None and row[0] == json.dumps(FORMAT):
                return "ours"
            raise self._foreign(f"it has mnasdsl's application id {APPLICATION_ID:#x} but no `format` row "
                                f"{FORMAT!r} in a `meta` table")
        if app != 0:
            raise self._foreign(f"SQLite application id {app:#x}, not mnasdsl's {APPLICATION_ID:#x}")
        if not objects and not _size(self.path):  # 0 bytes (None: SQLite has not created it yet)
            return "empty"
        if objects == _OURS and self.get_meta("schema_version") in (None, SCHEMA_VERSION):
            return "legacy"
        raise self._foreign("no mnasdsl marker, and its tables are not those of an earlier mnasdsl's search"
                             if objects else "a SQLite database without tables or mnasdsl's marker")

    def _foreign(self, why: str) -> MnasError:
        return MnasError(f"{self.path}: not an mnasdsl search database ({why}); it was left untouched: "
                         "a search needs a file of its own (a new path, or one it wrote)")

    def _claim(self, create: bool, *, upgrade: bool) -> None:
        """Refuse a file that is not mnasdsl's; with ``create``, give an empty one the schema and the
        marker, and (``upgrade``) mark an earlier mnasdsl's database, each in one transaction."""
        state = self._identify()
        if state == "ours" or (state == "legacy" and not upgrade):
            return
        if state == "empty" and not create:
            raise self._foreign("an empty file")
        with self.tx():  # again under the write lock: another process may have created it meanwhile
            state = self._identify()
            if state == "empty":
                for st in _statements(_SCHEMA):
                    self.db.execute(st)
            if state in ("empty", "legacy"):
                self.db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)", (json.dumps(FORMAT),))

    def _check(self) -> None:
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "trials", "controller"} <= tables:
            raise MnasError(f"{self.path}: not an mnasdsl search database (missing tables)")
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(trials)")}
        if not set(_COLS.split(", ")) <= columns:
            raise MnasError(f"{self.path}: not an mnasdsl search database (the trials table lacks columns)")
        v = self.get_meta("schema_version")
        if v is not None and v != SCHEMA_VERSION:
            raise MnasError(f"{self.path}: database schema version {v}, this mnasdsl reads {SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    # -- metadata ------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except (TypeError, ValueError):
            raise MnasError(f"{self.path}: corrupt search database: metadata `{key}` is not JSON") from None

    def set_meta(self, items: dict[str, Any]) -> None:
        with self.tx():
            for k, v in items.items():
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, json.dumps(v)))

    def reset(self) -> None:
        """Forget the search (trials, controller states, metadata) in one transaction, keeping the file
        and its marker."""
        with self.tx():
            for table in ("trials", "controller"):
                self.db.execute(f"DELETE FROM {table}")
            self.db.execute("DELETE FROM meta WHERE key != 'format'")

    # -- transactions --------------------------------------------------------------------------
    def tx(self) -> _Tx:
        return _Tx(self.db)

    # -- trials --------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT status, COUNT(*) FROM trials GROUP BY status").fetchall())

    def total(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM trials").fetchone()[0])

    def completed(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM trials WHERE status != 'pending'").fetchone()[0])

    def last_round(self) -> int:
        row = self.db.execute("SELECT MAX(round) FROM trials").fetchone()
        return -1 if row[0] is None else int(row[0])

    def add_round(self, rnd: int, rows: list[tuple[list[int], str, str]], state: bytes,
                  prelude: list[Op] | None = None) -> list[Trial]:
        """Insert a round's pending trials and the controller state that proposed them, atomically
        (after ``prelude``: the previous round's deferred last writes, so one commit serves both)."""
        ids: list[Trial] = []
        now = time.time()
        with self.tx():
            for sql, args in prelude or ():
                self.db.execute(sql, args)
            for slot, (dec, spec, key) in enumerate(rows):
                cur = self.db.execute(
                    "INSERT INTO trials (round, slot, decisions, spec, arch_key, status, created) "
                    "VALUES (?, ?, ?, ?, ?, 'pending', ?)", (rnd, slot, json.dumps(dec), spec, key, now))
                ids.append(Trial(int(cur.lastrowid or 0), rnd, slot, list(dec), spec, key, "pending", None, None,
                                 None, None, None, None, None, None, None))
            self.db.execute("INSERT OR REPLACE INTO controller VALUES (?, 'proposed', ?, ?)", (rnd, state, now))
            self.db.execute("DELETE FROM controller WHERE round < ?", (rnd - 1,))  # keep the last two rounds
        return ids

    def finish(self, trial_id: int, *, status: str, acc: float | None = None, latency_ms: float | None = None,
               params: int | None = None, macs: int | None = None, reward: float | None = None,
               cached_from: int | None = None, error: str | None = None, worker: str | None = None,
               eval_s: float | None = None, defer: list[Op] | None = None) -> None:
        """Record a finished trial: committed at once, or appended to ``defer`` for a later commit."""
        op = ("UPDATE trials SET status=?, acc=?, latency_ms=?, params=?, macs=?, reward=?, cached_from=?, "
              "error=?, worker=?, eval_s=?, finished=? WHERE id=?",
              (status, acc, latency_ms, params, macs, reward, cached_from, error, worker, eval_s, time.time(),
               trial_id))
        if defer is not None:
            defer.append(op)
            return
        with self.tx():
            self.db.execute(*op)

    def observed(self, rnd: int, state: bytes, defer: list[Op] | None = None) -> None:
        op = ("INSERT OR REPLACE INTO controller VALUES (?, 'observed', ?, ?)", (rnd, state, time.time()))
        if defer is not None:
            defer.append(op)
            return
        with self.tx():
            self.db.execute(*op)

    def run_ops(self, ops: list[Op]) -> None:
        if ops:
            with self.tx():
                for sql, args in ops:
                    self.db.execute(sql, args)

    def done_by_key(self) -> dict[str, Trial]:
        """First finished evaluation of each architecture (for evaluating identical specs once)."""
        out: dict[str, Trial] = {}
        for r in self.db.execute(f"SELECT {_COLS} FROM trials WHERE status='done' AND cached_from IS NULL "
                                 "ORDER BY id"):
            t = _trial(r, self.path)
            out.setdefault(t.arch_key, t)
        return out

    def latest_state(self) -> tuple[int, str, bytes] | None:
        row = self.db.execute(
            "SELECT round, phase, state FROM controller ORDER BY round DESC, phase = 'observed' DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        if isinstance(row[0], bool) or not isinstance(row[0], int) or row[1] not in ("proposed", "observed") \
                or not isinstance(row[2], bytes):
            raise MnasError(f"{self.path}: corrupt search database: bad controller state row")
        return row[0], row[1], row[2]

    def round_trials(self, rnd: int) -> list[Trial]:
        return [_trial(r, self.path) for r in self.db.execute(
            f"SELECT {_COLS} FROM trials WHERE round=? ORDER BY slot", (rnd,))]

    def cached(self, arch_key: str) -> Trial | None:
        row = self.db.execute(
            f"SELECT {_COLS} FROM trials WHERE arch_key=? AND status='done' AND cached_from IS NULL "
            "ORDER BY id LIMIT 1", (arch_key,)).fetchone()
        return None if row is None else _trial(row, self.path)

    def trials(self, status: str | None = None) -> list[Trial]:
        if status is None:
            rows = self.db.execute(f"SELECT {_COLS} FROM trials ORDER BY id")
        else:
            rows = self.db.execute(f"SELECT {_COLS} FROM trials WHERE status=? ORDER BY id", (status,))
        return [_trial(r, self.path) for r in rows]

    def iter_done(self) -> Iterator[Trial]:
        for r in self.db.execute(f"SELECT {_COLS} FROM trials WHERE status='done' ORDER BY id"):
            yield _trial(r, self.path)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")

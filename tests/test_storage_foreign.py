"""``search --db`` writes only into a database that carries mnasdsl's marker (or an empty file); any
other file is refused before anything is written: same bytes, same journal mode, no -wal/-shm."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnasdsl.diagnostics import MnasError
from mnasdsl.search.storage import _SCHEMA, APPLICATION_ID, FORMAT, Store

from .conftest import SPECS
from .conftest import run_cli as run

SPACE = str(SPECS / "spaces" / "mnasnet.mnas")
SEARCH = ["--trials", "4", "--target-ms", "60", "--json"]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _siblings(p: Path) -> list[str]:
    return sorted(q.name for q in p.parent.iterdir() if q.name.startswith(p.name))


def _sqlite(p: Path, *sql: str, wal: bool = False) -> None:
    con = sqlite3.connect(p, isolation_level=None)
    if wal:
        con.execute("PRAGMA journal_mode=WAL")
    for s in sql:
        con.execute(s)
    con.close()


def _journal(p: Path) -> str:
    con = sqlite3.connect(p)
    try:
        return str(con.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        con.close()


def _marker(p: Path) -> tuple[int, object]:
    con = sqlite3.connect(p)
    try:
        app = con.execute("PRAGMA application_id").fetchone()[0]
        row = con.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        return app, json.loads(row[0]) if row else None
    finally:
        con.close()


def _our_tables(*, app: int = 0) -> list[str]:
    return [*(s for s in _SCHEMA.split(";") if s.strip()), f"PRAGMA application_id = {app}"]


# Each makes a non-empty file that is not mnasdsl's: the reproducer first.
FOREIGN: dict[str, Callable[[Path], None]] = {
    "meta table of its own": lambda p: _sqlite(
        p, "CREATE TABLE meta (key, value)", "INSERT INTO meta VALUES ('owner', 'alice'), ('api_version', '3')"),
    "meta table of its own, WAL": lambda p: _sqlite(
        p, "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO meta VALUES ('owner', 'alice')", wal=True),
    "other tables": lambda p: _sqlite(p, "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)",
                                      "INSERT INTO notes (body) VALUES ('keep me')"),
    "mnasdsl's table names, other columns": lambda p: _sqlite(
        p, "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)", "CREATE TABLE trials (id INTEGER)",
        "CREATE TABLE controller (round INTEGER)", "INSERT INTO meta VALUES ('schema_version', '1')"),
    "mnasdsl's schema and another application id": lambda p: _sqlite(p, *_our_tables(app=0x12345678)),
    "mnasdsl's schema plus a table": lambda p: _sqlite(p, *_our_tables(), "CREATE TABLE extra (x)"),
    "mnasdsl's application id, no format row": lambda p: _sqlite(
        p, f"PRAGMA application_id = {APPLICATION_ID}", "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
        "INSERT INTO meta VALUES ('owner', 'alice')"),
    "a SQLite file without tables": lambda p: _sqlite(p, "PRAGMA user_version = 7"),
    "not SQLite": lambda p: p.write_bytes(b"id,name\n1,alice\n" * 50),
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_search_refuses_a_foreign_file_untouched(capsys, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "theirs.db"
    FOREIGN[kind](db)
    sha, names = _sha(db), _siblings(db)
    journal = _journal(db) if kind != "not SQLite" else None
    rc, out, err = run(capsys, "search", SPACE, "--db", str(db), *SEARCH)
    assert rc == 1 and out == "", err
    assert str(db) in err and "not an mnasdsl search database" in err and "Traceback" not in err
    assert _sha(db) == sha and _siblings(db) == names == ["theirs.db"]
    if journal is not None:
        assert _journal(db) == journal
    rc, _, err = run(capsys, "report", str(db))  # reading refuses it too, and writes nothing either
    assert rc == 1 and "not an mnasdsl search database" in err
    assert _sha(db) == sha


def test_the_reproducer_keeps_its_rows_and_journal_mode(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "app.sqlite"
    FOREIGN["meta table of its own"](db)
    rc, _, err = run(capsys, "search", SPACE, "--db", str(db), *SEARCH)
    assert rc == 1 and "left untouched" in err
    con = sqlite3.connect(db)
    assert con.execute("SELECT key, value FROM meta ORDER BY key").fetchall() == [("api_version", "3"),
                                                                                ("owner", "alice")]
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["meta"]
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()


@pytest.mark.parametrize("exists", [False, True], ids=["missing", "empty-file"])
def test_a_new_or_empty_file_becomes_a_marked_database(capsys, tmp_path: Path, exists: bool) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "s.db"
    if exists:
        db.touch()
    rc, out, err = run(capsys, "search", SPACE, "--db", str(db), *SEARCH)
    assert rc == 0, err
    assert json.loads(out)["done"] == 4
    assert _marker(db) == (APPLICATION_ID, FORMAT) and _journal(db) == "wal"
    rc, out, err = run(capsys, "search", SPACE, "--db", str(db), *SEARCH[:1], "6", *SEARCH[2:], "--resume")
    assert rc == 0 and json.loads(out)["done"] == 6, err


def _strip_marker(db: Path) -> None:
    """What an mnasdsl before the marker wrote: the same schema and rows, no application id or format row."""
    _sqlite(db, "PRAGMA application_id = 0", "DELETE FROM meta WHERE key = 'format'")


def test_an_earlier_mnasdsl_database_is_read_and_then_marked(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "old.db"
    assert run(capsys, "search", SPACE, "--db", str(db), *SEARCH)[0] == 0
    _strip_marker(db)
    trials = sqlite3.connect(db).execute("SELECT * FROM trials ORDER BY id").fetchall()
    assert _marker(db) == (0, None) and len(trials) == 4
    sha = _sha(db)
    rc, out, err = run(capsys, "report", str(db), "--json")  # read-only: recognized, not upgraded
    assert rc == 0 and json.loads(out)["trials"] == 4, err
    assert _sha(db) == sha and _marker(db) == (0, None)
    rc, out, err = run(capsys, "search", SPACE, "--db", str(db), *SEARCH[:1], "6", *SEARCH[2:], "--resume")
    assert rc == 0 and json.loads(out)["done"] == 6, err
    assert _marker(db) == (APPLICATION_ID, FORMAT)
    assert sqlite3.connect(db).execute("SELECT * FROM trials ORDER BY id LIMIT 4").fetchall() == trials


def test_reset_keeps_the_marker(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    s = Store(db, create=True)
    s.set_meta({"space": "x", "schema_version": 1})
    s.reset()
    assert s.get_meta("space") is None and s.get_meta("format") == FORMAT
    s.close()
    Store(db, create=True).close()  # still mnasdsl's
    assert _marker(db) == (APPLICATION_ID, FORMAT)


_NAME = st.sampled_from(["meta", "trials", "controller", "t", "notes"])
_COLUMNS = st.lists(st.sampled_from(["key", "value", "id", "round", "status", "x"]), min_size=1, max_size=4,
                    unique=True)
_VALUE = st.one_of(st.none(), st.integers(-3, 3))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tables=st.dictionaries(_NAME, st.tuples(_COLUMNS, st.lists(_VALUE, max_size=3)), min_size=1, max_size=3),
       app=st.sampled_from([0, 1, APPLICATION_ID]), wal=st.booleans())
def test_any_foreign_database_is_refused_before_a_write(tmp_path: Path,
                                                        tables: dict[str, tuple[list[str], list[int | None]]],
                                                        app: int, wal: bool) -> None:
    """Whatever tables another program keeps (mnasdsl's names included), under whatever application id."""
    db = tmp_path / "f.db"
    db.unlink(missing_ok=True)
    sql = [f"PRAGMA application_id = {app}"]
    for name, (cols, values) in tables.items():
        sql.append(f"CREATE TABLE {name} ({', '.join(cols)})")
        sql += [f"INSERT INTO {name} ({cols[0]}) VALUES ({'NULL' if v is None else v})" for v in values]
    _sqlite(db, *sql, wal=wal)
    sha, journal = _sha(db), _journal(db)
    with pytest.raises(MnasError, match="not an mnasdsl search database"):
        Store(db, create=True)
    assert _sha(db) == sha and _journal(db) == journal and _siblings(db) == ["f.db"]

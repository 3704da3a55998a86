"""results.jsonl's SQLite index (``results.jsonl.index.sqlite``): the only code of the package that speaks SQL.

Per line of the file its byte offset, run key, latent and status; per (run, latent) its last line; per (line,
scorer) the compact row (:data:`~.tables.ROW_COLUMNS`) that the table, summary and judge check are built from.
Derived data: rebuilt from the JSONL when missing, stale, foreign or damaged, and never fsynced (the JSONL is).
The file (:mod:`.file`) asks it questions through the methods below; none of them returns a record (the file
reads those by offset).

Damage: the index is written with ``synchronous=OFF``, so a power loss may leave it malformed (SQLite says so).
A damaged or non-database file is moved to ``results.jsonl.index.sqlite.damaged`` with one warning and rebuilt
from the JSONL, whether the damage shows when it is opened or at a later query. Staleness: the index keeps the
file's size and mtime at its last update and the hash of its first line, so an edit in place (same length) or two
lines swapped is seen and the index rebuilt.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd

from .tables import ROW_COLUMNS, record_rows

log = logging.getLogger("sae_lens_autointerp")
T = TypeVar("T")

#: The index beside results.jsonl (derived data: rebuilt from the JSONL when missing, stale, foreign or damaged).
INDEX_SUFFIX = ".index.sqlite"
#: Where a damaged index is moved (one copy, the last one) before it is rebuilt.
DAMAGED_SUFFIX = ".damaged"
# 2: paired lifts, answer counts of every scorer; 3: how each lift's interval was made; 4: the file's stamp and
# first-line hash (staleness), numbers coerced; 5: each row's hold-out status
INDEX_FORMAT = "5"
_INT64 = 2**63
# SQLITE_CORRUPT, SQLITE_NOTADB (primary codes): the file is damaged or not a database. Not SQLITE_BUSY / FULL /
# READONLY (OperationalError), which say nothing about the index's content.
_DAMAGE_CODES = (11, 26)
_warned: set[str] = set()
_ROW_SQL_TYPES = {
    "latent": "INTEGER",
    "n_examples": "INTEGER",
    "n_failed": "INTEGER",
    "signal": "INTEGER",
    "controlled": "INTEGER",
    "has_heuristic": "INTEGER",
    "scorer": "TEXT",
    "metric": "TEXT",
    "lift_method": "TEXT",
    "explanation": "TEXT",
    "error": "TEXT",
    "provider": "TEXT",
    "holdout": "TEXT",
    "heuristic": "TEXT",
    "judge_kind": "TEXT",
    "answers": "TEXT",
}


def _status(record: Mapping[str, Any]) -> str:
    if record.get("incomplete"):
        return "incomplete"
    return "skipped" if record.get("skipped") else "done"


#: Which of a run's latest lines :meth:`ResultsIndex.latest` returns: every one, the finished ones (done or
#: skipped), the incomplete ones, or the skipped ones.
Status = Literal["any", "finished", "incomplete", "skipped"]
_STATUS_SQL = {
    "any": "",
    "finished": " AND status != 'incomplete'",
    "incomplete": " AND status = 'incomplete'",
    "skipped": " AND status = 'skipped'",
}


class ResultsIndex:
    """results.jsonl's SQLite index: per line its offset, run key, latent and status; per (run, latent) its last
    line; per (line, scorer) the compact row the table, summary and judge check are built from. Derived data:
    its writes are not fsynced (the JSONL is), opening it catches up with the lines it has not seen, and a
    damaged index is moved aside and rebuilt (module docstring)."""

    def __init__(self, jsonl: Path) -> None:
        self.jsonl = jsonl
        self.path = jsonl.with_name(jsonl.name + INDEX_SUFFIX)
        self._inode: int | None = None
        self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        """The index on disk; a damaged or non-database file there is moved aside first; in memory (built from
        the file) where the folder cannot hold one (read-only, or the path is a folder)."""
        try:
            return self._connect_disk()
        except sqlite3.DatabaseError as exc:
            if _damaged(exc) and self._move_aside(exc):
                try:
                    return self._connect_disk()
                except sqlite3.Error:
                    pass
        except sqlite3.Error:
            pass
        self._inode = None  # a read-only folder: an index in memory, built from the file
        return self._connect(":memory:")

    def _connect_disk(self) -> sqlite3.Connection:
        db = self._connect(str(self.path))
        try:
            db.execute("SELECT count(*) FROM meta").fetchone()  # reads the schema: a non-database fails here
            self._inode = os.stat(self.path).st_ino
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _connect(where: str) -> sqlite3.Connection:
        db = sqlite3.connect(where, check_same_thread=False, isolation_level=None, timeout=60)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            db.execute("CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT)")
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, exc: BaseException) -> bool:
        """Move the damaged index (and its WAL) to ``.damaged``, warning once; False where it cannot be moved."""
        aside = self.path.with_name(self.path.name + DAMAGED_SUFFIX)
        try:
            if self._inode is not None and os.stat(self.path).st_ino != self._inode:
                return True  # another connection replaced it already: open the new one
            os.replace(self.path, aside)
            for extra in ("-wal", "-shm"):
                Path(str(self.path) + extra).unlink(missing_ok=True)
        except FileNotFoundError:
            return True
        except OSError:
            _warn_once(
                str(self.path),
                f"{self.path} is damaged ({exc}) and cannot be replaced here; indexing "
                f"{self.jsonl.name} in memory instead (delete {self.path.name} to stop this)",
            )
            return False
        _warn_once(
            str(self.path),
            f"{self.path} was damaged ({exc}): moved to {aside.name} and rebuilt from "
            f"{self.jsonl.name} (the index is derived data; nothing is lost)",
        )
        return True

    def _rebuild(self, exc: BaseException) -> None:
        """The index was found damaged by a query: move it aside, reopen (empty) and index the whole file."""
        try:
            self.db.close()
        except sqlite3.Error:
            pass
        if self._inode is None or not self._move_aside(exc):
            self._inode = None
            self.db = self._connect(":memory:")
        else:
            self.db = self._open()
        self._catch_up()

    def _healing(self, ask: Callable[[], T]) -> T:
        """``ask()``; when it finds the index damaged, ``ask()`` again on the index rebuilt from the file."""
        try:
            return ask()
        except sqlite3.DatabaseError as exc:
            if not _damaged(exc):
                raise
            self._rollback()
            self._rebuild(exc)
            return ask()

    def _rollback(self) -> None:
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _create(self) -> None:
        cols = ", ".join(f'"{c}" {_ROW_SQL_TYPES.get(c, "REAL")}' for c in ROW_COLUMNS)
        self.db.executescript(
            f"""
            DROP TABLE IF EXISTS lines; DROP TABLE IF EXISTS latest; DROP TABLE IF EXISTS rows;
            CREATE TABLE lines(off INTEGER PRIMARY KEY, len INTEGER, run_key TEXT, latent INTEGER, status TEXT);
            CREATE TABLE latest(run_key TEXT, latent INTEGER, off INTEGER, len INTEGER, status TEXT, text TEXT,
                                PRIMARY KEY(run_key, latent)) WITHOUT ROWID;
            CREATE TABLE rows(off INTEGER, k INTEGER, {cols}, PRIMARY KEY(off, k)) WITHOUT ROWID;
            DELETE FROM meta;
            """
        )
        self.db.execute("INSERT INTO meta VALUES('format', ?), ('indexed', '0')", (INDEX_FORMAT,))

    def _stale(self) -> bool:
        """The index does not describe this file: another format; a file shorter than what it indexed; the same
        size as indexed but another mtime than at indexing (an edit in place, lines swapped); another first
        line; or its last indexed line is not there (the file was replaced)."""
        if self._meta("format") != INDEX_FORMAT:
            return True
        indexed = int(self._meta("indexed") or 0)
        try:
            st = os.stat(self.jsonl)
        except FileNotFoundError:
            return indexed != 0
        if st.st_size < indexed:
            return True
        stamp = self._meta("stamp")
        if stamp is not None:
            size, _, mtime = stamp.partition(":")
            if int(size) == indexed == st.st_size:
                return int(mtime) != st.st_mtime_ns  # unchanged since indexed, or edited without growing
        head = self._meta("head")
        if head is not None and head != _head_hash(self.jsonl):
            return True
        last = self.db.execute("SELECT off, len FROM lines ORDER BY off DESC LIMIT 1").fetchone()
        if last is None:
            return indexed != 0
        with self.jsonl.open("rb") as fh:
            fh.seek(last[0])
            line = fh.read(last[1])
        try:
            return not isinstance(json.loads(line), dict) or not line.endswith(b"\n")
        except (ValueError, RecursionError):
            return True

    def _mark(self, indexed: int) -> None:
        """Record how far the file is indexed, with its size and mtime when nothing else was appended since."""
        self.db.execute("UPDATE meta SET v=? WHERE k='indexed' AND CAST(v AS INTEGER) < ?", (str(indexed), indexed))
        self._mark_stamp(indexed)

    def _mark_stamp(self, indexed: int | None = None) -> None:
        indexed = int(self._meta("indexed") or 0) if indexed is None else indexed
        try:
            st = os.stat(self.jsonl)
        except FileNotFoundError:
            return
        stamp = f"{indexed}:{st.st_mtime_ns}"
        if st.st_size == indexed and self._meta("stamp") != stamp:  # (a reader writes nothing)
            self.db.execute("INSERT OR REPLACE INTO meta VALUES('stamp', ?)", (stamp,))

    def restamp(self) -> None:
        """The file was cut back to what is indexed (a torn tail moved aside): record its new mtime, so that the
        cut is not taken for an edit (which would rebuild the whole index)."""

        def ask() -> None:
            if int(self._meta("indexed") or 0) == self.jsonl.stat().st_size:
                self._mark_stamp()

        self._healing(ask)

    def catch_up(self) -> int:
        """Index the complete lines past what is indexed; returns how many lines were unreadable."""
        return self._healing(self._catch_up)

    def _catch_up(self) -> int:
        if self._stale():
            self._create()
        indexed = int(self._meta("indexed") or 0)
        if not self.jsonl.is_file() or self.jsonl.stat().st_size <= indexed:
            return 0
        bad = 0
        self.db.execute("BEGIN")
        try:
            with self.jsonl.open("rb") as fh:
                fh.seek(indexed)
                off = indexed
                for line in fh:
                    if not line.endswith(b"\n"):
                        break  # a torn tail: repair() moves it aside
                    try:  # anything wrong with one line (deep nesting, a latent past int64, ...) skips it alone
                        entries = _entries(json.loads(line), off, len(line))
                    except Exception:
                        entries = None
                    if entries is None:
                        bad += 1  # a torn, foreign or crafted line: its latent runs again
                    else:
                        self._write(entries)
                        if off == 0:
                            self.db.execute("INSERT OR REPLACE INTO meta VALUES('head', ?)", (_hash(line),))
                    off += len(line)
            self._mark(off)
        except BaseException:
            self._rollback()
            raise
        self.db.execute("COMMIT")
        return bad

    def _write(self, entries: _Entries) -> None:
        line, latest, rows = entries
        self.db.execute("INSERT OR IGNORE INTO lines VALUES(?,?,?,?,?)", line)
        if latest is not None:
            self.db.execute(
                "INSERT INTO latest VALUES(?,?,?,?,?,?) ON CONFLICT(run_key, latent) DO UPDATE SET off=excluded.off, "
                "len=excluded.len, status=excluded.status, text=excluded.text WHERE excluded.off > latest.off",
                latest,
            )
        if rows:
            marks = ",".join("?" * (len(ROW_COLUMNS) + 2))
            self.db.executemany(f"INSERT OR IGNORE INTO rows VALUES({marks})", rows)

    def add(self, record: Mapping[str, Any], off: int, length: int) -> None:
        """Index one line just appended at ``off`` (the caller holds the file's lock), in its own transaction:
        a run stopped between two appends (KeyboardInterrupt leaves the runner's ``finally`` unrun) must not
        leave a transaction open that locks the index for the next run (synchronous=OFF: no fsync here).
        A damaged index is rebuilt from the file (which holds the line already)."""
        try:
            entries = _entries(record, off, length)
        except Exception:
            entries = None  # (never for records the pipeline writes) the next catch_up counts it unreadable
        self._writing(lambda: self._add(entries, off + length, off == 0))

    def _writing(self, write: Callable[[], None]) -> None:
        """``write()`` healed like a question; a full disk or a read-only folder raised as the OSError that the
        file's writer turns into one line."""
        try:
            self._healing(write)
        except sqlite3.OperationalError as exc:
            raise _as_os_error(exc, self.path) from exc

    def _add(self, entries: _Entries | None, end: int, first: bool) -> None:
        self.db.execute("BEGIN")
        try:
            if entries is not None:
                self._write(entries)
                if first:
                    self.db.execute("INSERT OR REPLACE INTO meta VALUES('head', ?)", (_head_hash(self.jsonl),))
            self.db.execute("UPDATE meta SET v=? WHERE k='indexed' AND CAST(v AS INTEGER) < ?", (str(end), end))
        except BaseException:
            self._rollback()  # the line is in the file: the next catch_up indexes it
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        """Close the connection (the last one to close checkpoints the WAL into the index)."""
        try:
            self.db.close()
        except sqlite3.Error:
            pass

    def commit(self) -> None:
        """Every :meth:`add` commits; at the file's sync step (every :data:`~.file.SYNC_EVERY_S` and at close) the
        index records the file's size and mtime, which tell the next open that nothing changed since."""
        self._writing(self._mark_stamp)

    # ------------------------------------------------------------------ questions

    def lines(self) -> list[tuple[int, int]]:
        """``(offset, length)`` of every readable line, in file order."""
        return self._healing(
            lambda: [(int(off), int(n)) for off, n in self.db.execute("SELECT off, len FROM lines ORDER BY off")]
        )

    def latest(
        self, run_key: str, status: Status = "any", order: Literal["off", "latent"] = "off"
    ) -> list[tuple[int, int, int]]:
        """``(latent, offset, length)`` of the last line of each latent of one run whose status is ``status``,
        ordered by offset or by latent."""
        sql = f"SELECT latent, off, len FROM latest WHERE run_key=?{_STATUS_SQL[status]} ORDER BY {order}"
        return self._healing(lambda: [(int(lat), int(off), int(n)) for lat, off, n in self.db.execute(sql, (run_key,))])

    def explanation_texts(self, run_key: str, latents: Iterable[int]) -> dict[int, str]:
        """The usable explanation texts of the finished latents among ``latents``."""
        wanted = [int(x) for x in latents]
        marks = ",".join("?" * len(wanted))
        sql = (
            f"SELECT latent, text FROM latest WHERE run_key=? AND status = 'done' AND text IS NOT NULL "
            f"AND latent IN ({marks})"
        )
        return self._healing(lambda: {int(lat): str(text) for lat, text in self.db.execute(sql, (run_key, *wanted))})

    def run_keys(self) -> list[str]:
        """The run keys of the file's lines."""
        sql = "SELECT run_key FROM lines WHERE run_key IS NOT NULL GROUP BY run_key"
        return self._healing(lambda: [k for (k,) in self.db.execute(sql)])

    def last_run_key(self) -> str | None:
        """The run key of the file's last line that has one."""
        sql = "SELECT run_key FROM lines WHERE run_key IS NOT NULL ORDER BY off DESC LIMIT 1"

        def ask() -> str | None:
            last = self.db.execute(sql).fetchone()
            return last[0] if last else None

        return self._healing(ask)

    def rows(self, columns: Sequence[str]) -> pd.DataFrame:
        """Every compact row, with its line's offset ``off`` and its place ``k`` in the record, and ``columns``."""
        select = ", ".join(f'"{c}"' for c in ["off", "k", *columns])

        def ask() -> pd.DataFrame:
            try:
                return pd.read_sql_query(f"SELECT {select} FROM rows", self.db)
            except pd.errors.DatabaseError as exc:  # pandas wraps SQLite's error: a damaged index is seen by its cause
                if isinstance(exc.__cause__, sqlite3.DatabaseError):
                    raise exc.__cause__ from None
                raise

        return self._healing(ask)


#: What one line puts in the index: its ``lines`` row, its ``latest`` row (None without a run key and a
#: latent) and its compact rows.
_Entries = tuple[tuple[Any, ...], "tuple[Any, ...] | None", list[tuple[Any, ...]]]


def _entries(record: Any, off: int, length: int) -> _Entries | None:
    """The index's rows for one decoded line, computed before anything is written (so a line that cannot be
    indexed leaves nothing behind); None for a line that is not a record; raises on a malformed record."""
    if not isinstance(record, dict):
        return None
    latent = record.get("latent")
    if isinstance(latent, int) and not isinstance(latent, bool):
        if not -_INT64 <= latent < _INT64:
            raise ValueError(f"latent {latent} does not fit an index")
    else:
        latent = None
    status = _status(record)
    run_key = record.get("run_key")
    run_key = str(run_key) if run_key is not None else None
    line = (off, length, run_key, latent, status)
    if latent is None:
        return line, None, []
    latest = None
    if run_key is not None:
        text = _usable_text(record.get("explanation")) if status == "done" else None
        latest = (run_key, latent, off, length, status, text)
    rows = [(off, k, *(_sql_value(row[c]) for c in ROW_COLUMNS)) for k, row in enumerate(record_rows(record))]
    return line, latest, rows


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    """The error says the index file is damaged or not a database (not busy, full or read-only)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return type(exc) is sqlite3.DatabaseError
    return code & 0xFF in _DAMAGE_CODES


def _as_os_error(exc: sqlite3.OperationalError, path: Path) -> Exception:
    """A full disk or a read-only file system as the OSError that writing a file would raise (what the file's
    writer turns into a one-line error); any other error as it is."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code == 13:  # SQLITE_FULL
        return OSError(errno.ENOSPC, f"{exc}", str(path))
    if code == 8:  # SQLITE_READONLY
        return OSError(errno.EROFS, f"{exc}", str(path))
    return exc


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning("%s", message)


def _hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()[:32]


def _head_hash(jsonl: Path) -> str | None:
    """The hash of the file's first line (None when it has no complete first line)."""
    try:
        with jsonl.open("rb") as fh:
            line = fh.readline()
    except FileNotFoundError:
        return None
    return _hash(line) if line.endswith(b"\n") else None


def _sql_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, int) and not -_INT64 <= value < _INT64:
        return None  # past SQLite's INTEGER (the rows' numbers are coerced before: not expected)
    if value is not None and not isinstance(value, (int, float, str)):
        return str(value)
    return value


def _usable_text(explanation: Any) -> str | None:
    if not isinstance(explanation, Mapping) or explanation.get("failed"):
        return None
    return explanation.get("text") or None

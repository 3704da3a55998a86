"""results.jsonl's SQLite index (``results.jsonl.index.sqlite``): the only code of the package that speaks SQL.

Per line of the file its byte offset, run key, latent and status; per (run, latent) its last line; per (line,
scorer) the compact row (:data:`~.tables.ROW_COLUMNS`) that the table, summary and judge check are built from.
Derived data: rebuilt from the JSONL when missing, stale or foreign, and never fsynced (the JSONL is). The file
(:mod:`.file`) asks it questions through the methods below; none of them returns a record (the file reads
those by offset).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from .tables import ROW_COLUMNS, record_rows

#: The index beside results.jsonl (derived data: rebuilt from the JSONL when missing, stale or foreign).
INDEX_SUFFIX = ".index.sqlite"
INDEX_FORMAT = "3"  # 2: paired lifts, answer counts of every scorer; 3: how each lift's interval was made
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
    its writes are not fsynced (the JSONL is), and opening it catches up with the lines it has not seen."""

    def __init__(self, jsonl: Path) -> None:
        self.jsonl = jsonl
        self.path = jsonl.with_name(jsonl.name + INDEX_SUFFIX)
        try:
            self.db = self._connect(str(self.path))
        except sqlite3.Error:  # a read-only folder: an index in memory, built from the file
            self.db = self._connect(":memory:")

    @staticmethod
    def _connect(where: str) -> sqlite3.Connection:
        db = sqlite3.connect(where, check_same_thread=False, isolation_level=None, timeout=60)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT)")
        return db

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
        """The index does not describe this file: another format, a file shorter than what it indexed, or its
        last indexed line is not there (the file was replaced)."""
        if self._meta("format") != INDEX_FORMAT:
            return True
        indexed = int(self._meta("indexed") or 0)
        size = self.jsonl.stat().st_size if self.jsonl.is_file() else 0
        if size < indexed:
            return True
        last = self.db.execute("SELECT off, len FROM lines ORDER BY off DESC LIMIT 1").fetchone()
        if last is None:
            return indexed != 0
        with self.jsonl.open("rb") as fh:
            fh.seek(last[0])
            line = fh.read(last[1])
        try:
            return not isinstance(json.loads(line), dict) or not line.endswith(b"\n")
        except ValueError:
            return True

    def catch_up(self) -> int:
        """Index the complete lines past what is indexed; returns how many lines were unreadable."""
        if self._stale():
            self._create()
        indexed = int(self._meta("indexed") or 0)
        if not self.jsonl.is_file() or self.jsonl.stat().st_size <= indexed:
            return 0
        bad = 0
        self.db.execute("BEGIN")
        with self.jsonl.open("rb") as fh:
            fh.seek(indexed)
            off = indexed
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # a torn tail: repair() moves it aside
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    self._add(record, off, len(line))
                else:
                    bad += 1  # a torn or foreign line: its latent runs again
                off += len(line)
        self.db.execute("UPDATE meta SET v=? WHERE k='indexed'", (str(off),))
        self.db.execute("COMMIT")
        return bad

    def _add(self, record: Mapping[str, Any], off: int, length: int) -> None:
        latent = record.get("latent")
        latent = int(latent) if isinstance(latent, int) and not isinstance(latent, bool) else None
        status = _status(record)
        run_key = record.get("run_key")
        run_key = str(run_key) if run_key is not None else None
        self.db.execute("INSERT OR IGNORE INTO lines VALUES(?,?,?,?,?)", (off, length, run_key, latent, status))
        if latent is None:
            return
        if run_key is not None:
            text = _usable_text(record.get("explanation")) if status == "done" else None
            self.db.execute(
                "INSERT INTO latest VALUES(?,?,?,?,?,?) ON CONFLICT(run_key, latent) DO UPDATE SET off=excluded.off, "
                "len=excluded.len, status=excluded.status, text=excluded.text WHERE excluded.off > latest.off",
                (run_key, latent, off, length, status, text),
            )
        rows = record_rows(record)
        if rows:
            marks = ",".join("?" * (len(ROW_COLUMNS) + 2))
            self.db.executemany(
                f"INSERT OR IGNORE INTO rows VALUES({marks})",
                [(off, k, *(_sql_value(row[c]) for c in ROW_COLUMNS)) for k, row in enumerate(rows)],
            )

    def add(self, record: Mapping[str, Any], off: int, length: int) -> None:
        """Index one line just appended at ``off`` (the caller holds the file's lock), in its own transaction:
        a run stopped between two appends (KeyboardInterrupt leaves the runner's ``finally`` unrun) must not
        leave a transaction open that locks the index for the next run (synchronous=OFF: no fsync here)."""
        self.db.execute("BEGIN")
        try:
            self._add(record, off, length)
            self.db.execute(
                "UPDATE meta SET v=? WHERE k='indexed' AND CAST(v AS INTEGER) < ?", (off + length, off + length)
            )
        except BaseException:
            self.db.execute("ROLLBACK")  # the line is in the file: the next catch_up indexes it
            raise
        self.db.execute("COMMIT")

    def commit(self) -> None:
        """Nothing to do: every :meth:`add` commits (kept for the file's sync step)."""

    # ------------------------------------------------------------------ questions

    def lines(self) -> list[tuple[int, int]]:
        """``(offset, length)`` of every readable line, in file order."""
        return [(int(off), int(n)) for off, n in self.db.execute("SELECT off, len FROM lines ORDER BY off")]

    def latest(
        self, run_key: str, status: Status = "any", order: Literal["off", "latent"] = "off"
    ) -> list[tuple[int, int, int]]:
        """``(latent, offset, length)`` of the last line of each latent of one run whose status is ``status``,
        ordered by offset or by latent."""
        rows = self.db.execute(
            f"SELECT latent, off, len FROM latest WHERE run_key=?{_STATUS_SQL[status]} ORDER BY {order}", (run_key,)
        )
        return [(int(lat), int(off), int(n)) for lat, off, n in rows]

    def explanation_texts(self, run_key: str, latents: Iterable[int]) -> dict[int, str]:
        """The usable explanation texts of the finished latents among ``latents``."""
        wanted = [int(x) for x in latents]
        marks = ",".join("?" * len(wanted))
        rows = self.db.execute(
            f"SELECT latent, text FROM latest WHERE run_key=? AND status = 'done' AND text IS NOT NULL "
            f"AND latent IN ({marks})",
            (run_key, *wanted),
        )
        return {int(lat): str(text) for lat, text in rows}

    def run_keys(self) -> list[str]:
        """The run keys of the file's lines."""
        return [k for (k,) in self.db.execute("SELECT run_key FROM lines WHERE run_key IS NOT NULL GROUP BY run_key")]

    def last_run_key(self) -> str | None:
        """The run key of the file's last line that has one."""
        last = self.db.execute(
            "SELECT run_key FROM lines WHERE run_key IS NOT NULL ORDER BY off DESC LIMIT 1"
        ).fetchone()
        return last[0] if last else None

    def rows(self, columns: Sequence[str]) -> pd.DataFrame:
        """Every compact row, with its line's offset ``off`` and its place ``k`` in the record, and ``columns``."""
        select = ", ".join(f'"{c}"' for c in ["off", "k", *columns])
        return pd.read_sql_query(f"SELECT {select} FROM rows", self.db)


def _sql_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    if value is not None and not isinstance(value, (int, float, str)):
        return str(value)
    return value


def _usable_text(explanation: Any) -> str | None:
    if not isinstance(explanation, Mapping) or explanation.get("failed"):
        return None
    return explanation.get("text") or None

"""results.jsonl: one JSON record per latent, appended as soon as the latent is done (or left incomplete).

A killed run loses at most the latents in flight; running it again skips every latent that has a finished
record with the same ``run_key`` (same store, explainer, scorers and their settings and prompts, sampling,
LLM backend and cache mode, seed, controls, plugin versions). A record with ``incomplete`` (an infrastructure
failure: the backend, the budget) is not finished: the next run resumes it from what it holds. Later records
of a latent supersede earlier ones.

``result.table``: one row per (latent, scorer) of finished latents: the headline ``metric`` and ``score`` with
its 95% interval (``low``, ``high``) and ``chance``, the ``auc`` where graded probabilities exist, the
``calibrated`` balanced accuracy (classification scorers), the ``control`` score (another latent's
explanation on a subset of the same examples), ``lift`` = score - control with ``lift_low`` / ``lift_high``,
``signal`` (the lift's interval lies above 0), ``n_examples``, ``n_failed``, the explanation and any error, and
from the known-heuristic filters (``heuristics.py``; None when they were off) the latent's ``heuristic`` flag
("positional" / "unigram" / None) with ``positional_r2`` and ``unigram_r2``.
``result.summary()``: per scorer the counts (``n_latents``, ``n_scored``, ``n_undefined``, ``n_failed``), the
mean score with its interval, the chance level, the mean control and lift, and the judge check.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, overload

import numpy as np
import pandas as pd

log = logging.getLogger("sae_lens_autointerp")

TABLE_COLUMNS = [
    "latent",
    "scorer",
    "metric",
    "score",
    "low",
    "high",
    "chance",
    "auc",
    "calibrated",
    "control",
    "lift",
    "lift_low",
    "lift_high",
    "signal",
    "n_examples",
    "n_failed",
    "explanation",
    "error",
    "provider",
    "heuristic",
    "positional_r2",
    "unigram_r2",
]
SUMMARY_COLUMNS = [
    "scorer",
    "metric",
    "n_latents",
    "n_scored",
    "n_undefined",
    "n_failed",
    "mean",
    "low",
    "high",
    "chance",
    "control",
    "lift",
    "lift_low",
    "lift_high",
    "n_controls",
    "identical_answers",
    "judge_ok",
    "judge_check",
]


class Presenter(Protocol):
    """Pages and plots of a result; implemented by :mod:`sae_lens_autointerp.report` (a layer above)."""

    def to_html(self, result: ScoreResult, out: str | os.PathLike[str], **options: Any) -> Path: ...
    def show(self, result: ScoreResult, latent: int) -> Any: ...
    def plot(self, result: ScoreResult) -> Any: ...


# report installs its presenter when the package is imported: results may not import report (layers), and a
# ScoreResult should still have its pages as methods
_PRESENTERS: list[Presenter] = []


def install_presenter(presenter: Presenter) -> None:
    _PRESENTERS[:] = [presenter]


def _presenter() -> Presenter:
    if not _PRESENTERS:
        raise RuntimeError("the report module is not loaded: `import sae_lens_autointerp` first")
    return _PRESENTERS[0]


#: Seconds between two fsyncs of results.jsonl during a run (group commit): a killed process loses nothing it
#: wrote (every line is one write(2), in the kernel at once); a power loss loses at most this much time of
#: records, whose answers the response cache still holds. ``ResultsFile.sync()`` (end of every block of
#: latents and of the run) and ``close()`` sync whatever is pending.
SYNC_EVERY_S = 0.1
#: The index beside results.jsonl (derived data: rebuilt from the JSONL when missing, stale or foreign).
INDEX_SUFFIX = ".index.sqlite"
INDEX_FORMAT = "2"  # 2: paired lifts, answer counts of every scorer
#: What the index keeps per (record, scorer): the table's columns, the control's interval, and what the judge
#: check pools over latents (the judge's kind, whether the scorer reads an explanation, the answer counts).
ROW_COLUMNS = [
    *TABLE_COLUMNS,
    "control_low",
    "control_high",
    "judge_kind",
    "controlled",
    "answers",
    "has_heuristic",
]
_ROW_SQL_TYPES = {
    "latent": "INTEGER",
    "n_examples": "INTEGER",
    "n_failed": "INTEGER",
    "signal": "INTEGER",
    "controlled": "INTEGER",
    "has_heuristic": "INTEGER",
    "scorer": "TEXT",
    "metric": "TEXT",
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


class _Index:
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


class ResultsFile:
    """Append-only JSONL with whole-line writes (one write each, fsynced in groups: :data:`SYNC_EVERY_S`) and
    its SQLite index (``results.jsonl.index.sqlite``): which latents a run finished, the offsets of their
    records, the compact rows of the table. An unreadable line is skipped (its latent runs again)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._repaired = False
        self._index: _Index | None = None
        self._fd: int | None = None
        self._size = 0
        self._synced_at = 0.0
        self._unsynced = 0

    # ------------------------------------------------------------------ the index

    @property
    def index(self) -> _Index:
        """The index, caught up with the file (built on first use)."""
        with self._lock:
            if self._index is None:
                self._index = _Index(self.path)
            if self._fd is None:  # another process may have appended: catch up
                bad = self._index.catch_up()
                if bad:
                    log.warning("%s: %d unreadable line(s) skipped (their latents run again)", self.path, bad)
            return self._index

    def read_at(self, off: int, length: int) -> dict[str, Any]:
        """The record of the line at byte ``off``."""
        with self.path.open("rb") as fh:
            fh.seek(off)
            return dict(json.loads(fh.read(length)))

    def records(self) -> list[dict[str, Any]]:
        """Every readable record of the file, in order (reads the whole file: for small files and exports)."""
        index = self.index
        spans = index.db.execute("SELECT off, len FROM lines ORDER BY off").fetchall()
        return list(RecordSeq(self.path, np.array([s[0] for s in spans], dtype=np.int64), [s[1] for s in spans]))

    def latest(self, run_key: str) -> dict[int, dict[str, Any]]:
        """The last record of each latent of one run (finished or not)."""
        return self._latest(run_key, None)

    def _latest(self, run_key: str, where: str | None) -> dict[int, dict[str, Any]]:
        sql = "SELECT latent, off, len FROM latest WHERE run_key=?" + (f" AND {where}" if where else "")
        rows = self.index.db.execute(sql + " ORDER BY off", (run_key,)).fetchall()
        return {int(lat): self.read_at(off, n) for lat, off, n in rows}

    def done(self, run_key: str) -> dict[int, dict[str, Any]]:
        """Finished latents of one run: their last record has no ``incomplete``."""
        return self._latest(run_key, "status != 'incomplete'")

    def partial(self, run_key: str) -> dict[int, dict[str, Any]]:
        """Latents whose last record is ``incomplete``: what they finished, to resume from."""
        return self._latest(run_key, "status = 'incomplete'")

    def finished(self, run_key: str) -> np.ndarray:
        """The latents of one run whose last record is finished (sorted), without reading a record."""
        rows = self.index.db.execute(
            "SELECT latent FROM latest WHERE run_key=? AND status != 'incomplete' ORDER BY latent", (run_key,)
        )
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def explanation_texts(self, run_key: str, latents: Iterable[int]) -> dict[int, str]:
        """The usable explanation texts of the finished latents among ``latents`` (controls' pool)."""
        wanted = [int(x) for x in latents]
        marks = ",".join("?" * len(wanted))
        rows = self.index.db.execute(
            f"SELECT latent, text FROM latest WHERE run_key=? AND status = 'done' AND text IS NOT NULL "
            f"AND latent IN ({marks})",
            (run_key, *wanted),
        )
        return {int(lat): str(text) for lat, text in rows}

    def result_records(self, run_key: str, latents: Sequence[int] | None = None) -> RecordSeq:
        """The finished records of one run, lazily (in ``latents`` order, or by latent), without reading them."""
        rows = self.index.db.execute(
            "SELECT latent, off, len FROM latest WHERE run_key=? AND status != 'incomplete' ORDER BY latent",
            (run_key,),
        ).fetchall()
        lat = np.array([r[0] for r in rows], dtype=np.int64)
        offs = np.array([r[1] for r in rows], dtype=np.int64)
        lens = np.array([r[2] for r in rows], dtype=np.int64)
        if latents is not None:
            want = np.asarray(list(latents), dtype=np.int64)
            pos = np.searchsorted(lat, want)
            pos = np.minimum(pos, max(len(lat) - 1, 0))
            hit = (lat[pos] == want) if len(lat) else np.zeros(len(want), dtype=bool)
            offs, lens = offs[pos[hit]], lens[pos[hit]]
        return RecordSeq(self.path, offs, lens.tolist(), index=self)

    # ------------------------------------------------------------------ writing

    def repair(self) -> None:
        """A torn last line (a crash mid-write) is moved to ``results.jsonl.corrupt`` with a warning, so the next
        record starts on a clean line instead of being glued to the fragment."""
        if self._repaired or not self.path.is_file():
            return
        self._repaired = True
        with self.path.open("rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            fh.seek(0)
            data = fh.read()
            cut = data.rfind(b"\n") + 1
            with open(self.path.with_name(self.path.name + ".corrupt"), "ab") as aside:
                aside.write(data[cut:] + b"\n")
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())
        log.warning(
            "%s ended in a torn line (%d bytes, moved to %s.corrupt); its latent runs again",
            self.path,
            len(data) - cut,
            self.path.name,
        )

    def append(self, record: dict[str, Any], line: bytes | None = None) -> None:
        """Write one record as one line (a single write), index it, and fsync at most every
        :data:`SYNC_EVERY_S` seconds (``sync()`` forces it). ``line``: :func:`encode_record` of ``record``,
        where the caller has it already."""
        line = encode_record(record) if line is None else line
        self.repair()
        with self._lock:
            index = self.index
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                self._size = os.fstat(self._fd).st_size
            view = memoryview(line)
            while view:  # a regular file takes it in one write; a short write is finished, never left torn
                view = view[os.write(self._fd, view) :]
            off, self._size = self._size, self._size + len(line)
            index.add(record, off, len(line))
            self._unsynced += 1
            now = time.monotonic()
            if now - self._synced_at >= SYNC_EVERY_S:
                self._sync(now)

    def _sync(self, now: float | None = None) -> None:
        if self._fd is not None and self._unsynced:
            os.fsync(self._fd)
            self._unsynced = 0
        self._synced_at = time.monotonic() if now is None else now
        if self._index is not None:
            self._index.commit()

    def sync(self) -> None:
        """Make every appended record durable (fsync) and commit the index."""
        with self._lock:
            self._sync()

    def close(self) -> None:
        """Sync and close the file (a later append reopens it)."""
        with self._lock:
            self._sync()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class RecordSeq(Sequence[dict[str, Any]]):
    """Records read on demand from results.jsonl by byte offset: ``ScoreResult.records`` of a run or a loaded
    file, as a sequence that holds two integers per record (index, iterate, ``len``)."""

    def __init__(
        self,
        path: Path,
        offsets: np.ndarray,
        lengths: Sequence[int],
        index: ResultsFile | None = None,
        overlay: Mapping[int, dict[str, Any]] | None = None,
    ) -> None:
        self.path, self.offsets, self.lengths = Path(path), offsets, np.asarray(lengths, dtype=np.int64)
        self.file, self.overlay = index, overlay

    def with_overlay(self, overlay: Mapping[int, dict[str, Any]] | None) -> RecordSeq:
        """The same records, where a record without ``heuristic`` gets ``overlay[latent]`` (the run's flags)."""
        return RecordSeq(self.path, self.offsets, self.lengths.tolist(), self.file, overlay)

    def rows(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The compact rows of these records (:data:`ROW_COLUMNS`, or ``columns``) from the index, in order."""
        if self.file is None:
            return rows_frame(self)
        cols = list(columns or ROW_COLUMNS)
        extra = [c for c in ("latent", "has_heuristic", "heuristic", "positional_r2", "unigram_r2") if c not in cols]
        select = ", ".join(f'"{c}"' for c in ["off", "k", *cols, *extra])
        df = pd.read_sql_query(f"SELECT {select} FROM rows", self.file.index.db)
        order = np.argsort(self.offsets, kind="stable")
        sorted_offs = self.offsets[order]
        offs = df["off"].to_numpy(dtype=np.int64)
        pos = np.searchsorted(sorted_offs, offs)
        pos = np.minimum(pos, max(len(sorted_offs) - 1, 0))
        keep = (sorted_offs[pos] == offs) if len(sorted_offs) else np.zeros(len(df), dtype=bool)
        df = df[keep].assign(_pos=order[pos[keep]]).sort_values(["_pos", "k"], kind="stable")
        if self.overlay:
            missing = ~df["has_heuristic"].astype(bool) & df["latent"].isin(list(self.overlay))
            for i in np.flatnonzero(missing.to_numpy()):
                flag = self.overlay[int(df["latent"].iloc[i])]
                for col, key in (
                    ("heuristic", "flag"),
                    ("positional_r2", "positional_r2"),
                    ("unigram_r2", "unigram_r2"),
                ):
                    df.iloc[i, df.columns.get_loc(col)] = flag.get(key)
        return df[cols].reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.offsets)

    def _patch(self, record: dict[str, Any]) -> dict[str, Any]:
        if self.overlay is not None and "heuristic" not in record and record.get("latent") in self.overlay:
            record["heuristic"] = self.overlay[record["latent"]]
        return record

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        with self.path.open("rb") as fh:
            fh.seek(int(self.offsets[i]))
            return self._patch(json.loads(fh.read(int(self.lengths[i]))))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self.path.open("rb") as fh:
            for off, n in zip(self.offsets.tolist(), self.lengths.tolist(), strict=True):
                fh.seek(off)
                yield self._patch(json.loads(fh.read(n)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, RecordSeq)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __repr__(self) -> str:
        return f"RecordSeq({len(self)} records of {str(self.path)!r})"


def encode_record(record: dict[str, Any]) -> bytes:
    """``record`` as its line of results.jsonl; TypeError / ValueError when it is not JSON (a NaN included)."""
    return (json.dumps(record, default=_json_default, allow_nan=False) + "\n").encode()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@dataclass
class ScoreResult:
    """What ``sae.score()`` / ``sae.autointerp.run()`` return.

    ``table``: one row per (latent, scorer) of the finished latents (see the module docstring for columns).
    ``records``: the full per-latent records (as in results.jsonl): a list, or for a run or a loaded file a
    :class:`RecordSeq` that reads each record from the file when asked (``table``, ``summary()`` and
    ``verdict()`` then come from the file's index, without reading a record). ``skipped``: latent -> reason
    (dead, too rare, ...). ``incomplete``: latent -> why it could not finish (the backend, the budget); the
    same call again finishes them. ``stopped``: why the run stopped early, if it did.
    """

    records: Sequence[dict[str, Any]]
    path: Path | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None
    incomplete: dict[int, str] = field(default_factory=dict)
    run_key: str | None = None
    #: the known-heuristic filters of the run: threshold, latents flagged positional / unigram, latents explained
    #: by the heuristic explainer and the LLM calls and tokens that saved (empty when they were off)
    heuristics: dict[str, Any] = field(default_factory=dict)

    def _rows(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        if isinstance(self.records, RecordSeq):
            return self.records.rows(columns)
        frame = rows_frame(self.records)
        return frame if columns is None else frame[list(columns)]

    @property
    def table(self) -> pd.DataFrame:
        return table_from_rows(self._rows())

    @property
    def skipped(self) -> dict[int, str]:
        if isinstance(self.records, RecordSeq) and self.records.file is not None and self.run_key is not None:
            db = self.records.file.index.db
            rows = db.execute(
                "SELECT latent, off, len FROM latest WHERE run_key=? AND status='skipped'", (self.run_key,)
            )
            wanted = set(self.records.offsets.tolist())
            out = {}
            for lat, off, n in rows.fetchall():
                if off in wanted:
                    out[int(lat)] = self.records.file.read_at(off, n)["skipped"]
            return out
        return {r["latent"]: r["skipped"] for r in self.records if r.get("skipped")}

    @property
    def complete(self) -> bool:
        return not self.incomplete

    @property
    def explanations(self) -> dict[int, Any]:
        from .records import Explanation

        known = set(Explanation.__dataclass_fields__)
        out = {}
        for r in self.records:
            if r.get("explanation"):
                e = {k: v for k, v in r["explanation"].items() if k in known}
                e["examples_shown"] = tuple(e.get("examples_shown") or ())
                out[r["latent"]] = Explanation(**e)
        return out

    def judge_checks(self) -> list[Any]:
        """One :class:`~sae_lens_autointerp.controls.JudgeCheck` per scorer that reads an explanation."""
        return checks_from_rows(self._rows(SUMMARY_INPUTS))

    def verdict(self) -> list[str]:
        """Plain sentences: for each scorer, does it carry signal here, and if not, what to do."""
        from .controls import judge_sentence

        rows = self._rows(SUMMARY_INPUTS)
        kinds = _kinds_from_rows(rows)
        return [judge_sentence(c, kinds.get(c.scorer, "llm")) for c in checks_from_rows(rows)]

    def summary(self) -> pd.DataFrame:
        """Per scorer: latents attempted / scored / undefined / failed, the mean score with a 95% interval and
        its chance level, the mean control and lift with the judge check. No latent is dropped silently."""
        return summary_from_rows(self._rows(SUMMARY_INPUTS))

    def export_jsonl(self, path: str | os.PathLike[str]) -> Path:
        """Write this result's records, one JSON line each, to ``path`` (readable by ``report.load``)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as fh:
            for r in self.records:
                fh.write(json.dumps(r, default=_json_default, allow_nan=False) + "\n")
        return out

    def to_html(self, out: str | os.PathLike[str], **options: Any) -> Path:
        """Write the static site of this run (index + one page per latent; opens from disk, no network) into
        the folder ``out`` (or at ``out`` when it ends in ``.html``); returns the index page. ``pages=``: the
        latents that get a page (default all); ``store=``: the activation store (default: the run's)."""
        return _presenter().to_html(self, out, **options)

    def show(self, latent: int) -> Any:
        """The latent's card (explanation, scores with intervals / chance / control, coloured examples, the
        judge's answers, output tokens, neighbours): rendered inline in Jupyter."""
        return _presenter().show(self, latent)

    def plot(self) -> Any:
        """A plotly figure: per scorer the distribution of scores with the controls', chance and the mean's
        95% interval."""
        return _presenter().plot(self)

    def __repr__(self) -> str:
        extra = f", {len(self.incomplete)} incomplete" if self.incomplete else ""
        return f"ScoreResult({len(self.records)} latents{extra}, path={str(self.path) if self.path else None!r})"


def _provider_text(entry: dict[str, Any]) -> str | None:
    p = entry.get("provider") or {}
    if not p:
        return None
    return " ".join(str(x) for x in (p.get("distribution") or p.get("plugin"), p.get("version")) if x)


def _headline(out: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """(metric, low, high, chance) declared by the scorer, or for old records the metric whose value is the
    score (never an interval that belongs to another metric)."""
    if out.get("metric"):
        return out["metric"], out.get("low"), out.get("high"), out.get("chance")
    m = out.get("metrics") or {}
    score = out.get("score")
    for key in ("balanced_accuracy", "accuracy", "pearson", "auc", "mean_diff"):
        if score is not None and m.get(key) is not None and abs(float(m[key]) - float(score)) < 1e-12:
            return key, m.get(f"{key}_low"), m.get(f"{key}_high"), m.get(f"chance_{key}")
    return None, None, None, None


_FLOATS = (
    "score",
    "low",
    "high",
    "chance",
    "auc",
    "calibrated",
    "control",
    "lift",
    "lift_low",
    "lift_high",
    "positional_r2",
    "unigram_r2",
    "control_low",
    "control_high",
)


def record_rows(r: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One finished record's compact rows, one per scorer (:data:`ROW_COLUMNS`); none for an incomplete or
    skipped record. The table, the summary and the judge check are built from these alone."""
    from .controls import answer_counts, paired_lift

    if r.get("incomplete") or r.get("skipped"):
        return []
    explanation = (r.get("explanation") or {}).get("text")
    controls = r.get("controls") or {}
    heuristic = r.get("heuristic") or {}
    rows = []
    for name, out in (r.get("scores") or {}).items():
        metric, low, high, chance = _headline(out)
        ctl = controls.get(name) or {}
        est = paired_lift(out, ctl, metric, low, high)
        metrics = out.get("metrics") or {}
        counts = answer_counts(out)
        rows.append(
            {
                "latent": r["latent"],
                "scorer": name,
                "metric": metric,
                "score": out.get("score"),
                "low": low,
                "high": high,
                "chance": chance,
                "auc": metrics.get("auc"),
                "calibrated": metrics.get("balanced_accuracy_calibrated"),
                "control": ctl.get("score"),
                "lift": None if est is None else est.value,
                "lift_low": None if est is None else est.low,
                "lift_high": None if est is None else est.high,
                "signal": None if est is None or est.low != est.low else bool(est.low > 0),
                "n_examples": out.get("n_examples", 0),
                "n_failed": out.get("n_failed", 0),
                "explanation": explanation,
                "error": out.get("error"),
                "provider": _provider_text(out),
                "heuristic": heuristic.get("flag"),
                "positional_r2": heuristic.get("positional_r2"),
                "unigram_r2": heuristic.get("unigram_r2"),
                "control_low": ctl.get("low"),
                "control_high": ctl.get("high"),
                "judge_kind": out.get("judge_kind"),
                "controlled": bool(out.get("needs_explanation", name in controls)),
                "answers": json.dumps(counts) if counts else None,
                "has_heuristic": "heuristic" in r,
            }
        )
    return rows


def _rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The compact rows of ``records`` as dicts (the table's columns plus the control's interval, ...)."""
    return [row for r in records for row in record_rows(r)]


def rows_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The compact rows of ``records`` (:func:`record_rows`) as a frame."""
    return pd.DataFrame([row for r in records for row in record_rows(r)], columns=ROW_COLUMNS)


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    floats = [c for c in _FLOATS if c in df.columns]
    df = df.astype({c: float for c in floats})
    if "signal" in df.columns:
        df["signal"] = pd.Series(
            [None if v is None or v != v else bool(v) for v in df["signal"]], dtype=object, index=df.index
        )
    for col in ("heuristic", "metric", "explanation", "error", "provider"):
        if col in df.columns:
            df[col] = df[col].astype(object).where(df[col].notna(), None)
    for col in ("n_examples", "n_failed"):
        if col in df.columns:
            df[col] = df[col].fillna(0).astype(int)
    return df


def table_from_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """``result.table`` from compact rows."""
    return _typed(rows[TABLE_COLUMNS].reset_index(drop=True))


def records_table(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    return table_from_rows(rows_frame(records))


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def _kinds_from_rows(rows: pd.DataFrame) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for name, kind in zip(rows["scorer"], rows["judge_kind"], strict=True):
        if isinstance(kind, str) and kind:
            kinds[str(name)] = kind
    return kinds


def _judge_kinds(records: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for r in records:
        for name, out in (r.get("scores") or {}).items():
            if out.get("judge_kind"):
                kinds[name] = out["judge_kind"]
    return kinds


def checks_from_rows(rows: pd.DataFrame) -> list[Any]:
    """One judge check per scorer that reads an explanation, from compact rows."""
    from .controls import judge_check, lifts_per_latent

    out = []
    for name, group in rows.groupby("scorer", sort=True):
        reference = "control" if group["controlled"].fillna(False).astype(bool).any() else "chance"
        counts: dict[str, int] = {}
        for text in group["answers"].dropna():
            for key, n in json.loads(text).items():
                counts[key] = counts.get(key, 0) + int(n)
        g = _typed(group[["score", "low", "high", "chance", "control", "control_low", "control_high", *_LIFT]].copy())
        lifts = lifts_per_latent(g.to_dict("records"), reference)
        out.append(judge_check(str(name), lifts, answer_counts=counts, reference=reference))
    return out


def judge_checks(records: Iterable[Mapping[str, Any]]) -> list[Any]:
    return checks_from_rows(rows_frame(records))


_LIFT = ("lift", "lift_low", "lift_high")
#: The compact columns the summary reads.
SUMMARY_INPUTS = [
    "scorer",
    "metric",
    "score",
    "low",
    "high",
    "chance",
    "error",
    "control",
    "control_low",
    "control_high",
    *_LIFT,
    "judge_kind",
    "controlled",
    "answers",
]


def summary_from_rows(rows: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """``result.summary()`` from compact rows."""
    from .controls import judge_sentence, mean_or_none, pooled_mean
    from .metrics import Estimate

    table = _typed(rows[[c for c in SUMMARY_INPUTS if c in rows.columns]].copy())
    checks = {c.scorer: c for c in checks_from_rows(rows)}
    kinds = _kinds_from_rows(rows)
    out = []
    for name, group in table.groupby("scorer", sort=True):
        scores = group["score"].to_numpy(dtype=float)
        scored = np.isfinite(scores)
        failed = group["error"].notna().to_numpy() & ~scored
        # each latent's own interval plus the spread between latents: never a zero-width interval when a few
        # latents happen to score the same
        lows, highs = group["low"].to_numpy(dtype=float), group["high"].to_numpy(dtype=float)
        est = pooled_mean(
            [
                Estimate(float(v), float(lo), float(hi))
                for v, lo, hi in zip(scores[scored], lows[scored], highs[scored], strict=True)
            ],
            confidence,
        )
        check = checks.get(str(name))
        chance = group["chance"].dropna()
        metric = group["metric"].dropna()
        out.append(
            {
                "scorer": name,
                "metric": metric.iloc[0] if len(metric) else None,
                "n_latents": len(group),
                "n_scored": int(scored.sum()),
                "n_undefined": int((~scored & ~failed).sum()),
                "n_failed": int(failed.sum()),
                "mean": est.value,
                "low": est.low,
                "high": est.high,
                "chance": float(chance.mean()) if len(chance) else None,
                "control": mean_or_none(group["control"]),
                "lift": None if check is None else check.to_dict()["lift"],
                "lift_low": None if check is None else check.to_dict()["lift_low"],
                "lift_high": None if check is None else check.to_dict()["lift_high"],
                "n_controls": 0 if check is None else check.n_controls,
                "identical_answers": None if check is None else check.identical_answers,
                "judge_ok": None if check is None else check.can_tell,
                "judge_check": None if check is None else judge_sentence(check, kinds.get(str(name), "llm")),
            }
        )
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def summary_table(records: Iterable[Mapping[str, Any]], confidence: float = 0.95) -> pd.DataFrame:
    return summary_from_rows(rows_frame(records), confidence)


def llm_model_name(run: Mapping[str, Any]) -> str | None:
    """The run's LLM as a model name: ``openai:gpt-4o-mini`` -> ``gpt-4o-mini``, ``vllm:org/m`` -> ``m`` (as
    Neuronpedia's batch-autointerp names models), ``local`` -> the embedded model file it served."""
    name = run.get("llm")
    if not name:
        return None
    backend, sep, model = str(name).partition(":")
    if sep and model:
        return model.split("/")[-1]
    served = str((run.get("llm_identity") or {}).get("served_by") or "")
    if "@" in served:
        return re.sub(r"\.gguf$", "", served.split("@", 1)[1].split("/")[-1])
    return str(name)


def explanation_model_of(record: Mapping[str, Any], run: Mapping[str, Any]) -> str | None:
    """The model that wrote a record's explanation, or None when no LLM wrote it (an LLM-free explainer such
    as top-tokens, a heuristic substitute, explanations given to ``sae.score``, a Neuronpedia lookup) or the
    run does not say which one did. An LLM wrote it when the record's usage shows requests in its
    ``explain`` stage, or its ``parse`` says how the text was read from an LLM answer; that LLM is the run's
    (run.json ``llm``)."""
    explanation = record.get("explanation") or {}
    explain = (record.get("usage") or {}).get("explain") or {}
    by_llm = bool(explanation.get("parse")) or (explain.get("requests") or 0) + (explain.get("cache_hits") or 0) > 0
    return llm_model_name(run) if by_llm else None

"""results.jsonl: one JSON record per latent, appended as soon as the latent is done (or left incomplete).

A killed run loses at most the latents in flight; running it again skips every latent that has a finished
record with the same ``run_key`` (same store, explainer, scorers and their settings and prompts, sampling,
LLM backend and cache mode, seed, controls, plugin versions). A record with ``incomplete`` (an infrastructure
failure: the backend, the budget) is not finished: the next run resumes it from what it holds. Later records
of a latent supersede earlier ones.

:class:`ResultsFile` is the durable file (whole-line appends, group fsyncs, a torn tail moved aside) and asks its
index (:mod:`.index`) which line holds what; :class:`RecordSeq` reads the records it names, by offset.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, overload

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..numeric import json_default
from .index import ResultsIndex, Status
from .tables import ROW_COLUMNS, rows_frame

log = logging.getLogger("sae_lens_autointerp")

#: Seconds between two fsyncs of results.jsonl during a run (group commit): a killed process loses nothing it
#: wrote (every line is one write(2), in the kernel at once); a power loss loses at most this much time of
#: records, whose answers the response cache still holds. ``ResultsFile.sync()`` (end of every block of
#: latents and of the run) and ``close()`` sync whatever is pending.
SYNC_EVERY_S = 0.1


class ResultsFile:
    """Append-only JSONL with whole-line writes (one write each, fsynced in groups: :data:`SYNC_EVERY_S`) and
    its SQLite index (``results.jsonl.index.sqlite``): which latents a run finished, the offsets of their
    records, the compact rows of the table. An unreadable line is skipped (its latent runs again)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._repaired = False
        self._index: ResultsIndex | None = None
        self._fd: int | None = None
        self._size = 0
        self._synced_at = 0.0
        self._unsynced = 0

    # ------------------------------------------------------------------ the index

    @property
    def index(self) -> ResultsIndex:
        """The index, caught up with the file (built on first use)."""
        with self._lock:
            if self._index is None:
                self._index = ResultsIndex(self.path)
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
        spans = self.index.lines()
        return list(RecordSeq(self.path, np.array([s[0] for s in spans], dtype=np.int64), [s[1] for s in spans]))

    def latest(self, run_key: str) -> dict[int, dict[str, Any]]:
        """The last record of each latent of one run (finished or not)."""
        return self._latest(run_key, "any")

    def _latest(self, run_key: str, status: Status) -> dict[int, dict[str, Any]]:
        return {lat: self.read_at(off, n) for lat, off, n in self.index.latest(run_key, status)}

    def done(self, run_key: str) -> dict[int, dict[str, Any]]:
        """Finished latents of one run: their last record has no ``incomplete``."""
        return self._latest(run_key, "finished")

    def partial(self, run_key: str) -> dict[int, dict[str, Any]]:
        """Latents whose last record is ``incomplete``: what they finished, to resume from."""
        return self._latest(run_key, "incomplete")

    def skipped_lines(self, run_key: str) -> dict[int, tuple[int, int]]:
        """``{latent: (offset, length)}`` of the latents of one run whose last record is skipped (by latent)."""
        return {lat: (off, n) for lat, off, n in self.index.latest(run_key, "skipped", order="latent")}

    def finished(self, run_key: str) -> np.ndarray:
        """The latents of one run whose last record is finished (sorted), without reading a record."""
        rows = self.index.latest(run_key, "finished", order="latent")
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def explanation_texts(self, run_key: str, latents: Iterable[int]) -> dict[int, str]:
        """The usable explanation texts of the finished latents among ``latents`` (controls' pool)."""
        return self.index.explanation_texts(run_key, latents)

    def run_keys(self) -> list[str]:
        """The runs this file holds records of."""
        return self.index.run_keys()

    def last_run_key(self) -> str | None:
        """The run of the file's last record (None when no record names one)."""
        return self.index.last_run_key()

    def result_records(self, run_key: str, latents: Sequence[int] | None = None) -> RecordSeq:
        """The finished records of one run, lazily (in ``latents`` order, or by latent), without reading them."""
        rows = self.index.latest(run_key, "finished", order="latent")
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
        with self.path.open("rb") as fh:
            if fh.seek(0, os.SEEK_END) == 0:
                return
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
        index = self.index  # caught up before the cut (a torn tail is never indexed), restamped after it
        with writes_to(self.path), self.path.open("rb+") as fh:
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
        index.restamp()
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
        with self._lock, writes_to(self.path):
            index = self.index
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                self._size = os.fstat(self._fd).st_size
            view = memoryview(line)
            try:
                while view:  # a regular file takes it in one write; a short write is finished, never left torn
                    view = view[os.write(self._fd, view) :]
            except OSError:  # (a full disk) part of the line may be written: the next append repairs first
                os.close(self._fd)
                self._fd, self._repaired = None, False
                raise
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
        with self._lock, writes_to(self.path):
            self._sync()

    def close(self) -> None:
        """Sync and close the file and its index (a later use reopens them; closing the index's last
        connection checkpoints its WAL into it)."""
        with self._lock, writes_to(self.path):
            self._sync()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._index is not None:
                self._index.close()
                self._index = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


def write_error(path: str | os.PathLike[str], exc: OSError) -> ConfigError | None:
    """A one-line error for a write that ``path``'s folder cannot take (a full disk or quota, a read-only file
    system), naming the folder and the cure; None for any other OSError."""
    path = Path(path)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ConfigError(
            f"no space left to write {path.name} in {path.parent} ({exc.strerror}): free space there (or pass "
            f"another out_dir) and run again; what was written is kept and the run resumes from it"
        )
    if exc.errno == errno.EROFS:
        return ConfigError(
            f"{path.parent} is on a read-only file system (writing {path.name}): pass an out_dir that can be "
            f"written, or remount it read-write"
        )
    return None


@contextmanager
def writes_to(path: str | os.PathLike[str]) -> Iterator[None]:
    """Writes to ``path`` inside: a full disk or a read-only file system raises :func:`write_error`'s one line
    (a ConfigError) instead of a raw OSError."""
    try:
        yield
    except OSError as exc:
        error = write_error(path, exc)
        if error is None:
            raise
        raise error from exc


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
        df = self.file.index.rows([*cols, *extra])
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
    return (json.dumps(record, default=json_default, allow_nan=False) + "\n").encode()

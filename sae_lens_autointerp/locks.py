"""Advisory folder locks (``fcntl.flock``), so that two processes never write one store or one run folder.

The lock is a ``.lock`` file in the folder, held for as long as the ``with`` block runs and released by the
kernel when the process dies (kill -9 included), so a crash never leaves a stale lock behind. A second
process waits for the first (saying so in the log), then sees what the first one finished.

A folder this process cannot write (a read-only mount such as a team cache on read-only NFS, or no
permission) cannot be written by it either, so there is nothing to guard against on its side: a caller that
can do with reading (``read_only_ok``) gets a shared lock (when a ``.lock`` file can be opened for reading) or
none, and False; any other caller a one-line error naming the folder.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from .errors import ConfigError

log = logging.getLogger("sae_lens_autointerp")

#: The errors of writing where this process may not: a read-only file system, no permission.
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


@contextmanager
def folder_lock(
    folder: str | os.PathLike[str], what: str, *, wait: bool = True, read_only_ok: bool = False
) -> Iterator[bool]:
    """Hold the exclusive lock of ``folder`` (created if needed) and yield True. ``wait=False`` raises
    :class:`BlockingIOError` at once when another process holds it.

    When the folder exists but its ``.lock`` cannot be opened for writing (:data:`NOT_WRITABLE`): with
    ``read_only_ok``, yield False (a shared lock when the ``.lock`` can be opened for reading, so a writer
    elsewhere is waited for; else none), and the caller must only read; without it, a :class:`ConfigError`
    naming the folder. A folder that does not exist and cannot be created is a :class:`ConfigError`."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if path.is_dir():  # there already (some systems say EROFS before EEXIST)
            pass
        elif err.errno in NOT_WRITABLE:
            raise ConfigError(
                f"cannot create the folder {path} ({err.strerror}); pass a folder this process can write"
            ) from None
        else:
            raise
    try:
        fh: IO[str] = open(path / ".lock", "a+")
    except OSError as err:
        if err.errno not in NOT_WRITABLE:
            raise
        if not read_only_ok:
            raise ConfigError(
                f"cannot write in the {what} folder {path} ({err.strerror}); pass a folder this process can write"
            ) from None
        with _read_only_lock(path, what, wait, err) as shared:
            yield shared
        return
    with fh:
        _flock(fh, fcntl.LOCK_EX, path, what, wait)
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def _read_only_lock(path: Path, what: str, wait: bool, why: OSError) -> Iterator[bool]:
    """A shared lock on the ``.lock`` of a folder this process cannot write, or none (no such file). Yields
    False either way: the folder is for reading only."""
    try:
        fh = open(path / ".lock")
    except OSError:
        log.debug("%s is not writable (%s): used without a lock, for reading only (%s)", path, why.strerror, what)
        yield False
        return
    with fh:
        log.debug("%s is not writable (%s): shared lock, for reading only (%s)", path, why.strerror, what)
        _flock(fh, fcntl.LOCK_SH, path, what, wait)
        try:
            yield False
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _flock(fh: IO[str], mode: int, path: Path, what: str, wait: bool) -> None:
    try:
        fcntl.flock(fh, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        if not wait:
            raise
        log.warning("waiting for another process using %s (%s)", path, what)
        fcntl.flock(fh, mode)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Advisory folder locks (``fcntl.flock``), so that two processes never write one store or one run folder.

The lock is a ``.lock`` file in the folder, held for as long as the ``with`` block runs and released by the
kernel when the process dies (kill -9 included), so a crash never leaves a stale lock behind. A second
process waits for the first (saying so in the log), then sees what the first one finished.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("sae_lens_autointerp")


@contextmanager
def folder_lock(folder: str | os.PathLike[str], what: str, *, wait: bool = True) -> Iterator[None]:
    """Hold the exclusive lock of ``folder`` (created if needed). ``wait=False`` raises
    :class:`BlockingIOError` at once when another process holds it."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise
            log.warning("waiting for another process using %s (%s)", path, what)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

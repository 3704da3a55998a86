"""Content-addressed response cache on disk.

The key is the SHA-256 of (model identity, call kind, messages, generation parameters) in canonical JSON;
the labels ``stage`` / ``latent`` are not part of it, so the same prompt asked by two stages is paid once.
Each entry is one JSON file ``<root>/<key[:2]>/<key>.json`` written to a temporary file in the same folder
and moved into place with ``os.replace`` (atomic on POSIX), so any number of processes may write
concurrently, readers never see a half-written entry, and a crashed run resumes from what it finished.

Modes: ``"readwrite"`` (default: read hits, write misses), ``"replay"`` (read only; a miss raises
:class:`CacheMissError` and nothing is sent: deterministic tests, reproducible papers), ``"write"`` (never
read, always refresh), ``"off"``. The environment variable ``SAE_AUTOINTERP_LLM_CACHE`` overrides the default
mode (``off``, ``replay``, ``readwrite``, ``write``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ..paths import cache_dir

log = logging.getLogger(__name__)

MODE_ENV_VAR = "SAE_AUTOINTERP_LLM_CACHE"
MODES = ("readwrite", "replay", "write", "off")
#: Bump when the entry format or key recipe changes (old entries are then simply misses).
CACHE_VERSION = 1


class ResponseCache:
    def __init__(self, path: str | os.PathLike[str] | None = None, mode: str | None = None) -> None:
        mode = mode or os.environ.get(MODE_ENV_VAR) or "readwrite"
        if mode not in MODES:
            raise ValueError(f"cache mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.root = Path(path) if path is not None else cache_dir("llm-responses")
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.root)!r}, mode={self.mode!r})"

    @property
    def reads(self) -> bool:
        return self.mode in ("readwrite", "replay")

    @property
    def writes(self) -> bool:
        return self.mode in ("readwrite", "write")

    @staticmethod
    def key(model: str, kind: str, payload: dict[str, Any]) -> str:
        blob = json.dumps(
            {"v": CACHE_VERSION, "model": model, "kind": kind, **payload},
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored response for ``key``, or ``None`` (a corrupt entry counts as a miss)."""
        if not self.reads:
            return None
        path = self._path(key)
        try:
            with open(path, encoding="utf-8") as f:
                entry = json.load(f)
            response = entry["response"]
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable response-cache entry %s (%s)", path, exc)
            self.misses += 1
            return None
        self.hits += 1
        return response

    def put(self, key: str, response: dict[str, Any], request: dict[str, Any] | None = None) -> None:
        """Store atomically. Failing to write the cache never fails the request (it is logged)."""
        if not self.writes:
            return
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"key": key, "request": request, "response": response}, f, ensure_ascii=False)
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except OSError as exc:
            log.warning("could not write response-cache entry %s (%s)", path, exc)

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("??/*.json"))


def resolve_cache(cache: Any = None, replay: bool | None = None) -> ResponseCache | None:
    """``cache``: ``None`` (the default folder), ``False`` (off), a path, or a :class:`ResponseCache`.
    ``replay=True`` forces replay-only mode."""
    if cache is False:
        if replay:
            raise ValueError("replay=True needs a cache (cache=False turns it off)")
        return None
    if isinstance(cache, ResponseCache):
        if replay:
            cache.mode = "replay"
        return cache
    rc = ResponseCache(cache, mode="replay" if replay else None)
    return None if rc.mode == "off" else rc

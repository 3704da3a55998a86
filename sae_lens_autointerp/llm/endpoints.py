"""A fleet of OpenAI-compatible servers: each server's address, limits, load and health, and its URL without
credentials (the one form that may be logged, shown or hashed into a cache key)."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigError

#: A server of a fleet that fails this many requests in a row (after a 5xx or a malformed answer) is taken out.
DEAD_AFTER = 3
#: The window of the per-server rate limits (requests / tokens per minute).
RATE_WINDOW_S = 60.0
_ENDPOINT_KEYS = ("base_url", "max_concurrency", "requests_per_minute", "tokens_per_minute")


@dataclass
class Endpoint:
    """One server of a fleet: its limits, its load and its health (shared by the event loops of a client)."""

    url: str
    max_concurrency: int
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    in_flight: int = 0
    sent: int = 0
    failures_in_a_row: int = 0
    dead_until: float = 0.0
    window: deque[list[float]] = field(default_factory=deque)  # [sent at, tokens] of the last minute

    @property
    def limited(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None

    def rate_wait(self, now: float, tokens: int) -> float:
        """Seconds until a request of ``tokens`` fits this server's rate limits (0: now)."""
        while self.window and self.window[0][0] <= now - RATE_WINDOW_S:
            self.window.popleft()
        waits = [0.0]
        if self.requests_per_minute is not None and len(self.window) >= self.requests_per_minute:
            k = len(self.window) - int(self.requests_per_minute)  # this many must leave the window first
            waits.append(self.window[k][0] + RATE_WINDOW_S - now)
        if self.tokens_per_minute is not None and self.window:
            used = sum(t for _, t in self.window)
            if used + tokens > self.tokens_per_minute:  # a request bigger than the limit goes alone
                for at, t in self.window:
                    used -= t
                    if used + tokens <= self.tokens_per_minute or used == 0:
                        waits.append(at + RATE_WINDOW_S - now)
                        break
        return max(waits)


def endpoints(
    base_url: Any, max_concurrency: int, requests_per_minute: float | None, tokens_per_minute: float | None
) -> list[Endpoint]:
    """The servers ``base_url`` names (a URL, a dict with its own limits, or a list of them), checked."""
    items = [base_url] if isinstance(base_url, (str, Mapping)) else list(base_url)
    if not items:
        raise ConfigError("base_url is an empty list; pass one URL or several (a fleet of OpenAI-compatible servers)")
    out = []
    for item in items:
        spec: dict[str, Any] = dict(item) if isinstance(item, Mapping) else {"base_url": item}
        unknown = sorted(set(spec) - set(_ENDPOINT_KEYS))
        if unknown or not isinstance(spec.get("base_url"), str) or not spec["base_url"]:
            raise ConfigError(
                f"each base_url is a URL or a dict with the keys {_ENDPOINT_KEYS} (base_url required), got {item!r}"
            )
        ep = Endpoint(
            spec["base_url"].rstrip("/"),
            spec.get("max_concurrency", max_concurrency),
            spec.get("requests_per_minute", requests_per_minute),
            spec.get("tokens_per_minute", tokens_per_minute),
        )
        if isinstance(ep.max_concurrency, bool) or not isinstance(ep.max_concurrency, int) or ep.max_concurrency < 1:
            raise ConfigError(f"max_concurrency of {public_url(ep.url)} must be an integer >= 1")
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(ep, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ConfigError(f"{name} of {public_url(ep.url)} must be a number > 0 (or None), got {value!r}")
        out.append(ep)
    urls = [e.url for e in out]
    if len(set(urls)) != len(urls):
        raise ConfigError(f"base_url lists a server twice: {[public_url(u) for u in urls]}")
    return out


def public_url(url: str) -> str:
    """``url`` without user info, query or fragment (safe to log and to use in cache keys)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))

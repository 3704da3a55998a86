"""Errors of the LLM layer. All derive from :class:`LLMError` (itself an ``AutointerpError``).

Messages name the backend and base URL, never an API key.
"""

from __future__ import annotations

import logging
import re

from ..errors import AutointerpError, ConfigError


class LLMError(AutointerpError):
    """A request could not be completed (after the retries it was allowed)."""


class LLMConnectionError(LLMError):
    """The server could not be reached, dropped the connection, or kept failing with 429 / 5xx."""


class LLMTimeoutError(LLMConnectionError):
    """Every attempt ran past the per-request timeout."""


class MalformedResponseError(LLMError):
    """The server answered with something that is not a usable completion (not JSON, no choices, ...)."""


class UnknownModelError(LLMError, ConfigError):
    """The server does not serve the requested model."""


class ContextOverflowError(LLMError, ConfigError):
    """The prompt (plus ``max_tokens``) does not fit the model's context window."""


class AuthenticationError(LLMError, ConfigError):
    """The server rejected the API key (401 / 403)."""


class BudgetExceeded(LLMError):
    """The run's token or dollar budget is spent: no new request is sent. Finished work is kept."""


class CacheMissError(LLMError):
    """Replay-only mode: the response cache has no answer for this request, and none may be fetched."""


class BackendUnavailableError(LLMError, ConfigError):
    """An optional backend dependency (llama-cpp-python, vllm) is not installed."""


def redact(text: str, *secrets: str | None) -> str:
    """Replace every secret (API keys) in ``text`` by ``***``."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return text


_URL_USERINFO = re.compile(r"(\w+://)[^/@\s]+@")
_QUERY_VALUE = re.compile(r"([?&][^=\s&#]+=)[^&\s#\"']+")


class URLSecretsFilter(logging.Filter):
    """Hides a URL's user info and query values in another library's log lines (httpx logs every request's
    URL at INFO: a password or token in ``base_url`` would reach any log a program turns on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = _QUERY_VALUE.sub(r"\1***", _URL_USERINFO.sub(r"\1***@", text))
        if clean != text:
            record.msg, record.args = clean, ()
        return True


def hide_url_secrets_in(*loggers: str) -> None:
    """Install :class:`URLSecretsFilter` once on each named logger."""
    for name in loggers:
        target = logging.getLogger(name)
        if not any(isinstance(f, URLSecretsFilter) for f in target.filters):
            target.addFilter(URLSecretsFilter())

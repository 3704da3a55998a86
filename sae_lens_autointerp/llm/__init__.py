"""The LLM layer: one async protocol for every backend, with a response cache, usage / cost / budget
accounting, retries and clear errors. See docs/llm.md.

    from sae_lens_autointerp.llm import get_client, UsageTracker

    usage = UsageTracker(prices={"gpt-4o-mini": (0.15, 0.60)}, budget_dollars=2.0)   # shared by a run
    client = get_client("openai:gpt-4o-mini", usage=usage)       # or "local", "vllm:MODEL", an object
    r = await client.chat([{"role": "user", "content": "Hi"}], max_tokens=16, stage="explain", latent=3)
    c = await client.classify(messages, choices=("0", "1"), stage="detection", latent=3)
    c.probs["1"], c.exact, r.usage, r.cached

The built-in backends are :data:`BUILTIN_CLIENTS` (prefix -> factory); the built-in plugin registers them
through the hook ``sae_autointerp_llm_clients``, like any third-party backend. This layer knows no plugin:
``sae_lens_autointerp.registry.get_client`` resolves every prefix, a plugin's included.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .base import BaseClient, classify_from_chat, classify_from_logprobs
from .cache import ResponseCache
from .errors import (
    AuthenticationError,
    BackendUnavailableError,
    BudgetExceeded,
    CacheMissError,
    ContextOverflowError,
    LLMConnectionError,
    LLMError,
    LLMTimeoutError,
    MalformedResponseError,
    UnknownModelError,
)
from .types import ChatRequest, ChatResponse, ClassifyResult, LLMClient, Message, TokenLogprob, Usage
from .usage import Price, PriceTable, UsageTotals, UsageTracker


def _openai_factory(model: str | None = None, **kwargs: Any) -> BaseClient:
    from .openai_client import OpenAIClient

    return OpenAIClient(model, **kwargs)


def _local_factory(model: str | None = None, **kwargs: Any) -> BaseClient:
    from .local import LlamaCppClient

    return LlamaCppClient(model, **kwargs)


def _vllm_factory(model: str | None = None, **kwargs: Any) -> BaseClient:
    from .vllm_client import VLLMClient

    return VLLMClient(model, **kwargs)


#: The built-in backends, registered by ``sae_lens_autointerp.builtin`` through the plugin hook and resolved
#: directly by :func:`get_client`.
BUILTIN_CLIENTS = {"openai": _openai_factory, "local": _local_factory, "vllm": _vllm_factory}


def get_client(llm: str | LLMClient, **kwargs: Any) -> LLMClient:
    """Resolve ``llm`` to a client of a built-in backend: ``"local"``, ``"openai:MODEL"``, ``"vllm:MODEL"``
    (from :data:`BUILTIN_CLIENTS`), or an object implementing :class:`LLMClient` (checked and returned as is;
    ``kwargs`` must then be empty).

    This layer knows no plugin: a prefix that a plugin registers resolves through
    :func:`sae_lens_autointerp.registry.get_client`, which also honours ``SAE_AUTOINTERP_BLOCK_PLUGINS``.
    """
    if not isinstance(llm, str):
        return check_client(llm, kwargs)
    prefix, model = parse_llm_name(llm)
    factory = BUILTIN_CLIENTS.get(prefix)
    if factory is None:
        raise ConfigError(
            f"llm={llm!r}: sae_lens_autointerp.llm.get_client resolves only the built-in backends "
            f"({', '.join(sorted(BUILTIN_CLIENTS))}); for a plugin's backend {prefix!r} use "
            "sae_lens_autointerp.registry.get_client, which resolves every installed plugin"
        )
    return factory(model=model, **kwargs)


def parse_llm_name(llm: str) -> tuple[str, str | None]:
    """``"prefix:model"`` -> ``(prefix, model)``, ``"prefix"`` -> ``(prefix, None)``: how both ``get_client``
    (this layer's, for the built-in backends, and the registry's, for every plugin's) read a backend name."""
    prefix, _, model = llm.partition(":")
    if not prefix:
        raise ConfigError(f"llm={llm!r}: expected 'local', 'openai:MODEL', 'vllm:MODEL' or 'prefix:model'")
    return prefix, model or None


def check_client(llm: Any, llm_kwargs: Mapping[str, Any] | None = None) -> LLMClient:
    """``llm`` itself if it implements the :class:`LLMClient` protocol (async ``chat`` and ``classify``, a
    ``usage`` tracker), else :class:`~sae_lens_autointerp.errors.ConfigError`; ``llm_kwargs`` must be empty
    (they only apply when ``llm`` is a name)."""
    missing = [m for m in ("chat", "classify") if not inspect.iscoroutinefunction(getattr(llm, m, None))]
    if missing:
        raise ConfigError(
            f"llm={type(llm).__name__} does not implement the LLMClient protocol: it needs async methods "
            f"{missing} (subclass sae_lens_autointerp.llm.BaseClient and implement _chat)"
        )
    if not hasattr(llm, "usage"):
        raise ConfigError(f"llm={type(llm).__name__} has no `usage` (a UsageTracker); subclass BaseClient")
    if llm_kwargs:
        raise ConfigError(f"llm_kwargs {sorted(llm_kwargs)} only apply when llm is a name, not a client object")
    return llm


__all__ = [
    "AuthenticationError",
    "BackendUnavailableError",
    "BaseClient",
    "BudgetExceeded",
    "CacheMissError",
    "ChatRequest",
    "ChatResponse",
    "ClassifyResult",
    "ContextOverflowError",
    "LLMClient",
    "LLMConnectionError",
    "LLMError",
    "LLMTimeoutError",
    "MalformedResponseError",
    "Message",
    "Price",
    "PriceTable",
    "ResponseCache",
    "TokenLogprob",
    "UnknownModelError",
    "Usage",
    "UsageTotals",
    "UsageTracker",
    "check_client",
    "classify_from_chat",
    "classify_from_logprobs",
    "get_client",
    "parse_llm_name",
]

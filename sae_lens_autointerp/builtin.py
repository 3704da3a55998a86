"""Built-in scorers, explainers and LLM clients, registered through the same hooks as third-party plugins."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .plugin import hookimpl


@hookimpl
def sae_autointerp_scorers() -> Mapping[str, Callable[..., Any]]:
    return {}


@hookimpl
def sae_autointerp_explainers() -> Mapping[str, Callable[..., Any]]:
    return {}


@hookimpl
def sae_autointerp_llm_clients() -> Mapping[str, Callable[..., Any]]:
    from .llm import BUILTIN_CLIENTS  # openai:, local, vllm: (backend libraries are imported on use)

    return dict(BUILTIN_CLIENTS)

"""Built-in scorers, explainers and LLM clients, registered through the same hooks as third-party plugins."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .plugin import hookimpl


@hookimpl
def sae_autointerp_scorers() -> Mapping[str, Callable[..., Any]]:
    from .scorers import DetectionScorer, FuzzingScorer, IntruderScorer, SimulationScorer
    from .scorers.embedding import EmbeddingScorer
    from .scorers.intervention import InterventionScorer
    from .scorers.surprisal import SurprisalScorer

    return {
        "detection": DetectionScorer, "fuzzing": FuzzingScorer, "simulation": SimulationScorer, "intruder": IntruderScorer,
        "embedding": EmbeddingScorer, "surprisal": SurprisalScorer, "intervention": InterventionScorer,
    }


@hookimpl
def sae_autointerp_explainers() -> Mapping[str, Callable[..., Any]]:
    from functools import partial

    from .explainers import LLMExplainer, TopTokensExplainer
    from .explainers.output_side import OutputExplainer

    return {
        "default": partial(LLMExplainer, "default"),
        "chain-of-thought": partial(LLMExplainer, "cot"),
        "contrastive": partial(LLMExplainer, "contrastive"),
        "top-tokens": TopTokensExplainer,
        "output": partial(OutputExplainer, False),
        "output+examples": partial(OutputExplainer, True),
    }


@hookimpl
def sae_autointerp_llm_clients() -> Mapping[str, Callable[..., Any]]:
    from .llm import BUILTIN_CLIENTS  # openai:, local, vllm: (backend libraries are imported on use)

    return dict(BUILTIN_CLIENTS)

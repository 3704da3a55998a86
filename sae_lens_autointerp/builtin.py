"""Built-in scorers, explainers, LLM clients and export formats: a plugin like any third-party one.

Registered through this distribution's own entry point (``builtin = "sae_lens_autointerp.builtin"`` in the
group ``sae_lens_autointerp``, see pyproject.toml), never imported by the registry. Block it with
``SAE_AUTOINTERP_BLOCK_PLUGINS=builtin``; on a name clash with a third-party plugin it wins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .hookspecs import HOOKSPEC_VERSION, hookimpl

SAE_AUTOINTERP_HOOKSPEC_VERSION = HOOKSPEC_VERSION


@hookimpl
def sae_autointerp_scorers() -> Mapping[str, Callable[..., Any]]:
    from .scorers import DetectionScorer, FuzzingActiveScorer, FuzzingScorer, IntruderScorer, SimulationScorer
    from .scorers.embedding import EmbeddingScorer
    from .scorers.intervention import InterventionScorer
    from .scorers.surprisal import SurprisalScorer

    return {
        "detection": DetectionScorer,
        "fuzzing": FuzzingScorer,
        "fuzzing-active": FuzzingActiveScorer,
        "simulation": SimulationScorer,
        "intruder": IntruderScorer,
        "embedding": EmbeddingScorer,
        "surprisal": SurprisalScorer,
        "intervention": InterventionScorer,
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


@hookimpl
def sae_autointerp_exporters() -> Mapping[str, Callable[..., Any]]:
    from .interchange import BUILTIN_EXPORTERS  # saebench, delphi, neuronpedia

    return dict(BUILTIN_EXPORTERS)

"""Who wrote a record's explanation: the run's LLM as a model name, and whether an LLM wrote it at all (the
Neuronpedia export's ``explanationModelName``, the latent card's "written by")."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


def llm_model_name(run: Mapping[str, Any]) -> str | None:
    """The run's LLM as a model name: ``openai:gpt-4o-mini`` -> ``gpt-4o-mini``, ``vllm:org/m`` -> ``m`` (as
    Neuronpedia's batch-autointerp names models), ``local`` -> the embedded model file it served."""
    name = run.get("llm")
    if not name:
        return None
    backend, sep, model = str(name).partition(":")
    if sep and model:
        return model.split("/")[-1]
    served = str((run.get("llm_identity") or {}).get("served_by") or "")
    if "@" in served:
        return re.sub(r"\.gguf$", "", served.split("@", 1)[1].split("/")[-1])
    return str(name)


def explanation_model_of(record: Mapping[str, Any], run: Mapping[str, Any]) -> str | None:
    """The model that wrote a record's explanation, or None when no LLM wrote it (an LLM-free explainer such
    as top-tokens, a heuristic substitute, explanations given to ``sae.score``, a Neuronpedia lookup) or the
    run does not say which one did. An LLM wrote it when the record's usage shows requests in its
    ``explain`` stage, or its ``parse`` says how the text was read from an LLM answer; that LLM is the run's
    (run.json ``llm``)."""
    explanation = record.get("explanation") or {}
    explain = (record.get("usage") or {}).get("explain") or {}
    by_llm = bool(explanation.get("parse")) or (explain.get("requests") or 0) + (explain.get("cache_hits") or 0) > 0
    return llm_model_name(run) if by_llm else None

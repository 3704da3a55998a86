"""A run's known-heuristic flags (positional / unigram latents, ``heuristics.py``) and what they saved.

With ``heuristics`` on, each latent's record carries its flag; with ``heuristic_explanations=True`` flagged
latents get the ``top-tokens`` explanation instead of the run's explainer (no LLM call), and the run's usage
summary says how many calls that saved.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from ..config import RunConfig
from ..harvest.store import LatentStore
from ..heuristics import DEFAULT_THRESHOLD, flag_summary, has_heuristic_stats, heuristic_flags
from ..llm import UsageTracker
from .plan import make_plugin, provenance

log = logging.getLogger("sae_lens_autointerp.pipeline")

#: The explainer whose explanation flagged latents get with ``heuristic_explanations=True``.
HEURISTIC_EXPLAINER = "top-tokens"
#: Latents per call of :func:`heuristic_flags` (bounds its transient tensors; the flags are the same).
HEURISTIC_CHUNK = 8192


@dataclass
class Tally:
    """What the work counted for the run's heuristics summary: latents explained by the heuristic explainer,
    and the explain-stage tokens of latents explained by the LLM once their usage rows left the tracker."""

    heuristic_explained: set[int] = field(default_factory=set)
    n_explained: int = 0
    explain_tokens: int = 0


def latent_flags(
    store: LatentStore, latents: list[int], cfg: RunConfig
) -> tuple[dict[int, dict[str, Any]] | None, float | None]:
    """Per latent the record entry of the heuristic filters (None when off, or when the store predates them),
    and the threshold used."""
    if cfg.heuristics is False and not cfg.heuristic_explanations:
        return None, None
    threshold = DEFAULT_THRESHOLD if isinstance(cfg.heuristics, bool) else float(cfg.heuristics)
    if not has_heuristic_stats(store):
        log.warning(
            "the store %s has no per-position / per-token sums (harvested by an older version): no heuristic "
            "flags in this run; harvest again to get them",
            store.path,
        )
        return None, None
    out: dict[int, dict[str, Any]] = {}
    # in chunks: the sums of every run latent at once (float64 rows per position bucket and token) were a
    # transient of ~0.5 GiB at 100k latents, the run's peak; each latent's flags depend on its own rows only
    for i in range(0, len(latents), HEURISTIC_CHUNK):
        table = heuristic_flags(store, latents[i : i + HEURISTIC_CHUNK], threshold)
        for row in table.itertuples(index=False):
            out[int(row.latent)] = {
                "flag": row.flag,
                "positional_r2": _finite(row.positional_r2),
                "unigram_r2": _finite(row.unigram_r2),
                "unigram_complete": bool(row.unigram_complete),
                "tokens": list(row.tokens),
                "positions": list(row.positions),
                "threshold": threshold,
            }
    return out, threshold


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def heuristic_substitute(cfg: RunConfig, flags: Any, explainer_obj: Any) -> Any:
    """The explainer that flagged latents get with ``heuristic_explanations=True`` (or None)."""
    if cfg.heuristic_explanations and flags is not None and explainer_obj is not None:
        return make_plugin("explainers", HEURISTIC_EXPLAINER, None)
    return None


def substitute_identity(substitute: Any, threshold: float | None) -> dict[str, Any] | None:
    """What of the heuristic explanations changes answers (part of the run key only when they are on)."""
    if substitute is None:
        return None
    return {
        "threshold": threshold,
        "explainer": HEURISTIC_EXPLAINER,
        "prompt": getattr(substitute, "prompt_id", None),
        "provider": provenance("explainers", HEURISTIC_EXPLAINER),
    }


def heuristics_summary(
    flags: dict[int, dict[str, Any]] | None,
    threshold: float | None,
    tally: Tally,
    tracker: UsageTracker,
    explainer_obj: Any,
    substitute: Any,
) -> dict[str, Any]:
    """What the heuristic filters found, and (``heuristic_explanations``) the explainer calls they saved: one
    per latent explained by the heuristic instead of an LLM explainer in this run, and the tokens those calls
    would have cost at this run's mean tokens per LLM explanation (None when no latent was explained by the LLM)."""
    if flags is None:
        return {}
    import pandas as pd

    out: dict[str, Any] = {"threshold": threshold}
    out.update(flag_summary(pd.DataFrame({"flag": [f["flag"] for f in flags.values()]})))
    out["heuristic_explanations"] = substitute is not None
    saves_llm = substitute is not None and bool(getattr(explainer_obj, "needs_llm", True))
    n_saved = len(tally.heuristic_explained) if saves_llm else 0
    # latents whose record was written left the tracker (the work counted them); the others are still in it
    explained = [
        totals
        for (stage, latent), totals in tracker.by_latent().items()
        if stage == "explain" and latent is not None and latent not in tally.heuristic_explained
    ]
    n_explained = len(explained) + tally.n_explained
    tokens = sum(t.total_tokens for t in explained) + tally.explain_tokens
    per_call = tokens / n_explained if n_explained else None
    out["explained_by_heuristic"] = len(tally.heuristic_explained)
    out["llm_calls_saved"] = n_saved
    out["tokens_saved_estimate"] = None if per_call is None or not saves_llm else round(n_saved * per_call)
    return out

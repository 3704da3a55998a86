"""Shared pieces of the run-folder and results tests: a small run of the planted SAE on its given explanations,
and a results record of the shape the pipeline writes (labelled data, not a judge's output)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae_lens_autointerp.sampling import SamplingConfig

SMALL = SamplingConfig(n_explain=8, n_test_pos=4, n_test_neg=4)


def score_given(planted, store, model, out_dir: Path, *, scorers=("embedding",), llm: Any = None, **kw: Any):
    """``planted.sae.score`` on the planted explanations (embedding and no LLM unless told), into ``out_dir``."""
    return planted.sae.score(
        model,
        store=store,
        explanations=planted.explanations,
        scorers=list(scorers),
        llm=llm,
        sampling=kw.pop("sampling", SMALL),
        out_dir=out_dir,
        progress=False,
        **kw,
    )


def record(latent: int, run_key: str = "k", score: float = 0.75, **extra: object) -> dict:
    """A finished detection record with its predictions, interval, chance and control."""
    preds = [{"token_id": i, "label": i % 2 == 0, "prediction": i % 3 == 0} for i in range(10)]
    return {
        "run_key": run_key,
        "latent": latent,
        "explanation": {"latent": latent, "text": f"words {latent}"},
        "scores": {
            "detection": {
                "scorer": "detection",
                "score": score,
                "metric": "balanced_accuracy",
                "low": score - 0.1,
                "high": score + 0.1,
                "chance": 0.5,
                "n_examples": 10,
                "n_failed": 1,
                "predictions": preds,
                "judge_kind": "llm",
                "needs_explanation": True,
            }
        },
        "controls": {"detection": {"score": 0.5, "low": 0.4, "high": 0.6}},
        **extra,
    }

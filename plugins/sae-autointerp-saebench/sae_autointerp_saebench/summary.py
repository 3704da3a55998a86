"""SAEBench's per-SAE numbers from a run's records."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


def saebench_summary(result: Any, scorer: str = "saebench") -> dict[str, Any]:
    """``autointerp_score`` and ``autointerp_std_dev`` as SAEBench reports them (mean and sample standard
    deviation of the per-latent accuracy), next to what SAEBench leaves out: how many latents failed to
    parse (SAEBench drops them silently), the mean balanced accuracy, and the mean "answer None" baseline.

    ``result`` is a ``ScoreResult`` (``sae.score(...)``) or an iterable of results.jsonl records.
    """
    records: Iterable[Mapping[str, Any]] = getattr(result, "records", result)
    acc, bal, trivial, failed, skipped = [], [], [], 0, 0
    for record in records:
        out = (record.get("scores") or {}).get(scorer)
        if out is None:
            skipped += 1
            continue
        metrics = out.get("metrics") or {}
        if metrics.get("accuracy") is None:
            failed += 1
            continue
        acc.append(float(metrics["accuracy"]))
        if metrics.get("balanced_accuracy") is not None:
            bal.append(float(metrics["balanced_accuracy"]))
        if metrics.get("trivial_none_accuracy") is not None:
            trivial.append(float(metrics["trivial_none_accuracy"]))

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    std = float(np.std(acc, ddof=1)) if len(acc) > 1 else None
    return {
        "autointerp_score": mean(acc),
        "autointerp_std_dev": None if std is None or math.isnan(std) else std,
        "n_latents": len(acc),
        "n_failed_latents": failed,
        "n_without_saebench_score": skipped,
        "balanced_accuracy": mean(bal),
        "trivial_none_accuracy": mean(trivial),
    }

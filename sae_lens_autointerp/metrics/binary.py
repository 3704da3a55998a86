"""One latent's binary predictions: balanced accuracy, accuracy, precision, recall, F1, specificity and AUC,
each with its interval and chance level (the package docstring has the conventions)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..numeric import finite
from .auc import auc_estimate
from .estimate import NAN, UNDEFINED, Estimate, mover_sum, wilson, z_quantile

METRICS = ("balanced_accuracy", "accuracy", "precision", "recall", "f1", "specificity", "auc")


@dataclass(frozen=True)
class BinaryMetrics:
    """Metrics of one latent's binary predictions (see the module docstring for conventions)."""

    n: int
    n_answered: int
    n_failed: int
    n_pos: int
    n_neg: int
    coverage: float
    balanced_accuracy: Estimate
    accuracy: Estimate
    precision: Estimate
    recall: Estimate
    f1: Estimate
    specificity: Estimate
    auc: Estimate
    n_auc: int  # examples with an answered prediction and a finite probability
    chance: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """Flat, JSON-safe (NaN -> None) row for results.jsonl; notes are joined with '; '."""
        out: dict[str, Any] = {k: getattr(self, k) for k in ("n", "n_answered", "n_failed", "n_pos", "n_neg")}
        out["coverage"] = finite(self.coverage)
        for name in METRICS:
            est: Estimate = getattr(self, name)
            out[name], out[f"{name}_low"], out[f"{name}_high"] = (finite(v) for v in (est.value, est.low, est.high))
        out["n_auc"] = self.n_auc
        out.update({f"chance_{k}": finite(v) for k, v in self.chance.items()})
        out["confidence"] = self.confidence
        out["notes"] = "; ".join(self.notes)
        return out


def balanced_accuracy(tp: int, n_pos: int, tn: int, n_neg: int, confidence: float = 0.95) -> Estimate:
    """``(TP / n_pos + TN / n_neg) / 2`` with the MOVER-Wilson interval (undefined without both classes)."""
    if n_pos == 0 or n_neg == 0:
        return UNDEFINED
    est = mover_sum([wilson(tp, n_pos, confidence), wilson(tn, n_neg, confidence)], [0.5, 0.5])
    return Estimate(est.value, max(0.0, est.low), min(1.0, est.high))


def _percentile(value: float, boot: np.ndarray, confidence: float) -> Estimate:
    alpha = 1 - confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    # A percentile interval of a skewed statistic can in rare cases miss the point estimate; keep it inside.
    return Estimate(value, min(float(low), value), max(float(high), value))


def _failed(p: object) -> bool:
    return p is None or (isinstance(p, float) and math.isnan(p))


def binary_metrics(
    labels: Sequence[bool] | np.ndarray,
    predictions: Sequence[bool | None] | np.ndarray,
    probabilities: Sequence[float | None] | np.ndarray | None = None,
    *,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
    n_boot: int = 1000,
) -> BinaryMetrics:
    """Balanced accuracy, accuracy, precision, recall, F1, specificity and AUC of one latent's predictions."""
    if any(label is None for label in labels):
        raise ValueError("labels must all be True/False; None is only allowed in predictions")
    is_answered: list[bool] = []
    said_yes: list[bool] = []
    for p in predictions:  # one pass: check each prediction (the first bad one raises) and read it
        if _failed(p):
            is_answered.append(False)
            said_yes.append(False)
        elif isinstance(p, (bool, np.bool_, int, np.integer)) and p in (0, 1):
            is_answered.append(True)
            said_yes.append(bool(p))
        else:
            raise ValueError(f"predictions must be True, False or None, got {p!r}")
    y = np.asarray(labels, dtype=bool).reshape(-1)
    answered = np.array(is_answered, dtype=bool).reshape(-1)
    pred = np.array(said_yes, dtype=bool).reshape(-1)
    if len(answered) != len(y):
        raise ValueError(f"{len(y)} labels but {len(answered)} predictions")
    z_quantile(confidence)
    rng = rng if rng is not None else np.random.default_rng(0)

    n, n_ans = len(y), int(answered.sum())
    ya, pa = y[answered], pred[answered]
    n_pos, n_neg = int(ya.sum()), int((~ya).sum())
    tp, fn = int((ya & pa).sum()), int((ya & ~pa).sum())
    fp, tn = int((~ya & pa).sum()), int((~ya & ~pa).sum())
    notes: list[str] = []
    if n == 0:
        notes.append("no examples: every metric is undefined")
    elif n_ans == 0:
        notes.append(f"all {n} predictions failed (None): every metric is undefined")
    else:
        if n_ans < n:
            notes.append(f"{n - n_ans} of {n} predictions failed (None) and are excluded from every metric")
        if n_pos == 0:
            notes.append("recall, f1, balanced_accuracy: no answered positive examples")
        if n_neg == 0:
            notes.append("specificity, balanced_accuracy: no answered negative examples")
        if tp + fp == 0:
            notes.append("precision: no predicted positives")

    ba = f1 = UNDEFINED
    if n_pos:
        # Stratified bootstrap: the correct answers among n_pos resampled positives ~ Binomial(n_pos, recall),
        # likewise for negatives. 2TP + FP + FN = TP + n_pos + n_neg - TN.
        tp_b = rng.binomial(n_pos, tp / n_pos, n_boot)
        tn_b = rng.binomial(n_neg, tn / n_neg, n_boot) if n_neg else np.zeros(n_boot, dtype=np.int64)
        f1 = _percentile(2 * tp / (2 * tp + fp + fn), 2 * tp_b / (tp_b + n_pos + n_neg - tn_b), confidence)
        ba = balanced_accuracy(tp, n_pos, tn, n_neg, confidence)

    auc, n_auc = UNDEFINED, 0
    if probabilities is None:
        notes.append("auc: no probabilities given")
    else:
        q = np.array([NAN if v is None else float(v) for v in probabilities], dtype=float)
        if len(q) != n:
            raise ValueError(f"{n} labels but {len(q)} probabilities")
        ok = answered & np.isfinite(q)
        n_auc = int(ok.sum())
        pos, neg = q[ok & y], q[ok & ~y]
        if n_auc == 0:
            notes.append("auc: no answered example has a probability")
        elif len(pos) == 0 or len(neg) == 0:
            notes.append("auc: needs at least one positive and one negative example with a probability")
        else:
            auc = auc_estimate(pos, neg, confidence)

    p = n_pos / n_ans if n_ans else NAN
    chance = {
        "balanced_accuracy": 0.5,
        "accuracy": max(p, 1 - p) if n_ans else NAN,
        "precision": p,
        "recall": 0.5,
        "f1": 2 * p / (1 + 2 * p) if n_ans else NAN,
        "specificity": 0.5,
        "auc": 0.5,
    }
    return BinaryMetrics(
        n=n,
        n_answered=n_ans,
        n_failed=n - n_ans,
        n_pos=n_pos,
        n_neg=n_neg,
        coverage=n_ans / n if n else NAN,
        balanced_accuracy=ba,
        accuracy=wilson(tp + tn, n_ans, confidence),
        precision=wilson(tp, tp + fp, confidence),
        recall=wilson(tp, n_pos, confidence),
        f1=f1,
        specificity=wilson(tn, n_neg, confidence),
        auc=auc,
        n_auc=n_auc,
        chance=chance,
        notes=tuple(notes),
        confidence=confidence,
    )


def flat(name: str, estimate: Estimate) -> dict[str, float | None]:
    """``{name: value, name_low: .., name_high: ..}``, JSON-safe, like ``BinaryMetrics.to_dict``."""
    d = estimate.to_dict()
    return {name: d["value"], f"{name}_low": d["low"], f"{name}_high": d["high"]}


def auc_metrics(labels: Sequence[bool], values: Sequence[float], rng: np.random.Generator) -> dict[str, Any]:
    """``auc`` / ``auc_low`` / ``auc_high`` / ``chance_auc`` / ``n_pos`` / ``n_neg`` / ``notes`` of ``values``
    ranking activating above non-activating examples (non-finite values are counted as failed). The summary
    of the scorers that rank examples by a local model's number (embedding similarity, surprisal)."""
    finite = [v is not None and bool(np.isfinite(v)) for v in values]
    m = binary_metrics(
        labels,
        [True if ok else None for ok in finite],
        [float(v) if ok else None for v, ok in zip(values, finite)],
        rng=rng,
    )
    return {
        **flat("auc", m.auc),
        "chance_auc": 0.5,
        "n_pos": m.n_pos,
        "n_neg": m.n_neg,
        "notes": "; ".join(n for n in m.notes if n.startswith("auc")),
    }

"""Metrics for scorer predictions, each with a confidence interval and a chance level.

Conventions
-----------
* One call to :func:`binary_metrics` covers one latent. Each example has a true label (activating or not),
  a prediction (``True`` / ``False``, or ``None`` when the LLM answer failed to parse or was refused) and
  optionally a score ``P(activating)`` (``None`` when unavailable; any score monotone in it works for AUC).
* Failed predictions are never silently dropped: they are excluded from every metric and counted in
  ``n_failed``; ``coverage = n_answered / n``. ``n_pos`` / ``n_neg`` and the prevalence behind the chance
  levels are over *answered* examples, the ones the metrics are computed on.
* Undefined values (one class only, everything failed, no predicted positives for precision, ...) are
  ``NaN`` with a line in ``notes`` saying why. Nothing raises for these and nothing is faked as 0.
  F1 is ``2TP / (2TP + FP + FN)``: defined whenever there is an answered positive, and a genuine 0 when
  no positive is found (even though precision is then undefined).
* Intervals (``confidence``, default 95 %): Wilson score for the proportions accuracy, precision, recall and
  specificity; for balanced accuracy ``(recall + specificity) / 2`` the per-class Wilson intervals combined by
  MOVER (Newcombe / Zou's method of variance estimates recovery for a sum of independent proportions), which
  keeps a width that reflects the sample size even when a class is answered all right or all wrong (a
  percentile bootstrap collapses to [0.5, 0.5] for a judge that answers "1" to everything); stratified
  percentile bootstrap for F1 (positives and negatives are resampled separately, so every replicate keeps the
  class sizes; the number of correct answers in a resampled stratum is binomial, which is how it is drawn);
  DeLong for AUC (Hanley-McNeil when a class has a single example), clipped to [0, 1]. The bootstrap uses the ``rng`` passed in, else
  ``numpy.random.default_rng(0)``; the global numpy RNG is never touched, so results are reproducible.
* Chance levels (``BinaryMetrics.chance``), with prevalence ``p`` = answered positives / answered examples:
  balanced accuracy 0.5, AUC 0.5, specificity 0.5 and recall 0.5 (guessing "yes" at rate 0.5);
  precision ``p`` (any guess that ignores the input); accuracy ``max(p, 1 - p)``, what always answering
  the majority class gets (4 positives + 10 negatives: 10/14 = 0.714 for always answering "no");
  F1 of guessing at rate 0.5: precision ``p``, recall 0.5, so ``F1 = 2 * p * 0.5 / (p + 0.5) = 2p / (1 + 2p)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "Estimate",
    "BinaryMetrics",
    "METRICS",
    "binary_metrics",
    "balanced_accuracy",
    "wilson",
    "mover_sum",
    "correlation",
    "aggregate",
    "aggregate_table",
]

METRICS = ("balanced_accuracy", "accuracy", "precision", "recall", "f1", "specificity", "auc")
NAN = float("nan")


def _json(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a confidence interval; every field is NaN when undefined."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float | None]:
        return {"value": _json(self.value), "low": _json(self.low), "high": _json(self.high)}


UNDEFINED = Estimate(NAN, NAN, NAN)


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
        out["coverage"] = _json(self.coverage)
        for name in METRICS:
            est: Estimate = getattr(self, name)
            out[name], out[f"{name}_low"], out[f"{name}_high"] = (_json(v) for v in (est.value, est.low, est.high))
        out["n_auc"] = self.n_auc
        out.update({f"chance_{k}": _json(v) for k, v in self.chance.items()})
        out["confidence"] = self.confidence
        out["notes"] = "; ".join(self.notes)
        return out


@functools.lru_cache(maxsize=64)
def _z(confidence: float) -> float:
    """The two-sided normal quantile; cached: ``stats.norm.ppf`` costs ~0.4 ms a call and every latent asks
    for the same few levels (a ValueError is not cached, so a bad level raises every time)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(stats.norm.ppf(0.5 + confidence / 2))


def wilson(k: int, n: int, confidence: float = 0.95) -> Estimate:
    """Proportion k/n with a Wilson score interval (undefined when n == 0)."""
    z = _z(confidence)
    if n == 0:
        return UNDEFINED
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half))


def mover_sum(parts: Sequence[Estimate], weights: Sequence[float]) -> Estimate:
    """``sum(w * part)`` with a MOVER interval from the parts' own intervals (parts independent).

    ``L = S - sqrt(sum((w (p - l))^2))`` over positive weights' lower distances (upper distances for negative
    weights), likewise for ``U``: exact for normal parts, and it inherits the asymmetry and the
    non-degeneracy of Wilson intervals at 0 and 1."""
    value = sum(w * p.value for p, w in zip(parts, weights))
    down = sum((w * (p.value - (p.low if w > 0 else p.high))) ** 2 for p, w in zip(parts, weights))
    up = sum((w * ((p.high if w > 0 else p.low) - p.value)) ** 2 for p, w in zip(parts, weights))
    return Estimate(value, value - math.sqrt(down), value + math.sqrt(up))


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


def _auc(pos: np.ndarray, neg: np.ndarray, confidence: float) -> Estimate:
    """Mann-Whitney AUC (ties count 1/2) with a DeLong interval via midranks (Hanley-McNeil if a class is 1)."""
    m, n = len(pos), len(neg)
    ranks = stats.rankdata(np.concatenate([pos, neg]))
    auc = float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))
    if m >= 2 and n >= 2:
        v10 = (ranks[:m] - stats.rankdata(pos)) / n  # per positive: fraction of negatives ranked below it
        v01 = 1 - (ranks[m:] - stats.rankdata(neg)) / m  # per negative: fraction of positives ranked above it
        var = v10.var(ddof=1) / m + v01.var(ddof=1) / n
    else:
        q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
        var = (auc * (1 - auc) + (m - 1) * (q1 - auc * auc) + (n - 1) * (q2 - auc * auc)) / (m * n)
    half = _z(confidence) * math.sqrt(max(var, 0.0))
    return Estimate(auc, max(0.0, auc - half), min(1.0, auc + half))


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
    _z(confidence)
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
            auc = _auc(pos, neg, confidence)

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


def correlation(
    predicted: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, *, confidence: float = 0.95
) -> Estimate:
    """Pearson r over pairs where both values are finite, with a Fisher-z interval.

    Undefined (NaN, no warning) with fewer than 4 such pairs or when either side has zero variance.
    """
    z = _z(confidence)
    x, y = np.asarray(predicted, dtype=float).reshape(-1), np.asarray(actual, dtype=float).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} predicted values but {len(y)} actual values")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:  # ptp is exact for constants; centred sums may not be 0
        return UNDEFINED
    x, y = x - x.mean(), y - y.mean()
    sxx, syy = float(x @ x), float(y @ y)
    r = float(np.clip(x @ y / math.sqrt(sxx * syy), -1.0, 1.0))
    with np.errstate(divide="ignore"):
        fz, half = np.arctanh(r), z / math.sqrt(len(x) - 3)
    return Estimate(r, float(np.tanh(fz - half)), float(np.tanh(fz + half)))


def aggregate(values: Sequence[float] | np.ndarray, *, confidence: float = 0.95) -> Estimate:
    """Mean of the finite values with a Student-t interval (interval NaN with one value; all NaN if none)."""
    _z(confidence)
    v = np.asarray(values, dtype=float).reshape(-1)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return UNDEFINED
    mean = float(v.mean())
    if len(v) == 1:
        return Estimate(mean, NAN, NAN)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1)) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return Estimate(mean, mean - half, mean + half)


def aggregate_table(
    df: pd.DataFrame, value_col: str = "score", by: str = "scorer", *, confidence: float = 0.95
) -> pd.DataFrame:
    """One row per ``by`` group: ``[by, n_latents, mean, low, high]``; n_latents counts finite values."""
    rows = []
    for key, group in df.groupby(by, sort=True):
        values = pd.to_numeric(group[value_col], errors="coerce").to_numpy(dtype=float)
        est = aggregate(values, confidence=confidence)
        n_latents = int(np.isfinite(values).sum())
        rows.append({by: key, "n_latents": n_latents, "mean": est.value, "low": est.low, "high": est.high})
    return pd.DataFrame(rows, columns=[by, "n_latents", "mean", "low", "high"])

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
  for AUC a score-type interval that never collapses (:func:`auc_interval`: the Hanley-McNeil variance as a
  function of the AUC, as in Newcombe's 2006 method 5, widened to DeLong's variance where the data spread more,
  with a continuity correction), where DeLong's own interval is [1, 1] at perfect separation even on 3 + 3
  examples. The bootstrap uses the ``rng`` passed in, else ``numpy.random.default_rng(0)``; the global numpy RNG
  is never touched, so results are reproducible.
* Simulation's correlation over tokens (:func:`excerpt_correlation`): Pearson r over all tokens (Bills et al.),
  its interval from the excerpts, not the tokens: a judge errs per excerpt (it reads the excerpt as the
  explanation's concept or not), so the tokens of one excerpt are not independent samples. A Fisher-z interval
  over tokens covered the truth 24% of the time in the outside audit; this one covers at least 93% (measured
  in ``tests/test_coverage.py``; the numbers are in ``docs/trust.md``).
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
    "mover_difference",
    "auc_interval",
    "auc_batch",
    "correlation",
    "excerpt_correlation",
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


def mover_difference(a: Estimate, b: Estimate, rho: float = 0.0) -> Estimate:
    """``a - b`` with the MOVER interval for two *correlated* estimates (Zou & Donner 2008; Newcombe 1998's
    method 10 is its form for paired proportions): with ``(l1, u1)``, ``(l2, u2)`` the two intervals and
    ``rho`` the correlation between the two estimators,
    ``L = d - sqrt((a - l1)^2 + (u2 - b)^2 - 2 rho (a - l1)(u2 - b))`` and likewise ``U``. ``rho = 0`` is
    :func:`mover_sum` with weights ``(1, -1)``; a positive ``rho`` (both judged on the same examples, and a judge
    that finds the same examples easy under both explanations) narrows the interval, as pairing should. NaN
    bounds when either interval is missing."""
    rho = min(1.0, max(-1.0, float(rho))) if math.isfinite(rho) else 0.0
    d = a.value - b.value
    if not all(math.isfinite(x) for x in (a.low, a.high, b.low, b.high)):
        return Estimate(d, NAN, NAN)
    dl1, du1, dl2, du2 = a.value - a.low, a.high - a.value, b.value - b.low, b.high - b.value
    down = dl1 * dl1 + du2 * du2 - 2 * rho * dl1 * du2
    up = du1 * du1 + dl2 * dl2 - 2 * rho * du1 * dl2
    return Estimate(d, d - math.sqrt(max(down, 0.0)), d + math.sqrt(max(up, 0.0)))


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


def auc_interval(
    auc: float | np.ndarray,
    m: int | np.ndarray,
    n: int | np.ndarray,
    inflation: float | np.ndarray = 1.0,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """The AUC's interval of :func:`binary_metrics` (vectorised: any argument may be an array).

    A score-type interval, built like Wilson's for a proportion: the set of ``theta`` with
    ``(|auc - theta| - c)^2 <= z^2 * inflation * V(theta)``, where ``V`` is Hanley & McNeil's (1982) variance of
    the Mann-Whitney AUC as a function of the true AUC, with both class sizes replaced by ``N* = (m + n) / 2``
    (Newcombe 2006, Part 2, his method 5), ``c = 1 / (2 m n)`` is half a step of the statistic (continuity
    correction) and ``inflation = max(1, DeLong variance / Hanley-McNeil variance at the estimate)`` widens it
    where the data spread more than the Hanley-McNeil shape assumes (unequal spreads of the two classes).
    ``V(theta)`` is 0 only at 0 and 1, so the interval has positive width for every finite sample, perfect
    separation included (DeLong's is [1, 1] there, even on 3 + 3 examples), and it is defined for ``m = 1`` or
    ``n = 1``. Measured coverage at nominal 95% (binormal scores, AUC 0.5-0.99; ``tests/test_coverage.py``):
    at least 95% at 5 + 5, 10 + 10 and 50 + 50, where DeLong's covered 14-50% at AUC 0.95-0.99 on 5 + 5.
    Bisection, 50 steps (to 1e-15): the set is an interval around the estimate."""
    z = _z(confidence)
    if all(isinstance(v, (int, float)) for v in (auc, m, n, inflation)):  # one latent: plain floats, 10x faster
        lo_, hi_ = _auc_bounds(float(auc), float(m), float(n), z * z * float(inflation))
        return np.asarray(lo_), np.asarray(hi_)
    a, m_, n_, k = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (auc, m, n, inflation)))
    k = z * z * k
    c, star, mn = 0.5 / (m_ * n_), (m_ + n_) / 2 - 1, m_ * n_

    def outside(theta: np.ndarray) -> np.ndarray:
        var = theta * (1 - theta) * (1 + star * ((1 - theta) / (2 - theta) + theta / (1 + theta))) / mn
        return np.maximum(np.abs(a - theta) - c, 0.0) ** 2 > k * var

    lo, hi = np.zeros_like(a), a.copy()
    for _ in range(_BISECT):  # lower bound: lo outside (unless 0 is inside), hi inside
        mid = (lo + hi) / 2
        out = outside(mid)
        lo, hi = np.where(out, mid, lo), np.where(out, hi, mid)
    low = np.where(outside(np.zeros_like(a)), hi, 0.0)
    lo, hi = a.copy(), np.ones_like(a)
    for _ in range(_BISECT):  # upper bound: lo inside, hi outside (unless 1 is inside)
        mid = (lo + hi) / 2
        out = outside(mid)
        lo, hi = np.where(out, lo, mid), np.where(out, mid, hi)
    high = np.where(outside(np.ones_like(a)), lo, 1.0)
    return low, high


_BISECT = 50


def _auc_bounds(a: float, m: float, n: float, k: float) -> tuple[float, float]:
    """:func:`auc_interval` for one latent, in plain floats (the same arithmetic)."""
    c, star, mn = 0.5 / (m * n), (m + n) / 2 - 1, m * n

    def outside(theta: float) -> bool:
        var = theta * (1 - theta) * (1 + star * ((1 - theta) / (2 - theta) + theta / (1 + theta))) / mn
        return max(abs(a - theta) - c, 0.0) ** 2 > k * var

    lo, hi = 0.0, a
    for _ in range(_BISECT):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if outside(mid) else (lo, mid)
    low = hi if outside(0.0) else 0.0
    lo, hi = a, 1.0
    for _ in range(_BISECT):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if outside(mid) else (mid, hi)
    return low, (lo if outside(1.0) else 1.0)


def auc_batch(pos: np.ndarray, neg: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mann-Whitney AUCs (ties count 1/2) of ``R`` samples at once, ``pos`` ``[R, m]`` and ``neg`` ``[R, n]``
    finite scores, with the interval of :func:`auc_interval`: DeLong's variance (placement values via
    midranks) widens it where it is larger than the Hanley-McNeil form. Returns ``(auc, low, high)``, each
    ``[R]``; what :func:`binary_metrics` computes for one latent (``R = 1``)."""
    pos, neg = np.atleast_2d(np.asarray(pos, dtype=float)), np.atleast_2d(np.asarray(neg, dtype=float))
    m, n = pos.shape[1], neg.shape[1]
    ranks = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    auc = (ranks[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    inflation = np.ones_like(auc)
    if m >= 2 and n >= 2:
        v10 = (ranks[:, :m] - stats.rankdata(pos, axis=1)) / n  # per positive: share of negatives below it
        v01 = 1 - (ranks[:, m:] - stats.rankdata(neg, axis=1)) / m  # per negative: share of positives above it
        delong = v10.var(axis=1, ddof=1) / m + v01.var(axis=1, ddof=1) / n
        hanley = auc * (1 - auc) * (1 + (m - 1) * (1 - auc) / (2 - auc) + (n - 1) * auc / (1 + auc)) / (m * n)
        with np.errstate(divide="ignore", invalid="ignore"):
            inflation = np.where(hanley > 0, np.maximum(1.0, delong / np.where(hanley > 0, hanley, 1.0)), 1.0)
    if len(auc) == 1:  # one latent: the scalar path of auc_interval (plain floats, 10x faster)
        low1, high1 = auc_interval(float(auc[0]), m, n, float(inflation[0]), confidence)
        low, high = np.atleast_1d(low1), np.atleast_1d(high1)
    else:
        low, high = auc_interval(auc, m, n, inflation, confidence)
    return auc, np.minimum(low, auc), np.maximum(high, auc)


def _auc(pos: np.ndarray, neg: np.ndarray, confidence: float) -> Estimate:
    """One latent's AUC with its interval (:func:`auc_batch`)."""
    auc, low, high = auc_batch(pos[None, :], neg[None, :], confidence)
    return Estimate(float(auc[0]), float(low[0]), float(high[0]))


@functools.lru_cache(maxsize=256)
def t_quantile(confidence: float, df: float) -> float:
    """The two-sided Student-t quantile (cached like :func:`_z`: ``stats.t.ppf`` costs ~0.1 ms a call)."""
    _z(confidence)
    return float(stats.t.ppf(0.5 + confidence / 2, df))


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

    The interval assumes independent pairs; for tokens of excerpts, whose errors come per excerpt, use
    :func:`excerpt_correlation`. Undefined (NaN, no warning) with fewer than 4 such pairs or when either side
    has zero variance.
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


@dataclass(frozen=True)
class ExcerptJackknife:
    """Pearson r over the tokens of several excerpts, with its leave-one-excerpt-out replicates.

    ``r``: over all tokens; ``keys``: the excerpts kept (those with a finite pair), in order; ``loo``: r with
    each excerpt left out (0 where a side has no variance left); ``groups``: each excerpt's stratum, as an
    index into ``labels``; ``var``: the stratified jackknife variance of atanh(r); ``bias``: its jackknife
    bias on that scale."""

    r: float
    keys: tuple[Any, ...]
    loo: np.ndarray
    groups: np.ndarray
    labels: tuple[Any, ...]
    var: float
    bias: float

    @property
    def k(self) -> int:
        return len(self.keys)

    def influence(self) -> np.ndarray:
        """Each excerpt's jackknife influence on r, ``(k_h - 1) * (mean_h(loo) - loo_i)`` within its stratum h:
        ``Var(r) ~ sum_i influence_i^2 / (k_h (k_h - 1))``."""
        k_h = np.bincount(self.groups, minlength=len(self.labels)).astype(float)
        mean_h = np.bincount(self.groups, weights=self.loo, minlength=len(self.labels)) / k_h
        return (k_h[self.groups] - 1) * (mean_h[self.groups] - self.loo)

    def interval(self, confidence: float = 0.95) -> Estimate:
        """See :func:`excerpt_correlation`."""
        if self.k < 4:
            return Estimate(self.r, NAN, NAN)
        t = t_quantile(confidence, self.k - len(self.labels))
        centre = _atanh(self.r) - self.bias
        half = t * math.sqrt(max(self.var, 1.0 / (self.k - 3)))
        low, high = math.tanh(centre - half), math.tanh(centre + half)
        return Estimate(self.r, min(low, self.r), max(high, self.r))


def _atanh(r: float | np.ndarray) -> Any:
    return np.arctanh(np.clip(r, -_R_MAX, _R_MAX))


_R_MAX = 1 - 1e-6  # |atanh| <= 7.25: a perfect replicate stays finite on Fisher's scale


def excerpt_jackknife(
    predicted: Sequence[Sequence[float] | None],
    actual: Sequence[Sequence[float] | None],
    groups: Sequence[Any] | None = None,
    keys: Sequence[Any] | None = None,
) -> ExcerptJackknife | None:
    """The pieces of :func:`excerpt_correlation` (None when r is undefined). One entry per excerpt: its
    predicted and actual values (None: the excerpt failed, left out), its stratum (``groups``, e.g. the label)
    and a key naming it (``keys``, default its index; pairs a score with its control). Vectorised over excerpts
    through their centred sums, so the leave-one-out replicates cost one pass."""
    if len(predicted) != len(actual):
        raise ValueError(f"{len(predicted)} predicted excerpts but {len(actual)} actual ones")
    groups = [0] * len(predicted) if groups is None else list(groups)
    keys = list(range(len(predicted))) if keys is None else list(keys)
    both = [(i, p, a) for i, (p, a) in enumerate(zip(predicted, actual)) if p is not None and a is not None]
    if not both:
        return None
    rows = [i for i, _, _ in both]
    sizes = [len(p) for _, p, _ in both]
    for (i, _, a), size in zip(both, sizes):
        if len(a) != size:
            raise ValueError(f"excerpt {i}: {size} predicted values but {len(a)} actual values")
    if len(set(sizes)) == 1:  # equal lengths (the usual case): one conversion each
        xm = np.asarray([p for _, p, _ in both], dtype=float)
        ym = np.asarray([a for _, _, a in both], dtype=float)
    else:
        xm, ym = np.full((len(rows), max(sizes)), np.nan), np.full((len(rows), max(sizes)), np.nan)
        for j, ((_, p, a), size) in enumerate(zip(both, sizes)):
            xm[j, :size], ym[j, :size] = p, a
    if np.isfinite(xm.sum()) and np.isfinite(ym.sum()):  # every value finite (the usual case): no masks
        kept, n_i, total = rows, np.full(len(rows), float(xm.shape[1])), xm.size
        if total < 4 or xm.max() == xm.min() or ym.max() == ym.min():
            return None
        x, y = xm - xm.mean(), ym - ym.mean()
    else:
        mask = np.isfinite(xm) & np.isfinite(ym)
        counts = mask.sum(axis=1)
        has = counts > 0
        kept = [i for i, h in zip(rows, has) if h]
        xm, ym, mask, n_i = xm[has], ym[has], mask[has], counts[has].astype(float)
        total = int(n_i.sum())
        if total < 4 or np.ptp(xm[mask]) == 0 or np.ptp(ym[mask]) == 0:
            return None
        x = np.where(mask, xm - xm[mask].mean(), 0.0)
        y = np.where(mask, ym - ym[mask].mean(), 0.0)
    # per excerpt: the centred sums; leaving excerpt i out subtracts its sums from the totals
    sx_i, sy_i = x.sum(axis=1), y.sum(axis=1)
    sxx_i, syy_i, sxy_i = (x * x).sum(axis=1), (y * y).sum(axis=1), (x * y).sum(axis=1)
    sxx, syy, sxy = float(sxx_i.sum()), float(syy_i.sum()), float(sxy_i.sum())
    r = float(np.clip(sxy / math.sqrt(sxx * syy), -1.0, 1.0))
    n_o = total - n_i
    with np.errstate(divide="ignore", invalid="ignore"):
        cxx = sxx - sxx_i - sx_i * sx_i / n_o  # the totals of x and y are 0 (centred), so theirs are -sx_i
        cyy = syy - syy_i - sy_i * sy_i / n_o
        cxy = sxy - sxy_i - sx_i * sy_i / n_o
        ok = (n_o >= 2) & (cxx > 1e-12 * sxx) & (cyy > 1e-12 * syy)
        loo = np.where(ok, cxy / np.sqrt(np.where(ok, cxx * cyy, 1.0)), 0.0)
    loo = np.clip(loo, -1.0, 1.0)
    code: dict[Any, int] = {}
    g = np.array([code.setdefault(groups[i], len(code)) for i in kept])
    z, z_loo = float(_atanh(r)), _atanh(loo)
    k_h = np.bincount(g, minlength=len(code)).astype(float)
    mean_h = np.bincount(g, weights=z_loo, minlength=len(code)) / k_h
    spread = np.bincount(g, weights=(z_loo - mean_h[g]) ** 2, minlength=len(code))
    var = float(((k_h - 1) / k_h * spread).sum())
    bias = float(((k_h - 1) * (mean_h - z)).sum())
    return ExcerptJackknife(r, tuple(keys[i] for i in kept), loo, g, tuple(code), var, bias)


def excerpt_correlation(
    predicted: Sequence[Sequence[float] | None],
    actual: Sequence[Sequence[float] | None],
    groups: Sequence[Any] | None = None,
    *,
    confidence: float = 0.95,
) -> Estimate:
    """Pearson r over all tokens of the excerpts (one list of predicted and one of actual values per excerpt;
    None for a failed excerpt), with an interval that resamples *excerpts*, stratified by ``groups``
    (activating / not).

    The point estimate is Bills et al.'s: r over every token, excerpts concatenated (the same number as
    :func:`correlation` on the concatenation). The interval is a stratified delete-one-excerpt jackknife on
    Fisher's z scale: ``atanh(r) - bias +- t(k - H) * sqrt(max(V, 1 / (k - 3)))``, with ``V`` and ``bias`` the
    stratified jackknife variance and bias of atanh(r) over the ``k`` answered excerpts in ``H`` strata.
    Why each piece, measured on a judge whose errors come per excerpt (it recognises an activating excerpt
    with probability 0.6 and raises a false alarm on 30% of the silent ones, 10 + 10 excerpts):

    * the unit is the excerpt: a Fisher interval over the 640 tokens covers the truth 21% of the time;
    * the jackknife alone covers 90%, missing mostly below (r over few excerpts is biased upward, and the
      replicates agree when the judge happened to recognise every excerpt): the bias correction and the
      floor ``1 / (k - 3)`` (no more precision than ``k`` independent pairs would give, Fisher's variance)
      bring it to 97% (98% for a judge that recognises every firing excerpt; ``tests/test_coverage.py``);
    * t with ``k - H`` degrees of freedom for the estimated variance.

    Where a judge's errors are independent from token to token the interval is wider than it needs to be:
    the excerpt is the honest unit only when errors come per excerpt, which is how LLM simulators err.

    A replicate whose predictions (or activations) have no variance left counts as r = 0: the estimate then
    rests on the one excerpt left out, and the interval widens accordingly. The interval always contains r.
    Undefined (NaN, no warning) as :func:`correlation` is; the interval is NaN with fewer than 4 excerpts."""
    _z(confidence)
    jack = excerpt_jackknife(predicted, actual, groups)
    if jack is None:
        return UNDEFINED
    return jack.interval(confidence)


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

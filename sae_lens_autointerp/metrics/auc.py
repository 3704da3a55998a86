"""AUC with an interval that never collapses on a finite sample (the package docstring)."""

from __future__ import annotations

import numpy as np
from scipy import stats

from .estimate import Estimate, z_quantile


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
    z = z_quantile(confidence)
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


def auc_estimate(pos: np.ndarray, neg: np.ndarray, confidence: float = 0.95) -> Estimate:
    """One latent's AUC with its interval (:func:`auc_batch`)."""
    auc, low, high = auc_batch(pos[None, :], neg[None, :], confidence)
    return Estimate(float(auc[0]), float(low[0]), float(high[0]))

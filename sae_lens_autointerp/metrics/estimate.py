"""Estimates with intervals, and the pieces every interval is built from: normal and t quantiles, Wilson
intervals for proportions, MOVER for sums and differences of estimates, the mean over latents (the package
docstring has the conventions)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..numeric import finite

NAN = float("nan")


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a confidence interval; every field is NaN when undefined."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float | None]:
        return {"value": finite(self.value), "low": finite(self.low), "high": finite(self.high)}


UNDEFINED = Estimate(NAN, NAN, NAN)


@functools.lru_cache(maxsize=64)
def z_quantile(confidence: float) -> float:
    """The two-sided normal quantile; cached: ``stats.norm.ppf`` costs ~0.4 ms a call and every latent asks
    for the same few levels (a ValueError is not cached, so a bad level raises every time)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(stats.norm.ppf(0.5 + confidence / 2))


def wilson(k: int, n: int, confidence: float = 0.95) -> Estimate:
    """Proportion k/n with a Wilson score interval (undefined when n == 0)."""
    z = z_quantile(confidence)
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


@functools.lru_cache(maxsize=256)
def t_quantile(confidence: float, df: float) -> float:
    """The two-sided Student-t quantile (cached like :func:`_z`: ``stats.t.ppf`` costs ~0.1 ms a call)."""
    z_quantile(confidence)
    return float(stats.t.ppf(0.5 + confidence / 2, df))


def aggregate(values: Sequence[float] | np.ndarray, *, confidence: float = 0.95) -> Estimate:
    """Mean of the finite values with a Student-t interval (interval NaN with one value; all NaN if none)."""
    z_quantile(confidence)
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

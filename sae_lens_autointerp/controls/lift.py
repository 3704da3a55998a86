"""Lift = score - control, with an interval for a paired difference: the control judged a subset of the
score's examples, so the two are correlated (see the package docstring)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..metrics import Estimate, excerpt_jackknife, mover_difference, mover_sum, t_quantile
from ..numeric import finite as _finite  # the call sites keep their name


def lift(score: Any, low: Any, high: Any, control: Any, c_low: Any, c_high: Any) -> Estimate | None:
    """``score - control`` with the MOVER interval for a difference of *independent* estimates; None when
    either score is missing, and NaN bounds when either has no interval. The fallback of
    :func:`paired_lift` (conservative when the two share examples and the judge errs alike on them)."""
    s, c = _finite(score), _finite(control)
    if s is None or c is None:
        return None
    bounds = [_finite(b) for b in (low, high, c_low, c_high)]
    if any(b is None for b in bounds):
        return Estimate(s - c, float("nan"), float("nan"))
    ls, hs, lc, hc = bounds
    return mover_sum([Estimate(s, ls, hs), Estimate(c, lc, hc)], [1.0, -1.0])  # type: ignore[arg-type]


@dataclass(frozen=True)
class Lift(Estimate):
    """A lift with how its interval was made (``method``)."""

    method: str = "mover"


def paired_lift(
    out: Mapping[str, Any], ctl: Mapping[str, Any], metric: Any = None, low: Any = None, high: Any = None
) -> Lift | None:
    """``score - control`` of one latent and scorer with an interval for the paired difference, from the two
    outputs' ``predictions`` (``out``: the scorer's entry, ``ctl``: its control's; ``metric`` / ``low`` /
    ``high``: the score's headline, default the entry's own). None when either score is missing.

    The value is always ``score - control``. The interval, by headline metric:

    * ``balanced_accuracy`` (and ``accuracy`` from labelled predictions): the examples are matched by
      ``(token_id, label)``; per class, the covariance of being right under both explanations on the shared
      examples gives the correlation of the two estimates (``cov * n_shared / (N n)``, the control's ``n``
      examples a subset of the score's ``N``), and the two MOVER-Wilson intervals are combined by MOVER for
      correlated estimates (Zou & Donner 2008; Newcombe 1998's method 10 for paired proportions);
    * ``auc``: the same with DeLong's placement values (each positive's share of negatives ranked below it,
      each negative's share of positives above it) for the covariance, combined with the two score-type AUC
      intervals, which never collapse;
    * ``pearson`` (simulation): the covariance of the two leave-one-excerpt-out jackknifes over the shared
      excerpts, combined with the two excerpt intervals;
    * ``mean_diff`` (intervention): the score and the control rate the same steered and clean texts, so the
      lift is the mean of the per-prompt differences with a Student-t interval over prompts.

    Otherwise (another metric, predictions that name no examples, no shared example) the unpaired MOVER of
    :func:`lift`; ``method`` says which was used. Analytic and vectorised: one call per latent and scorer,
    tens (balanced accuracy) to hundreds (AUC, simulation) of microseconds."""
    s, c = _finite(out.get("score")), _finite(ctl.get("score"))
    if s is None or c is None:
        return None
    metric = out.get("metric") if metric is None else metric
    bounds = [_finite(b) for b in (out.get("low") if low is None else low, out.get("high") if high is None else high)]
    bounds += [_finite(ctl.get("low")), _finite(ctl.get("high"))]
    if any(b is None for b in bounds):
        return Lift(s - c, float("nan"), float("nan"), "no interval: the score or the control has none")
    a, b = Estimate(s, bounds[0], bounds[1]), Estimate(c, bounds[2], bounds[3])  # type: ignore[arg-type]
    pair = _PAIRED.get(str(metric))
    found = None if pair is None else pair(out.get("predictions") or [], ctl.get("predictions") or [], a, b)
    if found is None:
        why = f"no paired form for {metric!r}" if pair is None else "the predictions cannot be paired"
        est = mover_sum([a, b], [1.0, -1.0])
        return Lift(est.value, est.low, est.high, f"mover (unpaired: {why})")
    return found


def _rho(cov: float, var_a: float, var_b: float) -> float:
    return min(1.0, max(-1.0, cov / math.sqrt(var_a * var_b))) if var_a > 0 and var_b > 0 else 0.0


#: Per stratum (a class; DeLong's positives / negatives): the examples' keys and their values.
_Strata = dict[Any, tuple[list[Any], np.ndarray]]


def _moments(x: tuple[list[Any], np.ndarray], y: tuple[list[Any], np.ndarray]) -> tuple[float, float, float, int]:
    """Var of the mean of ``x``'s values, of ``y``'s, their covariance and how many examples they share: the
    covariance of two means of ``n_x`` and ``n_y`` examples sharing ``s`` is ``sample_cov(shared) * s /
    (n_x n_y)``."""
    (xk, xv), (yk, yv) = x, y
    at = {k: i for i, k in enumerate(xk)}
    pairs = [(at[k], j) for j, k in enumerate(yk) if k in at]
    var_a, var_b = _var_of_mean(xv), _var_of_mean(yv)
    if len(pairs) < 2:
        return var_a, var_b, 0.0, len(pairs)
    ix, iy = np.array(pairs).T
    u, v = xv[ix], yv[iy]
    s = len(pairs)
    products = float(u @ v) - float(u.sum()) * float(v.sum()) / s
    return var_a, var_b, products / (s - 1) * s / (len(xv) * len(yv)), s


def _var_of_mean(v: np.ndarray) -> float:
    n = len(v)
    if n < 2:
        return 0.0
    total = float(v.sum())
    return max(float(v @ v) - total * total / n, 0.0) / (n - 1) / n


def _paired(x: _Strata, y: _Strata, a: Estimate, b: Estimate, what: str) -> Lift | None:
    """MOVER for correlated estimates, the correlation from the strata's shared examples (each stratum's mean
    adds to the estimate with weight 1, as DeLong's positives and negatives do to the AUC's variance)."""
    var_a = var_b = cov = 0.0
    n_shared = 0
    for stratum, xs in x.items():
        ys = y.get(stratum)
        if ys is None:
            var_a += _var_of_mean(xs[1])
            continue
        va, vb, c, k = _moments(xs, ys)
        var_a, var_b, cov, n_shared = var_a + va, var_b + vb, cov + c, n_shared + k
    for stratum, ys in y.items():
        if stratum not in x:
            var_b += _var_of_mean(ys[1])
    if n_shared == 0:
        return None
    rho = _rho(cov, var_a, var_b)
    est = mover_difference(a, b, rho)
    return Lift(est.value, est.low, est.high, f"paired: {n_shared} shared {what}, rho {rho:+.2f}")


def _columns(preds: Sequence[Mapping[str, Any]], value: str) -> tuple[list[Any], list[Any], list[Any]] | None:
    """``token_id``, ``label`` and ``value`` of every prediction (None when any lacks one: nothing to pair)."""
    try:
        tokens = [p["token_id"] for p in preds]
        labels = [p["label"] for p in preds]
        values = [p[value] for p in preds]
    except KeyError:
        return None
    return (tokens, labels, values) if None not in tokens else None


def _right(preds: Sequence[Mapping[str, Any]], by_class: bool) -> dict[Any, dict[Any, int]] | None:
    """Per class (or one stratum): answered ``(token_id, label)`` -> 1 when right, 0 when wrong (plain
    Python: a latent's 100 answers cost microseconds)."""
    out: dict[Any, dict[Any, int]] = {}
    try:
        for p in preds:
            said, label, token = p["prediction"], bool(p["label"]), p["token_id"]
            if token is None:
                return None
            if said is not None:
                out.setdefault(label if by_class else None, {})[token, label] = int(bool(said) == label)
    except KeyError:
        return None
    return out


def _paired_proportions(by_class: bool) -> Callable[..., Lift | None]:
    def pair(
        main: Sequence[Mapping[str, Any]], ctl: Sequence[Mapping[str, Any]], a: Estimate, b: Estimate
    ) -> Lift | None:
        x, y = _right(main, by_class), _right(ctl, by_class)
        if not x or not y:
            return None
        w2 = (1 / len(x) if by_class else 1.0) ** 2  # balanced accuracy: the mean of the per-class proportions
        var_a = var_b = cov = 0.0
        n_shared = 0
        for stratum in set(x) | set(y):
            xs, ys = x.get(stratum, {}), y.get(stratum, {})
            var_a += w2 * _binary_var(sum(xs.values()), len(xs))
            var_b += w2 * _binary_var(sum(ys.values()), len(ys))
            su = sv = suv = shared = 0
            for key, v in ys.items():
                u = xs.get(key)
                if u is not None:
                    shared, su, sv, suv = shared + 1, su + u, sv + v, suv + u * v
            n_shared += shared
            if shared >= 2:  # sum of cross products, less Newcombe's 1/2 toward 0
                products = suv - su * sv / shared
                products = math.copysign(max(abs(products) - 0.5, 0.0), products)
                cov += w2 * products / (shared - 1) * shared / (len(xs) * len(ys))
        if n_shared == 0:
            return None
        rho = _rho(cov, var_a, var_b)
        est = mover_difference(a, b, rho)
        return Lift(est.value, est.low, est.high, f"paired: {n_shared} shared examples, rho {rho:+.2f}")

    return pair


def _binary_var(k: int, n: int) -> float:
    """The variance of the mean of ``n`` 0/1 values, ``k`` of them 1 (sample variance, ddof 1, over n)."""
    return k * (n - k) / (n * n * (n - 1)) if n > 1 else 0.0


_AUC_VALUES = ("similarity", "reduction", "probability")


def _placements(preds: Sequence[Mapping[str, Any]]) -> _Strata | None:
    """DeLong's placement values by ``(token_id, label)``: each positive's share of negatives below it (ties
    1/2), each negative's share of positives above it; None when the predictions cannot be paired."""
    key = next((k for k in _AUC_VALUES if preds and preds[0].get(k) is not None), None)
    cols = None if key is None else _columns(preds, key)
    if cols is None:
        return None
    tokens, labels, values = cols
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    lab = np.array([bool(x) for x in labels], dtype=bool)
    if "prediction" in preds[0]:  # a classification judge's failed answers are left out
        v[[p.get("prediction") is None for p in preds]] = np.nan
    ok = np.isfinite(v)
    pos, neg = np.flatnonzero(ok & lab), np.flatnonzero(ok & ~lab)
    if len(pos) < 2 or len(neg) < 2:
        return None
    vp, vn = v[pos][:, None], v[neg][None, :]
    above = (vp > vn) + 0.5 * (vp == vn)
    return {
        True: ([(tokens[i], True) for i in pos], above.mean(axis=1)),
        False: ([(tokens[i], False) for i in neg], above.mean(axis=0)),
    }


def _paired_auc(
    main: Sequence[Mapping[str, Any]], ctl: Sequence[Mapping[str, Any]], a: Estimate, b: Estimate
) -> Lift | None:
    x, y = _placements(main), _placements(ctl)
    if x is None or y is None:
        return None
    return _paired(x, y, a, b, "examples (DeLong)")


def _jackknife(preds: Sequence[Mapping[str, Any]]) -> Any:
    cols = _columns(preds, "predicted")
    if cols is None:
        return None
    tokens, labels, predicted = cols
    groups = [bool(x) for x in labels]
    keys = list(zip(tokens, groups))
    return excerpt_jackknife(predicted, [p.get("actual") for p in preds], groups, keys)


def _paired_pearson(
    main: Sequence[Mapping[str, Any]], ctl: Sequence[Mapping[str, Any]], a: Estimate, b: Estimate
) -> Lift | None:
    """Each excerpt's jackknife influence on r: ``Var(r) ~ sum_h sum_i infl_i^2 / (k_h (k_h - 1))`` and
    ``Cov(r_x, r_y) ~ sum_h s_h / (k_h k'_h) * sum_shared infl_i infl'_i / (s_h - 1)``."""
    x, y = _jackknife(main), _jackknife(ctl)
    if x is None or y is None:
        return None

    def strata(jack: Any) -> _Strata:
        infl = jack.influence()
        out: _Strata = {}
        for code, label in enumerate(jack.labels):
            at = np.flatnonzero(jack.groups == code)
            out[label] = ([jack.keys[i] for i in at], infl[at])
        return out

    sx, sy = strata(x), strata(y)
    var_a = var_b = cov = 0.0
    n_shared = 0
    for g, (xk, xv) in sx.items():
        var_a += float((xv**2).sum()) / (len(xv) * (len(xv) - 1)) if len(xv) > 1 else 0.0
        if g not in sy:
            continue
        yk, yv = sy[g]
        var_b += float((yv**2).sum()) / (len(yv) * (len(yv) - 1)) if len(yv) > 1 else 0.0
        at = {k: i for i, k in enumerate(xk)}
        pairs = [(at[k], j) for j, k in enumerate(yk) if k in at]
        n_shared += len(pairs)
        if len(pairs) >= 2:
            ix, iy = np.array(pairs).T
            cov += float((xv[ix] * yv[iy]).sum()) / (len(pairs) - 1) * len(pairs) / (len(xv) * len(yv))
    for g, (_, yv) in sy.items():
        if g not in sx:
            var_b += float((yv**2).sum()) / (len(yv) * (len(yv) - 1)) if len(yv) > 1 else 0.0
    if n_shared == 0:
        return None
    rho = _rho(cov, var_a, var_b)
    est = mover_difference(a, b, rho)
    return Lift(est.value, est.low, est.high, f"paired: {n_shared} shared excerpts (jackknife), rho {rho:+.2f}")


def _paired_means(
    main: Sequence[Mapping[str, Any]], ctl: Sequence[Mapping[str, Any]], a: Estimate, b: Estimate
) -> Lift | None:
    if len(main) != len(ctl) or len(main) < 2:
        return None
    d = []
    for p, q in zip(main, ctl):
        if p.get("prompt") != q.get("prompt") or _finite(p.get("diff")) is None or _finite(q.get("diff")) is None:
            return None
        d.append(float(p["diff"]) - float(q["diff"]))
    v = np.asarray(d)
    if abs(float(v.mean()) - (a.value - b.value)) > 1e-9 * max(1.0, abs(a.value - b.value)):
        return None  # the score is not the plain mean over these prompts
    half = t_quantile(0.95, len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))
    value = a.value - b.value
    return Lift(value, value - half, value + half, f"paired t over {len(v)} prompts")


_PAIRED: dict[str, Callable[..., Lift | None]] = {
    "balanced_accuracy": _paired_proportions(by_class=True),
    "accuracy": _paired_proportions(by_class=False),
    "auc": _paired_auc,
    "pearson": _paired_pearson,
    "mean_diff": _paired_means,
}

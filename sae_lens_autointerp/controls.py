"""Controls and the judge check: does a score say more than a wrong explanation would?

A score is only worth reading next to what the same judge gives a *mismatched* explanation on the same
examples. For every scorer that reads an explanation, each latent is also scored with a control: the
explanation of another latent of the same run (chosen with ``latent_rng(seed, latent, "control")`` among
the latents of its block of the run, see :data:`CONTROL_BLOCK`), on a seeded subset of the examples the score
itself judged (``fraction`` of each class, default 0.2, so a control costs at most 20% extra judgments; see
:func:`control_sample`). The control's requests are labelled with the stage ``"<scorer>:control"`` in usage.

Per latent: ``lift = score - control`` with an interval for a *paired* difference (:func:`paired_lift`): the
control's examples are a subset of the score's, so the two estimates are correlated, and the interval
combines the two scores' own intervals with that correlation, estimated on the shared examples (MOVER for
correlated estimates, :func:`~sae_lens_autointerp.metrics.mover_difference`); intervention pairs its prompts
and takes a t interval of the per-prompt differences. Where predictions cannot be paired it falls back to
the unpaired MOVER (:func:`lift`) and says so in ``method``. ``signal`` is True when the interval lies above 0.

Per run and scorer, the judge check: the share of identical answers (:func:`answer_counts`: the most common
binary answer, intruder position, simulation prediction vector, or value of a local scorer, over every
answered example) and the mean lift over latents, with an interval from each latent's own sampling error
(from its lift interval) or the spread between latents, whichever is larger (:func:`mean_lift`, a test of
"the judge's answers do not depend on the explanation"), so it never collapses when a few latents happen
to have the same lift. ``summary()``'s mean score uses :func:`pooled_mean` instead, a t interval for the
mean over all the SAE's latents. A scorer that reads no
explanation (intruder) has no control; its check compares the score with its chance level instead.
The judge *cannot tell* when the mean lift's interval reaches 0 or 95% or more of its answers are identical;
then :func:`judge_sentence` says so in one plain sentence naming the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .llm.base import classify_all
from .metrics import Estimate, excerpt_jackknife, mover_difference, mover_sum, t_quantile
from .numeric import finite as _finite  # the call sites keep their name
from .records import Explanation
from .sampling import LatentSample, latent_rng

#: Latents are processed in blocks of this many (in the order given); a control explanation comes from
#: another latent of the same block, so a block's controls do not depend on which other blocks ran.
CONTROL_BLOCK = 64
DEFAULT_FRACTION = 0.2
STAGE_SUFFIX = ":control"
IDENTICAL_LIMIT = 0.95


def check_fraction(controls: Any) -> dict[str, float]:
    """``controls=`` as ``{scorer name or "*": fraction in [0, 1]}``. A number applies to every scorer (True: the
    default 0.2; False / None / 0: off); a mapping sets fractions per scorer, ``"*"`` (default 0.2) the rest."""
    from .errors import ConfigError

    def one(value: Any, where: str) -> float:
        if value is None or value is False:
            return 0.0
        if value is True:
            return DEFAULT_FRACTION
        if isinstance(value, str) or not isinstance(value, (int, float)) or not 0 <= float(value) <= 1:
            raise ConfigError(f"controls{where} must be a fraction between 0 and 1 (or True / False), got {value!r}")
        return float(value)

    if isinstance(controls, Mapping):
        out = {"*": DEFAULT_FRACTION}
        for name, value in controls.items():
            if not isinstance(name, str):
                raise ConfigError(f"controls keys are scorer names (or '*'), got {name!r}")
            out[name] = one(value, f"[{name!r}]")
        return out
    return {"*": one(controls, "")}


def fraction_for(fractions: Mapping[str, float], scorer: str) -> float:
    return float(fractions.get(scorer, fractions.get("*", DEFAULT_FRACTION)))


def choose_control(latent: int, pool: Mapping[int, str], seed: int) -> int | None:
    """Another latent of ``pool`` (latent -> explanation text) whose explanation differs from this one's."""
    own = pool.get(latent)
    candidates = sorted(j for j, text in pool.items() if j != latent and text and text != own)
    if not candidates:
        return None
    return candidates[int(latent_rng(seed, latent, "control").integers(len(candidates)))]


def control_sample(
    sample: LatentSample, fraction: float, seed: int, scored: Collection[int] | None = None
) -> LatentSample:
    """A seeded subset of the test examples: ``ceil(fraction * n)`` of each class (at least one when there are
    any), in their original order. ``scored``: the token ids of the examples the main score judged
    (:func:`scored_examples`); the subset is then drawn from those alone (all of them when fewer), so the
    control's examples are a subset of the score's and the lift can be paired. A scorer that subsamples
    (simulation judges 10 + 10 of the test examples) would otherwise share only a few examples with its
    control. The explainer examples are unchanged (scorers never score them)."""
    rng = latent_rng(seed, sample.latent, "control-sample")

    def take(examples: tuple[Any, ...]) -> tuple[Any, ...]:
        if scored is not None:
            examples = tuple(e for e in examples if e.token_id in scored)
        if not examples:
            return ()
        k = max(1, math.ceil(fraction * len(examples) - 1e-9))
        return tuple(examples[i] for i in sorted(rng.permutation(len(examples))[:k]))

    return replace(sample, test_pos=take(sample.test_pos), test_neg=take(sample.test_neg))


def scored_examples(entry: Mapping[str, Any] | None) -> set[int] | None:
    """The token ids of the examples a scorer output judged (its predictions' ``token_id``), or None when its
    predictions name no examples (intervention's prompts, a failed scorer): the control then draws from all
    test examples."""
    ids = {p["token_id"] for p in (entry or {}).get("predictions") or () if p.get("token_id") is not None}
    return ids or None


def control_explanation(latent: int, source: int, text: str) -> Explanation:
    return Explanation(latent, text, explainer="control", error=None, raw=f"explanation of latent {source}")


class RelabelledClient:
    """An LLM client that labels every request's usage stage with a suffix (``detection:control``)."""

    def __init__(self, inner: Any, suffix: str = STAGE_SUFFIX) -> None:
        self.inner = inner
        self.suffix = suffix
        self.name = inner.name
        self.usage = inner.usage

    async def chat(self, messages: Any, **params: Any) -> Any:
        params["stage"] = str(params.get("stage", "default")) + self.suffix
        return await self.inner.chat(messages, **params)

    async def classify(self, messages: Any, choices: Sequence[str] = ("0", "1"), **params: Any) -> Any:
        params["stage"] = str(params.get("stage", "default")) + self.suffix
        return await self.inner.classify(messages, choices, **params)

    async def classify_many(self, prompts: Any, choices: Sequence[str] = ("0", "1"), **params: Any) -> list[Any]:
        params["stage"] = str(params.get("stage", "default")) + self.suffix
        return await classify_all(self.inner, prompts, choices, **params)

    async def aclose(self) -> None:  # the run closes the inner client
        return None


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


@dataclass(frozen=True)
class JudgeCheck:
    """The judge check of one scorer over one run (see the module docstring). ``reference``: what the score is
    compared with, ``"control"`` (another latent's explanation) or ``"chance"`` (a scorer that reads no
    explanation: its chance level); ``lift`` is the pooled score minus that reference."""

    scorer: str
    n_controls: int
    lift: Estimate
    identical_answers: float | None
    can_tell: bool | None  # None: no control was scored
    reason: str
    reference: str = "control"

    def to_dict(self) -> dict[str, Any]:
        over_control = self.reference == "control"  # the lift columns are the lift over the control
        return {
            "scorer": self.scorer,
            "n_controls": self.n_controls,
            "lift": _finite(self.lift.value) if over_control else None,
            "lift_low": _finite(self.lift.low) if over_control else None,
            "lift_high": _finite(self.lift.high) if over_control else None,
            "identical_answers": self.identical_answers,
            "judge_ok": self.can_tell,
            "judge_check": self.reason,
        }


def identical_share(answers: Iterable[Any]) -> float | None:
    values = [a for a in answers if a is not None]
    if not values:
        return None
    counts: dict[Any, int] = {}
    for a in values:
        counts[a] = counts.get(a, 0) + 1
    return max(counts.values()) / len(values)


#: Values of the local scorers (embedding, surprisal, intervention) that are the judge's "answer".
_VALUES = ("similarity", "reduction", "diff")


def answers_of(scorer_output: Mapping[str, Any]) -> list[Any]:
    """The judge's answers in one scorer output, one per judged example (None: it failed):

    * binary scorers: the prediction (True / False); intruder: the position named;
    * simulation: the predicted vector, rounded to the integers 0-10 the judge writes (a tuple), so a judge
      that answers the same list whatever the excerpt says (a position-only habit: windows have equal
      length) gives identical answers even when logprobs make the expected values differ in the decimals;
    * embedding, surprisal, intervention: the similarity, loss reduction or log-probability difference, to 4
      decimals: an embedder or scorer model that gives every example the same value (or steering that
      changes no text, so every difference is 0) answers identically."""
    out: list[Any] = []
    for p in scorer_output.get("predictions") or []:
        if "prediction" in p:
            out.append(p["prediction"])
        elif "answer" in p:
            out.append(p["answer"])
        elif "predicted" in p:
            v = p["predicted"]
            out.append(None if v is None else tuple(round(x) if math.isfinite(x) else None for x in map(float, v)))
        else:
            key = next((k for k in _VALUES if k in p), None)
            if key is not None:
                x = _finite(p[key])
                out.append(None if x is None else round(x, 4) + 0.0)  # + 0.0: -0.0 is 0.0
    return out


#: The key of :func:`answer_counts` for answers given only once in their row (never "the same answer").
OTHER = "_other"
_KEEP = 4


def answer_counts(scorer_output: Mapping[str, Any]) -> dict[str, int]:
    """How often the judge gave each answer in one scorer output (:func:`answers_of`), as JSON-safe keys:
    ``"true"`` / ``"false"``, an intruder position, a value, or a short hash of a simulation vector. Binary and
    intruder answers are counted exactly. Vectors and values, which are nearly all different for a judge that
    reads the text, keep only the answers given at least twice in this output (at most 4 of them); the rest
    count under :data:`OTHER`, so the run's pooled counts stay small on millions of latents and the share of
    the most common answer is exact whenever that answer repeats within latents (as a text-blind judge's does).
    Vectorised for vectors and values (one call per latent and scorer)."""
    preds = scorer_output.get("predictions") or []
    if not preds:
        return {}
    first = preds[0]
    if "prediction" not in first and "answer" not in first:
        if "predicted" in first and all("predicted" in p for p in preds):
            return _repeated_vectors([p["predicted"] for p in preds])
        key = next((k for k in _VALUES if k in first), None)
        if key is not None and all(key in p for p in preds):
            values = np.array([np.nan if p[key] is None else p[key] for p in preds], dtype=float)
            values = np.round(values[np.isfinite(values)], 4) + 0.0  # + 0.0: -0.0 is 0.0
            found, times = np.unique(values, return_counts=True)
            return _keep_repeated([(json.dumps(float(v)), int(n)) for v, n in zip(found, times) if n >= 2], len(values))
    counts: dict[str, int] = {}
    exact = True
    for a in answers_of(scorer_output):
        if a is None:
            continue
        if a is True or a is False:
            key = "true" if a else "false"
        elif isinstance(a, tuple):
            key, exact = "v" + hashlib.sha1(json.dumps(a).encode()).hexdigest()[:16], False
        else:
            key = json.dumps(a, default=str)
            exact = exact and isinstance(a, int)
        counts[key] = counts.get(key, 0) + 1
    if exact:
        return counts
    return _keep_repeated([(k, n) for k, n in counts.items() if n >= 2], sum(counts.values()))


def _repeated_vectors(vectors: Sequence[Sequence[float] | None]) -> dict[str, int]:
    """:func:`answer_counts` of simulation vectors: rounded to integers, compared as bytes."""
    seen: dict[bytes, int] = {}
    total = 0
    rows = [v for v in vectors if v is not None]
    by_length: dict[int, list[Sequence[float]]] = {}
    for v in rows:
        by_length.setdefault(len(v), []).append(v)
    for length, group in by_length.items():
        m = np.rint(np.nan_to_num(np.asarray(group, dtype=float), nan=-1.0)).astype(np.int16)
        for row in m:
            b = length.to_bytes(4, "little") + row.tobytes()
            seen[b] = seen.get(b, 0) + 1
        total += len(group)
    repeated = [("v" + hashlib.sha1(b).hexdigest()[:16], n) for b, n in seen.items() if n >= 2]
    return _keep_repeated(repeated, total)


def _keep_repeated(repeated: list[tuple[str, int]], total: int) -> dict[str, int]:
    out = dict(sorted(repeated, key=lambda kv: -kv[1])[:_KEEP])
    rest = total - sum(out.values())
    if rest:
        out[OTHER] = rest
    return out


def _share_of(counts: Mapping[Any, int]) -> float | None:
    total = sum(counts.values())
    if not total:
        return None
    return max((n for k, n in counts.items() if k != OTHER), default=1) / total


def pooled_mean(lifts: Sequence[Estimate], confidence: float = 0.95) -> Estimate:
    """Mean of per-latent estimates (lifts, scores) with an interval that holds its coverage at a few latents
    and never collapses: the wider of ``t(n - 1) * S / sqrt(n)`` and ``z * sqrt(W / n)``, ``S^2`` the sample
    variance of the ``n`` values and ``W`` the mean of the latents' own squared standard errors (half their
    95% interval's width / 1.96; 0 for a latent without an interval).

    ``S^2 / n`` estimates the variance of the mean over latents whatever mix of between-latent spread and
    within-latent sampling error makes it: with equal weights this is the Hartung-Knapp random-effects
    interval, whose t quantile holds the coverage at 4-6 latents. ``W / n`` is the variance the latents' own
    sampling errors alone imply, known from their intervals (so z): taking the wider of the two (the modified
    Hartung-Knapp rule, Roever, Knapp & Friede 2015) keeps latents that happen to agree (a constant judge,
    perfect scores) from giving a zero-width interval. It replaces z with a moment estimate of the
    between-latent variance, which covered 87% (4 latents), 89% (5) and 91% (6) at nominal 95%; this one
    covers 95-98% there (``tests/test_coverage.py``, numbers in ``docs/trust.md``). One latent: its own
    interval (nothing to say about the spread between latents)."""
    values = np.array([e.value for e in lifts], dtype=float)
    n = len(values)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    widths = np.array([e.high - e.low for e in lifts], dtype=float)
    se = np.where(np.isfinite(widths), widths / (2 * _Z95), 0.0)
    within = float(np.sum(se**2)) / n
    mean = float(values.mean())
    z = t_quantile(confidence, math.inf)
    if n == 1:
        if not np.isfinite(widths[0]):
            return Estimate(mean, float("nan"), float("nan"))
        return Estimate(mean, mean - z * float(se[0]), mean + z * float(se[0]))
    spread = t_quantile(confidence, n - 1) * math.sqrt(float(np.var(values, ddof=1)) / n)
    half = max(spread, z * math.sqrt(within / n))
    return Estimate(mean, mean - half, mean + half)


_Z95 = t_quantile(0.95, math.inf)


def mean_lift(lifts: Sequence[Estimate], confidence: float = 0.95) -> Estimate:
    """The judge check's mean lift over the latents scored, with ``mean +- z * sqrt(max(S^2, W) / n)`` (``S^2``
    the sample variance of the lifts, ``W`` the mean of their own squared standard errors, each from the wider
    side of the latent's interval: the check is one-sided and MOVER intervals are not symmetric).

    The check asks whether the judge's answers depend on which explanation it reads. If they do not, every
    latent's true lift is 0: no spread between latents, and the latents' own sampling errors (``W``) are the
    right yardstick, so z, not t with n - 1 degrees of freedom for a spread the null says is absent; ``S^2``
    stands in where the lifts vary more than their own intervals say (intervals too narrow, latents that
    differ). It is a conservative interval for the mean of *these* latents' true lifts (its variance is
    ``W / n``), which is what "the judge carries signal here" is about; :func:`pooled_mean`'s t interval is
    for the mean over all latents of the SAE (``summary()``'s score) and would call a judge that does
    clearly better on each of 3 latents "no signal" at t(2). Measured in ``tests/test_coverage.py``: a judge
    that ignores the explanation is called "carries signal" in 1.9-2.8% of runs (3, 6, 20 latents; nominal
    2.5%), the interval covers the latents' mean true lift at 96-99%, and true lifts of 0, 0.11 and 0.21 on 3
    latents are credited 3x as often as by the t interval. One latent: the wider side of its own interval,
    both ways."""
    values = np.array([e.value for e in lifts], dtype=float)
    n = len(values)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    widths = np.array([2 * max(e.value - e.low, e.high - e.value) for e in lifts], dtype=float)
    if n == 1 and not np.isfinite(widths[0]):
        return Estimate(float(values[0]), float("nan"), float("nan"))
    se = np.where(np.isfinite(widths), widths / (2 * _Z95), 0.0)
    within = float(np.sum(se**2)) / n
    spread = float(np.var(values, ddof=1)) if n > 1 else 0.0
    half = t_quantile(confidence, math.inf) * math.sqrt(max(spread, within) / n)
    mean = float(values.mean())
    return Estimate(mean, mean - half, mean + half)


def judge_check(
    scorer: str,
    lifts: Sequence[Estimate],
    answers: Sequence[Any] = (),
    *,
    answer_counts: Mapping[Any, int] | None = None,
    reference: str = "control",
) -> JudgeCheck:
    """``answers``: the judge's answers over the latents, or ``answer_counts``: how often it gave each (the
    :data:`OTHER` key counts answers that are never the most common one). ``lifts``: per latent, the score
    minus its control (``reference="control"``) or minus its chance level (``"chance"``, for a scorer that
    reads no explanation). The decision and the interval shown are :func:`mean_lift`'s."""
    mean = mean_lift(lifts)
    share = _share_of(answer_counts) if answer_counts is not None else identical_share(answers)
    n = len(lifts)
    n_controls = n if reference == "control" else 0
    if share is not None and share >= IDENTICAL_LIMIT:
        return JudgeCheck(
            scorer,
            n_controls,
            mean,
            share,
            False,
            f"the judge gave the same answer to {share:.0%} of the examples",
            reference,
        )
    if n == 0:
        why = (
            "no control was scored (controls are off, or no other latent of the run had an explanation)"
            if reference == "control"
            else "this scorer reads no explanation, so it has no control, and no score has a chance level"
        )
        return JudgeCheck(scorer, 0, mean, share, None, why, reference)
    if not math.isfinite(mean.low) or not math.isfinite(mean.high):
        what = f"the lift over {n} control(s)" if reference == "control" else f"the score over {_latents(n)}"
        return JudgeCheck(scorer, n_controls, mean, share, None, f"{what} has no interval", reference)
    if reference == "control":
        text = f"lift {mean.value:+.3f} (95% CI {mean.low:+.3f} to {mean.high:+.3f}) over another latent's explanation"
    else:
        text = f"score {mean.value:+.3f} (95% CI {mean.low:+.3f} to {mean.high:+.3f}) above chance"
    ok = not (mean.low <= 0 <= mean.high or mean.high < 0)
    return JudgeCheck(scorer, n_controls, mean, share, ok, text + " across " + _latents(n), reference)


def _latents(n: int) -> str:
    return f"{n} latent" + ("" if n == 1 else "s")


def judge_sentence(check: JudgeCheck, judge_kind: str = "llm") -> str:
    """One plain sentence for people: what the check found and, when the judge cannot tell, what to do."""
    if check.can_tell is True:
        return f"{check.scorer}: carries signal ({check.reason})."
    if check.can_tell is None:
        return f"{check.scorer}: not checked: {check.reason}."
    if check.identical_answers is not None and check.identical_answers >= IDENTICAL_LIMIT:
        fix = {"llm": "score with a stronger LLM (llm='openai:...' or 'vllm:...', see docs/llm.md)"}.get(
            judge_kind, "use a stronger scorer model (its model=... option, docs/scorers.md)"
        )
        what = "right explanations from wrong ones" if check.reference == "control" else "one excerpt from another"
        return f"{check.scorer}: the judge cannot tell {what} ({check.reason}), so these scores carry no signal; {fix}."
    fix = {
        "llm": "use a stronger LLM as judge and explainer (llm='openai:...' or 'vllm:...', see docs/llm.md)",
        "local": "use better explanations (a stronger explainer LLM, docs/llm.md) or a stronger scorer model "
        "(its model=... option, docs/scorers.md)",
    }.get(judge_kind, "use better explanations or a stronger judge")
    if check.reference == "chance":
        fix = (
            "use a stronger LLM as judge (llm='openai:...' or 'vllm:...', see docs/llm.md)"
            if judge_kind == "llm"
            else fix
        )
        return f"{check.scorer}: no signal: the scores are no better than chance ({check.reason}); {fix}."
    return (
        f"{check.scorer}: no signal: the right explanation scores no better than another latent's "
        f"({check.reason}), so these scores cannot tell good explanations from wrong ones here; {fix}."
    )


def lifts_per_latent(rows: Iterable[Mapping[str, Any]], reference: str = "control") -> list[Estimate]:
    """Per row (latent): its lift over the control (the row's paired ``lift`` / ``lift_low`` / ``lift_high``
    when it has them, else the unpaired MOVER from the score and control intervals), or with
    ``reference="chance"`` its score minus its chance level, with the score's interval shifted alike."""
    out: list[Estimate] = []
    nan = float("nan")
    for row in rows:
        if reference == "chance":
            s, c = _finite(row.get("score")), _finite(row.get("chance"))
            if s is not None and c is not None:
                low, high = _finite(row.get("low")), _finite(row.get("high"))
                out.append(Estimate(s - c, nan if low is None else low - c, nan if high is None else high - c))
            continue
        value = _finite(row.get("lift"))
        if value is not None:
            low, high = _finite(row.get("lift_low")), _finite(row.get("lift_high"))
            out.append(Estimate(value, nan if low is None else low, nan if high is None else high))
            continue
        est = lift(
            row.get("score"),
            row.get("low"),
            row.get("high"),
            row.get("control"),
            row.get("control_low"),
            row.get("control_high"),
        )
        if est is not None:
            out.append(est)
    return out


def mean_or_none(values: Iterable[Any]) -> float | None:
    v = [x for x in (_finite(a) for a in values) if x is not None]
    return float(np.mean(v)) if v else None

"""The judge check: identical answers and the mean lift over a run's latents, and the sentence that says
whether the judge can tell right explanations from wrong ones (see the package docstring)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..metrics import Estimate, t_quantile
from ..numeric import finite as _finite  # the call sites keep their name
from .lift import lift

#: A judge giving the same answer to this share of the examples or more cannot tell (see :func:`judge_check`).
IDENTICAL_LIMIT = 0.95


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

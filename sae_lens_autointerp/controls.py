"""Controls and the judge check: does a score say more than a wrong explanation would?

A score is only worth reading next to what the same judge gives a *mismatched* explanation on the same
examples. For every scorer that reads an explanation, each latent is also scored with a control: the
explanation of another latent of the same run (chosen with ``latent_rng(seed, latent, "control")`` among
the latents of its block of the run, see :data:`CONTROL_BLOCK`), on a seeded subset of the same test examples
(``fraction`` of each class, default 0.2, so a control costs at most 20% extra judgments). The control's
requests are labelled with the stage ``"<scorer>:control"`` in usage.

Per latent: ``lift = score - control`` with a MOVER interval built from the two scores' own intervals
(conservative: the two are computed on overlapping examples, which only narrows the true interval);
``signal`` is True when that interval lies above 0.

Per run and scorer, the judge check: the share of identical answers (the most common binary answer, or
intruder position, over every answered example) and the mean lift over latents, with an interval that
adds both sources of noise (:func:`pooled_mean`: each latent's own sampling error, from its lift interval,
and the spread between latents, a random-effects moment estimate), so it never collapses when a few latents
happen to have the same lift.
The judge *cannot tell* when the mean lift's interval reaches 0 or 95% or more of its answers are identical;
then :func:`judge_sentence` says so in one plain sentence naming the fix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .llm.base import classify_all
from .metrics import Estimate, mover_sum
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


def control_sample(sample: LatentSample, fraction: float, seed: int) -> LatentSample:
    """A seeded subset of the test examples: ``ceil(fraction * n)`` of each class (at least one when there are
    any), in their original order. The explainer examples are unchanged (scorers never score them)."""
    rng = latent_rng(seed, sample.latent, "control-sample")

    def take(examples: tuple[Any, ...]) -> tuple[Any, ...]:
        if not examples:
            return ()
        k = max(1, math.ceil(fraction * len(examples) - 1e-9))
        return tuple(examples[i] for i in sorted(rng.permutation(len(examples))[:k]))

    return replace(sample, test_pos=take(sample.test_pos), test_neg=take(sample.test_neg))


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
    """``score - control`` with the MOVER interval for a difference; None when either score is missing, and
    NaN bounds when either has no interval."""
    s, c = _finite(score), _finite(control)
    if s is None or c is None:
        return None
    bounds = [_finite(b) for b in (low, high, c_low, c_high)]
    if any(b is None for b in bounds):
        return Estimate(s - c, float("nan"), float("nan"))
    ls, hs, lc, hc = bounds
    return mover_sum([Estimate(s, ls, hs), Estimate(c, lc, hc)], [1.0, -1.0])  # type: ignore[arg-type]


@dataclass(frozen=True)
class JudgeCheck:
    """The judge check of one scorer over one run (see the module docstring)."""

    scorer: str
    n_controls: int
    lift: Estimate
    identical_answers: float | None
    can_tell: bool | None  # None: no control was scored
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "scorer": self.scorer,
            "n_controls": self.n_controls,
            "lift": _finite(self.lift.value),
            "lift_low": _finite(self.lift.low),
            "lift_high": _finite(self.lift.high),
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


def answers_of(scorer_output: Mapping[str, Any]) -> list[Any]:
    """The judge's answers in one scorer output: binary predictions, or the intruder positions named."""
    out = []
    for p in scorer_output.get("predictions") or []:
        if "prediction" in p:
            out.append(p["prediction"])
        elif "answer" in p:
            out.append(p["answer"])
    return out


def pooled_mean(lifts: Sequence[Estimate], confidence: float = 0.95) -> Estimate:
    """Mean of per-latent estimates (lifts, scores) with a random-effects interval: ``Var(mean) = (sum s_i^2) / n^2 + tau^2 / n``,
    ``s_i`` the standard error behind latent i's interval (half its width / z), ``tau^2`` the between-latent
    variance beyond that (moment estimate, >= 0). Latents without an interval add only to the mean's spread."""
    values = np.array([e.value for e in lifts], dtype=float)
    n = len(values)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    from scipy import stats

    z = float(stats.norm.ppf(0.5 + confidence / 2))
    widths = np.array([e.high - e.low for e in lifts], dtype=float)
    se = np.where(np.isfinite(widths), widths / (2 * z), np.nan)
    known = se[np.isfinite(se)]
    within = float(np.sum(known**2)) / n**2 if known.size else 0.0
    between = 0.0
    if n >= 2:
        spread = float(np.var(values, ddof=1))
        between = max(0.0, spread - (float(np.mean(known**2)) if known.size else 0.0)) / n
    if not known.size and n < 2:
        return Estimate(float(values.mean()), float("nan"), float("nan"))
    half = z * math.sqrt(within + between)
    mean = float(values.mean())
    return Estimate(mean, mean - half, mean + half)


def judge_check(
    scorer: str,
    lifts: Sequence[Estimate],
    answers: Sequence[Any] = (),
    *,
    answer_counts: Mapping[Any, int] | None = None,
) -> JudgeCheck:
    """``answers``: the judge's answers over the latents, or ``answer_counts``: how often it gave each."""
    values = [e.value for e in lifts]
    mean = pooled_mean(lifts)
    if answer_counts is not None:
        total = sum(answer_counts.values())
        share = max(answer_counts.values()) / total if total else None
    else:
        share = identical_share(answers)
    n = len(values)
    if share is not None and share >= IDENTICAL_LIMIT:
        return JudgeCheck(
            scorer, n, mean, share, False, f"the judge gave the same answer to {share:.0%} of the examples"
        )
    if n == 0:
        return JudgeCheck(
            scorer,
            0,
            mean,
            share,
            None,
            "no control was scored (controls are off, or no other latent of the run had an explanation)",
        )
    if not math.isfinite(mean.low) or not math.isfinite(mean.high):
        return JudgeCheck(scorer, n, mean, share, None, f"the lift over {n} control(s) has no interval")
    text = f"lift {mean.value:+.3f} (95% CI {mean.low:+.3f} to {mean.high:+.3f}) over another latent's explanation"
    if mean.low <= 0 <= mean.high or mean.high < 0:
        return JudgeCheck(scorer, n, mean, share, False, text + " across " + _latents(n))
    return JudgeCheck(scorer, n, mean, share, True, text + " across " + _latents(n))


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
        return (
            f"{check.scorer}: the judge cannot tell right explanations from wrong ones ({check.reason}), so "
            f"these scores carry no signal; {fix}."
        )
    fix = {
        "llm": "use a stronger LLM as judge and explainer (llm='openai:...' or 'vllm:...', see docs/llm.md)",
        "local": "use better explanations (a stronger explainer LLM, docs/llm.md) or a stronger scorer model "
        "(its model=... option, docs/scorers.md)",
    }.get(judge_kind, "use better explanations or a stronger judge")
    return (
        f"{check.scorer}: no signal: the right explanation scores no better than another latent's "
        f"({check.reason}), so these scores cannot tell good explanations from wrong ones here; {fix}."
    )


def lifts_per_latent(rows: Iterable[Mapping[str, Any]]) -> list[Estimate]:
    out = []
    for row in rows:
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

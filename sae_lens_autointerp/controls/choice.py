"""Which control a latent gets: another latent's explanation of the same run block, on a seeded subset of
the examples its score judged, through a client that labels the control's usage."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..llm.base import classify_all
from ..records import Explanation
from ..sampling import LatentSample, latent_rng

#: Latents are processed in blocks of this many (in the order given); a control explanation comes from
#: another latent of the same block, so a block's controls do not depend on which other blocks ran.
CONTROL_BLOCK = 64
DEFAULT_FRACTION = 0.2
STAGE_SUFFIX = ":control"


def check_fraction(controls: Any) -> dict[str, float]:
    """``controls=`` as ``{scorer name or "*": fraction in [0, 1]}``. A number applies to every scorer (True: the
    default 0.2; False / None / 0: off); a mapping sets fractions per scorer, ``"*"`` (default 0.2) the rest."""
    from ..errors import ConfigError

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
    """A seeded subset of the test examples: ``ceil(fraction * n)`` of each class's ``n`` test examples (at least
    one when there are any), in their original order. ``scored``: the token ids of the examples the main score
    judged (:func:`scored_examples`); the subset is then drawn from those alone (all of them when fewer), so the
    control's examples are a subset of the score's and the lift can be paired. A scorer that subsamples
    (simulation judges 10 + 10 of 50 + 50) thus gets its control on all of its own 10 + 10: a fifth of those
    (2 + 2) would leave the control, and so the lift, without a usable interval. The explainer examples are
    unchanged (scorers never score them)."""
    rng = latent_rng(seed, sample.latent, "control-sample")

    def take(examples: tuple[Any, ...]) -> tuple[Any, ...]:
        if not examples:
            return ()
        k = max(1, math.ceil(fraction * len(examples) - 1e-9))
        if scored is not None:
            examples = tuple(e for e in examples if e.token_id in scored)
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

"""Step 2: compare the explanations of matched latents (sentence embeddings; matched pairs against random pairs,
with bootstrap intervals), and optionally score one side's explanations on the other side's latents."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from ..embedders import DEFAULT_EMBEDDER, embed
from ..errors import ConfigError
from ..metrics import UNDEFINED, Estimate
from ..results import ScoreResult
from .matching import Matching

#: Explanations as ``{latent: text}`` (or ``{latent: Explanation}``), or a whole :class:`ScoreResult`.
ExplanationsLike: TypeAlias = "Mapping[int, Any] | ScoreResult"
#: ``embedder=``: a sentence-transformers name / path (see :mod:`sae_lens_autointerp.embedders`), or a callable
#: mapping a list of texts to an array ``[n_texts, dim]`` (normalised here).
EmbedderLike: TypeAlias = "str | Callable[[list[str]], Any]"
#: ``cross_score=``: ``(latent_b, explanation_text) -> score`` of an explanation on latent ``latent_b`` of SAE B
#: (NaN = the judge failed; the pair is counted and left out).
CrossScorer: TypeAlias = Callable[[int, str], float]


@dataclass(frozen=True, eq=False)
class SimilarityResult:
    """Explanation similarity of matched latents against random pairs of the same latents.

    ``matched`` / ``random``: mean embedding cosine of the matched pairs and of ``n_random`` random pairs
    (an A latent with the B partner of another pair), each with a percentile bootstrap interval;
    ``difference`` = matched - random with its interval (``signal``: the interval excludes 0, above).
    ``pairs``: one row per usable pair (``latent_a``, ``latent_b``, ``match_similarity``, ``text_a``,
    ``text_b``, ``similarity``, and ``cross_score`` with a cross-scorer). Failed or empty explanations are
    left out and counted: ``n_failed_a`` / ``n_failed_b`` matched latents had one, and ``n_missing`` matched
    pairs were left out for want of a usable explanation on either side (failed or not given), so
    ``n_pairs + n_missing`` is the matching's size. ``cross`` / ``cross_random`` / ``cross_difference``: the
    same for the cross-score hook (``None`` without one), over ``n_cross`` matched and ``n_cross_random``
    random pairs that got a score; ``n_cross_failed`` counts its NaN answers (both kinds).
    """

    matched: Estimate
    random: Estimate
    difference: Estimate
    n_pairs: int
    n_random: int
    n_failed_a: int
    n_failed_b: int
    n_missing: int
    pairs: pd.DataFrame
    random_similarity: np.ndarray
    embedder: str
    confidence: float = 0.95
    cross: Estimate | None = None
    cross_random: Estimate | None = None
    cross_difference: Estimate | None = None
    n_cross_failed: int = 0
    n_cross: int = 0
    n_cross_random: int = 0

    @property
    def signal(self) -> bool:
        """Matched explanations are more alike than random pairs (the difference's interval is above 0)."""
        return bool(self.difference.low > 0)

    def summary(self) -> pd.DataFrame:
        """One row per statistic: ``statistic``, ``n``, ``mean``, ``low``, ``high``."""
        rows = [
            ("matched", self.n_pairs, self.matched),
            ("random", self.n_random, self.random),
            ("difference", self.n_pairs, self.difference),
        ]
        if self.cross is not None and self.cross_random is not None and self.cross_difference is not None:
            rows += [
                ("cross_matched", self.n_cross, self.cross),
                ("cross_random", self.n_cross_random, self.cross_random),
                ("cross_difference", self.n_cross, self.cross_difference),
            ]
        return pd.DataFrame(
            [{"statistic": s, "n": n, "mean": e.value, "low": e.low, "high": e.high} for s, n, e in rows],
            columns=["statistic", "n", "mean", "low", "high"],
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "matched": self.matched.to_dict(),
            "random": self.random.to_dict(),
            "difference": self.difference.to_dict(),
            "n_pairs": self.n_pairs,
            "n_random": self.n_random,
            "n_failed_a": self.n_failed_a,
            "n_failed_b": self.n_failed_b,
            "n_missing": self.n_missing,
            "embedder": self.embedder,
            "confidence": self.confidence,
        }
        if self.cross is not None:
            out["cross"] = self.cross.to_dict()
            out["cross_random"] = self.cross_random.to_dict() if self.cross_random else None
            out["cross_difference"] = self.cross_difference.to_dict() if self.cross_difference else None
            out["n_cross_failed"] = self.n_cross_failed
            out["n_cross"] = self.n_cross
            out["n_cross_random"] = self.n_cross_random
        return out

    def __repr__(self) -> str:
        return (
            f"SimilarityResult({self.n_pairs} pairs: matched {self.matched.value:.3f} "
            f"[{self.matched.low:.3f}, {self.matched.high:.3f}], random {self.random.value:.3f}, difference "
            f"{self.difference.value:.3f} [{self.difference.low:.3f}, {self.difference.high:.3f}])"
        )


def explanation_texts(explanations: ExplanationsLike) -> tuple[dict[int, str], dict[int, str]]:
    """``({latent: text}, {latent: why it is unusable})`` of ``{latent: str | Explanation}`` or a
    :class:`ScoreResult`. Failed explanations (``failed=True``), ``None`` and empty texts are unusable."""
    items: Mapping[int, Any]
    if isinstance(explanations, ScoreResult):
        items = explanations.explanations
    elif isinstance(explanations, Mapping):
        items = explanations
    else:
        raise ConfigError(
            f"explanations must be a dict {{latent: text}} (or {{latent: Explanation}}) or a ScoreResult, got "
            f"{type(explanations).__name__}"
        )
    usable: dict[int, str] = {}
    failed: dict[int, str] = {}
    for key, value in items.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise ConfigError(f"explanation keys must be latent indices (int), got {key!r}")
        latent = int(key)
        if value is None:
            failed[latent] = "no explanation"
            continue
        if getattr(value, "failed", False):
            failed[latent] = str(getattr(value, "error", None) or "the explainer failed")
            continue
        text = value if isinstance(value, str) else getattr(value, "text", None)
        if not isinstance(text, str):
            raise ConfigError(f"explanation of latent {latent} is a {type(value).__name__}, not a string")
        if not text.strip():
            failed[latent] = "empty explanation"
            continue
        usable[latent] = text.strip()
    return usable, failed


def _embed(texts: list[str], embedder: EmbedderLike) -> np.ndarray:
    if isinstance(embedder, str):
        return embed(texts, embedder)
    if not callable(embedder):
        raise ConfigError(f"embedder must be a model name or a callable texts -> array, got {type(embedder).__name__}")
    vectors = np.asarray(embedder(texts), dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise ConfigError(
            f"the embedder returned shape {vectors.shape} for {len(texts)} texts; expected [n_texts, dim]"
        )
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def _bootstrap_mean(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """``n_boot`` means of resamples (with replacement) of ``values``."""
    out = np.empty(n_boot)
    step = max(1, (1 << 22) // max(len(values), 1))  # bounded memory for long inputs
    for start in range(0, n_boot, step):
        k = min(step, n_boot - start)
        out[start : start + k] = values[rng.integers(0, len(values), (k, len(values)))].mean(1)
    return out


def _interval(value: float, boot: np.ndarray, confidence: float) -> Estimate:
    alpha = 1 - confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return Estimate(float(value), min(float(low), float(value)), max(float(high), float(value)))


def _compare_means(
    matched: np.ndarray, random: np.ndarray, rng: np.random.Generator, n_boot: int, confidence: float
) -> tuple[Estimate, Estimate, Estimate]:
    """Means of both samples and their difference, with independent percentile bootstraps."""
    if not len(matched) or not len(random):
        return UNDEFINED, UNDEFINED, UNDEFINED
    boot_m = _bootstrap_mean(matched, rng, n_boot)
    boot_r = _bootstrap_mean(random, rng, n_boot)
    m, r = float(matched.mean()), float(random.mean())
    return (
        _interval(m, boot_m, confidence),
        _interval(r, boot_r, confidence),
        _interval(m - r, boot_m - boot_r, confidence),
    )


def _random_partners(n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``k`` index pairs (i, j), i != j, uniform over the ``n * (n - 1)`` off-diagonal pairs."""
    i = rng.integers(0, n, k)
    j = (i + rng.integers(1, n, k)) % n
    return i, j


def explanation_similarity(
    matching: Matching,
    explanations_a: ExplanationsLike,
    explanations_b: ExplanationsLike,
    *,
    embedder: EmbedderLike = DEFAULT_EMBEDDER,
    n_random: int = 2000,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    cross_score: CrossScorer | None = None,
    n_cross_random: int | None = None,
) -> SimilarityResult:
    """How alike are the explanations of matched latents, against random pairs of the same latents?

    A pair is usable when both of its latents have a usable explanation. Random pairs join the A latent of one
    usable pair with the B latent of another (uniformly, ``n_random`` draws), so both sides keep the same
    latents and only the pairing is broken. Similarity is the cosine of sentence embeddings (``embedder``).

    ``cross_score(latent_b, text_a)`` (optional) scores A's explanation on B's latent, e.g. a detection score
    on B's examples; it is called for every usable pair and for ``n_cross_random`` random pairs (default: as
    many as usable pairs), and gives ``cross`` / ``cross_random`` / ``cross_difference``. A NaN answer is a
    failed judgment: counted in ``n_cross_failed`` and left out. Exceptions propagate.
    """
    if not isinstance(matching, Matching):
        raise ConfigError(f"matching must be the Matching from match_latents(), got {type(matching).__name__}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")
    if not isinstance(n_random, int) or n_random < 1 or not isinstance(n_boot, int) or n_boot < 1:
        raise ConfigError("n_random and n_boot must be positive integers")
    texts_a, failed_a = explanation_texts(explanations_a)
    texts_b, failed_b = explanation_texts(explanations_b)
    matched_a, matched_b = set(matching.pairs[:, 0].tolist()), set(matching.pairs[:, 1].tolist())
    usable = [
        (int(a), int(b), float(s))
        for (a, b), s in zip(matching.pairs.tolist(), matching.similarity.tolist())
        if a in texts_a and b in texts_b
    ]
    n_missing = matching.n_pairs - len(usable)
    if len(usable) < 2:
        raise ConfigError(
            f"only {len(usable)} of {matching.n_pairs} matched pairs have a usable explanation on both sides "
            f"({len(failed_a)} failed in A, {len(failed_b)} in B); explanation similarity needs at least 2. "
            "Explain both latents of more matched pairs (Matching.pairs)"
        )
    lat_a = np.array([p[0] for p in usable])
    lat_b = np.array([p[1] for p in usable])
    strings = sorted({texts_a[a] for a in lat_a} | {texts_b[b] for b in lat_b})
    index = {s: i for i, s in enumerate(strings)}
    vectors = _embed(strings, embedder).astype(np.float64)
    va = vectors[[index[texts_a[a]] for a in lat_a]]
    vb = vectors[[index[texts_b[b]] for b in lat_b]]
    cos = np.clip(np.einsum("ij,ij->i", va, vb), -1.0, 1.0)
    rng = np.random.default_rng(seed)
    i, j = _random_partners(len(usable), n_random, rng)
    cos_random = np.clip(np.einsum("ij,ij->i", va[i], vb[j]), -1.0, 1.0)
    matched, random, difference = _compare_means(cos, cos_random, rng, n_boot, confidence)
    pairs = pd.DataFrame(
        {
            "latent_a": lat_a,
            "latent_b": lat_b,
            "match_similarity": [p[2] for p in usable],
            "text_a": [texts_a[a] for a in lat_a],
            "text_b": [texts_b[b] for b in lat_b],
            "similarity": cos,
        }
    )
    cross = cross_random = cross_difference = None
    n_cross_failed = n_cross = n_cross_random_ok = 0
    if cross_score is not None:
        if not callable(cross_score):
            raise ConfigError("cross_score must be a callable (latent_b, explanation_text) -> float")
        own = np.array([_call_score(cross_score, int(b), texts_a[int(a)]) for a, b in zip(lat_a, lat_b)])
        k = len(usable) if n_cross_random is None else int(n_cross_random)
        ci, cj = _random_partners(len(usable), k, rng)
        other = np.array([_call_score(cross_score, int(lat_b[q]), texts_a[int(lat_a[p])]) for p, q in zip(ci, cj)])
        n_cross, n_cross_random_ok = int(np.isfinite(own).sum()), int(np.isfinite(other).sum())
        n_cross_failed = len(own) + len(other) - n_cross - n_cross_random_ok
        pairs["cross_score"] = own
        cross, cross_random, cross_difference = _compare_means(
            own[np.isfinite(own)], other[np.isfinite(other)], rng, n_boot, confidence
        )
    return SimilarityResult(
        matched=matched,
        random=random,
        difference=difference,
        n_pairs=len(usable),
        n_random=n_random,
        n_failed_a=len(matched_a.intersection(failed_a)),
        n_failed_b=len(matched_b.intersection(failed_b)),
        n_missing=n_missing,
        pairs=pairs,
        random_similarity=cos_random,
        embedder=embedder if isinstance(embedder, str) else getattr(embedder, "__name__", type(embedder).__name__),
        confidence=confidence,
        cross=cross,
        cross_random=cross_random,
        cross_difference=cross_difference,
        n_cross_failed=n_cross_failed,
        n_cross=n_cross,
        n_cross_random=n_cross_random_ok,
    )


def _call_score(fn: CrossScorer, latent_b: int, text: str) -> float:
    value = fn(latent_b, text)
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cross_score returned {value!r} for latent {latent_b}; it must return a number") from exc

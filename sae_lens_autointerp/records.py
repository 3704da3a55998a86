"""Plain data passed between explainers, scorers, the pipeline and results.jsonl."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .harvest.store import ActivationStore
    from .llm import LLMClient
    from .sampling import LatentSample
    from .text import Renderer


def template_id(*parts: str) -> str:
    """A short, stable id of a prompt template (recorded with every result)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Explanation:
    """A natural-language explanation of one latent. ``failed`` explanations carry ``error`` and are never
    scored."""

    latent: int
    text: str
    explainer: str = "given"
    prompt_id: str | None = None
    examples_shown: tuple[int, ...] = ()
    raw: str | None = None
    n_attempts: int = 1
    failed: bool = False
    error: str | None = None

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["examples_shown"] = list(self.examples_shown)
        return d


@dataclass
class ScorerOutput:
    """One scorer's result for one latent.

    ``score`` is the headline number (see each scorer), ``metrics`` everything else (intervals, chance
    levels), ``predictions`` one JSON-safe dict per example (or per prompt), ``n_failed`` the examples whose
    answer could not be parsed or was refused (excluded from the metrics, never scored as right or wrong).
    """

    scorer: str
    score: float | None
    n_examples: int
    n_failed: int
    metrics: dict[str, Any] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    prompt_id: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    """What explainers and scorers may use besides the latent's sample."""

    llm: LLMClient | None
    renderer: Renderer
    store: ActivationStore
    seed: int = 0
    sae: Any = None
    model: Any = None
    usage: Any = None  # the run's UsageTracker (the LLM client's, or the run's own when there is no client)


@runtime_checkable
class Explainer(Protocol):
    """``needs_llm`` (optional attribute, default True): False lets a run go without any LLM client."""

    name: str

    async def explain(self, sample: LatentSample, ctx: Context) -> Explanation: ...


@runtime_checkable
class Scorer(Protocol):
    """``needs_llm`` (optional attribute, default True): False for scorers that use no LLM client."""

    name: str
    needs_explanation: bool

    async def score(self, sample: LatentSample, explanation: Explanation | None, ctx: Context) -> ScorerOutput: ...

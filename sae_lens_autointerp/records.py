"""Plain data passed between explainers, scorers, the pipeline and results.jsonl."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from sae_lens import SAE

    from .harvest.model import SubjectModel
    from .harvest.store import LatentStore
    from .llm.types import LLMClient
    from .llm.usage import UsageTracker
    from .sampling import LatentSample
    from .text import Renderer


#: Version of the built-in prompts and protocols: part of every run key, bumped when a built-in prompt, parser
#: or sampling rule changes the answers (2: token-span hold-out, strict explanation parsing, controls).
PROMPT_VERSION = 2


_CONTAINERS = (dict, list, tuple)


def _plain(value: Any) -> Any:
    """A copy of JSON-like data (dicts, lists, tuples); other values as they are (as ``asdict`` copies them)."""
    if type(value) is dict:  # the usual case (a prediction): copied at once, then only nested containers again
        out = value.copy()
        for k, v in value.items():
            if isinstance(v, _CONTAINERS):
                out[k] = _plain(v)
        return out
    if isinstance(value, dict):
        return {k: _plain(v) if isinstance(v, _CONTAINERS) else v for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) if isinstance(v, _CONTAINERS) else v for v in value]
    if isinstance(value, tuple):
        return type(value)(_plain(v) for v in value) if not hasattr(value, "_fields") else value
    return value


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
    #: how the text was read from the answer: "labelled" (an ``Explanation:`` line), "first-sentence" (an
    #: unlabelled short answer), or None (given by the user, or an explainer without an LLM)
    parse: str | None = None
    #: which plugin distribution made it: ``{"plugin", "distribution", "version"}`` (set by the pipeline)
    provider: dict[str, str] | None = None
    #: the windows its explainer was shown, as corpus spans (``sampling.shown_windows``: ``{"corpus", "spans":
    #: [[start, length], ...], "texts"}``), so a later ``score()`` on a store of the same corpus keeps them out of
    #: its test; None: not recorded (a plain string, Neuronpedia, delphi), scored with ``holdout="unknown"``
    shown_spans: dict[str, Any] | None = None

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["examples_shown"] = list(self.examples_shown)
        return d


@dataclass
class ScorerOutput:
    """One scorer's result for one latent.

    ``score`` is the headline number (see each scorer) and ``metric`` its name, with its interval
    (``low``, ``high``) and its chance level (``chance``): tables, summaries and controls read these, so a
    plugin's headline is shown with its own interval. ``metrics`` holds everything else, ``predictions`` one
    JSON-safe dict per example (or per prompt), ``n_failed`` the examples whose answer could not be parsed
    or was refused (the judge's failures: excluded from the metrics, never scored as right or wrong).
    Transport errors are not judge failures: a scorer lets :class:`~sae_lens_autointerp.llm.LLMError`
    propagate, and the latent is left incomplete for the next run.
    """

    scorer: str
    score: float | None
    n_examples: int
    n_failed: int
    metrics: dict[str, Any] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    prompt_id: str | None = None
    error: str | None = None
    metric: str | None = None
    low: float | None = None
    high: float | None = None
    chance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (``metrics`` and each prediction copied one level deep, like ``asdict`` for
        these plain-data fields, without its recursive deep copy: a run writes millions of predictions)."""
        d = dict(self.__dict__)
        d["metrics"] = _plain(self.metrics)
        d["predictions"] = [_plain(p) for p in self.predictions]
        return d

    @classmethod
    def failed(cls, scorer: str, error: str, **fields: Any) -> ScorerOutput:
        """An output without a score and without examples: ``error`` says why (no explanation, a crash, an
        output that broke the contract, a latent the protocol skips); ``fields`` sets any other field."""
        return cls(scorer=scorer, score=None, n_examples=0, n_failed=0, error=error, **fields)

    @staticmethod
    def headline(metrics: dict[str, Any], name: str, chance: float | None = None) -> dict[str, Any]:
        """``metric`` / ``low`` / ``high`` / ``chance`` keyword arguments read from flat ``metrics``
        (``NAME``, ``NAME_low``, ``NAME_high``, ``chance_NAME``)."""
        return {
            "metric": name,
            "low": metrics.get(f"{name}_low"),
            "high": metrics.get(f"{name}_high"),
            "chance": metrics.get(f"chance_{name}", chance) if chance is None else chance,
        }


@dataclass
class Context:
    """What explainers and scorers may use besides the latent's sample.

    ``llm``: the run's LLM client (None when no stage needs one); ``renderer``: token ids to text;
    ``store``: the whole harvest (for explainers that look beyond the sample; scorers should test on the
    sample's held-out examples); ``seed``: the run's seed, for :func:`~sae_lens_autointerp.sampling.latent_rng`;
    ``sae`` / ``model``: the SAE and the subject model (a TransformerLens ``HookedTransformer`` /
    ``HookedSAETransformer`` or a ``TransformerBridge``), for scorers that steer or read the model;
    ``usage``: the run's :class:`~sae_lens_autointerp.llm.UsageTracker` (the LLM client's, or the run's own
    when there is no client).
    """

    llm: LLMClient | None
    renderer: Renderer
    store: LatentStore
    seed: int = 0
    sae: SAE | None = None
    model: SubjectModel | None = None
    usage: UsageTracker | None = None


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

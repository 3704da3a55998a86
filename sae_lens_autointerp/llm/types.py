"""Typed requests and responses of the LLM layer, and the :class:`LLMClient` protocol.

Everything here is plain data (frozen dataclasses), so it pickles, compares and serialises to JSON for the
response cache. Explainers and scorers only need :meth:`LLMClient.chat` and :meth:`LLMClient.classify`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeAlias, runtime_checkable

# ``Usage`` lives with the tracker that sums it (usage.py imports nothing from here, so the two modules
# form no import cycle); it is re-exported here, where responses carry it.
from .usage import Usage, UsageTracker

#: A chat message: ``{"role": "system" | "user" | "assistant", "content": "..."}``.
Message = Mapping[str, str]


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token, its log-probability, and the most likely alternatives at that position
    (``top_logprobs``: token text -> logprob, most likely first; empty unless requested)."""

    token: str
    logprob: float
    top_logprobs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request. Built by :meth:`LLMClient.chat`; backends receive it whole.

    ``stage`` (``"explain"``, ``"detection"``, ...) and ``latent`` only label usage; they are not part of the
    cache key. ``seed`` is the only source of randomness when ``temperature > 0``; when it is ``None`` the
    backends derive one from the request's content, so the same request always gives the same answer.
    """

    messages: tuple[tuple[str, str], ...]
    temperature: float = 0.0
    max_tokens: int = 256
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    stage: str = "default"
    latent: int | None = None

    @staticmethod
    def build(messages: Sequence[Message], **params: Any) -> ChatRequest:
        """Validate and freeze ``messages`` and parameters (``stop`` may be a string or a list)."""
        msgs = normalize_messages(messages)
        stop = params.pop("stop", None)
        if stop is None:
            stop_t: tuple[str, ...] = ()
        elif isinstance(stop, str):
            stop_t = (stop,)
        else:
            stop_t = tuple(str(s) for s in stop)
        req = ChatRequest(messages=msgs, stop=stop_t, **params)
        req.validate()
        return req

    def validate(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_logprobs < 0 or self.top_logprobs > 20:
            raise ValueError(f"top_logprobs must be in [0, 20], got {self.top_logprobs}")

    def params(self) -> dict[str, Any]:
        """The generation parameters (what, with the messages and model, determines the answer)."""
        d = asdict(self)
        for k in ("messages", "stage", "latent"):
            d.pop(k)
        d["stop"] = list(self.stop)
        return d

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]

    @property
    def samples(self) -> bool:
        return self.temperature > 0


@dataclass(frozen=True)
class ChatResponse:
    """What one chat completion returned.

    ``logprobs`` is ``None`` when not requested or when the backend cannot give them (then
    ``logprobs_unavailable`` is True). ``refusal`` holds the model's refusal message, if it refused
    (``finish_reason == "content_filter"`` or an OpenAI ``refusal``); callers must count that as a failure.
    ``cached`` says whether this came from the response cache (it then cost nothing).
    """

    text: str
    finish_reason: str | None
    usage: Usage = Usage()
    logprobs: tuple[TokenLogprob, ...] | None = None
    model: str = ""
    cached: bool = False
    refusal: str | None = None
    logprobs_unavailable: bool = False

    @property
    def refused(self) -> bool:
        return self.refusal is not None or self.finish_reason == "content_filter"


@dataclass(frozen=True)
class ClassifyResult:
    """The model's next-token preference among ``choices`` (e.g. ``("0", "1")``).

    ``probs`` maps each choice to its probability renormalised over the choices (summing to 1); it is
    ``None`` when the call failed (``error`` says why: a refusal, an answer that is none of the choices), and
    such a result must be counted as a failure, never scored.

    ``logprobs`` holds the raw log-probability of each choice at the answer position (``None`` where unknown,
    e.g. a choice outside the server's top-k). ``method`` is ``"logits"`` (read off the full next-token
    distribution), ``"top_logprobs"`` (the server's top-k list) or ``"generation"`` (no logprobs: the
    generated answer was matched to a choice, so ``probs`` is one-hot). ``exact`` is True when every choice's
    probability was read from the model's distribution (not a bound, not a one-hot fallback).
    """

    choices: tuple[str, ...]
    probs: dict[str, float] | None
    logprobs: dict[str, float | None]
    exact: bool
    method: str
    usage: Usage = Usage()
    cached: bool = False
    text: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.probs is not None

    def prob(self, choice: str) -> float:
        """P(choice) renormalised over the choices; raises :class:`ValueError` on a failed result."""
        if self.probs is None:
            raise ValueError(f"classification failed: {self.error}")
        return self.probs[choice]


@runtime_checkable
class LLMClient(Protocol):
    """What explainers and scorers talk to. Implement it directly, or subclass
    :class:`sae_lens_autointerp.llm.BaseClient` and write only ``_chat`` (and optionally ``_classify``).

    Both calls take keyword parameters ``temperature``, ``max_tokens``, ``top_p``, ``stop``, ``seed``,
    ``logprobs``, ``top_logprobs`` (chat) and ``seed`` (classify), plus the labels ``stage`` and ``latent``
    (an implementation may take them as ``**params``).
    They raise :class:`~sae_lens_autointerp.llm.BudgetExceeded` before sending anything once the budget is
    spent, and other :class:`~sae_lens_autointerp.llm.LLMError` subclasses on transport failures (after
    retries).
    """

    name: str
    usage: UsageTracker

    async def chat(
        self,
        messages: Sequence[Message],
        *,
        temperature: float = ...,
        max_tokens: int = ...,
        top_p: float = ...,
        stop: str | Sequence[str] | None = ...,
        seed: int | None = ...,
        logprobs: bool = ...,
        top_logprobs: int = ...,
        stage: str = ...,
        latent: int | None = ...,
    ) -> ChatResponse: ...

    async def classify(
        self,
        messages: Sequence[Message],
        choices: Sequence[str] = ("0", "1"),
        *,
        seed: int | None = ...,
        stage: str = ...,
        latent: int | None = ...,
    ) -> ClassifyResult: ...

    async def aclose(self) -> None: ...


#: What ``llm=`` accepts: ``"local"``, ``"openai:MODEL"``, ``"vllm:MODEL"``, a plugin's ``"prefix:model"``, or a
#: client object (None where no stage needs an LLM).
LLMSpec: TypeAlias = "str | LLMClient | None"


def normalize_messages(messages: Sequence[Message]) -> tuple[tuple[str, str], ...]:
    if isinstance(messages, (str, bytes)):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts, not a string")
    out = []
    for m in messages:
        try:
            role, content = m["role"], m["content"]
        except (KeyError, TypeError) as exc:
            raise TypeError(f"each message needs 'role' and 'content', got {m!r}") from exc
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"message role must be system, user or assistant, got {role!r}")
        out.append((str(role), str(content)))
    if not out:
        raise ValueError("messages is empty")
    return tuple(out)


# -- (de)serialisation for the response cache ------------------------------------------------------------


def response_to_json(r: ChatResponse | ClassifyResult) -> dict[str, Any]:
    d = asdict(r)
    d.pop("cached", None)
    d["type"] = "chat" if isinstance(r, ChatResponse) else "classify"
    return d


def response_from_json(d: Mapping[str, Any]) -> ChatResponse | ClassifyResult:
    d = dict(d)
    kind = d.pop("type")
    usage = Usage(**d.pop("usage"))
    if kind == "chat":
        lps = d.pop("logprobs")
        logprobs = None if lps is None else tuple(TokenLogprob(**t) for t in lps)
        return ChatResponse(usage=usage, logprobs=logprobs, cached=True, **d)
    if kind == "classify":
        d["choices"] = tuple(d["choices"])
        return ClassifyResult(usage=usage, cached=True, **d)
    raise ValueError(f"unknown cached response type {kind!r}")

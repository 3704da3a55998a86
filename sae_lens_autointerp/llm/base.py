""":class:`BaseClient`: response cache, usage, budget and classification shared by every backend.

A backend subclasses it and implements ``_chat(request) -> ChatResponse`` (and, where it can read
next-token probabilities directly, ``_classify``). The public calls do, in order: validate, look the request
up in the response cache (a hit costs nothing and sends nothing), refuse in replay mode on a miss, reserve
the worst case against the budget (:class:`BudgetExceeded` before anything is sent), call the backend,
count usage / failures, and store the answer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .cache import ResponseCache, resolve_cache
from .concurrency import map_bounded
from .errors import BudgetExceeded, CacheMissError, LLMConnectionError, LLMError, MalformedResponseError
from .types import (
    ChatRequest,
    ChatResponse,
    ClassifyResult,
    Message,
    Usage,
    normalize_messages,
    response_from_json,
    response_to_json,
)
from .usage import UsageTracker, estimate_prompt_tokens

#: How many alternatives ``classify`` asks an OpenAI-compatible server for (OpenAI's maximum).
CLASSIFY_TOP_LOGPROBS = 20
#: After this many transport failures in a row (each after its own retries), requests are not sent for
#: FAIL_FAST_FOR_S seconds: they fail at once with the last error, so a dead or hanging backend is reported
#: in one timeout, not one timeout per queued request. Any success resets the count.
FAIL_FAST_AFTER = 5
FAIL_FAST_FOR_S = 30.0


class BaseClient:
    """Common machinery; see the module docstring. ``name`` labels usage and prices (``"openai:gpt-4o"``);
    ``cache_namespace`` is the model identity in cache keys (defaults to ``name``)."""

    name: str = "base"

    def __init__(
        self,
        name: str,
        *,
        cache: ResponseCache | str | bool | None = None,
        replay: bool | None = None,
        usage: UsageTracker | None = None,
        cache_namespace: str | None = None,
    ) -> None:
        self.name = name
        self.cache_namespace = cache_namespace or name
        self.cache = resolve_cache(cache, replay)
        self.usage = usage if usage is not None else UsageTracker()
        self._transport_failures = 0
        self._last_transport_failure: tuple[float, str] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, cache={self.cache!r})"

    # -- public API ------------------------------------------------------------------------------------

    async def chat(
        self,
        messages: Sequence[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int = 256,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        logprobs: bool = False,
        top_logprobs: int = 0,
        stage: str = "default",
        latent: int | None = None,
    ) -> ChatResponse:
        """One chat completion. ``top_logprobs > 0`` implies ``logprobs``. Labels: ``stage``, ``latent``."""
        request = ChatRequest.build(
            messages,
            temperature=float(temperature),
            max_tokens=int(max_tokens),
            top_p=float(top_p),
            stop=stop,
            seed=seed,
            logprobs=bool(logprobs or top_logprobs),
            top_logprobs=int(top_logprobs),
            stage=stage,
            latent=latent,
        )
        return await self.chat_request(request)

    async def chat_request(self, request: ChatRequest) -> ChatResponse:
        payload = {"messages": request.messages, "params": request.params()}
        result = await self._through_cache("chat", payload, request, lambda: self._chat(request))
        assert isinstance(result, ChatResponse)
        return result

    async def classify(
        self,
        messages: Sequence[Message],
        choices: Sequence[str] = ("0", "1"),
        *,
        seed: int | None = None,
        stage: str = "default",
        latent: int | None = None,
    ) -> ClassifyResult:
        """Probabilities of the next token being each of ``choices`` (after the assistant turn starts),
        renormalised over the choices. No text is generated where the backend reads logits directly.
        A refusal or an answer that is none of the choices gives a result with ``ok == False`` (counted as a
        failure in usage); transport errors raise."""
        choices_t = _checked_choices(tuple(choices))
        request = _classify_request(messages, seed, stage, latent)
        payload = {"messages": request.messages, "choices": choices_t}
        result = await self._through_cache("classify", payload, request, lambda: self._classify(request, choices_t))
        assert isinstance(result, ClassifyResult)
        return result

    async def classify_many(
        self,
        prompts: Sequence[Sequence[Message]],
        choices: Sequence[str] = ("0", "1"),
        *,
        seed: int | None = None,
        stage: str = "default",
        latent: int | None = None,
        concurrency: int = 8,
    ) -> list[ClassifyResult]:
        """``[await self.classify(p, choices, ...) for p in prompts]``: the same results, cache entries, usage
        and failures per request; every request runs to the end, then the first error (in prompt order)
        raises. A backend with ``_classify_batch`` gets all the cache misses in one call; otherwise requests go
        one by one, ``concurrency`` in flight. With a budget they always go one by one: the budget holds a
        request's worst case while it is in flight, and a batch would hold them all at once."""
        choices_t = _checked_choices(tuple(choices))
        if not self.batches_classify or self.usage.has_budget:
            return await map_bounded(
                prompts, lambda m: self.classify(m, choices_t, seed=seed, stage=stage, latent=latent), concurrency
            )
        requests = _classify_requests(prompts, seed, stage, latent)
        slots: list[Any] = [None] * len(requests)
        keys: list[str | None] = [None] * len(requests)
        payloads: list[dict[str, Any]] = [{"messages": r.messages, "choices": choices_t} for r in requests]
        pending: list[int] = []
        first: dict[str, int] = {}  # cache key -> the pending request that sends it
        repeats: list[int] = []  # the same request again: a cache hit once the first one is answered
        for i, request in enumerate(requests):
            try:
                hit, keys[i] = self._lookup("classify", payloads[i], request, count_miss=False)
                if hit is None and keys[i] in first:
                    repeats.append(i)
                    continue
                if hit is None:
                    self._miss("classify", request)
                    self._fail_fast(request)
            except LLMError as exc:
                slots[i] = _Failed(exc)
                continue
            if hit is None:
                pending.append(i)
                if keys[i] is not None:
                    first[keys[i]] = i  # type: ignore[index]
            else:
                slots[i] = hit
        if pending:
            try:
                answers: Sequence[Any] = await self._classify_batch([requests[i] for i in pending], choices_t)
                if len(answers) != len(pending):
                    raise MalformedResponseError(f"{self.name} answered {len(answers)} of {len(pending)} requests")
            except LLMError as exc:  # the whole call failed: so did each of its requests
                answers = [exc] * len(pending)
            tally = _Tally()  # every request has this stage and latent: their usage is counted in one call
            try:
                for i, answer in zip(pending, answers):
                    try:
                        slots[i] = self._settle("classify", payloads[i], requests[i], keys[i], answer, tally)
                    except Exception as exc:  # as classify's caller would see it, once every request is settled
                        slots[i] = _Failed(exc)
            finally:
                self.usage.record_many(self.name, stage, latent, tally.usages, tally.failures, tally.unanswered)
        for i in repeats:  # as one request after another would find them: in the cache, or sent again
            try:
                slots[i] = await self._through_cache(
                    "classify", payloads[i], requests[i], functools.partial(self._classify, requests[i], choices_t)
                )
            except Exception as exc:
                slots[i] = _Failed(exc)
        for slot in slots:
            if isinstance(slot, _Failed):
                raise slot.error
        return slots

    @property
    def batches_classify(self) -> bool:
        """Whether this backend answers many classifications in one call (it overrides ``_classify_batch``)."""
        return type(self)._classify_batch is not BaseClient._classify_batch

    async def aclose(self) -> None:
        """Release connections / engines. The client must not be used afterwards."""

    async def __aenter__(self) -> BaseClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- for backends ----------------------------------------------------------------------------------

    async def _chat(self, request: ChatRequest) -> ChatResponse:
        raise NotImplementedError

    async def _classify(self, request: ChatRequest, choices: tuple[str, ...]) -> ClassifyResult:
        """Default: a one-token completion with top logprobs (see :func:`classify_from_chat`)."""
        response = await self._chat(request)
        return classify_from_chat(response, choices)

    async def _classify_batch(
        self, requests: Sequence[ChatRequest], choices: tuple[str, ...]
    ) -> Sequence[ClassifyResult | BaseException]:
        """Many classifications in one call: one result or exception per request, in order (an
        :class:`LLMError` counts as that request's failure; any other exception propagates). Override it where
        the backend takes a list of prompts; :meth:`classify_many` does the cache and usage per request."""
        raise NotImplementedError

    def seed_for(self, request: ChatRequest) -> int:
        """The request's seed, or one derived from its content (never a global RNG)."""
        if request.seed is not None:
            return int(request.seed)
        blob = json.dumps([self.cache_namespace, request.messages, request.params()], sort_keys=True)
        return int(hashlib.sha256(blob.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF

    # -- internals -------------------------------------------------------------------------------------

    async def _through_cache(self, kind: str, payload: dict[str, Any], request: ChatRequest, call: Any) -> Any:
        hit, key = self._lookup(kind, payload, request)
        if hit is not None:
            return hit
        self._fail_fast(request)
        reservation = None
        if self.usage.has_budget:  # without a budget there is nothing to hold (and nothing to estimate)
            reservation = self.usage.reserve(
                self.name, request.stage, estimate_prompt_tokens(request.messages), request.max_tokens
            )
        try:
            try:
                result = await call()
            except LLMError as exc:
                return self._settle(kind, payload, request, key, exc)
        finally:
            self.usage.release(reservation)
        return self._settle(kind, payload, request, key, result)

    def _lookup(
        self, kind: str, payload: dict[str, Any], request: ChatRequest, count_miss: bool = True
    ) -> tuple[Any, str | None]:
        """(the cached answer or None, the cache key); a hit is counted as a cached request. ``count_miss``:
        a miss goes through :meth:`_miss` here (else the caller calls it)."""
        cache = self.cache
        if cache is None:
            return None, None
        key = cache.key(self.cache_namespace, kind, payload)
        hit = cache.get(key)
        if hit is not None:
            try:
                result = response_from_json(hit)
            except (KeyError, TypeError, ValueError):
                result = None  # an entry from an incompatible version: treat as a miss
            if result is not None:
                self.usage.record(self.name, request.stage, request.latent, result.usage, cached=True)
                return result, key
        if count_miss:
            self._miss(kind, request)
        return None, key

    def _miss(self, kind: str, request: ChatRequest) -> None:
        """A cache miss: in replay mode a failure that raises :class:`CacheMissError`."""
        cache = self.cache
        if cache is not None and cache.mode == "replay":
            self.usage.record_failure(self.name, request.stage, request.latent)
            raise CacheMissError(
                f"replay-only mode: no cached {kind} answer from {self.cache_namespace!r} for this request "
                f"(stage {request.stage!r}, latent {request.latent}) in {cache.root}; run once with the "
                "cache in 'readwrite' mode to record it"
            )

    def _settle(
        self,
        kind: str,
        payload: dict[str, Any],
        request: ChatRequest,
        key: str | None,
        outcome: Any,
        tally: _Tally | None = None,
    ) -> Any:
        """Count what the backend gave for one request (an answer, or an :class:`LLMError` that is re-raised;
        any other exception propagates uncounted, as a bug) and cache an answer. With ``tally`` the usage and
        failures are added to it, for the caller to record at once (a batch of requests of one stage / latent)."""
        if isinstance(outcome, LLMError):
            if tally is None:
                self.usage.record_failure(self.name, request.stage, request.latent, attempted=True)
            else:
                tally.failures += 1
                tally.unanswered += 1
            if isinstance(outcome, (LLMConnectionError, MalformedResponseError)) and not isinstance(
                outcome, BudgetExceeded
            ):
                self._transport_failures += 1
                self._last_transport_failure = (time.monotonic(), str(outcome))
            raise outcome
        if isinstance(outcome, BaseException):
            raise outcome
        self._transport_failures = 0
        failed = outcome.refused if isinstance(outcome, ChatResponse) else not outcome.ok
        if tally is not None:
            tally.usages.append(outcome.usage)
            tally.failures += bool(failed)
        else:
            self.usage.record(self.name, request.stage, request.latent, outcome.usage)
            if failed:
                self.usage.record_failure(self.name, request.stage, request.latent)
        if self.cache is not None and key is not None:
            self.cache.put(
                key, response_to_json(outcome), {"model": self.cache_namespace, "kind": kind, **_jsonable(payload)}
            )
        return outcome

    def _fail_fast(self, request: ChatRequest) -> None:
        last = self._last_transport_failure
        if self._transport_failures < FAIL_FAST_AFTER or last is None or time.monotonic() - last[0] > FAIL_FAST_FOR_S:
            return
        self.usage.record_failure(self.name, request.stage, request.latent)
        raise LLMConnectionError(
            f"not sent: the last {self._transport_failures} requests to {self.cache_namespace} failed (last: {last[1]}); "
            f"failing fast for {FAIL_FAST_FOR_S:.0f} s"
        )


def _classify_request(messages: Sequence[Message], seed: int | None, stage: str, latent: int | None) -> ChatRequest:
    return ChatRequest.build(
        messages,
        temperature=0.0,
        max_tokens=1,
        seed=seed,
        logprobs=True,
        top_logprobs=CLASSIFY_TOP_LOGPROBS,
        stage=stage,
        latent=latent,
    )


def _classify_requests(
    prompts: Sequence[Sequence[Message]], seed: int | None, stage: str, latent: int | None
) -> list[ChatRequest]:
    """``[_classify_request(m, seed, stage, latent) for m in prompts]``, with the parameters validated once
    (``build`` of the first; they are the same for every prompt); every prompt's messages are still checked."""
    prompts = list(prompts)
    if not prompts:
        return []
    first = _classify_request(prompts[0], seed, stage, latent)
    return [first, *(_with_messages(first, normalize_messages(m)) for m in prompts[1:])]


def _with_messages(request: ChatRequest, messages: tuple[tuple[str, str], ...]) -> ChatRequest:
    """``dataclasses.replace(request, messages=messages)`` without ``__init__``: the fields are copied as they
    are (already validated; ChatRequest has no ``__post_init__``), a quarter of the cost of the frozen
    ``__init__``'s ``object.__setattr__`` per field, which a batch of a hundred requests per latent pays."""
    new = object.__new__(ChatRequest)
    new.__dict__.update(request.__dict__)
    new.__dict__["messages"] = messages
    return new


class _Tally:
    """Usage and failures of a batch of requests (one stage, one latent), recorded in one call."""

    __slots__ = ("usages", "failures", "unanswered")

    def __init__(self) -> None:
        self.usages: list[Usage] = []
        self.failures = 0
        self.unanswered = 0  # failures that were errors, not answers (each one attempt)


class _Failed:
    """A request's error in :meth:`BaseClient.classify_many`'s slots, raised once every request is settled."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


async def classify_all(
    client: Any,
    prompts: Sequence[Sequence[Message]],
    choices: Sequence[str] = ("0", "1"),
    *,
    concurrency: int = 8,
    **params: Any,
) -> list[ClassifyResult]:
    """``client.classify_many`` where the client has it, else its ``classify`` per prompt (a plain
    :class:`~.types.LLMClient`), ``concurrency`` in flight: the same results either way."""
    many = getattr(client, "classify_many", None)
    if many is not None:
        return list(await many(prompts, choices, concurrency=concurrency, **params))
    return await map_bounded(prompts, lambda m: client.classify(m, choices=choices, **params), concurrency)


@functools.lru_cache(maxsize=256)
def _checked_choices(choices: tuple[Any, ...]) -> tuple[str, ...]:
    """``choices`` as strings, validated; cached: every judge request of a run passes the same few tuples."""
    choices_t = tuple(str(c) for c in choices)
    if len(choices_t) < 2 or len(set(choices_t)) != len(choices_t) or any(not c.strip() for c in choices_t):
        raise ValueError(f"choices must be >= 2 distinct non-blank strings, got {choices!r}")
    return choices_t


def _jsonable(payload: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(payload))


# -- classification helpers (shared by backends) ------------------------------------------------------


def _logsumexp(values: Sequence[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def classify_from_logprobs(
    choices: tuple[str, ...],
    candidates: Mapping[str, float],
    *,
    method: str,
    complete: bool,
    usage: Usage,
    text: str | None = None,
) -> ClassifyResult | None:
    """Turn ``{token text: logprob}`` at the answer position into a result. Tokens that equal a choice after
    stripping whitespace count for it (``"1"`` and ``" 1"``: their probabilities add up). ``complete``: the
    candidates are the full distribution (so an absent choice truly has probability ~0). Returns ``None``
    when no choice is among the candidates."""
    grouped: dict[str, list[float]] = {c: [] for c in choices}
    for tok, lp in candidates.items():
        key = tok.strip()
        if key in grouped and lp is not None and math.isfinite(lp):
            grouped[key].append(float(lp))
    raw: dict[str, float | None] = {c: (_logsumexp(v) if v else None) for c, v in grouped.items()}
    found = [lp for lp in raw.values() if lp is not None]
    if not found:
        return None
    top = max(found)
    weights = {c: (math.exp(lp - top) if lp is not None else 0.0) for c, lp in raw.items()}
    z = sum(weights.values())
    probs = {c: w / z for c, w in weights.items()}
    exact = complete or all(lp is not None for lp in raw.values())
    return ClassifyResult(choices, probs, raw, exact, method, usage, text=text)


def match_choice(text: str, choices: tuple[str, ...]) -> str | None:
    """The choice a generated answer gives: the longest choice the stripped text starts with."""
    t = text.strip().strip("\"'`*").strip()
    if t in choices:  # the usual answer: a choice exactly, which is also the longest one it starts with
        return t
    matches = [c for c in choices if t == c or t.startswith(c)]
    return max(matches, key=len) if matches else None


def _failed_classification(choices: tuple[str, ...], response: ChatResponse, error: str) -> ClassifyResult:
    """A judgment that did not happen (counted in n_failed, never scored), keeping what the server said."""
    return ClassifyResult(
        choices, None, {c: None for c in choices}, False, "generation", response.usage, text=response.text, error=error
    )


def classify_from_chat(response: ChatResponse, choices: tuple[str, ...]) -> ClassifyResult:
    """Classification from a one-token completion: its top logprobs where the server gave them, else the
    generated token matched to a choice (one-hot, ``exact=False``), else a failed result."""
    usage = response.usage
    if response.refused:
        return _failed_classification(choices, response, f"refused: {response.refusal or response.finish_reason}")
    if response.logprobs:
        first = response.logprobs[0]
        candidates = dict(first.top_logprobs)
        candidates.setdefault(first.token, first.logprob)
        result = classify_from_logprobs(
            choices, candidates, method="top_logprobs", complete=False, usage=usage, text=response.text
        )
        if result is not None:
            return result
    choice = match_choice(response.text, choices)
    if choice is None:
        where = "" if response.logprobs else " (the server gave no logprobs)"
        return _failed_classification(choices, response, f"answer {response.text!r} is none of {list(choices)}{where}")
    probs = {c: float(c == choice) for c in choices}
    return ClassifyResult(choices, probs, {c: None for c in choices}, False, "generation", usage, text=response.text)

"""``openai:MODEL`` — any OpenAI-compatible chat-completions endpoint through the openai SDK's async client.

OpenAI, OpenRouter, a vLLM or llama.cpp server, ... : ``base_url`` / ``api_key`` arguments, else
``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``. Concurrency is bounded by a semaphore; the SDK's own retries are
off and replaced by ours, which are counted in the usage tracker: exponential backoff with jitter (honouring
``Retry-After``) on 429, 408/409, 5xx, timeouts, dropped connections and malformed bodies (not JSON, no
choices), ``max_retries`` times (default 6) before a clear error naming the base URL. The API key is only
handed to the SDK: it is not in ``repr``, cache entries, usage or error messages.

A fleet: ``base_url=[url, url, ...]`` (or ``{"base_url": .., "max_concurrency": .., "requests_per_minute": ..,
"tokens_per_minute": ..}`` per server) sends each request to the least-loaded server that is within its limits
(in flight / its concurrency; requests and tokens in the last 60 s). A server that refuses connections or times
out (or fails ``DEAD_AFTER`` times in a row) is taken out for ``dead_for_s`` seconds, then tried again; a request
it failed goes to another server at once (counted as a retry). See docs/scale.md.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import os
import random
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote, urlsplit, urlunsplit

from ..errors import ConfigError
from .answers import ANSWER_SLACK_CHARS, CHARS_PER_TOKEN_LIMIT, Malformed, counts, text_field, top_dict
from .base import BaseClient
from .endpoints import DEAD_AFTER, Endpoint, endpoints, public_url
from .errors import (
    AuthenticationError,
    ContextOverflowError,
    LLMConnectionError,
    LLMError,
    LLMTimeoutError,
    MalformedResponseError,
    UnknownModelError,
    hide_url_secrets_in,
    redact,
)
from .types import ChatRequest, ChatResponse, TokenLogprob, Usage
from .usage import estimate_prompt_tokens

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_CONTEXT_PHRASES = (
    "context length",
    "context_length",
    "maximum context",
    "context window",
    "too many tokens",
    "exceeds the context",
    "exceed_context",
    "prompt is too long",
    "requested tokens",
    "n_ctx",
)
_RETRY_STATUS = {408, 409, 425, 429}


class _Retryable(Malformed):
    """A failure worth another try: the kind picks its retry budget."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # "connection" | "timeout" | "status" | "malformed"
        self.retry_after = retry_after


class OpenAIClient(BaseClient):
    """Chat completions against an OpenAI-compatible server.

    Args:
        model: the model name the server knows (``"gpt-4o-mini"``, ``"meta-llama/..."``).
        base_url, api_key: default ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` (a local server needs no key).
            Several servers: a list of URLs or of dicts (``base_url``, ``max_concurrency``,
            ``requests_per_minute``, ``tokens_per_minute``); each request goes to the least-loaded one.
        max_concurrency: requests in flight at once (per server).
        requests_per_minute, tokens_per_minute: rate limits per server (None: none); tokens are estimated
            before sending (prompt + ``max_tokens``) and corrected by the answer's usage.
        dead_for_s: how long a server of a fleet that stopped answering is left out before it is tried again.
        max_retries: retries after the first attempt (>= 0) for 429 / 5xx answers, with backoff
            ``backoff_initial * 2**i`` seconds (at most ``backoff_max``) times a random jitter in [0.5, 1.5).
        max_connection_retries / max_timeout_retries: fewer retries for a refused or dropped connection (2) and
            for an attempt that ran past ``timeout`` (1): a server that is down or hanging is reported in
            seconds, not minutes (the run's breaker then stops the run).
        timeout: seconds per attempt (reading the answer); connect_timeout: seconds to connect (5).
        max_tokens_param: ``"max_tokens"`` (widest support) or ``"max_completion_tokens"`` (OpenAI's newer
            reasoning models reject ``max_tokens``).
        extra_body: extra JSON fields for every request (e.g. OpenRouter's ``provider``).
        cache, replay, usage, cache_namespace: see :class:`BaseClient`. The cache identity defaults to
            ``"openai:<model>@<base url without credentials>"``.
    """

    def __init__(
        self,
        model: str | None,
        *,
        base_url: str | Sequence[str | Mapping[str, Any]] | None = None,
        api_key: str | None = None,
        max_concurrency: int = 8,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        dead_for_s: float = 30.0,
        max_retries: int = 6,
        max_connection_retries: int = 2,
        max_timeout_retries: int = 1,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_tokens_param: str = "max_tokens",
        extra_body: dict[str, Any] | None = None,
        default_headers: dict[str, str] | None = None,
        **base_kwargs: Any,
    ) -> None:
        if not model:
            raise ConfigError("the openai backend needs a model name, e.g. llm='openai:gpt-4o-mini'")
        for name, count, low in (("max_concurrency", max_concurrency, 1), ("max_retries", max_retries, 0)):
            if isinstance(count, bool) or not isinstance(count, int) or count < low:  # "4" from a JSON file too
                raise ConfigError(f"{name} must be an integer >= {low}, got {count!r}")
        if max_tokens_param not in ("max_tokens", "max_completion_tokens"):
            raise ConfigError("max_tokens_param must be 'max_tokens' or 'max_completion_tokens'")
        if isinstance(dead_for_s, bool) or not isinstance(dead_for_s, (int, float)) or dead_for_s < 0:
            raise ConfigError(f"dead_for_s must be a number of seconds >= 0, got {dead_for_s!r}")
        for name, seconds in (("timeout", timeout), ("connect_timeout", connect_timeout)):
            # a zero, negative or NaN timeout makes every request "time out" without asking the server
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < math.inf:
                raise ConfigError(f"{name} must be a finite number of seconds > 0 (e.g. {name}=60), got {seconds!r}")
        self.model = model
        self.endpoints = endpoints(
            base_url
            if base_url is not None and base_url != ""
            else os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
            max_concurrency,
            requests_per_minute,
            tokens_per_minute,
        )
        self.base_url = self.endpoints[0].url
        self.dead_for_s = float(dead_for_s)
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or "sk-no-key-required"
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.retry_limits = {
            "connection": min(max_connection_retries, max_retries),
            "timeout": min(max_timeout_retries, max_retries),
            "malformed": min(2, max_retries),
            "status": max_retries,
        }
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_tokens_param = max_tokens_param
        self.extra_body = dict(extra_body or {})
        self._default_headers = dict(default_headers or {})
        # what an error body or a log line must never show: the key, header values, URL user info and query
        secrets = [self._api_key, *(str(v) for v in self._default_headers.values())]
        for e in self.endpoints:
            parts = urlsplit(e.url)
            secrets += [parts.username or "", parts.password or ""]
            if parts.username:  # httpx sends URL user info as Basic auth, which an echoing server shows in base64
                basic = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
                secrets.append(base64.b64encode(basic.encode()).decode())
            secrets += [v for values in parse_qs(parts.query).values() for v in values]
        self._secrets = sorted({x for x in secrets if x}, key=len, reverse=True)  # longest first: replaced whole
        hide_url_secrets_in("httpx", "httpcore", "openai")  # their own log lines show request URLs
        self._warned_usage = False  # the warning about unusable usage counts is given once
        self.logprobs_supported: bool | None = None  # learned from the first answer that should have them
        self._jitter = random.Random()  # jitter only; results never depend on it
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[asyncio.Condition, list[Any]]] = (
            weakref.WeakKeyDictionary()
        )
        self.requests_sent = 0  # HTTP attempts, retries included
        namespace = base_kwargs.pop("cache_namespace", None) or self._identity()
        super().__init__(f"openai:{model}", cache_namespace=namespace, **base_kwargs)

    def _identity(self) -> str:
        """``openai:<model>@<servers without credentials>``, plus what else changes the answers: a hash of
        ``extra_body`` (provider routing), a hash of ``default_headers`` (a proxy may route on them; their
        values may be secrets, so only a salted digest is kept, never the text) and a ``max_tokens_param``
        other than the default (a server may ignore one of the two)."""
        served = ",".join(sorted(public_url(e.url) for e in self.endpoints))
        namespace = f"openai:{self.model}@{served}"
        if self.extra_body:
            blob = json.dumps(self.extra_body, sort_keys=True, default=str).encode()
            namespace += "#" + hashlib.sha256(blob).hexdigest()[:12]
        if self._default_headers:
            items = sorted((str(k).lower(), str(v)) for k, v in self._default_headers.items())
            blob = json.dumps(["sae-autointerp default_headers", items]).encode()
            namespace += "#h" + hashlib.sha256(blob).hexdigest()[:12]
        if self.max_tokens_param != "max_tokens":
            namespace += f"#{self.max_tokens_param}"
        return namespace

    def __repr__(self) -> str:
        urls = [public_url(e.url) for e in self.endpoints]
        return f"OpenAIClient(model={self.model!r}, base_url={urls[0] if len(urls) == 1 else urls!r})"

    # -- plumbing --------------------------------------------------------------------------------------

    def _state(self) -> tuple[asyncio.Condition, list[Any]]:
        """The running event loop's condition (a server freed a slot) and SDK clients, one per server (an httpx
        pool must not cross loops)."""
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            import openai

            clients = [
                openai.AsyncOpenAI(
                    api_key=self._api_key,
                    # a query in base_url (a proxy's token, an api-version) goes with every request: the SDK
                    # appends its paths to base_url, so the query is passed apart
                    base_url=urlunsplit(urlsplit(e.url)._replace(query="", fragment="")),
                    default_query=dict(parse_qsl(urlsplit(e.url).query)) or None,
                    max_retries=0,
                    # the SDK's own Timeout class (httpx's in openai 1.x, httpx2's in 3.x)
                    timeout=openai.Timeout(self.timeout, connect=self.connect_timeout),
                    default_headers=self._default_headers or None,
                )
                for e in self.endpoints
            ]
            state = (asyncio.Condition(), clients)
            self._loops[loop] = state
        return state

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        state = self._loops.pop(loop, None)
        if state is not None:
            for client in state[1]:
                await client.close()

    def _pick(self, tokens: int, avoid: Endpoint | None) -> tuple[int | None, float | None]:
        """(index of the server to send to, None) or (None, seconds to wait; None: until a slot frees)."""
        now = time.monotonic()
        eps = self.endpoints
        alive = [i for i, e in enumerate(eps) if e.dead_until <= now]
        if not alive:  # every server is out: try the one that comes back first rather than wait for it
            alive = [min(range(len(eps)), key=lambda i: eps[i].dead_until)]
        ready, waits = [], []
        for i in alive:
            e = eps[i]
            if e.in_flight >= e.max_concurrency:
                continue
            wait = e.rate_wait(now, tokens)
            if wait <= 0:
                ready.append(i)
            else:
                waits.append(wait)
        waits += [e.dead_until - now for e in eps if e.dead_until > now]
        if ready:
            best = min(ready, key=lambda i: (eps[i] is avoid, eps[i].in_flight / eps[i].max_concurrency, eps[i].sent))
            return best, None
        return None, (max(0.001, min(waits)) if waits else None)

    async def _acquire(
        self, cond: asyncio.Condition, tokens: int, avoid: Endpoint | None
    ) -> tuple[int, list[float] | None]:
        """A slot on the chosen server (waits while none is free); its entry in the rate window, if limited."""
        async with cond:
            while True:
                index, wait = self._pick(tokens, avoid)
                if index is not None:
                    e = self.endpoints[index]
                    e.in_flight += 1
                    e.sent += 1
                    entry = [time.monotonic(), float(tokens)] if e.limited else None
                    if entry is not None:
                        e.window.append(entry)
                    return index, entry
                try:
                    await asyncio.wait_for(cond.wait(), wait)
                except asyncio.TimeoutError:
                    pass

    async def _release(self, cond: asyncio.Condition, e: Endpoint) -> None:
        async with cond:
            e.in_flight -= 1
            cond.notify_all()

    def _health(self, e: Endpoint, failure: Malformed | None) -> bool:
        """Count a server's success or failure; True when the failure took it out of a fleet."""
        if failure is None:
            e.failures_in_a_row = 0
            return False
        e.failures_in_a_row += 1
        if len(self.endpoints) == 1:
            return False
        if failure.kind in ("connection", "timeout") or e.failures_in_a_row >= DEAD_AFTER:
            e.dead_until = time.monotonic() + self.dead_for_s
            log.warning(
                "%s left out for %g s (%s); %d other server(s) take its requests",
                public_url(e.url),
                self.dead_for_s,
                self._redact(str(failure)),
                len(self.endpoints) - 1,
            )
            return True
        return False

    def _others_alive(self, e: Endpoint) -> bool:
        now = time.monotonic()
        return any(o is not e and o.dead_until <= now for o in self.endpoints)

    def _redact(self, text: str) -> str:
        return redact(text, *self._secrets)

    # -- the request -----------------------------------------------------------------------------------

    def _body(self, request: ChatRequest, with_logprobs: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": request.message_dicts(),
            "temperature": request.temperature,
            self.max_tokens_param: request.max_tokens,
        }
        if request.top_p != 1.0:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = list(request.stop)
        if request.samples:
            body["seed"] = self.seed_for(request)
        if request.logprobs and with_logprobs:
            body["logprobs"] = True
            if request.top_logprobs:
                body["top_logprobs"] = request.top_logprobs
        return body

    async def _chat(self, request: ChatRequest) -> ChatResponse:
        with_logprobs = self.logprobs_supported is not False
        try:
            response = await self._send(request, with_logprobs)
        except LLMError as exc:
            # A server that rejects the logprobs fields: say so once, then go on without them.
            if not (
                with_logprobs
                and request.logprobs
                and "logprob" in str(exc).lower()
                and not isinstance(exc, (LLMConnectionError, MalformedResponseError))
            ):
                raise
            log.warning("%s rejects logprobs (%s); continuing without them", public_url(self.base_url), exc)
            self.logprobs_supported = False
            response = await self._send(request, False)
        if request.logprobs and response.logprobs is None:
            if self.logprobs_supported is None:
                log.warning(
                    "%s returned no logprobs for model %r; classify() falls back to matching the generated "
                    "answer (one-hot, exact=False)",
                    public_url(self.base_url),
                    self.model,
                )
            self.logprobs_supported = False
        elif request.logprobs:
            self.logprobs_supported = True
        return response

    async def _send(self, request: ChatRequest, with_logprobs: bool) -> ChatResponse:
        import openai

        body = self._body(request, with_logprobs)
        extra = dict(self.extra_body)
        attempt = 0
        tries: dict[str, int] = {}
        tokens = estimate_prompt_tokens(request.messages) + request.max_tokens
        avoid: Endpoint | None = None
        failure: Malformed
        while True:
            cond, clients = self._state()
            index, entry = await self._acquire(cond, tokens, avoid)
            e = self.endpoints[index]
            try:
                self.requests_sent += 1
                raw = await clients[index].chat.completions.with_raw_response.create(
                    **{k: v for k, v in body.items() if k not in ("model", "messages")},
                    model=body["model"],
                    messages=body["messages"],
                    extra_body=extra or None,
                )
                response = self._parse(raw.text, request)
                self._health(e, None)
                if entry is not None and response.usage.total_tokens:  # the estimate becomes what it used
                    entry[1] = float(response.usage.total_tokens)
                return response
            except openai.APITimeoutError as exc:
                failure = _Retryable("timeout", f"no answer within {self.timeout:g} s ({exc})")
            except openai.APIConnectionError as exc:
                cause = exc.__cause__ or exc
                failure = _Retryable("connection", f"{type(cause).__name__}: {cause}")
            except openai.APIStatusError as exc:
                failure = self._status_failure(exc, e.url)  # raises when not retryable
            except Malformed as exc:  # _Retryable, and the wrongly typed fields answers.py finds
                failure = exc
            finally:
                await self._release(cond, e)
            attempt += 1
            taken_out = self._health(e, failure)
            failover = taken_out and self._others_alive(e)
            if not failover:  # each kind of failure has its own retry budget; a server taken out costs none
                tries[failure.kind] = tries.get(failure.kind, 0) + 1
            if attempt > self.max_retries or tries.get(failure.kind, 0) > self.retry_limits.get(
                failure.kind, self.max_retries
            ):
                raise self._final_error(failure, attempt, e.url) from None
            self.usage.record_retry(self.name, request.stage, request.latent)
            avoid = e
            delay = min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1)) * self._jitter.uniform(0.5, 1.5)
            if failure.retry_after is not None:
                delay = max(delay, min(failure.retry_after, self.backoff_max))
            if failover:
                delay = 0.0
            log.info(
                "%s: %s; retry %d/%d in %.2f s",
                public_url(e.url),
                self._redact(str(failure)),
                attempt,
                self.max_retries,
                delay,
            )
            if delay:
                await asyncio.sleep(delay)

    def _status_failure(self, exc: Any, base_url: str) -> _Retryable:
        status = exc.status_code
        message = self._redact(_error_message(exc))
        url = public_url(base_url)
        if status in _RETRY_STATUS or status >= 500:
            retry_after = None
            try:
                retry_after = float(exc.response.headers.get("retry-after"))
            except (TypeError, ValueError):
                pass
            return _Retryable("status", f"HTTP {status}: {message}", retry_after)
        lowered = message.lower()
        if status in (401, 403):
            raise AuthenticationError(
                f"{url} rejected the API key (HTTP {status}: {message}); set OPENAI_API_KEY or pass api_key="
            )
        if (
            status in (400, 404, 422)
            and "model" in lowered
            and any(p in lowered for p in ("not found", "does not exist", "unknown", "not exist", "invalid model"))
            or status == 404
        ):
            raise UnknownModelError(
                f"model {self.model!r} is not served by {url} (HTTP {status}: {message}). "
                "List what it serves with GET /models and pass llm='openai:<one of them>', or check the base URL "
                "(it usually ends in /v1)"
            )
        if status in (400, 413, 422) and any(p in lowered for p in _CONTEXT_PHRASES):
            raise ContextOverflowError(
                f"the prompt does not fit the context window of {self.model!r} at {url} (HTTP {status}: {message}). "
                "Use fewer or shorter examples, or a smaller max_tokens"
            )
        raise LLMError(f"{url} rejected the request for {self.model!r} (HTTP {status}: {message})")

    def _final_error(self, failure: Malformed, attempts: int, base_url: str) -> LLMError:
        url = public_url(base_url)
        if len(self.endpoints) > 1:
            url += f" (last tried of {len(self.endpoints)} servers: {', '.join(public_url(e.url) for e in self.endpoints)})"
        what = self._redact(str(failure))
        if failure.kind == "timeout":
            return LLMTimeoutError(f"{url} did not answer within {self.timeout:g} s in {attempts} attempts ({what})")
        if failure.kind == "malformed":
            return MalformedResponseError(f"{url} gave no usable completion in {attempts} attempts: {what}")
        if failure.kind == "status":
            return LLMConnectionError(f"{url} kept failing after {attempts} attempts: {what}")
        return LLMConnectionError(
            f"could not reach {url} after {attempts} attempts ({what}). Is the server running, and is "
            "OPENAI_BASE_URL / base_url right?"
        )

    def _parse(self, text: str, request: ChatRequest) -> ChatResponse:
        try:
            data = json.loads(text)
        except ValueError:
            raise _Retryable("malformed", f"the body is not JSON: {text[:120]!r}") from None
        if not isinstance(data, dict):
            raise _Retryable("malformed", f"the body is not a JSON object: {text[:120]!r}")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _Retryable("malformed", f"no choices in the answer: {text[:200]!r}")
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise _Retryable("malformed", f"choice without a message: {text[:200]!r}")
        content = text_field(message.get("content"), "content", text)
        refusal = text_field(message.get("refusal"), "refusal", text) or None
        finish_reason = choice.get("finish_reason")
        if finish_reason is not None and not isinstance(finish_reason, str):
            raise _Retryable("malformed", f"finish_reason is not a string: {text[:200]!r}")
        if content is None and refusal is None and finish_reason != "content_filter":
            raise _Retryable("malformed", f"message without content: {text[:200]!r}")
        limit = CHARS_PER_TOKEN_LIMIT * request.max_tokens + ANSWER_SLACK_CHARS
        longest = max(len(content or ""), len(refusal or ""))
        if longest > limit:
            raise _Retryable(
                "malformed",
                f"an answer of {longest:,} characters for max_tokens={request.max_tokens} (more than {limit:,}): "
                "the server ignores max_tokens",
            )
        logprobs = None
        lp = choice.get("logprobs")
        if isinstance(lp, dict) and isinstance(lp.get("content"), list):
            try:
                logprobs = tuple(
                    TokenLogprob(
                        token=str(t["token"]),
                        logprob=float(t["logprob"]),
                        top_logprobs=top_dict(t.get("top_logprobs")),
                    )
                    for t in lp["content"]
                )
            except (KeyError, TypeError, ValueError, AttributeError):
                logprobs = None
        usage = self._usage(data.get("usage"), request, content or "")
        return ChatResponse(
            text=content or "",
            finish_reason=finish_reason,
            usage=usage,
            logprobs=logprobs if request.logprobs else None,
            model=str(data.get("model") or self.model),
            refusal=refusal,
            logprobs_unavailable=bool(request.logprobs and logprobs is None),
        )

    def _usage(self, raw: Any, request: ChatRequest, content: str) -> Usage:
        """The answer's token counts. Absent: zeros, as before (the server does not report them). Present but
        unusable (not an object, a count that is not a finite number >= 0, e.g. ``"lots"`` or ``-10**9``): the
        answer itself is kept (its text is fine) and its usage becomes our estimate (the prompt's as for budget
        reservations, a token per 3 characters of the answer), with one warning per client, so a server that
        reports nonsense never lowers the spend or switches a token / dollar budget off."""
        if raw is None:
            return Usage()
        usage = counts(raw)
        if usage is not None:
            return usage
        if not self._warned_usage:
            self._warned_usage = True
            log.warning(
                "%s reported unusable token usage (%s); counting an estimate from the text instead",
                public_url(self.base_url),
                self._redact(json.dumps(raw, default=str)[:120]),
            )
        return Usage(estimate_prompt_tokens(request.messages), len(content) // 3 + 1, 0)


def _error_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        if isinstance(err, str):
            return err[:500]
    try:
        return exc.response.text[:500]
    except Exception:
        return str(exc)[:500]

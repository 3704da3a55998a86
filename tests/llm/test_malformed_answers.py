"""A server that answers 200 with wrongly typed or oversized fields, reports nonsense usage, or is configured
with nonsense timeouts: against the labelled FAKE fault server (llm_fakes.py), never a real LLM.

A malformed answer is a backend failure (retried, counted, never cached), an unusable usage report never
lowers the spend, an answer far beyond max_tokens is refused, and headers / max_tokens_param are part of the
cache identity without their values ever being stored."""

from __future__ import annotations

import base64
import logging
import math

import pytest

from llm_fakes import KEY, MSG, OPEN_CLIENTS, FaultServer, open_client
from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.llm import (
    BudgetExceeded,
    LLMConnectionError,
    MalformedResponseError,
    UsageTracker,
    get_client,
)
from sae_lens_autointerp.llm.cache import ResponseCache
from sae_lens_autointerp.llm.openai_client import ANSWER_SLACK_CHARS, CHARS_PER_TOKEN_LIMIT, OpenAIClient
from sae_lens_autointerp.llm.usage import estimate_prompt_tokens


def client(server, **kw):
    kw.setdefault("timeout", 5.0)
    return open_client(server, api_key=KEY, **kw)


@pytest.mark.parametrize("mode", ["numcontent", "dictcontent", "imagecontent"])
async def test_content_that_is_not_text_is_a_malformed_answer_never_cached(mode, tmp_path):
    with FaultServer(default=mode) as srv:
        c = client(srv, cache=tmp_path / "c")
        with pytest.raises(MalformedResponseError, match="content is a (int|dict|list), not text"):
            await c.chat(MSG, max_tokens=2)
        assert srv.count == 3  # the first try and two retries: a malformed answer is a backend failure
    assert len(ResponseCache(tmp_path / "c")) == 0
    t = c.usage.total()
    assert (t.requests, t.attempts, t.retries, t.failures) == (0, 3, 2, 1)
    assert c._transport_failures == 1  # what the fail-fast (and the run's breaker, through the error) count


async def test_content_as_a_list_of_text_parts_is_joined(tmp_path):
    with FaultServer(default="listcontent", reply="Explanation: months") as srv:
        c = client(srv, cache=tmp_path / "c")
        r = await c.chat(MSG, max_tokens=20)
    assert r.text == "Explanation: months" and srv.count == 1
    assert len(ResponseCache(tmp_path / "c")) == 1


@pytest.mark.parametrize("mode", ["badusage", "listusage", "negusage"])
async def test_unusable_usage_counts_the_estimate_with_one_warning(mode, tmp_path, caplog):
    """The answer's text is fine: it is kept. Its usage ("lots", a list, -10**9 tokens) becomes the estimate."""
    caplog.set_level(logging.WARNING)
    with FaultServer(default=mode) as srv:
        c = client(srv, cache=tmp_path / "c")
        first = await c.chat(MSG, max_tokens=2)
        await c.chat([{"role": "user", "content": "Another question? Answer 0 or 1."}], max_tokens=2)
    expected = estimate_prompt_tokens([("user", MSG[0]["content"])])
    assert first.text == "1" and (first.usage.prompt_tokens, first.usage.completion_tokens) == (expected, 1)
    t = c.usage.total()
    assert t.requests == 2 and t.prompt_tokens > 0 and t.completion_tokens == 2 and t.failures == 0
    assert caplog.text.count("unusable token usage") == 1


async def test_negative_usage_never_lowers_the_token_budget():
    """R14: a server reporting -10**9 tokens per answer kept a 3,000-token budget from ever tripping."""
    budget = 3000
    usage = UsageTracker(budget_tokens=budget)
    with FaultServer(default="negusage") as srv:
        c = client(srv, cache=False, usage=usage)
        with pytest.raises(BudgetExceeded, match="token budget 3,000 reached"):
            for i in range(200):
                await c.chat([{"role": "user", "content": f"question {i}: " + "x" * 300}], max_tokens=50)
    t = usage.total()
    assert 0 < t.total_tokens <= budget and t.requests < 40


async def test_an_answer_far_beyond_max_tokens_is_malformed(tmp_path):
    """R13: a server ignoring max_tokens (here 200 kB for max_tokens=60) gives no answer, and nothing is cached."""
    limit = CHARS_PER_TOKEN_LIMIT * 60 + ANSWER_SLACK_CHARS
    with FaultServer(default="huge", reply="Explanation: x", huge_chars=limit - len("Explanation: x")) as srv:
        c = client(srv, cache=tmp_path / "c", max_retries=0)
        at_the_limit = await c.chat(MSG, max_tokens=60)
        assert len(at_the_limit.text) == limit
        srv.huge_chars = 200_000
        with pytest.raises(MalformedResponseError, match="the server ignores max_tokens"):
            await c.chat([{"role": "user", "content": "again"}], max_tokens=60)
    assert len(ResponseCache(tmp_path / "c")) == 1  # only the answer within the limit


@pytest.mark.parametrize("value", [-1, 0, math.nan, math.inf, "60", True])
@pytest.mark.parametrize("name", ["timeout", "connect_timeout"])
def test_a_timeout_must_be_a_finite_positive_number(name, value):
    with pytest.raises(ConfigError, match=f"{name} must be a finite number of seconds > 0"):
        OpenAIClient("m", base_url="http://127.0.0.1:9/v1", cache=False, **{name: value})


async def test_headers_and_max_tokens_param_are_part_of_the_cache_identity(tmp_path):
    """D9 note: header B was served header A's answer. Their values may be secrets: stored nowhere in clear."""
    cache = tmp_path / "c"
    with FaultServer() as srv:
        plain = client(srv, cache=cache)
        a = client(srv, cache=cache, default_headers={"X-Api-Key": "HDR-SECRET-A"})
        b = client(srv, cache=cache, default_headers={"X-Api-Key": "HDR-SECRET-B"})
        a_again = client(srv, cache=cache, default_headers={"x-api-key": "HDR-SECRET-A"})
        newer = client(srv, cache=cache, max_tokens_param="max_completion_tokens")
        for c in (plain, a, b, a_again, newer):
            await c.chat(MSG, max_tokens=2)
        assert srv.count == 4  # a_again is a's identity (header names are case-insensitive): a cache hit
        assert [h.get("x-api-key") for h in srv.headers] == [None, "HDR-SECRET-A", "HDR-SECRET-B", None]
    names = [c.cache_namespace for c in (plain, a, b, newer)]
    assert len(set(names)) == 4 and a.cache_namespace == a_again.cache_namespace
    assert plain.cache_namespace == f"openai:fake-model@{srv.base_url}"  # unchanged without them
    stored = "".join(p.read_text() for p in cache.rglob("*.json"))
    for secret in ("HDR-SECRET", KEY):
        assert secret not in stored and all(secret not in n for n in names)
        assert secret not in repr(a) and secret not in str(a.usage.summary())


async def test_no_secret_in_errors_logs_usage_or_cache(tmp_path, caplog):
    """An error body echoing every header and the URL: the key, a header value, the URL's user info and its
    query token are redacted from the error and from this package's logs, and are in no cache file or usage."""
    caplog.set_level(logging.DEBUG, logger="sae_lens_autointerp")
    basic = base64.b64encode(b"user:PASSW0RD-SECRET").decode()  # httpx sends URL user info as Basic auth
    secrets = ("HDR-SECRET-9", "PASSW0RD-SECRET", "QTOKEN-SECRET", basic, KEY)
    with FaultServer(default="echoall") as srv:
        url = srv.base_url.replace("http://", "http://user:PASSW0RD-SECRET@") + "?token=QTOKEN-SECRET"
        c = get_client(
            "openai:fake-model",
            base_url=url,
            api_key=KEY,
            default_headers={"X-Api-Key": "HDR-SECRET-9"},
            backoff_initial=0.01,
            max_retries=1,
            cache=tmp_path / "c",
        )
        OPEN_CLIENTS.append(c)
        with pytest.raises(LLMConnectionError) as err:
            await c.chat(MSG, max_tokens=2)
        assert srv.count == 2 and "HDR-SECRET-9" in str(srv.headers[0])  # sent to the server, and echoed back
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("sae_lens_autointerp"))
    assert "cannot serve" in str(err.value) and "cannot serve" in ours
    stored = "".join(p.read_text() for p in (tmp_path / "c").rglob("*.json"))
    for secret in secrets:
        assert secret not in str(err.value) and secret not in ours, secret
        assert secret not in c.cache_namespace and secret not in repr(c) and secret not in str(c.usage.summary())
        assert secret not in stored


def test_the_transports_log_lines_hide_url_user_info_and_query_values(caplog):
    """httpx logs every request's URL at INFO: once a client exists, a password or token in its base_url is
    hidden there too (a program that turns that logger on must not print the secret)."""
    import httpx

    caplog.set_level(logging.INFO, logger="httpx")
    with FaultServer() as server:
        OpenAIClient("fake-model", base_url=f"http://user:PW-SECRET-1@127.0.0.1:{server.port}/v1?token=QT-SECRET-2")
        httpx.get(f"http://user:PW-SECRET-1@127.0.0.1:{server.port}/v1/models?token=QT-SECRET-2&x=1")
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert lines and all("HTTP Request" in x for x in lines)
    assert not any("PW-SECRET" in x or "QT-SECRET" in x for x in lines), lines
    assert "http://***@127.0.0.1" in lines[0] and "token=***&x=***" in lines[0]


async def test_a_query_in_base_url_goes_with_every_request():
    """A proxy's token or an api-version in base_url's query reaches the server on the request's own path (the
    SDK appends its paths to base_url, which once put the path after the query)."""
    with FaultServer() as srv:
        c = get_client("openai:fake-model", base_url=f"{srv.base_url}?token=QT-1&api-version=2", api_key=KEY)
        OPEN_CLIENTS.append(c)
        await c.chat(MSG, max_tokens=2)
    path, _, query = srv.paths[0].partition("?")
    assert path == "/v1/chat/completions" and sorted(query.split("&")) == ["api-version=2", "token=QT-1"]

"""Fault injection against a FAKE misbehaving HTTP server (tests/llm/llm_fakes.py): retries are counted,
nothing is lost, errors are clear, the budget stops a run, and the API key never leaks."""

from __future__ import annotations

import asyncio
import logging

import pytest

from llm_fakes import KEY, MSG, FaultServer, free_port, open_client
from sae_lens_autointerp.llm import (
    AuthenticationError,
    BudgetExceeded,
    CacheMissError,
    ContextOverflowError,
    LLMConnectionError,
    LLMTimeoutError,
    MalformedResponseError,
    UnknownModelError,
    UsageTracker,
    get_client,
)


def client(server_or_url, **kw):
    kw.setdefault("timeout", 2.0)
    kw.setdefault("cache", False)
    return open_client(server_or_url, api_key=KEY, **kw)


@pytest.mark.parametrize(
    "script,retries",
    [
        (["500", "500"], 2),
        (["503", "429"], 2),
        (["drop"], 1),
        (["nonjson"], 1),
        (["empty"], 1),
        (["500", "drop", "nonjson", "empty"], 4),
    ],
)
async def test_transient_failures_are_retried_and_counted(script, retries):
    with FaultServer(script) as srv:
        c = client(srv)
        r = await c.chat(MSG, max_tokens=2, stage="detection", latent=7)
        assert r.text == "1" and r.finish_reason == "stop"
        assert srv.count == retries + 1
        t = c.usage.total()
        assert (t.retries, t.requests, t.failures) == (retries, 1, 0)
        assert c.usage.by_latent()[("detection", 7)].retries == retries
        assert (t.prompt_tokens, t.completion_tokens, t.cached_tokens) == (10, 2, 4)


async def test_hang_past_timeout_is_retried():
    with FaultServer(["hang"], hang_s=3) as srv:
        c = client(srv, timeout=0.3)
        r = await c.chat(MSG, max_tokens=2)
        assert r.text == "1" and srv.count == 2 and c.usage.total().retries == 1


async def test_persistent_hang_gives_timeout_error_naming_url():
    """A hanging server is retried once (max_timeout_retries), not max_retries times: reported in seconds."""
    with FaultServer(["hang"] * 3, hang_s=3) as srv:
        c = client(srv, timeout=0.3, max_retries=6)
        with pytest.raises(LLMTimeoutError, match=f"127.0.0.1:{srv.port}.*2 attempts"):
            await c.chat(MSG, max_tokens=2)
        assert c.requests_sent == 2 and srv.count <= 2 and c.usage.total().failures == 1


async def test_persistent_malformed_is_a_counted_failure():
    with FaultServer(["nonjson"] * 10) as srv:
        c = client(srv, max_retries=6)
        with pytest.raises(MalformedResponseError, match="not JSON"):
            await c.chat(MSG, max_tokens=2, stage="explain", latent=1)
        assert srv.count == 3  # malformed bodies: 2 retries
        assert c.usage.by_stage()["explain"].failures == 1


async def test_unreachable_server_names_base_url_after_retries():
    """A refused connection is retried twice (max_connection_retries), so a dead server is reported in ~1.5 s."""
    import time

    url = f"http://127.0.0.1:{free_port()}/v1"
    c = client(url, max_retries=5)
    start = time.perf_counter()
    with pytest.raises(LLMConnectionError) as info:
        await c.chat(MSG, max_tokens=2)
    msg = str(info.value)
    assert url in msg and "3 attempts" in msg and KEY not in msg
    assert c.usage.total().retries == 2 and time.perf_counter() - start < 10


def test_default_retries_at_least_five():
    c = get_client("openai:m", base_url="http://127.0.0.1:9/v1", cache=False)
    assert c.max_retries >= 5


@pytest.mark.parametrize(
    "action,error", [("404", UnknownModelError), ("400ctx", ContextOverflowError), ("401", AuthenticationError)]
)
async def test_non_retryable_errors_are_clear(action, error, caplog):
    caplog.set_level(logging.DEBUG)
    with FaultServer([action]) as srv:
        c = client(srv)
        with pytest.raises(error) as info:
            await c.chat(MSG, max_tokens=2)
        assert srv.count == 1, "not retried"
        assert f"127.0.0.1:{srv.port}" in str(info.value)
        assert KEY not in str(info.value) and KEY not in caplog.text
    if action == "404":
        assert "fake-model" in str(info.value)


async def test_concurrency_is_bounded():
    with FaultServer(delay=0.1) as srv:
        c = client(srv, max_concurrency=3)
        rs = await asyncio.gather(
            *[c.chat(MSG + [{"role": "user", "content": str(i)}], max_tokens=2) for i in range(12)]
        )
        assert len(rs) == 12 and srv.count == 12
        assert srv.max_in_flight == 3


async def test_refusal_is_handed_to_the_caller_and_counted():
    with FaultServer(["refusal", "refusal"]) as srv:
        c = client(srv)
        r = await c.chat(MSG, max_tokens=2, stage="explain", latent=2)
        assert r.refused and r.refusal and r.text == ""
        k = await c.classify(MSG, stage="detection", latent=2)
        assert not k.ok and "refused" in k.error
        with pytest.raises(ValueError):
            k.prob("1")
        assert c.usage.by_stage()["explain"].failures == 1
        assert c.usage.by_stage()["detection"].failures == 1


async def test_classify_uses_top_logprobs():
    with FaultServer() as srv:
        c = client(srv)
        k = await c.classify(MSG)
        assert k.ok and k.method == "top_logprobs" and k.exact
        assert srv.requests[0]["max_tokens"] == 1 and srv.requests[0]["top_logprobs"] == 20
        # "1" and " 1" both count for "1"
        import math

        p1 = math.exp(-0.1) + math.exp(-4.0)
        assert k.probs["1"] == pytest.approx(p1 / (p1 + math.exp(-2.4)))


async def test_classify_falls_back_without_logprobs():
    with FaultServer(["nologprobs"]) as srv:
        c = client(srv)
        k = await c.classify(MSG)
        assert k.ok and k.method == "generation" and not k.exact and k.probs == {"0": 0.0, "1": 1.0}
        assert c.logprobs_supported is False
    with FaultServer(["nologprobs"], reply="banana") as srv:
        c = client(srv)
        k = await c.classify(MSG, stage="detection")
        assert not k.ok and "banana" in k.error and "no logprobs" in k.error
        assert c.usage.by_stage()["detection"].failures == 1


async def test_response_cache_hit_sends_nothing_and_replay_mode(tmp_path):
    with FaultServer() as srv:
        c = client(srv, cache=tmp_path / "c")
        a = await c.chat(MSG, max_tokens=2, stage="explain", latent=1)
        b = await c.chat(MSG, max_tokens=2, stage="detection", latent=1)
        assert srv.count == 1 and not a.cached and b.cached and b.text == a.text and b.usage == a.usage
        assert c.usage.by_stage()["detection"].cache_hits == 1
        assert c.usage.by_stage()["detection"].requests == 0
        replay = client(srv, cache=tmp_path / "c", replay=True)
        assert (await replay.chat(MSG, max_tokens=2)).cached
        with pytest.raises(CacheMissError, match="replay"):
            await replay.chat(MSG, max_tokens=3)
        assert srv.count == 1
    # the key never reaches the cache
    for f in (tmp_path / "c").rglob("*"):
        if f.is_file():
            assert KEY not in f.read_text()


async def test_failed_attempts_are_not_cached(tmp_path):
    with FaultServer(["nonjson"] * 3) as srv:
        c = client(srv, cache=tmp_path / "c", max_retries=2)
        with pytest.raises(MalformedResponseError):
            await c.chat(MSG, max_tokens=2)
        r = await c.chat(MSG, max_tokens=2)  # the server recovered: asked again, answered, cached
        assert r.text == "1" and not r.cached and srv.count == 4


async def test_token_budget_stops_the_run_and_keeps_finished_work():
    with FaultServer(prompt_tokens=10, completion_tokens=2) as srv:
        # each request reserves ~(len/3 + 12) + max_tokens up front and really spends 12 tokens
        usage = UsageTracker(budget_tokens=100)
        c = client(srv, usage=usage)
        done, stopped = [], None
        for i in range(50):
            try:
                done.append(
                    await c.chat([{"role": "user", "content": f"q{i}"}], max_tokens=2, stage="explain", latent=i)
                )
            except BudgetExceeded as exc:
                stopped = exc
                break
        assert stopped is not None and "token budget 100" in str(stopped)
        assert 3 <= len(done) < 50 and srv.count == len(done)
        assert usage.total().total_tokens <= 100 and usage.budget_exhausted
        with pytest.raises(BudgetExceeded):  # stays stopped
            await c.chat([{"role": "user", "content": "late"}], max_tokens=1)
        assert srv.count == len(done)
        assert usage.summary()["budget"]["exhausted"] and "BUDGET" in usage.format()


async def test_dollar_budget_with_price_table_under_concurrency():
    # prompts of ~300 characters: the reservation estimate (~112 tokens) covers the 100 the server reports
    with FaultServer(prompt_tokens=100, completion_tokens=50, delay=0.02) as srv:
        usage = UsageTracker(prices={"fake-model": {"input": 1.0, "output": 10.0}}, budget_dollars=0.01)
        c = client(srv, usage=usage, max_concurrency=4)

        async def one(i):
            try:
                return await c.chat([{"role": "user", "content": f"{i:03d}" + "x" * 297}], max_tokens=50, latent=i)
            except BudgetExceeded:
                return None

        results = await asyncio.gather(*[one(i) for i in range(40)])
        finished = [r for r in results if r is not None]
        # each costs 100 * 1e-6 + 50 * 1e-5 = $0.0006 (fresh prompt tokens are 96: 4 are cached, same price)
        assert 10 <= len(finished) < 40 and srv.count == len(finished)
        assert usage.total().cost == pytest.approx(0.0006 * len(finished))
        assert usage.total().cost <= 0.01 and usage.budget_exhausted
        assert "dollar budget" in usage.budget_message


async def test_api_key_never_in_logs_usage_or_repr(caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    with FaultServer(["500", "401"]) as srv:
        c = client(srv, cache=tmp_path / "c")
        with pytest.raises(AuthenticationError):
            await c.chat(MSG, max_tokens=2)
        assert srv.headers[0]["authorization"] == f"Bearer {KEY}"  # it was sent, to the server only
    assert KEY not in caplog.text and KEY not in repr(c) and KEY not in str(c.usage.summary())


def test_extra_body_is_part_of_the_cache_identity(tmp_path):
    """OpenRouter-style provider routing changes the answers: it must not share cached answers (or a run key)."""
    a = client("http://127.0.0.1:9/v1", cache=tmp_path / "c")
    b = client("http://127.0.0.1:9/v1", cache=tmp_path / "c", extra_body={"provider": {"order": ["x"]}})
    c = client("http://127.0.0.1:9/v1", cache=tmp_path / "c", extra_body={"provider": {"order": ["y"]}})
    assert len({a.cache_namespace, b.cache_namespace, c.cache_namespace}) == 3
    assert KEY not in b.cache_namespace


async def test_a_dead_backend_fails_fast_after_five_failures():
    """Queued requests to a backend that just failed five times in a row are not sent: each would wait for its
    own timeouts and retries. A success resets it."""
    import time

    from sae_lens_autointerp.llm.base import FAIL_FAST_AFTER

    url = f"http://127.0.0.1:{free_port()}/v1"
    c = client(url, max_retries=5)
    for _ in range(FAIL_FAST_AFTER):
        with pytest.raises(LLMConnectionError, match="could not reach"):
            await c.chat(MSG, max_tokens=2)
    sent = c.requests_sent
    start = time.perf_counter()
    with pytest.raises(LLMConnectionError, match="not sent: the last 5 requests"):
        await c.chat(MSG, max_tokens=2)
    assert c.requests_sent == sent and time.perf_counter() - start < 0.5
    assert c.usage.total().failures == FAIL_FAST_AFTER + 1

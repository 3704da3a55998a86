"""A fleet of OpenAI-compatible servers without Ray: one client, several base URLs; each request goes to the
least-loaded server within its limits, a dead or failing server is taken out and tried again later. Servers are
the labelled FAKE fault server (llm_fakes.py) on 127.0.0.1; a "dead" server is a free port nobody listens on."""

from __future__ import annotations

import asyncio

import pytest

from llm_fakes import MSG, FaultServer, free_port, open_client
from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.llm import LLMConnectionError, get_client
from sae_lens_autointerp.llm.openai_client import DEAD_AFTER
from sae_lens_autointerp.llm.usage import estimate_prompt_tokens


def fleet(urls, **kw):
    kw.setdefault("timeout", 2.0)
    kw.setdefault("cache", False)
    return open_client(urls, **kw)


async def test_requests_go_to_the_least_loaded_server_within_its_concurrency():
    with FaultServer(delay=0.2) as a, FaultServer(delay=0.2) as b:
        c = fleet([{"base_url": a.base_url, "max_concurrency": 1}, {"base_url": b.base_url, "max_concurrency": 3}])
        answers = await asyncio.gather(*(c.chat(MSG, max_tokens=2, seed=i) for i in range(8)))
        assert [r.text for r in answers] == ["1"] * 8
        assert (a.max_in_flight, b.max_in_flight) == (1, 3)  # each server's own limit, both used to the full
        assert a.count + b.count == 8 and b.count > a.count >= 1
        assert c.usage.total().retries == 0


async def test_equal_servers_share_the_load_evenly():
    with FaultServer(delay=0.1) as a, FaultServer(delay=0.1) as b:
        c = fleet([a.base_url, b.base_url], max_concurrency=4)
        await asyncio.gather(*(c.chat(MSG, max_tokens=2, seed=i) for i in range(8)))
        assert (a.count, b.count) == (4, 4)
        assert (a.max_in_flight, b.max_in_flight) == (4, 4)


async def test_a_dead_server_is_taken_out_and_its_requests_go_elsewhere():
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with FaultServer() as a, FaultServer() as b:
        c = fleet([dead, a.base_url, b.base_url], dead_for_s=60)
        first = await asyncio.gather(*(c.chat(MSG, max_tokens=2, seed=i) for i in range(6)))
        assert [r.text for r in first] == ["1"] * 6
        retries = c.usage.total().retries
        assert 1 <= retries <= 2  # only requests sent to the dead server before it was taken out
        assert a.count + b.count == 6 and c.usage.total().failures == 0
        for i in range(6):  # it stays out: no request tries it again
            await c.chat(MSG, max_tokens=2, seed=100 + i)
        assert c.usage.total().retries == retries and a.count + b.count == 12


async def test_a_dead_server_is_tried_again_later_and_takes_requests_once_back():
    port = free_port()
    with FaultServer() as a:
        c = fleet([f"http://127.0.0.1:{port}/v1", a.base_url], dead_for_s=0.3)
        await c.chat(MSG, max_tokens=2, seed=0)
        await c.chat(MSG, max_tokens=2, seed=1)
        assert c.usage.total().retries == 1 and a.count == 2
        with FaultServer(port=port) as back:  # the server comes back on its old port
            await asyncio.sleep(0.4)
            await asyncio.gather(*(c.chat(MSG, max_tokens=2, seed=10 + i) for i in range(4)))
            assert back.count >= 1 and back.count + a.count == 6


async def test_a_failing_server_is_taken_out_after_failures_in_a_row():
    with FaultServer(["500"] * 50) as bad, FaultServer() as good:
        c = fleet([bad.base_url, good.base_url], dead_for_s=60, max_retries=6)
        for i in range(8):  # one at a time: each request is sent to the least-used server first
            r = await c.chat(MSG, max_tokens=2, seed=i)
            assert r.text == "1"
        assert bad.count == DEAD_AFTER  # then it is out
        assert good.count == 8 and c.usage.total().retries == DEAD_AFTER


async def test_requests_per_minute_limits_a_server():
    with FaultServer() as a, FaultServer() as b:
        c = fleet([{"base_url": a.base_url, "requests_per_minute": 2}, b.base_url])
        for i in range(6):
            await c.chat(MSG, max_tokens=2, seed=i)
        assert (a.count, b.count) == (2, 4)


async def test_a_rate_limited_server_makes_requests_wait():
    with FaultServer() as a:
        c = fleet(a.base_url, requests_per_minute=2)
        await c.chat(MSG, max_tokens=2, seed=0)
        await c.chat(MSG, max_tokens=2, seed=1)
        with pytest.raises(asyncio.TimeoutError):  # the third would pass the limit: it waits for the window
            await asyncio.wait_for(c.chat(MSG, max_tokens=2, seed=2), 0.5)
        assert a.count == 2


async def test_tokens_per_minute_counts_what_the_answers_used():
    # each answer reports 10 + 2 tokens; before sending, a request is counted at its estimate (prompt + max_tokens)
    estimate = estimate_prompt_tokens([("user", MSG[0]["content"])]) + 2
    assert estimate > 12
    limit = 2 * 12 + estimate  # room for a third request only if the first two count what they used
    with FaultServer() as a, FaultServer() as b:
        c = fleet([{"base_url": a.base_url, "tokens_per_minute": limit}, b.base_url])
        for i in range(6):
            await c.chat(MSG, max_tokens=2, seed=i)
        assert (a.count, b.count) == (3, 3)


async def test_all_servers_dead_is_a_connection_error_naming_them():
    urls = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    c = fleet(urls)
    with pytest.raises(LLMConnectionError) as err:
        await c.chat(MSG, max_tokens=2)
    assert all(u in str(err.value) for u in urls)
    assert c.usage.total().failures == 1


def test_identity_covers_the_fleet_and_bad_fleets_are_refused():
    single = get_client("openai:m", base_url="http://127.0.0.1:9/v1", cache=False)
    assert single.cache_namespace == "openai:m@http://127.0.0.1:9/v1"  # unchanged for one server
    two = get_client("openai:m", base_url=["http://127.0.0.1:9/v1", "http://127.0.0.1:8/v1"], cache=False)
    assert two.cache_namespace == "openai:m@http://127.0.0.1:8/v1,http://127.0.0.1:9/v1"
    with pytest.raises(ConfigError, match="twice"):
        get_client("openai:m", base_url=["http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1/"], cache=False)
    with pytest.raises(ConfigError, match="keys"):
        get_client("openai:m", base_url=[{"url": "http://127.0.0.1:9/v1"}], cache=False)
    with pytest.raises(ConfigError, match="requests_per_minute"):
        get_client("openai:m", base_url="http://127.0.0.1:9/v1", requests_per_minute=0, cache=False)
    with pytest.raises(ConfigError, match="empty"):
        get_client("openai:m", base_url=[], cache=False)

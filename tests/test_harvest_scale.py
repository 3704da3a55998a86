"""Harvest at scale: several SAEs in one forward pass, and the distributed harvest on a real local Ray cluster.
Both must give the stores one local harvest per SAE gives, value for value."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import sae_lens_autointerp as sai
from ray_cluster import ray_cluster  # noqa: F401
from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.harvest import jobs as jobs_mod
from sae_lens_autointerp.harvest.model import ModelAdapter

LAYERS = (2, 3, 4)
SETTINGS = dict(
    n_tokens=24 * 64,  # 24 sequences: 6 batches, 3 shards of 2 batches
    ctx_len=64,
    batch_size=4,
    example_len=16,
    top_k=8,
    n_stratified=10,
    n_random_windows=12,
    shard_batches=2,
    progress=False,
)


@pytest.fixture(scope="module")
def model():
    return sai.embedded.load_model()


@pytest.fixture(scope="module")
def saes():
    return {f"l{layer}": sai.embedded.load_sae(layer=layer) for layer in LAYERS}


@pytest.fixture(scope="module")
def corpus():
    return sai.embedded.load_corpus(max_docs=200)


@pytest.fixture(scope="module")
def alone(model, saes, corpus, tmp_path_factory):
    """The reference: each SAE harvested alone, in this process."""
    root = tmp_path_factory.mktemp("alone")
    return {
        name: sae.autointerp.harvest(model, corpus, store_dir=root / name, **SETTINGS) for name, sae in saes.items()
    }


def assert_same_store(store, ref) -> None:
    assert store.key == ref.key  # the same inputs, so the same content address
    assert store.n_tokens == ref.n_tokens and store.n_sequences == ref.n_sequences
    assert set(store.stats) == set(ref.stats)
    for name, tensor in ref.stats.items():
        assert torch.equal(store.stats[name], tensor), name
    assert np.array_equal(np.asarray(store.tokens), np.asarray(ref.tokens))


def test_many_saes_one_pass_equal_alone(model, saes, corpus, alone, tmp_path, monkeypatch):
    passes = []
    real = jobs_mod.capture_many
    monkeypatch.setattr(jobs_mod, "capture_many", lambda adapters, t: passes.append(len(adapters)) or real(adapters, t))
    stores = sai.harvest_many(saes, model, corpus, store_dirs={n: tmp_path / n for n in saes}, **SETTINGS)
    assert list(stores) == list(saes)
    assert passes == [len(saes)] * 6  # one forward pass per batch for all three SAEs
    for name in saes:
        assert_same_store(stores[name], alone[name])
    # Same key, same folder: harvesting one SAE alone afterwards finds its store finished.
    monkeypatch.setattr(ModelAdapter, "capture", lambda self, t: pytest.fail("recomputed"))
    monkeypatch.setattr(ModelAdapter, "check_width", lambda self: None)
    again = saes["l3"].autointerp.harvest(model, corpus, store_dir=tmp_path / "l3", **SETTINGS)
    assert again.path == stores["l3"].path


def test_capture_many_stops_after_the_deepest_hook(model, saes):
    adapters = [ModelAdapter(model, sae) for sae in saes.values()]
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    for adapter, act in zip(adapters, jobs_mod.capture_many(adapters, tokens)):
        assert torch.equal(act, adapter.capture(tokens))
    ran = []
    hook = model.blocks[max(LAYERS) + 1].register_forward_hook(lambda *a: ran.append(1))
    try:
        jobs_mod.capture_many(adapters, tokens)
    finally:
        hook.remove()
    assert not ran  # nothing after the deepest SAE's block ran


def test_bad_arguments_are_refused_before_work(model, saes, corpus):
    with pytest.raises(ConfigError, match="non-empty mapping"):
        sai.harvest_many({}, model, corpus)
    with pytest.raises(ConfigError, match="store_dirs names"):
        sai.harvest_many(saes, model, corpus, store_dirs={"nope": "x"})
    with pytest.raises(ConfigError, match="executor must be one of"):
        sai.harvest_many(saes, model, corpus, executor="spark")
    with pytest.raises(ConfigError, match="executor='ray'"):
        sai.harvest_many(saes, model, corpus, n_workers=2)
    with pytest.raises(ConfigError, match="shard_batches"):
        sai.harvest_many(saes, model, corpus, shard_batches=0)


def test_ray_harvest_equals_local(ray_cluster, model, saes, corpus, alone, tmp_path):  # noqa: F811
    two = {name: saes[name] for name in ("l2", "l4")}
    stores = sai.harvest_many(
        two, model, corpus, store_dirs={n: tmp_path / n for n in two}, executor="ray", n_workers=2, **SETTINGS
    )
    for name in two:
        assert stores[name].meta["ray"] == {"n_workers": 2, "n_shards": 3, "shards_redone": 0}
        assert_same_store(stores[name], alone[name])
        assert not (tmp_path / name / "shards").exists()  # shard checkpoints are gone once folded


def test_a_killed_worker_has_its_shard_redone(ray_cluster, model, saes, corpus, alone, tmp_path):  # noqa: F811
    import ray

    from sae_lens_autointerp.harvest.ray_harvest import RAY_NAMESPACE

    killed: list[str] = []

    def kill_one_when_running() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            names = [
                a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == RAY_NAMESPACE
            ]
            if len(names) >= 2:
                time.sleep(0.5)  # both are busy with a shard by now or soon
                ray.kill(ray.get_actor(sorted(names)[0], namespace=RAY_NAMESPACE), no_restart=True)
                killed.append(sorted(names)[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_when_running, daemon=True)
    killer.start()
    store = saes["l3"].autointerp.harvest(
        model, corpus, store_dir=tmp_path / "l3", executor="ray", n_workers=2, **SETTINGS
    )
    killer.join(timeout=5)
    assert killed
    assert store.meta["ray"]["shards_redone"] >= 1
    assert_same_store(store, alone["l3"])


def test_token_table_folding_point_does_not_change_a_bit(model, saes, corpus, tmp_path, monkeypatch):
    """The per-token sums are folded into the token table in bulk (once per _PENDING_PAIRS pairs, and before
    any read); folding after every batch (1) or after about every batch (10,000 pairs) gives the same store,
    bit for bit. shard_batches=4 over 6 batches: the last shard is folded by finish(), outside the harvest
    loop's inference mode."""
    from sae_lens_autointerp.harvest import stats as stats_mod

    settings = {**SETTINGS, "shard_batches": 4}
    ref = saes["l3"].autointerp.harvest(model, corpus, store_dir=tmp_path / "default", **settings)
    assert bool((ref.stats["tok_ids"] >= 0).any())  # the token table is not empty
    for pending in (1, 10_000):
        monkeypatch.setattr(stats_mod, "_PENDING_PAIRS", pending)
        store = saes["l3"].autointerp.harvest(model, corpus, store_dir=tmp_path / f"p{pending}", **settings)
        assert_same_store(store, ref)

"""The activation store under concurrency, crashes and corruption: two real processes harvesting one store,
a kill between the checkpoint's writes, a flipped byte, a changed weight."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.harvest.store import LatentStore

HARVEST = textwrap.dedent("""
    import json, sys
    import sae_lens_autointerp as sai
    from pydoc_data.topics import topics
    model, sae = sai.embedded.load_model(), sai.embedded.load_sae()
    texts = [topics[k] for k in sorted(topics)][:60]
    store = sae.autointerp.harvest(model, texts, n_tokens=40 * 128, ctx_len=128, batch_size=4,
                                   store_dir=sys.argv[1], checkpoint_every_s=0, progress=False)
    print(json.dumps(store.summary()))
""")


def _harvest_in(folder, *extra):
    return subprocess.Popen(
        [sys.executable, "-c", HARVEST, str(folder), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"HF_HUB_OFFLINE": "1", **_env()},
    )


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}


def test_two_processes_harvesting_one_store_do_not_corrupt_it(tmp_path):
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    first, second = _harvest_in(shared), _harvest_in(shared)
    outs = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, [o[1][-2000:] for o in outs]
    reference = _harvest_in(alone)
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-2000:]
    a, b = LatentStore(shared), LatentStore(alone)
    assert (shared / "tokens.bin").stat().st_size == 40 * 128 * 4  # not twice
    assert np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    for name in ("n_fire_tokens", "top_ids", "res_ids", "pool_ids"):
        assert torch.equal(a.stats[name], b.stats[name]), name
    assert json.loads(outs[0][0].splitlines()[-1]) == json.loads(outs[1][0].splitlines()[-1])


def test_a_kill_between_the_checkpoint_writes_does_not_double_count(bridge_model, embedded_sae, tmp_path, monkeypatch):
    """Stats written, meta.json not: the resume must not count those batches twice (mean L0 stays 32 for the
    TopK-32 SAE)."""
    from pydoc_data.topics import topics

    import sae_lens_autointerp.harvest.store as store_mod

    texts = [topics[k] for k in sorted(topics)][:60]
    real = store_mod.write_json_atomic
    calls = {"n": 0}

    def dies_on_the_third(path, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("FAKE: killed after the statistics, before meta.json")
        real(path, data)

    monkeypatch.setattr(store_mod, "write_json_atomic", dies_on_the_third)
    kwargs = dict(
        n_tokens=40 * 128, ctx_len=128, batch_size=4, store_dir=tmp_path, checkpoint_every_s=0, progress=False
    )
    with pytest.raises(KeyboardInterrupt):
        embedded_sae.autointerp.harvest(bridge_model, texts, **kwargs)
    monkeypatch.setattr(store_mod, "write_json_atomic", real)
    store = embedded_sae.autointerp.harvest(bridge_model, texts, **kwargs)
    fresh = embedded_sae.autointerp.harvest(bridge_model, texts, **{**kwargs, "store_dir": tmp_path / "fresh"})
    assert store.summary()["mean_l0"] == pytest.approx(32.0, abs=0.5)
    assert torch.equal(store.stats["n_fire_tokens"], fresh.stats["n_fire_tokens"])
    assert torch.equal(store.stats["top_vals"], fresh.stats["top_vals"])


def test_a_corrupt_store_is_refused_by_name(bridge_model, embedded_sae, tmp_path):
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)][:20]
    store = embedded_sae.autointerp.harvest(
        bridge_model, texts, n_tokens=10 * 128, ctx_len=128, store_dir=tmp_path, progress=False
    )
    tokens = tmp_path / "tokens.bin"
    data = bytearray(tokens.read_bytes())
    data[100] ^= 0xFF
    tokens.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=rf"store {tmp_path} is corrupt: tokens.bin does not match.*harvest"):
        LatentStore(store.path)
    tokens.write_bytes(bytes(data[:-4]))
    with pytest.raises(ConfigError, match="tokens.bin holds"):
        LatentStore(store.path)


def test_a_changed_weight_is_another_model(bridge_model):
    """The store key covers every parameter: a changed layer-2 weight must not reuse layer-0's store."""
    from sae_factories import make_sae
    from sae_lens_autointerp.harvest.model import ModelAdapter

    sae = make_sae(576, 8, seed=0)
    sae.cfg.metadata.hook_name = "blocks.3.hook_resid_post"
    adapter = ModelAdapter(bridge_model, sae)
    before = adapter.fingerprint()
    name, param = [(n, p) for n, p in bridge_model.named_parameters() if ".2." in n][0]
    with torch.no_grad():
        param.view(-1)[0] += 1.0
        try:
            after = adapter.fingerprint()
        finally:
            param.view(-1)[0] -= 1.0
    assert before["weights_blake2b"] != after["weights_blake2b"], name
    assert adapter.fingerprint() == before and before["tokenizer_sha256"]

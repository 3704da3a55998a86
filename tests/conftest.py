"""Shared fixtures: the real embedded SmolLM2 (as TransformerBridge), small real TransformerLens models,
and SAELens SAEs. Everything offline on CPU."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# nnsight mounts .save on every object of the process unless told not to (PYMOUNT), which breaks beartype
# (imported by SAEBench in the plugin tests of the same session); our code never needs the mount.
os.environ.setdefault("NNSIGHT_CONFIG", os.path.join(os.path.dirname(__file__), "nnsight_config.yaml"))

import pytest
import torch

from sae_factories import HOOK, make_hooked, make_sae  # noqa: F401


@pytest.fixture(scope="session")
def bridge_model():
    import sae_lens_autointerp as sai

    return sai.embedded.load_model()


@pytest.fixture(scope="session")
def smol_tokenizer():
    from transformers import AutoTokenizer

    import sae_lens_autointerp as sai

    return AutoTokenizer.from_pretrained(sai.embedded.model_dir())


@pytest.fixture(scope="session")
def hooked_model(smol_tokenizer):
    return make_hooked("HookedTransformer", smol_tokenizer)


@pytest.fixture(scope="session")
def bridge_sae(bridge_model):
    # Residual norms at layer 3 of SmolLM2 are large; scale so the SAE fires sparsely but often enough.
    sae = make_sae(576, 256, seed=1)
    with torch.no_grad():
        sae.W_enc.mul_(0.5)
    return sae


@pytest.fixture(scope="session")
def corpus_texts():
    """Python's own documentation topics (ship with CPython, PSF licence)."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)][:80]


@pytest.fixture(scope="session")
def planted(bridge_model):
    """A SAE whose latents fire exactly on month names, digits and "return" (sae_lens_autointerp.planted)."""
    from sae_lens_autointerp.planted import build_planted_sae

    return build_planted_sae(bridge_model)


@pytest.fixture(scope="session")
def planted_store(planted, bridge_model, tmp_path_factory):
    """Harvested once per session and shared by the planted-feature tests."""
    from sae_lens_autointerp.planted import planted_corpus

    return planted.sae.autointerp.harvest(
        bridge_model,
        planted_corpus(),
        n_tokens=20_000,
        ctx_len=64,
        store_dir=tmp_path_factory.mktemp("planted"),
        progress=False,
    )


@pytest.fixture(scope="session")
def embedded_sae():
    import sae_lens_autointerp as sai

    return sai.embedded.load_sae()


@pytest.fixture(scope="session")
def embedded_store(bridge_model, embedded_sae, tmp_path_factory):
    """The shipped SAE harvested on the embedded corpus (30k tokens), once per session."""
    import sae_lens_autointerp as sai

    return embedded_sae.autointerp.harvest(
        bridge_model,
        sai.embedded.load_corpus(),
        n_tokens=30_000,
        ctx_len=128,
        store_dir=tmp_path_factory.mktemp("embedded"),
        progress=False,
    )


@pytest.fixture(scope="session")
def repeats_store(bridge_model, embedded_sae, tmp_path_factory):
    """The shipped SAE on a token corpus with repeated passages (4 sequences tiled 6 times) and a short last
    sequence (40 of 64 tokens): what the sampler leaves out (repeated texts, windows with padding) happens."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    block = rng.integers(100, 5000, size=(4, 64))
    tokens = np.concatenate([np.tile(block.reshape(-1), 6), rng.integers(100, 5000, size=64 * 20 + 40)])
    return embedded_sae.autointerp.harvest(
        bridge_model,
        torch.from_numpy(tokens),
        n_tokens=len(tokens),
        ctx_len=64,
        example_len=16,
        n_stratified=60,
        store_dir=tmp_path_factory.mktemp("repeats"),
        progress=False,
    )

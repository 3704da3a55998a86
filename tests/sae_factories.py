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

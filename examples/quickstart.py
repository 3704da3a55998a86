"""Explain and score GPT-2 small residual-stream latents with any OpenAI-compatible endpoint.

    export OPENAI_API_KEY=...            # and OPENAI_BASE_URL for OpenRouter / vLLM / llama.cpp servers
    python examples/quickstart.py

Needs the Hugging Face hub (gpt2, gpt2-small-res-jb, NeelNanda/pile-10k) on first run; everything is
cached afterwards (activations under ~/.cache/sae-lens-autointerp, LLM answers in the response cache).
"""

import os

from sae_lens import SAE
from transformer_lens import HookedTransformer

import sae_lens_autointerp  # noqa: F401  (attaches explain / score / autointerp to every SAE)

LLM = os.environ.get("SAE_AUTOINTERP_LLM", "openai:gpt-4o-mini")

sae = SAE.from_pretrained("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
# gpt2-small-res-jb was trained on HookedTransformer's processed weights, so load the model that way.
model = HookedTransformer.from_pretrained("gpt2", **(sae.cfg.metadata.model_from_pretrained_kwargs or {}))

latents = [0, 5, 17]
explanations = sae.explain(
    model=model, dataset="NeelNanda/pile-10k", latents=latents, llm=LLM, harvest={"n_tokens": 500_000}
)
for latent, explanation in explanations.items():
    print(latent, explanation.text)

result = sae.score(
    model=model,
    dataset="NeelNanda/pile-10k",
    explanations=explanations,
    scorers=["detection", "fuzzing"],
    llm=LLM,
    harvest={"n_tokens": 500_000},
    budget_dollars=1.0,
    prices={"gpt-4o-mini": [0.15, 0.60]},
)
print(result.table[["latent", "scorer", "score", "low", "high", "n_examples", "n_failed"]])
print(result.summary())

"""The whole pipeline offline on CPU: embedded SmolLM2-135M, its shipped SAE, Python's docs, local LLM.

    python examples/offline.py        # a few minutes on 2 cores
"""

import sae_lens_autointerp as sai
from sae_lens_autointerp.sampling import SamplingConfig

model = sai.embedded.load_model()
sae = sai.embedded.load_sae()
corpus = sai.embedded.load_corpus()

store = sae.autointerp.harvest(model, corpus, n_tokens=30_000, ctx_len=128)
print(store.summary())

# Two latents that fire often enough to explain and test.
counts = store.stats["n_fire_examples"]
latents = [i for i in range(sae.cfg.d_sae) if 40 <= int(counts[i]) and float(store.frequency[i]) < 0.05][:2]
small = SamplingConfig(n_explain=20, n_test_pos=10, n_test_neg=10)

explanations = sae.explain(model=model, store=store, latents=latents, llm="local", sampling=small)
for latent, explanation in explanations.items():
    print(f"latent {latent}: {explanation.text or '(failed: ' + str(explanation.error) + ')'}")

# A 135M model sometimes fails to produce an explanation; failed ones are recorded, never scored.
usable = {k: v for k, v in explanations.items() if not v.failed}
if usable:
    result = sae.score(model=model, store=store, explanations=usable, scorers=["detection", "fuzzing"], llm="local",
                       sampling=small)
    print(result.table[["latent", "scorer", "score", "low", "high", "chance", "n_examples", "n_failed"]])

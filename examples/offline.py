"""The whole pipeline offline on CPU: embedded SmolLM2-135M, its shipped SAE, Python's docs, local LLM.

    python examples/offline.py        # a few minutes on 2 cores; writes autointerp-offline-site/index.html

Every score comes with its interval, its chance level and a control (another latent's explanation on the
same examples); the last lines say which scorers carry signal with this judge.
"""

import sae_lens_autointerp as sai
from sae_lens_autointerp.sampling import SamplingConfig

model = sai.embedded.load_model()
sae = sai.embedded.load_sae()
corpus = sai.embedded.load_corpus()

store = sae.autointerp.harvest(model, corpus, n_tokens=30_000, ctx_len=128)
print(store.summary())

# Three latents that fire often enough to explain and test (a control needs another latent's explanation).
counts = store.stats["n_fire_examples"]
latents = [i for i in range(sae.cfg.d_sae) if 40 <= int(counts[i]) and float(store.frequency[i]) < 0.05][:3]
small = SamplingConfig(n_explain=20, n_test_pos=10, n_test_neg=10)

explanations = sae.explain(model=model, store=store, latents=latents, llm="local", sampling=small)
for latent, explanation in explanations.items():
    print(f"latent {latent}: {explanation.text or '(failed: ' + str(explanation.error) + ')'}")

# A 135M model sometimes gives no usable explanation; failed ones are recorded with their reason, never scored.
usable = {k: v for k, v in explanations.items() if not v.failed}
if usable:
    result = sae.score(
        model=model, store=store, explanations=usable, scorers=["embedding", "detection"], llm="local", sampling=small
    )
    print(result.table[["latent", "scorer", "score", "low", "high", "chance", "control", "lift", "signal", "n_failed"]])
    print(result.summary()[["scorer", "n_scored", "mean", "low", "high", "control", "lift", "lift_low", "lift_high"]])
    for line in result.verdict():
        print(line)
    # The static site: an index (distributions, agreement, a sortable table) and a page per latent with its
    # coloured examples and the judge's answers; opens from disk. In a notebook: result.show(latent).
    print("site:", result.to_html("autointerp-offline-site"))

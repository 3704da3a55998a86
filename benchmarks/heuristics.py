"""How many latents of the embedded SAE the known heuristics flag, and the explainer calls that saves.

The shipped TopK SAE (SmolLM2-135M, ``blocks.3.hook_resid_post``, 2048 latents) harvested on 20k tokens of the
embedded corpus (``ctx_len=128``). ``heuristic_flags`` at thresholds 0.8 / 0.9 (the default) / 0.95; then, at
the default, the explainer calls ``heuristic_explanations=True`` saves: every latent the sampler does not skip
(dead, too rare, too dense) costs one explainer call, and a flagged one gets the ``top-tokens`` explanation
instead (the retries an LLM explainer may make are not counted, as in the run's own ``llm_calls_saved``).

Run:  python benchmarks/heuristics.py [--n-tokens 20000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-tokens", type=int, default=20_000)
    args = parser.parse_args()

    import sae_lens_autointerp as sai
    from sae_lens_autointerp.heuristics import DEFAULT_THRESHOLD, flag_summary, heuristic_flags
    from sae_lens_autointerp.sampling import SamplingConfig, sample_latent

    model, sae = sai.embedded.load_model(), sai.embedded.load_sae()
    with tempfile.TemporaryDirectory() as folder:
        store = sae.autointerp.harvest(
            model, sai.embedded.load_corpus(), n_tokens=args.n_tokens, ctx_len=128, store_dir=folder, progress=False
        )
        dead = int((store.stats["n_fire_examples"] == 0).sum())
        print(f"embedded SAE, {store.d_sae} latents, {args.n_tokens} tokens harvested; {dead} never fire")
        for threshold in (0.8, DEFAULT_THRESHOLD, 0.95):
            start = time.perf_counter()
            flags = heuristic_flags(store, threshold=threshold)
            took = time.perf_counter() - start
            counts = flag_summary(flags)
            print(
                f"threshold {threshold}: {counts['n_unigram']} unigram, {counts['n_positional']} positional "
                f"({took:.1f} s); largest positional share {flags['positional_r2'].max():.2f}"
            )
        flags = heuristic_flags(store)
        flagged = set(flags.index[flags["flag"].notna()].tolist())
        eligible = [
            latent for latent in range(store.d_sae) if sample_latent(store, latent, SamplingConfig()).skipped is None
        ]
        saved = len(flagged & set(eligible))
        print(
            f"explainer calls: {len(eligible)} latents sampled, {saved} of them flagged -> {len(eligible) - saved} "
            f"calls with heuristic_explanations=True, {saved} saved ({saved / len(eligible):.1%})"
        )


if __name__ == "__main__":
    main()

"""What do judges that never read the explanation score? Every number here should be the scorer's chance.

Harvests the demo's store (the embedded SAE on 60k tokens of the embedded corpus, ``ctx_len`` 128, cached) or
opens ``--store``, gives every eligible latent a content-free explanation, and scores it with each
explanation-blind judge of ``sae_lens_autointerp.blind`` through the real scorers. Printed per judge and
scorer: the run-level mean with its interval, the declared chance, whether the interval holds chance, and
the share of latents whose own interval lies above chance (at most 5% expected by design).

It also prints the structure of the sampled examples themselves: the share of test positives and negatives
rendered shorter than a full window, the AUC of "shorter = activating" (what a length-sensitive embedder or
LM could read), the peak's place in activating windows, and test windows that share a corpus token.

Run:  python benchmarks/blind_judges.py [--latent-step 4] [--judges constant,length,position,ramp,marks,chars]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SCORERS = ("detection", "fuzzing", "fuzzing-active", "simulation", "intruder")


def structure(store, renderer, latents, sampling) -> dict[str, float]:  # type: ignore[no-untyped-def]
    import numpy as np

    from sae_lens_autointerp.metrics import binary_metrics
    from sae_lens_autointerp.sampling import sample_latent

    w = store.settings.example_len
    short_pos = short_neg = n_pos = n_neg = overlapping = 0
    aucs, peaks = [], []
    for latent in latents:
        s = sample_latent(store, latent, sampling)
        pos, neg = renderer.render_many(s.test_pos), renderer.render_many(s.test_neg)
        short_pos += sum(len(r.tokens) < w for r in pos)
        short_neg += sum(len(r.tokens) < w for r in neg)
        n_pos, n_neg = n_pos + len(pos), n_neg + len(neg)
        peaks += [e.peak_index for e in s.test_pos]
        spans = sorted(e.span(store.settings.ctx_len) for e in s.test_pos)
        overlapping += sum(b[0] < a[1] for a, b in zip(spans, spans[1:]))
        lengths = [-len(r.text) for r in pos + neg]  # characters: what an embedder or LM sees of the length
        auc = binary_metrics([True] * len(pos) + [False] * len(neg), [True] * len(lengths), lengths).auc
        aucs.append(auc)
    above = float(np.mean([a.low > 0.5 for a in aucs]))
    hist = np.bincount(np.asarray(peaks, dtype=int), minlength=w)
    return {
        "positives shorter than a window": short_pos / max(n_pos, 1),
        "negatives shorter than a window": short_neg / max(n_neg, 1),
        "length AUC (mean)": float(np.mean([a.value for a in aucs])),
        "latents whose length-AUC interval is above 0.5": above,
        "peak at its most common index (share)": float(hist.max() / max(hist.sum(), 1)),
        "uniform share": 1 / w,
        "test positives sharing a token with another": overlapping / max(n_pos, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", help="an existing store folder (default: harvest the demo's store)")
    parser.add_argument("--n-tokens", type=int, default=60_000)
    parser.add_argument("--latent-step", type=int, default=4, help="every k-th eligible latent")
    parser.add_argument("--judges", default="constant,length,position,ramp,marks,chars")
    parser.add_argument("--scorers", default=",".join(SCORERS))
    args = parser.parse_args()

    import numpy as np

    import sae_lens_autointerp as sai
    from sae_lens_autointerp.blind import BlindJudge
    from sae_lens_autointerp.harvest import LatentStore
    from sae_lens_autointerp.sampling import SamplingConfig, sample_latent
    from sae_lens_autointerp.text import Renderer

    model, sae = sai.embedded.load_model(), sai.embedded.load_sae()
    if args.store:
        store = LatentStore(args.store)
    else:
        store = sae.autointerp.harvest(
            model, sai.embedded.load_corpus(), n_tokens=args.n_tokens, ctx_len=128, progress=False
        )
    sampling = SamplingConfig()
    eligible = [lat for lat in range(store.d_sae) if sample_latent(store, lat, sampling).skipped is None]
    latents = eligible[:: args.latent_step]
    renderer = Renderer(model.tokenizer)
    print(f"store {store.path}: {store.n_tokens} tokens, {len(eligible)} eligible latents, {len(latents)} used")
    print("\nthe examples' structure (default sampling):")
    for name, value in structure(store, renderer, latents, sampling).items():
        print(f"  {name}: {value:.3f}")
    pool = [renderer.text(w_) for w_ in store.random_windows()[:500]]
    ref_tokens = float(np.median([len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in pool]))
    ref_chars = float(np.median([len(t) for t in pool]))
    scorers = [s for s in args.scorers.split(",") if s]
    explanations = {lat: f"content-free explanation number {lat}" for lat in latents}
    print(
        f"\nexplanation-blind judges ({len(latents)} latents; length judges turn at {ref_tokens:.0f} tokens / "
        f"{ref_chars:.0f} characters; 'chars' reads a property of the words, judged by the control):"
    )
    print(f"  {'judge':<9} {'scorer':<15} {'mean':>7} {'95% interval':>18} {'chance':>7}  holds  above")
    for judge in [j for j in args.judges.split(",") if j]:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            result = sae.score(
                model,
                store=store,
                explanations=explanations,
                scorers=scorers,
                llm=BlindJudge(
                    judge, reference_length=ref_chars if judge == "chars" else ref_tokens, tokenizer=model.tokenizer
                ),
                out_dir=out,
                progress=False,
                controls=False,
            )
            table, summary = result.table, result.summary().set_index("scorer")
        for scorer in scorers:
            rows = table[table["scorer"] == scorer]
            row = summary.loc[scorer]
            chance = float(row["chance"])
            holds = row["low"] <= chance <= row["high"]
            above = float((rows["low"] > chance).mean())
            print(
                f"  {judge:<9} {scorer:<15} {row['mean']:>7.3f} [{row['low']:>7.3f}, {row['high']:>7.3f}] "
                f"{chance:>7.3f}  {'yes' if holds else 'NO ':<5}  {above:.1%}"
            )
        print(f"  ({judge}: {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()

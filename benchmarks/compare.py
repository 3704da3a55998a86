"""The papers' comparisons on the embedded stack, offline: the shipped SAE against its baselines, and the
similarity of the three embedded SAEs on neighbouring layers.

1. ``sai.compare``: the shipped SAE (SmolLM2-135M, ``blocks.3.hook_resid_post``, TopK k=32, 2048 latents)
   against neurons (the residual basis, both signs), top-k neurons (k = the SAE's L0), PCA and ICA (every
   component, fitted on the corpus), random directions (as wide as the SAE, its firing rate) and the
   random-init control (an SAE trained with the same recipe on a randomly initialised SmolLM2, harvested on
   that model). One protocol: the same harvest, sampling, explainer, scorers, judge, controls and seed, the
   same number of latents drawn uniformly among each basis's eligible latents. Scorers: ``embedding`` (no LLM
   judge) and ``detection`` with the embedded 135M judge, whose judge check says whether it can tell.
2. ``sai.similarity``: the SAEs at blocks 2, 3 and 4 matched pairwise (Hungarian algorithm) by decoder cosine
   (against its matched null: the same matching against random directions) and by activation correlation on
   shared tokens, each also against random pairs; then the matched latents'
   ``top-tokens`` explanations compared by embedding cosine against random pairs (Paulo et al. 2024 report
   adjacent residual layers as highly similar).

Run:  python benchmarks/compare.py [--n-latents 6] [--explainer default] [--scorers embedding,detection]
      python benchmarks/compare.py --part similarity        # only part 2 (no LLM, ~minutes)
Prints tables; the comparison's page is written to --out/compare.html, the heatmaps next to it.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def part_compare(args: argparse.Namespace) -> None:
    import sae_lens_autointerp as sai
    from sae_lens_autointerp.compare import BASELINES, baseline_saes, compare

    start = time.perf_counter()
    model, sae, corpus = sai.embedded.load_model(), sai.embedded.load_sae(), sai.embedded.load_corpus()
    saes = {"sae": sae, **baseline_saes(sae, model, corpus, BASELINES, n_fit_tokens=args.fit_tokens)}
    saes["random-init"] = sai.embedded.load_sae(control="random-init")
    models = {"random-init": sai.embedded.load_model(control="random-init")}
    print(f"built {len(saes) - 2} baselines and loaded the random-init control in {time.perf_counter() - start:.0f} s")
    comparison = compare(
        saes,
        model,
        corpus,
        n_latents=args.n_latents,
        models=models,
        harvest={"n_tokens": args.n_tokens, "ctx_len": 128, "batch_size": 16, "progress": False},
        sampling={"n_explain": 20, "n_test_pos": args.n_test, "n_test_neg": args.n_test},
        out_dir=args.out,
        seed=args.seed,
        llm="local",
        explainer=args.explainer,
        scorers=[s for s in args.scorers.split(",") if s],
        controls=1.0,
        progress=False,
    )
    print(
        f"\n== {args.n_latents} latents per basis, explainer {args.explainer!r}, scorers {args.scorers}, "
        f"{args.n_tokens} tokens harvested per basis, controls on every test example =="
    )
    print(comparison.text())
    print()
    for line in comparison.verdict():
        print(line)
    print(f"\npage: {comparison.write_html(Path(args.out) / 'compare.html')}")
    print(f"part 1 took {time.perf_counter() - start:.0f} s")


def part_similarity(args: argparse.Namespace) -> None:
    import importlib

    import pandas as pd

    import sae_lens_autointerp as sai

    similarity = importlib.import_module("sae_lens_autointerp.similarity")  # the module; sai.similarity is its function
    start = time.perf_counter()
    model, corpus = sai.embedded.load_model(), sai.embedded.load_corpus()
    names = ["blocks.2", "blocks.3", "blocks.4"]
    saes = {name: sai.embedded.load_sae(layer=int(name[-1])) for name in names}
    pairs = [("blocks.2", "blocks.3"), ("blocks.3", "blocks.4"), ("blocks.2", "blocks.4")]
    out = Path(args.out)

    def matrix(values: dict[tuple[str, str], float], diagonal: float) -> pd.DataFrame:
        frame = pd.DataFrame(float("nan"), index=names, columns=names)
        for (a, b), v in values.items():
            frame.loc[a, b] = frame.loc[b, a] = v
        for n in names:
            frame.loc[n, n] = diagonal
        return frame

    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 200):
        matchings = {}
        for method in ("decoder", "activations"):
            extra = {"model": model, "dataset": corpus, "n_tokens": args.sim_tokens} if method == "activations" else {}
            t = time.perf_counter()
            found = {
                p: similarity.match_latents(
                    saes[p[0]], saes[p[1]], method=method, seed=args.seed, progress=False, **extra
                )
                for p in pairs
            }
            matchings[method] = found
            matched = matrix({p: float(m.similarity.mean()) for p, m in found.items()}, 1.0)
            rand = matrix({p: float(m.baseline.mean()) for p, m in found.items()}, float("nan"))
            print(f"\n== latent similarity by {method} (matched pairs, mean) [{time.perf_counter() - t:.0f} s] ==")
            print(matched.to_string())
            if method == "decoder":  # the null of a maximising matching: the same matching against random directions
                null = matrix({p: m.null_mean for p, m in found.items()}, float("nan"))
                print(f"-- matched null (A against Gaussian random directions) --\n{null.to_string()}")
            else:
                print("-- no matched null for activations (match against a random SAE's activations for one) --")
            print(f"-- random pairs, same latents (not the null of a matching) --\n{rand.to_string()}")
            similarity.heatmap(matched).write_html(out / f"similarity-{method}.html", include_plotlyjs=True)
        # explanations of every latent that can be sampled, by the LLM-free top-tokens explainer
        explanations = {}
        for name, sae in saes.items():
            store = sae.autointerp.harvest(model, corpus, n_tokens=args.n_tokens, ctx_len=128, progress=False)
            explanations[name] = sae.autointerp.run(
                model,
                store=store,
                latents=list(range(sae.cfg.d_sae)),
                llm=None,
                explainer="top-tokens",
                scorers=(),
                out_dir=out / "explanations" / name,
                progress=False,
            )
        t = time.perf_counter()
        results = {
            p: similarity.explanation_similarity(
                matchings["decoder"][p], explanations[p[0]], explanations[p[1]], seed=args.seed
            )
            for p in pairs
        }
        print(f"\n== top-tokens explanation similarity of decoder-matched latents [{time.perf_counter() - t:.0f} s] ==")
        print(matrix({p: r.matched.value for p, r in results.items()}, 1.0).to_string())
        print(
            f"-- matched minus random pairs --\n{matrix({p: r.difference.value for p, r in results.items()}, float('nan'))}"
        )
        for (a, b), res in results.items():
            print(f"{a} vs {b}: {res}")
    print(f"part 2 took {time.perf_counter() - start:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["all", "compare", "similarity"], default="all")
    p.add_argument("--n-latents", type=int, default=6, help="latents drawn per basis")
    p.add_argument("--n-test", type=int, default=15, help="activating and non-activating test examples each")
    p.add_argument("--n-tokens", type=int, default=60_000, help="tokens harvested per basis")
    p.add_argument("--fit-tokens", type=int, default=50_000, help="tokens PCA / ICA / random directions fit on")
    p.add_argument("--sim-tokens", type=int, default=30_000, help="tokens for the activation correlations")
    p.add_argument("--explainer", default="default")
    p.add_argument("--scorers", default="embedding,detection")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="/tmp/autointerp-compare-bench")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if args.part in ("all", "compare"):
        part_compare(args)
    if args.part in ("all", "similarity"):
        part_similarity(args)


if __name__ == "__main__":
    main()

"""Wall time and tokens per latent of each scorer (and of the output-side explainers), on the embedded stack.

Stacks: ``planted`` (default; the planted SAE on ``hook_embed`` of the embedded SmolLM2, its true
explanations, the planted corpus) or ``embedded`` (the shipped SAE on blocks.3.hook_resid_post, the Python-docs
corpus, explanations from the no-LLM ``top-tokens`` explainer). Every scorer gets the same latents, samples and
explanations; each is called directly (no pipeline overhead) and timed per latent. Models are loaded by a
warm-up call that is reported apart ("load"). Tokens come from the run's usage tracker, per (stage, latent):
prompt tokens = tokens run through a model (embedder, LM, steered model), completion = tokens generated.
LLM scorers (detection, fuzzing, simulation, intruder) need ``--llm`` (e.g. ``local``).

Run:  python benchmarks/scorer_costs.py [--stack planted] [--scorers embedding,surprisal,intervention]
                                        [--explainers output] [--n-latents 3] [--n-test 50] [--llm local]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class UsageOnly:
    """Stands in for an LLM client when none is used: the local scorers only need its usage tracker."""

    name = "none"

    def __init__(self) -> None:
        from sae_lens_autointerp.llm import UsageTracker

        self.usage = UsageTracker()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stack", choices=("planted", "embedded"), default="planted")
    parser.add_argument("--scorers", default="embedding,surprisal,intervention")
    parser.add_argument("--explainers", default="output", help="output-side explainers to time too ('' for none)")
    parser.add_argument("--n-latents", type=int, default=3)
    parser.add_argument("--n-test", type=int, default=50, help="activating and non-activating test examples each")
    parser.add_argument("--n-tokens", type=int, default=60_000, help="harvest size for --stack embedded")
    parser.add_argument("--llm", default=None, help="LLM for LLM scorers / explainers (e.g. local)")
    args = parser.parse_args()

    import torch

    import sae_lens_autointerp as sai
    from sae_lens_autointerp.plugin import get_registry
    from sae_lens_autointerp.records import Context, Explanation
    from sae_lens_autointerp.sampling import SamplingConfig, sample_latent
    from sae_lens_autointerp.text import Renderer

    model = sai.embedded.load_model()
    sampling = SamplingConfig(n_explain=20, n_test_pos=args.n_test, n_test_neg=args.n_test)
    if args.stack == "planted":
        from sae_lens_autointerp.planted import build_planted_sae, planted_corpus

        planted = build_planted_sae(model)
        sae = planted.sae
        store = sae.autointerp.harvest(model, planted_corpus(), n_tokens=20_000, ctx_len=64, progress=False)
        latents = list(range(min(args.n_latents, sae.cfg.d_sae)))
        texts = {lat: planted.explanations[lat] for lat in latents}
    else:
        from sae_lens_autointerp.cli import pick_latents
        from sae_lens_autointerp.explainers import TopTokensExplainer

        sae = sai.embedded.load_sae()
        store = sae.autointerp.harvest(
            model, sai.embedded.load_corpus(), n_tokens=args.n_tokens, ctx_len=128, progress=False
        )
        latents = pick_latents(store, args.n_latents, min_examples=2 * args.n_test)
        texts = {}
    if args.llm:
        from sae_lens_autointerp.llm import UsageTracker, get_client

        client = get_client(args.llm, usage=UsageTracker(), cache=False)
    else:
        client = UsageOnly()
    ctx = Context(llm=client, renderer=Renderer(model.tokenizer), store=store, seed=0, sae=sae, model=model)
    samples = {lat: sample_latent(store, lat, sampling) for lat in latents}
    if not texts:
        tt = TopTokensExplainer()
        texts = {lat: asyncio.run(tt.explain(samples[lat], ctx)).text for lat in latents}
    explanations = {lat: Explanation(lat, texts[lat]) for lat in latents}

    rows = []
    jobs = [("scorers", s) for s in args.scorers.split(",") if s] + [
        ("explainers", e) for e in args.explainers.split(",") if e
    ]
    for kind, name in jobs:
        kwargs = {} if kind == "scorers" or args.llm else {"use_llm": False}
        obj = get_registry().create(kind, name, **kwargs)
        stage = name if kind == "scorers" else "explain"

        async def call(lat: int, obj=obj, kind=kind):  # type: ignore[no-untyped-def]
            if kind == "scorers":
                return await obj.score(samples[lat], explanations[lat], ctx)
            return await obj.explain(samples[lat], ctx)

        # Warm-up on a copy of the first latent's work, so loading models is reported apart.
        t0 = time.perf_counter()
        asyncio.run(call(latents[0]))
        load = time.perf_counter() - t0
        before = client.usage.by_latent()
        per_latent = []
        for lat in latents:
            t0, c0 = time.perf_counter(), time.process_time()
            out = asyncio.run(call(lat))
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            after = client.usage.by_latent()
            tot = after.get((stage, lat))
            prev = before.get((stage, lat))
            prompt = (tot.prompt_tokens if tot else 0) - (prev.prompt_tokens if prev else 0)
            completion = (tot.completion_tokens if tot else 0) - (prev.completion_tokens if prev else 0)
            before = after
            score = getattr(out, "score", None)
            shown = f"{score:.3f}" if isinstance(score, float) else repr(getattr(out, "text", ""))[:40]
            per_latent.append((lat, seconds, prompt, completion, shown, cpu))
        rows.append((name, load, per_latent))

    print(
        f"stack={args.stack}, latents {latents}, {args.n_test}+{args.n_test} test examples per latent, "
        f"torch threads {torch.get_num_threads()}, llm={args.llm}"
    )
    print(
        f"{'scorer':<16}{'load+1st s':>11}{'s/latent':>10}{'cpu s':>8}{'prompt tok':>12}{'gen tok':>9}   per latent (score)"
    )
    for name, load, per in rows:
        sec = statistics.mean(p[1] for p in per)
        cpu = statistics.mean(p[5] for p in per)
        prompt = statistics.mean(p[2] for p in per)
        completion = statistics.mean(p[3] for p in per)
        detail = ", ".join(f"{lat}: {s:.1f}s {shown}" for lat, s, _, _, shown, _ in per)
        print(f"{name:<16}{load:>11.1f}{sec:>10.1f}{cpu:>8.1f}{prompt:>12.0f}{completion:>9.0f}   {detail}")
    print(
        "s/latent = wall seconds, cpu s = process CPU seconds (all threads; on a shared machine wall time grows, CPU less)."
    )
    print(
        "prompt tok = tokens run through a model (embedder / scorer LM / steered subject model); gen tok = generated."
    )
    print("intervention: the clean continuations are generated once per scorer (paid in the warm-up) and reused.")


if __name__ == "__main__":
    main()

"""How often the plugin's selections agree with SAEBench 0.6.0's own ``gather_data``, and what a perfect
answer scores under each protocol, on the embedded model (offline, CPU).

    HF_HUB_OFFLINE=1 python plugins/sae-autointerp-saebench/benchmarks/agreement.py --n 40

For N latents drawn (seeded) from those that fired in a 40 x 128-token harvest (the tests' store):

* "saebench" vs SAEBench: the same dense activations (bit for bit), random / top / importance-weighted
  positions, explainer windows in order, scoring windows; all must agree.
* "saebench-clean" vs SAEBench: does the store's top-12 equal SAEBench's top-12 windows?
* random windows where the latent fires though SAEBench labels them negative;
* the score of a perfect answer (a FAKE LLM naming exactly the windows where the latent fires) through
  ``sae.score`` with each scorer, and SAEBench's accuracy formula applied to SAEBench's own windows.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from saebench_fake_llm import FakeClient  # noqa: E402
from saebench_peer import load_saebench, run_gather_data  # noqa: E402

import sae_lens_autointerp as sai  # noqa: E402
from sae_autointerp_saebench import SAEBENCH_SAMPLING, SAEBenchConfig, select_saebench  # noqa: E402
from sae_autointerp_saebench.dense import dense_latent_activations, saebench_tokens  # noqa: E402
from sae_autointerp_saebench.selection import torch_seed  # noqa: E402


def rows(windows):
    return [(b.tokens.tolist(), b.activations.astype(np.float64).tolist()) for b in windows]


def peer_rows(examples):
    return [(list(ex.toks), [float(a) for a in ex.acts]) for ex in examples]


def agrees(ours, peer) -> bool:
    if peer.generation is None or ours.skipped is not None:  # skipped: the windows drawn before the skip
        top = sorted(b.position for b in ours.scoring if b.kind == "top")
        return peer.generation is None and ours.skipped is not None and top == [] and len(peer.random) > 0
    kinds = {k: sorted(b.position for b in ours.generation + ours.scoring if b.kind == k) for k in ("top", "iw")}
    ours_scoring = sorted((t, a, b.label) for (t, a), b in zip(rows(ours.scoring), ours.scoring))
    peer_scoring = sorted((t, a, ex.is_active) for (t, a), ex in zip(peer_rows(peer.scoring), peer.scoring))
    return (
        [b.position for b in ours.scoring if b.kind == "random"] == peer.random
        and kinds["top"] == sorted(peer.top)
        and kinds["iw"] == sorted(peer.iw)
        and rows(ours.generation) == peer_rows(peer.generation)
        and ours_scoring == peer_scoring
    )


def perfect_scores(model, sae, store, latents, scorer, out_dir) -> list[float | None]:
    """Each latent's score when the FAKE LLM names exactly the windows where the latent fires."""
    explanations = {lat: f"latent {lat}" for lat in latents}
    common = dict(store=store, explanations=explanations, scorers=[scorer], progress=False)
    sampling = {"n_explain": 10, "n_test_pos": 4, "n_test_neg": 4, **SAEBENCH_SAMPLING}
    probe = sae.score(model, llm=FakeClient(lambda s, u: "None"), sampling=sampling, out_dir=out_dir / "p", **common)
    truth = {r["latent"]: [p["index"] for p in r["scores"][scorer]["predictions"] if p["fires"]] for r in probe.records}

    def answer(system: str, user: str) -> str:
        latent = int(re.search(r"fires on latent (\d+)\.", user).group(1))
        return ", ".join(map(str, truth[latent])) or "None"

    result = sae.score(model, llm=FakeClient(answer), sampling=sampling, out_dir=out_dir / "s", **common)
    return [r["scores"][scorer]["score"] for r in result.records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=40, help="latents to compare")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/saebench-agreement")
    args = parser.parse_args()

    model, sae = sai.embedded.load_model(), sai.embedded.load_sae()
    docs = sai.embedded.load_corpus(max_docs=40)
    store = sae.autointerp.harvest(model, docs, n_tokens=40 * 128, ctx_len=128, batch_size=8, progress=False)
    alive = [i for i in range(store.d_sae) if int(store.stats["n_fire_examples"][i]) > 0]
    latents = sorted(np.random.default_rng(args.seed).choice(alive, size=args.n, replace=False).tolist())
    saebench, cfg = load_saebench(), SAEBenchConfig()
    tokens, seq_of_row = saebench_tokens(store)
    ctx_len = store.settings.ctx_len

    n_agree, n_skipped, n_clean_top, firing, peer_perfect = 0, 0, 0, [], []
    for latent in latents:
        peer = run_gather_data(saebench, model, sae, tokens, latent, torch_seed(args.seed, latent), cfg.llm_batch_size)
        ours = select_saebench(store, model, sae, latent, args.seed, cfg)
        same_acts = torch.equal(peer.acts[..., 0], dense_latent_activations(store, model, sae, latent))
        n_agree += same_acts and agrees(ours, peer)
        n_skipped += ours.skipped is not None
        peer_top = {int(seq_of_row[r]) * ctx_len + c for r, c in peer.top}
        n_clean_top += {e.token_id for e in store.top_examples(latent)[:12]} == peer_top
        if ours.skipped is None:
            n_fire = sum(b.fires for b in ours.scoring if b.kind == "random")
            firing.append(n_fire)
            # SAEBench's own score_predictions, its windows, the perfect answer
            acts = {tuple(t): b.fires for (t, _), b in zip(rows(ours.scoring), ours.scoring)}
            truth = [i + 1 for i, ex in enumerate(peer.scoring) if acts[tuple(ex.toks)]]
            peer_perfect.append(saebench.AutoInterp.score_predictions(None, truth, peer.scoring))
    perfect = {
        s: perfect_scores(model, sae, store, latents, s, Path(args.out) / s) for s in ("saebench", "saebench-clean")
    }

    def mean(values):
        values = [v for v in values if v is not None]
        return f"{np.mean(values):.3f} over {len(values)}" if values else "n/a"

    print(f"latents: {len(latents)} (seed {args.seed}), {n_skipped} skipped by SAEBench's rule (both sides)")
    print(f"'saebench' selection == SAEBench gather_data: {n_agree}/{len(latents)}")
    print(f"'saebench-clean' top-12 == SAEBench top-12: {n_clean_top}/{len(latents)}")
    print(
        f"SAEBench random 'negatives' where the latent fires: {sum(f > 0 for f in firing)}/{len(firing)} latents, "
        f"{np.mean(firing):.2f} per latent"
    )
    print(f"perfect answer, SAEBench's score_predictions on its own windows: {mean(peer_perfect)}")
    for scorer, values in perfect.items():
        print(f"perfect answer, scorer {scorer!r}: {mean(values)}")


if __name__ == "__main__":
    main()

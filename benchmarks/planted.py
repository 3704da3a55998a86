"""How often does each scorer prefer the true explanation of a planted feature over a mismatched one?

Planted SAE (sae_lens_autointerp.planted): latents that fire exactly on month names, digits, and the token
"return" of the embedded SmolLM2. Each latent is scored once with its true explanation and once with another
latent's; a scorer "wins" on a latent when the true explanation scores higher.

Run:  python benchmarks/planted.py [--llm local] [--scorers detection,fuzzing,simulation] [--n-test 10]
      python benchmarks/planted.py --scorers embedding,surprisal     # the LLM-free scorers README quotes
Prints one JSON row per feature and scorer, then per scorer the wins and each feature's true score against the
range of the mismatched scores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llm", default="local")
    parser.add_argument("--scorers", default="detection,fuzzing,simulation")
    parser.add_argument("--n-test", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=1, help="repeat with this many sampling seeds")
    args = parser.parse_args()

    import sae_lens_autointerp as sai
    from sae_lens_autointerp.planted import build_planted_sae, planted_corpus
    from sae_lens_autointerp.sampling import SamplingConfig

    model = sai.embedded.load_model()
    planted = build_planted_sae(model)
    store = planted.sae.autointerp.harvest(model, planted_corpus(), n_tokens=20_000, ctx_len=64, progress=False)
    scorers = [s for s in args.scorers.split(",") if s]
    wins = {s: 0 for s in scorers}
    auc_wins = {s: 0 for s in scorers}
    trials = {s: 0 for s in scorers}
    rows = []
    start = time.perf_counter()
    for seed in range(args.seeds):
        sampling = SamplingConfig(n_explain=10, n_test_pos=args.n_test, n_test_neg=args.n_test, seed=seed)
        scores = {}
        for kind, expl in (("true", planted.explanations), ("mismatched", planted.mismatched())):
            with tempfile.TemporaryDirectory() as out:
                result = planted.sae.score(
                    model,
                    store=store,
                    explanations=expl,
                    scorers=scorers,
                    llm=args.llm,
                    sampling=sampling,
                    out_dir=out,
                    progress=False,
                    seed=seed,
                )
                for record in result.records:  # read while the run folder exists (records stream from it)
                    for name, entry in record["scores"].items():
                        auc = (entry.get("metrics") or {}).get("auc")
                        scores[(kind, record["latent"], name)] = (entry.get("score"), auc)
        for latent, name in enumerate(planted.names):
            for s in scorers:
                t, t_auc = scores[("true", latent, s)]
                m, m_auc = scores[("mismatched", latent, s)]
                won = _gt(t, m)
                wins[s] += won
                auc_wins[s] += _gt(t_auc, m_auc)
                trials[s] += 1
                rows.append(
                    {
                        "seed": seed,
                        "feature": name,
                        "scorer": s,
                        "true": t,
                        "mismatched": m,
                        "true_wins": won,
                        "true_auc": t_auc,
                        "mismatched_auc": m_auc,
                    }
                )
    for r in rows:
        print(json.dumps(r))
    print(
        f"\nLLM {args.llm}, {args.n_test}+{args.n_test} test examples per latent, {args.seeds} seed(s), "
        f"{time.perf_counter() - start:.0f} s"
    )
    for s in scorers:
        line = f"{s:>12}: true explanation wins on {wins[s]}/{trials[s]} latents (headline score)"
        if s in ("detection", "fuzzing"):
            line += f", {auc_wins[s]}/{trials[s]} by AUC of P('1')"
        print(line)
        # the numbers README quotes: each feature's true score against the mismatched ones' range
        mine = [r for r in rows if r["scorer"] == s]
        true = " / ".join(f"{r['feature']} {_fmt(r['true'])}" for r in mine)
        other = [r["mismatched"] for r in mine if r["mismatched"] is not None]
        print(f"{'':>14}true {true}; mismatched {_fmt(min(other, default=None))}-{_fmt(max(other, default=None))}")


def _fmt(x) -> str:  # type: ignore[no-untyped-def]
    return "n/a" if x is None else f"{x:.2f}"


def _gt(a, b) -> bool:  # type: ignore[no-untyped-def]
    import math

    return a is not None and b is not None and not math.isnan(a) and not math.isnan(b) and a > b


if __name__ == "__main__":
    main()

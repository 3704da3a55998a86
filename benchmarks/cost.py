"""LLM tokens and wall time per latent for explain + detection + fuzzing, against delphi's default prompts.

Like for like: both sides make the same judgments on the same examples. Ours: the default protocol (40
quantile-stratified explainer examples; detection on 50 activating + 50 non-activating examples; the
paper's fuzzing on the same 50 + 50, the negatives with random marks), run for real with the `local`
backend with controls and calibration off, every request recorded. Delphi: its default prompts
(eai-delphi's own prompt builders, imported from a throwaway install, never copied) for *exactly the same
texts* (the same marked excerpts our fuzzing sends), with 5 examples per prompt (its default). The script
prints both sides' judgment counts and refuses to compare when they differ. Both sides are counted with
the same tokenizer (SmolLM2's chat template) and the same rules: prompt tokens as sent; completion tokens =
tokens of the answer (ours: the explanation, 1 token per classification; delphi: the explanation plus a
list like [1,0,0,1,1] per prompt). A second run with our defaults (controls on 20% of the examples, one
calibration request per scorer) prints what those trust features cost on top.

Run:  python benchmarks/cost.py [--n-latents 3] [--examples-per-prompt 1] [--delphi PATH]
It installs eai-delphi with --no-deps into ~/.cache/sae-lens-autointerp/delphi on first use (needs PyPI).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Recorder:
    """Wraps a real client and records every request (messages) and answer length."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.usage = inner.usage
        self.calls: list[tuple[str, list[dict], str]] = []

    async def chat(self, messages, **kw):  # type: ignore[no-untyped-def]
        r = await self.inner.chat(messages, **kw)
        self.calls.append((kw.get("stage", ""), list(messages), r.text))
        return r

    async def classify(self, messages, choices=("0", "1"), **kw):  # type: ignore[no-untyped-def]
        r = await self.inner.classify(messages, choices, **kw)
        self.calls.append((kw.get("stage", ""), list(messages), "1"))  # one answer token at most
        return r

    async def aclose(self) -> None:
        await self.inner.aclose()


def load_delphi(path: Path):  # type: ignore[no-untyped-def]
    if not (path / "delphi").is_dir():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(path), "eai-delphi"], check=True
        )
    # Import only the prompt modules (plain strings and functions), not delphi's heavy package __init__s.
    import types

    for pkg in (
        "delphi",
        "delphi.explainers",
        "delphi.explainers.default",
        "delphi.scorers",
        "delphi.scorers.classifier",
        "delphi.scorers.classifier.prompts",
    ):
        mod = types.ModuleType(pkg)
        mod.__path__ = [str(path / pkg.replace(".", "/"))]
        sys.modules[pkg] = mod
    builder = importlib.import_module("delphi.explainers.default.prompt_builder")
    detection = importlib.import_module("delphi.scorers.classifier.prompts.detection_prompt")
    fuzz = importlib.import_module("delphi.scorers.classifier.prompts.fuzz_prompt")
    return builder, detection, fuzz


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-latents", type=int, default=3)
    parser.add_argument("--examples-per-prompt", type=int, default=1)
    parser.add_argument("--n-tokens", type=int, default=60_000)
    parser.add_argument("--delphi", default=str(Path.home() / ".cache/sae-lens-autointerp/delphi"))
    parser.add_argument("--no-defaults", action="store_true", help="skip the second run with controls + calibration")
    args = parser.parse_args()

    import numpy as np
    from transformers import AutoTokenizer

    import sae_lens_autointerp as sai
    from sae_lens_autointerp.cli import pick_latents
    from sae_lens_autointerp.llm import get_client
    from sae_lens_autointerp.sampling import SamplingConfig, sample_latent
    from sae_lens_autointerp.text import Renderer, active_mask, highlight

    builder, det, fuzz = load_delphi(Path(args.delphi))
    tok = AutoTokenizer.from_pretrained(sai.embedded.model_dir())

    def count(messages: list[dict]) -> int:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(tok(text, add_special_tokens=False)["input_ids"])

    def count_text(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    model = sai.embedded.load_model()
    sae = sai.embedded.load_sae()
    store = sae.autointerp.harvest(
        model, sai.embedded.load_corpus(), n_tokens=args.n_tokens, ctx_len=128, progress=False
    )
    latents = pick_latents(store, args.n_latents, min_examples=100)
    sampling = SamplingConfig()
    scorers = ["detection", "fuzzing"]

    def run_ours(controls: bool, calibrate: bool) -> tuple[Any, Recorder, float]:
        kw = {"examples_per_prompt": args.examples_per_prompt, "calibrate": calibrate}
        client = Recorder(get_client("local", cache=False))
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = sae.autointerp.run(
                model,
                store=store,
                latents=latents,
                llm=client,
                scorers=scorers,
                scorer_kwargs={s: kw for s in scorers},
                sampling=sampling,
                out_dir=out,
                progress=False,
                concurrency=1,
                controls=controls,
            )
            wall = time.perf_counter() - start
        asyncio.run(client.aclose())
        return result, client, wall

    def tally(calls: list[tuple[str, list[dict], str]], records: list[dict]) -> dict[str, int]:
        d = {"prompt": 0, "completion": 0, "requests": 0, "judgments": 0}
        for _stage, messages, answer in calls:
            d["prompt"] += count(messages)
            d["completion"] += count_text(answer)
            d["requests"] += 1
        # judgments = examples judged (main and control), from the records, whatever the answers looked like
        for r in records:
            for out in (r.get("scores") or {}).values():
                d["judgments"] += int(out.get("n_examples") or 0)
            for out in (r.get("controls") or {}).values():
                d["judgments"] += int(out.get("n_examples") or 0)
        return d

    result, client, wall = run_ours(controls=False, calibrate=False)
    ours = tally(client.calls, result.records)

    from sae_lens_autointerp.records import Context
    from sae_lens_autointerp.sampling import latent_rng
    from sae_lens_autointerp.scorers import DetectionScorer, FuzzingScorer

    renderer = Renderer(model.tokenizer)
    ctx = Context(llm=None, renderer=renderer, store=store)
    delphi = {"prompt": 0, "completion": 0, "requests": 0, "judgments": 0}
    rng = np.random.default_rng(0)
    for record in result.records:
        s = sample_latent(store, record["latent"], sampling)
        explanation = (record.get("explanation") or {}).get("text") or "an explanation"
        shown = "\n".join(highlight(r.tokens, active_mask(r, 0.3)) for r in map(renderer.render, s.explain))
        delphi["prompt"] += count(builder.build_prompt(shown))
        delphi["completion"] += count_text("[EXPLANATION]: " + explanation)
        delphi["requests"] += 1
        if (record.get("explanation") or {}).get("failed"):
            continue  # ours scores nothing for a failed explanation; so the comparison scores nothing either
        # The very texts our scorers send: detection's plain excerpts, fuzzing's marked ones (same seed).
        for module, scorer in ((det, DetectionScorer()), (fuzz, FuzzingScorer())):
            samples = [it.text for it in scorer.items(s, ctx, latent_rng(0, s.latent, scorer.name))]
            order = rng.permutation(len(samples))
            for i in range(0, len(samples), 5):
                batch = [samples[j] for j in order[i : i + 5]]
                examples = "\n".join(f"Example {k}: {t}" for k, t in enumerate(batch))
                delphi["prompt"] += count(module.prompt(examples=examples, explanation=explanation))
                delphi["completion"] += count_text("[" + ",".join("1" for _ in batch) + "]")
                delphi["requests"] += 1
                delphi["judgments"] += len(batch)

    n = len(result.records)
    failed = sum(bool((r.get("explanation") or {}).get("failed")) for r in result.records)
    print(
        f"{failed} of {n} explanations failed (the 135M model): their latents are explained, not scored, on both sides"
    )
    print(
        f"{n} latents {latents}, default sampling (40 explain; detection 50+50; fuzzing 50+50), "
        f"ours with examples_per_prompt={args.examples_per_prompt}; tokens counted with SmolLM2's chat template"
    )
    if ours["judgments"] != delphi["judgments"]:
        raise SystemExit(f"not like for like: ours made {ours['judgments']} judgments, delphi {delphi['judgments']}")
    for name, d in (("ours", ours), ("delphi", delphi)):
        total = d["prompt"] + d["completion"]
        print(
            f"{name:>7}: {d['prompt'] / n:9.0f} prompt + {d['completion'] / n:6.0f} completion tokens per latent "
            f"({total / n:9.0f} total, {d['requests'] / n:.0f} requests, {d['judgments'] / n:.0f} judgments)"
        )
    ratio = (ours["prompt"] + ours["completion"]) / (delphi["prompt"] + delphi["completion"])
    print(f"ratio ours / delphi, same judgments on the same texts: {ratio:.2f}x  (goal <= 0.5x)")
    print(f"wall time with the local backend: {wall / n:.1f} s per latent (explain + detection + fuzzing)")
    if not args.no_defaults:
        result2, client2, wall2 = run_ours(controls=True, calibrate=True)
        full = tally(client2.calls, result2.records)
        extra = (full["prompt"] + full["completion"]) / (ours["prompt"] + ours["completion"]) - 1
        print(
            f"with our defaults (controls on 20% of the examples + calibration): "
            f"{(full['prompt'] + full['completion']) / n:9.0f} tokens per latent ({full['judgments'] / n:.0f} "
            f"judgments): +{extra:.0%} for the control and the judge check; ratio to delphi "
            f"{(full['prompt'] + full['completion']) / (delphi['prompt'] + delphi['completion']):.2f}x; "
            f"{wall2 / n:.1f} s per latent"
        )


if __name__ == "__main__":
    main()

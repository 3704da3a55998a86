"""Judges that never read the explanation score chance on the embedded store, scorer by scorer.

The judges (``sae_lens_autointerp.blind``) are reference instruments, not LLMs: each answers from an
excerpt's structure only (its length in tokens, where its marks sit, how many runs of marks it has, a
position in the token list) or with a constant. Through the real scorers, on every other eligible latent of
the shipped SAE's store: the run-level interval holds the scorer's declared chance, and at most 5% of the
latents have their own interval above it. Before windows became fixed chunks, the constant simulation judge
scored r = 0.48 with every latent above chance, and a length judge 0.60 on detection (REVIEW.md, part 1).
"""

from __future__ import annotations

import numpy as np
import pytest

from sae_lens_autointerp.blind import BlindJudge
from sae_lens_autointerp.metrics import binary_metrics
from sae_lens_autointerp.sampling import SamplingConfig, sample_latent
from sae_lens_autointerp.text import Renderer

SCORERS = ["detection", "fuzzing", "fuzzing-active", "simulation", "intruder"]


@pytest.fixture(scope="module")
def latents(embedded_store):
    eligible = [
        lat for lat in range(embedded_store.d_sae) if not sample_latent(embedded_store, lat, SamplingConfig()).skipped
    ]
    assert len(eligible) > 200
    return eligible[::2]


def test_examples_carry_no_structural_cue(embedded_store, bridge_model, latents):
    """Every window renders as many tokens, activating or not, and the peak is not held at one index."""
    renderer = Renderer(bridge_model.tokenizer)
    w = embedded_store.settings.example_len
    peaks, aucs = [], []
    for latent in latents:
        s = sample_latent(embedded_store, latent, SamplingConfig())
        pos, neg = renderer.render_many(s.test_pos), renderer.render_many(s.test_neg)
        assert {len(r.tokens) for r in pos + neg} == {w}, latent
        peaks += [e.peak_index for e in s.test_pos]
        lengths = [-len(r.tokens) for r in pos + neg]
        aucs.append(binary_metrics([True] * len(pos) + [False] * len(neg), [True] * len(lengths), lengths).auc)
    defined = [a.value for a in aucs if np.isfinite(a.value)]  # (a latent with no negatives has no AUC)
    assert len(defined) > 0.9 * len(aucs) and set(defined) == {0.5}  # equal lengths: "shorter" is a coin
    share = np.bincount(peaks, minlength=w) / len(peaks)
    assert share.max() < 2.5 / w and (share > 0.4 / w).sum() >= w - 1, share  # spread over the window


def test_each_blind_judge_reads_its_cue(bridge_model):
    """A positive control: each judge answers from the cue it is named for, so a store that still carried the cue
    would fail the chance test below (the old peak-aligned windows did: REVIEW.md, part 1)."""
    import asyncio

    from sae_lens_autointerp.scorers.classification import DetectionScorer, FuzzingScorer
    from sae_lens_autointerp.scorers.simulation import SimulationScorer

    def p1(judge: BlindJudge, scorer: object, text: str) -> float:
        messages = scorer.messages("any explanation", [text])  # type: ignore[attr-defined]
        return asyncio.run(judge.classify(messages)).prob("1")

    def simulated(judge: BlindJudge, n: int) -> list[int]:
        messages = SimulationScorer().messages("any explanation", tuple(f"t{i}" for i in range(n)))
        return [int(v) for v in asyncio.run(judge.chat(messages)).text.strip("[]").split(", ")]

    tok = bridge_model.tokenizer
    detection, fuzzing = DetectionScorer(), FuzzingScorer()
    length = BlindJudge("length", reference_length=32, tokenizer=tok)
    full = " ".join(["word"] * 32)
    assert p1(length, detection, " ".join(["word"] * 24)) > 0.5 > p1(length, detection, full)
    assert p1(length, detection, " ".join(["word"] * 30)) < 0.5  # within re-tokenizing's noise
    position = BlindJudge("position")
    assert p1(position, fuzzing, "a b c d e f <<g>> h") > 0.5 > p1(position, fuzzing, "<<a>> b c d e f g h")
    marks = BlindJudge("marks")
    assert p1(marks, fuzzing, "a <<b c>> d e f") > 0.5 > p1(marks, fuzzing, "<<a>> b c <<d>> e <<f>>")
    assert simulated(BlindJudge("constant"), 32) == [10 if i == 24 else 0 for i in range(32)]  # the old peak index
    ramp = simulated(BlindJudge("ramp"), 32)
    assert ramp == sorted(ramp) and ramp[0] < ramp[-1]
    assert p1(BlindJudge("constant"), detection, full) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="tokenizer"):
        BlindJudge("length")


@pytest.mark.parametrize("strategy", ["constant", "length", "position", "ramp", "marks"])
def test_blind_judges_score_chance(embedded_store, embedded_sae, bridge_model, latents, strategy, tmp_path):
    judge = BlindJudge(strategy, reference_length=embedded_store.settings.example_len, tokenizer=bridge_model.tokenizer)
    result = embedded_sae.score(
        bridge_model,
        store=embedded_store,
        explanations={lat: f"content-free explanation number {lat}" for lat in latents},
        scorers=SCORERS,
        llm=judge,
        out_dir=tmp_path,
        progress=False,
        controls=False,
    )
    table, summary = result.table, result.summary().set_index("scorer")
    assert (table["n_failed"] == 0).all() and table["error"].isna().all()
    for scorer in SCORERS:
        row, rows = summary.loc[scorer], table[table["scorer"] == scorer]
        chance = float(row["chance"])
        assert len(rows) == len(latents)
        assert row["low"] <= chance <= row["high"], (strategy, scorer, row["mean"], row["low"], row["high"])
        above = float((rows["low"] > chance).mean())
        assert above <= 0.05, (strategy, scorer, above)

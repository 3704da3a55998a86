"""Explanation parsing is strict, and a retry can give a different answer (not the cached first one)."""

from __future__ import annotations

import pytest

from sae_lens_autointerp.explainers.llm_explainer import check_explanation
from sae_lens_autointerp.llm import ResponseCache
from sae_lens_autointerp.sampling import SamplingConfig
from scripted_llm import ScriptedClient

BAD = {
    "I'm sorry, but I cannot determine what the neuron detects.": "refusal",
    "I cannot help with that.": "refusal",
    "Explanation: Sorry, I don't know.": "refusal",
    "Explanation: <a short description, at most 15 words, of what the neuron detects>": "template",
    "The neuron detects a sequence of tokens marked <<like this>>.": "echo of the prompt",
    "Explanation: Find what the marked tokens and their contexts have in common.": "echo of the prompt",
    "1.": "list marker",
    "Explanation: - ": "list marker",
    "<<Check that every token matches>>": "only marked tokens",
    "Explanation: <<def>>": "only marked tokens",
    "": "empty",
    "Explanation:": "empty",
    "Sure! Here is the explanation you asked for.": "filler",
    "Explanation: " + "word " * 50: "too long",
    # what the demo once accepted: a small model's repetition loop
    "The neuron detects a single-line traceback of a single-line traceback of a single-line traceback of a": (
        "repetition loop"
    ),
    "Explanation: commas, commas": "one phrase restated",
    "Explanation: month names month names month names": "one phrase restated",
    "Explanation: the word and the word and the word": "one phrase restated",
    "Explanation: The neuron detects a change in the horizontal position of the view, which is a feature of the "
    "neural network. "
    "The neuron can detect changes in the horizontal position of the view, which": "repetition loop",
    "Explanation: names of months in dates, names of months in dates, names of months in dates": "restated",
    "Explanation: Python code, mostly digits in a list of digits in a list of digits in a list": "repetition loop",
}
GOOD = {
    "Explanation: names of months": "names of months",
    "Let me look.\nExplanation: the keyword 'return' in Python functions": "the keyword 'return' in Python functions",
    "Python keywords such as def and return": "Python keywords such as def and return",
    "Explanation: digits": "digits",
    # repeats that belong to a description are kept
    "Explanation: the token 'the' after the word 'of the'.": "the token 'the' after the word 'of the'.",
    "Explanation: numbers in dates and numbers in prices": "numbers in dates and numbers in prices",
    "Explanation: the end of the name of the file of the module": "the end of the name of the file of the module",
}


@pytest.mark.parametrize("answer,kind", BAD.items())
def test_unusable_answers_are_rejected_with_their_reason(answer, kind):
    parsed = check_explanation(answer)
    assert parsed.text is None and kind in parsed.reason, parsed


@pytest.mark.parametrize("answer,text", GOOD.items())
def test_usable_answers_are_kept(answer, text):
    parsed = check_explanation(answer)
    assert parsed.text == text
    assert parsed.how == ("labelled" if "Explanation:" in answer else "first-sentence")


def test_retry_is_a_different_request_and_both_answers_are_cached(bridge_model, planted, planted_store, tmp_path):
    """First answer: a refusal. The retry carries a reminder naming the problem, at temperature 0.7 with a seed,
    so it is not the cached first answer; it succeeds; both answers stay in the cache; a rerun costs nothing."""

    def answer(request):
        if request.stage != "explain":
            return "1"
        return "Explanation: names of months" if request.temperature > 0 else "I'm sorry, I cannot do that."

    cache = ResponseCache(tmp_path / "cache")
    client = ScriptedClient(answer, cache=cache)
    sampling = SamplingConfig(n_explain=8, n_test_pos=4, n_test_neg=4)
    explanations = planted.sae.explain(
        bridge_model,
        store=planted_store,
        latents=[0],
        llm=client,
        sampling=sampling,
        out_dir=tmp_path / "a",
        progress=False,
    )
    e = explanations[0]
    assert e.text == "names of months" and e.n_attempts == 2 and e.parse == "labelled" and not e.failed
    assert e.provider == {"plugin": "builtin", "distribution": "sae-lens-autointerp", "version": e.provider["version"]}
    first, retry = [r for r in client.requests if r.stage == "explain"]
    assert first.temperature == 0 and retry.temperature == pytest.approx(0.7) and retry.seed == 1
    assert "refusal" in retry.messages[-1][1] and retry.messages[-2][1] == "I'm sorry, I cannot do that."
    assert len(cache) == 2
    rerun = ScriptedClient(answer, cache=cache)
    again = planted.sae.explain(
        bridge_model,
        store=planted_store,
        latents=[0],
        llm=rerun,
        sampling=sampling,
        out_dir=tmp_path / "b",
        progress=False,
    )
    assert again[0].text == e.text and rerun.requests == []


def test_always_unusable_answers_fail_the_explanation_and_are_counted(bridge_model, planted, planted_store, tmp_path):
    client = ScriptedClient(lambda r: "1." if r.stage == "explain" else "1")
    sampling = SamplingConfig(n_explain=8, n_test_pos=4, n_test_neg=4)
    result = planted.sae.autointerp.run(
        bridge_model,
        store=planted_store,
        latents=[0, 1],
        llm=client,
        scorers=["detection"],
        sampling=sampling,
        out_dir=tmp_path,
        progress=False,
    )
    for record in result.records:
        e = record["explanation"]
        assert e["failed"] and e["n_attempts"] == 2 and e["error"].count("list marker") == 2
        assert (
            record["scores"]["detection"]["score"] is None
            and "explanation failed" in record["scores"]["detection"]["error"]
        )
    summary = result.summary().set_index("scorer").loc["detection"]
    assert summary["n_latents"] == 2 and summary["n_failed"] == 2 and summary["n_scored"] == 0

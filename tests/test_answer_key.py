"""Scorer logic against an answer key: a FAKE judge that knows the planted latents' truth and errs with
probability eps (tests/answer_key.py). Each scorer must recover about 1 - eps within its interval, with one
and with several examples per prompt; mismatched explanations must show no lift over the control; and the
judge check must pass for this judge."""

from __future__ import annotations

import math

import pytest

from answer_key import AnswerKey, AnswerKeyClient
from sae_lens_autointerp.metrics import balanced_accuracy
from sae_lens_autointerp.sampling import SamplingConfig

SAMPLING = SamplingConfig(n_explain=10, n_test_pos=30, n_test_neg=30)


@pytest.fixture(scope="module")
def key(planted, planted_store, bridge_model):
    return AnswerKey(planted, planted_store, bridge_model)


def _run(planted, store, model, key, tmp_path, scorers, eps, explanations=None, kwargs=None, controls=True):
    client = AnswerKeyClient(key, eps=eps)
    result = planted.sae.score(
        model,
        store=store,
        explanations=explanations or planted.explanations,
        scorers=scorers,
        llm=client,
        sampling=SAMPLING,
        scorer_kwargs=kwargs or {},
        out_dir=tmp_path,
        progress=False,
        controls=controls,
    )
    return result, client


def test_the_key_itself_is_right(key, planted, planted_store):
    """The answer key's truth agrees with the harvest: positives fire, negatives do not."""
    from sae_lens_autointerp.sampling import sample_latent

    for latent in range(3):
        s = sample_latent(planted_store, latent, SAMPLING)
        for e in s.test_pos:
            assert key.fires(latent, key.renderer.render(e).text.replace("\n", "\\n"))
        for e in s.test_neg:
            assert not key.fires(latent, key.renderer.render(e).text.replace("\n", "\\n"))


@pytest.mark.parametrize("eps", [0.0, 0.15])
@pytest.mark.parametrize("per_prompt", [1, 4])
def test_classification_scorers_recover_one_minus_eps(
    planted, planted_store, bridge_model, key, tmp_path, eps, per_prompt
):
    scorers = ["detection", "fuzzing", "fuzzing-active"]
    kwargs = {s: {"examples_per_prompt": per_prompt} for s in scorers}
    result, client = _run(planted, planted_store, bridge_model, key, tmp_path, scorers, eps, kwargs=kwargs)
    table = result.table
    assert len(table) == 9 and table["error"].isna().all() and (table["n_failed"] == 0).all()
    for row in table.itertuples():
        assert row.metric == "balanced_accuracy" and row.chance == 0.5
        if eps == 0:
            assert row.score == 1.0, row
        assert row.low <= row.score <= row.high and row.high - row.low > 0.02  # 60 examples: never zero width
    for scorer in scorers:  # pooled over the 3 latents (180 judgments), at 99.9% so the check is not a coin toss
        preds = [p for r in result.records for p in r["scores"][scorer]["predictions"]]
        pos, neg = [p for p in preds if p["label"]], [p for p in preds if not p["label"]]
        est = balanced_accuracy(
            sum(p["prediction"] for p in pos),
            len(pos),
            sum(not p["prediction"] for p in neg),
            len(neg),
            confidence=0.999,
        )
        assert est.low <= 1 - eps <= est.high, (scorer, est)
        if per_prompt == 1:
            assert row.auc == pytest.approx(row.score, abs=0.15)  # graded probabilities: the AUC exists
        else:
            assert math.isnan(row.auc)  # one-hot list answers: no AUC, said in the notes
    if per_prompt == 1:
        # calibration: the content-free excerpt gets P("1") = 0.5, so the calibrated decision equals the raw one
        assert (table["calibrated"] - table["score"]).abs().max() < 1e-9
        sources = {p["prob_source"] for r in result.records for p in r["scores"]["detection"]["predictions"]}
        assert sources == {"exact"}
    else:
        notes = result.records[0]["scores"]["detection"]["metrics"]["notes"]
        assert "no graded probabilities" in notes
    # every scorer has a control on a fifth of the examples, below the true score; with a perfect judge
    # each latent's lift interval excludes 0 (with eps > 0 and 12 control examples a latent may not: the
    # run-level check below pools them; planted months and digits share windows, so a control of 12 can score
    # 0.6 and a lift can be as small as 0.1)
    assert table["control"].notna().all() and (table["lift"] > (0.2 if eps == 0 else 0.0)).all()
    assert table["lift_method"].str.startswith("paired: ").all()  # the control judged a subset of the score's
    if eps == 0:
        assert table["signal"].all()
    summary = result.summary().set_index("scorer")
    assert summary["judge_ok"].all(), summary["judge_check"].tolist()
    assert (summary["n_scored"] == 3).all() and (summary["n_failed"] == 0).all()


def test_mismatched_explanations_show_no_lift(planted, planted_store, bridge_model, key, tmp_path):
    """Every latent judged with another latent's explanation: the score is no better than the control (the
    lift's interval does not lie above 0) and the judge check says this judge cannot tell (with these
    explanations). The interval may lie below 0: every given explanation is some latent's true one, so a
    latent's control can draw its own true explanation and beat the mismatched one."""
    result, _ = _run(
        planted, planted_store, bridge_model, key, tmp_path, ["detection"], 0.0, explanations=planted.mismatched()
    )
    summary = result.summary().set_index("scorer").loc["detection"]
    assert summary["lift_low"] <= 0, summary
    assert summary["judge_ok"] is False or summary["judge_ok"] == False  # noqa: E712 (numpy bool)
    assert "cannot tell" in summary["judge_check"] and "docs/llm.md" in summary["judge_check"]


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_intruder_recovers_one_minus_eps(planted, planted_store, bridge_model, key, tmp_path, eps):
    result, _ = _run(
        planted,
        planted_store,
        bridge_model,
        key,
        tmp_path,
        ["intruder"],
        eps,
        kwargs={"intruder": {"n_prompts": 7, "n_examples": 5}},
    )
    table = result.table
    for row in table.itertuples():
        assert row.metric == "accuracy" and row.chance == pytest.approx(0.2)
        assert row.low <= 1 - eps <= row.high, row
    assert table["control"].isna().all()  # intruder reads no explanation: no control


@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_simulation_correlates_with_the_truth(planted, planted_store, bridge_model, key, tmp_path, eps):
    result, _ = _run(
        planted,
        planted_store,
        bridge_model,
        key,
        tmp_path,
        ["simulation"],
        eps,
        # the interval counts excerpts, not tokens (this judge errs per excerpt): 10 + 10 excerpts pin a perfect
        # judge's r, while at eps 0.3 it takes all 30 + 30 for every latent's interval to clear 0
        kwargs={"simulation": {"n_pos": 10, "n_neg": 10} if eps == 0 else {"n_pos": 30, "n_neg": 30}},
    )
    table = result.table
    for row in table.itertuples():
        assert row.metric == "pearson" and row.chance == 0.0 and row.n_failed == 0
        if eps == 0:
            assert row.score > 0.95 and row.low > 0.9, row
        else:  # 30% of the excerpts missed or given a false spike: clearly worse, clearly above chance
            assert 0.2 < row.score < 0.95 and row.low > 0, row
    assert table["lift"].notna().all()
    if eps == 0:
        assert (table["lift"] > 0.5).all()


def test_controls_per_scorer_and_off(planted, planted_store, bridge_model, key, tmp_path):
    from sae_lens_autointerp.errors import ConfigError

    result, client = _run(
        planted,
        planted_store,
        bridge_model,
        key,
        tmp_path / "a",
        ["detection", "fuzzing"],
        0.0,
        controls={"detection": 1.0},
    )
    for r in result.records:
        assert r["controls"]["detection"]["n_examples"] == r["scores"]["detection"]["n_examples"] == 60
        assert r["controls"]["fuzzing"]["n_examples"] == 12  # the default fifth: 6 + 6
        assert r["controls"]["detection"]["explanation_from"] != r["latent"]
    assert {r.stage for r in client.requests} == {"detection", "fuzzing", "detection:control", "fuzzing:control"}
    off, client = _run(planted, planted_store, bridge_model, key, tmp_path / "b", ["detection"], 0.0, controls=False)
    assert all(r["controls"] == {} for r in off.records) and off.table["control"].isna().all()
    assert off.verdict() == [
        "detection: not checked: no control was scored (controls are off, or no other latent "
        "of the run had an explanation)."
    ]
    assert off.summary()["judge_ok"].isna().all()
    with pytest.raises(ConfigError, match="controls names scorers this run does not use"):
        _run(planted, planted_store, bridge_model, key, tmp_path / "c", ["detection"], 0.0, controls={"fuzing": 1.0})
    with pytest.raises(ConfigError, match="fraction between 0 and 1"):
        _run(planted, planted_store, bridge_model, key, tmp_path / "d", ["detection"], 0.0, controls=1.5)

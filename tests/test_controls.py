"""The arithmetic of controls.py, on numbers worked out by hand: the pooled mean, the lift (unpaired and
paired, per headline metric), the control's choice and subset, the answers the judge check counts, and
the judge check's rules (the 95% identical-answers boundary, an interval reaching 0, chance as reference)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from sae_lens_autointerp.controls import (
    IDENTICAL_LIMIT,
    OTHER,
    answer_counts,
    answers_of,
    choose_control,
    control_sample,
    judge_check,
    judge_sentence,
    lift,
    lifts_per_latent,
    mean_lift,
    paired_lift,
    pooled_mean,
    scored_examples,
)
from sae_lens_autointerp.metrics import Estimate, balanced_accuracy, mover_difference, mover_sum
from sae_lens_autointerp.sampling import LatentSample

Z = 1.959963984540054
NAN = float("nan")


# ------------------------------------------------------------------------------------------ pooled mean


def test_pooled_mean_is_t_on_the_spread_when_latents_differ():
    # values 0.1, 0.2, 0.3: S = 0.1, t(0.975, 2) = 4.302653; the latents' own errors are small (se 0.01)
    lifts = [Estimate(v, v - Z * 0.01, v + Z * 0.01) for v in (0.1, 0.2, 0.3)]
    est = pooled_mean(lifts)
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert (est.value, est.low, est.high) == pytest.approx((0.2, 0.2 - half, 0.2 + half), abs=1e-6)


def test_pooled_mean_never_collapses_when_latents_agree():
    # four latents with the same value: no spread, so the floor of their own errors: z * sqrt(mean(se^2) / n)
    lifts = [Estimate(0.5, 0.5 - Z * se, 0.5 + Z * se) for se in (0.05, 0.05, 0.1, 0.1)]
    est = pooled_mean(lifts)
    half = Z * math.sqrt((0.05**2 * 2 + 0.1**2 * 2) / 4 / 4)
    assert (est.value, est.low, est.high) == pytest.approx((0.5, 0.5 - half, 0.5 + half))
    # perfect AUCs on every latent (their intervals reach below 1): a mean interval of positive width
    perfect = pooled_mean([Estimate(1.0, 0.79, 1.0)] * 3)
    assert perfect.value == 1.0 and perfect.high > 1.0 > perfect.low > 0.8


def test_pooled_mean_edge_cases():
    assert all(math.isnan(v) for v in (pooled_mean([]).value, pooled_mean([]).low))
    one = pooled_mean([Estimate(0.7, 0.6, 0.8)])  # one latent: its own interval
    assert (one.value, one.low, one.high) == pytest.approx((0.7, 0.6, 0.8))
    no_interval = pooled_mean([Estimate(0.7, NAN, NAN)])
    assert no_interval.value == 0.7 and math.isnan(no_interval.low)
    # latents without an interval add only to the spread (their own error counts 0 in the floor)
    mixed = pooled_mean([Estimate(0.4, NAN, NAN), Estimate(0.6, 0.6 - Z * 0.2, 0.6 + Z * 0.2)])
    floor = Z * math.sqrt(0.2**2 / 2 / 2)
    spread = 12.706205 * math.sqrt(0.02 / 2)  # t(0.975, 1), S^2 = 0.02
    assert mixed.high - 0.5 == pytest.approx(max(floor, spread), rel=1e-5)


def test_mean_lift_is_z_on_the_larger_of_spread_and_own_errors():
    # lifts 0.1, 0.2, 0.3 with small own errors: S = 0.1 wins, z (not t: under "the judge ignores the
    # explanation" there is no spread between latents to estimate)
    est = mean_lift([Estimate(v, v - Z * 0.01, v + Z * 0.01) for v in (0.1, 0.2, 0.3)])
    assert (est.low, est.high) == pytest.approx((0.2 - Z * 0.1 / math.sqrt(3), 0.2 + Z * 0.1 / math.sqrt(3)))
    # equal lifts: their own errors, each from the wider side of its (asymmetric) interval
    est = mean_lift([Estimate(0.3, 0.3 - Z * 0.1, 0.3 + Z * 0.05)] * 4)
    assert (est.low, est.high) == pytest.approx((0.3 - Z * 0.1 / 2, 0.3 + Z * 0.1 / 2))
    assert (mean_lift([Estimate(0.3, 0.1, 0.4)]).low, mean_lift([]).value) == (
        pytest.approx(0.1),
        pytest.approx(NAN, nan_ok=True),
    )


# ------------------------------------------------------------------------------------------------ lift


def test_unpaired_lift_is_mover_of_the_two_intervals():
    est = lift(0.8, 0.7, 0.9, 0.5, 0.4, 0.65)
    assert est is not None
    # low: 0.3 - sqrt(0.1^2 + 0.15^2); high: 0.3 + sqrt(0.1^2 + 0.1^2)
    assert (est.value, est.low, est.high) == pytest.approx((0.3, 0.3 - math.sqrt(0.0325), 0.3 + math.sqrt(0.02)))
    assert lift(None, 0.1, 0.2, 0.5, 0.4, 0.6) is None and lift(0.5, 0.4, 0.6, float("nan"), 0, 1) is None
    no_bounds = lift(0.8, None, 0.9, 0.5, 0.4, 0.6)
    assert no_bounds is not None and no_bounds.value == pytest.approx(0.3) and math.isnan(no_bounds.low)


def test_mover_difference_by_hand():
    a, b = Estimate(0.8, 0.7, 0.85), Estimate(0.5, 0.35, 0.6)
    assert mover_difference(a, b, 0.0) == mover_sum([a, b], [1.0, -1.0])
    # rho = 0.5: low = 0.3 - sqrt(0.1^2 + 0.1^2 - 2*0.5*0.1*0.1); high = 0.3 + sqrt(0.05^2 + 0.15^2 - 0.05*0.15)
    est = mover_difference(a, b, 0.5)
    assert est.low == pytest.approx(0.3 - 0.1) and est.high == pytest.approx(0.3 + math.sqrt(0.0175))
    # perfectly correlated, equal widths: no uncertainty left in the difference on that side
    assert mover_difference(Estimate(0.5, 0.4, 0.6), Estimate(0.3, 0.2, 0.4), 1.0).low == pytest.approx(0.2)
    assert math.isnan(mover_difference(Estimate(0.5, NAN, 0.6), b, 0.5).low)


def binary_entry(truth: list[bool], said: list[bool | None], ids: list[int]) -> dict:
    preds = [{"token_id": i, "label": t, "prediction": s} for i, t, s in zip(ids, truth, said)]
    pos = [s for t, s in zip(truth, said) if t and s is not None]
    neg = [s for t, s in zip(truth, said) if not t and s is not None]
    ba = balanced_accuracy(sum(pos), len(pos), sum(not s for s in neg), len(neg))
    return {"score": ba.value, "low": ba.low, "high": ba.high, "metric": "balanced_accuracy", "predictions": preds}


def test_balanced_accuracy_lift_uses_the_shared_examples():
    """6 + 6 examples judged under both explanations. Right / wrong per example:
    positives main 1 1 1 1 0 0, control 1 1 0 0 0 0; negatives main 1 1 1 1 1 0, control 1 1 1 0 0 0.
    Per class, cov(right_main, right_ctl) over the 6 shared examples (ddof 1): positives
    sum((s - 2/3)(c - 1/3)) = 2/3, less Newcombe's 1/2: 1/6, / 5 = 1/30; negatives sum((s - 5/6)(c - 1/2)) = 1/2,
    less 1/2: 0. Cov(BA_main, BA_ctl) = 1/4 * (1/30 * 6 / 36) and the variances 1/4 * sum(var / 6)."""
    truth = [True] * 6 + [False] * 6
    main = binary_entry(truth, [True] * 4 + [False] * 2 + [False] * 5 + [True], list(range(12)))
    ctl = binary_entry(truth, [True] * 2 + [False] * 4 + [False] * 3 + [True] * 3, list(range(12)))
    est = paired_lift(main, ctl)
    assert est is not None and est.method.startswith("paired: 12 shared examples")
    var = [
        np.var(v, ddof=1) / 6 for v in ([1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0])
    ]
    rho = (1 / 30 * 6 / 36) / math.sqrt((var[0] + var[1]) * (var[2] + var[3]))
    a, b = (Estimate(e["score"], e["low"], e["high"]) for e in (main, ctl))
    want = mover_difference(a, b, rho)
    assert (est.value, est.low, est.high) == pytest.approx((want.value, want.low, want.high))
    assert est.value == pytest.approx(main["score"] - ctl["score"])  # the lift is always score - control
    unpaired = lift(main["score"], main["low"], main["high"], ctl["score"], ctl["low"], ctl["high"])
    assert unpaired is not None and est.high - est.low < unpaired.high - unpaired.low


def test_lift_pairs_only_the_examples_both_judged():
    truth = [True] * 5 + [False] * 5
    main = binary_entry(truth, [True] * 4 + [False] + [False] * 4 + [True], list(range(10)))
    # the control judged other examples (ids 100+): nothing to pair, the unpaired MOVER, and it says so
    other = binary_entry(truth, [True] * 3 + [False] * 2 + [False] * 3 + [True] * 2, list(range(100, 110)))
    est = paired_lift(main, other)
    want = lift(main["score"], main["low"], main["high"], other["score"], other["low"], other["high"])
    assert est is not None and want is not None and est.method.startswith("mover (unpaired")
    assert (est.value, est.low, est.high) == pytest.approx((want.value, want.low, want.high))
    # a failed answer (None) is left out of the pairing; the same example with another label is not the same
    ctl = binary_entry(truth, [True, None, True, False, False, False, True, False, True, False], list(range(10)))
    assert paired_lift(main, ctl).method.startswith("paired: 9 shared")  # type: ignore[union-attr]


def test_lift_falls_back_and_says_why():
    est = paired_lift(
        {"score": 0.7, "low": 0.6, "high": 0.8, "metric": "custom"}, {"score": 0.5, "low": 0.4, "high": 0.6}
    )
    assert est is not None and est.method == "mover (unpaired: no paired form for 'custom')"
    assert (est.value, est.low, est.high) == pytest.approx((0.2, 0.2 - math.sqrt(0.02), 0.2 + math.sqrt(0.02)))
    assert paired_lift({"score": 0.7, "metric": "auc"}, {"score": None}) is None
    missing = paired_lift(
        {"score": 0.7, "low": None, "high": 0.8, "metric": "auc"}, {"score": 0.5, "low": 0.4, "high": 0.6}
    )
    assert missing is not None and math.isnan(missing.low) and missing.method.startswith("no interval")
    # the headline passed in wins over the entry's (record_rows passes what _headline read for old records)
    old = paired_lift({"score": 0.7}, {"score": 0.5, "low": 0.4, "high": 0.6}, "pearson", 0.6, 0.8)
    assert old is not None and old.method == "mover (unpaired: the predictions cannot be paired)"
    assert (old.low, old.high) == pytest.approx((0.2 - math.sqrt(0.02), 0.2 + math.sqrt(0.02)))


def test_auc_lift_pairs_by_placement_values():
    """Placements (a positive: the share of negatives below it; a negative: the share of positives above it):
    main positives 0.9, 0.8, 0.3 against negatives 0.5, 0.1, 0.2 -> 1, 1, 2/3; negatives 2/3, 1, 1. Control
    positives 0.6, 0.2, 0.4 against 0.5, 0.3, 0.1 -> 1, 1/3, 2/3; negatives 1/3, 2/3, 1."""
    ids = [(1, True), (2, True), (3, True), (4, False), (5, False), (6, False)]

    def entry(values: list[float], est: Estimate) -> dict:
        preds = [{"token_id": i, "label": t, "similarity": v} for (i, t), v in zip(ids, values)]
        return {"score": est.value, "low": est.low, "high": est.high, "metric": "auc", "predictions": preds}

    main = entry([0.9, 0.8, 0.3, 0.5, 0.1, 0.2], Estimate(8 / 9, 0.5, 1.0))
    ctl = entry([0.6, 0.2, 0.4, 0.5, 0.3, 0.1], Estimate(6 / 9, 0.3, 0.9))
    est = paired_lift(main, ctl)
    m10, m01, c10, c01 = [1, 1, 2 / 3], [2 / 3, 1, 1], [1, 1 / 3, 2 / 3], [1 / 3, 2 / 3, 1]
    var_m = np.var(m10, ddof=1) / 3 + np.var(m01, ddof=1) / 3
    var_c = np.var(c10, ddof=1) / 3 + np.var(c01, ddof=1) / 3
    cov = np.cov(m10, c10)[0, 1] * 3 / 9 + np.cov(m01, c01)[0, 1] * 3 / 9
    want = mover_difference(Estimate(8 / 9, 0.5, 1.0), Estimate(6 / 9, 0.3, 0.9), cov / math.sqrt(var_m * var_c))
    assert est is not None and "DeLong" in est.method
    assert (est.value, est.low, est.high) == pytest.approx((want.value, want.low, want.high))


def test_intervention_lift_is_a_paired_t_over_prompts():
    main = [{"prompt": p, "diff": d} for p, d in zip("abcd", (1.0, 2.0, 3.0, 4.0))]
    ctl = [{"prompt": p, "diff": d} for p, d in zip("abcd", (0.5, 1.5, 2.0, 4.0))]
    # per prompt 0.5, 0.5, 1.0, 0.0: mean 0.5, sd 0.408248, t(0.975, 3) = 3.182446
    est = paired_lift(
        {"score": 2.5, "low": 0.4, "high": 4.6, "metric": "mean_diff", "predictions": main},
        {"score": 2.0, "low": 0.0, "high": 4.0, "predictions": ctl},
    )
    half = 3.182446 * 0.408248 / 2
    assert est is not None and est.method == "paired t over 4 prompts"
    assert (est.value, est.low, est.high) == pytest.approx((0.5, 0.5 - half, 0.5 + half), abs=1e-5)
    # different prompts: not paired
    moved = [dict(p, prompt="x" + p["prompt"]) for p in ctl]
    est = paired_lift(
        {"score": 2.5, "low": 0.4, "high": 4.6, "metric": "mean_diff", "predictions": main},
        {"score": 2.0, "low": 0.0, "high": 4.0, "predictions": moved},
    )
    assert est is not None and est.method.startswith("mover (unpaired")


def test_simulation_lift_pairs_the_shared_excerpts():
    rng = np.random.default_rng(0)
    acts = rng.random((8, 6)) * (np.arange(8) < 4)[:, None]
    main = (acts + rng.normal(0, 0.2, acts.shape)).round(1)
    ctl = (acts + rng.normal(0, 0.6, acts.shape)).round(1)
    labels = [i < 4 for i in range(8)]

    def entry(pred: np.ndarray, rows: list[int], est: Estimate) -> dict:
        preds = [
            {"token_id": i, "label": labels[i], "predicted": pred[i].tolist(), "actual": acts[i].tolist()} for i in rows
        ]
        return {"score": est.value, "low": est.low, "high": est.high, "metric": "pearson", "predictions": preds}

    from sae_lens_autointerp.metrics import excerpt_correlation

    a = excerpt_correlation(list(main), list(acts), labels)
    b = excerpt_correlation(list(ctl), list(acts), labels)
    est = paired_lift(entry(main, list(range(8)), a), entry(ctl, list(range(8)), b))
    assert est is not None and est.method.startswith("paired: 8 shared excerpts")
    assert est.value == pytest.approx(a.value - b.value) and est.low < est.value < est.high


# ------------------------------------------------------------------------------- control choice, subset


def test_choose_control_never_the_latent_itself_nor_its_text():
    pool = {0: "dogs", 1: "dogs", 2: "", 3: "cats", 4: "numbers"}
    chosen = {choose_control(0, pool, seed) for seed in range(200)}
    assert chosen == {3, 4}  # not 0 (itself), not 1 (the same text), not 2 (no text)
    assert choose_control(0, pool, 5) == choose_control(0, pool, 5)  # seeded
    assert choose_control(0, {0: "dogs", 1: "dogs"}, 0) is None
    assert choose_control(9, {0: "a", 1: "b"}, 0) in (0, 1)  # a latent without an explanation of its own


def example(token_id: int) -> SimpleNamespace:
    return SimpleNamespace(token_id=token_id)


def test_control_sample_takes_a_fraction_of_what_the_score_judged():
    sample = LatentSample(
        latent=3, test_pos=tuple(example(i) for i in range(50)), test_neg=tuple(example(100 + i) for i in range(50))
    )
    sub = control_sample(sample, 0.2, seed=0)
    assert len(sub.test_pos) == len(sub.test_neg) == 10  # ceil(0.2 * 50) of each class
    assert [e.token_id for e in sub.test_pos] == sorted(e.token_id for e in sub.test_pos)  # original order
    assert control_sample(sample, 0.2, seed=0) == sub and control_sample(sample, 0.2, seed=1) != sub
    # the score judged 10 + 10 of them (simulation subsamples): the control takes ceil(0.2 * 50) = 10 of each
    # class from those, so all of them: the lift is paired on every example, and the control has an interval
    scored = set(range(0, 50, 5)) | set(range(100, 150, 5))
    sub = control_sample(sample, 0.2, 0, scored)
    assert {e.token_id for e in sub.test} == scored
    some = control_sample(sample, 0.1, 0, scored)  # ceil(0.1 * 50) = 5 of the 10 judged, per class
    assert len(some.test_pos) == len(some.test_neg) == 5 and {e.token_id for e in some.test} <= scored
    only_pos = control_sample(sample, 0.1, 0, set(range(10)))  # fuzzing-active judges positives only
    assert len(only_pos.test_pos) == 5 and only_pos.test_neg == ()
    assert control_sample(LatentSample(latent=1, test_pos=(example(1),)), 0.2, 0).test_pos == (example(1),)


def test_scored_examples_reads_the_predictions():
    entry = {"predictions": [{"token_id": 4, "label": True}, {"token_id": 9, "label": False}]}
    assert scored_examples(entry) == {4, 9}
    assert scored_examples({"predictions": [{"prompt": "p", "diff": 0.1}]}) is None  # intervention: no examples
    assert scored_examples(None) is None and scored_examples({"error": "crashed"}) is None


# --------------------------------------------------------------------------------- answers, judge check


def test_answers_of_every_scorer():
    binary = {"predictions": [{"prediction": True}, {"prediction": None}, {"prediction": False}]}
    assert answers_of(binary) == [True, None, False]
    assert answers_of({"predictions": [{"answer": 3, "intruder": 2}, {"answer": None}]}) == [3, None]
    simulation = {"predictions": [{"predicted": [0.0, 6.6, 0.2]}, {"predicted": None}, {"predicted": [0, 7, 0]}]}
    assert answers_of(simulation) == [(0, 7, 0), None, (0, 7, 0)]  # the integers the judge writes
    local = {"predictions": [{"similarity": 0.123449}, {"reduction": -0.00001}, {"diff": float("nan")}]}
    assert answers_of(local) == [0.1234, 0.0, None]


def test_answer_counts_keep_what_repeats_and_stay_small():
    assert answer_counts({"predictions": [{"prediction": p} for p in (True, True, False, None)]}) == {
        "true": 2,
        "false": 1,
    }
    assert answer_counts({"predictions": [{"answer": a} for a in (1, 1, 3)]}) == {"1": 2, "3": 1}
    same = {"predictions": [{"predicted": [0, 0, 9]}] * 18 + [{"predicted": [1, 2, 3]}, {"predicted": [3, 2, 1]}]}
    counts = answer_counts(same)
    assert sorted(counts.values()) == [2, 18] and counts[OTHER] == 2  # vectors given once: lumped together
    spread = {"predictions": [{"similarity": 0.01 * i} for i in range(100)]}
    assert answer_counts(spread) == {OTHER: 100}
    many = {"predictions": [{"diff": float(i % 7)} for i in range(70)]}
    kept = answer_counts(many)
    assert len(kept) == 5 and kept[OTHER] == 30  # the 4 most common values, the rest lumped


def lifts(values: list[float], half: float = 0.05) -> list[Estimate]:
    return [Estimate(v, v - half, v + half) for v in values]


def test_judge_check_identical_answers_boundary():
    good = lifts([0.3, 0.35, 0.4])
    at_limit = judge_check("detection", good, answer_counts={"true": 95, "false": 5})
    assert IDENTICAL_LIMIT == 0.95 and at_limit.can_tell is False and "95%" in at_limit.reason
    below = judge_check("detection", good, answer_counts={"true": 94, "false": 6})
    assert below.can_tell is True and below.identical_answers == pytest.approx(0.94)
    # the simulation judge that writes the same vector for every excerpt (counts from answer_counts)
    blind = {"predictions": [{"predicted": [0] * 24 + [9] + [0] * 7}] * 20}
    check = judge_check("simulation", good, answer_counts=answer_counts(blind))
    assert check.can_tell is False and check.identical_answers == 1.0
    assert "cannot tell right explanations from wrong ones" in judge_sentence(check)
    # lumped answers never count as "the same answer"
    assert judge_check("embedding", good, answer_counts={OTHER: 100}).identical_answers == pytest.approx(0.01)


def test_judge_check_interval_reaching_zero_and_no_controls():
    assert judge_check("detection", lifts([0.3, 0.35, 0.4])).can_tell is True
    reaching = judge_check("detection", lifts([-0.1, 0.05, 0.2]))
    assert reaching.can_tell is False and "no signal" in judge_sentence(reaching)
    assert judge_check("detection", lifts([-0.3, -0.35, -0.4])).can_tell is False
    none = judge_check("detection", [])
    assert none.can_tell is None and "no control was scored" in none.reason
    no_interval = judge_check("detection", [Estimate(0.3, NAN, NAN)])
    assert no_interval.can_tell is None and "has no interval" in no_interval.reason


def test_judge_check_of_a_scorer_without_control_compares_with_chance():
    rows = [{"score": s, "low": s - 0.2, "high": s + 0.2, "chance": 0.2, "controlled": False} for s in (0.6, 0.7, 0.8)]
    est = lifts_per_latent(rows, "chance")
    assert [e.value for e in est] == pytest.approx([0.4, 0.5, 0.6]) and est[0].low == pytest.approx(0.2)
    check = judge_check("intruder", est, answer_counts={"1": 3, "2": 5, "4": 4}, reference="chance")
    assert check.can_tell is True and "above chance" in check.reason and check.n_controls == 0
    assert check.to_dict()["lift"] is None  # the summary's lift columns stay the lift over a control
    blind = judge_check("intruder", est, answer_counts={"3": 30}, reference="chance")
    assert blind.can_tell is False and "cannot tell one excerpt from another" in judge_sentence(blind)
    chance_level = judge_check(
        "intruder", lifts_per_latent([dict(r, score=0.2) for r in rows], "chance"), reference="chance"
    )
    assert chance_level.can_tell is False and "no better than chance" in judge_sentence(chance_level)


def test_lifts_per_latent_prefer_the_paired_lift_of_the_row():
    row = {"score": 0.8, "low": 0.7, "high": 0.9, "control": 0.5, "control_low": 0.4, "control_high": 0.6}
    paired = dict(row, lift=0.3, lift_low=0.22, lift_high=0.38)
    assert lifts_per_latent([paired]) == [Estimate(0.3, 0.22, 0.38)]
    assert lifts_per_latent([dict(row, lift=float("nan"))]) == [lift(0.8, 0.7, 0.9, 0.5, 0.4, 0.6)]
    assert lifts_per_latent([dict(row, control=None)]) == []


def test_summary_and_judge_check_from_records():
    """Through results: the table's lift is the paired one, simulation's identical vectors make the judge
    check fail, and intruder (no control) is checked against chance."""
    from sae_lens_autointerp.results import ScoreResult

    def record(latent: int) -> dict:
        truth = [True] * 6 + [False] * 6
        main = binary_entry(truth, [True] * 5 + [False] + [False] * 5 + [True], [100 * latent + i for i in range(12)])
        ctl = binary_entry(
            truth, [True] * 3 + [False] * 3 + [False] * 3 + [True] * 3, [100 * latent + i for i in range(12)]
        )
        vector = [0] * 8 + [9] + [0] * 3
        simulation = {
            "score": 0.4,
            "low": 0.1,
            "high": 0.6,
            "metric": "pearson",
            "chance": 0.0,
            "needs_explanation": True,
            "predictions": [
                {"token_id": i, "label": i < 5, "predicted": vector, "actual": [0.0] * 12} for i in range(10)
            ],
        }
        intruder = {
            "score": 0.9,
            "low": 0.6,
            "high": 1.0,
            "metric": "accuracy",
            "chance": 0.2,
            "needs_explanation": False,
            "predictions": [{"intruder": 2, "answer": 2 if i else 3} for i in range(10)],
        }
        return {
            "run_key": "k",
            "latent": latent,
            "explanation": {"text": f"e{latent}"},
            "scores": {"detection": dict(main, needs_explanation=True), "simulation": simulation, "intruder": intruder},
            "controls": {"detection": ctl, "simulation": {"score": 0.35, "low": 0.0, "high": 0.6}},
        }

    result = ScoreResult(records=[record(i) for i in range(4)], run_key="k")
    table = result.table.set_index(["scorer", "latent"])
    row = table.loc[("detection", 0)]
    main, ctl = record(0)["scores"]["detection"], record(0)["controls"]["detection"]
    want = paired_lift(main, ctl)
    assert want is not None and (row["lift"], row["lift_low"], row["lift_high"]) == pytest.approx(
        (want.value, want.low, want.high)
    )
    summary = result.summary().set_index("scorer")
    assert summary.loc["simulation", "judge_ok"] == False  # noqa: E712 (numpy bool)
    assert summary.loc["simulation", "identical_answers"] == 1.0
    assert summary.loc["intruder", "judge_ok"] == True  # noqa: E712
    assert "above chance" in summary.loc["intruder", "judge_check"] and pd.isna(summary.loc["intruder", "lift"])
    assert summary.loc["intruder", "identical_answers"] == pytest.approx(0.9)
    # the judge check's mean lift pools the table's paired lifts
    lifts_ = [Estimate(*table.loc[("detection", i), ["lift", "lift_low", "lift_high"]].astype(float)) for i in range(4)]
    assert summary.loc["detection", "lift_low"] == pytest.approx(mean_lift(lifts_).low)

"""Metrics on constructed predictions whose answers are known by hand."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from sae_lens_autointerp.metrics import (
    METRICS,
    BinaryMetrics,
    Estimate,
    aggregate,
    aggregate_table,
    binary_metrics,
    correlation,
    wilson,
)

POS4_NEG10 = [True] * 4 + [False] * 10


def nan(x: float) -> bool:
    return isinstance(x, float) and math.isnan(x)


def assert_contains(m: BinaryMetrics) -> None:
    for name in METRICS:
        e: Estimate = getattr(m, name)
        if not nan(e.value):
            assert e.low - 1e-12 <= e.value <= e.high + 1e-12, (name, e)
            assert 0.0 <= e.low and e.high <= 1.0, (name, e)


def test_perfect():
    labels = [True] * 5 + [False] * 7
    m = binary_metrics(labels, labels, [0.9] * 5 + [0.1] * 7)
    for name in METRICS:
        assert getattr(m, name).value == 1.0, name
    assert (m.n, m.n_answered, m.n_failed, m.n_pos, m.n_neg, m.coverage, m.n_auc) == (12, 12, 0, 5, 7, 1.0, 12)
    assert m.notes == ()
    # 5 + 7 examples cannot prove perfection: the interval reaches well below 1 (Wilson per class)
    assert m.balanced_accuracy.value == m.balanced_accuracy.high == 1.0 and m.balanced_accuracy.low < 0.8
    assert m.auc.value == m.auc.high == 1.0 and 0.5 < m.auc.low < 0.8, m.auc  # nor perfect separation
    assert_contains(m)


def test_constant_judge_interval_does_not_collapse():
    """A judge answering "1" to all 20 examples: balanced accuracy 0.5 with an interval as wide as 10 + 10
    examples allow (a percentile bootstrap gives [0.5, 0.5] here, which reads as certainty)."""
    from sae_lens_autointerp.metrics import wilson

    labels = [True] * 10 + [False] * 10
    m = binary_metrics(labels, [True] * 20)
    ba = m.balanced_accuracy
    assert ba.value == 0.5
    assert ba.low < 0.4 and ba.high > 0.6, ba
    # MOVER: the lower end moves by half the distance recall can fall (10/10 -> its Wilson lower bound),
    # the upper end by half the distance specificity can rise (0/10 -> its Wilson upper bound)
    assert ba.low == pytest.approx(0.5 - 0.5 * (1 - wilson(10, 10).low))
    assert ba.high == pytest.approx(0.5 + 0.5 * wilson(0, 10).high)
    # more examples, narrower interval
    big = binary_metrics([True] * 200 + [False] * 200, [True] * 400).balanced_accuracy
    assert big.value == 0.5 and big.high - big.low < (ba.high - ba.low) / 2


def test_balanced_accuracy_interval_covers_at_nominal_rate():
    """Simulated judges with known recall / specificity: the 95% interval holds the truth >= 93% of the time."""
    from sae_lens_autointerp.metrics import balanced_accuracy

    rng = np.random.default_rng(0)
    for recall, spec, n in ((0.9, 0.6, 25), (0.99, 0.5, 50), (0.7, 0.7, 10)):
        truth = (recall + spec) / 2
        hits = 0
        for _ in range(2000):
            est = balanced_accuracy(int(rng.binomial(n, recall)), n, int(rng.binomial(n, spec)), n)
            hits += est.low <= truth <= est.high
        assert hits / 2000 >= 0.93, (recall, spec, n, hits / 2000)


def test_all_wrong_and_inverted_probabilities():
    labels = [True] * 5 + [False] * 7
    m = binary_metrics(labels, [not v for v in labels], [0.1] * 5 + [0.9] * 7)
    for name in ("balanced_accuracy", "accuracy", "precision", "recall", "f1", "specificity", "auc"):
        assert getattr(m, name).value == 0.0, name
    # perfectly inverted on 5 + 7 examples: the AUC is 0, and its interval still reaches well above 0
    # (DeLong's was [0, 0] here: a certainty that 12 examples cannot give)
    assert m.auc.value == m.auc.low == 0.0 and 0.2 < m.auc.high < 0.5, m.auc
    assert_contains(m)


def test_always_no_on_4_positives_10_negatives():
    m = binary_metrics(POS4_NEG10, [False] * 14)
    assert m.accuracy.value == pytest.approx(10 / 14) == pytest.approx(0.714, abs=1e-3)
    assert m.accuracy.value == pytest.approx(m.chance["accuracy"])  # majority-class answer = chance accuracy
    assert m.balanced_accuracy.value == 0.5 == m.chance["balanced_accuracy"]
    assert (m.recall.value, m.specificity.value, m.f1.value) == (0.0, 1.0, 0.0)  # F1 a real 0: no positive found
    assert nan(m.precision.value) and any(n.startswith("precision:") for n in m.notes)
    p = 4 / 14
    assert m.chance["precision"] == pytest.approx(p)
    assert m.chance["f1"] == pytest.approx(2 * p * 0.5 / (p + 0.5)) == pytest.approx(2 * p / (1 + 2 * p))
    assert nan(m.auc.value) and any("no probabilities" in n for n in m.notes)
    assert_contains(m)


def test_all_failed():
    m = binary_metrics(POS4_NEG10, [None] * 14, [0.5] * 14)
    for name in METRICS:
        assert all(nan(v) for v in (getattr(m, name).low, getattr(m, name).value, getattr(m, name).high)), name
    assert (m.n, m.n_answered, m.n_failed, m.n_pos, m.n_neg, m.coverage, m.n_auc) == (14, 0, 14, 0, 0, 0.0, 0)
    assert any("all 14 predictions failed" in n for n in m.notes)
    assert nan(m.chance["accuracy"]) and m.chance["balanced_accuracy"] == 0.5
    row = m.to_dict()
    json.dumps(row, allow_nan=False)  # NaN -> None, JSON-safe
    assert row["balanced_accuracy"] is None and row["n_failed"] == 14 and "failed" in row["notes"]


def test_some_failed_are_excluded_and_counted():
    labels = [True, True, False, False, True]
    m = binary_metrics(labels, [True, None, False, True, None], [0.9, 0.8, 0.2, float("nan"), None])
    assert (m.n, m.n_answered, m.n_failed, m.n_pos, m.n_neg) == (5, 3, 2, 1, 2)
    assert m.coverage == pytest.approx(0.6) and m.accuracy.value == pytest.approx(2 / 3)
    assert m.n_auc == 2 and m.auc.value == 1.0  # failed rows and missing / NaN probabilities are left out
    assert any("2 of 5 predictions failed" in n for n in m.notes)


def test_one_class_only():
    m = binary_metrics([True] * 6, [True] * 4 + [False] * 2, [0.9] * 6)
    assert nan(m.balanced_accuracy.value) and nan(m.specificity.value) and nan(m.auc.value)
    assert any(n.startswith("specificity, balanced_accuracy:") for n in m.notes)
    assert any(n.startswith("auc:") for n in m.notes)
    assert m.recall.value == pytest.approx(4 / 6) and m.precision.value == 1.0
    assert m.f1.value == pytest.approx(0.8)  # 2*4 / (2*4 + 0 + 2)
    assert m.chance["accuracy"] == 1.0
    assert_contains(m)
    neg = binary_metrics([False] * 3, [False] * 3)
    assert nan(neg.recall.value) and nan(neg.f1.value) and neg.specificity.value == 1.0
    assert any(n.startswith("recall, f1, balanced_accuracy:") for n in neg.notes)


def test_ties_give_auc_half():
    labels = [True] * 4 + [False] * 6
    m = binary_metrics(labels, [True] * 10, [0.7] * 10)
    assert m.auc.value == 0.5 and m.auc.low <= 0.5 <= m.auc.high
    # Partial ties count 1/2: positives {0.5, 0.9}, negatives {0.5, 0.1} -> (1 + 1 + 0.5 + 1) / 4.
    assert binary_metrics([True, True, False, False], [1, 1, 0, 0], [0.5, 0.9, 0.5, 0.1]).auc.value == 0.875


def test_wilson_5_of_10_by_hand():
    # z = 1.959964; centre = (0.5 + z^2/20) / (1 + z^2/10) = 0.5;
    # half = z / (1 + z^2/10) * sqrt(0.5*0.5/10 + z^2/400) = 1.959964 / 1.384146 * 0.186021 = 0.263406
    e = wilson(5, 10)
    assert (e.value, e.low, e.high) == (0.5, pytest.approx(0.236594, abs=1e-6), pytest.approx(0.763406, abs=1e-6))
    m = binary_metrics([True] * 10, [True] * 5 + [False] * 5)
    assert m.accuracy == m.recall == e


def noisy(seed: int = 1, n: int = 60):
    g = np.random.default_rng(seed)
    labels = g.random(n) < 0.3
    probs = np.clip(labels * 0.3 + g.random(n) * 0.7, 0, 1)
    preds = [None if g.random() < 0.1 else bool(p > 0.5) for p in probs]
    return labels, preds, probs


def test_determinism_and_global_rng_untouched():
    labels, preds, probs = noisy()
    np.random.seed(123)
    state = np.random.get_state()
    a = binary_metrics(labels, preds, probs, rng=np.random.default_rng(7))
    b = binary_metrics(labels, preds, probs, rng=np.random.default_rng(7))
    c, d = binary_metrics(labels, preds, probs), binary_metrics(labels, preds, probs)  # default: default_rng(0)
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]
    assert a.balanced_accuracy == b.balanced_accuracy and a.f1 == b.f1 and c == d
    assert a.balanced_accuracy.low < a.balanced_accuracy.value < a.balanced_accuracy.high


@pytest.mark.parametrize("seed", range(5))
def test_intervals_contain_point_estimates(seed):
    labels, preds, probs = noisy(seed)
    m = binary_metrics(labels, preds, probs, rng=np.random.default_rng(seed), n_boot=300)
    assert all(not nan(getattr(m, name).value) for name in METRICS)
    assert_contains(m)
    json.dumps(m.to_dict(), allow_nan=False)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="labels but"):
        binary_metrics([True, False], [True])
    with pytest.raises(ValueError, match="probabilities"):
        binary_metrics([True, False], [True, False], [0.5])
    with pytest.raises(ValueError, match="True, False or None"):
        binary_metrics([True, False], ["yes", "no"])
    with pytest.raises(ValueError, match="labels"):
        binary_metrics([True, None], [True, False])


def test_correlation():
    x = np.arange(10.0)
    e = correlation(x, 3 * x + 2)
    assert e.value == pytest.approx(1.0) and e.high == pytest.approx(1.0) and e.low <= e.value
    assert correlation(x, -x).value == pytest.approx(-1.0)
    r = correlation([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])  # r = 0.8, z = atanh(0.8), se = 1/sqrt(2)
    assert r.value == pytest.approx(0.8)
    assert r.low == pytest.approx(math.tanh(math.atanh(0.8) - 1.959964 / math.sqrt(2)), abs=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cases = [([1, 2, 3], [1, 2, 3]), ([0.1] * 6, x[:6]), (x[:6], [2.0] * 6), ([], [])]
        cases.append(([1, 2, np.nan, 4, 5], [1, 2, 3, np.inf, 5]))  # 3 finite pairs left
        for a, b in cases:
            e = correlation(a, b)
            assert nan(e.value) and nan(e.low) and nan(e.high), (a, b)


def test_aggregate_and_table():
    e = aggregate([1.0, 2.0, 3.0, float("nan")])  # mean 2, s = 1, t(0.975, 2) = 4.302653
    assert e.value == 2.0 and e.high - 2.0 == pytest.approx(4.302653 / math.sqrt(3), abs=1e-6)
    assert all(nan(v) for v in (aggregate([]).value, aggregate([np.nan]).low))
    one = aggregate([0.7])
    assert one.value == 0.7 and nan(one.low)
    df = pd.DataFrame({"scorer": ["fuzz", "detect", "fuzz", "detect", "fuzz"], "score": [0.6, 0.8, 0.7, None, 0.8]})
    t = aggregate_table(df)
    assert list(t.columns) == ["scorer", "n_latents", "mean", "low", "high"]
    assert t["scorer"].tolist() == ["detect", "fuzz"] and t["n_latents"].tolist() == [1, 3]
    assert t["mean"].tolist() == pytest.approx([0.8, 0.7]) and t.iloc[1]["low"] < 0.7 < t.iloc[1]["high"]
    assert Estimate(1.0, float("nan"), 2.0).to_dict() == {"value": 1.0, "low": None, "high": 2.0}


def test_excerpt_correlation_is_r_over_tokens_with_an_excerpt_jackknife():
    """The point estimate is r over every token; the interval is the stratified leave-one-excerpt-out
    jackknife on Fisher's z (bias-corrected, variance at least 1 / (k - 3), t with k - 2 df), recomputed
    here the slow way, excerpt by excerpt."""
    from scipy import stats

    from sae_lens_autointerp.metrics import excerpt_correlation

    rng = np.random.default_rng(5)
    acts = rng.random((8, 5)) * (np.arange(8) < 4)[:, None]
    pred = np.where(rng.random((8, 1)) < 0.7, acts * 10, 0.0).round() + (rng.random((8, 5)) < 0.1) * 3
    labels = [True] * 4 + [False] * 4
    est = excerpt_correlation(list(pred), list(acts), labels)
    assert est.value == pytest.approx(correlation(pred.ravel(), acts.ravel()).value)
    z = math.atanh(est.value)
    loo = np.array(
        [math.atanh(correlation(np.delete(pred, i, 0).ravel(), np.delete(acts, i, 0).ravel()).value) for i in range(8)]
    )
    var = sum(3 / 4 * ((loo[g] - loo[g].mean()) ** 2).sum() for g in (slice(0, 4), slice(4, 8)))
    bias = sum(3 * (loo[g].mean() - z) for g in (slice(0, 4), slice(4, 8)))
    half = stats.t.ppf(0.975, 6) * math.sqrt(max(var, 1 / 5))
    assert (est.low, est.high) == pytest.approx((math.tanh(z - bias - half), math.tanh(z - bias + half)), abs=1e-9)
    # failed excerpts (None) are left out; fewer than 4 answered excerpts: r without an interval
    none = excerpt_correlation([None, *pred[1:]], list(acts), labels)
    assert none.value == pytest.approx(correlation(pred[1:].ravel(), acts[1:].ravel()).value)
    three = excerpt_correlation(list(pred[:3]), list(acts[:3]))
    assert math.isfinite(three.value) and math.isnan(three.low) and math.isnan(three.high)
    assert math.isnan(excerpt_correlation([[1.0] * 5] * 8, list(acts)).value)  # constant predictions
    with pytest.raises(ValueError, match="predicted excerpts"):
        excerpt_correlation(list(pred), list(acts[:3]))


def test_excerpt_correlation_when_one_excerpt_carries_everything():
    """Only one excerpt has non-zero predictions: leaving it out leaves no variance (r counts 0 there), so
    the interval is wide, not NaN and not narrow."""
    from sae_lens_autointerp.metrics import excerpt_correlation

    acts = np.zeros((10, 4))
    acts[:5, 1] = 1.0
    pred = np.zeros((10, 4))
    pred[0, 1] = 5.0
    est = excerpt_correlation(list(pred), list(acts), [True] * 5 + [False] * 5)
    assert est.value == pytest.approx(correlation(pred.ravel(), acts.ravel()).value)
    assert est.low < 0.1 and est.high > 0.6, est


def test_auc_interval_scalar_and_vector_paths_agree():
    from sae_lens_autointerp.metrics import auc_batch, auc_interval

    cases = [(1.0, 3, 3, 1.0), (0.8, 50, 50, 1.3), (0.0, 1, 5, 1.0), (0.5, 1, 1, 1.0), (0.93, 10, 40, 2.0)]
    for a, m, n, k in cases:
        low, high = auc_interval(a, m, n, k)
        vlow, vhigh = auc_interval(np.array([a, a]), np.array([m, m]), n, k)
        assert float(low) == pytest.approx(vlow[1], abs=1e-12) and float(high) == pytest.approx(vhigh[0], abs=1e-12)
        assert 0.0 <= low <= a <= high <= 1.0 and high > low
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, (3, 7)), rng.normal(0, 1, (3, 9))
    auc, low, high = auc_batch(pos, neg)
    for i in range(3):
        one = binary_metrics([True] * 7 + [False] * 9, [True] * 16, [*pos[i], *neg[i]]).auc
        assert (one.value, one.low, one.high) == pytest.approx((auc[i], low[i], high[i]))

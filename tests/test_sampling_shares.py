"""How the activating pool is shared between the explainer and the test (``quantile_shares``)."""

from __future__ import annotations

import pytest

from sae_lens_autointerp.sampling import SamplingConfig, quantile_shares, sample_latent


def test_quantile_explainer_and_test_split_a_small_quantile_in_proportion():
    cfg = SamplingConfig()  # 4 explain + 5 test per quantile
    per_explain, per_test = quantile_shares([100] * 9 + [3], cfg)
    assert per_explain == [4] * 9 + [1] and per_test == [5] * 9 + [2]


@pytest.mark.parametrize("strategy", ["top", "random"])
def test_an_explainer_outside_the_quantiles_takes_no_share_of_them(strategy):
    """'top' and 'random' draw the explainer's windows elsewhere: a quantile of 3 gives the test all 3, not the
    2 left after a share reserved for an explainer that never takes it."""
    per_explain, per_test = quantile_shares([3] * 10, SamplingConfig(explain_strategy=strategy))
    assert per_explain == [0] * 10 and per_test == [3] * 10


@pytest.mark.parametrize("strategy", ["top", "random"])
def test_rare_latents_test_every_free_window_when_the_explainer_skips_quantiles(embedded_store, strategy):
    """On the shipped SAE, latents with at most 50 firing examples (every quantile holds at most the 5 the test
    wants): each pool window is shown, tested, or left out for a counted reason; none is left unused."""
    store = embedded_store
    counts = store.stats["n_fire_examples"]
    cfg = SamplingConfig(explain_strategy=strategy, n_explain=10)
    rare = [i for i in range(store.d_sae) if cfg.min_activating <= counts[i] <= cfg.n_test_pos]
    assert len(rare) >= 20
    n_checked = 0
    for latent in rare[:40]:
        s = sample_latent(store, latent, cfg)
        if s.skipped:
            continue
        pool = store.stratified_examples(latent)
        assert len(pool) == int(counts[latent])
        shown = {e.token_id for e in s.explain}
        in_pool_shown = sum(e.token_id in shown for e in pool)
        accounted = len(s.test_pos) + in_pool_shown + s.holdout["test_pos"] + s.holdout["cut"] + s.holdout["repeated"]
        assert accounted == len(pool), (latent, len(s.test_pos), in_pool_shown, s.holdout, len(pool))
        n_checked += 1
    assert n_checked >= 20

"""Semantic similarity across SAEs: Hungarian matching of latents and similarity of their explanations.

Ground truth comes from SAEs whose correspondence is known by construction: the embedded SAE, a copy of it
with its latents permuted (the matching must find the permutation exactly), a copy of a subset of its latents
(rectangular) and SAEs with random decoder directions (no correspondence at all).
"""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch

import sae_lens_autointerp as sai
from sae_factories import make_sae
from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.harvest.model import ModelAdapter
from sae_lens_autointerp.metrics import Estimate
from sae_lens_autointerp.records import Explanation
from sae_lens_autointerp.results import ScoreResult
from sae_lens_autointerp.similarity import (
    Matching,
    explanation_similarity,
    heatmap,
    match_latents,
    similarity,
    similarity_matrix,
)
from sae_lens_autointerp.similarity.correlations import _Correlations

D_IN, D_SAE = 576, 2048

PHRASES = [
    "month names such as January and March",
    "closing parentheses at the end of a call",
    "the Python keyword return",
    "digits inside numbers",
    "the word 'the' before a noun",
    "file system paths with slashes",
    "HTTP and URL fragments",
    "exception class names ending in Error",
    "indentation whitespace at the start of a line",
    "plural nouns ending in s",
    "comparison operators like less than",
    "names of colours",
    "verbs in the past tense",
    "the start of a docstring",
    "mathematical functions such as sine and cosine",
    "references to threads and locks",
    "string quotes and apostrophes",
    "encoding names like utf-8",
    "units of time: seconds, minutes, hours",
    "boolean values True and False",
    "import statements",
    "email addresses and the at sign",
    "the letter x in variable names",
    "negation words such as not and never",
    "dictionary keys and colons",
    "calendar dates and years",
    "socket and network connections",
    "questions ending with a question mark",
    "list indexing with square brackets",
    "names of operating systems",
    "the first token after a full stop",
    "hexadecimal numbers",
    "regular expression syntax",
    "arguments named self",
    "deprecation warnings",
    "command-line options starting with dashes",
    "XML and HTML tags",
    "time zones and UTC",
    "compression formats like gzip and zip",
    "random number generation",
]


def permuted_copy(sae, perm: torch.Tensor, hook: str | None = None):
    """B's latent j is A's latent perm[j] (encoder columns, encoder bias and decoder rows permuted)."""
    out = copy.deepcopy(sae)
    with torch.no_grad():
        out.W_enc.copy_(sae.W_enc[:, perm])
        out.b_enc.copy_(sae.b_enc[perm])
        out.W_dec.copy_(sae.W_dec[perm])
    if hook is not None:
        out.cfg.metadata.hook_name = hook
    return out


def subset_copy(sae, latents: torch.Tensor):
    """A TopK SAE made of the given latents of ``sae`` (in that order): its latent j is ``latents[j]``."""
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    md = sae.cfg.metadata
    cfg = TopKSAEConfig(
        d_in=D_IN,
        d_sae=len(latents),
        k=int(sae.cfg.k),
        metadata=SAEMetadata(
            hook_name=md.hook_name, prepend_bos=True, context_size=128, seqpos_slice=list(md.seqpos_slice)
        ),
    )
    out = TopKSAE(cfg)
    with torch.no_grad():
        out.W_enc.copy_(sae.W_enc[:, latents])
        out.b_enc.copy_(sae.b_enc[latents])
        out.W_dec.copy_(sae.W_dec[latents])
        out.b_dec.copy_(sae.b_dec)
    return out.eval()


def random_directions(seed: int, d_sae: int = D_SAE, d_in: int = D_IN):
    sae = make_sae(d_in, d_sae, hook="blocks.3.hook_resid_post", seed=seed)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(seed + 100)))
    return sae


@pytest.fixture(scope="module")
def perm() -> torch.Tensor:
    return torch.randperm(D_SAE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def inverse(perm) -> np.ndarray:
    """A's latent a is B's latent inverse[a]."""
    return torch.argsort(perm).numpy()


@pytest.fixture(scope="module")
def shuffled_sae(embedded_sae, perm):
    return permuted_copy(embedded_sae, perm)


@pytest.fixture(scope="module")
def corpus():
    return sai.embedded.load_corpus()


# ------------------------------------------------------------------------------------------------ decoder


def test_decoder_matching_recovers_a_permutation_exactly(embedded_sae, shuffled_sae, inverse) -> None:
    m = match_latents(embedded_sae, shuffled_sae)
    assert isinstance(m, Matching) and m.method == "decoder" and m.n_pairs == D_SAE
    np.testing.assert_array_equal(m.pairs[:, 0], np.arange(D_SAE))
    np.testing.assert_array_equal(m.pairs[:, 1], inverse)
    assert m.similarity.min() > 1 - 1e-9
    # the random-pair baseline: random directions in 576 dimensions are nearly orthogonal
    assert len(m.baseline) == 10_000 and abs(m.baseline_mean) < 0.02
    assert m.summary()["frac_above_baseline_q99"] == 1.0


def test_decoder_self_similarity_is_one_and_random_directions_are_near_chance(embedded_sae) -> None:
    own = match_latents(embedded_sae, embedded_sae)
    assert own.mean == pytest.approx(1.0, abs=1e-9)
    assert own.mapping == {i: i for i in range(D_SAE)}
    rnd = match_latents(embedded_sae, random_directions(seed=3))
    # Matching picks the best of 2048 near-orthogonal candidates, so it sits a little above random pairs
    # (measured 0.137 vs 0.001), far below a real correspondence.
    assert abs(rnd.baseline_mean) < 0.02
    assert rnd.mean - rnd.baseline_mean < 0.2
    assert rnd.mean < 0.2 < 0.99 < own.mean


def test_the_matched_null_is_a_matching_against_random_directions(embedded_sae, shuffled_sae) -> None:
    """Between unrelated SAEs the Hungarian mean sits at the matched null (measured 0.137), far above random pairs
    (0.001): the null of a matched mean is a matching, and the reported difference is to it."""
    unrelated = match_latents(embedded_sae, random_directions(seed=3))
    assert len(unrelated.null) == D_SAE and 0.1 < unrelated.null_mean < 0.2
    assert abs(unrelated.mean - unrelated.null_mean) < 0.01 < unrelated.mean - unrelated.baseline_mean - 0.1
    summary = match_latents(embedded_sae, shuffled_sae).summary()
    assert summary["null_mean"] == pytest.approx(unrelated.null_mean) and summary["mean"] > 0.99
    assert "matched null 0.1" in repr(unrelated)
    assert match_latents(embedded_sae, shuffled_sae, matched_null=False).null.size == 0
    small = subset_copy(embedded_sae, torch.arange(256))
    saes = [small, random_directions(seed=4, d_sae=256)]
    difference = similarity_matrix(saes, statistic="difference").iloc[0, 1]
    assert abs(difference) < 0.02  # matched minus random pairs would read the whole selection effect
    with pytest.raises(ConfigError, match="matched null"):
        similarity_matrix(saes, method="activations", statistic="difference")


def test_decoder_matching_is_rectangular(embedded_sae) -> None:
    chosen = torch.randperm(D_SAE, generator=torch.Generator().manual_seed(1))[:300]
    small = subset_copy(embedded_sae, chosen)
    m = match_latents(small, embedded_sae)  # 300 x 2048: every latent of the small SAE finds its source
    assert m.n_pairs == 300
    np.testing.assert_array_equal(m.pairs[:, 1], chosen.numpy())
    assert len(m.unmatched_b) == D_SAE - 300 and len(m.unmatched_a) == 0
    back = match_latents(embedded_sae, small)  # 2048 x 300, the other way round
    assert back.n_pairs == 300 and back.inverse == {j: int(chosen[j]) for j in range(300)}
    # candidates restricted on both sides
    sub = match_latents(embedded_sae, embedded_sae, latents_a=[5, 7, 9], latents_b=[9, 5, 7, 11])
    assert sub.mapping == {5: 5, 7: 7, 9: 9} and sub.unmatched_b.tolist() == [11]


def test_decoder_refuses_different_d_in_and_names_the_fix(embedded_sae) -> None:
    other = make_sae(64, 128)
    with pytest.raises(ConfigError, match=r"d_in differs.*method='activations'"):
        match_latents(embedded_sae, other, method="decoder")
    with pytest.raises(ConfigError, match="model= and dataset="):
        match_latents(embedded_sae, other, method="activations")
    with pytest.raises(ConfigError, match="outside 0..2047"):
        match_latents(embedded_sae, embedded_sae, latents_a=[0, 2048])
    with pytest.raises(ConfigError, match="duplicate"):
        match_latents(embedded_sae, embedded_sae, latents_b=[1, 1])
    with pytest.raises(ConfigError, match="method must be"):
        match_latents(embedded_sae, embedded_sae, method="encoder")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ activations


def test_streamed_correlations_equal_numpy_corrcoef() -> None:
    rng = np.random.default_rng(0)
    a = rng.exponential(size=(700, 30)) * (rng.random((700, 30)) < 0.05)  # sparse: the sparse product path
    b = np.hstack([a[:, :10] * 3 + 1e-3 * rng.normal(size=(700, 10)), rng.normal(size=(700, 12))])  # dense
    a[:, 4] = 0.0  # a latent that never fires: undefined, flagged
    acc = _Correlations(30, 22)
    for start in range(0, 700, 128):  # uneven batches
        acc.update(a[start : start + 128], b[start : start + 128])
    r, const_a, const_b = acc.correlation()
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.corrcoef(a.T, b.T)[:30, 30:]
    live = ~const_a
    np.testing.assert_allclose(r[live], want[live], atol=1e-10)
    assert const_a.tolist() == [i == 4 for i in range(30)] and not const_b.any()
    assert np.isnan(r[4]).all()


def test_activation_matching_recovers_a_permutation(bridge_model, embedded_sae, shuffled_sae, inverse, corpus):
    m = match_latents(
        embedded_sae,
        shuffled_sae,
        method="activations",
        model=bridge_model,
        dataset=corpus,
        n_tokens=2048,
        progress=False,
    )
    assert m.method == "activations" and m.n_tokens == 2048
    assert len(m.dead_a) > 0  # rare latents do not fire on 2048 tokens: left out, not matched at random
    np.testing.assert_array_equal(np.sort(inverse[m.dead_a]), np.sort(m.dead_b))
    assert m.n_pairs == D_SAE - len(m.dead_a)
    np.testing.assert_array_equal(m.pairs[:, 1], inverse[m.pairs[:, 0]])
    assert m.similarity.min() > 1 - 1e-6
    assert abs(m.baseline_mean) < 0.03 and m.summary()["frac_above_baseline_q99"] == 1.0


def relu_copy(sae, latents: torch.Tensor):
    """A ReLU SAE with the weights of ``latents`` of ``sae`` (its latent j is ``latents[j]``). ReLU latents do
    not compete (TopK ones do), so each keeps its activations in any subset: an exact answer key across widths."""
    md = sae.cfg.metadata
    out = make_sae(D_IN, len(latents), hook=md.hook_name, seqpos_slice=list(md.seqpos_slice), context_size=128)
    with torch.no_grad():
        out.W_enc.copy_(sae.W_enc[:, latents])
        out.b_enc.copy_(sae.b_enc[latents])
        out.W_dec.copy_(sae.W_dec[latents])
        out.b_dec.copy_(sae.b_dec)
    return out


def test_activation_matching_across_widths_and_hooks(bridge_model, embedded_sae, corpus) -> None:
    chosen = torch.randperm(D_SAE, generator=torch.Generator().manual_seed(2))[:256]
    wide = relu_copy(embedded_sae, torch.arange(D_SAE))
    narrow = relu_copy(embedded_sae, chosen)  # 256 latents, in another order
    # blocks.4.hook_resid_pre carries the same vector as blocks.3.hook_resid_post but is read by its own
    # forward pass (another hook, another stop layer): the cross-layer path, with a known answer.
    narrow.cfg.metadata.hook_name = "blocks.4.hook_resid_pre"
    candidates = sorted(set(torch.randperm(D_SAE, generator=torch.Generator().manual_seed(3))[:512].tolist()))
    candidates = sorted(set(candidates) | set(chosen.tolist()))  # the wide SAE restricted to 708 latents
    m = match_latents(
        narrow,
        wide,
        method="activations",
        model=bridge_model,
        dataset=corpus,
        latents_b=candidates,
        n_tokens=512,  # ReLU latents fire densely: no latent is dead or tied on 512 tokens
        progress=False,
    )
    assert set(m.candidates_b.tolist()) == set(candidates) and m.n_pairs == 256 - len(m.dead_a)
    np.testing.assert_array_equal(m.pairs[:, 1], chosen.numpy()[m.pairs[:, 0]])
    assert m.similarity.min() > 1 - 1e-6
    assert len(m.unmatched_b) == len(candidates) - m.n_pairs - len(m.dead_b)


def test_activation_matching_from_two_stores(
    bridge_model, embedded_sae, shuffled_sae, inverse, corpus, tmp_path, monkeypatch
) -> None:
    # Hashing every model weight for the store key takes seconds on busy cores; this test needs no key.
    monkeypatch.setattr(ModelAdapter, "fingerprint", lambda self: {"model": "embedded (test)"})
    kwargs = dict(n_tokens=512, ctx_len=128, n_random_windows=16, progress=False)  # the pool covers every window
    store_a = embedded_sae.autointerp.harvest(bridge_model, corpus, store_dir=tmp_path / "a", **kwargs)
    shuffled_sae.autointerp.harvest(bridge_model, corpus, store_dir=tmp_path / "b", **kwargs)  # passed by path
    # On ~500 tokens some latents fire once each, on one token: ties (r = 1 both ways), left out by min_active=2
    m = match_latents(
        embedded_sae, shuffled_sae, method="activations", store_a=store_a, store_b=tmp_path / "b", min_active=2
    )
    assert m.n_tokens == 512 - 4  # the BOS of each of the 4 sequences is masked in the stores, left out here
    np.testing.assert_array_equal(m.pairs[:, 1], inverse[m.pairs[:, 0]])
    assert m.similarity.min() > 1 - 1e-6
    np.testing.assert_array_equal(np.sort(inverse[m.dead_a]), np.sort(m.dead_b))
    # a store of another corpus (its identity edited: the checksums cover the data files, not meta.json)
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    meta["corpus"] = {"texts": "another corpus", "n": 3}
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="different corpora"):
        match_latents(None, None, method="activations", store_a=store_a, store_b=tmp_path / "c")
    with pytest.raises(ConfigError, match="both store_a= and store_b="):
        match_latents(None, None, method="activations", store_a=store_a)


# ------------------------------------------------------------------------------------------------ explanations


@pytest.fixture(scope="module")
def matching(embedded_sae, shuffled_sae) -> Matching:
    return match_latents(embedded_sae, shuffled_sae)


@pytest.fixture(scope="module")
def explained(inverse) -> tuple[dict[int, str], dict[int, str]]:
    """Explanations of 40 latents of A, and the same explanations on their matches in B."""
    latents = list(range(0, 400, 10))
    a = {lat: PHRASES[i] for i, lat in enumerate(latents)}
    b = {int(inverse[lat]): text for lat, text in a.items()}
    return a, b


def test_identical_explanations_score_one_and_shuffled_ones_score_chance(matching, explained) -> None:
    a, b = explained
    same = explanation_similarity(matching, a, b)
    assert same.n_pairs == 40 and same.n_missing == D_SAE - 40
    assert same.matched.value == pytest.approx(1.0, abs=1e-5)
    assert same.random.value < 0.4 and same.difference.low > 0.5 and same.signal
    assert isinstance(same.matched, Estimate) and same.random.low <= same.random.value <= same.random.high
    # the same texts on the same B latents, but attached to the wrong partners
    keys = sorted(b)
    texts = [b[k] for k in keys]
    shuffled = dict(zip(keys, texts[7:] + texts[:7]))
    noise = explanation_similarity(matching, a, shuffled)
    assert abs(noise.matched.value - noise.random.value) < 0.06, noise
    assert noise.difference.low < 0 < noise.difference.high and not noise.signal
    # same texts, about the same random level (here a random pair may draw the one partner with the same text:
    # 1/39 of the draws, +0.023)
    assert noise.random.value == pytest.approx(same.random.value, abs=0.05)
    table = same.summary()
    assert table["statistic"].tolist() == ["matched", "random", "difference"]


def test_failed_explanations_are_excluded_and_counted(matching, explained) -> None:
    a, b = explained
    a = dict(a)
    first, second, third = sorted(a)[:3]
    a[first] = Explanation(latent=first, text="", failed=True, error="parse error")
    a[second] = "   "
    b = {k: Explanation(latent=k, text=v) for k, v in b.items()}
    b[int(matching.mapping[third])] = Explanation(latent=0, text="x", failed=True)
    result = explanation_similarity(matching, a, b)
    assert result.n_pairs == 37 and result.n_failed_a == 2 and result.n_failed_b == 1
    assert result.n_pairs + result.n_missing == matching.n_pairs
    assert result.matched.value == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ConfigError, match="at least 2"):
        explanation_similarity(matching, {first: "a"}, b)


def test_score_results_are_accepted(matching, explained) -> None:
    a, b = explained
    records = [{"latent": k, "explanation": {"latent": k, "text": v}} for k, v in a.items()]
    records.append({"latent": 999, "explanation": {"latent": 999, "text": "", "failed": True, "error": "refused"}})
    records.append({"latent": 998, "skipped": "dead"})
    result = explanation_similarity(matching, ScoreResult(records=records), b)
    assert result.n_pairs == 40 and result.n_failed_a == 1
    assert result.matched.value == pytest.approx(1.0, abs=1e-5)


def test_cross_score_hook(matching, explained) -> None:
    a, b = explained
    truth = dict(b)
    calls = []

    def cross(latent_b: int, text: str) -> float:  # "detection": 1 if the text is the right one for latent_b
        calls.append(latent_b)
        if latent_b == min(truth):
            return float("nan")  # a failed judgment
        return 1.0 if truth.get(latent_b) == text else 0.0

    result = explanation_similarity(matching, a, b, cross_score=cross)
    assert len(calls) == 80  # 40 matched pairs + 40 random ones
    assert result.cross is not None and result.cross_random is not None and result.cross_difference is not None
    assert result.cross.value == 1.0 and result.cross_random.value == 0.0
    assert result.cross_difference.low > 0.9
    assert result.n_cross_failed >= 1 and np.isnan(result.pairs["cross_score"]).sum() == 1
    assert result.n_cross == 39 and result.n_cross + result.n_cross_random + result.n_cross_failed == 80
    assert "cross_difference" in result.summary()["statistic"].tolist()


def test_callable_embedder(matching, explained) -> None:
    a, b = explained

    def by_length(texts: list[str]) -> np.ndarray:  # a deliberately poor embedder, normalised by the caller
        return np.array([[len(t), 10.0] for t in texts])

    result = explanation_similarity(matching, a, b, embedder=by_length, n_boot=200)
    assert result.matched.value == pytest.approx(1.0) and result.embedder == "by_length"
    assert 0.9 < result.random.value < 1.0  # two positive coordinates: every pair is close


# ------------------------------------------------------------------------------------------------ many SAEs


def test_similarity_matrix_and_heatmap(embedded_sae) -> None:
    small = subset_copy(embedded_sae, torch.arange(512))  # 512 latents: quick Hungarian steps
    shuffled = permuted_copy(small, torch.randperm(512, generator=torch.Generator().manual_seed(5)))
    saes = {"sae": small, "permuted": shuffled, "random": random_directions(seed=4, d_sae=512)}
    frame = similarity_matrix(saes)
    assert list(frame.index) == list(frame.columns) == ["sae", "permuted", "random"]
    values = frame.to_numpy()
    np.testing.assert_allclose(values, values.T)
    np.testing.assert_allclose(np.diag(values), 1.0)
    assert values[0, 1] == pytest.approx(1.0, abs=1e-9) and values[0, 2] < 0.2 and values[1, 2] < 0.2
    adjacent = similarity_matrix(list(saes.values()), adjacent_only=True, statistic="difference")
    assert list(adjacent.index) == ["0", "1", "2"]  # the hook names coincide: positions
    assert np.isnan(adjacent.iloc[0, 2]) and adjacent.iloc[0, 1] > 0.8  # 1 minus the matched null
    fig = heatmap(frame)
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), values)
    assert "latent similarity" in fig.layout.title.text


def test_similarity_matrix_of_explanations_and_the_pair_call(embedded_sae, shuffled_sae, explained, inverse) -> None:
    a, b = explained
    frame = similarity_matrix([embedded_sae, shuffled_sae], explanations=[a, b])
    assert frame.attrs["value"] == "explanation" and frame.iloc[0, 1] == pytest.approx(1.0, abs=1e-5)
    both = similarity(embedded_sae, shuffled_sae, a, b)
    assert both.explanations is not None and both.explanations.signal
    assert both.summary()["mean"] == pytest.approx(1.0) and "explanation_matched" in both.summary()
    with pytest.raises(ConfigError, match="one per SAE"):
        similarity_matrix([embedded_sae, shuffled_sae], explanations=[a])
    with pytest.raises(ConfigError, match="for both SAEs"):
        similarity(embedded_sae, shuffled_sae, a)

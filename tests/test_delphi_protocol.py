"""``protocol="delphi"`` / ``"delphi-compat"`` of detection and fuzzing, checked against delphi's own code.

delphi (``eai-delphi==0.1.3``) is installed without its dependencies into the peers folder by ``.ci/run``
(as SAEBench is) and imported from there, never by the package. Only the modules its classifier scorers need
are loaded: the package ``__init__`` files of ``delphi.clients``, ``delphi.latents`` and ``delphi.scorers``
import vLLM, faiss and every other scorer, so they are replaced by empty package shells pointing at the real
folders (the real submodules still load from them). ``blobfile`` and ``orjson`` (imported at the top of
``delphi/latents/latents.py``, used only by ``LatentRecord.save``, which no test calls) are stubbed where
they are not installed, labelled as such.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import random
import re
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.llm import BaseClient, ChatRequest, ChatResponse, Usage
from sae_lens_autointerp.llm.types import TokenLogprob
from sae_lens_autointerp.records import Context, Explanation
from sae_lens_autointerp.sampling import SamplingConfig, latent_rng, sample_latent
from sae_lens_autointerp.scorers import delphi_protocol
from sae_lens_autointerp.scorers.classification import DetectionScorer, FuzzingActiveScorer, FuzzingScorer
from sae_lens_autointerp.text import Renderer

PEERS = Path.home() / ".cache" / "sae-lens-autointerp" / "peers" / "eai-delphi-0.1.3"
EXPLANATION = 'The word "of" before a capitalised noun\n(titles, "Head of ...")'
SCORERS = {"detection": DetectionScorer, "fuzzing": FuzzingScorer}


@pytest.fixture(scope="module")
def delphi():
    """delphi's classifier modules, loaded from the peers folder; sys.modules and sys.path restored after."""
    if not (PEERS / "delphi" / "scorers" / "classifier" / "fuzz.py").is_file():
        pytest.skip(f"eai-delphi 0.1.3 is not installed in {PEERS} (bash .ci/run installs it there)")
    before = set(sys.modules)
    sys.path.insert(0, str(PEERS))
    try:
        for missing in ("blobfile", "orjson"):
            try:
                importlib.import_module(missing)
            except ImportError:  # STUB: a missing third-party import of latents.py, only used by LatentRecord.save
                sys.modules[missing] = types.ModuleType(missing)
        importlib.import_module("delphi")  # its __init__ only makes the logger
        for package in ("delphi.clients", "delphi.latents", "delphi.scorers", "delphi.scorers.classifier"):
            shell = types.ModuleType(package)  # the real folder without its heavy __init__
            shell.__path__ = [str(PEERS / package.replace(".", "/"))]
            sys.modules[package] = shell
        latents = importlib.import_module("delphi.latents.latents")
        for name in ("ActivatingExample", "NonActivatingExample", "LatentRecord", "Latent", "Example"):
            setattr(sys.modules["delphi.latents"], name, getattr(latents, name))  # what `from ...latents import` reads
        yield SimpleNamespace(
            latents=latents,
            sample=importlib.import_module("delphi.scorers.classifier.sample"),
            detection=importlib.import_module("delphi.scorers.classifier.detection"),
            fuzz=importlib.import_module("delphi.scorers.classifier.fuzz"),
        )
    finally:
        sys.path.remove(str(PEERS))
        for name in set(sys.modules) - before:
            del sys.modules[name]


@pytest.fixture(scope="module")
def latents(embedded_store):
    """A few latents of the embedded store with a full test sample (50 + 50)."""
    chosen = []
    for latent in range(embedded_store.d_sae):
        s = sample_latent(embedded_store, latent, SamplingConfig())
        if not s.skipped and len(s.test_pos) == 50 and len(s.test_neg) == 50:
            chosen.append(latent)
        if len(chosen) == 4:
            return chosen
    pytest.fail("the embedded store has fewer than 4 latents with a full test sample")


def _ctx(store, tokenizer, llm=None) -> Context:
    return Context(llm=llm, renderer=Renderer(tokenizer), store=store)


def _record(delphi, renderer: Renderer, sample):
    """The same test examples as a delphi LatentRecord (tokens, float32 activations, the same pieces)."""
    import torch

    lat = delphi.latents

    def tensors(ex, r):
        return torch.tensor(np.asarray(ex.tokens)), torch.tensor(np.asarray(r.activations, dtype=np.float32))

    test = []
    for ex, r in zip(sample.test_pos, renderer.render_many(sample.test_pos)):
        toks, acts = tensors(ex, r)
        test.append(
            lat.ActivatingExample(tokens=toks, activations=acts, str_tokens=list(r.tokens), quantile=r.quantile)
        )
    not_active = []
    for ex, r in zip(sample.test_neg, renderer.render_many(sample.test_neg)):
        toks, acts = tensors(ex, r)
        not_active.append(
            lat.NonActivatingExample(tokens=toks, activations=acts, str_tokens=list(r.tokens), distance=-1)
        )
    return lat.LatentRecord(latent=lat.Latent("layer", sample.latent), test=test, not_active=not_active)


def _delphi_scorer(delphi, kind: str, n: int = 5):
    if kind == "detection":
        return delphi.detection.DetectionScorer(client=None, n_examples_shown=n)
    return delphi.fuzz.FuzzingScorer(client=None, n_examples_shown=n)


def _delphi_samples(delphi, kind, record):
    """delphi's samples (non-activating first, then activating), its global random state left as it was."""
    state = random.getstate()  # delphi's fuzzing calls random.seed(22)
    try:
        return _delphi_scorer(delphi, kind)._prepare(record)
    finally:
        random.setstate(state)


def _our_texts(scorer, sample, ctx) -> tuple[list[str], list[bool]]:
    """Our items in delphi's order (non-activating first)."""
    items = scorer.items(sample, ctx, latent_rng(0, sample.latent, scorer.name))
    ordered = [it for it in items if not it.label] + [it for it in items if it.label]
    return [it.text for it in ordered], [it.label for it in ordered]


@pytest.mark.parametrize("kind", ["detection", "fuzzing"])
def test_prompts_equal_delphis(delphi, embedded_store, bridge_model, latents, kind):
    """For the same examples and explanation, delphi-compat renders exactly delphi's samples and prompts
    (fuzzing: the fake marks too, with delphi's seed-22 and fixed-position bug), batch by batch."""
    ctx = _ctx(embedded_store, bridge_model.tokenizer)
    ours = SCORERS[kind](protocol="delphi-compat")
    theirs = _delphi_scorer(delphi, kind)
    for latent in latents:
        sample = sample_latent(embedded_store, latent, SamplingConfig())
        samples = _delphi_samples(delphi, kind, _record(delphi, ctx.renderer, sample))
        texts, labels = _our_texts(ours, sample, ctx)
        assert texts == [s.text for s in samples], latent
        assert labels == [s.data.activating for s in samples]
        for i in range(0, len(samples), 5):
            assert ours.messages(EXPLANATION, texts[i : i + 5]) == theirs._build_prompt(EXPLANATION, samples[i : i + 5])
        if kind == "fuzzing":  # the examples carry marks (not a trivially equal plain text)
            assert all("<<" in t for t in texts)


def test_delphi_fuzzing_fixes_only_the_fake_positions(delphi, embedded_store, bridge_model, latents):
    """protocol="delphi": true marks and the fake-mark count as delphi's, the fake marks scattered at random
    (not always at len - len // 4, delphi's bug, kept to delphi-compat)."""
    ctx = _ctx(embedded_store, bridge_model.tokenizer)
    at_fixed = []
    for latent in latents:
        sample = sample_latent(embedded_store, latent, SamplingConfig())
        record = _record(delphi, ctx.renderer, sample)
        samples = _delphi_samples(delphi, "fuzzing", record)
        texts, labels = _our_texts(FuzzingScorer(protocol="delphi"), sample, ctx)
        n_neg = labels.count(False)
        assert texts[n_neg:] == [s.text for s in samples[n_neg:]]  # the activating examples: delphi's marks
        want = _delphi_scorer(delphi, "fuzzing").mean_n_activations_ceil(record.test)
        assert want > 1  # the count is a real comparison, not 1 against 1
        rng = latent_rng(0, latent, "fuzzing")  # the draws the scorer made, one mask per negative in order
        for ours, theirs, r in zip(texts[:n_neg], samples[:n_neg], ctx.renderer.render_many(sample.test_neg)):
            mask = delphi_protocol.fake_marks(r.activations, want, rng, compat=False)
            assert mask is not None and delphi_protocol.marked_text(r.tokens, mask) == ours
            assert ours.replace("<<", "").replace(">>", "") == theirs.text.replace("<<", "").replace(">>", "")
            assert mask.sum() == want and not np.asarray(r.activations)[mask].any()
            at_fixed.append(bool(mask[len(r.tokens) - len(r.tokens) // 4]))
    assert 0 < sum(at_fixed) < len(at_fixed) / 2  # delphi: every one of them


@pytest.mark.parametrize(
    ("activations", "n_marks"),
    [
        ([0.0] * 32, 3),  # a silent window: every token may carry a mark, one at the fixed position
        ([5.0] * 31 + [0.0], 2),  # one token below the threshold: delphi shows its DEFAULT_MESSAGE
        ([5.0] * 32, 2),  # no token below: no marks
        ([0.0] * 24 + [5.0] + [0.0] * 7, 4),  # the fixed position (24) fires: marks elsewhere only
        ([0.0] * 10, 20),  # more marks than tokens
    ],
)
def test_compat_fake_marks_equal_delphis_edge_cases(delphi, activations, n_marks):
    import torch

    tokens = tuple(f" t{i}" for i in range(len(activations)))
    example = delphi.latents.NonActivatingExample(
        tokens=torch.arange(len(tokens)),
        activations=torch.tensor(activations, dtype=torch.float32),
        str_tokens=list(tokens),
        distance=-1,
    )
    state = random.getstate()
    try:
        theirs, _ = delphi.sample._prepare_text(example, n_marks, 0.3, True)
    finally:
        random.setstate(state)
    rng = np.random.default_rng(0)
    assert delphi_protocol.fake_text(tokens, activations, n_marks, rng, compat=True) == theirs
    assert random.getstate() == state  # ours never reseeds the process-wide random module


# Answers a judge gave (and ways it goes wrong) to a batch of 5: well-formed, malformed, partial.
ANSWERS = [
    "[1,0,0,1,1]",
    "[1, 0, 0, 1, 1]",
    "Sure! [0,1,1,0,0] is my answer.",
    "[true, false, true, false, true]",
    "[0,0,0,0,0]\n[1,1,1,1,1]",
    "```python\n[1, 1, 0, 0, 1]\n```",
    "[1,0,1",
    "1 0 1 0 1",
    "",
    "[1, 0, x, 1, 0]",
    "['1', '0', '1', '0', '1']",
    "[[1,0,1,0,1]]",
    "[1,\n0, 0, 1, 1]",
    "[]\n[1,0,0,1,1]",
    "[1,0,1]",
    "[1,0,1,0,1,1]",
    '["1", "0", "1", "0", "1"]',
    "[0.9, 0, 1, 0, 1]",
    "[2, 0, 1, 0, 1]",
    "[null, 0, 1, 0, 1]",
]
#: the answers whose entries are not 0/1: delphi reads them by truthiness ("0" as 1); protocol="delphi" fails them
NOT_BINARY = {'["1", "0", "1", "0", "1"]', "[0.9, 0, 1, 0, 1]", "[2, 0, 1, 0, 1]", "[null, 0, 1, 0, 1]"}


def _delphi_parse(scorer, text: str, logprobs=None):
    try:
        preds, probs = scorer._parse(text, logprobs)
    except Exception:  # delphi fails the batch on any error (its _generate catches everything)
        return None, None
    return preds, probs


def test_answer_reading_equals_delphis(delphi):
    theirs = _delphi_scorer(delphi, "detection", n=5)
    parsed = 0
    for answer in ANSWERS:
        want, _ = _delphi_parse(theirs, answer)
        parsed += want is not None
        assert delphi_protocol.parse_answer(answer, 5, compat=True) == want, answer
        fixed = delphi_protocol.parse_answer(answer, 5, compat=False)
        assert fixed == (None if answer in NOT_BINARY else want), answer
    assert 8 <= parsed <= len(ANSWERS) - 8  # both kinds of answer are exercised
    assert _delphi_parse(theirs, '["1", "0", "1", "0", "1"]')[0] == [True] * 5  # the truthiness delphi-compat keeps


def _tok(token: str, top: dict[str, float]) -> TokenLogprob:
    return TokenLogprob(token=token, logprob=max(top.values(), default=0.0), top_logprobs=top)


def _as_delphi(logprobs: list[TokenLogprob]):
    """Our logprobs in the shape delphi's clients give (objects with .token, .logprob, .top_logprobs list)."""
    return [
        SimpleNamespace(
            token=t.token,
            logprob=t.logprob,
            top_logprobs=[SimpleNamespace(token=k, logprob=v) for k, v in t.top_logprobs.items()],
        )
        for t in logprobs
    ]


LOGPROBS = {
    "one token per digit": [_tok("[", {"[": 0.0})]
    + [
        tok
        for d, p in zip("10011", (0.9, 0.2, 0.4, 0.7, 0.99))
        for tok in (_tok(d, {"1": math.log(p), "0": math.log(1 - p), " 1": -6.0}), _tok(",", {",": 0.0}))
    ],
    "digits fused with brackets": [
        _tok("[1", {"[1": -0.1, "[0": -2.5}),
        _tok(",0", {",0": -0.3, ",1": -1.4}),
        _tok(",0", {",0": -0.05, ",1": -3.0}),
        _tok(",1", {",1": -0.2, ",0": -1.7}),
        _tok(",1]", {",1]": -0.4, ",0]": -1.1}),
    ],
    "a digit with no 0/1 alternative": [_tok(d, {d: 0.0} if d != "0" else {"x": -0.1}) for d in "11010"],
    "too few digits": [_tok(d, {"1": -0.5, "0": -1.0}) for d in "101"],
    "a token with both digits": [_tok("10", {"10": -0.1, "1": -2.0}), *[_tok(d, {d: -0.2}) for d in "1011"]],
}


@pytest.mark.parametrize("case", list(LOGPROBS))
def test_answer_probabilities_equal_delphis(delphi, case):
    theirs = _delphi_scorer(delphi, "detection", n=5)
    theirs.log_prob = True
    try:
        want = theirs._parse_logprobs(_as_delphi(LOGPROBS[case]))
    except AssertionError:  # delphi's count check: the batch fails there, we keep the predictions unscored
        want = None
    got = delphi_protocol.answer_probabilities(LOGPROBS[case], 5)
    assert (got is None) == (want is None)
    if want is not None:
        assert got == pytest.approx(want, rel=1e-12)


class RecordingClient(BaseClient):
    """FAKE LLM client (bookkeeping only): answers every batch with a fixed text and records the requests."""

    def __init__(self, answer: str) -> None:
        super().__init__("scripted", cache=False)
        self.answer = answer
        self.requests: list[ChatRequest] = []

    async def _chat(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        return ChatResponse(text=self.answer, finish_reason="stop", usage=Usage(10, 5), model="scripted")


@pytest.mark.parametrize("kind", ["detection", "fuzzing"])
def test_score_sends_delphis_prompts_in_fives(delphi, embedded_store, bridge_model, latents, kind):
    """score() under delphi-compat sends one request per 5 examples, each exactly a prompt delphi builds for
    those 5 examples, once (no retry of an unreadable answer), and reads the answers as delphi does."""
    sample = sample_latent(embedded_store, latents[0], SamplingConfig())
    ctx = _ctx(embedded_store, bridge_model.tokenizer)
    samples = _delphi_samples(delphi, kind, _record(delphi, ctx.renderer, sample))
    by_text = {s.text: s for s in samples}
    theirs = _delphi_scorer(delphi, kind)
    for answer, n_failed in (("[1,1,0,0,1]", 0), ("[1,1,0]", 100)):
        llm = RecordingClient(answer)
        scorer = SCORERS[kind](protocol="delphi-compat")
        ctx = _ctx(embedded_store, bridge_model.tokenizer, llm)
        out = asyncio.run(scorer.score(sample, Explanation(latents[0], EXPLANATION), ctx))
        assert len(llm.requests) == 20 and out.n_failed == n_failed and out.metrics["protocol"] == "delphi-compat"
        for request in llm.requests:
            block = request.messages[-1][1].split("Text examples:\n\n", 1)[1][:-1]
            batch = [by_text[text] for text in re.split(r"(?:^|\n)Example [0-4]: ", block)[1:]]
            assert len(batch) == 5
            assert [{"role": r, "content": c} for r, c in request.messages] == theirs._build_prompt(EXPLANATION, batch)
        if n_failed == 0:
            assert [p["prediction"] for p in out.predictions[:5]] == [True, True, False, False, True]


def test_protocol_options_are_checked():
    assert DetectionScorer(protocol="delphi").examples_per_prompt == 5  # delphi's default batch
    assert FuzzingScorer(protocol="delphi", examples_per_prompt=1).examples_per_prompt == 1
    assert DetectionScorer().examples_per_prompt == 1 and DetectionScorer().protocol == "ours"
    assert DetectionScorer(protocol="delphi").prompt_id != DetectionScorer(protocol="delphi-compat").prompt_id
    with pytest.raises(ConfigError, match="protocol must be one of"):
        DetectionScorer(protocol="Delphi")
    with pytest.raises(ConfigError, match="detection and fuzzing only"):
        FuzzingActiveScorer(protocol="delphi")

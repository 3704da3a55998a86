"""SAEBench's autointerp protocol, rebuilt on a sae-lens-autointerp activation store.

SAEBench (Karvonen, Rager, Lin, Tigges, Bloom et al. 2024; ``sae_bench/evals/autointerp``) does, per latent:

* examples are windows of ``2 * buffer + 1`` tokens (21) centred on a token where the latent fires;
* the 12 strongest windows ("top") are split at random into 10 for the explainer and 2 for the scorer;
* 7 "importance-weighted" windows, drawn without replacement with probability proportional to the squared
  activation among activations below the smallest top one, are split into 5 for the explainer and 2 for
  the scorer;
* 10 random windows are the negatives;
* a token is "active" when its activation exceeds ``act_threshold_frac`` (0.01) times the latent's largest
  activation; a window is labelled activating when any of its tokens is active (random windows never are);
* the explainer sees its 15 windows, strongest first, with active tokens marked ``<<like this>>``;
* the scorer sees the 14 scoring windows shuffled and unmarked and answers which numbers activate;
  the score is the accuracy over the 14 (answering "None" scores 10/14 = 0.714).

Two selections (``SAEBenchConfig.selection``):

* ``"saebench"`` (:func:`select_saebench`): SAEBench 0.6.0's own selection on dense activations recomputed
  over the store's tokens (``dense.py``, ``selection.py``); comparable with published SAEBench numbers.
* ``"clean"`` (:func:`select_examples`): windows from the store. "Top" is the store's exact top list; the
  importance-weighted draw is over the store's uniform sample of firing examples (one per 32-token chunk,
  weighted by peak activation ** ``iw_power``); negatives are random windows on which the latent is exactly
  zero; the last ``buffer - 7`` tokens of a window are shown but never marked (the store keeps 24 tokens
  before each peak and 7 after); the scorer's windows avoid chunks an explainer was shown.

Both: all randomness comes from ``(seed, latent)``, so the explainer and the scorer draw the same split and
the scorer's 4 positives are never among the 15 the explainer saw; an unparseable answer is counted in
``n_failed`` (SAEBench silently drops the latent).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.harvest.store import PAD_TOKEN, Example, LatentStore
from sae_lens_autointerp.records import Context, template_id
from sae_lens_autointerp.sampling import latent_rng
from sae_lens_autointerp.text import Renderer

from .dense import dense_latent_activations, saebench_tokens
from .selection import saebench_positions, torch_seed, window_values

Kind = str  # "top", "iw" (importance-weighted) or "random"


SELECTIONS = ("saebench", "clean")

#: ``sampling=`` for runs that should score every latent SAEBench scores: the core's density and rarity
#: filters off (``max_frequency`` 0.25 and ``min_activating`` 10 by default skip latents SAEBench keeps);
#: only latents that never fired are still skipped, and SAEBench drops those too.
SAEBENCH_SAMPLING: dict[str, Any] = {"max_frequency": 1.0, "min_activating": 0}


@dataclass(frozen=True)
class SAEBenchConfig:
    """SAEBench's ``AutoInterpEvalConfig`` defaults (the example counts, window and threshold).

    ``selection="saebench"`` picks windows exactly as SAEBench 0.6.0 does (dense activations recomputed over
    the store's tokens, see ``selection.py``): the numbers compare with published SAEBench scores.
    ``selection="clean"`` reads the store only and checks that negatives are silent (see
    :func:`select_examples`): a cleaner protocol whose numbers do not compare. ``temperature`` defaults to
    SAEBench's (the OpenAI default, 1.0) for "saebench" and to 0 for "clean".
    """

    n_top_ex_for_generation: int = 10
    n_iw_sampled_ex_for_generation: int = 5
    n_top_ex_for_scoring: int = 2
    n_iw_sampled_ex_for_scoring: int = 2
    n_random_ex_for_scoring: int = 10
    buffer: int = 10
    act_threshold_frac: float = 0.01
    iw_power: float = 2.0  # SAEBench's get_iw_sample_indices(use_squared_values=True); "clean" only
    use_demos_in_explanation: bool = True
    max_tokens_in_explanation: int = 30
    temperature: float | None = None  # None: 1.0 (SAEBench's) for "saebench", 0.0 for "clean"
    selection: str = "saebench"
    no_overlap: bool = True  # SAEBench's: no two top windows' centres within `buffer` in one sequence
    llm_batch_size: int = 32  # sequences per forward pass when recomputing activations ("saebench")
    max_cached_bytes: int = 2 << 30  # the SAE inputs of a store are kept in memory up to this size

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ConfigError(
                f"selection must be one of {SELECTIONS}, got {self.selection!r} ('saebench' matches SAEBench, "
                "'clean' checks negatives)"
            )
        if self.temperature is None:
            object.__setattr__(self, "temperature", 1.0 if self.selection == "saebench" else 0.0)
        counts = {
            "n_top_ex_for_generation": self.n_top_ex_for_generation,
            "n_iw_sampled_ex_for_generation": self.n_iw_sampled_ex_for_generation,
            "n_top_ex_for_scoring": self.n_top_ex_for_scoring,
            "n_iw_sampled_ex_for_scoring": self.n_iw_sampled_ex_for_scoring,
            "n_random_ex_for_scoring": self.n_random_ex_for_scoring,
            "llm_batch_size": self.llm_batch_size,
            "max_cached_bytes": self.max_cached_bytes,
        }
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if self.n_top_ex_for_generation + self.n_iw_sampled_ex_for_generation < 1:
            raise ConfigError("the explainer needs at least one example: set n_top_ex_for_generation >= 1")
        if self.n_ex_for_scoring < 1:
            raise ConfigError("the scorer needs at least one example: set n_random_ex_for_scoring >= 1")
        if not isinstance(self.buffer, int) or self.buffer < 0:
            raise ConfigError(f"buffer must be a non-negative integer, got {self.buffer!r}")
        if self.selection == "saebench" and (self.buffer < 1 or self.llm_batch_size < 1):
            raise ConfigError("the 'saebench' selection needs buffer >= 1 and llm_batch_size >= 1 (SAEBench's slices)")
        if not 0.0 <= self.act_threshold_frac < 1.0:
            raise ConfigError(f"act_threshold_frac must be in [0, 1), got {self.act_threshold_frac}")
        if self.iw_power < 0:
            raise ConfigError(f"iw_power must be >= 0, got {self.iw_power}")
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature <= 2:
            raise ConfigError(f"temperature must be a number in [0, 2], got {self.temperature!r}")

    @property
    def n_top_ex(self) -> int:
        return self.n_top_ex_for_generation + self.n_top_ex_for_scoring

    @property
    def n_iw_sampled_ex(self) -> int:
        return self.n_iw_sampled_ex_for_generation + self.n_iw_sampled_ex_for_scoring

    @property
    def n_ex_for_scoring(self) -> int:
        return self.n_top_ex_for_scoring + self.n_iw_sampled_ex_for_scoring + self.n_random_ex_for_scoring

    @property
    def n_correct_for_scoring(self) -> int:
        return self.n_top_ex_for_scoring + self.n_iw_sampled_ex_for_scoring

    @property
    def max_tokens_in_prediction(self) -> int:
        return 2 * self.n_ex_for_scoring + 5

    @property
    def width(self) -> int:
        return 2 * self.buffer + 1


@dataclass(frozen=True)
class BenchExample:
    """One SAEBench window. ``activations`` is NaN where the store does not know the activation."""

    kind: Kind
    token_id: int  # the peak token (top / iw) or the first token of the window (random)
    value: float  # the latent's largest activation in the window (0 for random windows)
    tokens: np.ndarray  # int32 [width], -1 = padding (outside the sequence)
    activations: np.ndarray  # float32 [width]
    label: bool  # what the scorer counts as the right answer
    #: whether the latent really exceeds the activation threshold in the window (None: unknown). With
    #: "saebench" random windows are labelled negative unchecked, so ``fires`` may be True where ``label`` is not.
    fires: bool | None = None
    position: tuple[int, int] | None = None  # "saebench": (row of the dense activations, centre)


@dataclass(frozen=True)
class BenchSet:
    """The explainer's windows (strongest first) and the scorer's (top, iw, random; not shuffled yet)."""

    latent: int
    generation: tuple[BenchExample, ...]
    scoring: tuple[BenchExample, ...]
    act_threshold: float
    notes: tuple[str, ...] = field(default_factory=tuple)
    selection: str = "clean"
    skipped: str | None = None  # "saebench": why SAEBench would skip the latent (no windows then)


def select_examples(
    store: LatentStore,
    latent: int,
    seed: int,
    config: SAEBenchConfig,
    exclude_token_ids: Iterable[int] = (),
) -> BenchSet:
    """The "clean" protocol's generation and scoring windows of ``latent`` (deterministic in ``seed`` and
    ``latent``), read from the store: silent negatives, the store's top list and uniform sample.

    ``exclude_token_ids`` are peaks an explainer has already shown: their chunks never become scoring
    windows (when the explanation came from the "saebench" explainer they are exactly its 15 windows, and
    the selection is unchanged).
    """
    latent = store.check_latent(latent)
    settings = store.settings

    def chunk(token_id: int) -> tuple[int, int]:
        seq, pos = divmod(int(token_id), settings.ctx_len)
        return seq, pos // settings.example_len

    excluded = {chunk(t) for t in exclude_token_ids}
    notes: list[str] = []
    top_all = store.top_examples(latent)
    if not top_all:
        return BenchSet(latent, (), (), 0.0, ("the latent never fired on the harvested tokens",))
    act_threshold = config.act_threshold_frac * float(top_all[0].value)

    # Top windows: a random split of the n_top_ex strongest into generation / scoring.
    top = top_all[: config.n_top_ex]
    split = latent_rng(seed, latent, "saebench/top")
    order = [top[i] for i in split.permutation(len(top))]
    top_gen = order[: config.n_top_ex_for_generation]
    fallback = order[: config.n_top_ex_for_generation] + top_all[config.n_top_ex :]
    top_score = _pick(order[config.n_top_ex_for_generation :] + fallback, excluded, chunk, config.n_top_ex_for_scoring)
    if len(top) < config.n_top_ex:
        notes.append(f"only {len(top)} top windows (wanted {config.n_top_ex})")

    # Importance-weighted windows: below the smallest top activation, weight = value ** iw_power.
    top_chunks = {chunk(e.token_id) for e in top}
    ceiling = min(float(e.value) for e in top)
    pool = [e for e in store.stratified_examples(latent) if chunk(e.token_id) not in top_chunks and e.value < ceiling]
    drawn = _weighted_draw(pool, config.n_iw_sampled_ex, config.iw_power, latent_rng(seed, latent, "saebench/iw"))
    iw_gen = drawn[: config.n_iw_sampled_ex_for_generation]
    iw_score = _pick(
        drawn[config.n_iw_sampled_ex_for_generation :] + iw_gen, excluded, chunk, config.n_iw_sampled_ex_for_scoring
    )
    if len(iw_score) < config.n_iw_sampled_ex_for_scoring:
        used = {chunk(e.token_id) for e in drawn} | excluded
        rest = [e for e in pool if chunk(e.token_id) not in used]
        need = config.n_iw_sampled_ex_for_scoring - len(iw_score)
        iw_score += _weighted_draw(rest, need, config.iw_power, latent_rng(seed, latent, "saebench/iw-extra"))
    if len(drawn) < config.n_iw_sampled_ex:
        notes.append(
            f"only {len(pool)} firing windows below the top ones; drew {len(drawn)} of {config.n_iw_sampled_ex}"
        )
    if len(iw_score) < config.n_iw_sampled_ex_for_scoring:
        notes.append(
            f"{len(iw_score)} importance-weighted scoring windows (wanted {config.n_iw_sampled_ex_for_scoring})"
        )

    # Random windows where the latent is exactly zero.
    candidates = [w for w in store.random_windows() if not np.any(w.latents == latent)]
    pick = latent_rng(seed, latent, "saebench/random").permutation(len(candidates))[: config.n_random_ex_for_scoring]
    random_score = [candidates[i] for i in sorted(pick)]
    if len(random_score) < config.n_random_ex_for_scoring:
        notes.append(f"only {len(random_score)} random windows where the latent is silent")

    def firing(kind: Kind, ex: Example) -> BenchExample:
        tokens, acts = _window(store, ex, config.buffer)
        known = acts[np.isfinite(acts)]
        label = bool(np.any(known > act_threshold))
        return BenchExample(kind, ex.token_id, float(ex.value), tokens, acts, label, fires=label)

    def silent(window: Any) -> BenchExample:
        n = min(config.width, len(window.tokens))
        return BenchExample(
            "random",
            int(window.start_id),
            0.0,
            np.asarray(window.tokens[:n], dtype=np.int32),
            np.zeros(n, dtype=np.float32),
            False,
            fires=False,
        )

    generation = [firing("top", e) for e in top_gen] + [firing("iw", e) for e in iw_gen]
    generation.sort(key=lambda b: (-b.value, b.token_id))  # SAEBench shows the strongest first
    scoring = (
        [firing("top", e) for e in top_score] + [firing("iw", e) for e in iw_score] + [silent(w) for w in random_score]
    )
    return BenchSet(latent, tuple(generation), tuple(scoring), act_threshold, tuple(notes))


def select_saebench(
    store: LatentStore, model: Any, sae: Any, latent: int, seed: int, config: SAEBenchConfig
) -> BenchSet:
    """SAEBench 0.6.0's windows of ``latent`` (``gather_data``), on activations recomputed over the store's
    complete sequences (see ``dense.py`` and ``selection.py``). Deterministic in ``seed`` and ``latent``.

    ``token_id`` of every window is its centre as a global store id (sequence * ctx_len + position).
    """
    if config.selection != "saebench":
        raise ConfigError(f"select_saebench needs selection='saebench', got {config.selection!r}")
    acts = dense_latent_activations(
        store, model, sae, latent, batch_size=config.llm_batch_size, max_cached_bytes=config.max_cached_bytes
    ).cpu()
    tokens, seq_of_row = saebench_tokens(store)
    generator = torch.Generator().manual_seed(torch_seed(seed, latent))
    found = saebench_positions(
        acts,
        generator,
        n_top_ex=config.n_top_ex,
        n_iw_sampled_ex=config.n_iw_sampled_ex,
        n_random_ex=config.n_random_ex_for_scoring,
        buffer=config.buffer,
        no_overlap=config.no_overlap,
        act_threshold_frac=config.act_threshold_frac,
    )
    threshold = found.act_threshold
    if found.skipped is not None:
        return BenchSet(latent, (), (), threshold, (found.skipped,), "saebench", found.skipped)
    ctx_len = store.settings.ctx_len

    def windows(kind: Kind, positions: tuple[tuple[int, int], ...], labelled: bool) -> list[BenchExample]:
        toks = window_values(tokens, positions, config.buffer).astype(np.int32)
        values = window_values(acts, positions, config.buffer)
        out = []
        for (row, centre), t, v in zip(positions, toks, values):
            fires = bool(np.any(v.astype(np.float64) > threshold))
            out.append(
                BenchExample(
                    kind,
                    int(seq_of_row[row]) * ctx_len + centre,
                    float(v.max()),
                    t,
                    v if labelled else np.zeros_like(v),
                    fires if labelled else False,
                    fires=fires,
                    position=(row, centre),
                )
            )
        return out

    top = windows("top", found.top, True)
    iw = windows("iw", found.iw, True)
    n_top_gen, n_iw_gen = config.n_top_ex_for_generation, config.n_iw_sampled_ex_for_generation
    generation = [top[i] for i in found.top_split[:n_top_gen]] + [iw[i] for i in found.iw_split[:n_iw_gen]]
    generation.sort(key=lambda b: -float(b.activations.max()))  # stable, as SAEBench's sorted(max(acts))
    scoring = (
        [top[i] for i in found.top_split[n_top_gen:]]
        + [iw[i] for i in found.iw_split[n_iw_gen:]]
        + windows("random", found.random, False)
    )
    notes = []
    n_firing = sum(1 for b in scoring if b.kind == "random" and b.fires)
    if n_firing:
        notes.append(f"{n_firing} random window(s) labelled negative where the latent fires (SAEBench's rule)")
    return BenchSet(latent, tuple(generation), tuple(scoring), threshold, tuple(notes), "saebench")


_selections: weakref.WeakKeyDictionary[LatentStore, dict[tuple[Any, ...], BenchSet]] = weakref.WeakKeyDictionary()
_selections_guard = threading.Lock()


def select_for(ctx: Context, latent: int, config: SAEBenchConfig, exclude_token_ids: Iterable[int] = ()) -> BenchSet:
    """The windows of ``latent`` under ``config.selection`` ("saebench": :func:`select_saebench`, computed once
    per store, model, SAE, seed and config and shared by the explainer and the scorer; "clean":
    :func:`select_examples`, with ``exclude_token_ids`` kept out of the scoring windows)."""
    if config.selection == "clean":
        return select_examples(ctx.store, latent, ctx.seed, config, exclude_token_ids=exclude_token_ids)
    key = (id(ctx.model), id(ctx.sae), int(latent), int(ctx.seed), config)
    with _selections_guard:
        cached = _selections.get(ctx.store, {}).get(key)
    if cached is None:
        cached = select_saebench(ctx.store, ctx.model, ctx.sae, latent, ctx.seed, config)
        with _selections_guard:
            _selections.setdefault(ctx.store, {})[key] = cached
    return cached


def _pick(candidates: Sequence[Example], excluded: set, chunk: Any, k: int) -> list[Example]:
    out, seen = [], set()
    for ex in candidates:
        key = chunk(ex.token_id)
        if key in excluded or key in seen:
            continue
        seen.add(key)
        out.append(ex)
        if len(out) == k:
            break
    return out


def _weighted_draw(pool: Sequence[Example], k: int, power: float, rng: np.random.Generator) -> list[Example]:
    """``k`` examples without replacement, P(example) proportional to ``value ** power`` (in draw order)."""
    weights = np.array([max(float(e.value), 0.0) for e in pool], dtype=np.float64) ** power
    ok = np.flatnonzero(weights > 0)
    k = min(k, len(ok))
    if k == 0:
        return []
    p = weights[ok] / weights[ok].sum()
    chosen = rng.choice(ok, size=k, replace=False, p=p)
    return [pool[int(i)] for i in chosen]


def _window(store: LatentStore, ex: Example, buffer: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens ``[peak - buffer, peak + buffer]`` and the latent's activations on them (NaN where unknown)."""
    s = store.settings
    width = 2 * buffer + 1
    seq, peak = divmod(int(ex.token_id), s.ctx_len)
    tokens = np.full(width, PAD_TOKEN, dtype=np.int32)
    lo, hi = max(peak - buffer, 0), min(peak + buffer + 1, s.ctx_len)
    if seq < store.n_sequences and hi > lo:
        tokens[lo - (peak - buffer) : hi - (peak - buffer)] = store.tokens[seq, lo:hi]
    acts = np.full(width, np.nan, dtype=np.float32)
    peak_index = ex.peak_index if ex.peak_index is not None else 0  # a random window: token_id is its start
    for j in range(width):
        i = j - buffer + peak_index  # index of window position j in the stored example
        if 0 <= i < len(ex.activations):
            acts[j] = ex.activations[i]
    acts[tokens == PAD_TOKEN] = 0.0
    return tokens, acts


def render(
    example: BenchExample, renderer: Renderer, *, mark: bool, act_threshold: float, keep_special: bool = False
) -> str:
    """A window as SAEBench shows it: active tokens marked ``<<tok>>`` one by one, newlines as "↵".

    ``keep_special=True`` ("saebench"): every token is shown, special ones included, each decoded alone as
    TransformerLens' ``to_str_tokens`` does (SAEBench's ``Example.str_toks``); else the renderer's pieces
    (padding and special tokens dropped).
    """
    if keep_special:
        ids = [[int(t)] for t in example.tokens.tolist() if t != PAD_TOKEN]
        acts = [float(a) for t, a in zip(example.tokens.tolist(), example.activations.tolist()) if t != PAD_TOKEN]
        pieces_in = renderer.tokenizer.batch_decode(ids, clean_up_tokenization_spaces=False)
        tokens_acts = list(zip(pieces_in, acts))
    else:
        special = list(getattr(renderer.tokenizer, "all_special_ids", None) or [])
        shown = renderer.render(
            Example(
                latent=None,
                tokens=np.where(np.isin(example.tokens, special), PAD_TOKEN, example.tokens),
                activations=example.activations,
                value=example.value,
                token_id=example.token_id,
                source=example.kind,
            )
        )
        tokens_acts = list(zip(shown.tokens, shown.activations))
    pieces = [
        f"<<{tok}>>" if mark and act > act_threshold else tok  # NaN (unknown) compares False: never marked
        for tok, act in tokens_acts
    ]
    return "".join(pieces).replace("\ufffd", "").replace("\n", "\u21b5")


# Prompt texts: SAEBench's own wording (MIT licence), kept verbatim so that numbers stay comparable.
GENERATION_SYSTEM = (
    "We're studying neurons in a neural network. Each neuron activates on some particular word/words/substring/"
    "concept in a short document. The activating words in each document are indicated with << ... >>. We will give "
    "you a list of documents on which the neuron activates, in order from most strongly activating to least "
    "strongly activating. Look at the parts of the document the neuron activates for and summarize in a single "
    "sentence what the neuron is activating on. Try not to be overly specific in your explanation. Note that some "
    "neurons will activate only on specific words or substrings, but others will activate on most/all words in a "
    "sentence provided that sentence contains some particular concept. Your explanation should cover most or all "
    "activating words (for example, don't give an explanation which is specific to a single word if all words in "
    "a sentence cause the neuron to activate). Pay attention to things like the capitalization and punctuation of "
    "the activating words or concepts, if that seems relevant. Keep the explanation as short and simple as "
    "possible, limited to 20 words or less. Omit punctuation and formatting. You should avoid giving long lists "
    "of words."
)
GENERATION_DEMOS = (
    ' Some examples: "This neuron activates on the word \'knows\' in rhetorical questions", and "This neuron '
    'activates on verbs related to decision-making and preferences", and "This neuron activates on the '
    "substring 'Ent' at the start of words\", and \"This neuron activates on text about government economic "
    'policy".'
)
GENERATION_FORM = 'Your response should be in the form "This neuron activates on...".'
GENERATION_USER = "The activating documents are given below:\n\n{examples}"
SCORING_SYSTEM = (
    "We're studying neurons in a neural network. Each neuron activates on some particular word/words/substring/"
    "concept in a short document. You will be given a short explanation of what this neuron activates for, and "
    "then be shown {n} example sequences in random order. You will have to return a comma-separated list of the "
    "examples where you think the neuron should activate at least once, on ANY of the words or substrings in the "
    'document. For example, your response might look like "{demo}". Try not to be overly specific in your '
    "interpretation of the explanation. If you think there are no examples where the neuron will activate, you "
    'should just respond with "None". You should include nothing else in your response other than '
    'comma-separated numbers or the word "None" - this is important.'
)
SCORING_USER = "Here is the explanation: this neuron fires on {explanation}.\n\nHere are the examples:\n\n{examples}"

GENERATION_PROMPT_ID = template_id("saebench", GENERATION_SYSTEM, GENERATION_DEMOS, GENERATION_FORM, GENERATION_USER)
SCORING_PROMPT_ID = template_id("saebench", SCORING_SYSTEM, SCORING_USER)


def generation_messages(texts: Sequence[str], config: SAEBenchConfig) -> list[dict[str, str]]:
    system = GENERATION_SYSTEM + (GENERATION_DEMOS if config.use_demos_in_explanation else GENERATION_FORM)
    listing = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(texts))
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": GENERATION_USER.format(examples=listing)},
    ]


def scoring_messages(explanation: str, texts: Sequence[str], demo: Sequence[int]) -> list[dict[str, str]]:
    system = SCORING_SYSTEM.format(n=len(texts), demo=", ".join(str(i) for i in demo))
    listing = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(texts))
    user = SCORING_USER.format(explanation=explanation, examples=listing)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_explanation(text: str) -> str | None:
    """What follows the last "activates on", without a final full stop (SAEBench's rule); None if empty."""
    out = (text or "").split("activates on")[-1].strip().rstrip(".").strip()
    return out or None


def parse_predictions(text: str) -> list[int] | None:
    """SAEBench's rule: "None" / empty -> [], a comma (or "and") separated list of integers -> the list,
    anything else -> None (a parse failure)."""
    cleaned = (text or "").strip().rstrip(".").replace("and", ",").replace("None", "")
    parts = [p.strip() for p in cleaned.split(",") if p.strip()]
    if not all(p.isascii() and p.isdigit() for p in parts):
        return None
    return [int(p) for p in parts]

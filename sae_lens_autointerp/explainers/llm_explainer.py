"""LLM explainers: default, chain-of-thought and contrastive prompts.

Examples are shown with the tokens at or above ``highlight_threshold`` x the example's maximum wrapped in
``<<`` ``>>`` (Bills et al. / Paulo et al.), optionally followed by the marked tokens' activations as integers
0-10 relative to the largest activation shown. The contrastive variant also shows non-activating examples.
The answer's last ``Explanation:`` line is the explanation; an unparseable answer is retried once with a
reminder, then recorded as a failed explanation (never scored). What is kept of an answer (``raw``, and the
answer shown again in the retry prompt) is cut to :data:`RAW_KEEP_CHARS` characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..negatives import silent_windows
from ..records import Context, Explanation, template_id
from ..sampling import LatentSample, activating_spans, latent_rng, shown_windows
from ..text import RenderedExample, active_mask, discretize, highlight

SYSTEM = (
    "You study a neuron in a language model. You get text excerpts; tokens where the neuron fires are "
    "marked <<like this>>. Find what the marked tokens and their contexts have in common."
)
ANSWER_FORMAT = "Reply with one line: Explanation: <a short description, at most 15 words, of what the neuron detects>"
COT_FORMAT = (
    "First list, briefly, the marked tokens and what surrounds them; then say what they share. "
    "End with one line: Explanation: <a short description, at most 15 words>"
)
CONTRAST_NOTE = "Examples where the neuron does NOT fire (nothing marked) are shown too; use the contrast."
REMINDER = "Your answer was not usable ({reason}). " + ANSWER_FORMAT
RETRY_TEMPERATURE = 0.7

_SENTENCE_RE = re.compile(r"(.+?[.!?])(?:\s|$)|(.+)$")
_EXPLANATION_RE = re.compile(r"^\W*explanation\W*:\s*(.*)$", re.IGNORECASE | re.MULTILINE)
_REFUSAL_RE = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry\b|i apologi[sz]e|i cannot|i can'?t|i can not|i'?m (not able|unable)|"
    r"i am (not able|unable)|i do not know|i don'?t know|as an ai\b|unfortunately\b|i'?m afraid)",
    re.IGNORECASE,
)
_FILLER_RE = re.compile(r"^\W*(sure|okay|ok|certainly|of course|here is|here's|here are|yes|no)\b\W*", re.IGNORECASE)
_PLACEHOLDER_RE = re.compile(r"(?<!<)<(?!<)[^<>]{3,}(?<!>)>(?!>)")  # a template slot like <a short description>
_MARKED_ONLY_RE = re.compile(r"^\W*<<[^<>]*>>\W*$")
_LIST_MARKER_RE = re.compile(r"^\s*(\(?\d+[.)]|[-*\u2022]|\(?[a-z][.)])?\s*$", re.IGNORECASE)
#: Phrases of our own prompts; an "explanation" made of them echoes the prompt instead of describing the latent.
_PROMPT_PHRASES = (SYSTEM, ANSWER_FORMAT, COT_FORMAT, CONTRAST_NOTE)
MAX_WORDS, MAX_CHARS = 40, 300
#: How much of an answer is kept in a record's ``raw`` and sent back in the retry prompt: a server that ignores
#: max_tokens must not fill results.jsonl, nor the next prompt, with megabytes.
RAW_KEEP_CHARS = 4000


def clip_answer(text: str) -> str:
    """``text``, cut to its first RAW_KEEP_CHARS characters, saying how many were cut."""
    if len(text) <= RAW_KEEP_CHARS:
        return text
    return f"{text[:RAW_KEEP_CHARS]} [... {len(text) - RAW_KEEP_CHARS:,} more characters cut]"


@dataclass(frozen=True)
class ParsedExplanation:
    """What :func:`check_explanation` made of an answer: ``text`` (None when unusable) and ``reason``."""

    text: str | None
    reason: str | None = None
    how: str | None = None  # "labelled" or "first-sentence"


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9<>]+", text.lower())


def _echoes(candidate: str, prompt: str) -> bool:
    """Most of the candidate's word trigrams (or the whole of a short one) occur in the prompt's own text."""
    words, source = _words(candidate), " " + " ".join(_words(prompt)) + " "
    if len(words) < 3:
        return len(words) > 1 and f" {' '.join(words)} " in source
    grams = [" ".join(words[i : i + 3]) for i in range(len(words) - 2)]
    return sum(f" {g} " in source for g in grams) >= 0.5 * len(grams)


def check_explanation(answer: str, prompt: str = "") -> ParsedExplanation:
    """The explanation in an LLM answer, or why there is none usable.

    Rejected, each with its reason: an empty answer; a refusal ("I'm sorry", "I cannot", ...); an echo of the
    answer template (``<a short description ...>``) or of the prompt's instructions (``prompt``: the text of
    the instructions, without the examples, plus our own template phrases); text that is only marked tokens
    (``<<...>>``) or only a list marker (``1.``); filler ("Sure!"); more than 40 words / 300 characters; a
    repetition loop or one phrase restated (:func:`degenerate`).
    The last ``Explanation:`` line wins; an answer without one is accepted only as one short sentence
    (``how="first-sentence"``)."""
    answer = (answer or "").strip()
    if not answer:
        return ParsedExplanation(None, "empty answer")
    if _REFUSAL_RE.match(answer):
        return ParsedExplanation(None, f"refusal: {answer[:60]!r}")
    labelled = [m for m in _EXPLANATION_RE.findall(answer)]
    if labelled:
        candidate, how = labelled[-1], "labelled"
    else:
        lines = [line for line in answer.splitlines() if line.strip()]
        first = _SENTENCE_RE.match(lines[0].strip()) if lines else None
        candidate, how = ((first.group(1) or first.group(2) or "") if first else ""), "first-sentence"
    candidate = candidate.strip().strip("\"'`*").strip()
    if not candidate:
        return ParsedExplanation(None, "empty explanation")
    if _REFUSAL_RE.match(candidate):
        return ParsedExplanation(None, f"refusal: {candidate[:60]!r}")
    if _PLACEHOLDER_RE.search(candidate):
        return ParsedExplanation(None, f"echo of the answer template: {candidate[:60]!r}")
    if _MARKED_ONLY_RE.match(candidate):
        return ParsedExplanation(None, f"only marked tokens, not a description: {candidate[:60]!r}")
    if "like this>>" in candidate.lower() or _echoes(candidate, " ".join((prompt, *_PROMPT_PHRASES))):
        return ParsedExplanation(None, f"echo of the prompt: {candidate[:60]!r}")
    bare = re.sub(r"<<|>>", "", candidate)
    if _LIST_MARKER_RE.match(bare) or not re.search(r"[^\W\d_]{2,}", bare):
        return ParsedExplanation(None, f"a bare list marker or symbols, not a description: {candidate[:60]!r}")
    if how == "first-sentence" and (_FILLER_RE.match(candidate) and len(_words(candidate)) <= 6):
        return ParsedExplanation(None, f"filler, not a description: {candidate[:60]!r}")
    if len(candidate.split()) > MAX_WORDS or len(candidate) > MAX_CHARS:
        return ParsedExplanation(None, f"too long ({len(candidate.split())} words); the format asks for at most 15")
    loop = degenerate(candidate)
    if loop is not None:
        return ParsedExplanation(None, f"{loop}: {candidate[:60]!r}")
    return ParsedExplanation(candidate, None, how)


#: Words whose repeats say nothing ("of the" three times is English, not a loop).
_FUNCTION_WORDS = frozenset(
    "a an the of in on at to for from by with and or is are was be that this which it its as".split()
)


def degenerate(text: str) -> str | None:
    """Why ``text`` is a degenerate answer rather than a description, or None: the whole of it one phrase said
    again ("commas, commas"; "month names month names"), or a repetition loop as small models write them: a
    phrase of 4-8 words twice ("the horizontal position of the view, which ... the horizontal position of the
    view") or of 2-3 words three times, unless those are function words alone ("of the")."""
    words = _words(text)
    n = len(words)
    for period in range(1, n // 2 + 1):
        if all(words[i] == words[i + period] for i in range(n - period)):
            return f"one phrase restated ({' '.join(words[:period])!r} {n // period} times), not a description"
    for size in range(8, 1, -1):  # the longest repeated phrase names the loop
        counts: dict[tuple[str, ...], int] = {}
        for i in range(n - size + 1):
            gram = tuple(words[i : i + size])
            counts[gram] = counts.get(gram, 0) + 1
            if counts[gram] >= (2 if size >= 4 else 3) and not set(gram) <= _FUNCTION_WORDS:
                return f"a repetition loop ({' '.join(gram)!r} {counts[gram]} times or more)"
    return None


def parse_explanation(text: str) -> str | None:
    """The explanation in an LLM answer, or None when there is no usable one (see :func:`check_explanation`)."""
    return check_explanation(text).text


def instructions(messages: list[dict[str, str]]) -> str:
    """The prompt's own words: system message and user lines that are not numbered examples."""
    out = []
    for m in messages:
        if m["role"] == "system":
            out.append(m["content"])
        elif m["role"] == "user":
            out += [line for line in m["content"].splitlines() if not re.match(r"^\s*(\d+\.|activations:)", line)]
    return "\n".join(out)


class LLMExplainer:
    """``style`` is ``"default"``, ``"cot"`` (chain of thought) or ``"contrastive"``."""

    def __init__(
        self,
        style: str = "default",
        *,
        show_activations: bool = False,
        highlight_threshold: float = 0.3,
        n_contrast: int = 10,
        max_tokens: int | None = None,
        temperature: float = 0.0,
    ) -> None:
        if style not in ("default", "cot", "contrastive"):
            raise ValueError(f"style must be 'default', 'cot' or 'contrastive', got {style!r}")
        self.style = style
        self.name = {"default": "default", "cot": "chain-of-thought", "contrastive": "contrastive"}[style]
        self.show_activations = show_activations
        self.highlight_threshold = highlight_threshold
        self.n_contrast = n_contrast
        self.max_tokens = max_tokens or (400 if style == "cot" else 60)
        self.temperature = temperature
        self.prompt_id = template_id(SYSTEM, ANSWER_FORMAT, COT_FORMAT, CONTRAST_NOTE, style, str(show_activations))

    def build_messages(self, sample: LatentSample, ctx: Context) -> list[dict[str, str]]:
        shown = [ctx.renderer.render(e) for e in sample.explain]
        max_act = max((max(r.activations, default=0.0) for r in shown), default=0.0)
        lines = [self._format(i + 1, r, max_act) for i, r in enumerate(shown)]
        parts = ["Examples where the neuron fires:", *lines]
        if self.style == "contrastive":
            parts += ["", CONTRAST_NOTE, "Examples where it does not fire:"]
            for j, window in enumerate(self.contrast_windows(sample, ctx)):
                toks = [ctx.renderer.piece(int(t)) for t in window.tokens if t >= 0]
                parts.append(f"{j + 1}. " + "".join(toks).replace("\n", "\\n"))
        parts += ["", COT_FORMAT if self.style == "cot" else ANSWER_FORMAT]
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(parts)}]

    def contrast_windows(self, sample: LatentSample, ctx: Context) -> list[Any]:
        """The contrastive style's silent pool windows, the same on every call: they touch neither an activating
        window nor any test example (the scored negatives stay unseen), drawn like the random negatives."""
        if self.style != "contrastive":
            return []
        rng = latent_rng(ctx.seed, sample.latent, "contrast")
        ctx_len = ctx.store.settings.ctx_len
        avoid = activating_spans(ctx.store, sample.latent)
        for e in sample.explain + sample.test:
            avoid.add(*e.span(ctx_len))
        pool, _ = silent_windows(ctx.store, sample.latent, avoid)
        pick = rng.permutation(len(pool))[: self.n_contrast]
        return [pool[i] for i in sorted(pick)]

    def _format(self, index: int, example: RenderedExample, max_act: float) -> str:
        marked = active_mask(example, self.highlight_threshold)
        line = f"{index}. {highlight(example.tokens, marked)}"
        if self.show_activations:
            levels = discretize(example.activations, max_act)
            pairs = [
                f"{example.tokens[i].strip() or repr(example.tokens[i])} ({levels[i]})" for i in np.flatnonzero(marked)
            ]
            line += "\n   activations: " + ", ".join(pairs)
        return line

    async def explain(self, sample: LatentSample, ctx: Context) -> Explanation:
        if ctx.llm is None:
            raise ValueError(f"the {self.name} explainer needs an LLM (llm=...)")
        messages = self.build_messages(sample, ctx)
        shown = tuple(e.token_id for e in sample.explain)
        out = await ask_for_explanation(
            ctx,
            messages,
            sample.latent,
            self.name,
            self.prompt_id,
            shown,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        )
        # the silent windows were shown too: a later score() on this corpus keeps them out of its negatives
        windows = [*sample.explain, *self.contrast_windows(sample, ctx)]
        return replace(out, shown_spans=shown_windows(ctx.store, windows))


async def ask_for_explanation(
    ctx: Context,
    messages: list[dict[str, str]],
    latent: int,
    explainer: str,
    prompt_id: str,
    shown: tuple[int, ...],
    *,
    max_tokens: int,
    temperature: float,
) -> Explanation:
    """Ask ``ctx.llm``; an unusable answer (see :func:`check_explanation`) is retried once with a reminder
    that names the problem, at temperature >= 0.7 and another seed, so the retry can differ from the first
    answer (both are kept in the response cache); then it is recorded as a failed explanation with its
    reason (never scored). Transport errors propagate: the latent is left for the next run."""
    assert ctx.llm is not None
    raws: list[str] = []
    reasons: list[str] = []
    prompt = instructions(messages)
    for attempt in range(2):
        response = await ctx.llm.chat(
            messages,
            max_tokens=max_tokens,
            stage="explain",
            latent=latent,
            temperature=temperature if attempt == 0 else max(temperature, RETRY_TEMPERATURE),
            seed=None if attempt == 0 else attempt,
        )
        kept = clip_answer(response.text)
        raws.append(kept)
        if response.refused:
            reason = f"refused: {response.refusal or response.finish_reason}"
        else:
            parsed = check_explanation(response.text, prompt)
            if parsed.text is not None:
                return Explanation(
                    latent, parsed.text, explainer, prompt_id, shown, kept, attempt + 1, parse=parsed.how
                )
            reason = parsed.reason or "no explanation"
        reasons.append(reason)
        messages = [
            *messages,
            {"role": "assistant", "content": kept},
            {"role": "user", "content": REMINDER.format(reason=reason)},
        ]
    return Explanation(
        latent, "", explainer, prompt_id, shown, "\n---\n".join(raws), 2, failed=True, error="; then ".join(reasons)
    )

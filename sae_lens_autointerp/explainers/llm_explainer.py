"""LLM explainers: default, chain-of-thought and contrastive prompts.

Examples are shown with the tokens at or above ``highlight_threshold`` x the example's maximum wrapped in
``<<`` ``>>`` (Bills et al. / Paulo et al.), optionally followed by the marked tokens' activations as integers
0-10 relative to the largest activation shown. The contrastive variant also shows non-activating examples.
The answer's last ``Explanation:`` line is the explanation; an unparseable answer is retried once with a
reminder, then recorded as a failed explanation (never scored).
"""

from __future__ import annotations

import re

import numpy as np

from ..records import Context, Explanation, template_id
from ..sampling import LatentSample, latent_rng
from ..text import RenderedExample, active_mask, discretize, highlight

SYSTEM = (
    "You study a neuron in a language model. You get text excerpts; tokens where the neuron fires are "
    "marked <<like this>>. Find what the marked tokens and their contexts have in common."
)
ANSWER_FORMAT = (
    "Reply with one line: Explanation: <a short description, at most 15 words, of what the neuron detects>"
)
COT_FORMAT = (
    "First list, briefly, the marked tokens and what surrounds them; then say what they share. "
    "End with one line: Explanation: <a short description, at most 15 words>"
)
CONTRAST_NOTE = "Examples where the neuron does NOT fire (nothing marked) are shown too; use the contrast."
REMINDER = "Your answer did not contain a line starting with 'Explanation:'. " + ANSWER_FORMAT

_SENTENCE_RE = re.compile(r"(.+?[.!?])(?:\s|$)|(.+)$")
_EXPLANATION_RE = re.compile(r"^\W*explanation\W*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)


def parse_explanation(text: str) -> str | None:
    """The explanation in an LLM answer, or None when there is none."""
    matches = _EXPLANATION_RE.findall(text or "")
    if matches:
        candidate = matches[-1]
    else:
        # Small models often skip the label and answer in prose: take the first sentence, if it is short.
        lines = [line for line in (text or "").strip().splitlines() if line.strip()]
        first = _SENTENCE_RE.match(lines[0].strip()) if lines else None
        candidate = (first.group(1) or first.group(2) or "") if first else ""
        if len(candidate.split()) > 40:
            candidate = ""
    candidate = candidate.strip().strip("\"'`*").strip()
    if not candidate or len(candidate) > 300:
        return None
    return candidate


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
            rng = latent_rng(ctx.seed, sample.latent, "contrast")
            negs = list(sample.test_neg)  # never the scored ones: contrast examples come from the pool
            pool = [w for w in ctx.store.random_windows() if not np.any(w.latents == sample.latent)]
            used = {e.token_id for e in negs}
            pool = [w for w in pool if w.start_id not in used]
            pick = rng.permutation(len(pool))[: self.n_contrast]
            parts += ["", CONTRAST_NOTE, "Examples where it does not fire:"]
            for j, i in enumerate(sorted(pick)):
                toks = [ctx.renderer.piece(int(t)) for t in pool[i].tokens if t >= 0]
                parts.append(f"{j + 1}. " + "".join(toks).replace("\n", "\\n"))
        parts += ["", COT_FORMAT if self.style == "cot" else ANSWER_FORMAT]
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(parts)}]

    def _format(self, index: int, example: RenderedExample, max_act: float) -> str:
        marked = active_mask(example, self.highlight_threshold)
        line = f"{index}. {highlight(example.tokens, marked)}"
        if self.show_activations:
            levels = discretize(example.activations, max_act)
            pairs = [f"{example.tokens[i].strip() or repr(example.tokens[i])} ({levels[i]})" for i in np.flatnonzero(marked)]
            line += "\n   activations: " + ", ".join(pairs)
        return line

    async def explain(self, sample: LatentSample, ctx: Context) -> Explanation:
        if ctx.llm is None:
            raise ValueError(f"the {self.name} explainer needs an LLM (llm=...)")
        messages = self.build_messages(sample, ctx)
        shown = tuple(e.token_id for e in sample.explain)
        return await ask_for_explanation(ctx, messages, sample.latent, self.name, self.prompt_id, shown,
                                         max_tokens=self.max_tokens, temperature=self.temperature)


async def ask_for_explanation(ctx: Context, messages: list[dict[str, str]], latent: int, explainer: str,
                              prompt_id: str, shown: tuple[int, ...], *, max_tokens: int,
                              temperature: float) -> Explanation:
    """Ask ``ctx.llm``; an answer without an explanation is retried once with a reminder, then recorded as a
    failed explanation (never scored). Refusals count as failures too."""
    assert ctx.llm is not None
    raws: list[str] = []
    error = None
    for attempt in range(2):
        response = await ctx.llm.chat(messages, max_tokens=max_tokens, temperature=temperature, stage="explain",
                                      latent=latent)
        raws.append(response.text)
        if response.refused:
            error = f"refused: {response.refusal or response.finish_reason}"
        else:
            text = parse_explanation(response.text)
            if text is not None:
                return Explanation(latent, text, explainer, prompt_id, shown, response.text, attempt + 1)
            error = "no explanation in the answer"
        messages = [*messages, {"role": "assistant", "content": response.text}, {"role": "user", "content": REMINDER}]
    return Explanation(latent, "", explainer, prompt_id, shown, "\n---\n".join(raws), 2, failed=True, error=error)

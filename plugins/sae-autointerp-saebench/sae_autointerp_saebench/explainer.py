"""The "saebench" explainer: SAEBench's generation prompt over 10 top + 5 importance-weighted windows."""

from __future__ import annotations

from typing import Any

from sae_lens_autointerp.records import Context, Explanation
from sae_lens_autointerp.sampling import LatentSample

from .protocol import (
    GENERATION_PROMPT_ID,
    SAEBenchConfig,
    generation_messages,
    parse_explanation,
    render,
    select_examples,
)


class SAEBenchExplainer:
    """Explains a latent exactly as SAEBench's generation phase does (see ``protocol.py``).

    The windows come from the activation store, not from ``sample.explain``: the same draw the "saebench"
    scorer makes, so its scoring windows are never among the ones shown here. Keyword arguments override
    :class:`SAEBenchConfig` fields.
    """

    name = "saebench"

    def __init__(self, **config: Any) -> None:
        self.config = SAEBenchConfig(**config)
        self.prompt_id = GENERATION_PROMPT_ID

    async def explain(self, sample: LatentSample, ctx: Context) -> Explanation:
        if ctx.llm is None:
            raise ValueError("the saebench explainer needs an LLM (llm=...)")
        bench = select_examples(ctx.store, sample.latent, ctx.seed, self.config)
        shown = tuple(b.token_id for b in bench.generation)
        if not bench.generation:
            why = "; ".join(bench.notes) or "no activating windows"
            return Explanation(sample.latent, "", self.name, self.prompt_id, failed=True, error=why)
        texts = [render(b, ctx.renderer, mark=True, act_threshold=bench.act_threshold) for b in bench.generation]
        response = await ctx.llm.chat(
            generation_messages(texts, self.config),
            max_tokens=self.config.max_tokens_in_explanation,
            temperature=self.config.temperature,
            stage="explain",
            latent=sample.latent,
        )
        if response.refused:
            error = f"refused: {response.refusal or response.finish_reason}"
            return Explanation(
                sample.latent, "", self.name, self.prompt_id, shown, response.text, failed=True, error=error
            )
        text = parse_explanation(response.text)
        if text is None:
            return Explanation(
                sample.latent,
                "",
                self.name,
                self.prompt_id,
                shown,
                response.text,
                failed=True,
                error="empty explanation",
            )
        return Explanation(sample.latent, text, self.name, self.prompt_id, shown, response.text)

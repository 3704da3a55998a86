"""The "saebench" explainer: SAEBench's generation prompt over 10 top + 5 importance-weighted windows."""

from __future__ import annotations

import asyncio
from typing import Any

from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.records import Context, Explanation
from sae_lens_autointerp.sampling import LatentSample

from .protocol import (
    GENERATION_PROMPT_ID,
    SAEBENCH_SAMPLING,
    SAEBenchConfig,
    generation_messages,
    parse_explanation,
    render,
    select_for,
)


class SAEBenchExplainer:
    """Explains a latent as SAEBench's generation phase does (see ``protocol.py``).

    The windows are not ``sample.explain``: they are the same draw the "saebench" scorer makes (with the same
    ``selection``), so its scoring windows are never among the ones shown here. ``selection="saebench"``
    (the default) picks them exactly as SAEBench 0.6.0 does, on activations recomputed with the model and
    the SAE; ``"clean"`` (the "saebench-clean" explainer) reads the store. Keyword arguments override
    :class:`SAEBenchConfig` fields.
    """

    name = "saebench"
    default_selection = "saebench"

    def __init__(self, **config: Any) -> None:
        self.config = SAEBenchConfig(**{"selection": self.default_selection, **config})
        # SAEBench scores every latent that fired (its own rule skips some): the core's density and rarity
        # filters are switched off for this run unless the user set them (pipeline.protocol_filters)
        self.latent_filters = dict(SAEBENCH_SAMPLING) if self.config.selection == "saebench" else {}
        self.prompt_id = GENERATION_PROMPT_ID

    async def explain(self, sample: LatentSample, ctx: Context) -> Explanation:
        if ctx.llm is None:
            raise ConfigError(f"the {self.name} explainer needs an LLM: pass llm=... (e.g. llm='local')")
        bench = await asyncio.to_thread(select_for, ctx, sample.latent, self.config)
        shown = tuple(b.token_id for b in bench.generation)
        if not bench.generation:
            why = "; ".join(bench.notes) or "no activating windows"
            return Explanation(sample.latent, "", self.name, self.prompt_id, failed=True, error=why)
        keep = bench.selection == "saebench"
        texts = [
            render(b, ctx.renderer, mark=True, act_threshold=bench.act_threshold, keep_special=keep)
            for b in bench.generation
        ]
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


class SAEBenchCleanExplainer(SAEBenchExplainer):
    """The "saebench-clean" explainer: SAEBench's prompt on windows read from the store (``selection="clean"``)."""

    name = "saebench-clean"
    default_selection = "clean"

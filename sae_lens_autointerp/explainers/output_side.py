"""Output-side explainers: explain a latent from what it does to the model's predictions.

Two kinds of evidence, both computed from the model and the SAE (no activating examples needed):

- *promoted tokens*: the tokens ``W_dec[i]`` raises most through the unembedding (direct path,
  ``W_dec[i] @ W_U``, with the final norm's weight when the model keeps one; see
  :func:`sae_lens_autointerp.steering.promoted_tokens`). Exact for the last layers, noisy for early ones.
- *steered tokens* (``steer=True``): the tokens whose next-token probability rises most, relative to the
  clean model (log ratio of the mean probabilities over the neutral prompts' positions, see
  :meth:`~sae_lens_autointerp.steering.Steerer.probability_shift`), when the latent is steered with ``alpha``
  calibrated to ``target_kl`` (as in intervention scoring). This includes every downstream layer.
- *ablated tokens* (``ablation=True``): on up to ``n_ablation_contexts`` of the latent's top activating contexts
  from the store, the tokens whose next-token log-probability at the peak falls most when the latent is
  removed from the SAE reconstruction (error term kept), and those that rise most (see ``ablation.py``). This is
  what the latent does where it actually fires. Contexts that share a token with the sample's test windows are
  skipped (the next ones are taken), so the scorers never test on text the evidence came from.

``"output"`` shows only these to the LLM; ``"output+examples"`` also shows the activating examples (marked
``<<like this>>``, as the default explainer does). The answer is parsed like the LLM explainers' (last
``Explanation:`` line, one retry). Without an LLM (``llm=None``) the explanation is a plain template listing
the top promoted tokens, which costs nothing and is a floor for the LLM versions; ``use_llm=False`` asks for that
template always (and lets a run go without an LLM). The torch work is recorded in
usage under stage ``"explain"`` (model = the subject model).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from ..ablation import ablation_effects
from ..errors import ConfigError
from ..local_lm import record_usage
from ..records import Context, Explanation, template_id
from ..sampling import LatentSample
from ..steering import NEUTRAL_PROMPTS, Steerer, model_name, promoted_tokens
from ..text import active_mask, highlight
from .llm_explainer import ANSWER_FORMAT, ask_for_explanation

SYSTEM = (
    "You study a neuron in a language model. You see what it does to the model's next-token predictions: "
    "the tokens it makes more likely. Find what these tokens have in common, i.e. what the neuron makes the "
    "model say."
)
SYSTEM_EXAMPLES = (
    "You study a neuron in a language model. You see the tokens it makes more likely, and text excerpts where "
    "it fires, with the tokens where it fires marked <<like this>>. Describe what the neuron does, using both."
)


ABLATION_PROMOTED = "Tokens whose probability falls most when the neuron is removed, on texts where it fires:"
ABLATION_SUPPRESSED = "Tokens whose probability rises most when the neuron is removed, on texts where it fires:"


class OutputExplainer:
    def __init__(
        self,
        with_examples: bool = False,
        *,
        n_tokens: int = 12,
        steer: bool = True,
        target_kl: float = 1.0,
        kl_tolerance: float = 0.1,
        prompts: tuple[str, ...] = NEUTRAL_PROMPTS,
        n_examples: int = 20,
        highlight_threshold: float = 0.3,
        max_tokens: int = 60,
        temperature: float = 0.0,
        use_llm: bool = True,
        ablation: bool = False,
        n_ablation_contexts: int = 8,
    ) -> None:
        self.with_examples = with_examples
        self.needs_llm = self.use_llm = use_llm
        self.name = "output+examples" if with_examples else "output"
        self.n_tokens, self.steer = n_tokens, steer
        self.target_kl, self.kl_tolerance, self.prompts = target_kl, kl_tolerance, tuple(prompts)
        self.n_examples, self.highlight_threshold = n_examples, highlight_threshold
        self.max_tokens, self.temperature = max_tokens, temperature
        self.ablation, self.n_ablation_contexts = ablation, n_ablation_contexts
        parts = [SYSTEM, SYSTEM_EXAMPLES, ANSWER_FORMAT, self.name, str(n_tokens), str(steer)]
        if ablation:  # prompts without ablation keep their ids
            parts += [ABLATION_PROMOTED, ABLATION_SUPPRESSED, f"ablation:{n_ablation_contexts}:held-out"]
        self.prompt_id = template_id(*parts)

    # ------------------------------------------------------------------ evidence

    def evidence(self, latent: int, ctx: Context, avoid: Iterable[tuple[int, int]] = ()) -> dict[str, Any]:
        """Promoted and steered tokens (ids, strings, scores), the calibration, and the tokens processed;
        ablation contexts share no token with a span of ``avoid`` (the test windows)."""
        if ctx.model is None or ctx.sae is None:
            raise ValueError(f"the {self.name} explainer needs the model and the SAE (pass model= to explain/run)")
        piece = ctx.renderer.piece
        out: dict[str, Any] = {"promoted": [], "steered": [], "calibration": None, "tokens_processed": 0}
        steerer = Steerer(ctx.model, ctx.sae)
        with steerer.lock:
            try:
                out["promoted"] = [
                    (t, piece(t), s) for t, s in promoted_tokens(ctx.model, ctx.sae, latent, self.n_tokens)
                ]
            except ConfigError as exc:  # e.g. a per-head SAE: no direct path to the logits; steering still works
                out["promoted_error"] = str(exc)
            if self.steer:
                rows = steerer.encode(self.prompts)
                clean = steerer.log_probs(rows)
                cal = steerer.calibrate(
                    latent, rows, target_kl=self.target_kl, tolerance=self.kl_tolerance, clean=clean
                )
                shift = steerer.probability_shift(rows, latent, cal.alpha, clean=clean)
                top = shift.topk(self.n_tokens)
                out["steered"] = [(int(t), piece(int(t)), float(s)) for s, t in zip(top.values, top.indices)]
                out["calibration"] = cal.to_dict()
        out["tokens_processed"] = steerer.tokens_processed
        if self.ablation:
            if ctx.store is None:
                raise ValueError(f"the {self.name} explainer with ablation=True needs the store (its contexts)")
            effects = ablation_effects(
                ctx.sae, ctx.model, ctx.store, latent, self.n_tokens, n_contexts=self.n_ablation_contexts, avoid=avoid
            )
            out["ablation_promoted"] = effects.promoted if effects.n_contexts else []
            out["ablation_suppressed"] = effects.suppressed if effects.n_contexts else []
            out["ablation_contexts"] = effects.n_contexts
            out["ablation_context_ids"] = effects.context_ids
            out["ablation_excluded"] = effects.n_excluded
            out["tokens_processed"] += effects.tokens_processed
        return out

    def build_messages(self, sample: LatentSample, ctx: Context, evidence: dict[str, Any]) -> list[dict[str, str]]:
        parts: list[str] = []
        if evidence["promoted"]:
            parts += [
                "Tokens the neuron promotes most directly (through the unembedding):",
                ", ".join(repr(s) for _, s, _ in evidence["promoted"]),
            ]
        if evidence["steered"]:
            parts += [
                "",
                "Tokens whose probability rises most (relative to before) when the neuron is amplified:",
                ", ".join(repr(s) for _, s, _ in evidence["steered"]),
            ]
        if evidence.get("ablation_promoted"):
            parts += [
                "",
                ABLATION_PROMOTED,
                ", ".join(repr(s) for _, s, _ in evidence["ablation_promoted"]),
                ABLATION_SUPPRESSED,
                ", ".join(repr(s) for _, s, _ in evidence["ablation_suppressed"]),
            ]
        if self.with_examples:
            parts += ["", "Examples where the neuron fires:"]
            for i, example in enumerate(sample.explain[: self.n_examples]):
                r = ctx.renderer.render(example)
                parts.append(f"{i + 1}. {highlight(r.tokens, active_mask(r, self.highlight_threshold))}")
        parts += ["", ANSWER_FORMAT]
        system = SYSTEM_EXAMPLES if self.with_examples else SYSTEM
        return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(parts)}]

    @staticmethod
    def template(evidence: dict[str, Any], n: int = 5) -> str:
        tokens = evidence["promoted"] or evidence["steered"] or evidence.get("ablation_promoted") or []
        words = list(dict.fromkeys(s.strip() for _, s, _ in tokens if s.strip()))[:n]
        return "promotes the tokens " + ", ".join(f'"{w}"' for w in words)

    # ------------------------------------------------------------------ explainer protocol

    async def explain(self, sample: LatentSample, ctx: Context) -> Explanation:
        test_spans = [e.span(ctx.store.settings.ctx_len) for e in sample.test] if ctx.store is not None else []
        evidence = await asyncio.to_thread(self.evidence, sample.latent, ctx, test_spans)
        record_usage(ctx, model_name(ctx.model), "explain", sample.latent, evidence["tokens_processed"])
        shown = tuple(e.token_id for e in sample.explain[: self.n_examples]) if self.with_examples else ()
        if not evidence["promoted"] and not evidence["steered"] and not evidence.get("ablation_promoted"):
            why = evidence.get("promoted_error") or "no output-side evidence (steer=False)"
            return Explanation(sample.latent, "", self.name, self.prompt_id, shown, failed=True, error=why)
        if ctx.llm is None or not self.use_llm:
            return Explanation(
                sample.latent,
                self.template(evidence),
                self.name,
                self.prompt_id,
                shown,
                raw=repr({k: evidence[k] for k in ("promoted", "steered", "ablation_promoted") if k in evidence}),
            )
        messages = self.build_messages(sample, ctx, evidence)
        return await ask_for_explanation(
            ctx,
            messages,
            sample.latent,
            self.name,
            self.prompt_id,
            shown,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        )

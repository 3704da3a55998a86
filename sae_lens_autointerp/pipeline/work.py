"""One latent's work in this process: sample it, explain it (or take its given explanation), score it with
its controls, and hand the outcome to the runner.

Failures are of two kinds. The judge's (an unparseable answer, a refusal) are counted in ``n_failed`` and the
latent finishes. Infrastructure failures (:class:`~sae_lens_autointerp.llm.LLMError`: connection errors,
timeouts after retries, malformed responses, replay-mode cache misses, the budget) never finish a latent: what
it completed (its explanation, finished scorers) goes to the runner as an ``incomplete`` record, which the next
run resumes from. A plugin that crashes or breaks the contract becomes an error entry naming it
(``contract.py``), and the rest of the latent goes on.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any

from ..controls import (
    RelabelledClient,
    choose_control,
    control_explanation,
    control_sample,
    fraction_for,
    scored_examples,
)
from ..harvest.store import LatentStore
from ..llm import BudgetExceeded, LLMError
from ..records import Context, Explanation
from ..sampling import UNKNOWN, HeldOut, LatentSample, holdout_status, sample_latent, shown_peaks, shown_windows
from ..text import Renderer
from .contract import check_output, explanation_from, failed_entry, guess_headline
from .flags import HEURISTIC_EXPLAINER, Tally, heuristic_substitute
from .plan import Plan, backend_name, provenance
from .runner import Incomplete, Outcomes, Prepared


@dataclass(frozen=True)
class RunParts:
    """A run resolved before its LLM work, from which its work is built (in this process, or in each Ray
    actor): the plan, the subject, the store, the LLM client (None when nothing needs one), the run key and
    the heuristic flags per latent (None when off)."""

    plan: Plan
    sae: Any
    model: Any
    store: LatentStore
    client: Any
    run_key: str
    flags: dict[int, dict[str, Any]] | None


class LatentWork:
    """The :class:`~.runner.Work` of a run in this process."""

    parallel = 1

    def __init__(self, parts: RunParts) -> None:
        from ..negatives import make_source

        plan = self.plan = parts.plan
        self.run_key, self.flags = parts.run_key, parts.flags
        self.ctx = Context(
            llm=parts.client,
            renderer=Renderer(plan.tokenizer),
            store=parts.store,
            seed=plan.config.seed,
            sae=parts.sae,
            model=parts.model,
            usage=parts.client.usage if parts.client is not None else plan.usage,
        )
        self.negatives = make_source(
            plan.sampling.negatives, renderer=self.ctx.renderer, sae=parts.sae, model=parts.model
        )
        self.substitute = heuristic_substitute(plan.config, parts.flags, plan.explainer_obj)
        self.tally = Tally()

    @property
    def backend(self) -> str:
        """Where the LLM is served (or its name), as the breaker names it."""
        return backend_name(self.ctx.llm)

    async def open(self) -> None:
        """Nothing to start in this process."""

    async def close(self) -> None:
        """Nothing to stop in this process (the caller closes the client it opened)."""

    def _base(self, latent: int, sample: LatentSample) -> dict[str, Any]:
        base = {"run_key": self.run_key, "latent": latent, "stats": sample.stats}
        if self.flags is not None:
            base["heuristic"] = self.flags[latent]
        return base

    async def prepare(self, latent: int, partial: dict[str, Any] | None, out: Outcomes) -> Prepared | None:
        """Sample and explain ``latent`` (what an earlier attempt finished, in ``partial``, is reused); None
        when it was written as skipped or failed."""
        resumed = explanation_from(partial["explanation"]) if partial and partial.get("explanation") else None
        given = resumed if resumed is not None or self.plan.given is None else self.plan.given.get(latent)
        # an explanation this run did not write: the windows its explainer was shown (in another call, on another
        # store of the corpus) stay out of the test (this run's own explainer windows do already)
        held_out = (
            HeldOut.of(given.shown_spans, self.ctx.store) if self.plan.given is not None and given is not None else None
        )
        args = (self.ctx.store, latent, self.plan.sampling, self.negatives, held_out)
        if getattr(self.negatives, "inline", False):
            sample = sample_latent(*args)
        else:
            sample = await asyncio.to_thread(sample_latent, *args)
        if sample.skipped:
            out.write({**self._base(latent, sample), "skipped": sample.skipped})
            return None
        if resumed is not None and partial is not None:  # (resumed comes from partial)
            return Prepared(
                sample,
                resumed,
                dict(partial.get("scores") or {}),
                dict(partial.get("controls") or {}),
            )
        explanation: Explanation | None = None
        if self.plan.given is not None:
            explanation = given
            if explanation is None:
                out.write({**self._base(latent, sample), "skipped": "no explanation given for this latent"})
                return None
        elif self.plan.explainer_obj is not None:
            try:
                flag = (self.flags or {}).get(latent, {}).get("flag")
                if self.substitute is not None and flag is not None:
                    explanation = await self._explain(sample, self.substitute, HEURISTIC_EXPLAINER)
                    self.tally.heuristic_explained.add(latent)
                else:
                    explanation = await self._explain(sample)
            except LLMError as exc:
                out.fail(latent, self._base(latent, sample), Incomplete("explain", exc))
                return None
        return Prepared(sample, explanation)

    async def finish(self, latent: int, item: Prepared, pool: dict[int, str], out: Outcomes) -> None:
        """Score a prepared latent and its controls (control explanations from ``pool``) and write it."""
        if item.sample is None:  # prepared elsewhere: sampled again here (the same sample, from its seed)
            again = await self.prepare(latent, item.state(), out)
            if again is None:
                return
            item = again
        sample, explanation = item.sample, item.explanation
        assert sample is not None
        start = time.perf_counter()
        record = self._base(latent, sample)
        record["explanation"] = explanation.to_dict() if explanation is not None else None
        given = self.plan.given is not None
        # what may be claimed of the test: held out from what the explainer saw, another corpus, or unknown
        record["holdout"] = holdout_status(explanation.shown_spans, self.ctx.store) if explanation is not None else None
        record["examples"] = {
            # a given explanation's explainer never saw this run's explainer windows (its own are in shown_spans)
            "explain": [] if given or record["holdout"] == UNKNOWN else [e.token_id for e in sample.explain],
            "test_pos": [e.token_id for e in sample.test_pos],
            "test_neg": [e.token_id for e in sample.test_neg],
            "excluded_overlap": dict(sample.holdout),
        }
        scores, controls = dict(item.scores), dict(item.controls)
        fractions = self.plan.control_fractions
        usable = explanation is not None and not explanation.failed
        controlled = usable and any(fraction_for(fractions, n) > 0 for n in self.plan.scorer_objs)
        source = choose_control(latent, pool, self.ctx.seed) if controlled else None
        failure: Incomplete | None = None
        for name, scorer in self.plan.scorer_objs.items():
            if failure is not None and getattr(scorer, "needs_llm", True):
                continue  # the backend is failing: skip this latent's other LLM scorers, still run local ones
            fraction = fraction_for(fractions, name)
            wants_control = getattr(scorer, "needs_explanation", True) and fraction > 0 and usable
            try:
                if name not in scores:
                    scores[name] = await self._score(name, scorer, sample, explanation)
                if wants_control and name not in controls:
                    controls[name] = await self._control(name, scorer, sample, source, pool, fraction, scores[name])
            except LLMError as exc:
                failure = Incomplete(name, exc)
                if isinstance(exc, BudgetExceeded):
                    break
        record["scores"], record["controls"] = scores, controls
        if failure is not None:
            out.fail(latent, record, failure)
            return
        usage = self.ctx.usage.for_latent(latent) if self.ctx.usage is not None else {}
        record["usage"] = {stage: totals.as_dict() for stage, totals in usage.items()}
        record["seconds"] = round(time.perf_counter() - start, 3)
        out.write(record)
        if self.ctx.usage is not None:  # the record holds them now: keep the tracker small on long runs
            rows = self.ctx.usage.forget_latent(latent)
            if "explain" in rows and latent not in self.tally.heuristic_explained:
                self.tally.explain_tokens += rows["explain"].total_tokens
                self.tally.n_explained += 1

    async def _explain(self, sample: LatentSample, explainer: Any = None, registered: str | None = None) -> Explanation:
        """The explainer's answer; a crash or a wrong return type becomes a failed explanation naming the plugin
        (never scored), so one broken explainer plugin does not take the run down. Transport errors and the
        budget propagate (the latent stays incomplete). ``explainer`` (registered under the name
        ``registered``) replaces the run's explainer (the heuristic explanations)."""
        explainer = explainer if explainer is not None else self.plan.explainer_obj
        name = getattr(explainer, "name", "?")
        provider = self.plan.providers["explainer"] if registered is None else provenance("explainers", registered)
        try:
            out = await explainer.explain(sample, self.ctx)
        except LLMError:
            raise
        except Exception as exc:
            error = f"crashed: {type(exc).__name__}: {exc}"
        else:
            if isinstance(out, Explanation):
                # named examples, else every one it was given (it could read them all); an explainer that
                # declares sees_examples = False (a lookup: Neuronpedia) wrote elsewhere: unknown, never held out
                if out.shown_spans is None and getattr(explainer, "sees_examples", True):
                    shown = out.examples_shown
                    store = self.ctx.store
                    spans = shown_peaks(store, shown) if shown else shown_windows(store, sample.explain)
                    out = replace(out, shown_spans=spans)
                return replace(out, provider=provider)
            error = f"returned {type(out).__name__}, not an Explanation"
        who = f"plugin {provider['plugin']!r}, " if provider else ""
        return Explanation(
            sample.latent, "", str(name), failed=True, error=f"{who}explainer {name!r} {error}", provider=provider
        )

    async def _score(
        self, name: str, scorer: Any, sample: LatentSample, explanation: Explanation | None, ctx: Context | None = None
    ) -> dict[str, Any]:
        """One scorer's output as a record entry (with its provider and its judge). A crash or an output that
        breaks the contract becomes an entry with ``error`` naming the plugin; LLM errors propagate."""
        provider = self.plan.providers["scorers"][name]
        needs_llm = getattr(scorer, "needs_llm", True)
        extra = {
            "provider": provider,
            "judge_kind": "llm" if needs_llm else "local",
            "judge": getattr(self.ctx.llm, "name", None) if needs_llm else None,
            "needs_explanation": bool(getattr(scorer, "needs_explanation", True)),
        }
        if getattr(scorer, "needs_explanation", True) and (explanation is None or explanation.failed):
            why = "no explanation" if explanation is None else f"explanation failed: {explanation.error}"
            return failed_entry(name, why, extra)
        try:
            out = await scorer.score(sample, explanation, ctx or self.ctx)
        except LLMError:
            raise
        except Exception as exc:  # one broken scorer must not take the others down
            error = f"plugin {provider['plugin']!r}, scorer {name!r} crashed: {type(exc).__name__}: {exc}"
            return failed_entry(name, error, extra)
        problem, checked = check_output(out)
        if problem is not None:
            return failed_entry(name, f"plugin {provider['plugin']!r}: scorer {name!r} {problem}", extra)
        entry = {**checked, **extra, "scorer": name}
        if entry.get("score") is not None and entry.get("metric") is None:
            entry.update(guess_headline(entry))
        return entry

    async def _control(
        self,
        name: str,
        scorer: Any,
        sample: LatentSample,
        source: int | None,
        pool: dict[int, str],
        fraction: float,
        main: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The scorer on a subset of the examples ``main`` (its score) judged, with another latent's explanation."""
        if source is None:
            return {"score": None, "error": "no other latent of this block of the run has an explanation"}
        subset = control_sample(sample, fraction, self.ctx.seed, scored_examples(main))
        ctx = replace(self.ctx, llm=RelabelledClient(self.ctx.llm)) if self.ctx.llm is not None else self.ctx
        entry = await self._score(name, scorer, subset, control_explanation(sample.latent, source, pool[source]), ctx)
        return {
            "explanation_from": source,
            "explanation": pool[source],
            **{
                k: entry.get(k)
                for k in ("score", "metric", "low", "high", "chance", "n_examples", "n_failed", "error", "predictions")
            },
        }

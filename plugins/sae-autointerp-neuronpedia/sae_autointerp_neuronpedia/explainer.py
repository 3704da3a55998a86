"""The "neuronpedia" explainer: explanations already on Neuronpedia, looked up from a downloaded export.

No LLM is called: it turns Neuronpedia explanation files (a bulk dataset's ``explanations/`` folder) into :class:`Explanation` objects, so that
Neuronpedia's explanations go through the same scorers, on the same test examples, as your own explainers'
(recorded with ``holdout="unknown"``: which examples Neuronpedia's explainer read is not known, so the test may
include them)::

    sae.autointerp.run(model, data, latents=range(100), explainer="neuronpedia",
                       explainer_kwargs={"path": "explanations/", "neuronpedia_id": "gpt2-small/8-res-jb",
                                         "type_name": "oai_token-act-pair"},
                       scorers=["detection", "fuzzing"], llm="openai:gpt-4o-mini")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sae_lens_autointerp.records import Context, Explanation
from sae_lens_autointerp.sampling import LatentSample

from .formats import iter_neuronpedia, split_neuronpedia_id


class NeuronpediaExplainer:
    name = "neuronpedia"
    needs_llm = False  # a lookup: no LLM client is created for it
    #: written on Neuronpedia from its own examples: what they were is unknown, so the run records
    #: holdout="unknown" (never presented as held out from this run's test)
    sees_examples = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        neuronpedia_id: str | None = None,
        model_id: str | None = None,
        source: str | None = None,
        type_name: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.type_name = type_name
        if neuronpedia_id:
            model_id, source = split_neuronpedia_id(neuronpedia_id)
        self.model_id, self.source = model_id, source
        # Read now, so that a wrong path fails before any harvesting; group by SAE (modelId, layer).
        self._by_sae: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
        for item in iter_neuronpedia(self.path):
            if type_name is not None and item.get("typeName") != type_name:
                continue
            key = (str(item.get("modelId", "")), str(item.get("layer", "")))
            if str(item.get("description") or "").strip():
                self._by_sae.setdefault(key, {}).setdefault(int(item["index"]), item)
        self._table: dict[int, dict[str, Any]] | None = None

    def _resolve(self, ctx: Context) -> dict[int, dict[str, Any]]:
        if self._table is not None:
            return self._table
        model_id, source = self.model_id, self.source
        keys = [
            k for k in self._by_sae if (model_id is None or k[0] == model_id) and (source is None or k[1] == source)
        ]
        if len(keys) > 1:
            np_id = _neuronpedia_id_of(ctx.sae)
            if np_id is not None:
                keys = [k for k in keys if f"{k[0]}/{k[1]}" == np_id]
        if len(keys) > 1:
            listed = ", ".join(f"{m}/{s}" for m, s in sorted(keys))
            raise ValueError(
                f"{self.path} holds explanations of several SAEs ({listed}); pass "
                "explainer_kwargs={'neuronpedia_id': 'MODEL/SOURCE'}"
            )
        self._table = self._by_sae[keys[0]] if keys else {}
        return self._table

    async def explain(self, sample: LatentSample, ctx: Context) -> Explanation:
        item = self._resolve(ctx).get(sample.latent)
        if item is None:
            return Explanation(
                sample.latent,
                "",
                self.name,
                failed=True,
                error=f"no Neuronpedia explanation of latent {sample.latent} in {self.path}",
            )
        origin = f"{item.get('typeName', '?')} by {item.get('explanationModelName', '?')}"
        return Explanation(sample.latent, str(item["description"]).strip(), self.name, prompt_id=None, raw=origin)


def _neuronpedia_id_of(sae: Any) -> str | None:
    metadata = getattr(getattr(sae, "cfg", None), "metadata", None)
    if metadata is None:
        return None
    try:
        value = metadata["neuronpedia_id"] if "neuronpedia_id" in metadata else None
    except TypeError:
        value = getattr(metadata, "neuronpedia_id", None)
    return str(value) if value else None

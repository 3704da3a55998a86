"""``sae.autointerp``: autointerp methods bound to one SAE."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sae_lens import SAE
    from typing_extensions import Unpack

    from .config import ExplainOptions, HarvestConfig, RunConfig, RunOptions, ScoreOptions
    from .harvest import HarvestOptions, LatentStore, ModuleReader
    from .harvest.corpus import CorpusLike
    from .harvest.model import SubjectModel
    from .llm.types import LLMSpec
    from .records import Explanation
    from .registry import PluginInfo
    from .results import ScoreResult


#: The keyword arguments of ``run`` / ``explain`` / ``score`` that are not RunConfig fields.
RUN_KEYWORDS = ("config", "store", "progress", "model_loader", "sae_loader")
EXPLAIN_KEYWORDS = (*RUN_KEYWORDS, "model", "dataset")
SCORE_KEYWORDS = (*RUN_KEYWORDS, "model", "dataset")


class AutointerpNamespace:
    """Autointerp methods bound to one SAE: ``sae.autointerp.harvest(...)``, ``.explain``, ``.score``.

    Created on each access of ``sae.autointerp``; it holds nothing but the SAE reference.
    """

    __slots__ = ("sae",)

    def __init__(self, sae: SAE) -> None:
        self.sae = sae

    def __repr__(self) -> str:
        return f"<autointerp namespace of {type(self.sae).__name__} d_sae={self.sae.cfg.d_sae}>"

    def harvest(
        self,
        model: SubjectModel | None = None,
        dataset: CorpusLike | None = None,
        *,
        config: HarvestConfig | None = None,
        progress: bool = True,
        hook_fn: ModuleReader | None = None,
        **options: Unpack[HarvestOptions],
    ) -> LatentStore:
        """Stream ``dataset`` through ``model`` and this SAE; see :func:`sae_lens_autointerp.harvest.harvest`.
        ``config=HarvestConfig(...)`` gives the settings as one object (keywords override its fields).
        Omitted, ``dataset`` is the SAE's training dataset (``cfg.metadata.dataset_path``) and ``model`` the
        model it was trained on (``cfg.metadata.model_name``, loaded with ``model_from_pretrained_kwargs``)."""
        from .harvest import harvest, harvest_config
        from .loading import default_dataset, default_model

        cfg = harvest_config(config, options)  # a wrong option fails before any dataset or model is loaded
        dataset = default_dataset(self.sae) if dataset is None else dataset  # before any model is loaded
        model = default_model(self.sae) if model is None else model
        return harvest(self.sae, model, dataset, config=cfg, progress=progress, hook_fn=hook_fn)

    def results(self, path: str | os.PathLike[str] | None = None) -> ScoreResult:
        """Results of a run: from ``path`` (a results.jsonl or its folder), or the latest run of this SAE
        found under the default runs folder (runs given ``out_dir=`` elsewhere need their path)."""
        from .report import load

        if path is not None:
            return load(Path(path))
        from .errors import ConfigError
        from .harvest.run import sae_fingerprint
        from .paths import cache_dir

        mine = sae_fingerprint(self.sae)["weights_sha256"]
        runs = sorted(cache_dir("runs").glob("*/run.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for run_file in runs:
            try:
                store_meta = json.loads((Path(json.loads(run_file.read_text())["store"]) / "meta.json").read_text())
            except (OSError, ValueError, KeyError):
                continue
            if store_meta.get("sae", {}).get("weights_sha256") == mine:
                return load(run_file.parent)
        raise ConfigError("no run of this SAE in the default runs folder; pass the results path")

    @property
    def plugins(self) -> list[PluginInfo]:
        """Installed plugins and what each provides."""
        from .registry import get_registry

        return get_registry().plugins()

    def run(
        self,
        model: SubjectModel | None = None,
        dataset: CorpusLike | None = None,
        *,
        config: RunConfig | None = None,
        store: LatentStore | None = None,
        progress: bool = True,
        model_loader: Callable[[], Any] | None = None,
        sae_loader: Callable[[], Any] | None = None,
        **options: Unpack[RunOptions],
    ) -> ScoreResult:
        """Explain and score latents; ``config=RunConfig(...)`` and / or keyword arguments, the fields of
        :class:`~sae_lens_autointerp.config.RunConfig` (which override the config's); see
        :func:`sae_lens_autointerp.pipeline.run`. ``executor="ray"`` (or ``config.executor``) shards the latents
        over Ray actors (:mod:`sae_lens_autointerp.distributed`), whose ``model_loader`` / ``sae_loader`` load
        a model or SAE that cannot be pickled in each actor."""
        from .pipeline import check_run_options

        opts: dict[str, Any] = check_run_options(options, "run", RUN_KEYWORDS)
        if opts.get("executor", getattr(config, "executor", "local")) == "ray":
            from .distributed import run as run_on_ray

            return run_on_ray(
                self.sae,
                model,
                dataset,
                config=config,
                store=store,
                progress=progress,
                model_loader=model_loader,
                sae_loader=sae_loader,
                **opts,
            )
        if model_loader is not None or sae_loader is not None:
            from .errors import ConfigError

            raise ConfigError("model_loader / sae_loader apply to executor='ray' (each Ray actor loads its own)")
        from .pipeline import run

        return run(self.sae, model, dataset, config=config, store=store, progress=progress, **opts)

    def explain(
        self,
        model: SubjectModel | None = None,
        dataset: CorpusLike | None = None,
        latents: Iterable[int] | int | None = None,
        llm: LLMSpec = None,
        explainer: str | None = None,
        *,
        config: RunConfig | None = None,
        store: LatentStore | None = None,
        progress: bool = True,
        model_loader: Callable[[], Any] | None = None,
        sae_loader: Callable[[], Any] | None = None,
        **options: Unpack[ExplainOptions],
    ) -> dict[int, Explanation]:
        """Explain ``latents`` of this SAE with ``llm``; returns ``{latent: Explanation}``.

        ``dataset``: HF dataset name, local file, list of strings or token tensor (harvested once, cached).
        ``llm``: ``"local"`` (the default), ``"openai:MODEL"``, ``"vllm:MODEL"`` or a client object.
        ``explainer``: any registered explainer (default ``"default"``; ``sae-autointerp plugins``). Latents
        that are dead, too rare or too dense are left out (``sae.autointerp.run(...).skipped`` says why);
        failed explanations have ``.failed`` and ``.error``. The other options are :meth:`run`'s (all but
        ``scorers``); ``config=RunConfig(...)`` works here too.
        """
        from .pipeline import check_run_options

        opts: dict[str, Any] = check_run_options(options, "explain", EXPLAIN_KEYWORDS)
        if "scorers" in opts:
            from .errors import ConfigError

            raise ConfigError("explain() scores nothing; pass scorers= to sae.score() or sae.autointerp.run()")
        given: dict[str, Any] = {
            k: v for k, v in (("latents", latents), ("llm", llm), ("explainer", explainer)) if v is not None
        }
        keywords: dict[str, Any] = dict(config=config, store=store, progress=progress)
        keywords.update(model_loader=model_loader, sae_loader=sae_loader)
        return self.run(model, dataset, scorers=(), **keywords, **given, **opts).explanations

    def score(
        self,
        model: SubjectModel | None = None,
        dataset: CorpusLike | None = None,
        explanations: Mapping[int, str | Explanation] | None = None,
        scorers: Iterable[str] | None = None,
        llm: LLMSpec = None,
        *,
        config: RunConfig | None = None,
        store: LatentStore | None = None,
        progress: bool = True,
        model_loader: Callable[[], Any] | None = None,
        sae_loader: Callable[[], Any] | None = None,
        **options: Unpack[ScoreOptions],
    ) -> ScoreResult:
        """Score ``explanations`` (``{latent: str | Explanation}``) with ``scorers`` (default detection and
        fuzzing); returns a :class:`ScoreResult` whose ``.table`` has one row per (latent, scorer) with its
        interval, chance level, control and lift. Without explanations, the latents are explained first
        (``latents=``, ``explainer=``). ``llm`` defaults to ``"local"``; the other options are :meth:`run`'s;
        ``config=RunConfig(...)`` works too."""
        from .pipeline import check_run_options

        opts: dict[str, Any] = check_run_options(options, "score", SCORE_KEYWORDS)
        if explanations is not None:
            opts.setdefault("latents", sorted(int(k) for k in explanations))
            opts["explanations"] = explanations
        given: dict[str, Any] = {k: v for k, v in (("scorers", scorers), ("llm", llm)) if v is not None}
        keywords: dict[str, Any] = dict(config=config, store=store, progress=progress)
        keywords.update(model_loader=model_loader, sae_loader=sae_loader)
        return self.run(model, dataset, **keywords, **given, **opts)


def for_sae(sae: SAE) -> AutointerpNamespace:
    """The autointerp namespace of ``sae`` (also when ``sae.autointerp`` is taken by something else)."""
    return AutointerpNamespace(sae)

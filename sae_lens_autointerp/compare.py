"""One protocol over several SAEs and baselines: ``compare({"sae": sae, "neurons": ..., "pca": ...}, model, data)``.

Cunningham et al. 2023 (their Fig. 2) and Paulo et al. 2024 compare SAE latents with neurons, PCA, ICA and
random directions by the same automated interpretability score. A comparison means something only when
everything but the SAE is held fixed, so :func:`compare` runs every SAE through the same harvest settings,
the same sampling, explainer, scorers, judge, controls and seed, and draws the same number of latents from
each in the same way: uniformly at random (seeded) among the latents that the sampling would not skip (not
dead, not too rare, not too dense). How many latents were eligible is part of the table: a basis where most
directions never fire or fire everywhere is itself a finding.

Each SAE is run by :func:`sae_lens_autointerp.pipeline.run` into its own folder (``out_dir/<name>``), so a
comparison resumes like any run and its per-SAE results are ordinary :class:`ScoreResult` objects.
Differences between two SAEs come with an interval (:meth:`Comparison.difference`): paired over latents only
when the same latents of the same SAE were scored twice (two explainers, two judges, two runs), else the two
means' intervals combined (MOVER); never of zero width.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .controls import pooled_mean
from .errors import ConfigError
from .harvest.config import HarvestConfig, harvest_config
from .metrics import Estimate, mover_sum
from .pipeline import build_config, check_run_options, preflight, run, sampling_config
from .results import SUMMARY_COLUMNS, ScoreResult
from .sampling import SamplingConfig

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .config import CompareOptions
    from .harvest import LatentStore

log = logging.getLogger("sae_lens_autointerp")

#: compare()'s keyword arguments that are not run options.
COMPARE_KEYWORDS = ("n_latents", "models", "stores", "progress")

#: Columns of :attr:`Comparison.table`, one row per (SAE, scorer).
COMPARE_COLUMNS = [
    "sae",
    "scorer",
    "metric",
    "d_sae",
    "n_eligible",
    *SUMMARY_COLUMNS[SUMMARY_COLUMNS.index("n_latents") : SUMMARY_COLUMNS.index("lift_high") + 1],
    "judge_ok",
]

#: The baselines :func:`baseline_saes` builds (Cunningham et al. 2023; Paulo et al. 2024).
BASELINES = ("neurons", "topk-neurons", "pca", "ica", "random-directions")

#: Columns of :meth:`Comparison.differences`.
DIFFERENCE_COLUMNS = ["sae", "reference", "scorer", "difference", "low", "high", "paired", "n", "n_reference"]


def paired_difference(diffs: Sequence[Estimate], confidence: float = 0.95) -> Estimate:
    """The mean of per-latent differences (each with its own interval) with :func:`pooled_mean`'s t interval:
    the paired form of :meth:`Comparison.difference`."""
    return pooled_mean(diffs, confidence)


def eligible_latents(store: LatentStore, sampling: SamplingConfig) -> list[int]:
    """Latents the sampling would explain: fired often enough for ``min_activating`` examples and on at most
    ``max_frequency`` of tokens (the same rules as :func:`sae_lens_autointerp.sampling.sample_latent`)."""
    counts = np.asarray(store.stats["n_fire_examples"])
    freq = np.asarray(store.frequency, dtype=float)
    ok = (counts >= max(sampling.min_activating, 1)) & (freq <= sampling.max_frequency)
    return [int(i) for i in np.flatnonzero(ok)]


def draw_latents(eligible: Sequence[int], n: int, seed: int) -> list[int]:
    """``n`` latents uniformly at random without replacement (all when fewer), sorted. The same seed draws
    the same way for every SAE, so no SAE gets hand-picked latents."""
    if n <= 0:
        raise ConfigError(f"n_latents must be a positive number, got {n}")
    pool = np.asarray(sorted(eligible), dtype=np.int64)
    if len(pool) <= n:
        return [int(i) for i in pool]
    rng = np.random.default_rng([seed, 0x636F6D70])  # "comp": independent of the per-latent sampling streams
    return sorted(int(i) for i in rng.choice(pool, size=n, replace=False))


@dataclass
class Comparison:
    """The outcome of :func:`compare`.

    ``results``: SAE name -> its :class:`ScoreResult`. ``latents``: the latents drawn for each SAE.
    ``eligible``: how many latents of each SAE could be sampled; ``stores``: the harvested stores. ``table``: one row per (SAE, scorer) with the
    mean score, its 95% interval, counts, chance level, the control and the lift (see ``COMPARE_COLUMNS``).
    """

    results: dict[str, ScoreResult]
    latents: dict[str, list[int]]
    eligible: dict[str, int]
    d_sae: dict[str, int]
    stores: dict[str, LatentStore] = field(default_factory=dict)
    seed: int = 0
    out_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def table(self) -> pd.DataFrame:
        rows = []
        for name, result in self.results.items():
            summary = result.summary()
            for row in summary.to_dict("records"):
                rows.append(
                    {
                        **{k: row.get(k) for k in COMPARE_COLUMNS if k in row},
                        "sae": name,
                        "d_sae": self.d_sae[name],
                        "n_eligible": self.eligible[name],
                    }
                )
        return pd.DataFrame(rows, columns=COMPARE_COLUMNS)

    def scores(self, name: str, scorer: str) -> pd.Series:
        """Per-latent headline scores of one SAE and scorer (finished latents; NaN where undefined)."""
        table = self.results[name].table
        rows = table[table["scorer"] == scorer]
        return pd.Series(rows["score"].to_numpy(dtype=float), index=rows["latent"].to_numpy(), name=name)

    def estimates(self, name: str, scorer: str) -> dict[int, Estimate]:
        """Per-latent headline scores of one SAE and scorer with their own intervals (scored latents only)."""
        table = self.results[name].table
        rows = table[(table["scorer"] == scorer) & table["score"].notna()]
        return {
            int(lat): Estimate(float(v), float(lo), float(hi))
            for lat, v, lo, hi in zip(rows["latent"], rows["score"], rows["low"], rows["high"], strict=True)
        }

    def sae_identity(self, name: str) -> str | None:
        """What makes two runs' latents the same latents: the SAE (its config and a hash of its weights), the
        model it reads and the hook, from the harvested store's metadata (the store key, or the run folder's
        ``run.json``, when that is all there is). None when unknown."""
        store = self.stores.get(name)
        meta = getattr(store, "meta", None) or {}
        if "sae" in meta:
            return json.dumps({k: meta.get(k) for k in ("sae", "model", "hook")}, sort_keys=True, default=str)
        if store is not None:
            return f"store:{store.key}"
        path = self.results[name].path if name in self.results else None
        run = path.parent / "run.json" if path is not None else None
        if run is not None and run.is_file():
            try:
                key = json.loads(run.read_text(encoding="utf-8")).get("store")
            except (OSError, ValueError):
                key = None
            return f"store:{key}" if key else None
        return None

    def paired(self, name: str, reference: str) -> bool:
        """Whether ``name`` and ``reference`` scored latents of the same SAE, so their latents can be paired
        (:meth:`sae_identity`); two bases of equal width share latent *indices*, not latents."""
        a, b = self.sae_identity(name), self.sae_identity(reference)
        return a is not None and a == b

    def difference(
        self, name: str, reference: str, scorer: str, *, n_boot: int = 4000, confidence: float = 0.95
    ) -> tuple[Estimate, bool]:
        """Mean score of ``name`` minus that of ``reference`` for ``scorer``, with a 95% interval; returns
        (estimate, paired).

        Paired when both scored latents of the same SAE (:meth:`paired`: two explainers, two judges, two runs)
        and share at least two scored latents with intervals: over the shared latents, each latent's difference
        with its own interval (MOVER of the two scores' intervals, as if independent: conservative, since the
        two usually judge the same examples) pooled by :func:`~sae_lens_autointerp.controls.pooled_mean` (t
        with n - 1 degrees of freedom, floored by the latents' own sampling errors), so equal differences on
        every latent (two constant judges) never give a zero-width interval. A percentile bootstrap over
        latents did (``[0, 0]``), and covered 79-85% at 4-6 latents (``tests/test_coverage.py``). Otherwise the
        two means' own intervals (as in ``summary()``) combined by MOVER. ``n_boot`` is unused (kept for
        callers of the bootstrap version)."""
        del n_boot
        a, b = self.estimates(name, scorer), self.estimates(reference, scorer)
        if not a or not b:
            return Estimate(float("nan"), float("nan"), float("nan")), False
        if self.paired(name, reference):
            shared = sorted(set(a) & set(b))
            diffs = [mover_sum([a[i], b[i]], [1.0, -1.0]) for i in shared]
            if len(diffs) >= 2 and all(np.isfinite([d.low for d in diffs] + [d.high for d in diffs])):
                return paired_difference(diffs, confidence), True
        means = []
        for who in (name, reference):
            summary = self.results[who].summary()
            row = summary[summary["scorer"] == scorer].iloc[0]
            means.append(Estimate(float(row["mean"]), float(row["low"]), float(row["high"])))
        return mover_sum(means, [1.0, -1.0]), False

    def differences(self, reference: str | None = None) -> pd.DataFrame:
        """Every SAE against ``reference`` (default: the first one given), per scorer, with intervals (see
        :meth:`difference`)."""
        names = list(self.results)
        reference = names[0] if reference is None else reference
        if reference not in self.results:
            raise ConfigError(f"unknown reference {reference!r}; choose one of {names}")
        scorers = sorted({s for r in self.results.values() for s in r.table["scorer"].unique()})
        rows = []
        for name in names:
            if name == reference:
                continue
            for scorer in scorers:
                est, paired = self.difference(name, reference, scorer)
                rows.append(
                    {
                        "sae": name,
                        "reference": reference,
                        "scorer": scorer,
                        "difference": est.value,
                        "low": est.low,
                        "high": est.high,
                        "paired": paired,
                        "n": int(self.scores(name, scorer).notna().sum()),
                        "n_reference": int(self.scores(reference, scorer).notna().sum()),
                    }
                )
        return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)

    def verdict(self) -> list[str]:
        """The judge check of every SAE's run, one plain sentence per (SAE, scorer)."""
        return [f"{name}: {line}" for name, result in self.results.items() for line in result.verdict()]

    def text(self) -> str:
        """The table and the differences as aligned text, with the notes and the judge checks."""
        cols = ["sae", "scorer", "n_eligible", "n_scored", "n_failed", "mean", "low", "high", "chance", "lift"]
        with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 200):
            parts = [self.table[cols].to_string(index=False)]
            diffs = self.differences()
            if not diffs.empty:
                ref = diffs["reference"].iloc[0]
                parts.append(
                    f"\ndifference of the mean score vs {ref!r} (95% interval; paired: the same latents of one SAE):"
                )
                parts.append(diffs.drop(columns=["reference"]).to_string(index=False))
        parts += self.notes
        return "\n".join(parts)

    def plot(self) -> Any:
        """A plotly figure like Cunningham et al.'s Fig. 2: per scorer, one bar per SAE with its 95% interval
        and a dashed line at the scorer's chance level."""
        from plotly.subplots import make_subplots

        table = self.table
        scorers = sorted(table["scorer"].unique())
        fig = make_subplots(rows=1, cols=max(len(scorers), 1), subplot_titles=scorers, shared_yaxes=False)
        for col, scorer in enumerate(scorers, start=1):
            rows = table[table["scorer"] == scorer]
            mean = rows["mean"].to_numpy(dtype=float)
            fig.add_bar(
                x=rows["sae"],
                y=mean,
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": rows["high"].to_numpy(dtype=float) - mean,
                    "arrayminus": mean - rows["low"].to_numpy(dtype=float),
                },
                name=scorer,
                showlegend=False,
                row=1,
                col=col,
            )
            chance = rows["chance"].dropna()
            if len(chance):
                fig.add_hline(y=float(chance.mean()), line_dash="dash", annotation_text="chance", row=1, col=col)
        fig.update_layout(title="Interpretability by scorer (mean over latents, 95% interval)", height=420)
        return fig

    def write_html(self, path: str | os.PathLike[str]) -> Path:
        """The plot and the table as one self-contained page (plotly.js inlined: opens offline)."""
        import html

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure = self.plot().to_html(full_html=False, include_plotlyjs=True)
        body = html.escape(self.text())
        path.write_text(
            "<!doctype html><meta charset='utf-8'><title>sae-lens-autointerp comparison</title>"
            f"{figure}<pre>{body}</pre>",
            encoding="utf-8",
        )
        return path


def compare(
    saes: Mapping[str, Any],
    model: Any,
    dataset: Any = None,
    *,
    n_latents: int = 20,
    models: Mapping[str, Any] | None = None,
    stores: Mapping[str, LatentStore] | None = None,
    progress: bool = True,
    **options: Unpack[CompareOptions],
) -> Comparison:
    """Explain and score ``n_latents`` latents of every SAE in ``saes`` (name -> ``sae_lens.SAE``, baselines
    included) with one protocol, and return a :class:`Comparison` (``.table``, ``.differences()``,
    ``.plot()``).

    ``model``: the model every SAE reads; ``models={"random-init": other}`` overrides it per SAE (an SAE
    trained on a randomly initialised model is harvested on that model). ``dataset``: what to harvest (as
    for ``sae.autointerp.harvest``), with the same ``harvest`` settings for each SAE; ``stores`` gives
    already harvested stores by name instead. ``options``: the options of
    :func:`~sae_lens_autointerp.pipeline.run` (``llm``, ``explainer``, ``scorers``, ``controls``, ``harvest``,
    ``sampling``, ``seed``, ...), the same for every SAE; ``latents`` is not among them, since the latents are
    drawn here (``seed`` draws them). Each SAE's run writes to ``out_dir/<name>``.
    """
    if "latents" in options:
        raise ConfigError("compare() draws the latents itself (n_latents=, seed=); do not pass latents=")
    opts = check_run_options(options, "compare", COMPARE_KEYWORDS)
    if not saes:
        raise ConfigError("compare() needs at least one SAE: compare({'sae': sae, 'neurons': ...}, model, data)")
    names = list(saes)
    bad = [n for n in names if not n or "/" in n or "\\" in n or n.startswith(".")]
    if bad:
        raise ConfigError(f"SAE names become folder names; these cannot: {bad}")
    models = dict(models or {})
    stores = dict(stores or {})
    unknown = sorted((set(models) | set(stores)) - set(names))
    if unknown:
        raise ConfigError(f"models= / stores= name SAEs that are not compared: {unknown}; compared: {names}")
    if dataset is None and any(n not in stores for n in names):
        raise ConfigError("compare() needs a dataset to harvest (or stores= for every SAE)")
    seed = opts.pop("seed", 0)
    sampling_cfg = sampling_config(opts.pop("sampling", None), seed)
    harvest_cfg, harvest_progress = _harvest_options(opts.pop("harvest", None), progress)
    out_dir = opts.pop("out_dir", None)
    base = Path(out_dir) if out_dir is not None else None
    check_protocol(saes, model, models, sampling=sampling_cfg, seed=seed, **opts)

    results: dict[str, ScoreResult] = {}
    drawn: dict[str, list[int]] = {}
    eligible: dict[str, int] = {}
    widths: dict[str, int] = {}
    notes: list[str] = []
    for name in names:
        sae = saes[name]
        subject = models.get(name, model)
        store = stores.get(name)
        if store is None:
            store = sae.autointerp.harvest(subject, dataset, config=harvest_cfg, progress=harvest_progress)
        stores[name] = store
        pool = eligible_latents(store, sampling_cfg)
        latents = draw_latents(pool, n_latents, seed)
        widths[name], eligible[name], drawn[name] = int(sae.cfg.d_sae), len(pool), latents
        if not latents:
            notes.append(f"{name}: no latent fires often enough and rarely enough to be sampled; nothing scored")
        elif len(latents) < n_latents:
            notes.append(f"{name}: only {len(latents)} eligible latents (asked for {n_latents})")
        log.info("compare: %s, %d of %d latents eligible, scoring %d", name, len(pool), store.d_sae, len(latents))
        if not latents:
            results[name] = ScoreResult([])
            continue
        results[name] = run(
            sae,
            subject,
            dataset,
            store=store,
            latents=latents,
            sampling=sampling_cfg,
            seed=seed,
            harvest=harvest_cfg,
            out_dir=None if base is None else base / name,
            progress=progress,
            **opts,
        )
    return Comparison(results, drawn, eligible, widths, stores=stores, seed=seed, out_dir=base, notes=notes)


def _harvest_options(harvest: HarvestConfig | Mapping[str, Any] | None, progress: bool) -> tuple[HarvestConfig, bool]:
    """compare()'s ``harvest`` as a HarvestConfig, and whether the harvests show a progress bar (``progress``;
    the old ``harvest={"progress": ...}`` still works, with a FutureWarning)."""
    if isinstance(harvest, Mapping) and "progress" in harvest:
        warnings.warn(
            "compare(harvest={'progress': ...}) is deprecated: progress is not a harvest setting; compare(progress=...) "
            "covers the harvests too",
            FutureWarning,
            stacklevel=3,
        )
        harvest = dict(harvest)
        progress = bool(harvest.pop("progress"))
    return harvest_config(harvest, {}), progress


def baseline_saes(
    sae: Any,
    model: Any,
    dataset: Any,
    which: Sequence[str] = BASELINES,
    *,
    n_fit_tokens: int = 50_000,
    ica_components: int = 64,
    match_rate: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """The papers' baselines for ``sae``, at its hook, as ``sae_lens.SAE`` objects (see
    :mod:`sae_lens_autointerp.baselines`): ``neurons`` (the hook's basis, both signs), ``topk-neurons`` (the
    same, k = the SAE's L0), ``pca`` with every component and ``ica`` with ``ica_components`` (FastICA's cost
    grows with the square of the components: all 576 of SmolLM2 take hours on a CPU), both fitted on
    ``n_fit_tokens`` tokens of ``dataset``, and ``random-directions`` as wide as the SAE with its firing rate.

    ``match_rate``: neurons, PCA and ICA fire on about half of all tokens, so they have no silent windows to
    test against and the sampler skips them as too dense; with ``match_rate`` (the default) each of their
    latents is thresholded to fire on the SAE's mean firing rate
    (:func:`~sae_lens_autointerp.baselines.match_firing_rate`), which keeps each latent's ranking of tokens."""
    from . import baselines

    unknown = [w for w in which if w not in BASELINES]
    if unknown:
        raise ConfigError(f"unknown baselines {unknown}; choose from {list(BASELINES)}")
    hook = sae.cfg.metadata.hook_name
    width = int(sae.cfg.d_in)
    fit = {"n_tokens": n_fit_tokens, "like": sae, "seed": seed}
    build = {
        "neurons": lambda: baselines.neurons(model, hook, like=sae, seed=seed),
        "topk-neurons": lambda: baselines.topk_neurons(
            model, hook, like=sae, dataset=dataset, n_tokens=min(n_fit_tokens, 8192), seed=seed
        ),
        "pca": lambda: baselines.pca(model, hook, dataset, width, **fit),
        "ica": lambda: baselines.ica(
            model, hook, dataset, min(ica_components, width), **fit, max_fit_tokens=min(n_fit_tokens, 20_000)
        ),
        "random-directions": lambda: baselines.random_directions(
            model, hook, int(sae.cfg.d_sae), dataset=dataset, **fit
        ),
    }
    out = {}
    rate: float | None = None
    for name in which:
        log.info("compare: building the %s baseline at %s", name, hook)
        built = build[name]()
        if match_rate and name in ("neurons", "pca", "ica"):
            if rate is None:  # the SAE's mean firing rate, measured once
                rate = baselines.mean_l0(model, sae, dataset, min(n_fit_tokens, 20_000))
                rate /= int(sae.cfg.d_sae)
            built = baselines.match_firing_rate(built, model, dataset, rate=rate, n_tokens=min(n_fit_tokens, 20_000))
        out[name] = built
    return out


def check_protocol(
    saes: Mapping[str, Any], model: Any, models: Mapping[str, Any] | None = None, **options: Unpack[CompareOptions]
) -> None:
    """Every check a run makes before its harvest (scorer, explainer and LLM names, options, the SAE against
    its model), for every SAE of a comparison: a bad input fails before the first harvest or baseline fit."""
    cfg, client, objects = build_config(None, {"latents": [0], **options})
    for name, sae in saes.items():
        preflight(sae, (models or {}).get(name, model), cfg, llm=client, explanations=objects)

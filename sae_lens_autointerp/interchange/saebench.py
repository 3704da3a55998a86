"""SAEBench's autointerp eval output (``eval_output_schema_autointerp.json``, SAEBench 0.6; docs/interchange.md)."""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ConfigError
from ..numeric import finite
from ..results import ScoreResult, rows_of
from .common import _records, _run_info, _sae_source

#: Our SAEBench-plugin scorer's settings that are fields of SAEBench's AutoInterpEvalConfig.
_SAEBENCH_CONFIG_FIELDS = (
    "n_top_ex_for_generation",
    "n_iw_sampled_ex_for_generation",
    "n_top_ex_for_scoring",
    "n_iw_sampled_ex_for_scoring",
    "n_random_ex_for_scoring",
    "buffer",
    "act_threshold_frac",
    "use_demos_in_explanation",
    "max_tokens_in_explanation",
)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _sae_ids(sae: Any) -> tuple[str | None, str | None, dict[str, Any] | None, str | None]:
    """(release, sae id, cfg dict, model name) of a SAELens SAE (None where it does not say)."""
    if sae is None:
        return None, None, None, None
    cfg = getattr(sae, "cfg", None)
    metadata = getattr(cfg, "metadata", None)

    def meta(key: str) -> str | None:
        try:
            value = metadata[key] if metadata is not None and key in metadata else None
        except TypeError:
            value = getattr(metadata, key, None)
        return None if value is None else str(value)

    cfg_dict = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else None
    release = meta("sae_lens_release") or meta("release")
    return release, meta("sae_lens_sae_id") or meta("sae_id"), _clean(cfg_dict), meta("model_name")


def to_saebench(
    result: ScoreResult,
    path: str | os.PathLike[str],
    *,
    scorer: str | None = None,
    sae: Any = None,
    model_name: str | None = None,
    sae_lens_release_id: str | None = None,
    sae_lens_id: str | None = None,
) -> Path:
    """Write a run as SAEBench's autointerp eval output (``eval_output_schema_autointerp.json``, SAEBench 0.6).

    ``autointerp_score`` / ``autointerp_std_dev`` are SAEBench's numbers (mean and sample standard deviation
    of the per-latent accuracy over its 14 windows) only from the ``saebench`` scorer (the
    sae-autointerp-saebench plugin), which is used when it ran. Otherwise pass ``scorer=`` to put another
    scorer's headline there: the file then says, in ``eval_result_unstructured["headline"]``, which scorer
    and metric the number is and that it is not comparable with SAEBench's. Per scorer, our summary (balanced
    accuracy, interval, chance, control, lift, judge check) is in ``eval_result_details``; per latent, the
    headline scorer's numbers are in ``eval_result_unstructured["latents"]``. ``sae`` (a SAELens SAE) fills
    ``sae_lens_id``, ``sae_lens_release_id``, ``sae_cfg_dict`` and ``eval_config.model_name``.
    """
    records = _records(result)
    run = _run_info(result)
    ran = sorted({name for r in records for name in (r.get("scores") or {})})
    if scorer is None:
        if "saebench" not in ran:
            raise ConfigError(
                f"the saebench scorer did not run ({', '.join(ran) or 'no scorer'} did), so this run has no "
                "SAEBench-comparable score; run with scorers=['saebench'] (pip install "
                "plugins/sae-autointerp-saebench), or pass scorer= to export another scorer's number, labelled as "
                "such"
            )
        scorer = "saebench"
    if scorer not in ran:
        raise ConfigError(f"scorer {scorer!r} did not run here; these did: {', '.join(ran) or 'none'}")
    comparable = scorer == "saebench"
    per_latent: dict[str, dict[str, Any]] = {}
    values, metric = [], None
    by_latent = {int(r["latent"]): r for r in records}
    for row in rows_of([dict(r) for r in records]):
        if row["scorer"] != scorer:
            continue
        out = (by_latent[row["latent"]].get("scores") or {})[scorer]
        metrics = out.get("metrics") or {}
        # SAEBench's per-latent score is the plain accuracy, whatever headline the plugin was asked for
        value = finite(metrics.get("accuracy")) if comparable else finite(row["score"])
        metric = "accuracy" if comparable else (row["metric"] or metric)
        if value is not None:
            values.append(value)
        per_latent[str(row["latent"])] = _clean(
            {
                "latent": row["latent"],
                "explanation": row["explanation"],
                "score": value,
                "metric": metric,
                **{k: row[k] for k in ("low", "high", "chance", "control", "lift", "lift_low", "lift_high", "signal")},
                "balanced_accuracy": finite(metrics.get("balanced_accuracy")),
                "trivial_none_accuracy": finite(metrics.get("trivial_none_accuracy")),
                "n_examples": row["n_examples"],
                "n_failed": row["n_failed"],
                "error": row["error"],
            }
        )
    if len(values) < 2:
        raise ConfigError(
            f"SAEBench's autointerp_std_dev needs at least 2 latents with a {scorer} score, this run has "
            f"{len(values)}; score more latents"
        )
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    release, sae_id, cfg_dict, sae_model = _sae_ids(sae)
    recorded = _sae_source(result)  # what the run recorded of its SAE, when no SAE object is given
    release = release or recorded.get("sae_lens_release")
    sae_id = sae_id or recorded.get("sae_lens_sae_id")
    sae_model = sae_model or recorded.get("model_name")
    sampling = run.get("sampling") or {}
    eval_config: dict[str, Any] = {
        "model_name": model_name or sae_model or "",
        "n_latents": len(by_latent),
        "override_latents": sorted(by_latent),
    }
    if isinstance(run.get("seed"), int):
        eval_config["random_seed"] = run["seed"]
    if isinstance(sampling.get("min_activating"), int):
        eval_config["dead_latent_threshold"] = sampling["min_activating"]
    if comparable:
        kwargs = ((run.get("scorer_kwargs") or {}).get("saebench")) or {}
        eval_config.update({k: kwargs[k] for k in _SAEBENCH_CONFIG_FIELDS if k in kwargs})
    summary = result.summary() if isinstance(result, ScoreResult) else None
    details = [] if summary is None else [_clean(row) for row in summary.to_dict(orient="records")]
    note = (
        "autointerp_score is SAEBench's: the mean per-latent accuracy of the saebench scorer (4 activating + 10 "
        "random windows; answering 'none' scores 0.714, see trivial_none_accuracy)"
        if comparable
        else f"autointerp_score is NOT SAEBench's score: it is the mean per-latent {metric} of sae-lens-autointerp's "
        f"{scorer!r} scorer, not comparable with SAEBench results"
    )
    skipped = {str(int(r["latent"])): r["skipped"] for r in records if r.get("skipped")}
    path = Path(path)
    output = {
        "eval_type_id": "autointerp",
        "eval_config": eval_config,
        "eval_id": str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"sae-lens-autointerp:{run.get('run_key') or result.run_key}:{scorer}")
        ),
        "datetime_epoch_millis": int(
            (os.path.getmtime(result.path) if result.path and Path(result.path).is_file() else time.time()) * 1000
        ),
        "eval_result_metrics": {"autointerp": {"autointerp_score": mean, "autointerp_std_dev": std}},
        "eval_result_details": details,
        "sae_bench_commit_hash": f"none: written by sae-lens-autointerp {__version__}, not by SAEBench",
        "sae_lens_id": sae_lens_id or sae_id,
        "sae_lens_release_id": sae_lens_release_id or release,
        "sae_lens_version": _version_of("sae-lens"),
        "sae_cfg_dict": cfg_dict,
        "eval_result_unstructured": {
            "headline": {
                "scorer": scorer,
                "metric": metric,
                "saebench_comparable": comparable,
                "n_latents_scored": len(values),
                "n_latents_without_score": len(per_latent) - len(values),
                "note": note,
            },
            "producer": {
                "package": "sae-lens-autointerp",
                "version": __version__,
                "run_key": run.get("run_key") or result.run_key,
                "explainer": run.get("explainer"),
                "llm": run.get("llm"),
                "scorers": ran,
            },
            "latents": per_latent,
            "skipped": skipped,
            "incomplete": {str(k): v for k, v in (getattr(result, "incomplete", None) or {}).items()},
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(output), indent=2, allow_nan=False), encoding="utf-8")
    return path


def _version_of(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None

"""Metrics for scorer predictions, each with a confidence interval and a chance level.

Modules: ``estimate`` (estimates, quantiles, Wilson, MOVER, the mean over latents), ``auc``, ``correlation``
(simulation's), ``binary`` (one latent's binary predictions, built from the others).

Conventions
-----------
* One call to :func:`binary_metrics` covers one latent. Each example has a true label (activating or not),
  a prediction (``True`` / ``False``, or ``None`` when the LLM answer failed to parse or was refused) and
  optionally a score ``P(activating)`` (``None`` when unavailable; any score monotone in it works for AUC).
* Failed predictions are never silently dropped: they are excluded from every metric and counted in
  ``n_failed``; ``coverage = n_answered / n``. ``n_pos`` / ``n_neg`` and the prevalence behind the chance
  levels are over *answered* examples, the ones the metrics are computed on.
* Undefined values (one class only, everything failed, no predicted positives for precision, ...) are
  ``NaN`` with a line in ``notes`` saying why. Nothing raises for these and nothing is faked as 0.
  F1 is ``2TP / (2TP + FP + FN)``: defined whenever there is an answered positive, and a genuine 0 when
  no positive is found (even though precision is then undefined).
* Intervals (``confidence``, default 95 %): Wilson score for the proportions accuracy, precision, recall and
  specificity; for balanced accuracy ``(recall + specificity) / 2`` the per-class Wilson intervals combined by
  MOVER (Newcombe / Zou's method of variance estimates recovery for a sum of independent proportions), which
  keeps a width that reflects the sample size even when a class is answered all right or all wrong (a
  percentile bootstrap collapses to [0.5, 0.5] for a judge that answers "1" to everything); stratified
  percentile bootstrap for F1 (positives and negatives are resampled separately, so every replicate keeps the
  class sizes; the number of correct answers in a resampled stratum is binomial, which is how it is drawn);
  for AUC a score-type interval that never collapses (:func:`auc_interval`: the Hanley-McNeil variance as a
  function of the AUC, as in Newcombe's 2006 method 5, widened to DeLong's variance where the data spread more,
  with a continuity correction), where DeLong's own interval is [1, 1] at perfect separation even on 3 + 3
  examples. The bootstrap uses the ``rng`` passed in, else ``numpy.random.default_rng(0)``; the global numpy RNG
  is never touched, so results are reproducible.
* Simulation's correlation over tokens (:func:`excerpt_correlation`): Pearson r over all tokens (Bills et al.),
  its interval from the excerpts, not the tokens: a judge errs per excerpt (it reads the excerpt as the
  explanation's concept or not), so the tokens of one excerpt are not independent samples. A Fisher-z interval
  over tokens covered the truth 24% of the time in the outside audit; this one covers at least 93% (measured
  in ``tests/test_coverage.py``; the numbers are in ``docs/trust.md``).
* Chance levels (``BinaryMetrics.chance``), with prevalence ``p`` = answered positives / answered examples:
  balanced accuracy 0.5, AUC 0.5, specificity 0.5 and recall 0.5 (guessing "yes" at rate 0.5);
  precision ``p`` (any guess that ignores the input); accuracy ``max(p, 1 - p)``, what always answering
  the majority class gets (4 positives + 10 negatives: 10/14 = 0.714 for always answering "no");
  F1 of guessing at rate 0.5: precision ``p``, recall 0.5, so ``F1 = 2 * p * 0.5 / (p + 0.5) = 2p / (1 + 2p)``.
"""

from .auc import auc_batch, auc_estimate, auc_interval
from .binary import METRICS, BinaryMetrics, auc_metrics, balanced_accuracy, binary_metrics, flat
from .correlation import ExcerptJackknife, correlation, excerpt_correlation, excerpt_jackknife
from .estimate import (
    NAN,
    UNDEFINED,
    Estimate,
    aggregate,
    aggregate_table,
    mover_difference,
    mover_sum,
    t_quantile,
    wilson,
    z_quantile,
)

__all__ = [
    "METRICS",
    "NAN",
    "UNDEFINED",
    "BinaryMetrics",
    "Estimate",
    "ExcerptJackknife",
    "aggregate",
    "aggregate_table",
    "auc_batch",
    "auc_estimate",
    "auc_interval",
    "auc_metrics",
    "balanced_accuracy",
    "binary_metrics",
    "correlation",
    "excerpt_correlation",
    "excerpt_jackknife",
    "flat",
    "mover_difference",
    "mover_sum",
    "t_quantile",
    "wilson",
    "z_quantile",
]

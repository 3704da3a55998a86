"""Controls and the judge check: does a score say more than a wrong explanation would?

Three modules, each importing only the ones before it: ``choice`` (which control a latent gets), ``lift``
(score - control, paired), ``judge`` (identical answers, the mean lift over latents, the sentence).

A score is only worth reading next to what the same judge gives a *mismatched* explanation on the same
examples. For every scorer that reads an explanation, each latent is also scored with a control: the
explanation of another latent of the same run (chosen with ``latent_rng(seed, latent, "control")`` among
the latents of its block of the run, see :data:`CONTROL_BLOCK`), on a seeded subset of the examples the score
itself judged (``fraction`` of each class, default 0.2, so a control costs at most 20% extra judgments; see
:func:`control_sample`). The control's requests are labelled with the stage ``"<scorer>:control"`` in usage.

Per latent: ``lift = score - control`` with an interval for a *paired* difference (:func:`paired_lift`): the
control's examples are a subset of the score's, so the two estimates are correlated, and the interval
combines the two scores' own intervals with that correlation, estimated on the shared examples (MOVER for
correlated estimates, :func:`~sae_lens_autointerp.metrics.mover_difference`); intervention pairs its prompts
and takes a t interval of the per-prompt differences. Where predictions cannot be paired it falls back to
the unpaired MOVER (:func:`lift`) and says so in ``method``. ``signal`` is True when the interval lies above 0.

Per run and scorer, the judge check: the share of identical answers (:func:`answer_counts`: the most common
binary answer, intruder position, simulation prediction vector, or value of a local scorer, over every
answered example) and the mean lift over latents, with an interval from each latent's own sampling error
(from its lift interval) or the spread between latents, whichever is larger (:func:`mean_lift`, a test of
"the judge's answers do not depend on the explanation"), so it never collapses when a few latents happen
to have the same lift. ``summary()``'s mean score uses :func:`pooled_mean` instead, a t interval for the
mean over all the SAE's latents. A scorer that reads no
explanation (intruder) has no control; its check compares the score with its chance level instead.
The judge *cannot tell* when the mean lift's interval reaches 0 or 95% or more of its answers are identical;
then :func:`judge_sentence` says so in one plain sentence naming the fix.
"""

from .choice import (
    CONTROL_BLOCK,
    DEFAULT_FRACTION,
    STAGE_SUFFIX,
    RelabelledClient,
    check_fraction,
    choose_control,
    control_explanation,
    control_sample,
    fraction_for,
    scored_examples,
)
from .judge import (
    IDENTICAL_LIMIT,
    OTHER,
    JudgeCheck,
    answer_counts,
    answers_of,
    identical_share,
    judge_check,
    judge_sentence,
    lifts_per_latent,
    mean_lift,
    mean_or_none,
    pooled_mean,
)
from .lift import Lift, lift, paired_lift

__all__ = [
    "CONTROL_BLOCK",
    "DEFAULT_FRACTION",
    "IDENTICAL_LIMIT",
    "OTHER",
    "STAGE_SUFFIX",
    "JudgeCheck",
    "Lift",
    "RelabelledClient",
    "answer_counts",
    "answers_of",
    "check_fraction",
    "choose_control",
    "control_explanation",
    "control_sample",
    "fraction_for",
    "identical_share",
    "judge_check",
    "judge_sentence",
    "lift",
    "lifts_per_latent",
    "mean_lift",
    "mean_or_none",
    "paired_lift",
    "pooled_mean",
    "scored_examples",
]

"""delphi's detection and fuzzing protocol (``protocol="delphi"`` / ``"delphi-compat"`` of the ``detection`` and
``fuzzing`` scorers), so that a number scored under it compares with delphi's published and reproduced ones.

What it takes from delphi (EleutherAI, ``eai-delphi`` 0.1.3, ``delphi/scorers/classifier/``):

- the prompts: delphi's system prompt, its three few-shot turns and its ``Latent explanation: ... Text examples:``
  request, the examples listed as ``Example {i}: {text}`` (numbered from 0), the text the tokens' pieces joined
  as they are (no ``\\n`` escaping), marks ``<<like this>>``;
- its batching: 5 examples per prompt by default, the answer a Python list of 0/1, read as delphi reads it (the
  first ``[...]`` on one line, parsed as JSON, of exactly as many entries as examples);
- its windows: fixed chunks of 32 tokens (our ``example_len`` default; a store harvested with another
  ``example_len`` is not delphi's window);
- its fake marks (fuzzing): ``ceil`` of the mean number of *non-zero* activations over the activating test
  examples, placed on tokens at or below 0.3 x the example's maximum (every token of a silent window),
  scattered (no runs kept); true marks on the tokens at or above 0.3 x the example's maximum, compared in
  float32 as delphi's tensors compare.

``protocol="delphi"`` places the fake marks at random (the latent's own generator) and accepts an answer's
entries only as 0/1 (or JSON true/false), and a short last batch is answered at its own length.
``protocol="delphi-compat"`` reproduces delphi's known bugs too, and only there:

- every fake highlight is drawn after ``random.seed(22)`` (the same positions for every window of a length)
  and always includes the token at ``len - len // 4`` (delphi's ``# TODO: This is wrong``; delphi reseeds the
  process-wide ``random`` module, we draw from a private ``random.Random(22)``, which gives the same positions
  without touching anybody else's random state); a window with exactly one token at or below the threshold
  becomes delphi's ``DEFAULT_MESSAGE`` (a squeezed one-element tensor reads as "no token");
- answer entries are read by truthiness (``"0"`` reads as 1, ``0.2`` as 1);
- a short last batch must still be answered with ``examples_per_prompt`` entries (delphi asserts the list's
  length against ``n_examples_shown``), of which the first ones are kept.

What stays ours in both (said in docs/scorers.md): the examples' order (delphi shuffles with one
``random.Random(42)`` shared by every latent of a run, so a latent's order depends on the latents before it;
we shuffle with the latent's own generator), the test examples themselves (our sampler: train and test
disjoint), and an unparseable answer counted in ``n_failed`` (delphi: ``prediction=None``), never retried
(delphi does not retry either).

The prompt text below is reproduced from delphi for compatibility: delphi, Copyright EleutherAI, licensed
under the Apache License, Version 2.0 (https://www.apache.org/licenses/LICENSE-2.0), files
``delphi/scorers/classifier/prompts/detection_prompt.py`` and ``fuzz_prompt.py`` of eai-delphi 0.1.3. The few-shot
excerpts keep delphi's GPT-2 byte pieces (``Ċ``, ``âĢĻ``) as delphi sends them. ``tests/test_delphi_protocol.py``
checks every prompt and answer reading against delphi's own code.
"""
# ruff: noqa: E501, RUF001

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from typing import Literal

import numpy as np

from ..errors import ConfigError
from ..llm.types import TokenLogprob

PROTOCOLS = ("ours", "delphi", "delphi-compat")
#: delphi's ``num_examples_per_scorer_prompt`` default
EXAMPLES_PER_PROMPT = 5
#: an answer is a list of 5 digits (~11 tokens); room for a model that says a few words first
ANSWER_MAX_TOKENS = 100
#: delphi's fake highlight seed and the text it shows when no token can carry a fake mark
COMPAT_SEED = 22
DEFAULT_MESSAGE = "<<NNsight>> is the best library for <<interpretability>> on huge models!"
GENERATION = "Latent explanation: {explanation}\n\nText examples:\n\n{examples}\n"
Kind = Literal["detection", "fuzzing"]

# --- delphi's prompt text (Apache-2.0, EleutherAI; see the module docstring) ---
DETECTION_SYSTEM = (
    "You are an intelligent and meticulous linguistics researcher.\n"
    "\n"
    'You will be given a certain latent of text, such as "male pronouns" or "text with negative sentiment".\n'
    "\n"
    "You will then be given several text examples. Your task is to determine which examples possess the latent.\n"
    "\n"
    "For each example in turn, return 1 if the sentence is correctly labeled or 0 if the tokens are mislabeled. You must return your response in a valid Python list. Do not return anything else besides a Python list.\n"
)
DETECTION_SHOTS = (
    (
        "Latent explanation: Words related to American football positions, specifically the tight end position.\n"
        "\n"
        "Test examples:\n"
        "\n"
        "Example 0:<|endoftext|>Getty ImagesĊĊPatriots tight end Rob Gronkowski had his bossâĢĻ\n"
        "Example 1: names of months used in The Lord of the Rings:ĊĊâĢľâĢ¦the\n"
        "Example 2: Media Day 2015ĊĊLSU defensive end Isaiah Washington (94) speaks to the\n"
        "Example 3: shown, is generally not eligible for ads. For example, videos about recent tragedies,\n"
        "Example 4: line, with the left side âĢĶ namely tackle Byron Bell at tackle and guard Amini\n",
        "[1,0,0,0,1]",
    ),
    (
        'Latent explanation: The word "guys" in the phrase "you guys".\n'
        "\n"
        "Test examples:\n"
        "\n"
        "Example 0: enact an individual health insurance mandate?âĢĿ, Pelosi's response was to dismiss both\n"
        "Example 1: birth control access<|endoftext|> but I assure you women in Kentucky aren't laughing as they struggle\n"
        "Example 2: du Soleil Fall Protection Program with construction requirements that do not apply to theater settings because\n"
        "Example 3:Ċ<|endoftext|> distasteful. Amidst the slime lurk bits of Schadenfre\n"
        "Example 4: the<|endoftext|>ľI want to remind you all that 10 days ago (director Massimil\n",
        "[0,0,0,0,0]",
    ),
    (
        'Latent explanation: "of" before words that start with a capital letter.\n'
        "\n"
        "Test examples:\n"
        "\n"
        "Example 0: climate, TomblinâĢĻs Chief of Staff Charlie Lorensen said.Ċ\n"
        "Example 1: no wonderworking relics, no true Body and Blood of Christ, no true Baptism\n"
        "Example 2:ĊĊDeborah Sathe, Head of Talent Development and Production at Film London,\n"
        "Example 3:ĊĊIt has been devised by Director of Public Prosecutions (DPP)\n"
        "Example 4: and fair investigation not even include the Director of Athletics? Â· Finally, we believe the\n",
        "[1,1,1,1,1]",
    ),
)
FUZZING_SYSTEM = (
    "You are an intelligent and meticulous linguistics researcher.\n"
    "\n"
    'You will be given a certain latent of text, such as "male pronouns" or "text with negative sentiment". You will be given a few examples of text that contain this latent. Portions of the sentence which strongly represent this latent are between tokens << and >>.\n'
    "\n"
    "Some examples might be mislabeled. Your task is to determine if every single token within << and >> is correctly labeled. Consider that all provided examples could be correct, none of the examples could be correct, or a mix. An example is only correct if every marked token is representative of the latent\n"
    "\n"
    "For each example in turn, return 1 if the sentence is correctly labeled or 0 if the tokens are mislabeled. You must return your response in a valid Python list. Do not return anything else besides a Python list.\n"
)
FUZZING_SHOTS = (
    (
        "Latent explanation: Words related to American football positions, specifically the tight end position.\n"
        "\n"
        "Test examples:\n"
        "\n"
        "Example 0:<|endoftext|>Getty ImagesĊĊPatriots<< tight end>> Rob Gronkowski had his bossâĢĻ\n"
        "Example 1: posted<|endoftext|>You should know this<< about>> offensive line coaches: they are large, demanding<< men>>\n"
        "Example 2: Media Day 2015ĊĊLSU<< defensive>> end Isaiah Washington (94) speaks<< to the>>\n"
        'Example 3:<< running backs>>," he said. .. Defensive<< end>> Carroll Phillips is improving and his injury is\n'
        "Example 4:<< line>>, with the left side âĢĶ namely<< tackle>> Byron Bell at<< tackle>> and<< guard>> Amini\n",
        "[1,0,0,1,1]",
    ),
    (
        'Latent explanation: The word "guys" in the phrase "you guys".\n'
        "\n"
        "Test examples:\n"
        "\n"
        "Example 0: if you are<< comfortable>> with it. You<< guys>> support me in many other ways already and\n"
        "Example 1: birth control access<|endoftext|> but I assure you<< women>> in Kentucky aren't laughing as they struggle\n"
        "Example 2:âĢĻs gig! I hope you guys<< LOVE>> her, and<< please>> be nice,\n"
        "Example 3:American, told<< Hannity>> that âĢľyou<< guys>> are playing the race card.âĢĿ\n"
        "Example 4:<< the>><|endoftext|>ľI want to<< remind>> you all that 10 days ago (director Massimil\n",
        "[0,0,0,0,0]",
    ),
    (
        'Latent explanation: "of" before words that start with a capital letter.\n'
        "\n"
        "Test examples:\n"
        "\n"
        "Example 0: climate, TomblinâĢĻs Chief<< of>> Staff Charlie Lorensen said.Ċ\n"
        "Example 1: no wonderworking relics, no true Body and Blood<< of>> Christ, no true Baptism\n"
        "Example 2:ĊĊDeborah Sathe, Head<< of>> Talent Development and Production at Film London,\n"
        "Example 3:ĊĊIt has been devised by Director<< of>> Public Prosecutions (DPP)\n"
        "Example 4: and fair investigation not even include the Director<< of>> Athletics? Â· Finally, we believe the\n",
        "[1,1,1,1,1]",
    ),
)

_SYSTEM = {"detection": DETECTION_SYSTEM, "fuzzing": FUZZING_SYSTEM}
_SHOTS = {"detection": DETECTION_SHOTS, "fuzzing": FUZZING_SHOTS}
_FIRST_LIST = re.compile(r"\[.*?\]")  # delphi's: the first bracketed span on one line


def check_protocol(protocol: object, scorer: str) -> str:
    """``protocol`` if it is one we know, else a one-line ConfigError naming the choices."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{scorer}: protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return str(protocol)


def messages(kind: Kind, explanation: str, texts: Sequence[str]) -> list[dict[str, str]]:
    """The chat delphi's ``DetectionScorer`` / ``FuzzingScorer`` sends for one batch of example texts."""
    examples = "\n".join(f"Example {i}: {text}" for i, text in enumerate(texts))
    chat = [{"role": "system", "content": _SYSTEM[kind]}]
    for user, assistant in _SHOTS[kind]:
        chat += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    chat.append({"role": "user", "content": GENERATION.format(explanation=explanation, examples=examples)})
    return chat


def marked_text(tokens: Sequence[str], marked: Sequence[bool] | np.ndarray) -> str:
    """The pieces joined, each run of marked ones wrapped in ``<<`` ``>>``; newlines left as they are (delphi)."""
    out: list[str] = []
    inside = False
    for tok, m in zip(tokens, marked):
        if m != inside:
            out.append("<<" if m else ">>")
            inside = bool(m)
        out.append(tok)
    if inside:
        out.append(">>")
    return "".join(out)


def _threshold(acts: np.ndarray, threshold: float) -> np.float32:
    # delphi compares a float32 tensor with threshold x max (a Python float): torch rounds the bound to float32
    return np.float32(threshold * float(acts.max())) if acts.size else np.float32(0.0)


def true_marks(activations: Sequence[float], threshold: float = 0.3) -> np.ndarray:
    """Tokens at or above ``threshold`` x the example's maximum, as delphi marks an activating example."""
    acts = np.asarray(activations, dtype=np.float32)
    return acts >= _threshold(acts, threshold) if acts.size else np.zeros(0, dtype=bool)


def fake_mark_count(positive_activations: Sequence[Sequence[float]]) -> int:
    """delphi's number of fake marks: ceil of the mean count of non-zero activations over the activating test
    examples (1 when there are none: delphi would divide by zero)."""
    if not positive_activations:
        return 1
    counts = [int(np.count_nonzero(np.asarray(a, dtype=np.float32))) for a in positive_activations]
    return math.ceil(sum(counts) / len(counts))


def fake_marks(
    activations: Sequence[float],
    n_marks: int,
    rng: np.random.Generator,
    *,
    compat: bool,
    threshold: float = 0.3,
) -> np.ndarray | None:
    """``n_marks`` scattered fake marks (a mask) on tokens at or below ``threshold`` x the example's maximum: at
    random (``rng``), or, with ``compat``, where delphi 0.1.3 puts them (seed 22, the fixed position; see the
    module docstring; None where delphi shows its ``DEFAULT_MESSAGE`` instead of the example)."""
    acts = np.asarray(activations, dtype=np.float32)
    below = np.flatnonzero(acts <= _threshold(acts, threshold)) if acts.size else np.zeros(0, dtype=np.int64)
    n = min(n_marks, below.size)
    mask = np.zeros(acts.size, dtype=bool)
    if not compat:
        mask[rng.choice(below, size=n, replace=False) if n else []] = True
        return mask
    if below.size == 1:  # delphi squeezes the index tensor to 0-d and takes that for "no token below"
        return None
    draw = random.Random(COMPAT_SEED)  # the positions of delphi's random.seed(22), without the global reseed
    candidates = below.tolist()
    fixed = acts.size - acts.size // 4  # delphi's "# TODO: This is wrong": always one mark there
    if fixed in candidates:
        candidates.remove(fixed)
        picked = [fixed, *(draw.sample(candidates, n - 1) if n > 1 else [])]
    else:
        picked = draw.sample(candidates, n)
    mask[picked] = True
    return mask


def fake_text(
    tokens: Sequence[str],
    activations: Sequence[float],
    n_marks: int,
    rng: np.random.Generator,
    *,
    compat: bool,
    threshold: float = 0.3,
) -> str:
    """A non-activating example shown with its :func:`fake_marks`."""
    mask = fake_marks(activations, n_marks, rng, compat=compat, threshold=threshold)
    return DEFAULT_MESSAGE if mask is None else marked_text(tokens, mask)


def parse_answer(text: str | None, n: int, *, compat: bool) -> list[bool] | None:
    """The predictions in an answer, as delphi reads them: the first ``[...]`` on one line, parsed as JSON, with
    exactly ``n`` entries; None when it does not parse. Entries: 0/1 (or true/false) only, or, with ``compat``,
    anything, read by truthiness as delphi does."""
    match = _FIRST_LIST.search(text or "")
    if match is None:
        return None
    try:
        raw = json.loads(match.group(0))
    except ValueError:
        return None
    if not isinstance(raw, list) or len(raw) != n:
        return None
    if not compat and not all(type(x) in (int, bool) and x in (0, 1) for x in raw):
        return None
    return [bool(x) for x in raw]


def answer_probabilities(logprobs: Sequence[TokenLogprob] | None, n: int) -> list[float] | None:
    """P("1") per prediction as delphi reads top logprobs: at every generated token containing "1" or "0", the
    top candidates containing "0" against those containing "1" (0.0 when none does); None unless that makes
    exactly ``n`` (delphi then fails the whole batch when it asks for logprobs; we keep the predictions)."""
    if not logprobs:
        return None
    probs: list[float] = []
    for tok in logprobs:
        if "1" not in tok.token and "0" not in tok.token:
            continue
        p0 = sum(math.exp(lp) for t, lp in tok.top_logprobs.items() if "0" in t)
        p1 = sum(math.exp(lp) for t, lp in tok.top_logprobs.items() if "0" not in t and "1" in t)
        probs.append(p1 / (p0 + p1) if p0 + p1 > 0 else 0.0)
    return probs if len(probs) == n else None

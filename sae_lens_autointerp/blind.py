"""Explanation-blind reference judges: LLM clients that never read the explanation.

A score is about the explanation only if a judge that ignores it lands on the scorer's declared chance level.
These judges answer every prompt of the built-in scorers from the *structure* of what they are shown (an
excerpt's length, where its marks sit, how many runs of marks it has, a position inside the token list) or
with a constant, and so measure what the examples and protocols give away without any explanation: run one
through ``sae.score(..., llm=BlindJudge("position"))`` on a store and every scorer should score its chance
(``tests/test_blind_judges.py`` does this on the embedded store; ``benchmarks/blind_judges.py`` prints it).
They are reference instruments, not judges to publish with (their client name, ``blind:<strategy>``, is what
run.json and usage record).

Strategies (:data:`STRATEGIES`):

- ``constant``: the same answer to everything (P("1") = 0.7; intruder: the first excerpt; simulation: one
  bump 8 tokens before the end of every excerpt, where peak-aligned windows once put the peak);
- ``length``: an excerpt more than :data:`LENGTH_MARGIN` tokens (counted with ``tokenizer``) shorter than
  ``reference_length`` is called activating, one of about that length not; simulation: a bump whose height grows as the excerpt gets
  shorter. (Windows cut at a sequence start once made activating excerpts shorter.)
- ``chars``: the same with the length in characters. Unlike a token count, that is a property of the words
  themselves (code and numbers have short tokens), so a latent's examples can differ in it for real: the
  control, not the chance level, is the baseline for it;
- ``position``: marks in the second half of the excerpt are called right; simulation: 5 on the last third of
  the tokens;
- ``ramp``: simulation: a linear ramp toward the end; binary: the later the first mark, the likelier "1";
- ``marks``: fuzzing: one contiguous run of marks is called right, scattered marks wrong (the shape of true
  highlights versus random ones); other prompts as ``constant``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from .llm import BaseClient, ChatRequest, ChatResponse, ClassifyResult, Usage

_MARKS = re.compile(r"<<(.*?)>>", re.DOTALL)


def _plain(text: str) -> str:
    return text.replace("<<", "").replace(">>", "")


def _first_mark(text: str) -> float | None:
    """Where the first mark starts, as a fraction of the excerpt's plain text (None without marks)."""
    at = text.find("<<")
    if at < 0:
        return None
    return len(_plain(text[:at])) / max(len(_plain(text)), 1)


def _p_constant(text: str) -> float:
    return 0.7


#: How much shorter than the reference an excerpt must be for ``length`` to call it activating: more than
#: re-tokenizing an excerpt's text moves its count (pieces merge or split at the window's edges, a property of the
#: words), less than the windows cut at a sequence start once were (1-24 tokens short).
LENGTH_MARGIN = 3


def _p_length(length: float, reference: float) -> float:
    """Above 0.5 for an excerpt more than :data:`LENGTH_MARGIN` tokens (or characters) shorter than
    ``reference``, below it for one of about the reference length or longer."""
    return 1 / (1 + math.exp((length - reference + LENGTH_MARGIN) / (0.1 * max(reference, 1.0))))


def _p_position(text: str) -> float:
    where = _first_mark(text)
    return 0.7 if where is not None and where >= 0.5 else 0.3


def _p_ramp(text: str) -> float:
    where = _first_mark(text)
    return 0.5 if where is None else 0.1 + 0.8 * where


def _p_marks(text: str) -> float:
    runs = len(_MARKS.findall(text))
    return 0.5 if runs == 0 else (0.8 if runs == 1 else 0.2)


def _sim_constant(n: int) -> list[int]:
    return [10 if i == n - 8 else 0 for i in range(n)]


def _sim_length(n: int) -> list[int]:
    height = max(0, min(10, 42 - n))  # shorter excerpts, a taller bump
    return [height if i == n - 8 else 0 for i in range(n)]


def _sim_position(n: int) -> list[int]:
    return [5 if i >= 2 * n // 3 else 0 for i in range(n)]


def _sim_ramp(n: int) -> list[int]:
    return [round(10 * i / max(n - 1, 1)) for i in range(n)]


#: strategy -> P("1") of a binary prompt's excerpt, where it reads the excerpt's shape alone (``length`` and
#: ``chars`` read its length: :meth:`BlindJudge._p`)
_BINARY: dict[str, Callable[[str], float]] = {
    "constant": _p_constant,
    "position": _p_position,
    "ramp": _p_ramp,
    "marks": _p_marks,
}
#: strategy -> the predicted activations of an n-token excerpt
_SIMULATE: dict[str, Callable[[int], list[int]]] = {
    "constant": _sim_constant,
    "length": _sim_length,
    "chars": _sim_length,
    "position": _sim_position,
    "ramp": _sim_ramp,
    "marks": _sim_constant,
}
STRATEGIES = tuple(_SIMULATE)


class BlindJudge(BaseClient):
    """An LLM client that answers without reading the explanation (see the module docstring).

    ``reference_length``: the excerpt length around which ``length`` (tokens) and ``chars`` (characters) turn
    from "1" to "0": about the median of the store's windows. ``tokenizer``: counts ``length``'s tokens."""

    def __init__(self, strategy: str, reference_length: float = 32.0, tokenizer: Any = None, **kwargs: Any) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown blind strategy {strategy!r}; choose one of {sorted(STRATEGIES)}")
        if strategy == "length" and tokenizer is None:
            raise ValueError("the 'length' judge counts tokens: pass tokenizer=model.tokenizer")
        kwargs.setdefault("cache", False)
        super().__init__(f"blind:{strategy}", **kwargs)
        self.strategy = strategy
        self.reference = float(reference_length)
        self.tokenizer = tokenizer
        self._simulate = _SIMULATE[strategy]

    def _p(self, excerpt: str) -> float:
        if self.strategy == "length":
            text = _plain(excerpt).replace("\\n", "\n")  # prompts show newlines escaped
            return _p_length(len(self.tokenizer(text, add_special_tokens=False)["input_ids"]), self.reference)
        if self.strategy == "chars":
            return _p_length(len(_plain(excerpt)), self.reference)
        return _BINARY[self.strategy](excerpt)

    async def _classify(self, request: ChatRequest, choices: tuple[str, ...]) -> ClassifyResult:
        user = request.messages[-1][1]
        if choices == ("0", "1"):
            excerpt = user.split("Excerpt: ", 1)[1].split("\n\n", 1)[0] if "Excerpt: " in user else ""
            p1 = 0.5 if excerpt == "N/A" else self._p(excerpt)
            probs = {"0": 1 - p1, "1": p1}
        else:  # intruder: always the first excerpt
            probs = {c: (0.9 if i == 0 else 0.1 / (len(choices) - 1)) for i, c in enumerate(choices)}
        logprobs: dict[str, float | None] = {c: math.log(p) for c, p in probs.items()}
        return ClassifyResult(choices, probs, logprobs, True, "logits", Usage(len(user) // 4, 0))

    async def _chat(self, request: ChatRequest) -> ChatResponse:
        user = request.messages[-1][1]
        if "\nTokens:\n" in user:  # simulation: one integer per listed token (one line each: pieces are repr'd)
            n = len(user.split("\nTokens:\n", 1)[1].split("\n\n", 1)[0].splitlines())
            text = "[" + ", ".join(str(v) for v in self._simulate(n)) + "]"
        elif "Excerpts:\n" in user:  # several excerpts in one prompt: one digit each
            listing = user.split("Excerpts:\n", 1)[1].split("\n\n", 1)[0].splitlines()
            texts = [line.split(". ", 1)[1] if ". " in line else line for line in listing]
            text = "[" + ", ".join("1" if self._p(t) >= 0.5 else "0" for t in texts) + "]"
        else:
            text = "Explanation: text"  # an explainer prompt: a fixed, content-free answer
        return ChatResponse(
            text=text, finish_reason="stop", usage=Usage(len(user) // 4, len(text) // 2), model=self.name
        )

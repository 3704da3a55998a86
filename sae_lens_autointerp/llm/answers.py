"""What an OpenAI-compatible answer's fields may hold: text (or a list of text parts), finite token counts >= 0,
and no more text than ``max_tokens`` allows. Anything else is a malformed answer (:class:`Malformed`), which the
client retries and never caches: a wrongly typed 200 answer is the server's failure, not a finished latent."""

from __future__ import annotations

import math
from typing import Any

from .usage import Usage

#: An answer longer than CHARS_PER_TOKEN_LIMIT characters per token of ``max_tokens`` (plus the slack) came from a
#: server that ignores ``max_tokens``: it is malformed (retried, never cached or kept), not an answer.
CHARS_PER_TOKEN_LIMIT = 16
ANSWER_SLACK_CHARS = 4096


class Malformed(Exception):
    """An answer that is not a usable completion; ``kind`` is "malformed" (the client's retry budget)."""

    def __init__(self, message: str, kind: str = "malformed", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


def text_field(value: Any, field: str, body: str) -> str | None:
    """A message's ``content`` / ``refusal``: a string, None, or a list of text parts (joined: some providers
    send ``[{"type": "text", "text": ...}]``); anything else is a malformed answer (retried, never cached)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(p, dict) and isinstance(p.get("text"), str) and p.get("type", "text") in ("text", "output_text")
        for p in value
    ):
        return "".join(p["text"] for p in value)
    raise Malformed(f"message {field} is a {type(value).__name__}, not text: {body[:200]!r}")


def count(value: Any) -> int | None:
    """A token count: a finite number >= 0 (an int, or a float a server wrote as one), else None."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        return None
    return int(value)


def counts(raw: Any) -> Usage | None:
    """OpenAI's ``usage`` object as :class:`Usage`, or None where any count in it is unusable."""
    if not isinstance(raw, dict):
        return None
    details = raw.get("prompt_tokens_details")
    if details is not None and not isinstance(details, dict):
        return None
    prompt, completion = count(raw.get("prompt_tokens")), count(raw.get("completion_tokens"))
    cached = count((details or {}).get("cached_tokens"))
    if prompt is None or completion is None or cached is None:
        return None
    return Usage(prompt, completion, min(cached, prompt))


def top_dict(items: Any) -> dict[str, float]:
    """A logprob entry's alternatives as {token: logprob}, the best of duplicates (bad entries raise)."""
    out: dict[str, float] = {}
    for a in items or []:
        tok = str(a["token"])
        lp = float(a["logprob"])
        if tok not in out or lp > out[tok]:
            out[tok] = lp
    return out

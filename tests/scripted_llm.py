"""FAKE LLM client for fault injection and bookkeeping tests only (labelled as such).

It answers from a Python function of the request, records every request, and can raise after N requests.
The real-LLM tests use the embedded llama.cpp model (llm="local") and real servers (tests/llm).
"""

from __future__ import annotations

from collections.abc import Callable

from sae_lens_autointerp.llm import BaseClient, ChatRequest, ChatResponse, Usage


class ScriptedClient(BaseClient):
    def __init__(self, answer: Callable[[ChatRequest], str], *, fail_after: int | None = None, **kwargs) -> None:
        kwargs.setdefault("cache", False)
        super().__init__("scripted", **kwargs)
        self.answer = answer
        self.requests: list[ChatRequest] = []
        self.fail_after = fail_after

    async def _chat(self, request: ChatRequest) -> ChatResponse:
        if self.fail_after is not None and len(self.requests) >= self.fail_after:
            raise KeyboardInterrupt("FAKE: simulated kill")
        self.requests.append(request)
        text = self.answer(request)
        return ChatResponse(
            text=text, finish_reason="stop", usage=Usage(len(str(request.messages)) // 4, 3), model="scripted"
        )


def sensible(request: ChatRequest) -> str:
    """Explains with a fixed text; says "1" to excerpts containing 'the', lists for batched prompts."""
    user = request.messages[-1][1]
    if "Find what the marked tokens" in request.messages[0][1] or "Explanation:" in user:
        return "Explanation: common English words"
    if "Reply with only a list of" in user and "integers" in user:
        n = int(user.split("Reply with only a list of ")[1].split()[0])
        return "[" + ", ".join("0" for _ in range(n)) + "]"
    if "Reply with only a list of" in user:
        n = int(user.split("Reply with only a list of ")[1].split()[0])
        return "[" + ", ".join("1" if i % 2 else "0" for i in range(n)) + "]"
    if "odd one out" in user:
        return "1"
    return "1" if " the " in user else "0"


def distinct(request: ChatRequest) -> str:
    """Like :func:`sensible`, but every latent gets its own explanation text (so controls have a source)."""
    import hashlib

    if "Find what the marked tokens" in request.messages[0][1]:
        digest = hashlib.sha256(request.messages[-1][1].encode()).hexdigest()[:6]
        return f"Explanation: common English words, pattern {digest}"
    return sensible(request)

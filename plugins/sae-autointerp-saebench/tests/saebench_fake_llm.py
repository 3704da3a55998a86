"""FAKE LLM client for the saebench plugin's bookkeeping tests only (labelled as such)."""

from __future__ import annotations

from collections.abc import Callable

from sae_lens_autointerp.llm import BaseClient, ChatRequest, ChatResponse, Usage


class FakeClient(BaseClient):
    """FAKE LLM client for bookkeeping tests only: answers ``answer(system, user)`` and records requests."""

    def __init__(self, answer: Callable[[str, str], str]) -> None:
        super().__init__("fake", cache=False)
        self.answer = answer
        self.requests: list[ChatRequest] = []

    async def _chat(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        text = self.answer(request.messages[0][1], request.messages[-1][1])
        return ChatResponse(text=text, finish_reason="stop", usage=Usage(100, 5), model="fake")

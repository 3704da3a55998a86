"""FAKE LLM client for the neuronpedia plugin's bookkeeping tests only (labelled as such)."""

from __future__ import annotations

from sae_lens_autointerp.llm import BaseClient, ChatRequest, ChatResponse, Usage


class FakeClient(BaseClient):
    """FAKE: says "1" to every single-excerpt question and records the requests."""

    def __init__(self) -> None:
        super().__init__("openai:fake-judge", cache=False)
        self.requests: list[ChatRequest] = []

    async def _chat(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        return ChatResponse(text="1", finish_reason="stop", usage=Usage(50, 1), model="fake-judge")

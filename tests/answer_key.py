"""FAKE judge with an answer key, for testing scorer logic only (labelled as such; never a real LLM).

The planted SAE's latents fire exactly on known tokens (``sae_lens_autointerp.planted``), and a planted
latent's activation depends on the current token alone. So from any excerpt in a prompt this client can
compute the true activation of every planted latent: it maps the excerpt text back to the window it was
rendered from (every window the store can show), and reads the activation of each token off a per-token
table computed with the SAE itself. It reads the explanation from the prompt, maps it to its planted latent,
and answers what a perfect judge would, then flips each answer with probability ``eps`` (seeded by the
request, so runs are reproducible):

- detection: "1" when the explanation's latent fires somewhere in the excerpt;
- fuzzing (both variants): "1" when there are marks and every marked token fires the explanation's latent;
- a content-free excerpt ("N/A"): P("1") = 0.5;
- intruder: the excerpt that lacks the latent the other excerpts share;
- simulation: the true activations of the explanation's latent, as integers 0-10; a flipped excerpt is
  missed (all 0) when the latent fires in it, and gets one false spike (a 10 on a random token) when it does
  not: errors per excerpt, as LLM simulators make them (REVIEW.md's model of a simulator).

``classify`` answers with graded probabilities (0.9 / 0.1, method "logits"); ``chat`` with text only.
"""

from __future__ import annotations

import ast
import hashlib
import re
from typing import Any

import numpy as np
import torch

from sae_lens_autointerp.llm import BaseClient, ChatRequest, ChatResponse, ClassifyResult, Usage
from sae_lens_autointerp.text import Renderer

_MARK_RE = re.compile(r"<<|>>")


class AnswerKey:
    def __init__(self, planted: Any, store: Any, model: Any) -> None:
        self.explanations = {text: latent for latent, text in planted.explanations.items()}
        self.renderer = Renderer(model.tokenizer)
        with torch.no_grad():  # the activation of each latent on each token of the vocabulary (hook_embed)
            embed = (
                model.W_E.detach().float()
                if hasattr(model, "W_E")
                else model.original_model.get_input_embeddings().weight.detach().float()
            )
            self.table = planted.sae.encode(embed).float().numpy()  # [vocab, n_latents]
        self.windows: dict[str, list[int]] = {}  # rendered text (newlines escaped) -> token ids
        self.by_pieces: dict[tuple[str, ...], list[int]] = {}
        examples: list[Any] = []
        for latent in range(planted.sae.cfg.d_sae):
            examples += store.top_examples(latent) + store.stratified_examples(latent)
        for tokens in [e.tokens for e in examples] + [w.tokens for w in store.random_windows()]:
            self._add(np.asarray(tokens))

    def _add(self, tokens: np.ndarray) -> None:
        keep = [int(t) for t in tokens.tolist() if t >= 0 and t not in self.renderer._special]
        pieces = tuple(self.renderer.piece(t) for t in keep)
        self.by_pieces[pieces] = keep
        self.windows["".join(pieces).replace("\n", "\\n")] = keep
        self.windows["".join(p.replace("\n", "\\n") for p in pieces)] = keep

    # ------------------------------------------------------------------ truth

    def latent_of(self, explanation: str) -> int:
        if explanation not in self.explanations:
            raise KeyError(f"FAKE answer key: unknown explanation {explanation!r}")
        return self.explanations[explanation]

    def tokens_of(self, text: str) -> list[int]:
        plain = _MARK_RE.sub("", text)
        if plain not in self.windows:
            raise KeyError(f"FAKE answer key: excerpt not in the store: {plain[:60]!r}")
        return self.windows[plain]

    def fires(self, latent: int, text: str) -> bool:
        return bool((self.table[self.tokens_of(text), latent] > 0).any())

    def marks_fit(self, latent: int, text: str) -> bool:
        """Every marked token fires ``latent`` (and something is marked)."""
        ids = self.tokens_of(text)
        pieces = [self.renderer.piece(t).replace("\n", "\\n") for t in ids]
        marked, pos, inside, i = [], 0, False, 0
        char_marks = []
        while i < len(text):
            if text.startswith("<<", i):
                inside, i = True, i + 2
            elif text.startswith(">>", i):
                inside, i = False, i + 2
            else:
                char_marks.append(inside)
                i += 1
        for tok, piece in zip(ids, pieces):
            span = char_marks[pos : pos + len(piece)]
            if span and all(span):
                marked.append(tok)
            pos += len(piece)
        return bool(marked) and all(self.table[t, latent] > 0 for t in marked)

    def activations(self, latent: int, pieces: tuple[str, ...]) -> np.ndarray:
        ids = self.by_pieces[pieces]
        return self.table[ids, latent]


class AnswerKeyClient(BaseClient):
    """FAKE LLM client answering from :class:`AnswerKey` (wrong with probability ``eps``)."""

    def __init__(self, key: AnswerKey, eps: float = 0.0, **kwargs: Any) -> None:
        kwargs.setdefault("cache", False)
        super().__init__("answer-key", **kwargs)
        self.key, self.eps = key, eps
        self.requests: list[ChatRequest] = []

    def _rng(self, request: ChatRequest) -> np.random.Generator:
        seed = int(hashlib.sha256(repr(request.messages).encode()).hexdigest()[:8], 16)
        return np.random.default_rng(seed)

    def _flip(self, rng: np.random.Generator) -> bool:
        return bool(rng.random() < self.eps)

    def _truth(self, user: str, text: str) -> bool:
        explanation = user.split("Description: ", 1)[1].split("\n", 1)[0]
        latent = self.key.latent_of(explanation)
        if "marked <<like this>>" in user:
            return self.key.marks_fit(latent, text)
        return self.key.fires(latent, text)

    async def _classify(self, request: ChatRequest, choices: tuple[str, ...]) -> ClassifyResult:
        self.requests.append(request)
        user = request.messages[-1][1]
        rng = self._rng(request)
        if choices == ("0", "1"):
            excerpt = user.split("Excerpt: ", 1)[1].split("\n\n", 1)[0]
            if excerpt == "N/A":
                p1 = 0.5
            else:
                answer = self._truth(user, excerpt) != self._flip(rng)
                p1 = 0.9 if answer else 0.1
            probs = {"0": 1 - p1, "1": p1}
        else:  # intruder: the excerpt where the latent under test (the request's label) does not fire
            lines = [
                line.split(". ", 1)[1] for line in user.split("Excerpts:\n", 1)[1].split("\n\n", 1)[0].splitlines()
            ]
            odd = [i for i, t in enumerate(lines) if not self.key.fires(int(request.latent), t)]
            answer = odd[0] if len(odd) == 1 else int(rng.integers(len(lines)))
            if self._flip(rng):
                answer = int(rng.choice([i for i in range(len(lines)) if i != answer]))
            probs = {c: (0.9 if i == answer else 0.1 / (len(choices) - 1)) for i, c in enumerate(choices)}
        logprobs = {c: float(np.log(p)) for c, p in probs.items()}
        return ClassifyResult(choices, probs, logprobs, True, "logits", Usage(len(user) // 4, 0))

    async def _chat(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        user = request.messages[-1][1]
        rng = self._rng(request)
        if "\nTokens:\n" in user:  # simulation
            explanation = user.split("Description: ", 1)[1].split("\n", 1)[0]
            lines = user.split("\nTokens:\n", 1)[1].split("\n\n", 1)[0].splitlines()
            pieces = tuple(ast.literal_eval(line.split(": ", 1)[1]) for line in lines)
            acts = self.key.activations(self.key.latent_of(explanation), pieces)
            top = float(self.key.table[:, self.key.latent_of(explanation)].max())
            values = np.clip(np.round(10 * acts / top), 0, 10).astype(int) if top > 0 else np.zeros(len(acts), int)
            if self._flip(rng):
                fires = values.any()
                values = np.zeros(len(values), dtype=int)
                if not fires:
                    values[rng.integers(len(values))] = 10
            text = "[" + ", ".join(str(int(v)) for v in values) + "]"
        elif "Excerpts:\n" in user and "Description: " in user:  # batched detection / fuzzing
            lines = [
                line.split(". ", 1)[1] for line in user.split("Excerpts:\n", 1)[1].split("\n\n", 1)[0].splitlines()
            ]
            answers = [int(self._truth(user, t) != self._flip(rng)) for t in lines]
            text = "[" + ", ".join(map(str, answers)) + "]"
        else:
            raise KeyError(f"FAKE answer key: no answer for this prompt: {user[:80]!r}")
        return ChatResponse(
            text=text, finish_reason="stop", usage=Usage(len(user) // 4, len(text) // 2), model="answer-key"
        )

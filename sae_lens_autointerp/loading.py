"""Load models and SAEs by name for the CLI and examples (the Python API takes loaded objects)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .errors import ConfigError


def _hub_error(exc: BaseException) -> bool:
    """An error of fetching from the Hugging Face hub (offline, unknown repo, network)."""
    mod = type(exc).__module__ or ""
    return isinstance(exc, (OSError, ConnectionError)) or mod.startswith(
        ("huggingface_hub", "requests", "urllib3", "httpx", "httpcore")
    )


def _fetch(what: str, name: str, local_hint: str, load: Any) -> Any:
    """``load()``, with a hub failure turned into one line naming what could not be fetched and the fix."""
    try:
        return load()
    except Exception as exc:
        if not _hub_error(exc):
            raise
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"could not load {what} {name!r} from the Hugging Face hub ({type(exc).__name__}: {first}). Offline or "
            f"not found: {local_hint}, or put the files in the Hugging Face cache and set HF_HUB_OFFLINE=1"
        ) from None


def load_sae(release: str, sae_id: str | None = None, device: str = "cpu") -> Any:
    """A SAELens SAE from a local folder (``SAE.load_from_disk``) or a release + id (``SAE.from_pretrained``)."""
    from sae_lens import SAE

    if Path(release).expanduser().is_dir():
        return SAE.load_from_disk(str(Path(release).expanduser()), device=device)
    if sae_id is None:
        raise ConfigError(f"SAE release {release!r} needs --sae-id (e.g. blocks.8.hook_resid_pre)")
    return _fetch(
        "the SAE",
        f"{release} / {sae_id}",
        "pass a local folder saved with sae.save_model(PATH) as --sae PATH",
        lambda: SAE.from_pretrained(release, sae_id, device=device),
    )


def load_model(name: str, *, sae: Any = None, kind: str = "auto", device: str = "cpu") -> Any:
    """A TransformerLens model.

    ``kind="hooked"`` loads ``HookedTransformer.from_pretrained`` with the SAE's
    ``model_from_pretrained_kwargs`` (needed for SAEs trained on HookedTransformer's processed weights,
    e.g. ``gpt2-small-res-jb``); ``kind="bridge"`` boots a ``TransformerBridge`` (any HF model or local
    folder). ``auto`` picks the bridge for local folders and HookedTransformer for hub names.
    """
    local = Path(name).expanduser().is_dir()
    if kind == "auto":
        kind = "bridge" if local else "hooked"
    if kind == "bridge":
        from transformer_lens.model_bridge import TransformerBridge

        path = str(Path(name).expanduser()) if local else name
        return _fetch(
            "the model",
            name,
            "pass a local Hugging Face model folder as --model PATH",
            lambda: TransformerBridge.boot_transformers(path, device=device),
        )
    if kind != "hooked":
        raise ConfigError(f"model kind must be 'auto', 'hooked' or 'bridge', got {kind!r}")
    from transformer_lens import HookedTransformer

    kwargs: dict[str, Any] = {}
    if sae is not None and "model_from_pretrained_kwargs" in sae.cfg.metadata:
        kwargs.update(sae.cfg.metadata.model_from_pretrained_kwargs or {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TL 3 deprecates from_pretrained; it still works
        return _fetch(
            "the model",
            name,
            "pass a local Hugging Face model folder as --model PATH --model-kind bridge",
            lambda: HookedTransformer.from_pretrained(name, device=device, **kwargs),
        )

"""Load models and SAEs by name for the CLI and examples (the Python API takes loaded objects)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from .errors import ConfigError

log = logging.getLogger(__name__)


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
    sae = _fetch(
        "the SAE",
        f"{release} / {sae_id}",
        "pass a local folder saved with sae.save_model(PATH) as --sae PATH",
        lambda: SAE.from_pretrained(release, sae_id, device=device),
    )
    # SAELens keeps no record of the release an SAE came from; runs and exports name it (sae_provenance).
    sae.cfg.metadata.sae_lens_release, sae.cfg.metadata.sae_lens_sae_id = release, sae_id
    return sae


MODEL_KINDS = ("auto", "hooked", "bridge", "hf", "nnsight")


def load_model(name: str, *, sae: Any = None, kind: str = "auto", device: str = "cpu") -> Any:
    """The subject model.

    ``kind="hooked"`` loads ``HookedTransformer.from_pretrained`` with the SAE's
    ``model_from_pretrained_kwargs`` (needed for SAEs trained on HookedTransformer's processed weights,
    e.g. ``gpt2-small-res-jb``); ``kind="bridge"`` boots a ``TransformerBridge`` (any HF model or local
    folder); ``kind="hf"`` loads ``AutoModelForCausalLM`` (read through the hook-name map, docs/models.md);
    ``kind="nnsight"`` an nnsight ``TransformersModel``. ``auto`` picks the bridge for local folders and
    HookedTransformer for hub names.
    """
    local = Path(name).expanduser().is_dir()
    if kind == "auto":
        kind = "bridge" if local else "hooked"
    path = str(Path(name).expanduser()) if local else name
    if kind == "hf":
        from transformers import AutoModelForCausalLM

        def load_hf() -> Any:
            model: Any = AutoModelForCausalLM.from_pretrained(path)
            return model.to(device).eval()

        return _fetch("the model", name, "pass a local Hugging Face model folder as --model PATH", load_hf)
    if kind == "nnsight":
        try:
            from nnsight.modeling.transformers import TransformersModel
        except ImportError:
            raise ConfigError(
                "model kind 'nnsight' needs nnsight: pip install 'sae-lens-autointerp[nnsight]'"
            ) from None
        return _fetch(
            "the model",
            name,
            "pass a local Hugging Face model folder as --model PATH",
            lambda: TransformersModel(path, task="text-generation", dispatch=True, device_map=device),
        )
    if kind == "bridge":
        from transformer_lens.model_bridge import TransformerBridge

        return _fetch(
            "the model",
            name,
            "pass a local Hugging Face model folder as --model PATH",
            lambda: TransformerBridge.boot_transformers(path, device=device),
        )
    if kind != "hooked":
        raise ConfigError(f"model kind must be one of {MODEL_KINDS}, got {kind!r}")
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


# ------------------------------------------------------------------------------------------------ SAELens defaults
#: The SAELens metadata fields that say where an SAE comes from; recorded in run.json and every export.
PROVENANCE_FIELDS = ("sae_lens_release", "sae_lens_sae_id", "neuronpedia_id", "model_name", "hook_name", "dataset_path")


def sae_provenance(sae: Any) -> dict[str, Any]:
    """Where the SAE comes from, from its ``cfg.metadata``: the SAELens release and SAE id (set by
    :func:`load_sae`; set them yourself for an SAE loaded otherwise), its Neuronpedia id, the model, hook and
    training dataset. Fields the SAE does not record are None."""
    md = getattr(getattr(sae, "cfg", None), "metadata", None)
    get = getattr(md, "get", None)
    return {name: (get(name) if callable(get) else None) for name in PROVENANCE_FIELDS}


def default_dataset(sae: Any) -> str:
    """The SAE's training dataset (``cfg.metadata.dataset_path``), used when ``dataset=`` is omitted."""
    path = sae_provenance(sae)["dataset_path"]
    if not path:
        raise ConfigError(
            "pass dataset= (a Hugging Face dataset name, a local file, a list of strings or token ids): this SAE "
            "records no cfg.metadata.dataset_path to default to"
        )
    log.info("dataset= not given: using the SAE's training dataset %r (cfg.metadata.dataset_path)", path)
    return str(path)


def default_model(sae: Any) -> Any:
    """The model the SAE was trained on, loaded as SAELens would (``cfg.metadata.model_name`` with its
    ``model_from_pretrained_kwargs``), used when ``model=`` is omitted. Loading is logged: it can be large."""
    md = sae.cfg.metadata
    name = md.get("model_name")
    if not name:
        raise ConfigError(
            "pass model= (a HookedTransformer, TransformerBridge, transformers or nnsight model): this SAE records "
            "no cfg.metadata.model_name to load"
        )
    kwargs = md.get("model_from_pretrained_kwargs") or {}
    device = str(getattr(sae, "device", "cpu") or "cpu")
    log.warning(
        "model= not given: loading %r (HookedTransformer.from_pretrained, or a TransformerBridge for a local folder; "
        "device=%r, kwargs %r), from the SAE's "
        "cfg.metadata (model_name, model_from_pretrained_kwargs)",
        name,
        device,
        kwargs,
    )
    return load_model(str(name), sae=sae, kind="auto", device=device)

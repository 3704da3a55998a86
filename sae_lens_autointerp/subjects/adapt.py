"""The :class:`~.base.Subject` of a model object: which kind it is, kept one per object."""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .base import ModuleReader, Subject
from .hf import HFModel
from .nnsight_model import NNsightModel
from .tl import TLSubject


def with_hook_module(model: Any, hook_module: str | Mapping[str, str] | None, hook_fn: ModuleReader | None) -> Subject:
    """``model`` (Hugging Face or nnsight) read at ``hook_module`` / ``hook_fn`` instead of the mapped points."""
    subject = as_subject(model)
    if isinstance(subject, NNsightModel):
        return NNsightModel(subject.model, subject.tokenizer, hook_module=hook_module, hook_fn=hook_fn)
    if isinstance(subject, HFModel):
        return HFModel(subject.model, subject.tokenizer, hook_module=hook_module, hook_fn=hook_fn)
    raise ConfigError(
        f"hook_module= / hook_fn= are for Hugging Face and nnsight models; a {type(model).__name__} names its hook "
        "points itself (set sae.cfg.metadata.hook_name to one of model.hook_dict)"
    )


_subjects_guard = threading.Lock()
_subjects: weakref.WeakKeyDictionary[Any, Subject] = weakref.WeakKeyDictionary()


def as_subject(model: Any) -> Subject:
    """The :class:`Subject` of a model object (one per object, so a tokenizer is loaded once)."""
    if isinstance(model, Subject):
        return model
    with _subjects_guard:
        try:
            found = _subjects.get(model)
        except TypeError:  # not weak-referenceable
            found = None
        if found is not None:
            return found
        subject = _make_subject(model)
        try:
            _subjects[model] = subject
        except TypeError:
            pass
        return subject


def _make_subject(model: Any) -> Subject:
    from transformer_lens import HookedTransformer

    if isinstance(model, HookedTransformer):
        return TLSubject(model, "hooked")
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # transformer-lens 2.x
        TransformerBridge = None  # type: ignore[assignment,misc]
    if TransformerBridge is not None and isinstance(model, TransformerBridge):
        return TLSubject(model, "bridge")
    if _is_nnsight(model):
        return NNsightModel(model)
    try:
        from transformers import PreTrainedModel
    except ImportError:
        PreTrainedModel = None  # type: ignore[assignment,misc]
    if PreTrainedModel is not None and isinstance(model, PreTrainedModel):
        return HFModel(model)
    raise ConfigError(
        f"model must be a HookedTransformer, TransformerBridge (or their SAE variants), a transformers "
        f"PreTrainedModel, sai.HFModel or an nnsight model; got {type(model).__name__}"
    )


def _nnsight_base() -> type | None:
    """nnsight's model base class, only when nnsight is already imported (an nnsight model implies it): importing
    nnsight mounts ``.save`` on every object of the process (its PYMOUNT setting), which a library must not
    do behind its user's back (it breaks beartype, which SAEBench uses)."""
    if "nnsight" not in sys.modules:
        return None
    from nnsight import Envoy

    return Envoy


def _is_nnsight(model: Any) -> bool:
    base = _nnsight_base()
    return base is not None and isinstance(model, base)

"""Model adapter: run the subject model up to the SAE's hook point and hand back the activations.

Works with every model kind of :mod:`sae_lens_autointerp.subjects`: ``HookedTransformer`` /
``HookedSAETransformer``, ``TransformerBridge`` / ``SAETransformerBridge``, Hugging Face ``transformers`` models
and nnsight models. The forward pass is cut short by raising from the hook itself, so no layer after the hook runs (and no logits are
computed). The activation is captured by closure, not through ``hook.name`` (on a bridge that is the
canonical name, e.g. ``blocks.3.hook_out``).
"""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import torch

from ..errors import ConfigError
from ..subjects import StopForward, Subject, as_subject, tokenizer_digest, weights_digest

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel

#: The models a harvest runs: ``HookedTransformer`` / ``HookedSAETransformer``, ``TransformerBridge`` /
#: ``SAETransformerBridge``, a ``transformers`` ``PreTrainedModel``, :class:`~sae_lens_autointerp.subjects.HFModel`
#: or an nnsight model.
SubjectModel: TypeAlias = "HookedTransformer | TransformerBridge | PreTrainedModel | Subject | Any"


_StopForward = StopForward  # old private name

_locks_guard = threading.Lock()
_locks: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()


def model_lock(model: Any) -> threading.RLock:
    """The one lock of a model object. TransformerLens hooks are installed on modules the whole model shares,
    so every forward pass that adds hooks (harvest capture, neighbour negatives, steering, output explainers)
    holds this lock: a capture hook must never fire inside another thread's steered forward, nor the reverse.
    Re-entrant, so a holder may call other hook users."""
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = threading.RLock()
            _locks[model] = lock
        return lock


@dataclass(frozen=True)
class HookSpec:
    """Where and how to read the SAE's input from the model."""

    hook_name: str
    layer: int | None  # block index of the hook, None for embedding-level hooks
    head_index: int | None
    prepend_bos: bool
    context_size: int | None
    seqpos_slice: tuple[int | None, ...] | None = None  # positions the SAE was trained on; others are masked


def hook_spec_for(sae: Any) -> HookSpec:
    """Read the hook point and its options from ``sae.cfg.metadata`` (SAELens 6 layout)."""
    md = sae.cfg.metadata
    hook_name = md.get("hook_name")
    if not hook_name:
        raise ConfigError(
            "the SAE has no cfg.metadata.hook_name, so we cannot tell where to read its input; set it, e.g. "
            "`sae.cfg.metadata.hook_name = 'blocks.8.hook_resid_pre'`"
        )
    match = re.search(r"blocks\.(\d+)\.", hook_name)
    head_index = md.get("hook_head_index")
    prepend_bos = md.get("prepend_bos")
    return HookSpec(
        hook_name=hook_name,
        layer=int(match.group(1)) if match else None,
        head_index=int(head_index) if head_index is not None else None,
        prepend_bos=True if prepend_bos is None else bool(prepend_bos),
        context_size=md.get("context_size"),
        seqpos_slice=tuple(md.get("seqpos_slice")) if md.get("seqpos_slice") else None,
    )


def model_kind(model: Any) -> str:
    """``"hooked"`` (HookedTransformer-likes), ``"bridge"`` (TransformerBridge-likes), ``"hf"`` (transformers
    models) or ``"nnsight"``."""
    return as_subject(model).kind


class ModelAdapter:
    """Capture the SAE input activation for a batch of token ids, validated against the SAE up front."""

    def __init__(self, model: Any, sae: Any) -> None:
        self.model = model
        self.subject: Subject = as_subject(model)
        self.kind = self.subject.kind
        self.sae = sae
        self.spec = hook_spec_for(sae)
        tokenizer = self.subject.tokenizer
        if tokenizer is None:
            raise ConfigError("the model has no tokenizer; load it with one (TransformerLens does by default)")
        self.tokenizer: Any = tokenizer  # a transformers PreTrainedTokenizerBase
        self.hook_point = self.subject.resolve(self.spec.hook_name)
        self.n_ctx = self.subject.n_ctx
        self.device = self.subject.device

    def special_token_ids(self) -> list[int]:
        """Token ids whose activations are masked (BOS, EOS, padding and any other special token)."""
        tok = self.tokenizer
        ids = set(getattr(tok, "all_special_ids", []) or [])
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(tok, attr, None)
            if value is not None:
                ids.add(int(value))
        return sorted(ids)

    def bos_token_id(self) -> int | None:
        value = getattr(self.tokenizer, "bos_token_id", None)
        if value is None:
            value = getattr(self.tokenizer, "eos_token_id", None)
        return None if value is None else int(value)

    def separator_token_id(self) -> int | None:
        """Placed between concatenated documents."""
        value = getattr(self.tokenizer, "eos_token_id", None)
        return self.bos_token_id() if value is None else int(value)

    def pad_token_id(self) -> int:
        value = getattr(self.tokenizer, "pad_token_id", None)
        if value is None:
            value = self.separator_token_id()
        return 0 if value is None else int(value)

    def capture(self, tokens: torch.Tensor) -> torch.Tensor:
        """Activations at the SAE's hook for ``tokens`` [batch, seq], shaped [batch, seq, d_in],
        on the SAE's device and dtype. Nothing after the hook is computed."""
        return capture_many([self], tokens)[0]

    def _prepare(self, act: torch.Tensor) -> torch.Tensor:
        """The hook's raw activation as this SAE reads it: one head, or the heads concatenated."""
        if self.spec.head_index is not None:
            if act.ndim != 4:
                raise ConfigError(
                    f"sae.cfg.metadata.hook_head_index={self.spec.head_index} but hook "
                    f"{self.spec.hook_name!r} gives shape {tuple(act.shape)} (no head dimension)"
                )
            act = act[:, :, self.spec.head_index, :]
        elif act.ndim == 4:  # per-head hook (hook_z etc.) read by a whole-layer SAE: heads concatenated
            act = act.flatten(-2)
        return act.to(device=self.sae.device, dtype=self.sae.dtype)

    def check_width(self) -> None:
        """Run two tokens through the model and check the SAE's ``d_in`` against the hook width."""
        probe = torch.tensor([[self.pad_token_id(), self.pad_token_id()]], dtype=torch.long)
        width = self.capture(probe).shape[-1]
        d_in = int(self.sae.cfg.d_in)
        if width != d_in:
            raise ConfigError(
                f"SAE d_in={d_in} but hook {self.spec.hook_name!r} of this model is {width} wide. The SAE was "
                "trained on another model or hook; load the matching model, or set hook_head_index for per-head SAEs."
            )

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the model for store keys: its name and shape, a hash of *every* parameter (a fine-tune
        that changes one layer is another model) and of the tokenizer's vocabulary. Hashing streams each
        tensor's bytes once (about 1 s for SmolLM2-135M on 2 busy cores)."""
        return {
            **self.subject.describe(),
            "weights_blake2b": weights_digest(self.subject),
            "tokenizer_sha256": tokenizer_digest(self.tokenizer),
        }


@torch.no_grad()
def capture_many(adapters: list[ModelAdapter], tokens: torch.Tensor) -> list[torch.Tensor]:
    """One forward pass for several SAEs on one model: every SAE's hook is captured, and the pass stops once
    the last of them has fired (and at the deepest block, a second guard), so nothing deeper runs. Returns
    one activation per adapter, as :meth:`ModelAdapter.capture` would give it alone."""
    model = adapters[0].model
    if any(a.model is not model for a in adapters):
        raise ConfigError("capture_many needs adapters of one model object")
    points = sorted({a.hook_point for a in adapters})
    captured: dict[str, torch.Tensor] = {}

    def make_hook(point: str) -> Any:
        def hook_fn(activation: torch.Tensor) -> None:
            captured.setdefault(point, activation)
            if len(captured) == len(points):
                raise StopForward

        return hook_fn

    tokens = tokens.to(adapters[0].device)
    with model_lock(model):
        adapters[0].subject.run(tokens, [(p, make_hook(p)) for p in points], logits=False)
    missing = [a.spec.hook_name for a in adapters if a.hook_point not in captured]
    if missing:
        raise ConfigError(
            f"hook {missing[0]!r} did not fire during the forward pass; is it behind "
            "stop_at_layer or replaced by an attached SAE? Detach SAEs (reset_saes()) before harvesting."
        )
    return [a._prepare(captured[a.hook_point]) for a in adapters]

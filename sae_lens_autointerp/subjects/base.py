"""The :class:`Subject` interface: one model, whatever library holds it, as the harvest, steering, ablation and
the logit lens need it (see the package doc)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ..errors import ConfigError

#: ``fn(activation) -> replacement or None``: read (and optionally replace) the tensor at a hook point.
HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]
#: ``hook_fn(module, args, output) -> tensor``: pick the SAE's input from a module call (HFModel's escape hatch).
ModuleReader = Callable[[torch.nn.Module, tuple[Any, ...], Any], torch.Tensor]


class StopForward(Exception):
    """Raised inside a hook once the activation is captured (ends the forward pass early)."""


class Subject:
    """One model, as the harvest, steering and ablation need it (see the module doc)."""

    kind: str = ""
    model: Any
    tokenizer: Any

    def resolve(self, hook_name: str, *, what: str = "cfg.metadata.hook_name") -> str:
        """The point of this model that ``hook_name`` denotes, or a :class:`ConfigError` naming the fix."""
        raise NotImplementedError

    def layer_of(self, point: str) -> int | None:
        """The block index of a point (``None`` for embedding-level points and named modules)."""
        match = re.search(r"blocks\.(\d+)\.", point)
        return int(match.group(1)) if match else None

    def check_steerable(self, point: str) -> None:
        """Raise when writing to ``point`` would not change the model's computation."""

    def run(self, ids: torch.Tensor, hooks: Sequence[tuple[str, HookFn]], *, logits: bool) -> torch.Tensor | None:
        """One forward pass of ``ids`` [batch, seq] with ``hooks``; the logits when ``logits`` (else None)."""
        raise NotImplementedError

    @property
    def n_ctx(self) -> int | None:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    @property
    def d_vocab(self) -> int:
        raise NotImplementedError

    @property
    def name(self) -> str:
        raise NotImplementedError

    def default_prepend_bos(self) -> bool:
        return True

    def unembedding(self) -> torch.Tensor:
        """``W_U`` [d_model, vocab] as float32 (the logit lens: a direction's direct effect on the logits), or a
        :class:`ConfigError` when the model has none."""
        raise NotImplementedError

    def final_norm_weight(self) -> torch.Tensor | None:
        """The final normalisation's elementwise scale as float32, when it is not folded into ``W_U`` (None
        when the model keeps none)."""
        raise NotImplementedError

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.model.named_parameters())

    def describe(self) -> dict[str, Any]:
        """Name and shape of the model for store keys (its weights are hashed by the caller)."""
        raise NotImplementedError


def float_unembedding(w_u: torch.Tensor | None, model: Any) -> torch.Tensor:
    """``w_u`` detached as float32, or the error that ``model`` has no unembedding."""
    if w_u is None:
        raise ConfigError(f"{type(model).__name__} has no W_U (unembedding matrix)")
    return w_u.detach().float()

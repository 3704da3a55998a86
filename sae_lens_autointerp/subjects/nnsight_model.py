"""nnsight models: the points of :class:`~.hf.HFModel` on the model nnsight wraps, read and written inside
nnsight's own ``trace`` (locally, or remotely through NDIF: reading only)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..errors import ConfigError
from .base import HookFn, StopForward, Subject
from .hf import HFModel

log = logging.getLogger(__name__)


class NNsightModel(Subject):
    """An nnsight model (``LanguageModel`` / ``TransformersModel`` / ``NNsight`` around a Hugging Face model):
    the points of :class:`HFModel` on the wrapped model, read and written inside nnsight's own ``trace``.

    ``remote=True`` (NDIF; not tested here, nothing can reach NDIF from the test machines) runs each trace
    remotely: the trace only saves the hook's tensor and stops, and everything else (encoding, statistics)
    runs here on the saved tensor. Reading only: steering needs our Python code between two layers, which a
    remote trace cannot run, so it is refused before any request.

    A local model created lazily (``TransformersModel(repo_id)`` / ``LanguageModel(repo_id)`` without
    ``dispatch=True``: its weights on the meta device until the first trace) is dispatched here, once: its
    weights are hashed for the store key and its modules hooked, and nnsight replaces the wrapped module when
    it dispatches."""

    kind = "nnsight"

    def __init__(self, model: Any, tokenizer: Any = None, *, remote: bool = False, **hf_kwargs: Any) -> None:
        if not remote and getattr(model, "dispatched", True) is False and callable(getattr(model, "dispatch", None)):
            log.info(
                "dispatching the lazy nnsight model %s (loading its weights) before using it", type(model).__name__
            )
            model.dispatch()
        inner = getattr(model, "_module", None)
        if not isinstance(inner, torch.nn.Module):
            raise ConfigError(f"{type(model).__name__} does not wrap a torch module (no ._module)")
        self.model = model
        self.remote = bool(remote)
        self.hf = HFModel(inner, tokenizer if tokenizer is not None else getattr(model, "tokenizer", None), **hf_kwargs)
        self.tokenizer = self.hf.tokenizer

    def resolve(self, hook_name: str, *, what: str = "cfg.metadata.hook_name") -> str:
        return self.hf.resolve(hook_name, what=what)

    def layer_of(self, point: str) -> int | None:
        return self.hf.layer_of(point)

    def check_steerable(self, point: str) -> None:
        if self.remote:
            raise ConfigError(
                "cannot steer a remote (NDIF) nnsight model: steering runs our code inside the forward pass; "
                "load the model locally (remote=False) for intervention scoring and output-side explainers"
            )
        self.hf.check_steerable(point)

    def _run_remote(
        self, ids: torch.Tensor, ordered: list[tuple[str, list[HookFn]]], logits: bool
    ) -> torch.Tensor | None:
        """Save every point's tensor in one remote trace, then run the hooks here on what came back."""
        if logits:
            raise ConfigError("a remote nnsight model is read here through saved hook tensors only, not logits")
        from nnsight import save  # the function, not value.save(): that one needs nnsight's PYMOUNT

        envoys = [(point, self._envoy(self.hf.point(point).module)) for point, _ in ordered]
        saved: list[Any] = []
        with self.model.trace(ids, remote=True) as tracer:
            for point, envoy in envoys:
                value = envoy.output if self.hf.point(point).io == "output" else envoy.input
                saved.append(save(value))
            tracer.stop()
        for (point, fns), (_, envoy), value in zip(ordered, envoys, saved):
            for fn in fns:
                try:
                    if fn(self.hf.read(point, envoy._module, value)) is not None:
                        raise ConfigError("a remote nnsight model cannot be written to (steered) here")
                except StopForward:
                    return None
        return None

    def _envoy(self, path: str) -> Any:
        envoy = self.model
        for part in path.split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        return envoy

    def _visit(self, grouped: list[tuple[str, list[HookFn]]], tracer: Any, logits: bool, box: dict[str, Any]) -> None:
        """The body of the trace: every point in execution order, read, hooked, written back. A hook's
        StopForward becomes nnsight's own stop (an exception raised out of a trace costs a traceback rebuild)."""
        for point, fns in grouped:
            p = self.hf.point(point)
            envoy = self._envoy(p.module)
            try:
                if p.io == "output":
                    changed = self.hf.apply(point, envoy._module, envoy.output, fns)
                    if changed is not None:
                        envoy.output = changed
                else:
                    changed = self.hf.apply(point, envoy._module, envoy.input, fns)
                    if changed is not None:
                        envoy.input = changed
            except StopForward:
                box["stopped"] = True
                tracer.stop()
                return
        if logits:
            box["logits"] = self.model.output.logits
        else:
            tracer.stop()  # every hook has run: nothing after the last point is computed

    def run(self, ids: torch.Tensor, hooks: Sequence[tuple[str, HookFn]], *, logits: bool) -> torch.Tensor | None:
        grouped: dict[str, list[HookFn]] = {}
        for point, fn in hooks:
            grouped.setdefault(point, []).append(fn)
        ordered = sorted(grouped.items(), key=lambda item: self.hf.execution_order(item[0]))
        if self.remote:
            return self._run_remote(ids, ordered, logits)
        box: dict[str, Any] = {}
        with self.model.trace(ids) as tracer:
            self._visit(ordered, tracer, logits, box)
        return None if box.get("stopped") else box.get("logits")

    @property
    def n_ctx(self) -> int | None:
        return self.hf.n_ctx

    @property
    def device(self) -> torch.device:
        return self.hf.device

    @property
    def d_vocab(self) -> int:
        return self.hf.d_vocab

    @property
    def name(self) -> str:
        return self.hf.name

    def unembedding(self) -> torch.Tensor:
        return self.hf.unembedding()

    def final_norm_weight(self) -> torch.Tensor | None:
        return self.hf.final_norm_weight()

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self.hf.named_parameters()

    def describe(self) -> dict[str, Any]:
        return {**self.hf.describe(), "class": f"nnsight:{type(self.hf.model).__name__}"}

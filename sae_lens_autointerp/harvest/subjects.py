"""The model whose latents we read, whatever library holds it: one interface over TransformerLens
(``HookedTransformer`` / ``TransformerBridge`` and their SAE variants), plain Hugging Face ``transformers``
models and nnsight models.

Everything that runs the subject model (harvest capture, steering, ablation, neighbour negatives, the decoder's
logit lens) goes through :class:`Subject`: ``resolve`` turns the SAE's TransformerLens hook name into a point
of this model (refusing an unknown one before any forward pass), and ``run`` does one forward pass with
hook functions ``fn(activation) -> replacement | None`` at those points. A hook may raise
:class:`StopForward` to end the pass once it has what it needs, so nothing after it is computed.

- TransformerLens: its own hook points (``model.hooks``), cut short with ``stop_at_layer`` as a second guard.
- Hugging Face: the hook name is mapped to the input or output of one module (``hookmap.py``) and read or
  written with PyTorch forward (pre-)hooks; ``HFModel(..., hook_module=, hook_fn=)`` names the module
  yourself for tensors the map does not know.
- nnsight: the same module points, read and written inside nnsight's own ``trace`` (in execution order, as
  nnsight requires), on the model nnsight wraps. ``NNsightModel(model, remote=True)`` reads through NDIF
  (saved tensors only; steering refused, untested here: see docs/models.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..errors import ConfigError
from .hookmap import ModulePoint, family_of, map_hook, n_layers_of, text_config

log = logging.getLogger(__name__)

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

    def unembedding(self) -> torch.Tensor | None:
        """``W_U`` [d_model, vocab], or None when the model has none."""
        raise NotImplementedError

    def final_norm_weight(self) -> torch.Tensor | None:
        """The final normalisation's elementwise scale, when it is not folded into ``W_U``."""
        raise NotImplementedError

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.model.named_parameters())

    def describe(self) -> dict[str, Any]:
        """Name and shape of the model for store keys (its weights are hashed by the caller)."""
        raise NotImplementedError


#: The hook level our per-batch hooks are added under: TransformerLens's ``hooks()`` contexts use levels >= 1, so
#: ``remove_hooks(level=_OWN_LEVEL)`` removes ours and nothing a caller added.
_OWN_LEVEL = -0x5AE


class TLSubject(Subject):
    """``HookedTransformer`` / ``HookedSAETransformer`` (``kind="hooked"``), ``TransformerBridge`` /
    ``SAETransformerBridge`` (``kind="bridge"``)."""

    def __init__(self, model: Any, kind: str) -> None:
        self.model, self.kind = model, kind
        self.tokenizer = getattr(model, "tokenizer", None)
        self._points: dict[str, Any] = {}  # hook point name -> HookPoint, once TransformerLens has checked it

    def resolve(self, hook_name: str, *, what: str = "cfg.metadata.hook_name") -> str:
        names = set(self.model.hook_dict.keys())
        point = hook_name
        # SAETransformerBridge lists only canonical names (blocks.L.hook_out) in hook_dict, so resolve aliases
        # such as blocks.L.hook_resid_post the way it does.
        resolve = getattr(self.model, "_resolve_hook_name", None)
        if point not in names and callable(resolve):
            point = resolve(point)
        if point not in names:
            import difflib

            close = difflib.get_close_matches(hook_name, sorted(names), n=5)
            raise ConfigError(
                f"hook {hook_name!r} (from sae.{what}) is not a hook point of this {type(self.model).__name__}. "
                f"Closest: {close or 'none'}. Load the model the SAE was trained on, or fix the SAE's metadata."
            )
        return str(point)

    def run(self, ids: torch.Tensor, hooks: Sequence[tuple[str, HookFn]], *, logits: bool) -> torch.Tensor | None:
        def tl_hook(fn: HookFn) -> Any:
            def hook(activation: torch.Tensor, hook: Any) -> torch.Tensor | None:  # noqa: ARG001 - hook.name lies
                return fn(activation)

            return hook

        stop = None
        if not logits:
            known = [layer for p, _ in hooks if (layer := self.layer_of(p)) is not None]
            stop = max(known) + 1 if known else None  # embedding hooks fire before block 0
        fwd = [(p, tl_hook(fn)) for p, fn in hooks]
        checked = all(p in self._points for p, _ in fwd)
        with self._attached(fwd) if checked else self.model.hooks(fwd_hooks=fwd):
            if not checked:  # TransformerLens checked the points as it added them (a gated-off point raises there)
                hook_dict = self.model.hook_dict
                self._points.update((p, hook_dict[p]) for p, _ in fwd)
            try:
                # stop_at_layer is a second guard in case a wrapper swallows our exception.
                out = self.model(ids, return_type="logits" if logits else None, stop_at_layer=stop)
            except StopForward:
                return None
        return out if logits else None

    @contextmanager
    def _attached(self, fwd: Sequence[tuple[str, Any]]) -> Iterator[None]:
        """The hooks added to their (checked) hook points directly, and removed after: what ``model.hooks()``
        does, without its per-call look-ups (on a TransformerBridge ``hooks()`` builds ``hook_dict`` and an alias
        map each time: ~18 ms per batch, ~5% of a 4-block forward of SmolLM2 on 2 cores)."""
        points = [self._points[p] for p, _ in fwd]
        try:
            for point, (_, fn) in zip(points, fwd):
                point.add_hook(fn, dir="fwd", level=_OWN_LEVEL)
            yield
        finally:
            for point in points:
                point.remove_hooks("fwd", level=_OWN_LEVEL)

    @property
    def n_ctx(self) -> int | None:
        return int(getattr(self.model.cfg, "n_ctx", 0) or 0) or None

    @property
    def device(self) -> torch.device:
        return torch.device(str(getattr(self.model.cfg, "device", "cpu") or "cpu"))

    @property
    def d_vocab(self) -> int:
        return int(getattr(self.model.cfg, "d_vocab", 0) or 0) or len(self.tokenizer)

    @property
    def name(self) -> str:
        return str(getattr(self.model.cfg, "model_name", "") or type(self.model).__name__)

    def default_prepend_bos(self) -> bool:
        return bool(getattr(self.model.cfg, "default_prepend_bos", True))

    def unembedding(self) -> torch.Tensor | None:
        w_u = getattr(self.model, "W_U", None)
        return None if w_u is None else w_u.detach()

    def final_norm_weight(self) -> torch.Tensor | None:
        ln = getattr(self.model, "ln_final", None)
        if ln is None:
            return None
        for name, param in ln.named_parameters():
            if name == "w" or name.endswith("weight"):
                return param.detach().float()
        return None

    def describe(self) -> dict[str, Any]:
        cfg = self.model.cfg
        return {
            "class": type(self.model).__name__,
            "name": str(getattr(cfg, "model_name", "") or ""),
            "n_layers": int(getattr(cfg, "n_layers", 0) or 0),
            "d_model": int(getattr(cfg, "d_model", 0) or 0),
        }


def _first(value: Any) -> torch.Tensor:
    """The hidden-state tensor of a module's output or positional input (modules often return tuples)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    out = getattr(value, "last_hidden_state", None)
    if isinstance(out, torch.Tensor):
        return out
    raise ConfigError(f"cannot find the activation tensor in a module value of type {type(value).__name__}")


def _with_first(value: Any, tensor: torch.Tensor) -> Any:
    """``value`` with its hidden-state tensor replaced (the inverse of :func:`_first`)."""
    if isinstance(value, torch.Tensor):
        return tensor
    if isinstance(value, tuple):
        return (tensor, *value[1:])
    if isinstance(value, list):
        return [tensor, *value[1:]]
    raise ConfigError(f"cannot replace the activation in a module value of type {type(value).__name__}")


class HFModel(Subject):
    """A Hugging Face ``transformers`` causal LM, read and steered through PyTorch hooks on its modules.

    ``harvest(sae, hf_model, ...)`` wraps a ``PreTrainedModel`` in this class by itself (loading its tokenizer
    from ``config._name_or_path``); build one yourself to pass the tokenizer, or to name the module of a
    tensor the hook-name map does not know:

    - ``hook_module``: a dotted module path (``"model.layers.8"``), or a mapping of the SAE's hook name to one,
      read instead of the mapped point (its output unless ``hook_fn`` says otherwise);
    - ``hook_fn(module, args, output) -> tensor``: picks the SAE's input from that module's call. Such a point
      is read-only: steering needs a tensor it can write back, so it is refused there.
    """

    kind = "hf"

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        hook_module: str | Mapping[str, str] | None = None,
        hook_fn: ModuleReader | None = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise ConfigError(f"HFModel needs a transformers PreTrainedModel, got {type(model).__name__}")
        if hook_fn is not None and hook_module is None:
            raise ConfigError("hook_fn reads a module's call: pass hook_module= too (the module it reads)")
        self.model = model
        self.config = model.config
        self.hook_module, self.hook_fn = hook_module, hook_fn
        self.tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(model)
        self.layers_path = _layers_path(model)
        self._points: dict[str, ModulePoint] = {}
        self._named: set[str] = set()  # hook names resolved through a single hook_module
        self._order = {name: i for i, (name, _) in enumerate(model.named_modules())}

    # ---------------------------------------------------------------- points

    def _module(self, path: str, hook_name: str) -> torch.nn.Module:
        try:
            return self.model.get_submodule(path)
        except AttributeError:
            raise ConfigError(
                f"hook {hook_name!r} maps to module {path!r}, which this {type(self.model).__name__} does not have; "
                "pass hook_module= with the right path (model.named_modules() lists them)"
            ) from None

    def point(self, key: str) -> ModulePoint:
        return self._points[key]

    def resolve(self, hook_name: str, *, what: str = "cfg.metadata.hook_name") -> str:
        if self.hook_module is not None:
            if isinstance(self.hook_module, str):
                self._named.add(hook_name)
                if len(self._named) > 1:  # e.g. a transcoder's hook_name_out: it must not land on the input
                    raise ConfigError(
                        f"hook_module={self.hook_module!r} names one module, but hooks {sorted(self._named)} are "
                        "asked for; pass a mapping {hook_name: module path} with one entry per hook"
                    )
            path = self.hook_module.get(hook_name) if isinstance(self.hook_module, Mapping) else self.hook_module
            if path is None:
                raise ConfigError(
                    f"hook {hook_name!r} (from sae.{what}) is not a key of hook_module ({sorted(self.hook_module)})"
                )
            self._module(path, hook_name)
            order = (self._last_descendant(path), 1)
            point = ModulePoint(
                hook_name,
                path,
                "output",
                None,
                order,
                steerable=self.hook_fn is None,
                reason="hook_fn only reads the module's call; drop hook_fn to steer its output",
            )
        else:
            try:
                point = map_hook(hook_name, self.config, self.layers_path)
            except ConfigError as err:
                raise ConfigError(f"sae.{what}: {err}") from None
            self._module(point.module, hook_name)
        self._points[point.key] = point
        return point.key

    def _last_descendant(self, path: str) -> int:
        """Index of the last module inside ``path`` in ``named_modules`` order: its output comes after them."""
        inside = [i for name, i in self._order.items() if name == path or name.startswith(path + ".")]
        return max(inside)

    def layer_of(self, point: str) -> int | None:
        return self._points[point].layer

    def check_steerable(self, point: str) -> None:
        p = self._points[point]
        if not p.steerable:
            raise ConfigError(f"cannot steer at {p.hook_name!r} ({p.module} {p.io}): {p.reason}")

    def execution_order(self, point: str) -> tuple[int, int]:
        """Where the point's tensor appears in the forward pass (nnsight must visit points in this order)."""
        p = self._points[point]
        if p.io == "input":
            return (self._order[p.module], 0)
        return (self._last_descendant(p.module), 1)

    # ---------------------------------------------------------------- tensors at a point

    def read(self, point: str, module: torch.nn.Module, value: Any, args: tuple[Any, ...] = ()) -> torch.Tensor:
        """The activation at ``point`` from the module's input or output ``value``, shaped as TransformerLens
        gives it (``hook_z`` split into heads)."""
        p = self._points[point]
        if self.hook_fn is not None and self.hook_module is not None:
            return self.hook_fn(module, args, value)
        act = _first(value)
        if p.norm is not None:
            weight, bias = self._norm_affine(p)
            act = (act - bias) / weight
        if p.n_heads:
            act = act.reshape(*act.shape[:-1], p.n_heads, -1)
        return act

    def _norm_affine(self, p: ModulePoint) -> tuple[torch.Tensor, torch.Tensor | float]:
        assert p.norm is not None
        norm = self.model.get_submodule(p.norm)
        bias = getattr(norm, "bias", None)
        return norm.weight + p.norm_offset, 0.0 if bias is None else bias

    def write(self, point: str, value: Any, new: torch.Tensor) -> Any:
        """``value`` with the activation at ``point`` replaced by ``new`` (the inverse of :meth:`read`)."""
        act = _first(value)
        p = self._points[point]
        new = new.reshape(act.shape)
        if p.norm is not None:
            weight, bias = self._norm_affine(p)
            new = new * weight + bias
        return _with_first(value, new.to(act.dtype))

    def apply(
        self, point: str, module: torch.nn.Module, value: Any, fns: Sequence[HookFn], args: tuple[Any, ...] = ()
    ) -> Any:
        """Run every hook of one point on ``value`` in order; the (possibly replaced) value, or None if unchanged."""
        changed = None
        for fn in fns:
            new = fn(self.read(point, module, value if changed is None else changed, args))
            if new is not None:
                changed = self.write(point, value if changed is None else changed, new)
        return changed

    def run(self, ids: torch.Tensor, hooks: Sequence[tuple[str, HookFn]], *, logits: bool) -> torch.Tensor | None:
        grouped: dict[str, list[HookFn]] = {}
        for point, fn in hooks:
            grouped.setdefault(point, []).append(fn)
        handles = []
        try:
            for point, fns in grouped.items():
                p = self._points[point]
                module = self.model.get_submodule(p.module)
                if p.io == "output":

                    def on_output(mod: Any, args: Any, output: Any, point: str = point, fns: list[HookFn] = fns) -> Any:
                        return self.apply(point, mod, output, fns, args)

                    handles.append(module.register_forward_hook(on_output))
                else:

                    def on_input(mod: Any, args: Any, kwargs: Any, point: str = point, fns: list[HookFn] = fns) -> Any:
                        if args:
                            new = self.apply(point, mod, args[0], fns, args)
                            return None if new is None else ((new, *args[1:]), kwargs)
                        new = self.apply(point, mod, kwargs["hidden_states"], fns, args)
                        return None if new is None else (args, {**kwargs, "hidden_states": new})

                    handles.append(module.register_forward_pre_hook(on_input, with_kwargs=True))
            try:
                out = self.model(input_ids=ids, use_cache=False)
            except StopForward:
                return None
        finally:
            for handle in handles:
                handle.remove()
        return out.logits if logits else None

    # ---------------------------------------------------------------- facts

    @property
    def n_ctx(self) -> int | None:
        cfg = text_config(self.config)
        value = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        return int(value) if value else None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def d_vocab(self) -> int:
        out = self.model.get_output_embeddings()
        if out is not None:
            return int(out.weight.shape[0])
        return int(getattr(text_config(self.config), "vocab_size", 0) or len(self.tokenizer))

    @property
    def name(self) -> str:
        return str(
            getattr(self.config, "_name_or_path", "")
            or getattr(self.model, "name_or_path", "")
            or type(self.model).__name__
        )

    def unembedding(self) -> torch.Tensor | None:
        out = self.model.get_output_embeddings()
        return None if out is None else out.weight.detach().T

    def final_norm_weight(self) -> torch.Tensor | None:
        try:
            family = family_of(self.config)
        except ConfigError:
            return None
        for path in family.final_norm:
            try:
                norm = self.model.get_submodule(path)
            except AttributeError:
                continue
            weight = getattr(norm, "weight", None)
            if weight is not None:
                return weight.detach().float() + family.norm_offset
        return None

    def describe(self) -> dict[str, Any]:
        cfg = text_config(self.config)
        return {
            "class": type(self.model).__name__,
            "name": self.name,
            "n_layers": n_layers_of(self.config),
            "d_model": int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0) or 0),
        }


class NNsightModel(Subject):
    """An nnsight model (``LanguageModel`` / ``TransformersModel`` / ``NNsight`` around a Hugging Face model):
    the points of :class:`HFModel` on the wrapped model, read and written inside nnsight's own ``trace``.

    ``remote=True`` (NDIF; not tested here, nothing can reach NDIF from the test machines) runs each trace
    remotely: the trace only saves the hook's tensor and stops, and everything else (encoding, statistics)
    runs here on the saved tensor. Reading only: steering needs our Python code between two layers, which a
    remote trace cannot run, so it is refused before any request."""

    kind = "nnsight"

    def __init__(self, model: Any, tokenizer: Any = None, *, remote: bool = False, **hf_kwargs: Any) -> None:
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

    def unembedding(self) -> torch.Tensor | None:
        return self.hf.unembedding()

    def final_norm_weight(self) -> torch.Tensor | None:
        return self.hf.final_norm_weight()

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self.hf.named_parameters()

    def describe(self) -> dict[str, Any]:
        return {**self.hf.describe(), "class": f"nnsight:{type(self.hf.model).__name__}"}


def _layers_path(model: torch.nn.Module) -> str:
    """The dotted path of the model's list of blocks (``model.layers``, ``transformer.h``, ...)."""
    n_layers = n_layers_of(model.config)
    lists = {name: mod for name, mod in model.named_modules() if isinstance(mod, torch.nn.ModuleList) and name}
    sized = [name for name, mod in lists.items() if n_layers and len(mod) == n_layers]
    named = [name for name in sized if name.rsplit(".", 1)[-1] in ("layers", "h", "layer", "blocks")]
    found = named or sized
    if not found:
        raise ConfigError(
            f"cannot find the list of {n_layers} blocks of this {type(model).__name__}; name the module yourself "
            "with sai.HFModel(model, tokenizer, hook_module=...)"
        )
    return found[0]


def _load_tokenizer(model: Any) -> Any:
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        return tok
    source = str(getattr(model.config, "_name_or_path", "") or "")
    if not source:
        raise ConfigError(
            "this model has no tokenizer and no _name_or_path to load one from: pass HFModel(model, tokenizer)"
        )
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001 - any loading failure gets the same fix
        raise ConfigError(
            f"could not load the tokenizer of {source!r} ({type(exc).__name__}); pass it: sai.HFModel(model, tokenizer)"
        ) from None
    log.info("loaded the tokenizer of %s with AutoTokenizer.from_pretrained", source)
    return tok


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


_digests: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], str]] = weakref.WeakKeyDictionary()


def weights_digest(subject: Subject) -> str:
    """blake2b of every parameter's name, shape and bytes (a fine-tune that changes one layer is another model).

    Hashing streams every byte (about 1 s for 135M parameters), so the digest is kept per model object under
    a key of each parameter's storage address and version counter: any in-place change bumps the counter
    (optimizer steps, ``copy_``, ``mul_``) and any replaced parameter has a new address, so either rehashes."""
    params = list(subject.named_parameters())
    stamp = tuple((name, p.data_ptr(), p._version, tuple(p.shape), p.dtype) for name, p in params)
    try:
        cached = _digests.get(subject.model)
    except TypeError:
        cached = None
    if cached is not None and cached[0] == stamp:
        return cached[1]
    digest = hashlib.blake2b(digest_size=32)
    for name, param in params:
        digest.update(name.encode())
        digest.update(str(tuple(param.shape)).encode())
        digest.update(param.detach().contiguous().cpu().view(torch.uint8).numpy().data)  # its buffer: no copy
    value = digest.hexdigest()
    try:
        _digests[subject.model] = (stamp, value)
    except TypeError:
        pass
    return value


_token_digests: weakref.WeakKeyDictionary[Any, tuple[int, str]] = weakref.WeakKeyDictionary()


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 of the sorted vocabulary (kept per tokenizer object while its size stays the same: tokens are only
    ever added to a loaded tokenizer)."""
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else -1
    try:
        cached = _token_digests.get(tokenizer)
    except TypeError:
        cached = None
    if cached is not None and cached[0] == size:
        return cached[1]
    vocab = getattr(tokenizer, "get_vocab", None)
    value = hashlib.sha256(
        json.dumps(sorted(vocab().items()) if callable(vocab) else [], ensure_ascii=False).encode()
    ).hexdigest()
    try:
        _token_digests[tokenizer] = (size, value)
    except TypeError:
        pass
    return value

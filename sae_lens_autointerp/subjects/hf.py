"""Plain Hugging Face ``transformers`` causal LMs: the SAE's TransformerLens hook name mapped to the input or
output of one module (:mod:`.hookmap`), read and written with PyTorch forward (pre-)hooks."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import ConfigError
from .base import HookFn, ModuleReader, StopForward, Subject, float_unembedding
from .hookmap import ModulePoint, family_of, map_hook, n_layers_of, text_config

log = logging.getLogger(__name__)


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

    def unembedding(self) -> torch.Tensor:
        out = self.model.get_output_embeddings()
        return float_unembedding(None if out is None else out.weight.T, self.model)

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
        """Also the attention implementation (``eager``, ``sdpa``, ...): the same weights give activations that
        differ by float reassociation (up to ~2e-4 on SmolLM2's residuals), so each has its own store."""
        cfg = text_config(self.config)
        out = {
            "class": type(self.model).__name__,
            "name": self.name,
            "n_layers": n_layers_of(self.config),
            "d_model": int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0) or 0),
        }
        attn = getattr(self.config, "_attn_implementation", None)
        if attn is not None:
            out["attn_implementation"] = str(attn)
        return out


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

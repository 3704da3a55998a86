"""TransformerLens hook names mapped onto the modules of a plain Hugging Face model.

An SAE trained with SAELens names its input in TransformerLens terms (``blocks.8.hook_resid_pre``). A
``transformers`` model has no such names, only modules; each supported name is the input or the output of
one module of the architecture family:

===========================  ==========================================  =====================================
TransformerLens hook         tensor                                      module (Llama family; others below)
===========================  ==========================================  =====================================
``blocks.L.hook_resid_pre``  residual stream before block L              input of ``layers.L``
``blocks.L.attn.hook_z``     per-head attention values, [b, s, h, d]     input of ``layers.L.self_attn.o_proj``
``blocks.L.hook_attn_out``   attention output (after o_proj)             output of ``layers.L.self_attn``
``blocks.L.hook_resid_mid``  residual after attention, before the MLP    input of ``layers.L.post_attention_layernorm``
``blocks.L.ln2.hook_normalized``  the MLP's normalised input (transcoders) input of ``layers.L.mlp``, unscaled
``blocks.L.mlp.hook_post``   MLP hidden neurons                          input of ``layers.L.mlp.down_proj``
``blocks.L.hook_mlp_out``    MLP output                                  output of ``layers.L.mlp``
``blocks.L.hook_resid_post`` residual stream after block L               output of ``layers.L``
===========================  ==========================================  =====================================

Gemma 2 / 3 normalise the attention and MLP outputs before adding them to the residual stream, and
TransformerLens's ``hook_attn_out`` / ``hook_mlp_out`` come after those norms, so there they are the outputs
of ``post_attention_layernorm`` / ``post_feedforward_layernorm`` (and ``hook_resid_mid`` the input of
``pre_feedforward_layernorm``). GPT-NeoX / Pythia with parallel attention has no residual between attention
and MLP, so ``hook_resid_mid`` is refused there, as TransformerLens has none either.

``ln2.hook_normalized`` is, as in TransformerLens, the normalised input *before* the norm's weight (and
bias): the MLP's input with the norm's scale taken back out, ``(input - bias) / weight``.

``hook_resid_mid`` is the input of a norm while the block carries the residual past that norm on its own, so
writing it would not steer the model: it can be read (harvest) but not steered, and steering it is refused
with that reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..errors import ConfigError


@dataclass(frozen=True)
class Family:
    """Where one architecture family keeps each part of a block, relative to the block (decoder layer)."""

    name: str
    attn: str  # the attention module (its output: attention output, unless attn_out says otherwise)
    attn_o: str  # the attention output projection (its input: per-head z, heads concatenated)
    mlp: str
    mlp_down: str  # the MLP's output projection (its input: hidden neurons)
    resid_mid: str | None  # the module whose input is the residual between attention and MLP
    ln2: str  # the norm before the MLP (ln2.hook_normalized is its output before its weight and bias)
    attn_out: str | None = None  # the module whose output is TransformerLens's hook_attn_out, if not attn
    mlp_out: str | None = None  # the module whose output is TransformerLens's hook_mlp_out, if not mlp
    final_norm: tuple[str, ...] = ("model.norm",)  # candidate paths of the final norm, from the model root
    norm_offset: float = 0.0  # Gemma's RMSNorm scales by (1 + weight)


_LLAMA = Family(
    "llama",
    attn="self_attn",
    attn_o="self_attn.o_proj",
    mlp="mlp",
    mlp_down="mlp.down_proj",
    resid_mid="post_attention_layernorm",
    ln2="post_attention_layernorm",
)
_GEMMA = replace(_LLAMA, name="gemma", norm_offset=1.0)
_GEMMA2 = replace(
    _GEMMA,
    name="gemma2",
    resid_mid="pre_feedforward_layernorm",
    ln2="pre_feedforward_layernorm",
    attn_out="post_attention_layernorm",
    mlp_out="post_feedforward_layernorm",
    final_norm=("model.norm", "model.language_model.norm", "language_model.model.norm"),
)
_GPT2 = Family(
    "gpt2",
    attn="attn",
    attn_o="attn.c_proj",
    mlp="mlp",
    mlp_down="mlp.c_proj",
    resid_mid="ln_2",
    ln2="ln_2",
    final_norm=("transformer.ln_f",),
)
_NEOX = Family(
    "gpt_neox",
    attn="attention",
    attn_o="attention.dense",
    mlp="mlp",
    mlp_down="mlp.dense_4h_to_h",
    resid_mid=None,  # parallel residual (Pythia): set from the config in family_of
    ln2="post_attention_layernorm",
    final_norm=("gpt_neox.final_layer_norm",),
)

#: ``config.model_type`` -> family. The families SAELens ships SAEs for.
FAMILIES: dict[str, Family] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _GEMMA,
    "gemma2": _GEMMA2,
    "gemma3": _GEMMA2,
    "gemma3_text": _GEMMA2,
    "gpt2": _GPT2,
    "gpt_neox": _NEOX,
}

#: Position of each hook inside a block, in execution order (a nnsight trace must visit points in order).
_STAGES: dict[str, int] = {
    "hook_resid_pre": 0,
    "attn.hook_z": 1,
    "hook_attn_out": 2,
    "hook_resid_mid": 3,
    "ln2.hook_normalized": 4,
    "mlp.hook_post": 5,
    "hook_mlp_out": 6,
    "hook_resid_post": 7,
}
SUPPORTED_HOOKS = tuple(f"blocks.L.{s}" for s in _STAGES)


@dataclass(frozen=True)
class ModulePoint:
    """One hook point of a Hugging Face model: the input or output of one module."""

    hook_name: str  # the TransformerLens name it stands for (or the module path, for hook_module=)
    module: str  # dotted path from the model root
    io: Literal["input", "output"]
    layer: int | None
    order: tuple[int, int]  # (layer, stage): execution order
    n_heads: int | None = None  # hook_z: the concatenated heads are split into [.., n_heads, d_head]
    norm: str | None = None  # ln2.hook_normalized: this norm's weight and bias are taken back out
    norm_offset: float = 0.0
    steerable: bool = True
    reason: str = ""  # why it cannot be steered

    @property
    def key(self) -> str:
        return f"{self.module}:{self.io}"


def text_config(config: Any) -> Any:
    """The language model's config (multimodal Gemma 3 keeps it under ``text_config``)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def family_of(config: Any) -> Family:
    """The family of a ``transformers`` config, or an error naming it and the way out."""
    cfg = text_config(config)
    model_type = str(getattr(cfg, "model_type", "") or getattr(config, "model_type", ""))
    family = FAMILIES.get(model_type)
    if family is None:
        raise ConfigError(
            f"no TransformerLens hook-name mapping for the {model_type!r} architecture family (known: "
            f"{', '.join(sorted(FAMILIES))}). Name the module yourself: sai.HFModel(model, tokenizer, "
            "hook_module='model.layers.8', hook_fn=...) (see docs/models.md), or load the model as a "
            "TransformerBridge"
        )
    if family is _NEOX and not bool(getattr(cfg, "use_parallel_residual", True)):
        family = replace(family, resid_mid="post_attention_layernorm")
    return family


def n_layers_of(config: Any) -> int:
    cfg = text_config(config)
    return int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 0) or 0)


def map_hook(hook_name: str, config: Any, layers_path: str) -> ModulePoint:
    """The module point of ``hook_name`` in a model of this config whose blocks are ``layers_path.L``."""
    family = family_of(config)
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook_name)
    stage = match.group(2) if match else None
    if match is None or stage not in _STAGES:
        raise ConfigError(
            f"hook {hook_name!r} has no Hugging Face mapping; supported: {', '.join(SUPPORTED_HOOKS)}. For another "
            "tensor name its module: sai.HFModel(model, tokenizer, hook_module=..., hook_fn=...)"
        )
    layer = int(match.group(1))
    n_layers = n_layers_of(config)
    if n_layers and layer >= n_layers:
        raise ConfigError(f"hook {hook_name!r} names block {layer}, but this model has {n_layers} blocks")
    block = f"{layers_path}.{layer}"
    order = (layer, _STAGES[stage])
    if stage == "hook_resid_pre":
        return ModulePoint(hook_name, block, "input", layer, order)
    if stage == "hook_resid_post":
        return ModulePoint(hook_name, block, "output", layer, order)
    if stage == "attn.hook_z":
        heads = int(getattr(text_config(config), "num_attention_heads", 0) or getattr(config, "n_head", 0))
        return ModulePoint(hook_name, f"{block}.{family.attn_o}", "input", layer, order, n_heads=heads)
    if stage == "hook_attn_out":
        return ModulePoint(hook_name, f"{block}.{family.attn_out or family.attn}", "output", layer, order)
    if stage == "hook_mlp_out":
        return ModulePoint(hook_name, f"{block}.{family.mlp_out or family.mlp}", "output", layer, order)
    if stage == "mlp.hook_post":
        return ModulePoint(hook_name, f"{block}.{family.mlp_down}", "input", layer, order)
    if stage == "ln2.hook_normalized":
        norm = f"{block}.{family.ln2}"
        return ModulePoint(
            hook_name, f"{block}.{family.mlp}", "input", layer, order, norm=norm, norm_offset=family.norm_offset
        )
    if family.resid_mid is None:  # hook_resid_mid
        raise ConfigError(
            f"hook {hook_name!r}: this {family.name} model adds attention and MLP to the residual in parallel, so "
            "there is no residual between them (TransformerLens has none either)"
        )
    kept = "the block carries the residual past this norm on its own, so writing the norm's input would not steer it"
    return ModulePoint(hook_name, f"{block}.{family.resid_mid}", "input", layer, order, steerable=False, reason=kept)

"""What a run's pages need that the activation store does not hold, computed once per run from the model and
the SAE and written beside results.jsonl:

- ``vocab.json``: the tokenizer's piece for every token id (each decoded alone, as the prompts show it) and
  the special tokens, so a report never needs the tokenizer (or a hub download) to show examples;
- ``decoder.json``: per latent the tokens its decoder direction promotes and suppresses through the
  unembedding (direct path) and its nearest latents by decoder cosine.

Both are views: a run that cannot compute one (no ``W_U``, a transcoder) writes what it can and says why.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .subjects import as_subject

log = logging.getLogger(__name__)

VOCAB_FILE = "vocab.json"
DECODER_FILE = "decoder.json"


@torch.no_grad()
def decoder_logits(model: Any, sae: Any, latents: Sequence[int], k: int = 10, chunk: int = 256) -> dict[int, Any]:
    """Per latent the ``k`` tokens ``W_dec[latent]`` promotes most and the ``k`` it suppresses most through the
    unembedding (the direct path of :func:`promoted_tokens`): ``{latent: {"promoted": [(token, logit)],
    "suppressed": [(token, logit)]}}``, in chunks of latents so a large vocabulary never holds more than
    ``chunk x d_vocab`` logits."""
    subject = as_subject(model)
    w_u = subject.unembedding()
    w_dec = sae.W_dec.detach().float()
    if w_dec.shape[-1] != w_u.shape[0]:
        raise ConfigError(
            f"W_dec has width {w_dec.shape[-1]} but W_U expects {w_u.shape[0]}: the SAE does not write to the "
            "residual stream, so its direct effect on the logits is not defined"
        )
    gamma = subject.final_norm_weight()
    out: dict[int, Any] = {}
    ids = [int(i) for i in latents]
    for lo in range(0, len(ids), chunk):
        part = ids[lo : lo + chunk]
        v = w_dec[torch.tensor(part)].to(w_u.device)
        if gamma is not None and gamma.shape[0] == v.shape[-1]:
            v = v * gamma.to(v.device)
        logits = v @ w_u
        top, bottom = torch.topk(logits, k, dim=1), torch.topk(logits, k, dim=1, largest=False)
        for row, latent in enumerate(part):
            out[latent] = {
                "promoted": [(int(i), float(s)) for s, i in zip(top.values[row], top.indices[row])],
                "suppressed": [(int(i), float(s)) for s, i in zip(bottom.values[row], bottom.indices[row])],
            }
    return out


@torch.no_grad()
def decoder_neighbours(sae: Any, latents: Sequence[int], k: int = 8, chunk: int = 1024) -> dict[int, Any]:
    """Per latent the ``k`` other latents whose decoder directions have the largest cosine with its own:
    ``{latent: [(other, cosine)]}`` (computed against every latent of the SAE, in chunks)."""
    w = sae.W_dec.detach().float()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    ids = [int(i) for i in latents]
    k = min(k, w.shape[0] - 1)
    out: dict[int, Any] = {}
    for lo in range(0, len(ids), chunk):
        part = ids[lo : lo + chunk]
        cos = w[torch.tensor(part)] @ w.T
        cos[torch.arange(len(part)), torch.tensor(part)] = -2.0  # never its own neighbour
        top = torch.topk(cos, k, dim=1)
        for row, latent in enumerate(part):
            out[latent] = [(int(i), float(c)) for c, i in zip(top.values[row], top.indices[row])]
    return out


def vocab_pieces(tokenizer: Any) -> dict[str, Any]:
    """``{"pieces": [str per token id], "special": [ids]}``: each id decoded alone (as prompts show it)."""
    size = len(tokenizer)
    pieces = tokenizer.batch_decode([[i] for i in range(size)])
    return {
        "pieces": list(pieces),
        "special": sorted(int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])),
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":"), ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def write_run_views(folder: Path, model: Any, sae: Any, tokenizer: Any, latents: Sequence[int]) -> None:
    """``vocab.json`` (when missing) and ``decoder.json`` (merged with the latents already there) in ``folder``.
    A view that cannot be computed is logged and left out: the pages say it is missing, the run goes on."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / VOCAB_FILE
    if tokenizer is not None and not vocab.is_file():
        _write_json(vocab, vocab_pieces(tokenizer))
    path = folder / DECODER_FILE
    known: dict[str, Any] = {}
    if path.is_file():
        try:
            known = json.loads(path.read_text(encoding="utf-8")).get("latents", {})
        except ValueError:
            known = {}
    todo = [int(i) for i in latents if str(int(i)) not in known]
    if not todo:
        return
    errors: dict[str, str] = {}
    try:
        logits = decoder_logits(model, sae, todo)
    except (ConfigError, AttributeError, RuntimeError) as err:
        logits, errors["logits"] = {}, str(err)
        log.info("no promoted / suppressed tokens on the pages: %s", err)
    neighbours = decoder_neighbours(sae, todo)
    for latent in todo:
        known[str(latent)] = {"neighbours": neighbours[latent], **logits.get(latent, {})}
    _write_json(path, {"latents": known, "errors": errors})


def read_run_view(folder: Path, name: str) -> dict[str, Any] | None:
    """A view file of a run folder, or None when it is missing or unreadable."""
    path = folder / name
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError, OSError):  # damaged, nested past the parser's depth, or unreadable
        log.warning("%s is unreadable; the pages leave it out", path)
        return None
    return data if isinstance(data, dict) else None

"""SAEBench 0.6.0's OWN ``AutoInterp.gather_data``, run on the embedded model for the acceptance test.

SAEBench is installed ``--no-deps`` into a folder of its own (as ``.ci/run`` does) and put on ``sys.path``
only while its module is imported here. Its code runs unchanged, with two adapters, both labelled:

* SHIM ``sae``: SAEBench 0.6.0 reads ``sae.cfg.hook_layer`` / ``sae.cfg.hook_name`` (SAELens 5 fields that
  SAELens 6 moved to ``cfg.metadata``); the shim carries those two values and forwards ``encode`` to the real SAE.
* ``collect_sae_activations`` is called through ``__wrapped__``: the same function body, without the
  ``jaxtyped(typechecker=beartype)`` check that rejects any model that is not a ``HookedTransformer``
  (the embedded model is a ``TransformerBridge``, which has the same ``run_with_cache`` / ``tokenizer``).

A recorder around SAEBench's ``index_with_buffer`` (calling the original) keeps the (row, centre) indices
gather_data picks, so positions can be compared, not only window contents.
"""

from __future__ import annotations

import importlib
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch

PEER = Path.home() / ".cache" / "sae-lens-autointerp" / "peers" / "sae-bench-0.6.0"


def load_saebench() -> ModuleType:
    """``sae_bench.evals.autointerp.main`` from the peer folder (installed there first if missing)."""
    if not (PEER / "sae_bench").is_dir():
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(PEER), "sae-bench==0.6.0"]
        subprocess.run(cmd, check=True)
    sys.path.insert(0, str(PEER))
    try:
        main = importlib.import_module("sae_bench.evals.autointerp.main")
    finally:
        sys.path.remove(str(PEER))
    assert Path(main.__file__).is_relative_to(PEER), main.__file__
    return main


@dataclass
class PeerSelection:
    """What SAEBench's gather_data did for one latent."""

    acts: torch.Tensor  # what its collect_sae_activations returned ([rows, seq, 1], bfloat16)
    random: list[tuple[int, int]]
    top: list[tuple[int, int]]
    iw: list[tuple[int, int]]
    generation: Any  # its Examples (None when it skipped the latent)
    scoring: Any


def run_gather_data(
    main: ModuleType, model: Any, sae: Any, tokens: torch.Tensor, latent: int, torch_seed: int, batch_size: int
) -> PeerSelection:
    """SAEBench's own ``gather_data`` for ``latent`` alone, its global torch RNG seeded with ``torch_seed``."""
    collection = main.activation_collection
    original_collect = collection.collect_sae_activations
    original_index = main.index_with_buffer
    seen: list[tuple[str, list[list[int]]]] = []
    collected: list[torch.Tensor] = []

    def collect(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = original_collect.__wrapped__(*args, **kwargs)  # SAEBench's body without its beartype check
        collected.append(out)
        return out

    def index(x: torch.Tensor, indices: torch.Tensor, buffer: int = 0) -> torch.Tensor:
        seen.append(("tokens" if x.dtype == torch.long else "acts", indices.tolist()))
        return original_index(x, indices, buffer=buffer)

    md = sae.cfg.metadata
    shim = SimpleNamespace(  # SHIM (see the module docstring): SAELens 5's cfg fields for SAEBench 0.6.0
        cfg=SimpleNamespace(hook_layer=int(md.hook_name.split(".")[1]), hook_name=md.hook_name),
        encode=sae.encode,
    )
    cfg = main.AutoInterpEvalConfig(
        model_name="embedded", n_latents=None, override_latents=[latent], llm_batch_size=batch_size
    )
    autointerp = main.AutoInterp(
        cfg=cfg,
        model=model,
        sae=shim,
        tokenized_dataset=tokens,
        sparsity=torch.zeros(int(sae.cfg.d_sae)),
        device="cpu",
        api_key="unused",
    )
    collection.collect_sae_activations = collect
    main.index_with_buffer = index
    try:
        torch.manual_seed(torch_seed)
        random.seed(0)  # its scoring shuffle (not compared: ours is seeded per latent with numpy)
        generation, scoring = autointerp.gather_data()
    finally:
        collection.collect_sae_activations = original_collect
        main.index_with_buffer = original_index
    token_calls = [idx for kind, idx in seen if kind == "tokens"]
    positions = [[tuple(p) for p in idx] for idx in token_calls] + [[], [], []]
    return PeerSelection(
        acts=collected[0],
        random=positions[0],
        top=positions[1],
        iw=positions[2],
        generation=generation.get(latent),
        scoring=scoring.get(latent),
    )

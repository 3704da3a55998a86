"""Harvest throughput and memory, measured against baselines in the same run.

1. Throughput: the same token batches go through
   - baseline: ``forward(stop_at_layer=L+1)`` with a hook that keeps the activation, + ``sae.encode``
     (the least any harvest must do);
   - ours: ``sae.autointerp.harvest`` (capture, encode, streaming statistics, token file, checkpoints).
   Reported as tokens/s and the ratio ours / baseline (goal >= 0.85).
2. Memory: peak RSS of a fresh process harvesting N and 4N tokens (goal: <= 10% growth).

3. With --delphi: delphi's ``LatentCache`` (PyPI eai-delphi, installed with --no-deps into a throwaway
   folder, never copied) on the same HF model weights, SAE and tokens, in a fresh process: tokens/s and
   peak RSS at N and 4N tokens. (delphi runs the whole model and keeps every non-zero activation.)

Run:  python benchmarks/harvest.py [--n-tokens 32768] [--d-sae 16384] [--repeats 2] [--delphi]
Model: the embedded SmolLM2-135M (TransformerBridge); SAE: the embedded SAE, or with --d-sae a random
SAELens StandardSAE of that width on the same hook (wider SAEs stress the statistics more).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch


def load(d_sae: int | None):
    import sae_lens_autointerp as sai

    model = sai.embedded.load_model()
    if not d_sae:
        return model, sai.embedded.load_sae()
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    metadata = SAEMetadata(hook_name="blocks.3.hook_resid_post", prepend_bos=True, context_size=128)
    sae = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=d_sae, metadata=metadata))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random directions, biased so that roughly 1% of latents fire per token
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=gen) * 0.02)
        sae.b_enc.fill_(-0.6)
    return model, sae


def token_batches(model, sae, n_tokens: int, ctx: int):
    import sae_lens_autointerp as sai
    from sae_lens_autointerp.harvest.corpus import iter_sequences, resolve_corpus
    from sae_lens_autointerp.harvest.model import ModelAdapter

    adapter = ModelAdapter(model, sae)
    seqs = []
    for seq in iter_sequences(resolve_corpus(sai.embedded.load_corpus()), model.tokenizer, ctx_len=ctx, prepend_bos=True,
                              bos_id=adapter.bos_token_id(), separator_id=adapter.separator_token_id()):
        if len(seq) == ctx:
            seqs.append(seq)
        if len(seqs) * ctx >= n_tokens:
            break
    return torch.tensor(seqs)


def baseline(model, sae, tokens: torch.Tensor, batch: int) -> float:
    hook = sae.cfg.metadata.hook_name
    layer = int(hook.split(".")[1])
    saved = []

    def save(activation, hook):  # type: ignore[no-untyped-def]
        saved.append(activation)

    start = time.perf_counter()
    with torch.inference_mode(), model.hooks(fwd_hooks=[(hook, save)]):
        for i in range(0, len(tokens), batch):
            model(tokens[i : i + batch], return_type=None, stop_at_layer=layer + 1)
            sae.encode(saved.pop())
    return tokens.numel() / (time.perf_counter() - start)


def ours(model, sae, tokens: torch.Tensor, batch: int) -> float:
    folder = tempfile.mkdtemp(prefix="bench-harvest-")
    try:
        start = time.perf_counter()
        sae.autointerp.harvest(model, tokens, n_tokens=tokens.numel(), ctx_len=tokens.shape[1], batch_size=batch,
                               store_dir=folder, progress=False)
        return tokens.numel() / (time.perf_counter() - start)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def child_rss(n_tokens: int, d_sae: int | None, ctx: int, batch: int) -> None:
    model, sae = load(d_sae)
    tokens = token_batches(model, sae, n_tokens, ctx)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ours(model, sae, tokens, batch)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"tokens": tokens.numel(), "rss_before_mib": before / 1024, "peak_rss_mib": after / 1024}))


def load_delphi_cache():  # type: ignore[no-untyped-def]
    """delphi's LatentCache from a --no-deps install, without its heavy package __init__s."""
    import importlib
    import logging
    import types
    from pathlib import Path

    root = Path.home() / ".cache/sae-lens-autointerp/delphi"
    if not (root / "delphi").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(root), "eai-delphi"], check=True)
    sys.path.insert(0, str(root))
    for pkg in ("delphi", "delphi.latents"):
        mod = types.ModuleType(pkg)
        mod.__path__ = [str(root / pkg.replace(".", "/"))]
        sys.modules[pkg] = mod
    sys.modules["delphi"].logger = logging.getLogger("delphi")  # type: ignore[attr-defined]
    return importlib.import_module("delphi.latents.cache").LatentCache


def child_delphi(n_tokens: int, d_sae: int | None, ctx: int, batch: int) -> None:
    from transformers import AutoModelForCausalLM

    import sae_lens_autointerp as sai

    LatentCache = load_delphi_cache()
    model, sae = load(d_sae)  # the bridge only to build the same token batches
    tokens = token_batches(model, sae, n_tokens, ctx)
    del model
    hf = AutoModelForCausalLM.from_pretrained(sai.embedded.model_dir(), dtype=torch.float32).eval()
    layer = int(sae.cfg.metadata.hook_name.split(".")[1])
    cache = LatentCache(hf, {f"model.layers.{layer}": sae.encode}, batch_size=batch)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    cache.run(tokens.numel(), tokens)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"tokens": tokens.numel(), "tok_s": tokens.numel() / elapsed, "rss_before_mib": before / 1024,
                      "peak_rss_mib": after / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-tokens", type=int, default=32768)
    parser.add_argument("--ctx-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--d-sae", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--delphi", action="store_true", help="also run delphi's LatentCache (eai-delphi)")
    parser.add_argument("--child-rss", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-delphi", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_rss:
        child_rss(args.child_rss, args.d_sae, args.ctx_len, args.batch_size)
        return
    if args.child_delphi:
        child_delphi(args.child_delphi, args.d_sae, args.ctx_len, args.batch_size)
        return

    torch.manual_seed(0)
    model, sae = load(args.d_sae)
    tokens = token_batches(model, sae, args.n_tokens, args.ctx_len)
    print(f"model SmolLM2-135M bridge, hook {sae.cfg.metadata.hook_name}, d_sae {sae.cfg.d_sae}, "
          f"{tokens.numel()} tokens in batches of {args.batch_size}x{args.ctx_len}, torch threads {torch.get_num_threads()}")
    ours(model, sae, tokens[: args.batch_size * 2], args.batch_size)  # warm-up
    base, mine = [], []
    for _ in range(args.repeats):  # interleaved so drift hits both
        base.append(baseline(model, sae, tokens, args.batch_size))
        mine.append(ours(model, sae, tokens, args.batch_size))
    b, m = max(base), max(mine)
    print(f"baseline forward(stop_at_layer)+encode: {b:9.0f} tok/s   (runs: {', '.join(f'{x:.0f}' for x in base)})")
    print(f"sae.autointerp.harvest:                 {m:9.0f} tok/s   (runs: {', '.join(f'{x:.0f}' for x in mine)})")
    print(f"ratio harvest / baseline: {m / b:.2f}x  (goal >= 0.85)")

    rss = {}
    for factor in (1, 4):
        cmd = [sys.executable, __file__, "--child-rss", str(args.n_tokens * factor), "--ctx-len", str(args.ctx_len),
               "--batch-size", str(args.batch_size)] + (["--d-sae", str(args.d_sae)] if args.d_sae else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rss[factor] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"peak RSS at {rss[factor]['tokens']:>8} tokens: {rss[factor]['peak_rss_mib']:8.1f} MiB "
              f"(after loading: {rss[factor]['rss_before_mib']:.1f} MiB)")
    growth = rss[4]["peak_rss_mib"] / rss[1]["peak_rss_mib"] - 1
    print(f"peak RSS growth x4 tokens: {100 * growth:+.1f}%  (goal <= 10%)")
    if not args.delphi:
        return
    extra = ["--d-sae", str(args.d_sae)] if args.d_sae else []
    for factor in (1, 4):
        cmd = [sys.executable, __file__, "--child-delphi", str(args.n_tokens * factor), "--ctx-len", str(args.ctx_len),
               "--batch-size", str(args.batch_size), *extra]
        d = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        print(f"delphi LatentCache at {d['tokens']:>8} tokens: {d['tok_s']:9.0f} tok/s (ours {m:.0f}: "
              f"{m / d['tok_s']:.2f}x), peak RSS {d['peak_rss_mib']:8.1f} MiB (ours {rss[factor]['peak_rss_mib']:.1f})")


if __name__ == "__main__":
    main()

"""Harvest throughput and memory, measured against baselines in the same run.

1. Throughput: the same token batches go through
   - baseline: ``forward(stop_at_layer=L+1)`` with a hook that keeps the activation, + ``sae.encode``
     (the least any harvest must do);
   - ours: ``sae.autointerp.harvest`` (capture, encode, streaming statistics, token file, checkpoints).
   Reported as tokens/s and the ratio ours / baseline (goal >= 0.85).
2. Memory: peak RSS (the child's own VmHWM, not ru_maxrss, which includes the parent's) of a fresh process
   harvesting N and 4N tokens (goal: <= 10% growth).

3. With --delphi: delphi's ``LatentCache`` (PyPI eai-delphi, installed with --no-deps into a throwaway
   folder, never copied) on the same HF model weights, SAE and tokens, in a fresh process: tokens/s and
   peak RSS at N and 4N tokens. (delphi runs the whole model and keeps every non-zero activation.)

4. With --many: four random calibrated SAEs (--d-sae, default 2048) at the four hooks of --many-hooks
   (default blocks.26..29.hook_resid_post) harvested with ``sai.harvest_many`` in one pass, against four
   separate ``harvest`` calls on the same tokens (goal >= 2.5x). The bound is the blocks run: 4 passes cost
   27 + 28 + 29 + 30 blocks, one pass 30 (3.8x); each SAE's statistics cost the same either way.

5. With --backend bridge,hf,nnsight: the same SAE and tokens harvested through each model kind (the embedded
   SmolLM2 as TransformerBridge, as a plain Hugging Face model with transformers' default SDPA attention, and as an
   nnsight TransformersModel), each against its own bare forward (a hook that keeps the activation and stops the
   pass, + ``sae.encode``) and against the bridge's bare forward, interleaved per repeat. With --interleave
   the harvest and the bare forward alternate batch by batch inside one harvest call (its token
   stream runs the bare step on each batch just before the harvest takes it), so that a machine whose speed
   drifts by 10% from one minute to the next slows both alike; the harvest's time is the call's, fixed costs
   included, less the bare steps'.

6. With --long-rss 1000000,4000000: peak RSS of a fresh process harvesting that many tokens (goal: <= 5% growth
   from 1M to 4M). The model is a small random HookedTransformer (2 layers, d_model 64, SmolLM2's vocabulary)
   so that millions of tokens take minutes on a CPU; what grows with tokens is ours (statistics, samples,
   token file, checkpoints), not the model's. The SAE: a random StandardSAE (--d-sae, default 16384) whose
   latents fire on ~1% of tokens; the tokens: seeded random ids in rows of --ctx-len, read as a long harvest
   reads its corpus, streamed from a pre-tokenized parquet file (written first, by the parent); with
   --tensor-input they are a tensor built in the child instead (8 bytes a token, held by the caller).

7. With --malloc: glibc's malloc as it is against thresholds pinned to 1 MiB (``pin_malloc_thresholds``), each in
   fresh processes (pinning cannot be undone), alternating: bare forward and harvest tok/s and peak RSS. Pinning
   was the CLI's default until it was measured here.

Run:  python benchmarks/harvest.py --many [--n-tokens 8192] [--repeats 2]
      python benchmarks/harvest.py --long-rss 1000000,4000000 [--d-sae 16384] [--pin-malloc]
      python benchmarks/harvest.py --malloc [--n-tokens 16384] [--repeats 1]
      python benchmarks/harvest.py --backend bridge,hf,nnsight [--hook blocks.28.hook_resid_post --d-sae 2048]
      python benchmarks/harvest.py --backend hf,bridge --interleave --n-tokens 262144 --repeats 1
                                   [--delphi]   (each backend's harvest against delphi's LatentCache too)
      python benchmarks/harvest.py --profile hf [--n-tokens 16384] [--hook ... --d-sae 2048]   (where the time goes)
      python benchmarks/harvest.py [--n-tokens 32768] [--d-sae 16384] [--repeats 2] [--delphi]
      python benchmarks/harvest.py --hook blocks.28.hook_resid_post --d-sae 2048 --n-tokens 16384 --delphi
Model: the embedded SmolLM2-135M (TransformerBridge, 30 layers); SAE: the embedded SAE (blocks.3.hook_resid_post),
or with --d-sae a random SAELens StandardSAE of that width at --hook (wider SAEs stress the statistics more).
The random SAE is calibrated deterministically on the first token batch: random unit directions, scaled to unit
pre-activation std, b_dec = mean activation, and each latent's b_enc set so it fires on --density (1%) of tokens.

Why --hook: at blocks.3 ours and the baseline stop after layer 4 of 30 while delphi runs the whole model, so
ours / delphi there is mostly early stopping. At a late hook (blocks.28: 29 of 30 layers, no lm_head) stopping
early saves little, so ours / delphi there is the like-for-like comparison of the harvest machinery itself.
With --delphi, each repeat runs baseline, ours and delphi (fresh process) back to back on the same batches, and
ratios are reported per repeat (min-max), so drift hits all three alike.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

DEFAULT_HOOK = "blocks.3.hook_resid_post"  # the embedded SAE's hook


def load(d_sae: int | None, hook: str = DEFAULT_HOOK):
    """The bridge and the SAE: the embedded one, or (with d_sae) an uncalibrated random StandardSAE at ``hook``."""
    import sae_lens_autointerp as sai

    model = sai.embedded.load_model()
    if not d_sae:
        return model, sai.embedded.load_sae()
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    metadata = SAEMetadata(hook_name=hook, prepend_bos=True, context_size=128)
    sae = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=d_sae, metadata=metadata))
    sae.eval()
    return model, sae


def peak_rss_mib() -> float:
    """This process's own peak RSS. Not ru_maxrss: on Linux a child inherits its parent's peak there (the
    forked copy of the parent's memory counts until exec), which would put the parent's RSS under every child's."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def clocks() -> tuple[float, float]:
    """(wall, CPU) seconds; CPU time of all this process's threads, which the other jobs on a shared machine
    disturb far less than wall time."""
    return time.perf_counter(), time.process_time()


def rates(n_tokens: int, start: tuple[float, float]) -> dict[str, float]:
    wall, cpu = clocks()
    return {"wall": n_tokens / (wall - start[0]), "cpu": n_tokens / (cpu - start[1])}


def capture(model, hook: str, tokens: torch.Tensor) -> torch.Tensor:
    """The activation at ``hook`` for ``tokens`` (forward stopped after the hook's block)."""
    layer = int(hook.split(".")[1])
    saved = []
    with torch.inference_mode(), model.hooks(fwd_hooks=[(hook, lambda act, hook: saved.append(act))]):
        model(tokens, return_type=None, stop_at_layer=layer + 1)
    return saved[0]


def calibrate(model, sae, tokens: torch.Tensor, density: float) -> dict:
    """Make the random SAE fire on ~``density`` of tokens per latent at its hook, from one batch, deterministically.

    Residual norms grow with depth, so a fixed scale and bias fire on ~1% at one layer and on everything or
    nothing at another. Here: random unit directions (seed 0), b_dec = mean activation (late residuals share a
    large common direction), W_enc scaled to unit pre-activation std, and b_enc[j] = minus latent j's
    (1 - density) quantile. Special tokens (BOS, EOS) are left out, as the harvest masks them.
    """
    special = torch.tensor(sorted(set(model.tokenizer.all_special_ids)), dtype=torch.long)
    x = capture(model, sae.cfg.metadata.hook_name, tokens)[~torch.isin(tokens, special)].float()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = torch.randn(sae.W_enc.shape, generator=gen, dtype=torch.float64)
        w = (w / w.norm(dim=0, keepdim=True)).float()
        mean = x.mean(0)
        pre = (x - mean) @ w
        w = w / pre.std()
        pre = (x - mean) @ w
        k = max(1, min(len(x), round((1 - density) * len(x))))
        cut = pre.kthvalue(k, dim=0).values  # per latent: (1 - density) quantile
        sae.b_dec.copy_(mean)
        sae.W_enc.copy_(w)
        sae.b_enc.copy_(-cut)
        fired = (sae.encode(x) > 0).float().mean().item()
    return {
        "residual_norm": x.norm(dim=-1).median().item(),
        "fired": fired,
        "b_enc_sum": float(sae.b_enc.detach().double().sum()),
    }


def setup(args: argparse.Namespace):
    """Bridge, SAE (calibrated on the first batch when random) and 4 x n_tokens of token batches (the first
    n_tokens are the measured batches, all 4x feed the memory run)."""
    model, sae = load(args.d_sae, args.hook)
    tokens = token_batches(model, sae, 4 * args.n_tokens, args.ctx_len)
    info = calibrate(model, sae, tokens[: args.batch_size], args.density) if args.d_sae else None
    return model, sae, tokens, info


def save_inputs(folder: str, sae, tokens: torch.Tensor) -> None:
    """What the child processes share with the parent, so each gets the same SAE and tokens without
    re-tokenizing or calibrating (a calibration forward would count in their peak RSS)."""
    torch.save(
        {"tokens": tokens, "sae": {k: v.detach() for k, v in sae.state_dict().items()}},
        os.path.join(folder, "inputs.pt"),
    )


def load_inputs(args: argparse.Namespace, n_tokens: int, d_in: int):
    """The SAE and the first ``n_tokens`` of token batches saved by the parent (no model loaded)."""
    saved = torch.load(os.path.join(args.inputs, "inputs.pt"))
    tokens = saved["tokens"][: -(-n_tokens // args.ctx_len)]
    if args.d_sae:
        from sae_lens import StandardSAE, StandardSAEConfig
        from sae_lens.saes.sae import SAEMetadata

        metadata = SAEMetadata(hook_name=args.hook, prepend_bos=True, context_size=128)
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=args.d_sae, metadata=metadata))
        sae.load_state_dict(saved["sae"])
        sae.eval()
    else:
        import sae_lens_autointerp as sai

        sae = sai.embedded.load_sae()
    return sae, tokens


def check_delphi_hook(model, hook: str, tokens: torch.Tensor) -> tuple[str, float]:
    """delphi reads the output of an HF module: check it is the bridge's ``hook`` (same layer, same values)."""
    from transformers import AutoModelForCausalLM

    import sae_lens_autointerp as sai

    hookpoint = delphi_hookpoint(hook)
    expected = capture(model, hook, tokens)
    hf = AutoModelForCausalLM.from_pretrained(sai.embedded.model_dir(), dtype=torch.float32).eval()
    got = []
    hf.get_submodule(hookpoint).register_forward_hook(
        lambda mod, inp, out: got.append(out[0] if isinstance(out, tuple) else out)
    )
    with torch.inference_mode():
        hf(tokens)
    diff = (got[0] - expected).abs().max().item() / expected.abs().max().item()
    if diff > 1e-4:
        raise SystemExit(f"delphi's {hookpoint} output differs from the bridge's {hook} (max rel diff {diff:.2e})")
    return hookpoint, diff


def delphi_hookpoint(hook: str) -> str:
    """The HF module whose output is the bridge's ``hook`` (what delphi's collect_activations hooks)."""
    match = re.fullmatch(r"blocks\.(\d+)\.hook_(resid_post|resid_pre|mlp_out|attn_out)", hook)
    if not match:
        raise SystemExit(f"--delphi: no HF module output known for hook {hook!r}")
    layer, kind = int(match.group(1)), match.group(2)
    if kind == "resid_pre":
        return "model.embed_tokens" if layer == 0 else f"model.layers.{layer - 1}"
    return {
        "resid_post": f"model.layers.{layer}",
        "mlp_out": f"model.layers.{layer}.mlp",
        "attn_out": f"model.layers.{layer}.self_attn",
    }[kind]


def token_batches(model, sae, n_tokens: int, ctx: int):
    import sae_lens_autointerp as sai
    from sae_lens_autointerp.harvest.corpus import iter_sequences, resolve_corpus
    from sae_lens_autointerp.harvest.model import ModelAdapter

    adapter = ModelAdapter(model, sae)
    seqs = []
    for seq in iter_sequences(
        resolve_corpus(sai.embedded.load_corpus()),
        model.tokenizer,
        ctx_len=ctx,
        prepend_bos=True,
        bos_id=adapter.bos_token_id(),
        separator_id=adapter.separator_token_id(),
    ):
        if len(seq) == ctx:
            seqs.append(seq)
        if len(seqs) * ctx >= n_tokens:
            break
    return torch.tensor(seqs)


def baseline(model, sae, tokens: torch.Tensor, batch: int) -> dict[str, float]:
    """The bridge's bare forward: ``forward(stop_at_layer=L+1)`` with a hook that keeps the activation, + encode."""
    return bare("bridge", model, sae, tokens, batch)


def backend_model(kind: str, bridge):  # type: ignore[no-untyped-def]
    """The embedded SmolLM2 as ``kind``: the bridge itself, a plain HF model (SDPA attention) or nnsight."""
    import sae_lens_autointerp as sai

    if kind == "bridge":
        return bridge
    if kind == "hf":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(sai.embedded.model_dir()).eval()
    if kind == "nnsight":
        from nnsight.modeling.transformers import TransformersModel

        return TransformersModel(str(sai.embedded.model_dir()), task="text-generation", dispatch=True)
    raise SystemExit(f"unknown backend {kind!r}: bridge, hf or nnsight")


class _Stop(Exception):
    pass


def bare_step(kind: str, model, sae):  # type: ignore[no-untyped-def]
    """One batch of the bare forward as a function of the batch's tokens (the ``bare`` loop's body): run to the
    hook (a hook keeps the activation and, outside the bridge, stops the pass), then ``sae.encode``. Hooks are
    installed per batch, as a harvest installs them. ``kind``: bridge, hf or nnsight."""
    if kind == "bridge":
        from sae_lens_autointerp.subjects import as_subject

        hook = sae.cfg.metadata.hook_name
        layer = int(hook.split(".")[1])
        # the HookPoint itself, looked up once: model.hooks() costs ~18 ms a call on the bridge (hook_dict and
        # an alias map built each time), which the harvest no longer pays per batch either
        point = model.hook_dict[as_subject(model).resolve(hook)]
        saved: list[torch.Tensor] = []

        def save(activation, hook):  # type: ignore[no-untyped-def]
            saved.append(activation)

        def step_bridge(batch_tokens: torch.Tensor) -> None:
            point.add_hook(save, dir="fwd", level=-1)
            try:
                model(batch_tokens, return_type=None, stop_at_layer=layer + 1)
            finally:
                point.remove_hooks("fwd", level=-1)
            sae.encode(saved.pop())

        return step_bridge
    from sae_lens_autointerp.subjects.hookmap import map_hook

    hf = model if kind == "hf" else model._module
    point = map_hook(sae.cfg.metadata.hook_name, hf.config, "model.layers")
    assert point.io == "output", "the bare HF forward reads module outputs only"
    if kind == "nnsight":
        from nnsight import save

        envoy = model
        for part in point.module.split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)

        def step_nnsight(batch_tokens: torch.Tensor) -> None:
            with model.trace(batch_tokens) as tracer:
                act = save(envoy.output)
                tracer.stop()
            sae.encode(act)

        return step_nnsight
    module = hf.get_submodule(point.module)
    kept: list[torch.Tensor] = []

    def keep(module, args, output):  # type: ignore[no-untyped-def]
        kept.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    def step_hf(batch_tokens: torch.Tensor) -> None:
        handle = module.register_forward_hook(keep)
        try:
            model(input_ids=batch_tokens, use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        sae.encode(kept.pop())

    return step_hf


def interleaved(kind: str, model, sae, tokens: torch.Tensor, batch: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Harvest and bare forward alternating batch by batch in one call, so that whatever slows the machine
    meanwhile slows both alike: the harvest's token stream runs the bare step on each batch just before the
    harvest takes it. The bare side is the sum of those steps; the harvest's side is the whole harvest call
    (its fixed costs included) less that sum."""
    from sae_lens_autointerp.harvest import jobs

    step, spent = bare_step(kind, model, sae), [0.0]
    original = jobs.sequence_stream

    def stream(corpus, adapter, ctx_len, skip=0):  # type: ignore[no-untyped-def]
        for index, seq in enumerate(original(corpus, adapter, ctx_len, skip), skip):
            if index % batch == 0:
                start = time.perf_counter()
                step(tokens[index : index + batch])
                spent[0] += time.perf_counter() - start
            yield seq

    jobs.sequence_stream = stream
    try:
        start = time.perf_counter()
        ours(model, sae, tokens, batch)
        total = time.perf_counter() - start
    finally:
        jobs.sequence_stream = original
    n = tokens.numel()
    return {"bare": n / spent[0], "ours": n / (total - spent[0]), "ratio": spent[0] / (total - spent[0])}


def bare(kind: str, model, sae, tokens: torch.Tensor, batch: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """The least any harvest through this model kind must do: run to the hook, keep the activation, encode."""
    step = bare_step(kind, model, sae)
    start = clocks()
    with torch.inference_mode():
        for i in range(0, len(tokens), batch):
            step(tokens[i : i + batch])
    return rates(tokens.numel(), start)


#: (label, file, function) of the parts --profile reports, by cumulative time.
PROFILE_PARTS = (
    ("forward to the hook (capture_many)", "model.py", "capture_many"),
    ("sae.encode", "sae.py", "encode"),  # topk_sae.py, standard_sae.py, ...
    ("statistics update", "stats.py", "update"),
    ("  sample windows (enter)", "stats.py", "enter"),
    ("  token / position sums", "stats.py", "_update_sums"),
    ("  random-window pool", "stats.py", "_update_pool"),
    ("  token-table flush", "stats.py", "flush"),
    ("prepare (store keys, width check)", "jobs.py", "prepare_jobs"),
    ("finish (canonical order, save)", "jobs.py", "finish"),
)


def profile(args: argparse.Namespace, bridge, sae, tokens: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    """Where one harvest's time goes (cProfile, after a warm-up harvest), through the --profile backend."""
    import cProfile
    import pstats

    model = backend_model(args.profile, bridge)
    ours(model, sae, tokens[: args.batch_size * 2], args.batch_size)  # warm-up (and the cached weight digest)
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    ours(model, sae, tokens, args.batch_size)
    prof.disable()
    wall = time.perf_counter() - start
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    print(f"profile: {args.profile}, hook {sae.cfg.metadata.hook_name}, {tokens.numel()} tokens, {wall:.2f} s wall")
    for label, file, name in PROFILE_PARTS:
        cum = sum(v[3] for (f, _, n), v in stats.items() if n == name and f.endswith(file))
        print(f"  {label:<36} {cum:7.2f} s")


def backends(args: argparse.Namespace, bridge, sae, tokens: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    kinds = [k.strip() for k in args.backend.split(",") if k.strip()]
    models = {kind: backend_model(kind, bridge) for kind in kinds}
    print(
        f"model SmolLM2-135M as {', '.join(kinds)}; hook {sae.cfg.metadata.hook_name}, {type(sae).__name__} d_sae "
        f"{sae.cfg.d_sae}, {tokens.numel()} tokens in batches of {args.batch_size}x{args.ctx_len}, torch threads "
        f"{torch.get_num_threads()}"
    )
    for kind in kinds:  # warm-up
        ours(models[kind], sae, tokens[: args.batch_size * 2], args.batch_size)
        bare(kind, models[kind], sae, tokens[: args.batch_size * 2], args.batch_size)
    if args.interleave:
        print("harvest and bare forward alternating batch by batch in one call (drift hits both alike):")
        for _ in range(args.repeats):
            for kind in kinds:
                r = interleaved(kind, models[kind], sae, tokens, args.batch_size)
                print(
                    f"  {kind:<8} bare {r['bare']:6.0f} tok/s, harvest {r['ours']:6.0f} tok/s: "
                    f"harvest / bare forward {r['ratio']:.3f}x (goal >= 0.95)",
                    flush=True,
                )
        return
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        k: {"bare": [], "ours": [], "inline": [], "worker": []} for k in kinds
    }
    reference, delphi = [], []
    for _ in range(args.repeats):  # interleaved so drift hits all alike
        reference.append(baseline(bridge, sae, tokens, args.batch_size))
        for kind in kinds:
            runs[kind]["bare"].append(bare(kind, models[kind], sae, tokens, args.batch_size))
            runs[kind]["ours"].append(ours(models[kind], sae, tokens, args.batch_size))
            if args.inline_too:  # the same harvest with the statistics folded in the main thread, and on the worker
                runs[kind]["inline"].append(ours(models[kind], sae, tokens, args.batch_size, overlap=False))
                runs[kind]["worker"].append(ours(models[kind], sae, tokens, args.batch_size, overlap=True))
        if args.delphi:  # a fresh process, on the same HF weights, SAE and tokens
            delphi.append(run_child(args, "--child-delphi", args.n_tokens))
    print("tokens/s per repeat (wall clock), and the ratios per repeat (min-max):")
    walls = lambda runs: ", ".join(f"{x['wall']:6.0f}" for x in runs)  # noqa: E731
    print(f"  {'bridge bare forward (reference)':<34} {walls(reference)}")
    from sae_lens_autointerp.harvest.jobs import overlap_stats

    auto = "on the worker" if overlap_stats(torch.device("cpu")) else "inline"
    labels = {
        "bare": "bare forward",
        "ours": f"sae.autointerp.harvest (folds {auto})",
        "inline": "harvest, folds inline",
        "worker": "harvest, folds on the worker",
    }
    for kind in kinds:
        for what in ("bare", "ours", "inline", "worker"):
            if runs[kind][what]:
                print(f"  {kind + ' ' + labels[what]:<34} {walls(runs[kind][what])}")
    for kind in kinds:
        mine, own = runs[kind]["ours"], runs[kind]["bare"]
        vs_own = span([a["wall"] / b["wall"] for a, b in zip(mine, own)])
        vs_ref = span([a["wall"] / b["wall"] for a, b in zip(mine, reference)])
        print(f"ratio {kind:<8} harvest / its bare forward {vs_own}x | harvest / bridge bare forward {vs_ref}x")
        if runs[kind]["inline"]:
            inline = span([a["wall"] / b["wall"] for a, b in zip(runs[kind]["inline"], own)])
            gain = span([a["wall"] / b["wall"] for a, b in zip(runs[kind]["worker"], runs[kind]["inline"])])
            print(f"ratio {kind:<8} harvest with inline folds / its bare forward {inline}x; worker / inline {gain}x")
        if delphi:
            vs_delphi = span([a["wall"] / b["wall"] for a, b in zip(mine, delphi)])
            print(f"ratio {kind:<8} harvest / delphi LatentCache {vs_delphi}x (delphi: {walls(delphi)} tok/s)")


def ours(model, sae, tokens: torch.Tensor, batch: int, overlap: bool | None = None) -> dict[str, float]:
    from sae_lens_autointerp.harvest import jobs

    folder = tempfile.mkdtemp(prefix="bench-harvest-")
    jobs.OVERLAP_STATS = overlap  # folded on the background worker, inline, or (None) as the harvest decides
    try:
        start = clocks()
        # malloc as the library and the CLI leave it (the --malloc part measures the pinned thresholds)
        sae.autointerp.harvest(
            model,
            tokens,
            n_tokens=tokens.numel(),
            ctx_len=tokens.shape[1],
            batch_size=batch,
            store_dir=folder,
            progress=False,
            pin_malloc=False,
        )
        return rates(tokens.numel(), start)
    finally:
        jobs.OVERLAP_STATS = None
        shutil.rmtree(folder, ignore_errors=True)


def child_rss(args: argparse.Namespace) -> None:
    import sae_lens_autointerp as sai

    model = sai.embedded.load_model()
    sae, tokens = load_inputs(args, args.child_rss, model.cfg.d_model)
    before = peak_rss_mib()
    ours(model, sae, tokens, args.batch_size)
    after = peak_rss_mib()
    print(json.dumps({"tokens": tokens.numel(), "rss_before_mib": before, "peak_rss_mib": after}))


def tiny_inputs(d_sae: int, n_tokens: int, ctx: int):  # type: ignore[no-untyped-def]
    """The --long-rss model, SAE and (with ``n_tokens``) token tensor, built the same way (seeded) in every child."""
    import transformer_lens
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from transformers import AutoTokenizer

    import sae_lens_autointerp as sai

    tokenizer = AutoTokenizer.from_pretrained(sai.embedded.model_dir())
    cfg = transformer_lens.HookedTransformerConfig(
        n_layers=2,
        d_model=64,
        n_ctx=ctx,
        d_head=16,
        n_heads=4,
        d_mlp=128,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        seed=0,
    )
    model = transformer_lens.HookedTransformer(cfg, tokenizer=tokenizer).eval()
    metadata = SAEMetadata(hook_name="blocks.1.hook_resid_post", prepend_bos=True, context_size=ctx)
    sae = StandardSAE(StandardSAEConfig(d_in=64, d_sae=d_sae, metadata=metadata)).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=gen) / 8.0)
        sae.b_enc.fill_(-2.33)  # pre-activations ~N(0, 1): about 1% above 2.33
    tokens = random_token_rows(gen, -(-n_tokens // ctx), ctx, len(tokenizer), tokenizer.bos_token_id)
    return model, sae, tokens


def random_token_rows(gen: torch.Generator, n_rows: int, ctx: int, vocab: int, bos: int) -> torch.Tensor:
    tokens = torch.randint(20, vocab, (n_rows, ctx), generator=gen)
    tokens[:, 0] = bos
    return tokens


def write_token_parquet(path: str, n_tokens: int, ctx: int) -> None:
    """Seeded random rows of ``ctx`` ids (BOS first) as a pre-tokenized parquet file (a ``tokens`` column),
    written a slice at a time: the corpus a long harvest streams, never held whole by anyone."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    import sae_lens_autointerp as sai

    tokenizer = AutoTokenizer.from_pretrained(sai.embedded.model_dir())
    gen = torch.Generator().manual_seed(1)
    schema = pa.schema([("tokens", pa.list_(pa.int32()))])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, -(-n_tokens // ctx), 4096):
            rows = random_token_rows(
                gen, min(4096, -(-n_tokens // ctx) - start), ctx, len(tokenizer), tokenizer.bos_token_id
            )
            writer.write_table(pa.table({"tokens": rows.to(torch.int32).tolist()}, schema=schema))


def child_long_rss(args: argparse.Namespace) -> None:
    n = args.child_long_rss
    model, sae, tokens = tiny_inputs(args.d_sae or 16384, n if args.tensor_input else 0, args.ctx_len)
    before = peak_rss_mib()
    start = clocks()
    if args.tensor_input:
        ours(model, sae, tokens, args.batch_size)
    else:
        folder = tempfile.mkdtemp(prefix="bench-harvest-")
        try:
            sae.autointerp.harvest(
                model,
                args.inputs,
                n_tokens=n,
                ctx_len=args.ctx_len,
                batch_size=args.batch_size,
                store_dir=folder,
                progress=False,
                pin_malloc=args.pin_malloc,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    speed = rates(n, start)
    print(json.dumps({"tokens": n, "rss_before_mib": before, "peak_rss_mib": peak_rss_mib(), **speed}))


def long_rss(args: argparse.Namespace) -> None:
    sizes = [int(x) for x in args.long_rss.split(",")]
    source = "a token tensor built in the process" if args.tensor_input else "a pre-tokenized parquet file, streamed"
    print(
        f"peak RSS of a fresh process per size: random 2-layer HookedTransformer, StandardSAE d_sae "
        f"{args.d_sae or 16384} at blocks.1.hook_resid_post, random tokens from {source}, batches of "
        f"{args.batch_size}x{args.ctx_len}"
    )
    folder = tempfile.mkdtemp(prefix="bench-harvest-tokens-")
    corpus = os.path.join(folder, "tokens.parquet")
    rows = []
    try:
        if not args.tensor_input:
            write_token_parquet(corpus, max(sizes), args.ctx_len)
        for n in sizes:
            cmd = [sys.executable, __file__, "--child-long-rss", str(n), "--ctx-len", str(args.ctx_len)]
            cmd += ["--batch-size", str(args.batch_size), "--d-sae", str(args.d_sae or 16384), "--inputs", corpus]
            cmd += ["--tensor-input"] if args.tensor_input else []
            cmd += ["--pin-malloc"] if args.pin_malloc else []
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"  {row['tokens']:>9} tokens: peak RSS {row['peak_rss_mib']:8.1f} MiB (after building the inputs "
                f"{row['rss_before_mib']:.1f}), {row['wall']:.0f} tok/s",
                flush=True,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    growth = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"] - 1
    print(f"peak RSS growth {rows[0]['tokens']} -> {rows[-1]['tokens']} tokens: {100 * growth:+.1f}% (goal <= 5%)")


def child_malloc(args: argparse.Namespace) -> None:
    """One fresh process of the --malloc part: malloc pinned or not (before anything is allocated for the
    run), then the bare forward and our harvest on the saved tokens, interleaved, and the peak RSS."""
    import sae_lens_autointerp as sai
    from sae_lens_autointerp.harvest import pin_malloc_thresholds

    pinned = pin_malloc_thresholds() if args.child_malloc == "pinned" else False
    model = sai.embedded.load_model()
    sae, tokens = load_inputs(args, args.n_tokens, model.cfg.d_model)
    ours(model, sae, tokens[: args.batch_size * 2], args.batch_size)  # warm-up (and the cached weight digest)
    rows = []
    for _ in range(args.repeats):
        rows.append({"bare": baseline(model, sae, tokens, args.batch_size)["wall"]})
        rows[-1]["ours"] = ours(model, sae, tokens, args.batch_size)["wall"]
    print(json.dumps({"mode": args.child_malloc, "pinned": pinned, "rows": rows, "peak_rss_mib": peak_rss_mib()}))


def malloc_ab(args: argparse.Namespace, sae, tokens: torch.Tensor) -> None:
    """Part 7: glibc malloc as it is vs pinned thresholds (``pin_malloc_thresholds``: 1 MiB), each in fresh
    processes (pinning cannot be undone), alternating, on the same tokens: bare forward and harvest tok/s."""
    args.inputs = tempfile.mkdtemp(prefix="bench-harvest-inputs-")
    results: dict[str, list[dict]] = {"default": [], "pinned": []}
    try:
        save_inputs(args.inputs, sae, tokens)
        for _ in range(2):
            for mode in results:
                cmd = [sys.executable, __file__, "--child-malloc", mode, "--n-tokens", str(args.n_tokens)]
                cmd += ["--ctx-len", str(args.ctx_len), "--batch-size", str(args.batch_size), "--inputs", args.inputs]
                cmd += ["--repeats", str(args.repeats), "--hook", args.hook]
                cmd += ["--d-sae", str(args.d_sae)] if args.d_sae else []
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
                results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(args.inputs, ignore_errors=True)
    print(f"glibc malloc as it is vs pinned to 1 MiB thresholds; {args.n_tokens} tokens, fresh process per run:")
    for mode, runs in results.items():
        bare_r = [r["bare"] for run in runs for r in run["rows"]]
        ours_r = [r["ours"] for run in runs for r in run["rows"]]
        peaks = [run["peak_rss_mib"] for run in runs]
        print(
            f"  {mode:<8} bare forward {span(bare_r, '.0f')} tok/s, harvest {span(ours_r, '.0f')} tok/s, "
            f"peak RSS {span(peaks, '.0f')} MiB (pinned: {runs[0]['pinned']})"
        )
    ratio = [
        d["ours"] / p["ours"]
        for dr, pr in zip(results["default"], results["pinned"])
        for d, p in zip(dr["rows"], pr["rows"])
    ]
    bare_ratio = [
        d["bare"] / p["bare"]
        for dr, pr in zip(results["default"], results["pinned"])
        for d, p in zip(dr["rows"], pr["rows"])
    ]
    print(f"ratio harvest default / pinned {span(ratio)}x; bare forward default / pinned {span(bare_ratio)}x")


def load_delphi_cache():  # type: ignore[no-untyped-def]
    """delphi's LatentCache from a --no-deps install, without its heavy package __init__s."""
    import importlib
    import logging
    import types
    from pathlib import Path

    root = Path.home() / ".cache/sae-lens-autointerp/delphi"
    if not (root / "delphi").is_dir():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(root), "eai-delphi"], check=True
        )
    sys.path.insert(0, str(root))
    for pkg in ("delphi", "delphi.latents"):
        mod = types.ModuleType(pkg)
        mod.__path__ = [str(root / pkg.replace(".", "/"))]
        sys.modules[pkg] = mod
    sys.modules["delphi"].logger = logging.getLogger("delphi")  # type: ignore[attr-defined]
    return importlib.import_module("delphi.latents.cache").LatentCache


def child_delphi(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import sae_lens_autointerp as sai

    LatentCache = load_delphi_cache()
    batch = args.batch_size
    hf = AutoModelForCausalLM.from_pretrained(sai.embedded.model_dir(), dtype=torch.float32).eval()
    sae, tokens = load_inputs(args, args.child_delphi, hf.config.hidden_size)
    hookpoint = delphi_hookpoint(args.hook)  # checked against the bridge's hook by the parent
    LatentCache(hf, {hookpoint: sae.encode}, batch_size=batch).run(2 * batch * args.ctx_len, tokens[: 2 * batch])
    cache = LatentCache(hf, {hookpoint: sae.encode}, batch_size=batch)  # the above was a warm-up, as ours gets
    before = peak_rss_mib()
    start = clocks()
    cache.run(tokens.numel(), tokens)
    speed = rates(tokens.numel(), start)
    after = peak_rss_mib()
    # fraction of (token, latent) pairs that fired, on the tokens the harvest keeps (no BOS/EOS) and on all
    special = torch.tensor(sorted(set(AutoTokenizer.from_pretrained(sai.embedded.model_dir()).all_special_ids)))
    where = cache.cache.latent_locations[hookpoint]
    kept = ~torch.isin(tokens[where[:, 0], where[:, 1]], special)
    n_kept = int((~torch.isin(tokens, special)).sum())
    print(
        json.dumps(
            {
                "tokens": tokens.numel(),
                **speed,
                "rss_before_mib": before,
                "peak_rss_mib": after,
                "hookpoint": hookpoint,
                "fired": int(kept.sum()) / n_kept / int(sae.cfg.d_sae),
                "fired_all": len(where) / tokens.numel() / int(sae.cfg.d_sae),
            }
        )
    )


def run_child(args: argparse.Namespace, flag: str, n_tokens: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        flag,
        str(n_tokens),
        "--ctx-len",
        str(args.ctx_len),
        "--batch-size",
        str(args.batch_size),
        "--hook",
        args.hook,
        "--inputs",
        args.inputs,
    ]
    cmd += ["--d-sae", str(args.d_sae)] if args.d_sae else []
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def span(values: list[float], fmt: str = ".2f") -> str:
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}-{hi:{fmt}}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-tokens", type=int, default=32768)
    parser.add_argument("--ctx-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--d-sae", type=int, default=None, help="a random StandardSAE of this width at --hook")
    parser.add_argument(
        "--hook",
        default=DEFAULT_HOOK,
        help="hook of the random SAE (needs --d-sae unless the "
        f"default {DEFAULT_HOOK}, the embedded SAE's), e.g. blocks.28.hook_resid_post",
    )
    parser.add_argument("--density", type=float, default=0.01, help="fraction of tokens each random latent fires on")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--delphi", action="store_true", help="also run delphi's LatentCache (eai-delphi)")
    parser.add_argument("--many", action="store_true", help="4 SAEs in one pass (harvest_many) vs 4 passes")
    parser.add_argument("--backend", default=None, help="comma list of bridge, hf, nnsight: harvest through each")
    parser.add_argument("--profile", default=None, help="bridge, hf or nnsight: where one harvest's time goes")
    parser.add_argument(
        "--inline-too", action="store_true", help="(--backend) also harvest with the statistics folded inline"
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="(--backend) harvest and bare forward alternating batch by batch in one call",
    )
    parser.add_argument(
        "--many-hooks",
        default=",".join(f"blocks.{layer}.hook_resid_post" for layer in (26, 27, 28, 29)),
        help="comma-separated hooks of the --many SAEs",
    )
    parser.add_argument("--long-rss", default=None, help="comma list of token counts: peak RSS per size")
    parser.add_argument(
        "--tensor-input", action="store_true", help="(--long-rss) pass the tokens as a tensor built in the process"
    )
    parser.add_argument("--child-rss", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-long-rss", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-delphi", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-malloc", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--malloc", action="store_true", help="glibc malloc as it is vs pinned thresholds")
    parser.add_argument("--pin-malloc", action="store_true", help="(--long-rss) pin malloc thresholds in the child")
    parser.add_argument("--inputs", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_long_rss:
        child_long_rss(args)
        return
    if args.long_rss:
        long_rss(args)
        return
    if args.hook != DEFAULT_HOOK and not args.d_sae:
        parser.error(f"the embedded SAE is trained on {DEFAULT_HOOK}; give --d-sae for a random SAE at {args.hook}")
    if args.child_rss:
        child_rss(args)
        return
    if args.child_delphi:
        child_delphi(args)
        return
    if args.child_malloc:
        child_malloc(args)
        return

    torch.manual_seed(0)
    if args.many:
        many(args)
        return
    model, sae, tokens, info = setup(args)
    if args.malloc:
        malloc_ab(args, sae, tokens[: -(-args.n_tokens // args.ctx_len)])
        return
    if args.profile:
        profile(args, model, sae, tokens[: -(-args.n_tokens // args.ctx_len)])
        return
    if args.backend:
        args.inputs = tempfile.mkdtemp(prefix="bench-harvest-inputs-")
        try:
            save_inputs(args.inputs, sae, tokens)
            backends(args, model, sae, tokens[: -(-args.n_tokens // args.ctx_len)])
        finally:
            shutil.rmtree(args.inputs, ignore_errors=True)
        return
    args.inputs = tempfile.mkdtemp(prefix="bench-harvest-inputs-")
    try:
        save_inputs(args.inputs, sae, tokens)
        measure(args, model, sae, tokens[: -(-args.n_tokens // args.ctx_len)], info)
    finally:
        shutil.rmtree(args.inputs, ignore_errors=True)


def many(args: argparse.Namespace) -> None:
    """Part 4: several SAEs in one forward pass vs one pass per SAE, same tokens, same settings."""
    import sae_lens_autointerp as sai

    hooks = args.many_hooks.split(",")
    d_sae = args.d_sae or 2048
    saes = {}
    model = None
    for hook in hooks:
        model, sae = load(d_sae, hook) if model is None else (model, load_sae_only(model, d_sae, hook))
        saes[hook] = sae
    assert model is not None
    tokens = token_batches(model, next(iter(saes.values())), args.n_tokens, args.ctx_len)
    for sae in saes.values():
        calibrate(model, sae, tokens[: args.batch_size], args.density)
    kwargs = dict(n_tokens=tokens.numel(), ctx_len=tokens.shape[1], batch_size=args.batch_size, progress=False)
    print(
        f"model SmolLM2-135M bridge ({model.cfg.n_layers} layers), {len(saes)} random StandardSAEs d_sae {d_sae} at "
        f"{', '.join(hooks)}; {tokens.numel()} tokens in batches of {args.batch_size}x{args.ctx_len}, "
        f"torch threads {torch.get_num_threads()}"
    )

    def one_pass() -> dict[str, float]:
        folder = tempfile.mkdtemp(prefix="bench-many-")
        try:
            start = clocks()
            dirs = {h: os.path.join(folder, str(i)) for i, h in enumerate(saes)}
            sai.harvest_many(saes, model, tokens, store_dirs=dirs, **kwargs)
            return rates(tokens.numel(), start)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def separate() -> dict[str, float]:
        folder = tempfile.mkdtemp(prefix="bench-many-")
        try:
            start = clocks()
            for i, sae in enumerate(saes.values()):
                sae.autointerp.harvest(model, tokens, store_dir=os.path.join(folder, str(i)), **kwargs)
            return rates(tokens.numel(), start)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    one, sep = [], []
    for _ in range(args.repeats):  # interleaved so drift hits both alike
        one.append(one_pass())
        sep.append(separate())
    for name, runs in (("harvest_many (one pass)", one), (f"{len(saes)} x harvest", sep)):
        wall = ", ".join(f"{x['wall']:6.0f}" for x in runs)
        cpu = ", ".join(f"{x['cpu']:6.0f}" for x in runs)
        print(f"  {name:<24} tokens/s (all SAEs done) wall {wall} | cpu {cpu}")
    per = {k: span([x[k] / y[k] for x, y in zip(one, sep)]) for k in ("wall", "cpu")}
    layers = [int(h.split(".")[1]) + 1 for h in hooks]
    bound = sum(layers) / max(layers)
    print(
        f"ratio one pass / {len(saes)} passes per repeat: wall {per['wall']}x | cpu {per['cpu']}x "
        f"(goal >= 2.5x; blocks-run bound {bound:.2f}x)"
    )


def load_sae_only(model, d_sae: int, hook: str):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    metadata = SAEMetadata(hook_name=hook, prepend_bos=True, context_size=128)
    sae = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=d_sae, metadata=metadata))
    sae.eval()
    return sae


def measure(args: argparse.Namespace, model, sae, tokens: torch.Tensor, info: dict | None) -> None:
    layer = int(args.hook.split(".")[1])
    print(
        f"model SmolLM2-135M bridge ({model.cfg.n_layers} layers), hook {sae.cfg.metadata.hook_name} (ours and the "
        f"baseline stop after layer {layer + 1} of {model.cfg.n_layers}), {type(sae).__name__} d_sae {sae.cfg.d_sae}, "
        f"{tokens.numel()} tokens in batches of {args.batch_size}x{args.ctx_len}, torch threads {torch.get_num_threads()}"
    )
    if info:
        print(
            f"random SAE calibrated on the first batch: median residual norm {info['residual_norm']:.1f}, "
            f"{100 * info['fired']:.2f}% of latents fire per token (target {100 * args.density:g}%), "
            f"sum(b_enc) {info['b_enc_sum']:.6f}"
        )
    if args.delphi:
        hookpoint, diff = check_delphi_hook(model, args.hook, tokens[:2])
        print(f"delphi hooks {hookpoint}: max relative difference to the bridge's {args.hook} {diff:.1e}")
    ours(model, sae, tokens[: args.batch_size * 2], args.batch_size)  # warm-up
    base, mine, delphi = [], [], []
    for _ in range(args.repeats):  # interleaved so drift hits all alike
        base.append(baseline(model, sae, tokens, args.batch_size))
        mine.append(ours(model, sae, tokens, args.batch_size))
        if args.delphi:
            delphi.append(run_child(args, "--child-delphi", args.n_tokens))
    print(
        f"tokens/s over {args.repeats} repeats, wall clock | per CPU-second (all threads; less disturbed by "
        "other jobs on the machine) | cores busy = CPU-s per wall-s (below the thread count: disturbed):"
    )
    rows = [("baseline forward(stop_at_layer)+encode", base), ("sae.autointerp.harvest", mine)]
    if delphi:
        rows.append(("delphi LatentCache (whole model)", delphi))
    for name, runs in rows:
        wall = ", ".join(f"{x['wall']:6.0f}" for x in runs)
        cpu = ", ".join(f"{x['cpu']:6.0f}" for x in runs)
        cores = ", ".join(f"{x['wall'] / x['cpu']:.2f}" for x in runs)
        print(f"  {name:<40} wall {wall} | cpu {cpu} | cores busy {cores}")
    if delphi:
        print(
            f"  delphi fired on {100 * delphi[0]['fired']:.2f}% of (token, latent) pairs on non-special tokens, "
            f"{100 * delphi[0]['fired_all']:.2f}% with BOS/EOS"
        )

    def ratio(name: str, top: list[dict], bottom: list[dict], goal: str = "") -> None:
        per = {k: span([x[k] / y[k] for x, y in zip(top, bottom)]) for k in ("wall", "cpu")}
        best = {k: max(x[k] for x in top) / max(y[k] for y in bottom) for k in ("wall", "cpu")}
        print(
            f"ratio {name:<20} per repeat: wall {per['wall']}x | cpu {per['cpu']}x;  best-of: wall "
            f"{best['wall']:.2f}x | cpu {best['cpu']:.2f}x {goal}"
        )

    ratio("harvest / baseline", mine, base, "(goal >= 0.85)")
    if delphi:
        ratio("harvest / delphi", mine, delphi)
        ratio("baseline / delphi", base, delphi)
    # repeats in which every measurement kept all torch threads busy (the other jobs left it alone)
    threads = torch.get_num_threads()
    clean = [i for i in range(args.repeats) if all(r[i]["wall"] / r[i]["cpu"] >= 0.95 * threads for _, r in rows)]
    if clean and len(clean) < args.repeats:
        print(f"undisturbed repeats {[i + 1 for i in clean]} only (all cores busy >= {0.95 * threads:.2f}):")
        pick = lambda runs: [runs[i] for i in clean]  # noqa: E731
        ratio("harvest / baseline", pick(mine), pick(base))
        if delphi:
            ratio("harvest / delphi", pick(mine), pick(delphi))
            ratio("baseline / delphi", pick(base), pick(delphi))
    elif not clean:
        print(
            "no repeat ran undisturbed (every one had a measurement below all cores busy): rerun on a quieter machine"
        )
    rss = {}
    for factor in (1, 4):
        rss[factor] = run_child(args, "--child-rss", args.n_tokens * factor)
        print(
            f"peak RSS at {rss[factor]['tokens']:>8} tokens: {rss[factor]['peak_rss_mib']:8.1f} MiB "
            f"(after loading: {rss[factor]['rss_before_mib']:.1f} MiB)"
        )
    growth = rss[4]["peak_rss_mib"] / rss[1]["peak_rss_mib"] - 1
    print(f"peak RSS growth x4 tokens: {100 * growth:+.1f}%  (goal <= 10%)")
    if not args.delphi:
        return
    for factor, runs in ((1, delphi), (4, [run_child(args, "--child-delphi", args.n_tokens * 4)])):
        x = runs[-1]
        print(
            f"delphi LatentCache at {x['tokens']:>8} tokens: {x['wall']:6.0f} tok/s wall, {x['cpu']:6.0f} per "
            f"CPU-s; peak RSS {x['peak_rss_mib']:8.1f} MiB (ours {rss[factor]['peak_rss_mib']:.1f})"
        )


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Train the embedded offline SAE shipped in ``sae_lens_autointerp/data/embedded_sae/``.

A TopK SAE (SAELens ``TopKTrainingSAE`` with the AuxK loss, trained by SAELens's own ``SAETrainer``) on the
residual stream of SmolLM2-135M-Instruct after block 3 (``blocks.3.hook_resid_post``), over
:func:`sae_lens_autointerp.embedded.load_corpus` (Python's own documentation; 95 % of the documents for
training, the rest held out). Runs on CPU, offline, in about 20 minutes on 2 cores:

    HF_HUB_OFFLINE=1 python scripts/train_embedded_sae.py

SAELens's ``LanguageModelSAETrainingRunner`` / ``ActivationsStore`` expect a ``HookedTransformer``; the
embedded model is a ``TransformerBridge``, so this script computes the activations itself (hook captured
by closure, ``stop_at_layer`` so no later block runs), keeps them in memory, and feeds shuffled batches to
``SAETrainer`` through the plain iterator that SAELens calls a ``DataProvider``. Sequences are built
exactly as :mod:`sae_lens_autointerp.harvest.corpus` builds them for harvesting (documents tokenized
without special tokens, joined with EOS, cut into ``context_size - 1`` tokens, BOS prepended). Position 0
(BOS, an attention sink with a residual norm ~10x the median) is left out of training and evaluation;
the SAE records this as ``metadata.seqpos_slice = [1, None]``.

The metrics in ``training_report.json`` are measured on the held-out documents with the SAE as saved
(reloaded from disk with ``SAE.load_from_disk``, float16 weights upcast to float32).

The other shipped SAEs use the same recipe (``--out`` defaults to the shipped folder of the chosen variant):

    HF_HUB_OFFLINE=1 python scripts/train_embedded_sae.py --hook-name blocks.2.hook_resid_post   # data/embedded_sae_layer2/
    HF_HUB_OFFLINE=1 python scripts/train_embedded_sae.py --hook-name blocks.4.hook_resid_post   # data/embedded_sae_layer4/
    HF_HUB_OFFLINE=1 python scripts/train_embedded_sae.py --random-init-model                    # data/embedded_sae_random_init/

``--random-init-model`` trains on ``embedded.load_model(control="random-init")``'s weights (every parameter
re-initialised from a fixed seed, see ``embedded.RANDOM_INIT_SCHEME``) and records their SHA-256 in the SAE's
metadata (``model_weights_sha256``) and in ``random_init_model.json`` next to it, which ``load_model``
checks. On that model the "loss recovered" number is not meaningful (its clean loss is near uniform).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "sae_lens_autointerp" / "data" / "embedded_sae"
RANDOM_INIT_CONTROL = "random-init"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for cfg.json + sae_weights.safetensors (default: the shipped folder of this hook / model, "
        f"e.g. {DEFAULT_OUT.relative_to(REPO)} for the defaults)",
    )
    p.add_argument("--hook-name", default="blocks.3.hook_resid_post")
    p.add_argument(
        "--random-init-model",
        action="store_true",
        help="train on the random-init control model (embedded.load_model(control='random-init')) instead of "
        "the trained SmolLM2",
    )
    p.add_argument("--context-size", type=int, default=128)
    p.add_argument("--d-sae", type=int, default=2048)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--aux-coefficient", type=float, default=1 / 32)
    p.add_argument("--epochs", type=float, default=1.5, help="passes over the training activations")
    p.add_argument("--batch-size", type=int, default=2048, help="activations per SAE training step")
    p.add_argument("--lr", type=float, default=7e-4)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--decay-fraction", type=float, default=0.2, help="linear LR decay over the last part")
    p.add_argument(
        "--dead-window", type=int, default=50, help="steps without firing before AuxK treats a latent as dead"
    )
    p.add_argument("--holdout-fraction", type=float, default=0.05)
    p.add_argument("--max-docs", type=int, default=None, help="use only the first N corpus documents (quick runs)")
    p.add_argument("--model-batch", type=int, default=32, help="sequences per model forward pass")
    p.add_argument("--ce-sequences", type=int, default=32, help="held-out sequences for the spliced-in loss check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights-dtype", choices=["float16", "float32"], default="float16")
    return p.parse_args(argv)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pack_sequences(tokenizer: Any, docs: list[str], context_size: int) -> torch.Tensor:
    """[n_seq, context_size] token ids: BOS + (context_size - 1) tokens of EOS-joined documents.

    The last, incomplete sequence is dropped."""
    bos, sep = tokenizer.bos_token_id, tokenizer.eos_token_id
    body = context_size - 1
    stream: list[int] = []
    for start in range(0, len(docs), 256):
        for ids in tokenizer(docs[start : start + 256], add_special_tokens=False)["input_ids"]:
            if not ids:
                continue
            if stream:
                stream.append(sep)
            stream.extend(ids)
    n_seq = len(stream) // body
    out = torch.empty(n_seq, context_size, dtype=torch.long)
    out[:, 0] = bos
    out[:, 1:] = torch.tensor(stream[: n_seq * body], dtype=torch.long).view(n_seq, body)
    return out


def hook_layer(hook_name: str) -> int:
    return int(hook_name.split(".")[1])


def default_out(hook_name: str, control: str | None) -> Path:
    """The shipped folder for this hook and model control; an error if there is none (then pass --out)."""
    from sae_lens_autointerp import embedded
    from sae_lens_autointerp.errors import ConfigError

    parts = hook_name.split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] == "hook_resid_post":
        try:
            return embedded.sae_dir(int(parts[1]), control)
        except ConfigError:
            pass
    raise SystemExit(f"no shipped SAE for {hook_name} (control {control}); pass --out")


@torch.inference_mode()
def harvest_activations(model: Any, tokens: torch.Tensor, hook_name: str, batch: int, label: str) -> torch.Tensor:
    """Residual activations at ``hook_name`` for every position but the first: [n_seq * (L - 1), d_model]."""
    captured: list[torch.Tensor] = []

    def grab(activation: torch.Tensor, hook: Any) -> None:  # noqa: ARG001 - capture by closure, not hook.name
        captured.append(activation.detach())

    n_seq, ctx = tokens.shape
    d_model = model.cfg.d_model
    out = torch.empty(n_seq * (ctx - 1), d_model, dtype=torch.float32)
    stop = hook_layer(hook_name) + 1
    t0 = time.time()
    with model.hooks(fwd_hooks=[(hook_name, grab)]):
        for start in range(0, n_seq, batch):
            captured.clear()
            chunk = tokens[start : start + batch]
            model(chunk, return_type=None, stop_at_layer=stop)
            if len(captured) != 1:
                raise RuntimeError(f"hook {hook_name} fired {len(captured)} times, expected once")
            acts = captured[0][:, 1:, :].float().reshape(-1, d_model)
            out[start * (ctx - 1) : start * (ctx - 1) + acts.shape[0]] = acts
            if (start // batch) % 50 == 0:
                done = start + chunk.shape[0]
                print(f"[{label}] {done}/{n_seq} sequences, {time.time() - t0:.0f} s", flush=True)
    return out


class ShuffledBatches(Iterator[torch.Tensor]):
    """Endless shuffled batches over an in-memory activation tensor (a SAELens ``DataProvider``)."""

    def __init__(self, acts: torch.Tensor, batch_size: int, seed: int) -> None:
        self.acts = acts
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.pos = 0
        self.epochs_started = 0

    def __iter__(self) -> ShuffledBatches:
        return self

    def __next__(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.order.numel():
            self.order = torch.randperm(self.acts.shape[0], generator=self.generator)
            self.pos = 0
            self.epochs_started += 1
        idx = self.order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return self.acts[idx]


@torch.no_grad()
def evaluate(sae: Any, acts: torch.Tensor, massive_norm: float, batch: int = 8192) -> dict[str, Any]:
    """Reconstruction and sparsity metrics of an inference SAE on held-out activations."""
    sq_err = 0.0
    sq_err_normal = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    l0_sum = 0.0
    n = acts.shape[0]
    mean = acts.mean(0)
    norms = acts.norm(dim=-1)
    normal = norms <= massive_norm
    mean_normal = acts[normal].mean(0)
    total_var = float(((acts - mean) ** 2).sum())
    total_var_normal = float(((acts[normal] - mean_normal) ** 2).sum())
    per_token_ev = []
    for start in range(0, n, batch):
        x = acts[start : start + batch]
        feats = sae.encode(x)
        recon = sae.decode(feats)
        err = ((recon - x) ** 2).sum(-1)
        sq_err += float(err.sum())
        sq_err_normal += float(err[normal[start : start + batch]].sum())
        active = feats > 0
        l0_sum += float(active.sum())
        fired += active.sum(0)
        per_token_ev.append(1 - err / ((x - mean) ** 2).sum(-1))
    per_token = torch.cat(per_token_ev)
    return {
        "n_tokens": n,
        "l0": l0_sum / n,
        "explained_variance": 1 - sq_err / total_var,
        "explained_variance_without_massive_tokens": 1 - sq_err_normal / total_var_normal,
        "massive_token_fraction": float((~normal).float().mean()),
        "massive_norm_threshold": massive_norm,
        "median_per_token_explained_variance": float(per_token.median()),
        "dead_latents": int((fired == 0).sum()),
        "dead_fraction": float((fired == 0).float().mean()),
        "latents_firing_on_fewer_than_10_tokens": int((fired < 10).sum()),
        "max_latent_firing_fraction": float(fired.max()) / n,
    }


@torch.inference_mode()
def spliced_loss(model: Any, sae: Any, tokens: torch.Tensor, hook_name: str, batch: int) -> dict[str, float]:
    """Next-token loss (positions >= 1 predicting >= 2) clean, with the SAE spliced in, and with the
    hook zero-ablated; loss recovered = (zero - sae) / (zero - clean)."""

    def splice(activation: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001
        body = activation[:, 1:, :]
        recon = sae.decode(sae.encode(body.float())).to(activation.dtype)
        return torch.cat([activation[:, :1, :], recon], dim=1)

    def zero(activation: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001
        return torch.cat([activation[:, :1, :], torch.zeros_like(activation[:, 1:, :])], dim=1)

    def loss_with(hooks: list[tuple[str, Any]]) -> float:
        total, count = 0.0, 0
        for start in range(0, tokens.shape[0], batch):
            chunk = tokens[start : start + batch]
            with model.hooks(fwd_hooks=hooks):
                logits = model(chunk, return_type="logits")
            logp = torch.log_softmax(logits[:, 1:-1, :].float(), dim=-1)
            target = chunk[:, 2:]
            nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            total += float(nll.sum())
            count += nll.numel()
        return total / count

    clean = loss_with([])
    with_sae = loss_with([(hook_name, splice)])
    ablated = loss_with([(hook_name, zero)])
    return {
        "n_tokens": int(tokens.shape[0] * (tokens.shape[1] - 2)),
        "loss_clean": clean,
        "loss_with_sae": with_sae,
        "loss_zero_ablation": ablated,
        "loss_recovered": (ablated - with_sae) / (ablated - clean),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t_start = time.time()
    seed_everything(args.seed)

    import sae_lens
    import safetensors.torch
    import transformer_lens
    from sae_lens import SAE, SAETrainer
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    from sae_lens_autointerp import embedded

    # ---- corpus -> sequences ----------------------------------------------------------------------------
    control = RANDOM_INIT_CONTROL if args.random_init_model else None
    out: Path = args.out if args.out is not None else default_out(args.hook_name, control)
    docs = embedded.load_corpus(args.max_docs)
    n_eval_docs = max(1, round(len(docs) * args.holdout_fraction))
    train_docs, eval_docs = docs[:-n_eval_docs], docs[-n_eval_docs:]
    random_init: dict[str, Any] | None = None
    if control is None:
        model = embedded.load_model()
    else:
        # Not load_model(control=...): that checks the weights against the record this run is about to write.
        from transformer_lens.model_bridge import TransformerBridge

        hf_model = embedded.random_init_hf_model(embedded.RANDOM_INIT_SEED)
        random_init = {
            "control": control,
            "seed": embedded.RANDOM_INIT_SEED,
            "version": embedded.RANDOM_INIT_VERSION,
            "scheme": embedded.RANDOM_INIT_SCHEME,
            "weights_sha256": embedded.weights_sha256(hf_model),
            "hash": "sha256 over the parameters sorted by name (name, shape, float32 bytes); embedded.weights_sha256",
            "n_parameters": sum(p.numel() for p in hf_model.parameters()),
            "torch": torch.__version__,
        }
        print(f"random-init model: weights sha256 {random_init['weights_sha256']}", flush=True)
        model = TransformerBridge.boot_transformers(str(embedded.model_dir()), device="cpu", hf_model=hf_model)
    model.eval()
    tokenizer = model.tokenizer
    train_tokens = pack_sequences(tokenizer, train_docs, args.context_size)
    eval_tokens = pack_sequences(tokenizer, eval_docs, args.context_size)
    corpus_tokens = sum(len(ids) for ids in tokenizer(docs, add_special_tokens=False)["input_ids"])
    print(
        f"corpus: {len(docs)} docs, {corpus_tokens} tokens; train {len(train_docs)} docs -> "
        f"{tuple(train_tokens.shape)}, held out {len(eval_docs)} docs -> {tuple(eval_tokens.shape)}",
        flush=True,
    )

    # ---- activations ------------------------------------------------------------------------------------
    t0 = time.time()
    train_acts = harvest_activations(model, train_tokens, args.hook_name, args.model_batch, "train")
    eval_acts = harvest_activations(model, eval_tokens, args.hook_name, args.model_batch, "held-out")
    t_acts = time.time() - t0
    norms = train_acts.norm(dim=-1)
    median_norm = float(norms.median())
    massive_norm = 4 * median_norm  # SmolLM2 has "massive activation" tokens (e.g. " the") at ~5-10x the median
    print(
        f"activations: {train_acts.shape[0]} train / {eval_acts.shape[0]} held-out in {t_acts:.0f} s; "
        f"median norm {median_norm:.1f}, {float((norms > massive_norm).float().mean()):.3%} above {massive_norm:.0f}",
        flush=True,
    )

    # ---- SAE + trainer ----------------------------------------------------------------------------------
    model_name = embedded.MODEL_NAME if random_init is None else f"{embedded.MODEL_NAME}-{control}"
    extra_metadata: dict[str, Any] = {}
    if random_init is not None:
        extra_metadata = {
            "model_control": control,
            "model_weights_sha256": random_init["weights_sha256"],
            "random_init_seed": random_init["seed"],
            "random_init_version": random_init["version"],
        }
    metadata = SAEMetadata(
        model_name=model_name,
        model_class_name="TransformerBridge",
        hook_name=args.hook_name,
        hook_head_index=None,
        context_size=args.context_size,
        prepend_bos=True,
        seqpos_slice=(1, None),
        dataset_path="sae_lens_autointerp.embedded.load_corpus",
        model_from_pretrained_kwargs={},
        exclude_special_tokens=False,
        **extra_metadata,
    )
    sae_cfg = TopKTrainingSAEConfig(
        d_in=model.cfg.d_model,
        d_sae=args.d_sae,
        k=args.k,
        aux_loss_coefficient=args.aux_coefficient,
        rescale_acts_by_decoder_norm=True,
        normalize_activations="expected_average_only_in",
        dtype="float32",
        device="cpu",
        metadata=metadata,
    )
    sae = TopKTrainingSAE(sae_cfg)
    steps = int(args.epochs * train_acts.shape[0]) // args.batch_size
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * args.batch_size,
        train_batch_size_samples=args.batch_size,
        lr=args.lr,
        lr_warm_up_steps=args.warmup_steps,
        lr_decay_steps=int(steps * args.decay_fraction),
        lr_scheduler_name="constant",  # constant after warm-up, then linear decay to lr_end over the decay steps
        lr_end=args.lr,  # for "constant", SAELens decays linearly from lr to 0 over lr_decay_steps
        dead_feature_window=args.dead_window,
        feature_sampling_window=max(1, steps // 5),
        n_batches_for_norm_estimate=50,
        device="cpu",
    )
    provider = ShuffledBatches(train_acts, args.batch_size, seed=args.seed)
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=provider)
    # Estimate the norm scaling up front (fit() keeps a factor that is already set) so that b_dec can start
    # at the scaled mean activation instead of zero.
    trainer.activation_scaler.estimate_scaling_factor(
        d_in=sae_cfg.d_in, data_provider=provider, n_batches_for_norm_estimate=trainer_cfg.n_batches_for_norm_estimate
    )
    with torch.no_grad():
        sample = train_acts[
            torch.randperm(train_acts.shape[0], generator=torch.Generator().manual_seed(args.seed))[:65536]
        ]
        sae.b_dec.copy_(sample.mean(0) * trainer.activation_scaler.scaling_factor)
    print(f"training: {steps} steps x {args.batch_size} = {steps * args.batch_size} activations", flush=True)
    t0 = time.time()
    sae = trainer.fit()
    t_train = time.time() - t0
    print(f"trained in {t_train:.0f} s", flush=True)

    # ---- save (inference SAE), reload, evaluate -----------------------------------------------------------
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("sae_weights.safetensors", "cfg.json", "training_report.json", embedded.RANDOM_INIT_RECORD):
        (out / stale).unlink(missing_ok=True)
    weights_path, cfg_path = sae.save_inference_model(out)
    if args.weights_dtype == "float16":
        # cfg.json keeps dtype "float32": SAELens's disk loader casts the tensors to the config dtype on load.
        state = safetensors.torch.load_file(str(weights_path))
        safetensors.torch.save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, str(weights_path))
    shipped = SAE.load_from_disk(out, device="cpu")
    shipped.eval()
    held_out = evaluate(shipped, eval_acts, massive_norm)
    train_subset = evaluate(shipped, train_acts[: eval_acts.shape[0]], massive_norm)
    ce_tokens = eval_tokens[: args.ce_sequences]
    t0 = time.time()
    ce = spliced_loss(model, shipped, ce_tokens, args.hook_name, batch=8)
    t_ce = time.time() - t0
    print(json.dumps({"held_out": held_out, "spliced_loss": ce}, indent=2), flush=True)

    report = {
        "sae": {
            "architecture": "topk (SAELens TopKTrainingSAE, AuxK loss; saved as inference TopKSAE)",
            "d_in": sae_cfg.d_in,
            "d_sae": args.d_sae,
            "k": args.k,
            "hook_name": args.hook_name,
            "model_name": model_name,
            "model_control": control,
            "context_size": args.context_size,
            "prepend_bos": True,
            "trained_positions": "all but position 0 (BOS); metadata.seqpos_slice = [1, null]",
            "weights_dtype_on_disk": args.weights_dtype,
            "weights_file_bytes": weights_path.stat().st_size,
        },
        "corpus": {
            "source": "sae_lens_autointerp.embedded.load_corpus() (Python documentation topics + stdlib docstrings)",
            "python_version": platform.python_version(),
            "documents": len(docs),
            "tokens": corpus_tokens,
            "train_documents": len(train_docs),
            "held_out_documents": len(eval_docs),
            "held_out_split": f"last {n_eval_docs} documents of load_corpus() (its order is a hash shuffle)",
        },
        "training": {
            "unique_train_tokens": int(train_acts.shape[0]),
            "tokens_trained_on": int(trainer.n_training_samples),
            "epochs": trainer.n_training_samples / train_acts.shape[0],
            "steps": int(trainer.n_training_steps),
            "batch_size": args.batch_size,
            "lr": args.lr,
            "lr_schedule": f"{args.warmup_steps} warm-up steps, constant, linear decay to 0 over the last "
            f"{trainer_cfg.lr_decay_steps} steps",
            "aux_loss_coefficient": args.aux_coefficient,
            "dead_feature_window_steps": args.dead_window,
            "normalize_activations": "expected_average_only_in (folded into the weights after training)",
            "b_dec_init": "mean activation",
            "seed": args.seed,
            "activation_seconds": round(t_acts, 1),
            "training_seconds": round(t_train, 1),
            "total_seconds": round(time.time() - t_start, 1),
            "ce_eval_seconds": round(t_ce, 1),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "device": "cpu",
        },
        "held_out": held_out,
        "train_subset_same_size": train_subset,
        "spliced_loss_held_out": ce,
        **({"random_init_model": random_init} if random_init is not None else {}),
        "definitions": {
            "l0": "mean number of latents > 0 per token",
            "explained_variance": "1 - sum ||x - sae(x)||^2 / sum ||x - mean(x)||^2 over held-out tokens",
            "dead_fraction": "fraction of latents that never fire on the n_tokens held-out tokens",
            "explained_variance_without_massive_tokens": "the same, over tokens whose residual norm is at most "
            "massive_norm_threshold (4x the median norm)",
            "loss_recovered": "(loss_zero_ablation - loss_with_sae) / (loss_zero_ablation - loss_clean), the SAE's "
            "reconstruction spliced in at every position but BOS"
            + (
                "; on the random-init model it is not meaningful: a random model predicts nothing (its clean loss "
                "is near the uniform log(vocab)), so the denominator measures no learned computation"
                if random_init is not None
                else ""
            ),
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sae_lens": sae_lens.__version__,
            "transformer_lens": getattr(transformer_lens, "__version__", "unknown"),
        },
        "reproduce": "HF_HUB_OFFLINE=1 python scripts/train_embedded_sae.py "
        + " ".join(a for a in (argv if argv is not None else sys.argv[1:]) if a),
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if random_init is not None:
        (out / embedded.RANDOM_INIT_RECORD).write_text(json.dumps(random_init, indent=2) + "\n")
    print(f"saved to {out} in {time.time() - t_start:.0f} s total", flush=True)
    return report


if __name__ == "__main__":
    main()

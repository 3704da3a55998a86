"""``sae-autointerp`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _cmd_plugins(args: argparse.Namespace) -> int:
    from .plugin import get_registry

    infos = get_registry().plugins()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return 0
    for info in infos:
        print(f"{info.name} {info.version}  ({info.source})")
        for kind in ("scorers", "explainers", "llm_clients"):
            names = info.provides.get(kind, [])
            print(f"    {kind.replace('_', ' ')}: {', '.join(names) if names else '-'}")
        if info.error:
            print(f"    ERROR: {info.error}")
    return 0


def _cmd_harvest(args: argparse.Namespace) -> int:
    from . import embedded
    from .loading import load_model, load_sae

    if args.sae == "embedded":
        sae = embedded.load_sae(device=args.device)
    else:
        sae = load_sae(args.sae, args.sae_id, device=args.device)
    model = (
        embedded.load_model(device=args.device)
        if args.model == "embedded"
        else load_model(args.model, sae=sae, kind=args.model_kind, device=args.device)
    )
    dataset = embedded.load_corpus() if args.dataset == "embedded" else args.dataset
    store = sae.autointerp.harvest(
        model,
        dataset,
        n_tokens=args.n_tokens,
        ctx_len=args.ctx_len,
        batch_size=args.batch_size,
        text_column=args.text_column,
        split=args.split,
        store_dir=args.store_dir,
    )
    print(json.dumps(store.summary(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sae-autointerp", description="Explain and score SAELens SAE latents.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list installed plugins and what each provides")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("harvest", help="harvest latent activations into an activation store")
    p.add_argument("--sae", default="embedded", help="SAELens release, local SAE folder, or 'embedded'")
    p.add_argument("--sae-id", default=None, help="SAE id within the release")
    p.add_argument("--model", default="embedded", help="model name or local HF folder, or 'embedded'")
    p.add_argument("--dataset", default="embedded", help="HF dataset name, local file/folder, or 'embedded'")
    p.add_argument("--text-column", default="text")
    p.add_argument("--split", default="train")
    p.add_argument("--n-tokens", type=int, default=200_000)
    p.add_argument("--ctx-len", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--store-dir", default=None)
    p.add_argument("--model-kind", default="auto", choices=["auto", "hooked", "bridge"])
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_harvest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import AutointerpError

    try:
        return int(args.func(args) or 0)
    except AutointerpError as exc:
        print(f"sae-autointerp: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

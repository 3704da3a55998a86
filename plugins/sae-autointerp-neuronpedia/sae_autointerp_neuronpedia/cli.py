"""``sae-autointerp-neuronpedia``: export a run's explanations in Neuronpedia's format, or read an export."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from sae_lens_autointerp.interchange import NEURONPEDIA_DEFAULT_AUTHOR_ID

from .formats import export_explanations, read_explanations


def _export(args: argparse.Namespace) -> int:
    report = export_explanations(
        args.results,
        args.out,
        model_id=args.model_id,
        source=args.source,
        neuronpedia_id=args.neuronpedia_id,
        explanation_model=args.explanation_model,
        type_name=args.type_name,
        include_scores=args.include_scores,
        author_id=args.author_id,
        unattributed=args.unattributed,
        overwrite=args.overwrite,
    )
    print(f"wrote {report.written} explanations to {report.path}")
    if report.skipped:
        print(f"left out {len(report.skipped)} latents:")
        for latent, why in sorted(report.skipped.items()):
            print(f"    {latent}: {why}")
    return 0


def _read(args: argparse.Namespace) -> int:
    explanations = read_explanations(args.path, neuronpedia_id=args.neuronpedia_id, type_name=args.type_name)
    print(json.dumps({str(k): v for k, v in sorted(explanations.items())}, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sae-autointerp-neuronpedia", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="write a run's explanations as Neuronpedia explanation objects")
    p.add_argument("results", help="a results.jsonl, or the run folder holding it")
    p.add_argument(
        "--out",
        required=True,
        help="a folder (Neuronpedia's bulk layout MODEL/SOURCE/explanations/batch-N.jsonl.gz) or one file: "
        ".json (array), .jsonl or .jsonl.gz",
    )
    p.add_argument("--neuronpedia-id", help="MODEL/SOURCE, e.g. gpt2-small/8-res-jb (sae.cfg.metadata.neuronpedia_id)")
    p.add_argument("--model-id", help="Neuronpedia model id (instead of --neuronpedia-id)")
    p.add_argument("--source", help="Neuronpedia SAE id / source, e.g. 8-res-jb (instead of --neuronpedia-id)")
    p.add_argument(
        "--explanation-model",
        help="explanationModelName: the model that wrote the explanations, registered on Neuronpedia "
        "(default: the run's LLM, for explanations an LLM wrote; required for LLM-free explainers)",
    )
    p.add_argument(
        "--type-name", help="typeName: an ExplanationType registered on Neuronpedia (default: none, written as null)"
    )
    p.add_argument("--author-id", default=NEURONPEDIA_DEFAULT_AUTHOR_ID, help="authorId: a Neuronpedia user id")
    p.add_argument(
        "--unattributed",
        choices=("error", "skip"),
        default="error",
        help="explanations no LLM wrote, without --explanation-model: refuse (default) or leave out",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the batch files of an earlier bulk export")
    p.add_argument(
        "--include-scores", action="store_true", help="add a 'scores' list per explanation (not Neuronpedia's schema)"
    )
    p.set_defaults(func=_export)
    p = sub.add_parser(
        "read", help="print {latent: description} from Neuronpedia explanation files (a file or a bulk folder)"
    )
    p.add_argument("path")
    p.add_argument("--neuronpedia-id", help="MODEL/SOURCE to pick when the export holds several SAEs")
    p.add_argument("--type-name", help="the typeName to read when a latent has explanations of several types")
    p.set_defaults(func=_read)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``sae-autointerp`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cliconfig import COMPARE_DEFAULTS, HARVEST_DEFAULTS, RUN_DEFAULTS, run_config, shortcuts
from .loading import MODEL_KINDS

if TYPE_CHECKING:
    from .harvest.store import LatentStore
    from .results import ScoreResult


def _cmd_plugins(args: argparse.Namespace) -> int:
    from .registry import KINDS, get_registry

    infos = get_registry().plugins()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return 0
    for info in infos:
        print(f"{info.name} {info.version}  ({info.source})")
        for kind in KINDS:
            names = info.provides.get(kind, [])
            print(f"    {kind.replace('_', ' ')}: {', '.join(names) if names else '-'}")
        if info.error:
            print(f"    ERROR: {info.error}")
    return 0


def _cmd_harvest(args: argparse.Namespace) -> int:
    from . import embedded
    from .cliargs import harvest_options
    from .loading import load_model, load_sae

    options = harvest_options(args, HARVEST_DEFAULTS)  # a bad value fails before anything is loaded
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
    store = sae.autointerp.harvest(model, dataset, **options)
    print(json.dumps(store.summary(), indent=2))
    return 0


def _parse_latents(text: str | None) -> list[int] | None:
    """``0,5,10-12`` -> [0, 5, 10, 11, 12]; a bad spec is a one-line error."""
    from .cliargs import latent_list
    from .errors import ConfigError

    if not text:
        return None
    try:
        return list(latent_list(text))
    except ValueError as exc:
        raise ConfigError(f"--latents {text!r}: {exc}") from None


def pick_latents(store: LatentStore, n: int, min_examples: int = 20, max_frequency: float = 0.1) -> list[int]:
    """``n`` latents spread over the frequency range, among those with enough examples to explain and test."""
    counts = store.stats["n_fire_examples"]
    freq = store.frequency
    ok = [i for i in range(store.d_sae) if int(counts[i]) >= min_examples and float(freq[i]) <= max_frequency]
    ok.sort(key=lambda i: float(freq[i]))
    if len(ok) <= n:
        return ok
    return [ok[int(round(j * (len(ok) - 1) / max(n - 1, 1)))] for j in range(n)]


def _finish(result: ScoreResult, out_dir: Path) -> int:
    from .report import text_report, write_html

    print(text_report(result))
    page = write_html(result, out_dir / "report.html")
    print(f"\nresults: {result.path}\nreport:  {page}")
    return _exit_code(result)


def _exit_code(result: ScoreResult) -> int:
    """0 when every latent finished; 1 when some are incomplete (the backend failed, the budget ran out)."""
    if result.stopped:
        print(f"stopped early: {result.stopped}", file=sys.stderr)
    if result.incomplete:
        print(
            f"sae-autointerp: {len(result.incomplete)} latents are incomplete; run the same command again to "
            "finish them (finished latents and cached answers are kept)",
            file=sys.stderr,
        )
        return 1
    return 0


DEMO_SCORERS = ("embedding", "surprisal", "detection")


def _cmd_demo(args: argparse.Namespace) -> int:
    """Explain with the embedded LLM and with the no-LLM top-tokens baseline, score both with an LLM-free
    scorer pair and the embedded judge, with controls, and say in plain words which numbers carry signal."""
    import time

    from . import embedded
    from .report import comparison_text, write_index
    from .sampling import SamplingConfig

    start = time.perf_counter()
    model = embedded.load_model()
    sae = embedded.load_sae()
    corpus = embedded.load_corpus()
    print(
        f"embedded default: SmolLM2-135M-Instruct (TransformerBridge), SAE {sae.cfg.metadata.hook_name} "
        f"d_sae={sae.cfg.d_sae}, corpus {len(corpus)} documents (Python documentation, PSF licence)"
    )
    store = sae.autointerp.harvest(model, corpus, n_tokens=args.n_tokens, ctx_len=128, batch_size=16)
    latents = _parse_latents(args.latents) or pick_latents(store, args.n_latents)
    scorers = [s for s in args.scorers.split(",") if s] if args.scorers else list(DEMO_SCORERS)
    explainers = [e for e in args.explainers.split(",") if e]
    out_dir = Path(args.out)
    sampling = SamplingConfig(n_explain=args.n_explain, n_test_pos=args.n_test, n_test_neg=args.n_test)
    # The embedding scorer costs < 1 s per latent: its control uses every test example (a tighter lift)
    controls = {"*": args.controls, **({"embedding": 1.0} if "embedding" in scorers and args.controls else {})}
    results = {}
    code = 0
    for explainer in explainers:
        print(
            f"\n== explainer {explainer!r} on latents {latents}: scorers {', '.join(scorers)} "
            f"(controls on {args.controls:.0%} of the examples, embedding's on all), judge = the embedded "
            "135M LLM =="
        )
        result = sae.autointerp.run(
            model,
            store=store,
            latents=latents,
            llm="local",
            explainer=explainer,
            scorers=scorers,
            sampling=sampling,
            out_dir=out_dir / explainer,
            controls=controls,
        )
        code = max(code, _finish(result, out_dir / explainer))
        results[explainer] = result
    print("\n" + comparison_text(results))
    page = write_index(results, out_dir / "report.html")
    print(f"\nreport: {page}\ndemo took {time.perf_counter() - start:.0f} s")
    return code


def _cmd_run(args: argparse.Namespace) -> int:
    from . import embedded
    from .loading import load_model, load_sae
    from .pipeline import preflight

    cfg, source = run_config(args)  # argument errors before loading anything
    sae = (
        embedded.load_sae(device=args.device)
        if source["sae"] == "embedded"
        else load_sae(source["sae"], source["sae_id"], device=args.device)
    )
    model = (
        embedded.load_model(device=args.device)
        if source["model"] == "embedded"
        else load_model(source["model"], sae=sae, kind=source["model_kind"], device=args.device)
    )
    preflight(sae, model, cfg)  # every other bad input, before the expensive harvest
    dataset = embedded.load_corpus() if source["dataset"] == "embedded" else source["dataset"]
    store = sae.autointerp.harvest(model, dataset, config=cfg.harvest)
    if cfg.latents is None and cfg.explanations is None:  # given explanations score their own latents
        cfg = cfg.with_(latents=tuple(pick_latents(store, args.n_latents)))
    loader: dict[str, Any] = {}
    if cfg.executor == "ray":  # each Ray actor loads the model itself (a TransformerBridge cannot be pickled)
        import functools

        loader["model_loader"] = (
            functools.partial(embedded.load_model, device=args.device)
            if source["model"] == "embedded"
            else functools.partial(load_model, source["model"], sae=sae, kind=source["model_kind"], device=args.device)
        )
    result = sae.autointerp.run(model, store=store, config=cfg, **loader)
    out_dir = Path(cfg.out_dir or result.path.parent)
    run_json = out_dir / "run.json"  # how to load the SAE, model and data again: `run --config` reads it
    record = json.loads(run_json.read_text())
    record["source"] = source
    run_json.write_text(json.dumps(record, indent=1, default=str))
    return _finish(result, out_dir)


def _cmd_compare(args: argparse.Namespace) -> int:
    """The SAE against the papers' baselines (and, for the embedded SAE, the random-init control), one protocol."""
    from . import embedded
    from .cliargs import COMPARE_FLAGS, given
    from .compare import BASELINES, baseline_saes, check_protocol, compare
    from .errors import ConfigError
    from .loading import load_model, load_sae

    wanted = [b for b in args.baselines.split(",") if b]
    unknown = [b for b in wanted if b not in (*BASELINES, "random-init")]
    if unknown:
        raise ConfigError(f"unknown --baselines {unknown}; choose from {[*BASELINES, 'random-init']}")
    on_embedded = args.sae == "embedded"
    if "random-init" in wanted and not on_embedded:
        raise ConfigError(
            "--baselines random-init needs an SAE trained on a randomly initialised copy of the model; one ships "
            "only for the embedded SAE (drop random-init, or pass --sae embedded)"
        )
    options = shortcuts(args, given(args, COMPARE_FLAGS, COMPARE_DEFAULTS), n_test=20)
    sae = embedded.load_sae(device=args.device) if on_embedded else load_sae(args.sae, args.sae_id, device=args.device)
    model = (
        embedded.load_model(device=args.device)
        if args.model == "embedded"
        else load_model(args.model, sae=sae, kind=args.model_kind, device=args.device)
    )
    dataset = embedded.load_corpus() if args.dataset == "embedded" else args.dataset
    check_protocol({"sae": sae}, model, **options)  # bad names fail here, before the baselines are fitted
    seed = options.get("seed", 0)
    saes = {"sae": sae, **baseline_saes(sae, model, dataset, [b for b in wanted if b != "random-init"], seed=seed)}
    models = {}
    if "random-init" in wanted:
        saes["random-init"] = embedded.load_sae(device=args.device, control="random-init")
        models["random-init"] = embedded.load_model(device=args.device, control="random-init")
    out = Path(options["out_dir"])
    comparison = compare(saes, model, dataset, n_latents=args.n_latents, models=models, **options)
    print(comparison.text())
    for line in comparison.verdict():
        print(line)
    print(f"\nresults: {out}/<name>/results.jsonl\npage:    {comparison.write_html(out / 'compare.html')}")
    return max((_exit_code(r) for r in comparison.results.values()), default=0)


def _cmd_export(args: argparse.Namespace) -> int:
    """A run's explanations and scores in an export format (interchange/); bad options fail in one line."""
    from .interchange import export, exporter
    from .report import load

    result = load(args.results)
    options = {o.name: getattr(args, o.name, o.default) for o in exporter(args.format).options}
    written = export(result, args.format, args.out, **options)
    print(f"wrote {written.written} latents to {len(written.paths)} file(s) under {args.out}")
    for latent, why in list(written.skipped.items())[:20]:
        print(f"  left out {latent}: {why}")
    return 0


def _add_export_formats(p: argparse.ArgumentParser, formats: argparse.Action) -> None:
    """``export``'s ``--format`` choices and each format's options, from the plugin registry (called when
    ``export`` is parsed or its help shown, so no other command loads the plugins). A format whose factory
    fails, or an option that clashes with another's flag, is left out with a warning."""
    import logging

    from .errors import AutointerpError
    from .interchange import exporter
    from .registry import get_registry

    log = logging.getLogger("sae_lens_autointerp")
    names = []
    taken: set[str] = set()
    for name in sorted(get_registry().items("exporters")):
        try:
            fmt = exporter(name)
        except AutointerpError as exc:
            log.warning("export format %r left out: %s", name, exc)
            continue
        names.append(name)
        group = p.add_argument_group(f"--format {name}", fmt.description)
        for o in fmt.options:
            if o.name in taken:
                continue  # two formats with one setting share the flag
            taken.add(o.name)
            metavar = o.cli_flag.lstrip("-").replace("-", "_").upper()
            kwargs: dict[str, Any] = (
                {"action": "store_true"}
                if o.switch
                else {"default": o.default, "choices": o.choices, "metavar": None if o.choices else metavar}
            )
            try:
                group.add_argument(o.cli_flag, dest=o.name, help=f"{name}: {o.help}", **kwargs)
            except argparse.ArgumentError as exc:
                log.warning("export format %r: option %s left out: %s", name, o.cli_flag, exc)
    formats.choices = names


class _Parser(argparse.ArgumentParser):
    """A command's parser that may complete itself on first use (``complete``): ``export`` takes its formats
    and their options from the plugin registry only when it is the command run."""

    complete: Callable[[argparse.ArgumentParser], None] | None = None

    def _completed(self) -> None:
        complete, self.complete = self.complete, None
        if complete is not None:
            complete(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._completed()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._completed()
        return super().format_help()


def _cmd_report(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .report import load, text_report, write_html

    result = load(args.results)
    if not result.records and not result.incomplete:
        raise ConfigError(f"{args.results}: no readable result records (the file is empty or every line is corrupt)")
    print(text_report(result))
    if args.html:
        pages = _parse_latents(args.pages) if args.pages else None
        print(f"report: {write_html(result, args.html, pages=pages)}")
    return 1 if result.incomplete else 0


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def _add_demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latents", default=None, help="comma-separated indices or ranges, e.g. 0,5,10-12")
    p.add_argument("--n-latents", type=int, default=6, help="without --latents: how many to pick")
    p.add_argument("--scorers", default=None, help="comma-separated scorer names")
    p.add_argument("--n-explain", type=int, default=40, help="examples shown to the explainer")
    p.add_argument("--n-test", type=int, default=20, help="activating and non-activating test examples each")
    p.add_argument(
        "--controls",
        type=_fraction,
        default=0.2,
        help="share of each latent's test examples also scored with another latent's explanation "
        "(the control behind lift and the judge check); 0 turns controls off",
    )


def _add_shortcuts(p: argparse.ArgumentParser, *, n_latents: int, n_test: int) -> None:
    """The flags that are short forms of config fields, or no config field."""
    p.add_argument("--n-latents", type=int, default=n_latents, help="without --latents: how many latents to pick")
    p.add_argument("--n-explain", type=int, default=None, help="sampling's n_explain: examples shown to the explainer")
    p.add_argument(
        "--n-test", type=int, default=None, help=f"sampling's n_test_pos and n_test_neg at once (default {n_test})"
    )
    p.add_argument(
        "--base-url",
        default=None,
        help="llm_kwargs' base_url: an OpenAI-compatible endpoint (else OPENAI_BASE_URL); several, comma-separated: "
        "a fleet",
    )


def _add_source(p: argparse.ArgumentParser, default: str | None) -> None:
    """Where the SAE, model and data come from (``default``: the embedded offline default)."""
    shown = " (default)" if default is None else ""
    p.add_argument("--sae", default=default, help=f"SAELens release, local SAE folder, or 'embedded'{shown}")
    p.add_argument("--sae-id", default=None, help="the SAE's id within the release")
    p.add_argument("--model", default=default, help=f"model name or local HF folder, or 'embedded'{shown}")
    p.add_argument("--model-kind", default=None if default is None else "auto", choices=list(MODEL_KINDS))
    p.add_argument("--dataset", default=default, help=f"HF dataset name, local file/folder, or 'embedded'{shown}")
    p.add_argument("--device", default="cpu")


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__
    from .cliargs import COMPARE_FLAGS, HARVEST_FLAGS, RUN_FLAGS, add_flags

    parser = argparse.ArgumentParser(prog="sae-autointerp", description="Explain and score SAELens SAE latents.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more: -v progress messages (INFO), -vv debugging (DEBUG)",
    )
    loudness.add_argument("-q", "--quiet", action="store_true", help="log errors only (no warnings)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("plugins", help="list installed plugins and what each provides")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("demo", help="explain and score a few latents of the embedded offline default, with controls")
    _add_demo_options(p)
    p.add_argument(
        "--explainers",
        default="default,top-tokens",
        help="comma-separated explainers to compare (default: the embedded LLM and the top-tokens baseline)",
    )
    p.add_argument("--n-tokens", type=int, default=60_000)
    p.add_argument("--out", default="autointerp-demo")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("run", help="explain and score latents of any SAELens SAE", allow_abbrev=False)
    p.add_argument(
        "--config",
        default=None,
        help="a RunConfig JSON or an earlier run's run.json (or its folder): reproduce that run (the flags given "
        "override its fields)",
    )
    _add_source(p, None)
    _add_shortcuts(p, n_latents=20, n_test=50)
    p.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="executor 'ray' at ray_address ADDRESS: a cluster address ('auto', 'ray://head:10001') or 'local' "
        "(docs/scale.md)",
    )
    add_flags(p.add_argument_group("run options (RunConfig)"), RUN_FLAGS, RUN_DEFAULTS, {"out_dir": ["--out"]})
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "compare",
        help="an SAE against neurons, top-k neurons, PCA, ICA, random directions and a random-init model",
        allow_abbrev=False,
    )
    p.add_argument(
        "--baselines",
        default="neurons,topk-neurons,pca,ica,random-directions,random-init",
        help="comma-separated: neurons, topk-neurons, pca, ica, random-directions, random-init (embedded SAE only)",
    )
    _add_source(p, "embedded")
    _add_shortcuts(p, n_latents=8, n_test=20)
    options = p.add_argument_group("run options, the same for every SAE (RunConfig)")
    add_flags(options, COMPARE_FLAGS, COMPARE_DEFAULTS, {"out_dir": ["--out"]})
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "report", help="print the table and score histograms of a results.jsonl; write the run's static site"
    )
    p.add_argument("results", help="results.jsonl or its folder")
    p.add_argument(
        "--html",
        default=None,
        help="also write the static site (index + a page per latent, opens from disk) into this folder, or with "
        "this index file when it ends in .html",
    )
    p.add_argument("--pages", default=None, help="latents that get a page, e.g. 0-99,120 (default: all)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "export",
        help="write a run in an export format: SAEBench's, delphi's, Neuronpedia's or a plugin's (docs/interchange.md)",
    )
    p.add_argument("results", help="results.jsonl or its folder")
    formats = p.add_argument("--format", required=True, help="an export format (each has its options below)")
    p.add_argument("--out", required=True, help="the file or folder to write (as the format says)")
    p.complete = lambda parser: _add_export_formats(parser, formats)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("harvest", help="harvest latent activations into an activation store", allow_abbrev=False)
    _add_source(p, "embedded")
    add_flags(p.add_argument_group("harvest options (HarvestConfig)"), HARVEST_FLAGS, HARVEST_DEFAULTS)
    p.set_defaults(func=_cmd_harvest)
    return parser


def _quiet_loaders() -> None:
    """The CLI prints its own progress: no per-file "Loading weights" bars from transformers / the hub."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _configure_logging(verbose: int, quiet: bool) -> None:
    """The command owns its process: the package logger gets a stderr handler at the level asked for
    (WARNING by default, INFO with -v, DEBUG with -vv, ERROR with -q). The library itself never adds one."""
    import logging

    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logger = logging.getLogger("sae_lens_autointerp")
    logger.setLevel(level)
    if not any(h.get_name() == "sae-autointerp-cli" for h in logger.handlers):  # main() may run twice
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name("sae-autointerp-cli")
        handler.setFormatter(logging.Formatter("sae-autointerp: %(levelname)s: %(message)s"))
        logger.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        from .cliargs import unrecognized

        print(f"sae-autointerp: error: {unrecognized(parser, args.command, extra)}", file=sys.stderr)
        return 2
    from .errors import AutointerpError

    _configure_logging(args.verbose, args.quiet)
    _quiet_loaders()
    # No malloc pinning by default (harvest/run.py: it made every forward pass 1.6-1.75x slower for ~8% lower
    # peak RSS); SAE_AUTOINTERP_PIN_MALLOC=1 still opts in for a harvest run from the command.

    try:
        return int(args.func(args) or 0)
    except AutointerpError as exc:
        print(f"sae-autointerp: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

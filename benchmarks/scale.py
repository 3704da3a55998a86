"""Scale benchmarks.

Part ``overhead``: the pipeline's own cost per latent, with the LLM taken out. A FAKE judge (labelled as such:
it answers every request at once, "1" when the excerpt contains a space-separated " the ", else "0") scores
given explanations with ``detection`` (default sampling: 50 + 50 test examples, controls on 20%, heuristic
flags on) at 1k, 10k and 100k latents; each size is a fresh run (a fresh folder, a fresh process) of
``run(..., latents=range(N))``. What is measured: the wall time of the ``run`` call (sampling, rendering,
prompts, the judge's bookkeeping, metrics, controls, records and results.jsonl with fsync, the final
ScoreResult with its ``table`` and ``summary()``), and the process's peak RSS (``ru_maxrss``).

The latents: the embedded SAE has 2,048, so the store is a *tiled view* of the embedded store (harvested once,
``--n-tokens``): latent ``l`` has the examples of embedded latent ``l mod 2048`` (its own seeded samples,
shuffles and intervals, since every random draw is seeded by the latent index). The SAE handed to the run
has ``d_sae = 100,000`` for every size (the same fixed cost at each size, so the RSS growth is the growth
per latent); its run views (``decoder.json``: decoder neighbours, promoted tokens, one-off per run) are not
part of the measurement: the benchmark replaces ``pipeline.entry.write_run_views`` with a no-op.

    python benchmarks/scale.py --part overhead --sizes 1000,10000,100000

Part ``ray``: explain + score throughput with 1 vs 2 Ray actors against a latency-bound judge,
the labelled FAKE OpenAI-compatible server of tests/llm/llm_fakes.py on 127.0.0.1 answering after 50 ms (it
answers the same to everything: a measure of the executor, never of scores). Each run has its own response cache,
so every request is sent. Goal: >= 1.8x with 2 actors.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python benchmarks/scale.py --part ray [--latents 24]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

import sae_lens_autointerp as sai
from sae_lens_autointerp import pipeline
from sae_lens_autointerp.harvest.store import LatentStore
from sae_lens_autointerp.llm import BaseClient, ChatRequest, ChatResponse, ClassifyResult, Usage

D_SAE = 100_000


class InstantJudge(BaseClient):
    """FAKE LLM client for the overhead benchmark only: answers at once from the request text."""

    def __init__(self) -> None:
        super().__init__("fake-instant", cache=False)

    def answer(self, request: ChatRequest) -> ChatResponse:
        user = request.messages[-1][1]
        text = "1" if " the " in user else "0"
        return ChatResponse(text=text, finish_reason="stop", usage=Usage(len(user) // 4, 1), model="fake-instant")

    async def _chat(self, request: ChatRequest) -> ChatResponse:
        return self.answer(request)

    async def _classify_batch(self, requests: Sequence[ChatRequest], choices: tuple[str, ...]) -> list[ClassifyResult]:
        """A whole latent's classifications in one call, each read from its own request: the result
        ``classify_from_chat`` makes of :meth:`answer` (a one-hot "generation" result), built directly, as a
        backend that reads logits builds its own (what the fake costs is not the pipeline's overhead)."""
        out = []
        for r in requests:
            user = r.messages[-1][1]
            text = "1" if " the " in user else "0"
            probs = {c: float(c == text) for c in choices}
            out.append(
                ClassifyResult(
                    choices, probs, dict.fromkeys(choices), False, "generation", Usage(len(user) // 4, 1), text=text
                )
            )
        return out


class _Rows:
    """``tensor[latent]`` of a tiled store: the row of ``latent mod n`` (ints or index arrays)."""

    def __init__(self, base: torch.Tensor, n: int) -> None:
        self.base, self.n = base, n

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)):
            return self.base[int(index) % self.n]
        return self.base[torch.as_tensor(np.asarray(index) % self.n)]


class _TiledStats(dict):
    def __init__(self, base: dict[str, torch.Tensor], n: int, d_sae: int) -> None:
        super().__init__(base)
        self.n, self.d_sae = n, d_sae

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        if key.startswith("pool_") or value.ndim == 0 or value.shape[0] != self.n:
            return value
        return _Rows(value, self.n)


class TiledStore(LatentStore):
    """A view of a real store with ``d_sae`` latents: latent ``l`` reads embedded latent ``l mod n``."""

    def __init__(self, base: LatentStore, d_sae: int) -> None:  # no super().__init__: the files are the base's
        self.base, self.path, self.settings = base, base.path, base.settings
        self.meta = {**base.meta, "d_sae": d_sae, "key": f"{base.key}-tiled-{d_sae}"}

    @cached_property
    def stats(self) -> dict[str, torch.Tensor]:
        return _TiledStats(self.base.stats, self.base.d_sae, self.d_sae)

    @cached_property
    def frequency(self) -> torch.Tensor:
        return self.base.frequency.repeat(self.d_sae // self.base.d_sae + 1)[: self.d_sae]

    @cached_property
    def max_activation(self) -> torch.Tensor:
        return self.base.max_activation.repeat(self.d_sae // self.base.d_sae + 1)[: self.d_sae]

    @property
    def tokens(self) -> np.ndarray:  # type: ignore[override]
        return self.base.tokens

    @property
    def _random_windows(self) -> Any:  # type: ignore[override]
        return self.base._random_windows

    def silent_window_indices(self, latent: int) -> np.ndarray:
        return self.base.silent_window_indices(latent % self.base.d_sae)


def embedded_store(n_tokens: int) -> LatentStore:
    model, sae = sai.embedded.load_model(), sai.embedded.load_sae()
    return sae.autointerp.harvest(model, sai.embedded.load_corpus(), n_tokens=n_tokens, progress=False)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mib() -> float:
    """The resident set now (the peak may be the warm-up's loading, not the run's)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def part_overhead_one(n: int, n_tokens: int, out: Path) -> dict[str, Any]:
    """One run of ``n`` latents in this process: seconds, latents/s, peak RSS before and after."""
    model, sae = sai.embedded.load_model(), sai.embedded.load_sae()
    store = TiledStore(embedded_store(n_tokens), D_SAE)
    fake_sae = SimpleNamespace(cfg=SimpleNamespace(d_sae=D_SAE, metadata=sae.cfg.metadata))
    pipeline.entry.write_run_views = lambda *a, **k: None  # one-off per run: not part of the per-latent overhead
    words = "month digit return bracket python token code list string number".split()
    explanations = {i: f"{words[i % len(words)]} tokens, pattern {i}" for i in range(n)}
    # warm up the lazy loads (store tensors, tokenizer, scipy) outside the measurement
    pipeline.run(
        fake_sae,
        model,
        store=store,
        latents=list(range(3)),
        explanations={i: explanations[i] for i in range(3)},
        scorers=["detection"],
        llm=InstantJudge(),
        out_dir=str(out / "warm"),
        progress=False,
    )
    rss_before, rss_start = peak_rss_mib(), rss_now_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = pipeline.run(
        fake_sae,
        model,
        store=store,
        latents=list(range(n)),
        explanations=explanations,
        scorers=["detection"],
        llm=InstantJudge(),
        out_dir=str(out / "run"),
        progress=False,
    )
    table, summary = result.table, result.summary()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    scored = int(table["score"].notna().sum())
    return {
        "n": n,
        "seconds": round(seconds, 2),
        "latents_per_s": round(n / seconds, 1),
        "cpu_s": round(cpu, 2),  # CPU time of every thread: less moved by other jobs on the machine than wall time
        "latents_per_cpu_s": round(n / cpu, 1),
        "scored": scored,
        "skipped": len(result.skipped),
        "n_rows": len(table),
        "summary_latents": int(summary["n_latents"].sum()),
        "rss_before_mib": round(rss_before, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "rss_start_mib": round(rss_start, 1),
        "rss_end_mib": round(rss_now_mib(), 1),
        "results_mib": round((out / "run" / "results.jsonl").stat().st_size / 2**20, 1),
    }


def part_overhead(sizes: list[int], n_tokens: int) -> list[dict[str, Any]]:
    """Each size in a fresh process (peak RSS is per process); prints one JSON line per size and a table."""
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable,
                __file__,
                "--part",
                "overhead-one",
                "--n",
                str(n),
                "--n-tokens",
                str(n_tokens),
                "--out",
                tmp,
            ]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
            row = json.loads(line.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    base = rows[0]
    print(f"{'latents':>8} {'s':>8} {'latents/s':>10} {'peak RSS MiB':>13} {'growth':>8} {'RSS at end':>11}")
    for row in rows:
        growth = (row["peak_rss_mib"] / base["peak_rss_mib"] - 1) * 100
        print(
            f"{row['n']:>8} {row['seconds']:>8} {row['latents_per_s']:>10} {row['peak_rss_mib']:>13} {growth:>7.1f}% "
            f"{row['rss_end_mib']:>11}"
        )
    return rows


GOAL = 1.8  # the ray part: 2 workers vs 1


def part_ray(n_latents: int = 24, delay: float = 0.05) -> float:
    """Latents per second with 1 and 2 Ray actors (each with concurrency 2), end to end and in the steady
    state: each worker count runs ``n`` and ``2n`` latents (fresh folders and caches), and the steady rate is
    ``n / (t(2n) - t(n))``, which leaves out what both runs pay once (actors loading the model, the harvest
    check). Prints both and returns the steady-state ratio."""
    import ray

    from llm_fakes import FaultServer  # FAKE OpenAI-compatible server (tests/llm)
    from sae_lens_autointerp.sampling import SamplingConfig

    model, sae = sai.embedded.load_model(), sai.embedded.load_sae()
    tmp = Path(tempfile.mkdtemp(prefix="scale-ray-"))
    store = sae.autointerp.harvest(
        model, sai.embedded.load_corpus(), n_tokens=16_000, ctx_len=64, store_dir=tmp / "store", progress=False
    )
    counts = store.stats["n_fire_examples"]
    pool = [i for i in range(store.d_sae) if counts[i] >= 20 and float(store.frequency[i]) < 0.05]
    if len(pool) < 2 * n_latents:
        raise SystemExit(f"only {len(pool)} latents qualify; pass --latents {len(pool) // 2} or fewer")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    steady = {}
    try:
        with FaultServer(reply="1 month names", delay=delay) as server:
            for workers in (1, 2):
                seconds = {}
                for n in (n_latents, 2 * n_latents):
                    latents = pool[:n]
                    start = time.perf_counter()
                    result = sae.autointerp.run(
                        model,
                        store=store,
                        latents=latents,
                        llm="openai:fake-model",
                        llm_kwargs={"base_url": server.base_url, "cache": str(tmp / f"cache-{workers}-{n}")},
                        explainer="default",
                        scorers=["detection"],
                        sampling=SamplingConfig(n_explain=8, n_test_pos=4, n_test_neg=4),
                        concurrency=2,
                        out_dir=str(tmp / f"run-{workers}-{n}"),
                        executor="ray",
                        workers=workers,
                        model_loader=sai.embedded.load_model,
                        progress=False,
                    )
                    seconds[n] = time.perf_counter() - start
                    assert result.complete and len(result.records) == n
                    print(
                        f"ray workers={workers}: {n} latents in {seconds[n]:.1f} s end to end "
                        f"({n / seconds[n]:.2f} latents/s, {result.usage['total']['requests']} requests)"
                    )
                extra = seconds[2 * n_latents] - seconds[n_latents]
                steady[workers] = n_latents / extra if extra > 0 else float("nan")
                print(f"ray workers={workers}: steady state {steady[workers]:.2f} latents/s")
    finally:
        ray.shutdown()
    ratio = steady[2] / steady[1]
    print(
        f"ray speed-up 2 vs 1 workers, steady state: {ratio:.2f}x (goal >= {GOAL}x): "
        f"{'OK' if ratio >= GOAL else 'BELOW GOAL'}"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["overhead", "overhead-one", "ray"], default="overhead")
    parser.add_argument("--latents", type=int, default=24, help="(ray) latents per run")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--n-tokens", type=int, default=65536, help="tokens of the embedded store's harvest")
    parser.add_argument("--n", type=int, help="(overhead-one) latents of the run")
    parser.add_argument("--out", help="(overhead-one) a scratch folder")
    args = parser.parse_args()
    if args.part == "ray":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "llm"))  # the FAKE server
        part_ray(args.latents)
    elif args.part == "overhead-one":
        print(json.dumps(part_overhead_one(args.n, args.n_tokens, Path(args.out))))
    else:
        part_overhead([int(s) for s in args.sizes.split(",")], args.n_tokens)


if __name__ == "__main__":
    main()

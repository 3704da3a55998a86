"""Scale benchmarks. Part ``ray``: explain + score throughput with 1 vs 2 Ray actors against a latency-bound judge,
the labelled FAKE OpenAI-compatible server of tests/llm/llm_fakes.py on 127.0.0.1 answering after 50 ms (it
answers the same to everything: a measure of the executor, never of scores). Each run has its own response cache,
so every request is sent. Goal: >= 1.8x with 2 actors.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python benchmarks/scale.py --part ray [--latents 24]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "llm"))
from llm_fakes import FaultServer  # noqa: E402  (FAKE server)

GOAL = 1.8


def part_ray(n_latents: int = 24, delay: float = 0.05) -> float:
    """Latents per second with 1 and 2 Ray actors (each with concurrency 2); prints and returns the ratio."""
    import ray

    import sae_lens_autointerp as sai
    from sae_lens_autointerp.sampling import SamplingConfig

    model, sae = sai.embedded.load_model(), sai.embedded.load_sae()
    tmp = Path(tempfile.mkdtemp(prefix="scale-ray-"))
    store = sae.autointerp.harvest(
        model, sai.embedded.load_corpus(), n_tokens=8_000, ctx_len=64, store_dir=tmp / "store", progress=False
    )
    counts = store.stats["n_fire_examples"]
    latents = [i for i in range(store.d_sae) if counts[i] >= 20 and float(store.frequency[i]) < 0.05][:n_latents]
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    rates = {}
    try:
        with FaultServer(reply="1 month names", delay=delay) as server:
            for workers in (1, 2):
                start = time.perf_counter()
                result = sae.autointerp.run(
                    model,
                    store=store,
                    latents=latents,
                    llm="openai:fake-model",
                    llm_kwargs={"base_url": server.base_url, "cache": str(tmp / f"cache-{workers}")},
                    explainer="default",
                    scorers=["detection"],
                    sampling=SamplingConfig(n_explain=8, n_test_pos=4, n_test_neg=4),
                    concurrency=2,
                    out_dir=str(tmp / f"run-{workers}"),
                    executor="ray",
                    workers=workers,
                    model_loader=sai.embedded.load_model,
                    progress=False,
                )
                seconds = time.perf_counter() - start
                assert result.complete and len(result.records) == len(latents)
                rates[workers] = len(latents) / seconds
                print(
                    f"ray workers={workers}: {len(latents)} latents in {seconds:.1f} s = {rates[workers]:.2f} latents/s "
                    f"({result.usage['total']['requests']} requests)"
                )
    finally:
        ray.shutdown()
    ratio = rates[2] / rates[1]
    print(f"ray speed-up 2 vs 1 workers: {ratio:.2f}x (goal >= {GOAL}x): {'OK' if ratio >= GOAL else 'BELOW GOAL'}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="ray", choices=["ray"])
    parser.add_argument("--latents", type=int, default=24)
    args = parser.parse_args()
    if args.part == "ray":
        part_ray(args.latents)


if __name__ == "__main__":
    main()

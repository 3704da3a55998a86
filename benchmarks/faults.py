"""What an outage costs: time to a clear failure, latents lost, latents redone on the rerun.

Each fault hits a real run (the embedded SAE and model, given explanations, detection through the OpenAI
client) against the labelled FAKE fault server of tests/llm/llm_fakes.py on 127.0.0.1, which answers the
first requests normally and then fails: every connection dropped (the server died), HTTP 500 forever, a
hanging server, empty `choices`, a body that is not JSON; and a port where nothing listens from the start. Then the same run is repeated against a healthy
server and we count what it redoes. The last row kills a run with SIGKILL halfway (a subprocess) and reruns.

Goal (issue 10): 0 latents lost, only unfinished latents redone, the outage stopped within 3 consecutive
failures. The client's read timeout is 5 s here (default 60 s: a hanging server then takes 2 x 60 s per
request before the breaker counts it).

Run:  python benchmarks/faults.py [--n-latents 8]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "llm"))

from llm_fakes import FaultServer, free_port  # noqa: E402  (FAKE server, fault injection only)

N_OK = 30  # requests answered normally before the fault starts


def lines(folder: Path) -> list[dict]:
    path = folder / "results.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def finished(folder: Path) -> set[int]:
    last = {}
    for r in lines(folder):
        last[r["latent"]] = r
    return {k for k, r in last.items() if not r.get("incomplete")}


def run_once(sae, model, store, latents, base_url, out, **kw):
    from sae_lens_autointerp.llm.openai_client import OpenAIClient

    client = OpenAIClient("fake-model", base_url=base_url, timeout=5.0, cache=out / "cache", backoff_max=0.5)
    start = time.perf_counter()
    result = sae.score(
        model,
        store=store,
        explanations={lat: f"explanation {lat}" for lat in latents},
        scorers=["detection"],
        llm=client,
        sampling={"n_explain": 8, "n_test_pos": 5, "n_test_neg": 5},
        out_dir=out,
        progress=False,
        concurrency=2,
        **kw,
    )
    return result, time.perf_counter() - start, client


def outage(name, script, sae, model, store, latents, root: Path):
    out = root / name
    port = free_port()  # the healthy server comes back at the same address (the run key includes it)
    with FaultServer(script=script, hang_s=120, port=port) as server:  # a hang outlasts the 5 s read timeout
        result, seconds, _ = run_once(sae, model, store, latents, server.base_url, out)
    done_before = finished(out)
    with FaultServer(port=port) as healthy:  # same cache folder: answers paid for are reused
        before_lines = len(lines(out))
        _, _, client = run_once(sae, model, store, latents, healthy.base_url, out)
        rerun_requests = healthy.count
    after = finished(out)
    redone = {r["latent"] for r in lines(out)[before_lines:] if not r.get("incomplete")}
    return {
        "fault": name,
        "seconds to a clear failure": round(seconds, 1),
        "stopped by the breaker": bool(result.stopped and "in a row" in result.stopped),
        "finished before": len(done_before),
        "incomplete": len(result.incomplete),
        "lost": len(done_before - after),
        "redone on rerun": len(redone & done_before),
        "finished on rerun": len(redone),
        "rerun requests": rerun_requests,
        "complete after rerun": after == set(latents),
    }


KILLED = """
import sys, sae_lens_autointerp as sai
from sae_lens_autointerp.harvest.store import LatentStore
sys.path.insert(0, sys.argv[4])
model, sae = sai.embedded.load_model(), sai.embedded.load_sae()
store = LatentStore(sys.argv[1])
latents = [int(x) for x in sys.argv[3].split(",")]
from sae_lens_autointerp.llm.openai_client import OpenAIClient
from pathlib import Path
client = OpenAIClient("fake-model", base_url=sys.argv[5], timeout=5.0, cache=Path(sys.argv[2]) / "cache")
sae.score(model, store=store, explanations={lat: f"explanation {lat}" for lat in latents}, scorers=["detection"],
          llm=client, sampling={"n_explain": 8, "n_test_pos": 5, "n_test_neg": 5}, out_dir=sys.argv[2],
          progress=False, concurrency=2)
"""


def killed(sae, model, store, latents, root: Path):
    out = root / "kill -9 mid-run"
    port = free_port()
    with FaultServer(delay=0.05, port=port) as server:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                KILLED,
                str(store.path),
                str(out),
                ",".join(map(str, latents)),
                str(Path(__file__).parent),
                server.base_url,
            ],
            stderr=subprocess.DEVNULL,
        )
        start = time.perf_counter()
        while len(finished(out)) < len(latents) // 2 and proc.poll() is None:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        seconds = time.perf_counter() - start
    done_before = finished(out)
    with FaultServer(port=port) as healthy:
        before_lines = len(lines(out))
        run_once(sae, model, store, latents, healthy.base_url, out)
        rerun_requests = healthy.count
    after = finished(out)
    redone = {r["latent"] for r in lines(out)[before_lines:] if not r.get("incomplete")}
    return {
        "fault": "kill -9 mid-run",
        "seconds to a clear failure": round(seconds, 1),
        "stopped by the breaker": None,
        "finished before": len(done_before),
        "incomplete": len(latents) - len(done_before),
        "lost": len(done_before - after),
        "redone on rerun": len(redone & done_before),
        "finished on rerun": len(redone),
        "rerun requests": rerun_requests,
        "complete after rerun": after == set(latents),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-latents", type=int, default=8)
    args = parser.parse_args()
    import pandas as pd

    import sae_lens_autointerp as sai
    from sae_lens_autointerp.cli import pick_latents

    model, sae = sai.embedded.load_model(), sai.embedded.load_sae()
    store = sae.autointerp.harvest(model, sai.embedded.load_corpus(), n_tokens=20_000, ctx_len=128, progress=False)
    latents = pick_latents(store, args.n_latents)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, action in (
            ("server dies (connections dropped)", "drop"),
            ("HTTP 500", "500"),
            ("hanging server", "hang"),
            ("empty choices", "empty"),
            ("malformed JSON", "nonjson"),
        ):
            rows.append(outage(name, ["ok"] * N_OK + [action] * 100_000, sae, model, store, latents, root))
        rows.append(killed(sae, model, store, latents, root))
        port = free_port()
        result, seconds, _ = run_once(sae, model, store, latents, f"http://127.0.0.1:{port}/v1", root / "dead")
        rows.append(
            {
                "fault": "dead from the start",
                "seconds to a clear failure": round(seconds, 1),
                "stopped by the breaker": bool(result.stopped),
                "finished before": 0,
                "incomplete": len(result.incomplete),
                "lost": 0,
                "redone on rerun": 0,
                "finished on rerun": None,
                "rerun requests": None,
                "complete after rerun": None,
            }
        )
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(
            f"{len(latents)} latents, detection on 5 + 5 examples each (+ controls), concurrency 2, "
            f"first {N_OK} requests answered, read timeout 5 s"
        )
        print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()

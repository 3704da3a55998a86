"""What an outage costs: time to a clear failure, latents lost, latents redone on the rerun.

Each fault hits a real run (the embedded SAE and model, given explanations, detection through the OpenAI
client) against the labelled FAKE fault server of tests/llm/llm_fakes.py on 127.0.0.1, which answers the
first requests normally and then fails: every connection dropped (the server died), HTTP 500 forever, a
hanging server, empty `choices`, a body that is not JSON, a 200 answer whose fields have the wrong types
(non-numeric usage, content as a number); and a port where nothing listens from the start. Then the same run is
repeated against a healthy server and we count what it redoes. Further rows kill a run with SIGKILL halfway (a
subprocess) and rerun; damage a page of the finished run's SQLite index and rerun; fill the disk under a run (a
1 MB tmpfs in a user namespace, skipped where `unshare -rm` is not allowed) and rerun with space; and pass a NaN
dollar budget (refused before any request, where it used to switch the budget off).

Goal (issue 10): 0 latents lost, only unfinished latents redone, the outage stopped within 3 consecutive
failures. The client's read timeout is 5 s here (default 60 s: a hanging server then takes 2 x 60 s per
request before the breaker counts it).

Run:  python benchmarks/faults.py [--n-latents 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
    """The readable records of ``folder``'s results.jsonl (a torn last line, as a full disk leaves, is not one)."""
    path = folder / "results.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


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


def rerun(sae, model, store, latents, out: Path, port: int):
    """Rerun into ``out`` against a healthy server at ``port`` (the run key includes the address; the same cache
    folder, so answers paid for are reused): the rerun's result and seconds, and the columns every row shares
    (what was finished before, lost, redone, finished by the rerun, its requests)."""
    done_before = finished(out)
    with FaultServer(port=port) as healthy:
        before_lines = len(lines(out))
        result, seconds, _ = run_once(sae, model, store, latents, healthy.base_url, out)
        requests = healthy.count
    after = finished(out)
    redone = {r["latent"] for r in lines(out)[before_lines:] if not r.get("incomplete")}
    return (
        result,
        seconds,
        {
            "finished before": len(done_before),
            "lost": len(done_before - after),
            "redone on rerun": len(redone & done_before),
            "finished on rerun": len(redone),
            "rerun requests": requests,
            "complete after rerun": after == set(latents),
        },
    )


def outage(name, script, sae, model, store, latents, root: Path):
    out = root / name
    port = free_port()  # the healthy server comes back at the same address (the run key includes it)
    with FaultServer(script=script, hang_s=120, port=port) as server:  # a hang outlasts the 5 s read timeout
        result, seconds, _ = run_once(sae, model, store, latents, server.base_url, out)
    _, _, shared = rerun(sae, model, store, latents, out, port)
    return {
        "fault": name,
        "seconds to a clear failure": round(seconds, 1),
        "stopped by the breaker": bool(result.stopped and "in a row" in result.stopped),
        "incomplete": len(result.incomplete),
        **shared,
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
    incomplete = len(latents) - len(finished(out))
    _, _, shared = rerun(sae, model, store, latents, out, port)
    return {
        "fault": "kill -9 mid-run",
        "seconds to a clear failure": round(seconds, 1),
        "stopped by the breaker": None,
        "incomplete": incomplete,
        **shared,
    }


def damaged_index(sae, model, store, latents, root: Path):
    """A finished run whose SQLite index has a damaged page (2 KB of 0xA5 a third of the way in, as after a power
    loss with ``synchronous=OFF``): the rerun must rebuild it from results.jsonl and redo nothing."""
    out = root / "damaged index"
    port = free_port()
    with FaultServer(port=port) as server:
        run_once(sae, model, store, latents, server.base_url, out)
    index = out / "results.jsonl.index.sqlite"
    data = bytearray(index.read_bytes())
    at = len(data) // 3
    data[at : at + 2048] = b"\xa5" * min(2048, len(data) - at)
    index.write_bytes(bytes(data))
    result, seconds, shared = rerun(sae, model, store, latents, out, port)
    return {
        "fault": "damaged index page",
        "seconds to a clear failure": round(seconds, 1),
        "stopped by the breaker": None,
        "incomplete": len(result.incomplete),
        **shared,
        "note": "rerun: the index moved aside and rebuilt from results.jsonl, no failure",
    }


def full_disk(sae, model, store, latents, root: Path):
    """The run folder and its response cache on a 1 MB tmpfs (mounted in a private user and mount namespace, so
    no privilege is needed where user namespaces are allowed): the run must stop with one line naming the folder,
    and a rerun with space (the folder copied out) must lose nothing and redo no finished latent."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        return None
    mnt, saved = root / "full disk mount", root / "full disk"
    mnt.mkdir()
    port = free_port()
    with FaultServer(delay=0.01, port=port) as server:
        script = (
            f'mount -t tmpfs -o size=1m tmpfs "{mnt}" && "{sys.executable}" -c "$0" "{store.path}" "{mnt}/run" '
            f'"{",".join(map(str, latents))}" "{Path(__file__).parent}" "{server.base_url}"; rc=$?; '
            f'cp -a "{mnt}/run" "{saved}"; exit $rc'
        )
        start = time.perf_counter()
        proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, KILLED], capture_output=True, text=True)
        seconds = time.perf_counter() - start
    err = [x for x in proc.stderr.strip().splitlines() if x.strip()]
    incomplete = len(latents) - len(finished(saved))
    _, _, shared = rerun(sae, model, store, latents, saved, port)
    return {
        "fault": "full disk (1 MB tmpfs)",
        "seconds to a clear failure": round(seconds, 1),
        "stopped by the breaker": None,
        "incomplete": incomplete,
        **shared,
        "note": f"exit {proc.returncode}: {err[-1].split(': ', 1)[-1][:80] if err else ''}",
    }


def nan_budget(sae, model, store, latents, root: Path):
    """``budget_dollars=NaN`` used to pass validation and switch the budget off ($16.80 spent where $0.05 stops):
    it must now be refused before any request."""
    from sae_lens_autointerp.errors import ConfigError

    out = root / "nan budget"
    with FaultServer() as server:
        start = time.perf_counter()
        try:
            sae.autointerp.run(
                model,
                store=store,
                latents=latents,
                explanations={lat: f"explanation {lat}" for lat in latents},
                scorers=["detection"],
                llm="openai:fake-model",
                llm_kwargs={"base_url": server.base_url, "cache": str(out / "cache")},
                prices={"fake-model": [1000, 1000]},
                budget_dollars=float("nan"),
                out_dir=out,
                progress=False,
            )
            refused = "no (ran)"
        except ConfigError as exc:
            refused = f"yes: {str(exc)[:70]}"
        seconds = time.perf_counter() - start
        requests = server.count
    return {
        "fault": "budget_dollars=NaN",
        "seconds to a clear failure": round(seconds, 2),
        "stopped by the breaker": None,
        "finished before": 0,
        "incomplete": None,
        "lost": 0,
        "redone on rerun": None,
        "finished on rerun": None,
        "rerun requests": None,
        "complete after rerun": None,
        "note": f"refused {refused}; {requests} requests",
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
            ("200, content a number", "numcontent"),
        ):
            rows.append(outage(name, ["ok"] * N_OK + [action] * 100_000, sae, model, store, latents, root))
        rows.append(killed(sae, model, store, latents, root))
        rows.append(damaged_index(sae, model, store, latents, root))
        disk = full_disk(sae, model, store, latents, root)
        if disk is None:
            print("full disk: skipped (`unshare -rm` is not allowed here: no private tmpfs to fill)")
        else:
            rows.append(disk)
        rows.append(nan_budget(sae, model, store, latents, root))
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
    with pd.option_context("display.width", 300, "display.max_columns", 20, "display.max_colwidth", 90):
        print(
            f"{len(latents)} latents, detection on 5 + 5 examples each (+ controls), concurrency 2, "
            f"first {N_OK} requests answered, read timeout 5 s"
        )
        print(pd.DataFrame(rows, dtype=object).fillna("—").to_string(index=False))


if __name__ == "__main__":
    main()

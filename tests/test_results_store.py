"""The results store: results.jsonl (the durable log) and its SQLite index (latest line per latent, compact
rows); a process killed mid-run loses no written record and resumes from the file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from given_runs import record
from sae_lens_autointerp.llm import UsageTracker
from sae_lens_autointerp.llm.usage import Usage
from sae_lens_autointerp.report import load
from sae_lens_autointerp.results import INDEX_SUFFIX, RecordSeq, ResultsFile, ScoreResult


def test_table_and_summary_from_the_index_equal_those_from_the_records(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "results.jsonl")
    recs = [record(i, score=0.5 + i / 40) for i in range(12)]
    recs.append({"run_key": "k", "latent": 12, "skipped": "dead: never fired"})
    for r in recs:
        results.append(r)
    results.close()
    lazy = ScoreResult(records=results.result_records("k"), run_key="k")
    plain = ScoreResult(records=recs, run_key="k")
    assert isinstance(lazy.records, RecordSeq) and len(lazy.records) == 13
    assert lazy.records[3] == recs[3] and list(lazy.records) == recs
    assert lazy.table.equals(plain.table)
    assert lazy.summary().equals(plain.summary())
    assert lazy.verdict() == plain.verdict() and len(lazy.verdict()) == 1
    assert lazy.skipped == {12: "dead: never fired"} == plain.skipped
    assert lazy.summary().loc[0, "n_latents"] == 12 and lazy.summary().loc[0, "identical_answers"] == pytest.approx(0.6)


def test_latest_record_wins_and_incomplete_is_partial(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "results.jsonl")
    results.append({**record(0), "incomplete": {"stage": "detection", "error": "boom"}})
    results.append(record(1, score=0.6))
    results.append(record(1, score=0.9))
    results.append(record(2, run_key="other"))
    results.close()
    again = ResultsFile(tmp_path / "results.jsonl")
    assert list(again.partial("k")) == [0] and list(again.finished("k")) == [1]
    assert again.done("k")[1]["scores"]["detection"]["score"] == 0.9
    table = ScoreResult(records=again.result_records("k"), run_key="k").table
    assert table["latent"].tolist() == [1] and table["score"].tolist() == [0.9]


def test_index_is_rebuilt_when_missing_or_stale(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    results = ResultsFile(path)
    for i in range(5):
        results.append(record(i))
    results.close()
    index = path.with_name(path.name + INDEX_SUFFIX)
    assert index.is_file()
    index.unlink()
    assert list(ResultsFile(path).finished("k")) == [0, 1, 2, 3, 4]
    # the file replaced by a shorter one (another run): the index must not describe the old lines
    path.write_text(json.dumps(record(7, run_key="new")) + "\n")
    fresh = ResultsFile(path)
    assert list(fresh.finished("k")) == [] and list(fresh.finished("new")) == [7]
    # lines appended by another writer (no index update) are picked up
    with path.open("a") as fh:
        fh.write(json.dumps(record(8, run_key="new")) + "\n")
    assert list(ResultsFile(path).finished("new")) == [7, 8]


def test_unreadable_lines_are_skipped_and_torn_tail_repaired(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(record(0)) + "\nnot json\n" + json.dumps(record(1)) + "\n" + '{"run_key": "k", "lat')
    results = ResultsFile(path)
    results.repair()
    assert list(results.finished("k")) == [0, 1]
    results.append(record(2))
    results.close()
    assert (tmp_path / "results.jsonl.corrupt").read_text().startswith('{"run_key": "k", "lat')
    assert list(ResultsFile(path).finished("k")) == [0, 1, 2]
    assert [r["latent"] for r in load(path).records] == [0, 1, 2]


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_results_store import record
    from sae_lens_autointerp.results import ResultsFile
    results = ResultsFile({path!r})
    for i in range(100000):
        results.append(record(i))
        print(i, flush=True)
    """
)


def test_a_killed_writer_loses_no_written_record_and_resumes(tmp_path: Path) -> None:
    """SIGKILL mid-run (no cleanup, no final sync): every record the writer reported written is in the file
    and the index after reopening; appending resumes after them."""
    path = tmp_path / "results.jsonl"
    code = CHILD.format(tests=str(Path(__file__).parent), path=str(path))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    written = -1
    deadline = time.monotonic() + 120
    assert child.stdout is not None
    while written < 300 and time.monotonic() < deadline:
        written = int(child.stdout.readline())
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert written >= 300
    results = ResultsFile(path)
    results.repair()
    done = results.finished("k")
    assert done[-1] >= written and np.array_equal(done, np.arange(len(done)))
    results.append(record(int(done[-1]) + 1))
    results.close()
    again = ResultsFile(path)
    assert len(again.finished("k")) == len(done) + 1
    assert ScoreResult(records=again.result_records("k"), run_key="k").table["latent"].tolist() == list(
        range(len(done) + 1)
    )


def test_usage_per_latent_in_constant_time_and_forgotten() -> None:
    tracker = UsageTracker()
    for latent in range(1000):
        tracker.record("m", "detection", latent, Usage(10, 1))
        tracker.record("m", "explain", latent, Usage(20, 5))
    assert tracker.for_latent(7)["explain"].prompt_tokens == 20
    assert set(tracker.for_latent(7)) == {"detection", "explain"}
    rows = tracker.forget_latent(7)
    assert rows["detection"].requests == 1 and tracker.for_latent(7) == {}
    assert ("detection", 7) not in tracker.by_latent() and len(tracker.by_latent()) == 1998
    assert tracker.total().prompt_tokens == 30 * 1000  # the totals keep what the latent spent

"""A damaged run folder: a damaged, garbage or stale index, a crafted line in results.jsonl, a missing run.json,
a busy folder, a full disk. Each is rebuilt, skipped, refused or reported in one line, never a raw traceback.

Fault injection is labelled FAKE where a write is made to fail."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from given_runs import record, score_given
from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.locks import folder_lock
from sae_lens_autointerp.report import load
from sae_lens_autointerp.results import DAMAGED_SUFFIX, INDEX_SUFFIX, ResultsFile, ScoreResult


def write_run(folder: Path, n: int = 200) -> list[dict]:
    """A finished run of ``n`` latents in ``folder`` (its results.jsonl, index and run.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    recs = [record(i, score=round(0.4 + (i % 50) / 100, 2)) for i in range(n)]
    results = ResultsFile(folder / "results.jsonl")
    for r in recs:
        results.append(r)
    results.close()
    (folder / "run.json").write_text(json.dumps({"run_key": "k"}))
    return recs


def index_of(folder: Path) -> Path:
    return folder / ("results.jsonl" + INDEX_SUFFIX)


def damage_a_page(index: Path) -> None:
    """2 KB of 0xA5 a third of the way into the index: the header is valid, a page is not (what a power loss
    with synchronous=OFF may leave). Its WAL is checkpointed first, as when the run's process has ended."""
    db = sqlite3.connect(index)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(index.read_bytes())
    third = len(data) // 3
    data[third : third + 2048] = b"\xa5" * 2048
    index.write_bytes(bytes(data))


def scores_of(result: ScoreResult) -> dict[int, float]:
    return dict(zip(result.table["latent"], result.table["score"], strict=True))


# ---------------------------------------------------------------- R5: a damaged index


def test_a_damaged_index_page_is_moved_aside_and_rebuilt(tmp_path, caplog):
    recs = write_run(tmp_path)
    expected = {r["latent"]: r["scores"]["detection"]["score"] for r in recs}
    damage_a_page(index_of(tmp_path))
    with caplog.at_level(logging.WARNING, logger="sae_lens_autointerp"):
        result = load(tmp_path)
        assert scores_of(result) == expected
        assert len(result.records) == 200 and result.records[7] == recs[7]
    warned = [m for m in caplog.messages if "damaged" in m]
    assert len(warned) == 1 and str(index_of(tmp_path)) in warned[0] and "rebuilt" in warned[0]
    assert (tmp_path / ("results.jsonl" + INDEX_SUFFIX + DAMAGED_SUFFIX)).is_file()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sae_lens_autointerp"):
        assert scores_of(load(tmp_path)) == expected  # the rebuilt index is on disk: no second warning
    assert not [m for m in caplog.messages if "damaged" in m]


def test_damage_found_by_a_later_query_rebuilds_the_index(tmp_path):
    """The index opens and catches up (its meta page is sound) and the damage shows only when the table is read."""
    recs = write_run(tmp_path)
    results = ResultsFile(tmp_path / "results.jsonl")
    assert results.run_keys() == ["k"]  # the index opened and caught up before the damage
    damage_a_page(index_of(tmp_path))
    table = ScoreResult(records=results.result_records("k"), run_key="k").table
    assert table["score"].tolist() == [r["scores"]["detection"]["score"] for r in recs]


def test_a_run_resumes_in_a_folder_with_a_damaged_index(planted, planted_store, bridge_model, tmp_path):
    def run():
        return score_given(planted, planted_store, bridge_model, tmp_path)

    first = run()
    damage_a_page(index_of(tmp_path))
    again = run()
    assert again.table.equals(first.table) and len(again.records) == 3
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3  # nothing was redone
    assert scores_of(load(tmp_path)) == scores_of(first)


# ---------------------------------------------------------------- R21: a garbage or stale index


def test_a_garbage_index_is_replaced_on_disk(tmp_path, caplog):
    recs = write_run(tmp_path, n=20)
    index_of(tmp_path).write_bytes(os.urandom(20_000))
    with caplog.at_level(logging.WARNING, logger="sae_lens_autointerp"):
        assert len(load(tmp_path).records) == 20
    assert len([m for m in caplog.messages if "damaged" in m]) == 1
    db = sqlite3.connect(index_of(tmp_path))  # a database again, holding the file's lines
    assert db.execute("SELECT count(*) FROM lines").fetchone()[0] == len(recs)
    db.close()


def test_an_edit_in_place_of_the_same_length_is_seen(tmp_path):
    write_run(tmp_path, n=20)
    path = tmp_path / "results.jsonl"
    assert scores_of(load(tmp_path))[5] == 0.45
    time.sleep(0.01)  # another mtime than at indexing, whatever the file system's clock tick
    text = path.read_text()
    edited = text.replace(
        '"latent": 5, "explanation": {"latent": 5, "text": "words 5"}, "scores": '
        '{"detection": {"scorer": "detection", "score": 0.45',
        '"latent": 5, "explanation": '
        '{"latent": 5, "text": "words 5"}, "scores": {"detection": {"scorer": "detection", '
        '"score": 0.95',
    )
    assert len(edited) == len(text) and edited != text
    path.write_text(edited)
    result = load(tmp_path)
    assert scores_of(result)[5] == 0.95
    assert result.records[5]["scores"]["detection"]["score"] == 0.95


def test_two_lines_of_equal_length_swapped_are_seen(tmp_path):
    write_run(tmp_path, n=20)
    path = tmp_path / "results.jsonl"
    load(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines[1]) == len(lines[2])
    lines[1], lines[2] = lines[2], lines[1]
    time.sleep(0.01)
    path.write_bytes(b"".join(lines))
    result = load(tmp_path)
    assert [r["latent"] for r in result.records[:3]] == [0, 1, 2]
    assert all(r["latent"] == lat for lat, r in zip(result.table["latent"], result.records, strict=True))


def test_an_unchanged_file_is_not_reindexed(tmp_path):
    write_run(tmp_path, n=20)
    load(tmp_path)
    before = index_of(tmp_path).stat().st_mtime_ns
    time.sleep(0.01)
    result = load(tmp_path)
    assert len(result.table) == 20 and result.records.file is not None
    result.records.file.close()  # its WAL checkpointed into the index: only a rebuild would have written
    assert index_of(tmp_path).stat().st_mtime_ns == before


# ---------------------------------------------------------------- R10: one crafted line


DEEP = '{"run_key": "k", "latent": 5, "v": ' + "[" * 100_000 + "]" * 100_000 + "}"


def crafted(kind: str) -> str:
    r = record(20)
    det = r["scores"]["detection"]
    if kind == "deep":
        return DEEP
    if kind == "latent 10**30":
        r["latent"] = 10**30
    elif kind == "n_failed many":
        det["n_failed"] = "many"
    elif kind == "score abc":
        det["score"], det["low"], det["chance"] = "abc", "abc", [1]
    elif kind == "probability abc":
        for p in det["predictions"]:
            p.pop("prediction")
            p["probability"] = "abc"
    elif kind == "huge numbers":
        det["score"], det["n_examples"] = 10**400, 10**400
    return json.dumps(r)


#: What each crafted line becomes: unreadable (counted, warned about, its latent runs again), or a row whose
#: numbers that are not numbers are missing (NaN, shown as "–"; a count as 0).
CRAFTED = {
    "deep": None,  # RecursionError while decoding
    "latent 10**30": None,  # past SQLite's INTEGER
    "huge numbers": (None, 1),  # a score and a count past a float: shown as missing, like "abc"
    "n_failed many": (0.75, 0),
    "score abc": (None, 1),
    "probability abc": (0.75, 1),
}


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_a_crafted_line_never_stops_the_table(tmp_path, kind, caplog):
    write_run(tmp_path, n=20)
    with (tmp_path / "results.jsonl").open("a") as fh:
        fh.write(crafted(kind) + "\n")
    with caplog.at_level(logging.WARNING, logger="sae_lens_autointerp"):
        result = load(tmp_path)
        table, summary = result.table, result.summary()
    unreadable = [m for m in caplog.messages if "unreadable line" in m]
    expected = CRAFTED[kind]
    if expected is None:
        assert len(unreadable) == 1 and "1 unreadable line(s) skipped" in unreadable[0]
        assert table["latent"].tolist() == list(range(20)) and len(result.records) == 20
    else:
        assert not unreadable and table["latent"].tolist() == list(range(21))
        row = table[table["latent"] == 20].iloc[0]
        score, n_failed = expected
        assert (row["score"] != row["score"]) if score is None else row["score"] == score
        assert row["n_failed"] == n_failed
    assert summary.loc[0, "n_latents"] == len(table)


def test_crafted_numbers_are_shown_as_missing(tmp_path):
    write_run(tmp_path, n=2)
    with (tmp_path / "results.jsonl").open("a") as fh:
        fh.write(crafted("n_failed many") + "\n" + crafted("score abc").replace('"latent": 20', '"latent": 21') + "\n")
    table = load(tmp_path).table.set_index("latent")
    assert table.loc[20, "n_failed"] == 0 and table.loc[20, "score"] == 0.75
    assert table.loc[21, "score"] != table.loc[21, "score"] and table.loc[21, "low"] != table.loc[21, "low"]
    assert table.loc[21, "chance"] != table.loc[21, "chance"] and table.loc[21, "high"] == pytest.approx(0.85)


@pytest.mark.parametrize("kind", ["deep", "latent 10**30"])
def test_a_rerun_skips_a_crafted_line(planted, planted_store, bridge_model, tmp_path, kind):
    def run():
        return score_given(planted, planted_store, bridge_model, tmp_path)

    first = run()
    line = crafted(kind).replace('"run_key": "k"', f'"run_key": "{first.run_key}"')
    with (tmp_path / "results.jsonl").open("a") as fh:
        fh.write(line + "\n")
    again = run()
    assert again.table.equals(first.table)
    assert scores_of(load(tmp_path)) == scores_of(first)


# ---------------------------------------------------------------- R15: the one-run-per-folder guard


@pytest.mark.parametrize("damage", ["deleted", "corrupt", "old format"])
def test_another_run_is_refused_without_run_json(planted, planted_store, bridge_model, tmp_path, damage):
    first = score_given(planted, planted_store, bridge_model, tmp_path)
    run_json = tmp_path / "run.json"
    if damage == "deleted":
        run_json.unlink()
    else:
        run_json.write_text("{" if damage == "corrupt" else '{"x": 1}')
    with pytest.raises(ConfigError, match=rf"holds the results of another run \({first.run_key[:12]}; its run.json"):
        score_given(planted, planted_store, bridge_model, tmp_path, seed=7)
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 3  # nothing of the second run
    again = score_given(planted, planted_store, bridge_model, tmp_path)  # the same run still resumes
    assert again.run_key == first.run_key and len(again.records) == 3
    assert json.loads(run_json.read_text())["run_key"] == first.run_key


def test_another_run_on_a_busy_folder_is_refused_at_once(planted, planted_store, bridge_model, tmp_path):
    score_given(planted, planted_store, bridge_model, tmp_path)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # a run of the folder's own key, still going
        with folder_lock(tmp_path, "run"):
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        held.wait(10)
        start = time.perf_counter()
        with pytest.raises(ConfigError, match="holds the results of another run .* differs in: seed"):
            score_given(planted, planted_store, bridge_model, tmp_path, seed=7)
        assert time.perf_counter() - start < 20  # refused without waiting for the holder (60 s)
        assert holder.is_alive()
    finally:
        release.set()
        holder.join()


def test_run_json_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from sae_lens_autointerp.pipeline import RunFolder

    folder = RunFolder(tmp_path, "k" * 64, {})
    folder.write_usage({"total": {"requests": 1}})

    def no_space(*args, **kwargs):  # FAKE: the disk fills up as the new file is renamed into place
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(ConfigError, match=rf"no space left to write usage.json in {tmp_path}.*free space"):
        folder.write_usage({"total": {"requests": 2}})
    assert json.loads((tmp_path / "usage.json").read_text()) == {"total": {"requests": 1}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["usage.json"]  # no temporary file left


# ---------------------------------------------------------------- R16: a full disk


def test_a_full_disk_is_one_line_and_the_torn_line_is_repaired(tmp_path, monkeypatch, caplog):
    import sae_lens_autointerp.results.file as file_module

    results = ResultsFile(tmp_path / "results.jsonl")
    results.append(record(0))
    real_write = os.write

    def half_then_full(fd, data):  # FAKE: the disk fills up in the middle of a line
        real_write(fd, bytes(data[:13]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(file_module.os, "write", half_then_full)
    with pytest.raises(ConfigError, match=rf"no space left to write results.jsonl in {tmp_path}.*free space"):
        results.append(record(1))
    monkeypatch.setattr(file_module.os, "write", real_write)
    with caplog.at_level(logging.WARNING, logger="sae_lens_autointerp"):
        results.append(record(2))  # the same object after space was freed: the torn line is moved aside first
    results.close()
    assert any("torn line (13 bytes" in m for m in caplog.messages)
    assert [r["latent"] for r in ResultsFile(tmp_path / "results.jsonl").records()] == [0, 2]


def test_a_read_only_file_system_is_one_line(tmp_path, monkeypatch):
    import sae_lens_autointerp.results.file as file_module

    def read_only(*args, **kwargs):  # FAKE: the folder's file system is mounted read-only
        raise OSError(errno.EROFS, "Read-only file system")

    results = ResultsFile(tmp_path / "results.jsonl")
    monkeypatch.setattr(file_module.os, "open", read_only)
    with pytest.raises(ConfigError, match=rf"{tmp_path} is on a read-only file system \(writing results.jsonl\)"):
        results.append(record(0))


TMPFS = textwrap.dedent("""
    import json, subprocess, sys
    from pathlib import Path
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", sys.argv[1]], check=True)
    from sae_lens_autointerp.errors import ConfigError
    from sae_lens_autointerp.results import ResultsFile
    rf = ResultsFile(Path(sys.argv[1]) / "results.jsonl")
    record = json.loads(sys.argv[2])
    try:
        for i in range(100_000):
            rf.append({**record, "latent": i})
    except ConfigError as exc:
        print("REFUSED", i, exc)
""")


def test_a_real_full_disk_is_one_line(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small tmpfs")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"user and mount namespaces unavailable here (unshare -rm: {probe.stderr.decode().strip()})")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = subprocess.run(
        ["unshare", "-rm", sys.executable, "-c", TMPFS, str(mnt), json.dumps(record(0))],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "REFUSED" in out.stdout and "no space left to write" in out.stdout, out.stdout + out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_a_records_numbers_never_raise():
    """One reader of a record's numbers for the table and the reports: anything that is not a finite number is
    missing (an int past a float's range included), a count stays exact however large."""
    from sae_lens_autointerp.numeric import finite, whole

    assert [finite(x) for x in (0.5, "0.5", True, 10**400, float("nan"), float("inf"), "abc", [1], None)] == [
        0.5,
        0.5,
        1.0,
        None,
        None,
        None,
        None,
        None,
        None,
    ]
    assert [whole(x) for x in (3, 10**30, 3.0, 3.5, "7", "x", None)] == [
        3,
        10**30,
        3,
        None,
        7,
        None,
        None,
    ]

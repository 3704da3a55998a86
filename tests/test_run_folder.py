"""One run folder, one run; torn results lines; bad inputs refused before any harvest."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.sampling import SamplingConfig
from scripted_llm import ScriptedClient, sensible

SMALL = SamplingConfig(n_explain=8, n_test_pos=4, n_test_neg=4)


def _lines(folder):
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def test_a_folder_with_another_run_is_refused(planted, planted_store, bridge_model, tmp_path):
    planted.sae.score(
        bridge_model,
        store=planted_store,
        explanations=planted.explanations,
        scorers=["embedding"],
        llm=None,
        sampling=SMALL,
        out_dir=tmp_path,
        progress=False,
    )
    with pytest.raises(
        ConfigError,
        match=r"holds the results of another run .* differs in: scorer_kwargs, "
        r"scorer_prompts.*pass another out_dir",
    ):
        planted.sae.score(
            bridge_model,
            store=planted_store,
            explanations=planted.explanations,
            scorers=["embedding"],
            scorer_kwargs={"embedding": {"query_prompt": "query: "}},
            llm=None,
            sampling=SMALL,
            out_dir=tmp_path,
            progress=False,
        )
    assert len(_lines(tmp_path)) == 3  # nothing of the second run was written
    again = planted.sae.score(
        bridge_model,
        store=planted_store,
        explanations=planted.explanations,
        scorers=["embedding"],
        llm=None,
        sampling=SMALL,
        out_dir=tmp_path,
        progress=False,
    )
    assert len(again.records) == 3 and len(_lines(tmp_path)) == 3  # the same run: all done, nothing redone


RUN = textwrap.dedent("""
    import json, sys
    import sae_lens_autointerp as sai
    from sae_lens_autointerp.harvest.store import LatentStore
    model, sae = sai.embedded.load_model(), sai.embedded.load_sae()
    store = LatentStore(sys.argv[1])
    result = sae.autointerp.run(model, store=store, latents=list(range(40)), llm=None, explainer="top-tokens",
                                scorers=["embedding"], out_dir=sys.argv[2], progress=False, concurrency=2,
                                sampling={"n_explain": 8, "n_test_pos": 4, "n_test_neg": 4, "min_activating": 8})
    print(json.dumps({"records": len(result.records), "incomplete": len(result.incomplete)}))
""")


def test_two_identical_concurrent_runs_compute_each_latent_once(embedded_store, tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RUN, str(embedded_store.path), str(tmp_path / "run")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    lines = _lines(tmp_path / "run")
    assert sorted(r["latent"] for r in lines) == list(range(40))  # each latent once, not twice
    assert [json.loads(o[0].splitlines()[-1]) for o in outs] == [{"records": 40, "incomplete": 0}] * 2


def test_a_torn_last_line_is_moved_aside(planted, planted_store, bridge_model, tmp_path):
    first = planted.sae.score(
        bridge_model,
        store=planted_store,
        explanations={0: planted.explanations[0]},
        scorers=["embedding"],
        llm=None,
        sampling=SMALL,
        out_dir=tmp_path,
        progress=False,
        controls=False,
    )
    path = tmp_path / "results.jsonl"
    key = first.run_key
    torn = json.dumps({"run_key": key, "latent": 1, "scores": {}})[:40]  # a crash mid-write
    path.write_text(path.read_text() + torn)
    result = planted.sae.score(
        bridge_model,
        store=planted_store,
        explanations={0: planted.explanations[0], 1: planted.explanations[1]},
        scorers=["embedding"],
        llm=None,
        sampling=SMALL,
        out_dir=tmp_path / "x",
        progress=False,
        controls=False,
    )
    assert result.complete  # (another folder: a different run key)
    from sae_lens_autointerp.results import ResultsFile

    rf = ResultsFile(path)
    rf.append({"run_key": key, "latent": 2, "scores": {}})
    assert (tmp_path / "results.jsonl.corrupt").read_text() == torn + "\n"
    assert [r["latent"] for r in rf.records()] == [0, 2]  # the new record was not glued to the fragment


@pytest.fixture()
def no_harvest(monkeypatch):
    import sae_lens_autointerp.harvest as h

    monkeypatch.setattr(h, "harvest", lambda *a, **k: pytest.fail("the harvest ran before the bad input was refused"))


BAD_INPUTS = {
    "llm": ({"llm": "nosuchbackend:model"}, "unknown llm client 'nosuchbackend'. Available: local, openai, vllm"),
    "negatives": ({"sampling": {"negatives": "hard"}}, "negatives must be 'random', 'similar' or 'neighbours'"),
    "seed": ({"seed": "1"}, "seed must be an integer"),
    "concurrency": ({"concurrency": 0}, "concurrency must be a positive integer"),
    "sampling key": (
        {"sampling": {"n_tests": 5}},
        r"unknown sampling option\(s\) \['n_tests'\]; did you mean 'n_test_pos'\? valid: n_explain",
    ),
    "string number": ({"sampling": {"n_test_pos": "5"}}, "sampling n_test_pos must be an integer"),
    "huge n_test_pos": ({"sampling": {"n_test_pos": 10_000}}, "harvest keeps a sample of n_stratified=100"),
    "zero n_test_neg": ({"sampling": {"n_test_neg": 0}}, "n_test_pos and n_test_neg must be >= 1"),
    "n_quantiles": ({"sampling": {"n_quantiles": 95, "n_explain": 40, "n_test_pos": 50}}, "n_quantiles=95"),
    "scorers string": ({"scorers": "embedding"}, r"scorers must be a list of names"),
    "explanation key": ({"explanations": {1.7: "x"}}, "explanations keys are latent indices"),
    "explanation range": ({"explanations": {99: "x"}}, "out of range for d_sae"),
    "controls": ({"controls": 2}, "controls must be a fraction"),
    "dollars without prices": ({"llm": "openai:m", "budget_dollars": 1.0}, "prices"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_refused_before_the_harvest(no_harvest, planted, bridge_model, tmp_path, name):
    from sae_lens_autointerp.errors import UnknownPluginItemError

    kwargs, message = BAD_INPUTS[name]
    base = {"explanations": {0: "months"}, "scorers": ["embedding"], "llm": None}
    with pytest.raises(UnknownPluginItemError if name == "llm" else ConfigError, match=message):
        planted.sae.autointerp.run(bridge_model, ["some text"], out_dir=tmp_path, progress=False, **{**base, **kwargs})


def test_out_dir_that_is_a_file(no_harvest, planted, bridge_model, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        planted.sae.score(
            bridge_model,
            ["text"],
            explanations={0: "months"},
            scorers=["embedding"],
            llm=None,
            out_dir=tmp_path / "f",
            progress=False,
        )


def test_scripted_client_is_not_closed_twice(planted, planted_store, bridge_model, tmp_path):
    """A client object the caller owns stays usable after a run (the run closes only the clients it made)."""
    client = ScriptedClient(sensible)
    for out in ("a", "b"):
        planted.sae.score(
            bridge_model,
            store=planted_store,
            explanations={0: planted.explanations[0]},
            scorers=["detection"],
            llm=client,
            sampling=SMALL,
            out_dir=tmp_path / out,
            progress=False,
        )
    assert len(client.requests) == 2 * 8

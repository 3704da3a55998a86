"""Neuronpedia's explanation format: export from results records, read exports back, the CLI."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys

import pytest

from sae_autointerp_neuronpedia import NeuronpediaFormatError, export_explanations, read_explanations
from sae_autointerp_neuronpedia.cli import main
from sae_lens_autointerp.errors import ConfigError

RECORDS = [
    {
        "latent": 3,
        "explanation": {"text": "closing brackets", "explainer": "default", "failed": False, "parse": "labelled"},
        "scores": {"detection": {"score": 0.8, "n_examples": 100, "n_failed": 2}, "fuzzing": {"score": None}},
    },
    {
        "latent": 5,
        "explanation": {"text": "", "explainer": "default", "failed": True, "error": "no explanation in the answer"},
    },
    {"latent": 7, "skipped": "too rare: 3 firing examples, need 10 (harvest more tokens)", "stats": {}},
    {
        "latent": 9,
        "explanation": {"text": " the keyword def ", "explainer": "saebench", "failed": False},
        "usage": {"explain": {"requests": 1}},  # written by the run's LLM (no parse: the saebench explainer)
        "scores": {},
    },
    {"latent": 10, "explanation": {"text": "top tokens: def", "explainer": "top-tokens", "failed": False}},
]


@pytest.fixture
def run_dir(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.jsonl").write_text(
        "".join(json.dumps({"run_key": "k", **r}) + "\n" for r in RECORDS) + '{"latent": 11, "expl'
    )
    (folder / "run.json").write_text(json.dumps({"llm": "openai:gpt-4o-mini", "run_key": "k", "explainer": "default"}))
    return folder


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".jsonl.gz"])
def test_export_then_read_round_trip(run_dir, tmp_path, suffix):
    out = tmp_path / f"explanations{suffix}"
    report = export_explanations(
        run_dir / "results.jsonl", out, neuronpedia_id="gpt2-small/8-res-jb", unattributed="skip"
    )
    assert report.written == 2 and sorted(report.skipped) == [5, 7, 10]
    assert "explanation failed" in report.skipped[5] and report.skipped[7].startswith("skipped: too rare")
    assert "no model wrote" in report.skipped[10]
    if suffix == ".json":
        items = json.loads(out.read_text())
    else:
        raw = gzip.decompress(out.read_bytes()).decode() if suffix.endswith(".gz") else out.read_text()
        items = [json.loads(line) for line in raw.splitlines()]
    assert items[0] == {
        "id": items[0]["id"],
        "modelId": "gpt2-small",
        "layer": "8-res-jb",
        "index": "3",
        "description": "closing brackets",
        "authorId": "clkht01d40000jv08hvalcvly",  # the bot user Neuronpedia's seed.ts creates
        "typeName": None,
        "explanationModelName": "gpt-4o-mini",
    }
    assert re.fullmatch(r"[a-z][0-9a-z]{24}", items[0]["id"])
    assert items[1]["description"] == "the keyword def" and items[1]["explanationModelName"] == "gpt-4o-mini"
    assert read_explanations(out) == {3: "closing brackets", 9: "the keyword def"}


def test_scores_are_opt_in(run_dir, tmp_path):
    report = export_explanations(
        run_dir,
        tmp_path / "e.json",
        model_id="m",
        source="s",
        include_scores=True,
        explanation_model="claude",
        type_name="mine",
        author_id="u1",
    )
    items = json.loads(report.path.read_text())
    assert items[0]["scores"] == [{"typeName": "detection", "value": 0.8, "n_examples": 100, "n_failed": 2}]
    assert items[0]["explanationModelName"] == "claude" and items[0]["typeName"] == "mine"
    assert [i["explanationModelName"] for i in items] == ["claude"] * 3 and items[0]["authorId"] == "u1"


def test_llm_free_explanations_are_refused_without_a_model(run_dir, tmp_path):
    with pytest.raises(ConfigError, match="no LLM wrote the explanations of 1 latent.*10.*explanation_model="):
        export_explanations(run_dir, tmp_path / "e.json", neuronpedia_id="gpt2-small/8-res-jb")


def test_a_folder_gets_the_bulk_layout(run_dir, tmp_path):
    report = export_explanations(
        run_dir, tmp_path / "bulk", neuronpedia_id="gpt2-small/8-res-jb", explanation_model="gpt-4o-mini"
    )
    assert report.path == tmp_path / "bulk" / "gpt2-small" / "8-res-jb" / "explanations"
    assert [p.name for p in report.path.iterdir()] == ["batch-0.jsonl.gz"]
    assert read_explanations(tmp_path / "bulk") == {3: "closing brackets", 9: "the keyword def", 10: "top tokens: def"}


def test_reads_a_neuronpedia_bulk_folder_and_filters_by_sae(tmp_path):
    folder = tmp_path / "explanations"
    folder.mkdir()
    rows = [
        {
            "id": "a",
            "modelId": "gpt2-small",
            "layer": "8-res-jb",
            "index": "1",
            "description": " dates",
            "typeName": "oai_token-act-pair",
            "explanationModelName": "gpt-4o-mini",
            "authorId": "x",
            "embedding": None,
        },
        {"modelId": "gpt2-small", "layer": "8-res-jb", "index": "1", "description": "second one loses"},
        {"modelId": "gpt2-small", "layer": "8-res-jb", "index": 2, "description": ""},
        {"modelId": "gpt2-small", "layer": "9-res-jb", "index": "1", "description": "other layer"},
    ]
    with gzip.open(folder / "batch-0.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    with pytest.raises(ValueError, match="several SAEs.*gpt2-small/8-res-jb, gpt2-small/9-res-jb"):
        read_explanations(folder)
    assert read_explanations(folder, neuronpedia_id="gpt2-small/8-res-jb") == {1: "dates"}
    assert read_explanations(folder, source="9-res-jb") == {1: "other layer"}


def test_bad_inputs_say_what_is_wrong(tmp_path, run_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"index": "1", "description": "ok"}\nnot json\n')
    with pytest.raises(NeuronpediaFormatError, match=r"bad.jsonl:2: not JSON"):
        read_explanations(bad)
    (tmp_path / "obj.json").write_text('{"foo": 1}')
    with pytest.raises(NeuronpediaFormatError, match="JSON array"):
        read_explanations(tmp_path / "obj.json")
    with pytest.raises(ValueError, match="MODEL/SOURCE"):
        export_explanations(run_dir, tmp_path / "x.json", neuronpedia_id="gpt2-small")
    with pytest.raises(ConfigError, match=r"\.json, \.jsonl or \.jsonl\.gz"):
        export_explanations(run_dir, tmp_path / "x.csv", model_id="m", source="s")
    with pytest.raises(ConfigError, match="no results at"):
        export_explanations(tmp_path / "nowhere", tmp_path / "x.json", model_id="m", source="s")


def test_cli(run_dir, tmp_path, capsys):
    out = tmp_path / "np.jsonl"
    np_id = ["--neuronpedia-id", "gpt2-small/8-res-jb"]
    assert main(["export", str(run_dir), "--out", str(out), *np_id]) == 2
    assert "no LLM wrote the explanations" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--out", str(out), *np_id, "--unattributed", "skip"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 explanations" in printed and "5: explanation failed" in printed
    assert main(["read", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == {"3": "closing brackets", "9": "the keyword def"}
    assert main(["export", str(run_dir), "--out", str(out)]) == 2
    assert "neuronpedia_id" in capsys.readouterr().err


def test_console_script_is_installed(run_dir, tmp_path):
    out = tmp_path / "np.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sae_autointerp_neuronpedia.cli",
            "export",
            str(run_dir / "results.jsonl"),
            "--out",
            str(out),
            "--model-id",
            "gpt2-small",
            "--source",
            "8-res-jb",
            "--explanation-model",
            "gpt-4o-mini",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(out.read_text())) == 3
    from importlib.metadata import entry_points

    assert any(ep.name == "sae-autointerp-neuronpedia" for ep in entry_points(group="console_scripts"))

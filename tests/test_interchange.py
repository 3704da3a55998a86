"""Interchange with the peers' formats (sae_lens_autointerp.interchange): SAEBench's schema checked with
jsonschema against SAEBench 0.6.0's own schema file, delphi's file layout, Neuronpedia's Explanation rows
checked field by field against its Prisma model, and round trips (export a real run, read back, equal)."""

from __future__ import annotations

import gzip
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.interchange import (
    NEURONPEDIA_BATCH_SIZE,
    NEURONPEDIA_DEFAULT_AUTHOR_ID,
    NeuronpediaFormatError,
    export,
    neuronpedia_rows,
    read_delphi_explanations,
    read_neuronpedia,
    to_delphi,
    to_neuronpedia,
    to_saebench,
)
from sae_lens_autointerp.llm import BaseClient, ChatRequest, ChatResponse, Usage
from sae_lens_autointerp.results import ScoreResult
from scripted_llm import distinct

SMALL = {"n_explain": 10, "n_test_pos": 4, "n_test_neg": 4}
NP_ID = "smollm2-135m/3-res-embedded"
PEERS = Path.home() / ".cache" / "sae-lens-autointerp" / "peers" / "sae-bench-0.6.0"
SCHEMA = PEERS / "sae_bench" / "evals" / "autointerp" / "eval_output_schema_autointerp.json"

# Neuronpedia's Explanation model, from hijohnnylin/neuronpedia apps/webapp/prisma/schema.prisma at commit
# ebb8426fc550ad5d1f76d52c271a624af3c08a57 (model Explanation, lines 799-849). Required: the non-optional
# scalar columns without a database default (id's @default(cuid()) is made by the Prisma client, and
# Neuronpedia's bulk importer, apps/webapp/lib/db/import.ts importJsonlString, inserts raw SQL from
# jsonb_to_recordset, so the row must carry it). scoreV1 (@default(0)), createdAt / updatedAt (now()) have
# database defaults; relations (author, model, neuron, type, ...) are not columns.
PRISMA_REQUIRED = {"id": str, "modelId": str, "layer": str, "index": str, "description": str, "authorId": str}
PRISMA_OPTIONAL = {
    "embedding": list,
    "triggeredByUserId": str,
    "notes": str,
    "scoreV1": float,
    "scoreV2": float,
    "umap_x": float,
    "umap_y": float,
    "umap_cluster": int,
    "umap_log_feature_sparsity": float,
    "typeName": str,
    "explanationModelName": str,
    "createdAt": str,
    "updatedAt": str,
}


class NamedClient(BaseClient):
    """FAKE LLM client (bookkeeping tests only): answers like tests/scripted_llm.distinct, under an
    OpenAI-style name so that the run records which model wrote the explanations."""

    def __init__(self) -> None:
        super().__init__("openai:fake-explainer", cache=False)

    async def _chat(self, request: ChatRequest) -> ChatResponse:
        return ChatResponse(text=distinct(request), finish_reason="stop", usage=Usage(50, 3), model="fake-explainer")


@pytest.fixture(scope="module")
def store(bridge_model, embedded_sae, tmp_path_factory):
    import sae_lens_autointerp as sai

    docs = sai.embedded.load_corpus(max_docs=40)
    return embedded_sae.autointerp.harvest(
        bridge_model,
        docs,
        n_tokens=40 * 128,
        ctx_len=128,
        batch_size=8,
        store_dir=tmp_path_factory.mktemp("interchange-store"),
        progress=False,
    )


@pytest.fixture(scope="module")
def latents(store):
    counts = store.stats["n_fire_examples"]
    ok = [i for i in range(store.d_sae) if int(counts[i]) >= 30 and float(store.frequency[i]) < 0.05]
    assert len(ok) >= 4
    return sorted(ok, key=lambda i: float(store.frequency[i]))[:4]


@pytest.fixture(scope="module")
def llm_run(bridge_model, embedded_sae, store, latents, tmp_path_factory):
    """The default LLM explainer (a FAKE client) with detection and fuzzing."""
    return embedded_sae.autointerp.run(
        bridge_model,
        store=store,
        latents=latents,
        explainer="default",
        scorers=["detection", "fuzzing"],
        llm=NamedClient(),
        sampling=SMALL,
        out_dir=tmp_path_factory.mktemp("llm-run"),
        progress=False,
    )


@pytest.fixture(scope="module")
def free_run(bridge_model, embedded_sae, store, latents, tmp_path_factory):
    """LLM-free: top-tokens explanations scored by the embedding scorer."""
    return embedded_sae.autointerp.run(
        bridge_model,
        store=store,
        latents=latents,
        explainer="top-tokens",
        scorers=["embedding"],
        sampling=SMALL,
        out_dir=tmp_path_factory.mktemp("free-run"),
        progress=False,
    )


def texts(result: ScoreResult) -> dict[int, str]:
    return {k: v.text for k, v in result.explanations.items() if not v.failed and v.text.strip()}


# ------------------------------------------------------------------------------------------------ SAEBench


@pytest.fixture(scope="module")
def schema():
    if not SCHEMA.is_file():  # as .ci/run does
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(PEERS), "sae-bench==0.6.0"],
            check=True,
        )
    return json.loads(SCHEMA.read_text())


def validate(schema, data):
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    cls(schema).validate(data)


def test_saebench_export_validates_and_says_which_scorer_the_number_is(llm_run, embedded_sae, schema, tmp_path):
    from sae_lens_autointerp import report

    result = report.load(llm_run.path)
    with pytest.raises(ConfigError, match="saebench scorer did not run.*scorer="):
        to_saebench(result, tmp_path / "x.json")
    with pytest.raises(ConfigError, match="'intruder' did not run"):
        to_saebench(result, tmp_path / "x.json", scorer="intruder")

    path = to_saebench(result, tmp_path / "autointerp.json", scorer="detection", sae=embedded_sae)
    data = json.loads(path.read_text())
    validate(schema, data)
    broken = {k: v for k, v in data.items() if k != "eval_id"}
    with pytest.raises(Exception, match="eval_id"):
        validate(schema, broken)

    scores = result.table.query("scorer == 'detection'")["score"].dropna().to_numpy()
    metrics = data["eval_result_metrics"]["autointerp"]
    assert metrics["autointerp_score"] == pytest.approx(scores.mean())
    assert metrics["autointerp_std_dev"] == pytest.approx(np.std(scores, ddof=1))
    headline = data["eval_result_unstructured"]["headline"]
    assert headline["scorer"] == "detection" and headline["metric"] == "balanced_accuracy"
    assert headline["saebench_comparable"] is False and "NOT SAEBench's score" in headline["note"]
    assert "not by SAEBench" in data["sae_bench_commit_hash"]
    latents = data["eval_result_unstructured"]["latents"]
    assert sorted(map(int, latents)) == sorted(result.table.query("scorer == 'detection'")["latent"])
    for row in result.table.query("scorer == 'detection'").itertuples():
        entry = latents[str(row.latent)]
        assert entry["explanation"] == row.explanation and entry["n_examples"] == row.n_examples
        assert entry["chance"] == pytest.approx(0.5)
        assert entry["control"] is None if math.isnan(row.control) else entry["control"] == pytest.approx(row.control)
    details = {d["scorer"]: d for d in data["eval_result_details"]}
    assert set(details) == {"detection", "fuzzing"} and details["fuzzing"]["chance"] == pytest.approx(0.5)
    assert data["eval_config"]["override_latents"] == sorted(int(r["latent"]) for r in result.records)
    assert data["sae_cfg_dict"]["d_sae"] == embedded_sae.cfg.d_sae and data["sae_lens_version"]


def test_saebench_scorer_numbers_are_saebench_accuracy(llm_run, schema, tmp_path):
    """The saebench plugin's output shape (its scorer records SAEBench's accuracy next to the balanced one):
    the file's score is the mean accuracy whatever the plugin's headline, and says it is SAEBench's."""
    accuracy = {0: 12 / 14, 1: 10 / 14, 2: 11 / 14}
    records = []
    for latent, acc in accuracy.items():
        base = dict(llm_run.records[0])
        records.append(
            {
                **base,
                "latent": latent,
                "scores": {
                    "saebench": {
                        "scorer": "saebench",
                        "score": 0.6,  # a balanced-accuracy headline: not what SAEBench reports
                        "metric": "balanced_accuracy",
                        "n_examples": 14,
                        "n_failed": 0,
                        "metrics": {"accuracy": acc, "balanced_accuracy": 0.6, "trivial_none_accuracy": 10 / 14},
                    }
                },
            }
        )
    records.append({**records[0], "latent": 3, "scores": {"saebench": {"score": None, "error": "unparseable"}}})
    result = ScoreResult(records=records, run_key="k")
    data = json.loads(to_saebench(result, tmp_path / "s.json").read_text())
    validate(schema, data)
    values = list(accuracy.values())
    assert data["eval_result_metrics"]["autointerp"]["autointerp_score"] == pytest.approx(np.mean(values))
    assert data["eval_result_metrics"]["autointerp"]["autointerp_std_dev"] == pytest.approx(np.std(values, ddof=1))
    headline = data["eval_result_unstructured"]["headline"]
    assert headline["saebench_comparable"] is True and headline["metric"] == "accuracy"
    assert headline["n_latents_scored"] == 3 and headline["n_latents_without_score"] == 1
    assert data["eval_result_unstructured"]["latents"]["0"]["balanced_accuracy"] == pytest.approx(0.6)
    with pytest.raises(ConfigError, match="at least 2 latents"):
        to_saebench(ScoreResult(records=records[:1]), tmp_path / "one.json")


# -------------------------------------------------------------------------------------------------- delphi


def test_delphi_export_layout_and_round_trip(llm_run, tmp_path):
    export = to_delphi(llm_run, tmp_path / "delphi", module="layers.3")
    expected = texts(llm_run)
    assert expected and export.written == len(expected)
    for latent, text in expected.items():
        file = tmp_path / "delphi" / "explanations" / f"layers.3_latent{latent}.txt"
        assert json.loads(file.read_bytes()) == text
    assert read_delphi_explanations(tmp_path / "delphi") == expected
    assert read_delphi_explanations(tmp_path / "delphi" / "explanations", module="layers.3") == expected

    keys = ["str_tokens", "activations", "distance", "activating", "prediction", "probability", "correct"]
    for ours, theirs in (("detection", "detection"), ("fuzzing", "fuzz")):
        for latent in expected:
            rows = json.loads((tmp_path / "delphi" / "scores" / theirs / f"layers.3_latent{latent}.txt").read_text())
            predictions = next(r for r in llm_run.records if r["latent"] == latent)["scores"][ours]["predictions"]
            assert len(rows) == len(predictions) > 0
            for row, p in zip(rows, predictions):
                assert list(row) == keys
                assert row["activating"] is p["label"] and row["prediction"] == p["prediction"]
                assert row["correct"] == (None if p["prediction"] is None else p["prediction"] == p["label"])
                assert row["distance"] == (p["quantile"] if p["label"] else -1.0)
                # the window's text and activations, from the store and vocab.json
                assert row["str_tokens"] and len(row["str_tokens"]) == len(row["activations"])
                assert (max(row["activations"]) > 0) is bool(p["label"])


def test_builtin_export_formats_through_the_registry_write_what_the_functions_write(llm_run, tmp_path):
    """``export(result, name, out, **options)`` finds the built-in formats through the plugin registry (the
    built-in plugin's ``sae_autointerp_exporters``) and writes the same files as the format's own function;
    a missing required option and an option the format does not have are refused by name."""
    direct = to_delphi(llm_run, tmp_path / "a", module="layers.3")
    via = export(llm_run, "delphi", tmp_path / "b", module="layers.3")
    assert via.written == direct.written and via.skipped == direct.skipped
    assert [p.relative_to(tmp_path / "b") for p in via.paths] == [p.relative_to(tmp_path / "a") for p in direct.paths]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(direct.paths, via.paths))

    path = to_saebench(llm_run, tmp_path / "s1.json", scorer="detection")
    via = export(llm_run, "saebench", tmp_path / "s2.json", scorer="detection")
    assert via.paths == [tmp_path / "s2.json"] and via.path.read_bytes() == path.read_bytes()
    assert (
        via.written
        == len(json.loads(path.read_text())["eval_result_unstructured"]["latents"])
        == len(llm_run.table["latent"].unique())
    )

    direct = to_neuronpedia(llm_run, tmp_path / "n1", neuronpedia_id=NP_ID)
    via = export(llm_run, "neuronpedia", tmp_path / "n2", neuronpedia_id=NP_ID)
    assert via.written == direct.written and via.paths[0].read_bytes() == direct.paths[0].read_bytes()

    with pytest.raises(ConfigError, match=r"--format delphi needs --module \(the hook point in delphi's file names"):
        export(llm_run, "delphi", tmp_path / "c")
    with pytest.raises(ConfigError, match=r"export format 'delphi' has no option \['modul'\]; it has \['module'\]"):
        export(llm_run, "delphi", tmp_path / "c", modul="layers.3")


def test_delphi_reader_refuses_ambiguity_and_skips_placeholders(tmp_path):
    folder = tmp_path / "explanations"
    folder.mkdir()
    (folder / "layers.3_latent7.txt").write_text(json.dumps("month names"))
    (folder / "layers.3_latent8.txt").write_text(json.dumps("Explanation could not be parsed."))
    (folder / "layers.4_latent7.txt").write_text(json.dumps("other layer"))
    with pytest.raises(ConfigError, match="several modules.*layers.3, layers.4.*module="):
        read_delphi_explanations(tmp_path)
    assert read_delphi_explanations(tmp_path, module="layers.3") == {7: "month names"}
    with pytest.raises(ConfigError, match="no delphi explanation files of module 'layers.9'"):
        read_delphi_explanations(tmp_path, module="layers.9")
    with pytest.raises(ConfigError, match="without '/'"):
        to_delphi(ScoreResult(records=[]), tmp_path / "d", module="a/b")


# --------------------------------------------------------------------------------------------- Neuronpedia


def check_prisma_row(row: dict) -> None:
    for name, kind in PRISMA_REQUIRED.items():
        assert name in row, f"required Explanation column {name} missing"
        assert isinstance(row[name], kind) and row[name], f"{name}: {row[name]!r} is not a non-empty {kind}"
    for name, value in row.items():
        assert name in PRISMA_REQUIRED or name in PRISMA_OPTIONAL, f"{name} is not an Explanation column"
        if name in PRISMA_OPTIONAL and value is not None:
            assert isinstance(value, PRISMA_OPTIONAL[name]), f"{name}: {value!r}"


def read_rows(folder: Path) -> list[dict]:
    return [
        json.loads(line)
        for file in sorted(folder.glob("*.jsonl.gz"))
        for line in gzip.decompress(file.read_bytes()).decode().splitlines()
    ]


def test_neuronpedia_bulk_export_fits_the_prisma_model_and_round_trips(llm_run, tmp_path):
    export = to_neuronpedia(llm_run, tmp_path / "np", neuronpedia_id=NP_ID)
    batch = tmp_path / "np" / "smollm2-135m" / "3-res-embedded" / "explanations" / "batch-0.jsonl.gz"
    assert export.paths == [batch]
    rows = read_rows(batch.parent)
    expected = texts(llm_run)
    assert len(rows) == export.written == len(expected)
    for row in rows:
        check_prisma_row(row)
        assert re.fullmatch(r"[a-z][0-9a-z]{24}", row["id"])
        assert row["authorId"] == NEURONPEDIA_DEFAULT_AUTHOR_ID and row["typeName"] is None
        assert row["explanationModelName"] == "fake-explainer"  # the explainer's model, from run.json
    assert [list(r) for r in rows] == [list(rows[0])] * len(rows)  # the importer takes columns from line 1
    assert len({r["id"] for r in rows}) == len(rows)
    assert read_neuronpedia(tmp_path / "np") == expected
    assert read_neuronpedia(batch, neuronpedia_id=NP_ID) == expected

    with pytest.raises(ConfigError, match="already holds 1 batch file"):
        to_neuronpedia(llm_run, tmp_path / "np", neuronpedia_id=NP_ID)
    again = to_neuronpedia(
        llm_run, tmp_path / "np", neuronpedia_id=NP_ID, overwrite=True, type_name="np_max-act", author_id="u1"
    )
    rows2 = read_rows(again.path.parent)
    assert all(r["typeName"] == "np_max-act" and r["authorId"] == "u1" for r in rows2)
    assert {r["id"] for r in rows2}.isdisjoint({r["id"] for r in rows})  # another type: other rows
    same = to_neuronpedia(llm_run, tmp_path / "np2", neuronpedia_id=NP_ID)  # deterministic ids
    assert [r["id"] for r in read_rows(same.path.parent)] == [r["id"] for r in rows]


def test_neuronpedia_llm_free_explanations_need_a_named_model(free_run, tmp_path):
    with pytest.raises(ConfigError, match="no LLM wrote the explanations.*'top-tokens'.*explanation_model="):
        to_neuronpedia(free_run, tmp_path / "a", neuronpedia_id=NP_ID)
    with pytest.raises(ConfigError, match="no latent of this run has an explanation"):
        to_neuronpedia(free_run, tmp_path / "b", neuronpedia_id=NP_ID, unattributed="skip")
    with pytest.raises(ConfigError, match="MODEL/SOURCE"):
        to_neuronpedia(free_run, tmp_path / "c", neuronpedia_id="smollm2-135m")
    with pytest.raises(ConfigError, match="author_id"):
        to_neuronpedia(free_run, tmp_path / "c", neuronpedia_id=NP_ID, explanation_model="m", author_id="")
    export = to_neuronpedia(free_run, tmp_path / "d", neuronpedia_id=NP_ID, explanation_model="human")
    rows = read_rows(export.path.parent)
    assert {r["explanationModelName"] for r in rows} == {"human"}
    assert read_neuronpedia(tmp_path / "d") == texts(free_run)


def test_neuronpedia_batches_hold_1024_rows_in_latent_order(free_run, tmp_path):
    base = next(r for r in free_run.records if r.get("explanation") and not r["explanation"]["failed"])
    records = [{**base, "latent": i, "explanation": {**base["explanation"], "text": f"t{i}"}} for i in range(2100)]
    export = to_neuronpedia(ScoreResult(records=records), tmp_path, model_id="m", source="s", explanation_model="human")
    assert [p.name for p in export.paths] == ["batch-0.jsonl.gz", "batch-1.jsonl.gz", "batch-2.jsonl.gz"]
    sizes = [len(gzip.decompress(p.read_bytes()).decode().splitlines()) for p in export.paths]
    assert sizes == [NEURONPEDIA_BATCH_SIZE, NEURONPEDIA_BATCH_SIZE, 2100 - 2 * NEURONPEDIA_BATCH_SIZE]
    assert [int(r["index"]) for r in read_rows(export.path.parent)][:3] == [0, 1, 2]
    assert read_neuronpedia(tmp_path) == {i: f"t{i}" for i in range(2100)}


def test_read_neuronpedia_picks_a_type_and_an_sae(tmp_path):
    rows = [
        {"modelId": "m", "layer": "s", "index": "1", "description": "dates", "typeName": "oai_token-act-pair"},
        {"modelId": "m", "layer": "s", "index": "1", "description": "years", "typeName": "np_max-act"},
        {"modelId": "m", "layer": "s", "index": "2", "description": "commas", "typeName": "np_max-act"},
        {"modelId": "m", "layer": "s", "index": "2", "description": "later one loses", "typeName": "np_max-act"},
        {"modelId": "m", "layer": "s2", "index": "1", "description": "other SAE", "typeName": "np_max-act"},
    ]
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match="several SAEs.*m/s, m/s2"):
        read_neuronpedia(path)
    with pytest.raises(ConfigError, match="several types.*np_max-act, oai_token-act-pair.*type_name="):
        read_neuronpedia(path, neuronpedia_id="m/s")
    assert read_neuronpedia(path, "m/s", type_name="np_max-act") == {1: "years", 2: "commas"}
    assert read_neuronpedia(path, "m/s", type_name="oai_token-act-pair") == {1: "dates"}
    with pytest.raises(ConfigError, match="does not exist"):
        read_neuronpedia(tmp_path / "nowhere.json")
    (tmp_path / "bad.jsonl").write_text('{"index": "x", "description": "d"}\n')
    with pytest.raises(ConfigError, match="'index' must be a latent number"):
        read_neuronpedia(tmp_path / "bad.jsonl")


def test_imported_explanations_go_straight_into_score(bridge_model, embedded_sae, store, llm_run, tmp_path):
    to_neuronpedia(llm_run, tmp_path / "np", neuronpedia_id=NP_ID)
    given = read_neuronpedia(tmp_path / "np", NP_ID)
    result = embedded_sae.score(
        model=bridge_model,
        store=store,
        explanations=given,
        scorers=["embedding"],
        sampling=SMALL,
        out_dir=tmp_path / "scored",
        progress=False,
    )
    assert {r["latent"]: r["explanation"]["text"] for r in result.records} == given
    assert set(result.table["scorer"]) == {"embedding"} and result.table["score"].notna().all()
    rows, skipped = neuronpedia_rows(result, model_id="m", source="s", unattributed="skip")
    assert rows == [] and len(skipped) == len(given)  # explanations given to score(): no model known


def test_sae_source_is_recorded_and_carried_into_every_export(bridge_model, embedded_sae, store, latents, tmp_path):
    """The SAE's SAELens release / id and Neuronpedia id go into run.json, and each export takes them from there
    when the caller names none."""
    import copy
    import json

    sae = copy.deepcopy(embedded_sae)
    md = sae.cfg.metadata
    md.neuronpedia_id, md.sae_lens_release, md.sae_lens_sae_id = NP_ID, "embedded-release", "blocks.3.hook_resid_post"
    result = sae.autointerp.run(
        bridge_model,
        store=store,
        latents=latents[:2],
        explanations={latents[0]: "months", latents[1]: "digits"},
        scorers=["detection"],
        llm=NamedClient(),
        sampling=SMALL,
        out_dir=tmp_path / "run",
        progress=False,
    )
    source = json.loads((tmp_path / "run" / "run.json").read_text())["sae_source"]
    assert source["neuronpedia_id"] == NP_ID and source["sae_lens_release"] == "embedded-release"
    assert source["sae_lens_sae_id"] == "blocks.3.hook_resid_post" and source["hook_name"] == md.hook_name
    export = to_neuronpedia(result, tmp_path / "np", explanation_model="fake-explainer")  # no ids passed
    assert export.path.parts[-4:-2] == tuple(NP_ID.split("/"))
    bench = json.loads(to_saebench(result, tmp_path / "sb.json", scorer="detection").read_text())
    assert bench["sae_lens_release_id"] == "embedded-release"
    assert bench["sae_lens_id"] == "blocks.3.hook_resid_post"
    delphi = to_delphi(result, tmp_path / "delphi", module="layers.3")
    assert json.loads((tmp_path / "delphi" / "sae_source.json").read_text())["neuronpedia_id"] == NP_ID
    assert tmp_path / "delphi" / "sae_source.json" in delphi.paths
    md.neuronpedia_id = None
    bare = sae.autointerp.run(
        bridge_model,
        store=store,
        latents=latents[:1],
        explanations={latents[0]: "months"},
        scorers=["detection"],
        llm=NamedClient(),
        sampling=SMALL,
        out_dir=tmp_path / "bare",
        progress=False,
    )
    with pytest.raises(ConfigError, match="records no neuronpedia_id"):
        to_neuronpedia(bare, tmp_path / "np-bare", explanation_model="fake-explainer")


# ----------------------------------------------------------------------------- malformed and hostile inputs
GOOD_ROW = {"modelId": "m", "layer": "s", "index": "5", "description": "dates", "typeName": "t"}


def _np_file(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _row_line(**changes) -> str:
    return json.dumps({**GOOD_ROW, **changes}) + "\n"


_GZ = gzip.compress(_row_line().encode() * 1000)
MALFORMED_NP = {
    "deep.json": ("[" * 200_000 + "]" * 200_000, "not JSON"),
    "deep.jsonl": ("[" * 200_000 + "]" * 200_000 + "\n", "nested too deep"),
    "utf8.jsonl": (_row_line().encode() + b"\xff\xfe\n", "not UTF-8"),
    "plain.jsonl.gz": ("hello, not gzip", "not a readable gzip file"),
    "cut.jsonl.gz": (_GZ[: len(_GZ) // 2], "not a readable gzip file"),
    "float.jsonl": (_row_line(index=1.9), "'index' must be a latent number"),
    "bool.jsonl": (_row_line(index=True), "'index' must be a latent number"),
    "negative.jsonl": (_row_line(index=-7), "'index' must be a latent number"),
    "decimal.jsonl": (_row_line(index="1.5"), "'index' must be a latent number"),
    "superscript.jsonl": (_row_line(index="²"), "'index' must be a latent number"),
    "dict.jsonl": (_row_line(description={"x": 1}), "'description' must be a string, got dict"),
    "null.jsonl": (_row_line(description=None), "'description' must be a string, got NoneType"),
    "long.jsonl": (_row_line(description="a" * 9000), "a description of 9,000 characters"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_NP))
def test_read_neuronpedia_refuses_malformed_files_naming_them(tmp_path, name):
    data, why = MALFORMED_NP[name]
    path = _np_file(tmp_path, name, data)
    with pytest.raises(NeuronpediaFormatError) as info:
        read_neuronpedia(path)
    message = str(info.value)
    assert why in message and str(path) in message and "\n" not in message and len(message) < 400


def test_read_neuronpedia_reads_integer_and_digit_indices(tmp_path):
    path = _np_file(tmp_path, "ok.jsonl", _row_line(index=5) + _row_line(index="7", description="years"))
    assert read_neuronpedia(path) == {5: "dates", 7: "years"}


def test_read_neuronpedia_refuses_a_gzip_bomb_after_a_bounded_read(tmp_path):
    """64 MB of one line from ~64 KB of gzip (gzip members concatenated): refused after reading about
    MAX_LINE_BYTES of it, never decompressed whole (before: the whole line was read into one string)."""
    import tracemalloc

    from sae_lens_autointerp.interchange.common import MAX_LINE_BYTES

    head = gzip.compress(b'{"modelId":"m","layer":"s","index":"1","description":"')
    member = gzip.compress(b"A" * (1 << 20))
    path = _np_file(tmp_path, "bomb.jsonl.gz", head + member * 64)
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(NeuronpediaFormatError, match=f"line longer than {MAX_LINE_BYTES:,} bytes"):
            read_neuronpedia(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MAX_LINE_BYTES, peak


def test_read_delphi_refuses_deep_nesting_oversized_and_bad_files(tmp_path):
    folder = tmp_path / "explanations"
    folder.mkdir()
    (folder / "layers.3_latent5.txt").write_text(json.dumps("dates"))
    cases = {
        "layers.3_latent6.txt": ("[" * 200_000 + "]" * 200_000, "RecursionError"),
        "layers.3_latent7.txt": (b'"\xff"', "UnicodeDecodeError"),
        "layers.3_latent8.txt": (json.dumps("x" * 9000), "an explanation of 9,000 characters"),
        "layers.3_latent9.txt": (b'"' + b"x" * (2 << 20) + b'"', "over 1,048,576 bytes"),
    }
    for name, (data, why) in cases.items():
        path = folder / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        with pytest.raises(ConfigError) as info:
            read_delphi_explanations(tmp_path)
        assert why in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)
        path.unlink()
    assert read_delphi_explanations(tmp_path) == {5: "dates"}


def _crafted_run(folder: Path, neuronpedia_id: str) -> ScoreResult:
    """A run folder of two finished latents whose run.json names the SAE ``neuronpedia_id``."""
    folder.mkdir(parents=True)
    records = [
        {"run_key": "k", "latent": i, "explanation": {"latent": i, "text": f"words {i}", "failed": False}}
        for i in (1, 2)
    ]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "run.json").write_text(json.dumps({"run_key": "k", "sae_source": {"neuronpedia_id": neuronpedia_id}}))
    return ScoreResult(records=records, path=folder / "results.jsonl", run_key="k")


@pytest.mark.parametrize("hostile", ["../..", "m/..", "./s", "m/.", "m/ ", "m\\..\\x/s", "m/s\x1b"])
def test_neuronpedia_export_stays_inside_its_folder(tmp_path, hostile):
    """A run.json's neuronpedia_id names folders under --out: '..' parts were joined and left it (and with
    overwrite, batch files up there were deleted)."""
    result = _crafted_run(tmp_path / "run", hostile)
    out = tmp_path / "a" / "b"
    out.mkdir(parents=True)
    victim = tmp_path / "explanations" / "batch-0.jsonl.gz"  # where '../..' led
    victim.parent.mkdir()
    victim.write_bytes(b"someone else's")
    with pytest.raises(ConfigError, match="is not a folder name") as info:
        to_neuronpedia(result, out, explanation_model="m", overwrite=True)
    assert "\n" not in str(info.value)
    assert victim.read_bytes() == b"someone else's" and not list(out.rglob("*.gz"))
    with pytest.raises(ConfigError, match="is not a folder name"):
        to_neuronpedia(result, out, model_id="..", source="s", explanation_model="m")
    rc = subprocess.run(
        [sys.executable, "-m", "sae_lens_autointerp.cli", "export", str(tmp_path / "run"), "--format", "neuronpedia"]
        + ["--out", str(out), "--explanation-model", "m", "--overwrite"],
        capture_output=True,
        text=True,
    )
    assert rc.returncode == 2 and "is not a folder name" in rc.stderr and "Traceback" not in rc.stderr, rc.stderr
    assert victim.read_bytes() == b"someone else's"


def test_neuronpedia_export_refuses_a_link_out_of_its_folder(tmp_path):
    result = _crafted_run(tmp_path / "run", "m/s")
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "m").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="leads outside"):
        to_neuronpedia(result, out, explanation_model="m")
    assert not list((tmp_path / "elsewhere").rglob("*"))
    assert to_neuronpedia(result, tmp_path / "fine", explanation_model="m").written == 2


def test_delphi_export_writes_null_for_a_probability_that_is_not_a_number(tmp_path):
    """A record's probability "abc" stopped to_delphi (ValueError from float())."""
    predictions = [{"prediction": True, "label": True, "probability": "abc", "token_id": 5}]
    record = {
        "run_key": "k",
        "latent": 4,
        "explanation": {"latent": 4, "text": "dates", "failed": False},
        "scores": {"detection": {"score": 1.0, "predictions": predictions}},
    }
    to_delphi(ScoreResult(records=[record]), tmp_path, module="layers.3")
    rows = json.loads((tmp_path / "scores" / "detection" / "layers.3_latent4.txt").read_text())
    assert rows[0]["probability"] is None and rows[0]["prediction"] is True

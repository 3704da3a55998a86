"""The "neuronpedia" explainer inside sae.autointerp.run: Neuronpedia's explanations scored like any other,
then exported back. The explainer is resolved by name through the entry point."""

from __future__ import annotations

import json

import pytest
from neuronpedia_fake_llm import FakeClient

from sae_autointerp_neuronpedia import export_explanations, read_explanations
from sae_lens_autointerp.errors import ConfigError

SMALL = {"n_explain": 10, "n_test_pos": 4, "n_test_neg": 4}


def write_export(path, latents):
    rows = [
        {
            "modelId": "smollm2-135m",
            "layer": "3-res-embedded",
            "index": str(latents[0]),
            "description": "Python keywords",
            "explanationModelName": "gpt-4o-mini",
            "typeName": "oai_token-act-pair",
        },
        {
            "modelId": "smollm2-135m",
            "layer": "3-res-embedded",
            "index": str(latents[1]),
            "description": "punctuation",
            "explanationModelName": "gpt-4o-mini",
            "typeName": "oai_token-act-pair",
        },
        {"modelId": "smollm2-135m", "layer": "4-res-other", "index": str(latents[2]), "description": "another SAE"},
    ]
    path.write_text(json.dumps(rows))
    return path


def test_registered_by_entry_point():
    from sae_lens_autointerp import get_registry

    info = {p.name: p for p in get_registry().plugins()}["neuronpedia"]
    assert info.provides == {"explainers": ["neuronpedia"]} and info.error is None and info.version == "0.1.0"


def test_score_neuronpedia_explanations_then_export(model, sae, store, latents, tmp_path):
    export = write_export(tmp_path / "np.json", latents)
    client = FakeClient()
    result = sae.autointerp.run(
        model,
        store=store,
        latents=latents[:3],
        explainer="neuronpedia",
        explainer_kwargs={"path": str(export), "neuronpedia_id": "smollm2-135m/3-res-embedded"},
        scorers=["detection"],
        llm=client,
        sampling=SMALL,
        out_dir=tmp_path / "run",
        progress=False,
    )
    by_latent = {r["latent"]: r for r in result.records}
    assert by_latent[latents[0]]["explanation"]["text"] == "Python keywords"
    assert by_latent[latents[0]]["explanation"]["raw"] == "oai_token-act-pair by gpt-4o-mini"
    assert by_latent[latents[0]]["scores"]["detection"]["n_examples"] == 8
    # Neuronpedia's explainer read examples nobody recorded: never presented as held out
    assert by_latent[latents[0]]["holdout"] == "unknown" and by_latent[latents[0]]["examples"]["explain"] == []
    assert by_latent[latents[0]]["explanation"]["shown_spans"] is None
    assert set(result.table["holdout"]) == {"unknown"}
    missing = by_latent[latents[2]]  # only the other SAE explains it
    assert missing["explanation"]["failed"] and "no Neuronpedia explanation" in missing["explanation"]["error"]
    assert (
        missing["scores"]["detection"]["score"] is None
        and "explanation failed" in missing["scores"]["detection"]["error"]
    )
    # the explainer itself calls no LLM: only detection and its control (another latent's explanation)
    assert {r.stage for r in client.requests} == {"detection", "detection:control"}

    # the lookup wrote nothing itself: the judge did not write these, so the model must be named
    with pytest.raises(ConfigError, match="no LLM wrote the explanations of 2 latent"):
        export_explanations(result, tmp_path / "back.jsonl", neuronpedia_id="smollm2-135m/3-res-embedded")
    report = export_explanations(
        result,
        tmp_path / "back.jsonl",
        neuronpedia_id="smollm2-135m/3-res-embedded",
        explanation_model="gpt-4o-mini",
        type_name="oai_token-act-pair",
    )
    assert report.written == 2 and list(report.skipped) == [latents[2]]
    assert read_explanations(report.path) == {latents[0]: "Python keywords", latents[1]: "punctuation"}
    row = json.loads(report.path.read_text().splitlines()[0])
    assert row["explanationModelName"] == "gpt-4o-mini" and row["typeName"] == "oai_token-act-pair"


def test_ambiguous_export_and_bad_path_fail_clearly(model, sae, store, latents, tmp_path):
    from sae_lens_autointerp.errors import PluginError

    export = write_export(tmp_path / "np.json", latents)
    result = sae.autointerp.run(
        model,
        store=store,
        latents=latents[:1],
        explainer="neuronpedia",
        explainer_kwargs={"path": str(export)},
        scorers=["detection"],
        llm=FakeClient(),
        sampling=SMALL,
        out_dir=tmp_path / "a",
        progress=False,
    )
    explanation = result.records[0]["explanation"]  # the run finishes; the latent's explanation failed, named
    assert explanation["failed"] and explanation["error"].startswith(
        "plugin 'neuronpedia', explainer 'neuronpedia' crashed"
    )
    assert "several SAEs" in explanation["error"] and "MODEL/SOURCE" in explanation["error"]
    with pytest.raises(PluginError, match="plugin 'neuronpedia' failed to create explainer 'neuronpedia'.*nowhere"):
        sae.autointerp.run(
            model,
            store=store,
            latents=latents[:1],
            explainer="neuronpedia",
            explainer_kwargs={"path": str(tmp_path / "nowhere.json")},
            scorers=["detection"],
            llm=FakeClient(),
            sampling=SMALL,
            out_dir=tmp_path / "b",
            progress=False,
        )

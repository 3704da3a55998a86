"""Third-party plugins, end to end, each in a fresh interpreter (so the registry is built from the installed
entry points exactly as a user's would be):

* the real plugin distributions under plugins/ (installed editable, as .ci/run does) work by name in
  ``sae.score`` / ``sae.autointerp.run`` with no import of the plugin in the user's code, and blocking them
  through ``SAE_AUTOINTERP_BLOCK_PLUGINS`` turns the same call into a clear "unknown scorer" error listing
  what is available;
* deliberately broken plugins (one raises at import, one needs a newer hookspec, one returns garbage from
  its hook, scorers return garbage: a dict, a NaN score, metrics that are not JSON; a scorer and an explainer
  crash) are reported by name while the built-in scorers of the same run finish;
* the complete example plugin of docs/plugins.md installs and scores.

The LLM is tests/scripted_llm.py's FAKE client (bookkeeping only; the plugins' own tests use the real local
model too). The model is the embedded SmolLM2; the SAE the small random one of tests/conftest.py, saved to
disk with its harvest once per module (the scripts open both, as a user reopens a saved SAE and store).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PLUGINS = {"sae-autointerp-saebench": "saebench", "sae-autointerp-neuronpedia": "neuronpedia"}

# Shared by every script: the embedded model, the SAE and the store that the module fixture saved.
PRELUDE = """
import contextlib, io, json, os, sys
sys.path.insert(0, {tests!r})
import sae_lens_autointerp as sai
from sae_lens import SAE
from scripted_llm import ScriptedClient, sensible

model = sai.embedded.load_model()
sae = SAE.load_from_disk({sae_dir!r})
store = sai.LatentStore({store_dir!r})
latents = {latents!r}
SMALL = {{"n_explain": 10, "n_test_pos": 6, "n_test_neg": 6}}
out = {{}}
"""


def run_script(body: str, prepared: dict, extra_path: Path | None = None, env: dict[str, str] | None = None) -> dict:
    code = textwrap.dedent(PRELUDE.format(tests=str(TESTS), **prepared)) + textwrap.dedent(body)
    code += "\nprint('RESULT ' + json.dumps(out, default=str))\n"
    full_env = {k: v for k, v in os.environ.items() if k != "SAE_AUTOINTERP_BLOCK_PLUGINS"}
    full_env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})})
    if extra_path is not None:
        full_env["PYTHONPATH"] = f"{extra_path}{os.pathsep}{full_env.get('PYTHONPATH', '')}"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
        cwd=str(extra_path or TESTS),
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, (
        f"script failed:\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    )
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture(scope="module")
def installed() -> None:
    """The plugins under plugins/ are installed (editable) in this interpreter's environment, as .ci/run does;
    a checkout where they are not gets them installed here (``pip install -e plugins/<name>``)."""
    for dist in PLUGINS:
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--no-deps",
                    "--no-build-isolation",
                    "-e",
                    str(REPO / "plugins" / dist),
                ],
                check=True,
                timeout=300,
            )
    importlib.invalidate_caches()


@pytest.fixture(scope="module")
def prepared(bridge_model, bridge_sae, corpus_texts, tmp_path_factory) -> dict:
    """The SAE saved to disk and one harvest, both made here once and opened by every script."""
    root = tmp_path_factory.mktemp("third_party")
    bridge_sae.save_model(str(root / "sae"))
    store = bridge_sae.autointerp.harvest(
        bridge_model, corpus_texts, n_tokens=60 * 64, ctx_len=64, batch_size=8, store_dir=root / "store", progress=False
    )
    counts = store.stats["n_fire_examples"]
    live = sorted((i for i in range(store.d_sae) if counts[i] >= 30), key=lambda i: float(store.frequency[i]))
    return {"sae_dir": str(root / "sae"), "store_dir": str(store.path), "latents": live[:2]}


USE_PLUGINS = """
from sae_lens_autointerp.errors import UnknownPluginItemError
out["imported_before"] = sorted(m for m in ("sae_autointerp_saebench", "sae_autointerp_neuronpedia") if m in sys.modules)
export = {np_file!r}
with open(export, "w") as fh:
    json.dump([{{"modelId": "m", "layer": "s", "index": str(latents[0]), "description": "Python keywords"}}], fh)
calls = [
    ("saebench", lambda: sae.score(model, store=store, explanations={{latents[0]: "common English words"}},
                                   scorers=["saebench"], llm=ScriptedClient(lambda r: "2, 5"), sampling=SMALL,
                                   out_dir={out_dir!r} + "/a", progress=False)),
    ("neuronpedia", lambda: sae.autointerp.run(model, store=store, latents=latents[:1], explainer="neuronpedia",
                                               explainer_kwargs={{"path": export}}, scorers=["detection"],
                                               llm=ScriptedClient(sensible), sampling=SMALL,
                                               out_dir={out_dir!r} + "/b", progress=False)),
]
for name, call in calls:
    try:
        result = call()
        # records is a lazy sequence read from results.jsonl (the results store): a list for json
        out[name] = {{"records": list(result.records), "table": result.table.to_dict("records")}}
    except Exception as exc:
        out[name] = {{"error_type": type(exc).__name__, "message": str(exc)}}
out["imported_after"] = sorted(m for m in ("sae_autointerp_saebench", "sae_autointerp_neuronpedia") if m in sys.modules)
out["available"] = {{kind: sorted(sai.get_registry().items(kind)) for kind in ("scorers", "explainers")}}
"""


def test_installed_plugins_work_by_name_and_blocking_them_gives_a_clear_error(installed, prepared, tmp_path):
    body = USE_PLUGINS.format(np_file=str(tmp_path / "np.json"), out_dir=str(tmp_path / "runs"))
    out = run_script(body, prepared)
    assert out["imported_before"] == []  # user code never imports a plugin; the registry loads it on use
    assert out["imported_after"] == ["sae_autointerp_neuronpedia", "sae_autointerp_saebench"]
    (row,) = out["saebench"]["table"]
    assert row["scorer"] == "saebench" and row["n_examples"] == 14 and row["n_failed"] == 0
    assert 0 <= row["score"] <= 1
    metrics = out["saebench"]["records"][0]["scores"]["saebench"]["metrics"]
    assert metrics["trivial_none_accuracy"] == pytest.approx(10 / 14) and metrics["balanced_accuracy"] is not None
    (record,) = out["neuronpedia"]["records"]
    assert record["explanation"]["explainer"] == "neuronpedia" and record["explanation"]["text"] == "Python keywords"
    assert record["scores"]["detection"]["score"] is not None

    blocked = run_script(body, prepared, env={"SAE_AUTOINTERP_BLOCK_PLUGINS": "saebench, neuronpedia"})
    assert blocked["saebench"]["error_type"] == "UnknownPluginItemError"
    scorers, explainers = blocked["available"]["scorers"], blocked["available"]["explainers"]
    assert "saebench" not in scorers and {"detection", "fuzzing"} <= set(scorers)
    assert blocked["saebench"]["message"].startswith(f"unknown scorer 'saebench'. Available: {', '.join(scorers)}.")
    assert "SAE_AUTOINTERP_BLOCK_PLUGINS" in blocked["saebench"]["message"]
    assert blocked["neuronpedia"]["error_type"] == "UnknownPluginItemError"
    assert "neuronpedia" not in explainers and "default" in explainers
    assert blocked["neuronpedia"]["message"].startswith(
        f"unknown explainer 'neuronpedia'. Available: {', '.join(explainers)}."
    )
    assert "saebench" in out["available"]["scorers"] and "neuronpedia" in out["available"]["explainers"]
    assert blocked["imported_after"] == []


def make_dist(root: Path, name: str, source: str) -> None:
    """A real (if hand-made) installed distribution: a module plus a dist-info with an entry point."""
    (root / f"{name}.py").write_text(textwrap.dedent(source))
    info = root / f"{name}-0.3.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3.0\n")
    (info / "entry_points.txt").write_text(f"[sae_lens_autointerp]\n{name} = {name}\n")


BROKEN = {
    "sai_raises_at_import": "raise RuntimeError('this plugin is broken on purpose')\n",
    "sai_from_the_future": """
        from sae_lens_autointerp import hookimpl

        SAE_AUTOINTERP_HOOKSPEC_VERSION = 99

        @hookimpl
        def sae_autointerp_scorers():
            return {"future": object}
    """,
    "sai_garbage_hook": """
        from sae_lens_autointerp import hookimpl

        @hookimpl
        def sae_autointerp_scorers():
            return "not a mapping"
    """,
    "sai_garbage_scorer": """
        from sae_lens_autointerp import hookimpl
        from sae_lens_autointerp.records import ScorerOutput

        class Garbage:
            name = "garbage"
            needs_explanation = True

            async def score(self, sample, explanation, ctx):
                return {"score": 1.0}  # not a ScorerOutput

        class NanScore(Garbage):
            async def score(self, sample, explanation, ctx):
                return ScorerOutput("nan-score", float("nan"), 3, 0)

        class Opaque(Garbage):
            async def score(self, sample, explanation, ctx):
                return ScorerOutput("opaque", 0.5, 3, 0, metrics={"thing": object()})

        @hookimpl
        def sae_autointerp_scorers():
            return {"garbage": Garbage, "nan-score": NanScore, "opaque": Opaque}
    """,
    "sai_crashing_plugin": """
        from sae_lens_autointerp import hookimpl

        class Crashing:
            name = "crashing"
            needs_explanation = False

            async def score(self, sample, explanation, ctx):
                raise ZeroDivisionError("scorer bug on purpose")

        class CrashingExplainer:
            name = "crashing-explainer"

            async def explain(self, sample, ctx):
                raise KeyError("explainer bug on purpose")

        @hookimpl
        def sae_autointerp_scorers():
            return {"crashing": Crashing}

        @hookimpl
        def sae_autointerp_explainers():
            return {"crashing-explainer": CrashingExplainer}
    """,
}

RUN_WITH_BROKEN = """
from sae_lens_autointerp import get_registry
from sae_lens_autointerp.cli import main as cli_main

buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    cli_main(["plugins", "--json"])
out["plugins"] = json.loads(buf.getvalue())
out["failures"] = dict(get_registry().failures)
result = sae.score(model, store=store, explanations={{latents[0]: "common English words"}},
                   scorers=["detection", "garbage", "nan-score", "crashing", "opaque", "fuzzing", "saebench"],
                   llm=ScriptedClient(sensible), sampling=SMALL, out_dir={out_dir!r} + "/a", progress=False)
out["scores"] = result.records[0]["scores"]
result = sae.autointerp.run(model, store=store, latents=latents[:1], explainer="crashing-explainer",
                            scorers=["detection", "intruder"], llm=ScriptedClient(sensible), sampling=SMALL,
                            out_dir={out_dir!r} + "/b", progress=False)
out["explained"] = result.records[0]
# The authoring guide's example plugin (docs/plugins.md), installed like the others: no LLM at all.
result = sae.score(model, store=store, explanations={{latents[0]: "the keyword def"}}, scorers=["lexical"], llm=None,
                   sampling=SMALL, out_dir={out_dir!r} + "/c", progress=False)
out["lexical"] = result.records[0]["scores"]["lexical"]
"""


def docs_example_plugin() -> str:
    """The complete scorer plugin of docs/plugins.md (the python block between the example-plugin markers)."""
    text = (REPO / "docs" / "plugins.md").read_text()
    block = text.split("<!-- example-plugin:start")[1].split("<!-- example-plugin:end -->")[0]
    return block.split("```python\n")[1].split("```")[0]


def test_broken_plugins_are_reported_by_name_and_builtins_finish_and_the_docs_example_works(
    installed, prepared, tmp_path
):
    root = tmp_path / "site"
    root.mkdir()
    for name, source in BROKEN.items():
        make_dist(root, name, source)
    make_dist(root, "sae_autointerp_lexical", docs_example_plugin())
    out = run_script(RUN_WITH_BROKEN.format(out_dir=str(tmp_path / "runs")), prepared, extra_path=root)

    infos = {p["name"]: p for p in out["plugins"]}
    assert (
        "broken on purpose" in infos["sai_raises_at_import"]["error"]
        and infos["sai_raises_at_import"]["version"] == "0.3.0"
    )
    assert "expected a mapping" in infos["sai_garbage_hook"]["error"]
    assert "needs hookspec version 99" in infos["sai_from_the_future"]["error"]
    assert infos["sai_from_the_future"]["provides"] == {}
    assert (
        infos["sai_garbage_scorer"]["provides"] == {"scorers": ["garbage", "nan-score", "opaque"]}
        and infos["sai_garbage_scorer"]["error"] is None
    )
    assert infos["sai_crashing_plugin"]["provides"] == {"scorers": ["crashing"], "explainers": ["crashing-explainer"]}
    assert infos["saebench"]["error"] is None and infos["builtin"]["error"] is None
    assert {"sai_raises_at_import", "sai_garbage_hook", "sai_from_the_future"} <= set(out["failures"])
    assert not {"builtin", "saebench", "neuronpedia", "sai_garbage_scorer", "sai_crashing_plugin"} & set(
        out["failures"]
    )

    scores = out["scores"]
    for builtin in ("detection", "fuzzing"):
        assert scores[builtin]["score"] is not None and scores[builtin]["error"] is None
    assert scores["saebench"]["score"] is not None and scores["saebench"]["n_examples"] == 14
    assert scores["garbage"]["score"] is None
    assert (
        scores["garbage"]["error"] == "plugin 'sai_garbage_scorer': scorer 'garbage' returned dict, not a ScorerOutput"
    )
    assert scores["nan-score"]["score"] is None and scores["nan-score"]["error"] == (
        "plugin 'sai_garbage_scorer': scorer 'nan-score' returned score=nan; a score is a finite number or None"
    )
    assert scores["opaque"]["error"].startswith(
        "plugin 'sai_garbage_scorer': scorer 'opaque' returned a ScorerOutput that cannot be written to results.jsonl"
    )
    assert scores["crashing"]["error"] == (
        "plugin 'sai_crashing_plugin', scorer 'crashing' crashed: ZeroDivisionError: scorer bug on purpose"
    )

    lexical = out["lexical"]
    assert lexical["error"] is None and lexical["n_failed"] == 0 and 0 <= lexical["score"] <= 1
    assert lexical["n_examples"] == len(lexical["predictions"]) == 12
    assert infos["sae_autointerp_lexical"]["provides"] == {"scorers": ["lexical"]}

    explained = out["explained"]
    assert explained["explanation"]["failed"]
    assert explained["explanation"]["error"] == (
        "plugin 'sai_crashing_plugin', explainer 'crashing-explainer' crashed: KeyError: 'explainer bug on purpose'"
    )
    assert "explanation failed" in explained["scores"]["detection"]["error"]
    assert explained["scores"]["intruder"]["error"] is None  # needs no explanation: still scored

"""Plugin registry: built-ins through the same hooks, entry-point discovery, blocking, broken plugins."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sae_lens_autointerp.errors import UnknownPluginItemError
from sae_lens_autointerp.plugin import Registry


def make_dist(root: Path, name: str, module_source: str, entry: str | None = None) -> None:
    """Install a tiny distribution into ``root`` by hand: a module + a dist-info with an entry point."""
    (root / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{name}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[sae_lens_autointerp]\n{entry or name} = {name}\n")


GOOD = """
from sae_lens_autointerp import hookimpl

class EchoScorer:
    name = "echo"

@hookimpl
def sae_autointerp_scorers():
    return {"echo": EchoScorer}
"""
BROKEN_IMPORT = "raise RuntimeError('this plugin is broken on purpose')\n"
GARBAGE = """
from sae_lens_autointerp import hookimpl

@hookimpl
def sae_autointerp_scorers():
    return ["not", "a", "mapping"]
"""


def run_cli(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sae_lens_autointerp.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


@pytest.fixture
def plugin_root(tmp_path):
    make_dist(tmp_path, "sai_echo_plugin", GOOD)
    make_dist(tmp_path, "sai_broken_plugin", BROKEN_IMPORT)
    make_dist(tmp_path, "sai_garbage_plugin", GARBAGE)
    return tmp_path


def test_builtins_register_through_hooks():
    registry = Registry(load_entry_points=False)
    assert [p.name for p in registry.plugins()] == ["builtin"]
    assert {"local", "openai"} <= set(registry.items("llm_clients"))
    # ... through this distribution's own entry point, like a third-party plugin (the registry imports none)
    (ep,) = [ep for ep in importlib.metadata.entry_points(group="sae_lens_autointerp") if ep.name == "builtin"]
    assert ep.value == "sae_lens_autointerp.builtin" and ep.dist.name == "sae-lens-autointerp"
    assert Registry(load_entry_points=False, builtins=False).plugins() == []


def test_entry_points_discovered_and_failures_reported_by_name(plugin_root):
    out = run_cli(plugin_root, "plugins", "--json")
    assert out.returncode == 0, out.stderr
    infos = {p["name"]: p for p in json.loads(out.stdout)}
    assert infos["sai_echo_plugin"]["version"] == "1.2.3"
    assert infos["sai_echo_plugin"]["provides"] == {"scorers": ["echo"]}
    assert "broken on purpose" in infos["sai_broken_plugin"]["error"]
    assert "expected a mapping" in infos["sai_garbage_plugin"]["error"]
    assert infos["builtin"]["error"] is None
    text = run_cli(plugin_root, "plugins")
    assert "sai_echo_plugin 1.2.3" in text.stdout and "scorers: echo" in text.stdout


def test_block_env_var(plugin_root):
    out = run_cli(
        plugin_root, "plugins", "--json", env={"SAE_AUTOINTERP_BLOCK_PLUGINS": "sai_echo_plugin, sai_broken_plugin"}
    )
    names = {p["name"] for p in json.loads(out.stdout)}
    assert "sai_echo_plugin" not in names and "sai_broken_plugin" not in names and "sai_garbage_plugin" in names


def test_unknown_item_lists_available():
    registry = Registry(load_entry_points=False)
    with pytest.raises(UnknownPluginItemError, match=r"unknown llm client 'nope'\. Available: .*local.*openai"):
        registry.get("llm_clients", "nope")


CSV_EXPORTER = """
from sae_lens_autointerp import hookimpl
from sae_lens_autointerp.interchange import Export, ExportOption


class Csv:
    description = "one row per (latent, scorer) as CSV (--out: a folder)"
    options = (
        ExportOption("sep", "the column separator", default=","),
        ExportOption("scorer", "only this scorer's rows"),  # saebench has a --scorer too: the flag is shared
    )

    def export(self, result, out, sep=",", scorer=None):
        table = result.table
        if scorer is not None:
            table = table[table["scorer"] == scorer]
        out.mkdir(parents=True, exist_ok=True)
        path = out / "scores.csv"
        table[["latent", "scorer", "score"]].to_csv(path, sep=sep, index=False)
        return Export(paths=[path], written=int(table["latent"].nunique()), skipped=result.skipped)


@hookimpl
def sae_autointerp_exporters():
    return {"csv": Csv, "not-an-exporter": object}
"""


def write_run(folder: Path) -> None:
    """A run folder as ``report.load`` reads it: three scored latents and a skipped one."""
    from sae_lens_autointerp.results import ResultsFile

    results = ResultsFile(folder / "results.jsonl")
    for latent, score in ((3, 0.75), (7, 0.5), (9, 0.9)):
        scores = {
            name: {"scorer": name, "score": score, "metric": "balanced_accuracy", "n_examples": 10, "n_failed": 0}
            for name in ("detection", "fuzzing")
        }
        results.append({"run_key": "k", "latent": latent, "explanation": {"text": f"words {latent}"}, "scores": scores})
    results.append({"run_key": "k", "latent": 11, "skipped": "dead: never fired"})
    results.close()


def test_a_third_party_export_format_is_a_choice_of_export_and_writes_files(tmp_path):
    """An export format from an installed plugin (an entry point, found by the registry) is listed by
    ``sae-autointerp export --help`` with its options beside the built-in formats, and ``export --format``
    writes with it; a plugin's factory that does not make an Exporter is left out with a warning."""
    root = tmp_path / "site"
    root.mkdir()
    make_dist(root, "sai_csv_exporter", CSV_EXPORTER)
    run = tmp_path / "run"
    write_run(run)

    shown = run_cli(root, "export", "--help")
    assert shown.returncode == 0, shown.stderr
    assert "--format {csv,delphi,neuronpedia,saebench}" in shown.stdout
    assert (
        "--format csv:" in shown.stdout and "--sep SEP" in shown.stdout and "csv: the column separator" in shown.stdout
    )
    assert "--module MODULE" in shown.stdout  # the built-ins' options are still there
    assert "export format 'not-an-exporter' left out" in shown.stderr and "sai_csv_exporter" in shown.stderr

    out = run_cli(root, "export", str(run), "--format", "csv", "--out", str(tmp_path / "csv"), "--sep", ";")
    assert out.returncode == 0, out.stderr
    assert f"wrote 3 latents to 1 file(s) under {tmp_path / 'csv'}" in out.stdout
    assert "left out 11: dead: never fired" in out.stdout
    lines = (tmp_path / "csv" / "scores.csv").read_text().splitlines()
    assert lines[0] == "latent;scorer;score" and len(lines) == 1 + 3 * 2 and "7;fuzzing;0.5" in lines

    only = run_cli(root, "export", str(run), "--format", "csv", "--out", str(tmp_path / "d"), "--scorer", "fuzzing")
    assert only.returncode == 0, only.stderr
    assert (tmp_path / "d" / "scores.csv").read_text().splitlines()[1:] == [
        "3,fuzzing,0.75",
        "7,fuzzing,0.5",
        "9,fuzzing,0.9",
    ]

    wrong = run_cli(root, "export", str(run), "--format", "not-an-exporter", "--out", str(tmp_path / "x"))
    assert wrong.returncode == 2 and "invalid choice: 'not-an-exporter'" in wrong.stderr

    blocked = run_cli(root, "export", "--help", env={"SAE_AUTOINTERP_BLOCK_PLUGINS": "sai_csv_exporter"})
    assert "--format {delphi,neuronpedia,saebench}" in blocked.stdout and "--sep" not in blocked.stdout

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

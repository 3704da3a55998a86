"""The plugin registry (sae_lens_autointerp.registry) with real pluggy and real entry points.

Small distributions (a module plus a dist-info with an entry point) are written into a folder that is put on
``sys.path``, so ``importlib.metadata`` finds them exactly as it finds installed ones. Most tests build a
fresh :class:`Registry` in this process (fast); two run a fresh interpreter through ``get_registry()`` and
the CLI, as a user's process would.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sae_lens_autointerp
from sae_lens_autointerp import hookimpl
from sae_lens_autointerp import registry as registry_module
from sae_lens_autointerp.errors import PluginError, UnknownPluginItemError
from sae_lens_autointerp.registry import Registry

PACKAGE = Path(sae_lens_autointerp.__file__).resolve().parent
ENV_VARS = ("SAE_AUTOINTERP_BLOCK_PLUGINS", "SAE_AUTOINTERP_LOAD_PLUGINS", "SAE_AUTOINTERP_TRACE_PLUGINS")

# module name -> (distribution name, version, source)
DISTS = {
    "sai_clash_builtin": (
        "sai-clash-builtin",
        "0.3.0",
        """
        from sae_lens_autointerp import hookimpl

        class Impostor:
            name = "detection"

        class Own:
            name = "clash-only"

        @hookimpl
        def sae_autointerp_scorers():
            return {"detection": Impostor, "clash-only": Own}
    """,
    ),
    "sai_dup_a": (
        "sai-dup-a",
        "0.3.0",
        """
        from sae_lens_autointerp import hookimpl

        class TwinA:
            name = "twin"

        @hookimpl
        def sae_autointerp_scorers():
            return {"twin": TwinA, "only-a": TwinA}
    """,
    ),
    "sai_dup_b": (
        "sai-dup-b",
        "0.4.0",
        """
        from sae_lens_autointerp import hookimpl

        class TwinB:
            name = "twin"

        @hookimpl
        def sae_autointerp_scorers():
            return {"twin": TwinB, "only-b": TwinB}
    """,
    ),
    "sai_hider": (
        "sai-hider",
        "1.0.0",
        """
        from sae_lens_autointerp import hookimpl

        class Visible:
            name = "visible"

        @hookimpl
        def sae_autointerp_scorers():
            return {"visible": Visible, "hidden-x": Visible}
    """,
    ),
    # a new-style wrapper around every plugin's scorers hook: drops names starting with "hidden-"
    "sai_wrap_new": (
        "sai-wrap-new",
        "1.0.0",
        """
        from sae_lens_autointerp import hookimpl

        CALLS = []

        @hookimpl(wrapper=True)
        def sae_autointerp_scorers():
            results = yield
            CALLS.append([sorted(r) for r in results])
            return [{k: v for k, v in r.items() if not k.startswith("hidden-")} for r in results]
    """,
    ),
    # an old-style hookwrapper around every plugin's explainers hook: only records what it saw
    "sai_wrap_old": (
        "sai-wrap-old",
        "1.0.0",
        """
        from sae_lens_autointerp import hookimpl

        CALLS = []

        @hookimpl(hookwrapper=True)
        def sae_autointerp_explainers():
            outcome = yield
            CALLS.append([sorted(r) for r in outcome.get_result()])
    """,
    ),
    "sai_future": (
        "sai-future",
        "0.3.0",
        """
        from sae_lens_autointerp import hookimpl

        SAE_AUTOINTERP_HOOKSPEC_VERSION = 99

        @hookimpl
        def sae_autointerp_scorers():
            return {"future": object}
    """,
    ),
    "sai_raises": ("sai-raises", "0.3.0", "raise RuntimeError('this plugin is broken on purpose')\n"),
    "sai_garbage": (
        "sai-garbage",
        "0.3.0",
        """
        from sae_lens_autointerp import hookimpl

        @hookimpl
        def sae_autointerp_scorers():
            return "not a mapping"

        @hookimpl
        def sae_autointerp_explainers():
            return {"fine-explainer": dict}
    """,
    ),
    "sai_typo": (
        "sai-typo",
        "0.3.0",
        """
        from sae_lens_autointerp import hookimpl

        @hookimpl
        def sae_autointerp_scorer():  # misspelled hook name
            return {}
    """,
    ),
}


def make_dist(root: Path, module: str, dist: str, version: str, source: str, entry: str | None = None) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[sae_lens_autointerp]\n{entry or module} = {module}\n")


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    for module, (dist, version, source) in DISTS.items():
        make_dist(root, module, dist, version, source)
    importlib.invalidate_caches()
    yield root
    for module in DISTS:
        sys.modules.pop(module, None)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def site(site_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(site_dir))
    importlib.invalidate_caches()
    return site_dir


# -- precedence ---------------------------------------------------------------------------------------------


def test_builtin_wins_a_clash_and_failures_name_both_plugins_and_distributions(site, caplog):
    from sae_lens_autointerp.scorers import DetectionScorer

    with caplog.at_level(logging.WARNING, logger="sae_lens_autointerp"):
        registry = Registry()
        detection = registry.get("scorers", "detection")
    assert detection.plugin == "builtin" and detection.factory is DetectionScorer
    assert registry.get("scorers", "clash-only").plugin == "sai_clash_builtin"  # the rest of the loser works
    version = sae_lens_autointerp.__version__
    message = registry.failures["sai_clash_builtin"]
    assert "scorer 'detection'" in message
    assert f"'builtin' (sae-lens-autointerp {version})" in message
    assert "'sai_clash_builtin' (sai-clash-builtin 0.3.0)" in message
    assert "builtin" not in registry.failures
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("sai-clash-builtin 0.3.0" in w and "sae-lens-autointerp" in w for w in warned)
    info = {p.name: p for p in registry.plugins()}["sai_clash_builtin"]
    assert info.provides == {"scorers": ["clash-only"]} and info.error == message


def test_two_third_party_plugins_with_one_name_are_refused_on_use(site, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="sae_lens_autointerp"):
        registry = Registry()
        items = registry.items("scorers")
    assert "twin" not in items and items["only-a"].plugin == "sai_dup_a" and items["only-b"].plugin == "sai_dup_b"
    for use in (
        lambda: registry.get("scorers", "twin"),
        lambda: registry.create("scorers", "twin"),
        lambda: registry.provenance("scorers", "twin"),
    ):
        with pytest.raises(PluginError) as info:
            use()
        assert not isinstance(info.value, UnknownPluginItemError)
        message = str(info.value)
        assert "scorer 'twin' is provided by 2 plugins" in message
        assert "'sai_dup_a' (sai-dup-a 0.3.0)" in message and "'sai_dup_b' (sai-dup-b 0.4.0)" in message
        assert "SAE_AUTOINTERP_BLOCK_PLUGINS=sai_dup_" in message
    assert any("'twin'" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert not {"sai_dup_a", "sai_dup_b"} & set(registry.failures)

    # doing what the message says resolves it
    blocked, kept = re.search(r"SAE_AUTOINTERP_BLOCK_PLUGINS=(\S+) keeps plugin '(\w+)'", message).groups()
    assert {blocked, kept} == {"sai_dup_a", "sai_dup_b"}
    monkeypatch.setenv("SAE_AUTOINTERP_BLOCK_PLUGINS", blocked)
    assert Registry().provenance("scorers", "twin")["plugin"] == kept
    monkeypatch.setenv("SAE_AUTOINTERP_BLOCK_PLUGINS", "sai_dup_b")
    assert Registry().provenance("scorers", "twin") == {
        "plugin": "sai_dup_a",
        "distribution": "sai-dup-a",
        "version": "0.3.0",
    }


# -- provenance ---------------------------------------------------------------------------------------------


def test_provenance_of_builtin_and_third_party_items(site):
    registry = Registry()
    version = sae_lens_autointerp.__version__
    assert version == importlib.metadata.version("sae-lens-autointerp")
    assert registry.provenance("scorers", "detection") == {
        "plugin": "builtin",
        "distribution": "sae-lens-autointerp",
        "version": version,
    }
    assert registry.provenance("llm_clients", "openai")["distribution"] == "sae-lens-autointerp"
    assert registry.provenance("scorers", "only-b") == {
        "plugin": "sai_dup_b",
        "distribution": "sai-dup-b",
        "version": "0.4.0",
    }
    assert registry.provenance("explainers", "fine-explainer") == {
        "plugin": "sai_garbage",
        "distribution": "sai-garbage",
        "version": "0.3.0",
    }
    with pytest.raises(UnknownPluginItemError, match=r"unknown scorer 'nope'\. Available: "):
        registry.provenance("scorers", "nope")


def test_provenance_of_a_plugin_registered_by_hand():
    class Mine:
        @hookimpl
        def sae_autointerp_scorers(self):
            return {"mine": dict}

    registry = Registry(load_entry_points=False, builtins=False)
    registry.pm.register(Mine(), name="mine-plugin")
    assert registry.provenance("scorers", "mine") == {"plugin": "mine-plugin", "distribution": None, "version": None}


# -- hooks go through pluggy's hook callers, once -----------------------------------------------------------


def test_wrappers_run_around_every_plugins_call(site):
    import sai_wrap_new
    import sai_wrap_old

    new_before, old_before = len(sai_wrap_new.CALLS), len(sai_wrap_old.CALLS)
    registry = Registry()
    scorers, _ = registry.items("scorers"), registry.items("explainers")  # both hooks run through the wrappers
    # the new-style wrapper's edit took effect: pluggy ran it around sai_hider's implementation
    assert scorers["visible"].plugin == "sai_hider" and "hidden-x" not in scorers
    new_calls = sai_wrap_new.CALLS[new_before:]
    assert ["hidden-x", "visible"] in [names for call in new_calls for names in call]
    assert any("detection" in names for call in new_calls for names in call)  # around the built-in's call too
    old_calls = sai_wrap_old.CALLS[old_before:]
    assert any("default" in names for call in old_calls for names in call)
    assert ["fine-explainer"] in [names for call in old_calls for names in call]
    assert {"sai_wrap_new", "sai_wrap_old"}.isdisjoint(registry.failures)
    # one wrapped call per plugin that implements the hook, not one per lookup
    plain = {i.plugin_name for i in registry.pm.hook.sae_autointerp_scorers.get_hookimpls() if not i.wrapper}
    assert len(new_calls) == len(plain)
    for _ in range(3):
        registry.items("scorers"), registry.get("scorers", "visible"), registry.plugins(), registry.failures
    assert len(sai_wrap_new.CALLS) - new_before == len(plain)


class Counter:
    def __init__(self):
        self.calls = {"scorers": 0, "explainers": 0, "llm_clients": 0}

    @hookimpl
    def sae_autointerp_scorers(self):
        self.calls["scorers"] += 1
        return {"counted": dict}

    @hookimpl
    def sae_autointerp_explainers(self):
        self.calls["explainers"] += 1
        return {"counted": dict}

    @hookimpl
    def sae_autointerp_llm_clients(self):
        self.calls["llm_clients"] += 1
        return None


class Garbage:
    @hookimpl
    def sae_autointerp_scorers(self):
        return ["not", "a", "mapping"]


def test_hooks_are_called_once_per_registry_and_failures_are_not_repeated():
    counter = Counter()
    registry = Registry(load_entry_points=False, builtins=False)
    registry.pm.register(counter, name="counter")
    registry.pm.register(Garbage(), name="garbage")
    assert counter.calls == {"scorers": 0, "explainers": 0, "llm_clients": 0}  # nothing is called until used
    for _ in range(5):
        registry.items("scorers"), registry.items("explainers"), registry.items("llm_clients")
        registry.get("scorers", "counted"), registry.create("explainers", "counted"), registry.plugins()
        registry.provenance("scorers", "counted")
        with pytest.raises(UnknownPluginItemError):
            registry.get("scorers", "nope")
    assert counter.calls == {"scorers": 1, "explainers": 1, "llm_clients": 1}
    assert registry.failures == {
        "garbage": "hook sae_autointerp_scorers failed: PluginError: expected a mapping of name -> factory, got list"
    }

    class Late:
        @hookimpl
        def sae_autointerp_scorers(self):
            return {"late": dict}

    registry.pm.register(Late(), name="late")  # a change of plugins is seen (the items are collected again)
    assert registry.get("scorers", "late").plugin == "late"
    assert counter.calls["scorers"] == 2
    registry.items("scorers")
    assert counter.calls["scorers"] == 2


def test_a_failing_wrapper_is_booked_on_the_wrapper_and_a_failing_plugin_on_the_plugin():
    class BadWrapper:
        @hookimpl(wrapper=True)
        def sae_autointerp_scorers(self):
            yield
            raise RuntimeError("wrapper bug")

    class Good:
        @hookimpl
        def sae_autointerp_scorers(self):
            return {"good": dict}

    class Crashing:
        @hookimpl
        def sae_autointerp_scorers(self):
            raise ZeroDivisionError("hook bug")

    registry = Registry(load_entry_points=False, builtins=False)
    for name, plugin in (("bad-wrapper", BadWrapper()), ("good", Good()), ("crashing", Crashing())):
        registry.pm.register(plugin, name=name)
    assert registry.get("scorers", "good").plugin == "good"
    failures = registry.failures
    assert set(failures) == {"bad-wrapper", "crashing"}
    assert failures["bad-wrapper"] == (
        "hook sae_autointerp_scorers wrapper failed around plugin 'good': RuntimeError: wrapper bug"
    )
    assert failures["crashing"] == "hook sae_autointerp_scorers failed: ZeroDivisionError: hook bug"


# -- environment variables ----------------------------------------------------------------------------------


def test_trace_env_var_prints_hook_calls(monkeypatch, capsys):
    Registry(load_entry_points=False).items("scorers")
    assert "[sae_lens_autointerp]" not in capsys.readouterr().err  # off by default

    monkeypatch.setenv("SAE_AUTOINTERP_TRACE_PLUGINS", "1")
    registry = Registry(load_entry_points=False)
    registry.items("scorers")
    err = capsys.readouterr().err
    assert "[sae_lens_autointerp] calling sae_autointerp_scorers on builtin" in err
    assert "[sae_lens_autointerp] sae_autointerp_scorers returned [['detection', 'embedding', 'fuzzing'" in err
    assert "calling sae_autointerp_llm_clients on builtin" in err
    registry.items("scorers")
    assert capsys.readouterr().err == ""  # cached: no second call


def test_allow_list_env_var(site, monkeypatch):
    monkeypatch.setenv("SAE_AUTOINTERP_LOAD_PLUGINS", "builtin, sai_dup_a")
    registry = Registry()
    assert [p.name for p in registry.plugins()] == ["builtin", "sai_dup_a"]
    assert registry.get("scorers", "twin").plugin == "sai_dup_a"  # sai_dup_b is not loaded: no clash
    assert registry.get("scorers", "detection").plugin == "builtin" and registry.failures == {}

    monkeypatch.setenv("SAE_AUTOINTERP_LOAD_PLUGINS", "sai_dup_b,sai_nosuch")  # builtin must be named
    registry = Registry()
    assert sorted(registry.items("scorers")) == ["only-b", "twin"]
    with pytest.raises(UnknownPluginItemError, match=r"unknown scorer 'detection'.*SAE_AUTOINTERP_LOAD_PLUGINS"):
        registry.get("scorers", "detection")
    assert "named in SAE_AUTOINTERP_LOAD_PLUGINS" in registry.failures["sai_nosuch"]

    monkeypatch.setenv("SAE_AUTOINTERP_BLOCK_PLUGINS", "sai_dup_b")  # blocking wins over allowing
    assert sorted(Registry().items("scorers")) == []


def test_block_env_var_blocks_builtins(monkeypatch):
    monkeypatch.setenv("SAE_AUTOINTERP_BLOCK_PLUGINS", "builtin")
    registry = Registry(load_entry_points=False)
    assert registry.plugins() == [] and registry.items("llm_clients") == {} and registry.failures == {}


# -- loading failures stay with their plugin ----------------------------------------------------------------


def test_hookspec_gate_and_failure_isolation(site):
    registry = Registry()
    failures = registry.failures
    assert failures["sai_future"] == (
        "PluginError: needs hookspec version 99, this sae-lens-autointerp has 1; upgrade sae-lens-autointerp"
    )
    assert not registry.pm.has_plugin("sai_future") and "future" not in registry.items("scorers")
    assert failures["sai_raises"] == "RuntimeError: this plugin is broken on purpose"
    assert failures["sai_garbage"] == (
        "hook sae_autointerp_scorers failed: PluginError: expected a mapping of name -> factory, got str"
    )
    assert registry.get("explainers", "fine-explainer").plugin == "sai_garbage"  # its other hook still works
    assert "unknown hook 'sae_autointerp_scorer'" in failures["sai_typo"] and not registry.pm.has_plugin("sai_typo")
    assert registry.get("scorers", "detection").plugin == "builtin" and "builtin" not in failures
    infos = {p.name: p for p in registry.plugins()}
    assert infos["sai_future"].version == "0.3.0" and infos["sai_future"].source == "entry point sai-future"
    assert infos["builtin"].source == "builtin" and infos["builtin"].version == sae_lens_autointerp.__version__
    with pytest.raises(UnknownPluginItemError, match=r"Plugins that failed to load: .*sai_raises \(RuntimeError"):
        registry.get("scorers", "future")


def test_two_distributions_with_one_entry_point_name(tmp_path, monkeypatch):
    make_dist(tmp_path, "sai_same_one", "sai-same-one", "1.0.0", DISTS["sai_dup_a"][2], entry="sai_same")
    make_dist(tmp_path, "sai_same_two", "sai-same-two", "2.0.0", DISTS["sai_dup_b"][2], entry="sai_same")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setenv("SAE_AUTOINTERP_LOAD_PLUGINS", "sai_same")
    registry = Registry()
    (loser,) = [name for name in registry.failures if name.startswith("sai_same (")]
    assert "entry point name 'sai_same' is already taken by sai-same-" in registry.failures[loser]
    assert registry.get("scorers", "twin").plugin == "sai_same"
    for module in ("sai_same_one", "sai_same_two"):
        sys.modules.pop(module, None)


def test_missing_builtin_entry_point_is_reported(monkeypatch):
    monkeypatch.setattr(registry_module, "_entry_points", lambda: ([], []))
    registry = Registry(load_entry_points=False)
    assert "declares no entry point" in registry.failures["builtin"] and registry.items("scorers") == {}


# -- layering and compatibility -----------------------------------------------------------------------------


def _imports(path: Path) -> list[tuple[str, str]]:
    """(imported module, where) for every import in a file; where = "module", "Registry" or a function."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, str]] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, where) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = "." * child.level + (child.module or "")
                found.extend((base + a.name if not child.module else base, where) for a in child.names)
            inner = where
            if isinstance(child, ast.ClassDef):
                inner = child.name
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and where == "module":
                inner = child.name
            visit(child, inner)

    visit(tree, "module")
    return found


def test_layering():
    spec_imports = {name for name, _ in _imports(PACKAGE / "hookspecs.py")}
    assert spec_imports == {"__future__", "collections.abc", "typing", "pluggy"}
    forbidden = ("builtin", "scorers", "explainers", "llm", "plugin", "sae_lens_autointerp")
    for name, where in _imports(PACKAGE / "registry.py"):
        if where in ("module", "Registry"):
            assert not name.lstrip(".").startswith(forbidden) and name != ".", (name, where)
    assert ("._version", "module") in _imports(PACKAGE / "registry.py")
    for path in (PACKAGE / "llm").glob("*.py"):
        for name, where in _imports(path):
            assert "registry" not in name and "plugin" not in name, (path.name, name, where)


def test_plugin_module_reexports_the_new_modules():
    from sae_lens_autointerp import hookspecs, plugin

    for name in ("hookimpl", "hookspec", "HOOKSPEC_VERSION"):
        assert getattr(plugin, name) is getattr(hookspecs, name)
    for name in ("Registry", "get_registry", "PluginInfo", "RegisteredItem"):
        assert getattr(plugin, name) is getattr(registry_module, name)
    assert sae_lens_autointerp.hookimpl is hookspecs.hookimpl
    assert sae_lens_autointerp.get_registry is registry_module.get_registry


# -- a fresh interpreter, as a user's process -------------------------------------------------------------


def _fresh(site: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    full.update({"HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env})
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full, timeout=300)


FRESH = """
import json
from sae_lens_autointerp import get_registry
from sae_lens_autointerp.errors import PluginError
r = get_registry()
out = {"failures": r.failures, "detection": r.provenance("scorers", "detection"),
       "only_a": r.provenance("scorers", "only-a")}
try:
    r.create("scorers", "twin")
except PluginError as exc:
    out["twin"] = str(exc)
print("RESULT " + json.dumps(out))
"""


def test_fresh_interpreter_precedence_and_provenance(site_dir):
    proc = _fresh(site_dir, ["-c", FRESH], {})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert out["detection"] == {
        "plugin": "builtin",
        "distribution": "sae-lens-autointerp",
        "version": sae_lens_autointerp.__version__,
    }
    assert out["only_a"] == {"plugin": "sai_dup_a", "distribution": "sai-dup-a", "version": "0.3.0"}
    assert "sai-clash-builtin 0.3.0" in out["failures"]["sai_clash_builtin"]
    assert "sai-dup-a 0.3.0" in out["twin"] and "sai-dup-b 0.4.0" in out["twin"]
    assert "[sae_lens_autointerp]" not in proc.stderr


def test_fresh_interpreter_cli_with_trace_and_allow_list(site_dir):
    proc = _fresh(
        site_dir,
        ["-m", "sae_lens_autointerp.cli", "plugins", "--json"],
        {"SAE_AUTOINTERP_TRACE_PLUGINS": "1", "SAE_AUTOINTERP_LOAD_PLUGINS": "sai_dup_b,sai_nosuch"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    infos = {p["name"]: p for p in json.loads(proc.stdout)}  # the trace goes to stderr, stdout stays JSON
    assert sorted(infos) == ["sai_dup_b", "sai_nosuch"]
    assert (
        infos["sai_dup_b"]["provides"] == {"scorers": ["only-b", "twin"]} and infos["sai_dup_b"]["version"] == "0.4.0"
    )
    assert "SAE_AUTOINTERP_LOAD_PLUGINS" in infos["sai_nosuch"]["error"]
    assert "[sae_lens_autointerp] calling sae_autointerp_scorers on sai_dup_b" in proc.stderr
    assert "[sae_lens_autointerp] sae_autointerp_scorers returned [['only-b', 'twin']]" in proc.stderr

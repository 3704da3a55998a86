"""Plugin system: hook specifications and the one plugin manager.

Scorers, explainers and LLM clients are all provided through the hooks below, the built-ins included
(``sae_lens_autointerp.builtin``), so a third-party package is a first-class citizen: it declares an entry
point in the group ``sae_lens_autointerp`` pointing at a module or object with ``@hookimpl`` functions.

Set ``SAE_AUTOINTERP_BLOCK_PLUGINS=name1,name2`` to block plugins by name (entry-point name or the
registered plugin name; ``builtin`` blocks the built-ins).
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from .errors import PluginError, UnknownPluginItemError

PROJECT_NAME = "sae_lens_autointerp"
ENTRY_POINT_GROUP = "sae_lens_autointerp"
BLOCK_ENV_VAR = "SAE_AUTOINTERP_BLOCK_PLUGINS"
#: Version of the hook specifications below. Bumped on any incompatible change; plugins may declare
#: ``SAE_AUTOINTERP_HOOKSPEC_VERSION`` and are rejected with a clear error when it is newer than ours.
HOOKSPEC_VERSION = 1

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

KINDS = ("scorers", "explainers", "llm_clients")


class AutointerpSpecs:
    """Hook specifications (version :data:`HOOKSPEC_VERSION`).

    Each hook returns a mapping ``name -> factory``. The factory is called with the keyword arguments the
    user passed for that item (for example ``scorer_kwargs``) and returns the object implementing the
    matching protocol. Returning ``None`` or ``{}`` is allowed (the plugin provides nothing of that kind).
    """

    @hookspec
    def sae_autointerp_scorers(self) -> Mapping[str, Callable[..., Any]] | None:
        """Return ``{name: factory}`` of scorers (objects implementing ``scorers.Scorer``)."""

    @hookspec
    def sae_autointerp_explainers(self) -> Mapping[str, Callable[..., Any]] | None:
        """Return ``{name: factory}`` of explainers (objects implementing ``explainers.Explainer``)."""

    @hookspec
    def sae_autointerp_llm_clients(self) -> Mapping[str, Callable[..., Any]] | None:
        """Return ``{prefix: factory}`` of LLM clients. ``llm="prefix:model"`` calls
        ``factory(model="model", **llm_kwargs)``; ``llm="prefix"`` calls ``factory(model=None, ...)``."""


@dataclass(frozen=True)
class PluginInfo:
    """What ``sae-autointerp plugins`` shows about one plugin."""

    name: str
    version: str
    source: str  # "builtin" or "entry point <dist>"
    provides: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None  # set when the plugin failed to import or its hooks misbehaved


@dataclass(frozen=True)
class RegisteredItem:
    name: str
    kind: str
    plugin: str
    factory: Callable[..., Any]


class Registry:
    """The plugin manager plus the failures met while loading plugins."""

    def __init__(self, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(AutointerpSpecs)
        self.failures: dict[str, str] = {}
        self._versions: dict[str, tuple[str, str]] = {}
        blocked = _blocked_names()
        for name in blocked:
            self.pm.set_blocked(name)

        from . import builtin

        if "builtin" not in blocked:
            self.pm.register(builtin, name="builtin")
            self._versions["builtin"] = (_own_version(), "builtin")
        if load_entry_points:
            self._load_entry_points(blocked)
        self.pm.check_pending()

    def _load_entry_points(self, blocked: set[str]) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked or self.pm.has_plugin(ep.name):
                continue
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            try:
                plugin = ep.load()
                declared = getattr(plugin, "SAE_AUTOINTERP_HOOKSPEC_VERSION", HOOKSPEC_VERSION)
                if int(declared) > HOOKSPEC_VERSION:
                    raise PluginError(
                        f"needs hookspec version {declared}, this sae-lens-autointerp has {HOOKSPEC_VERSION}; "
                        "upgrade sae-lens-autointerp"
                    )
                self.pm.register(plugin, name=ep.name)
            except Exception as exc:  # a broken plugin must not take the others down
                self.failures[ep.name] = f"{type(exc).__name__}: {exc}"
                self._versions[ep.name] = (version, f"entry point {dist}")
                continue
            self._versions[ep.name] = (version, f"entry point {dist}")

    def items(self, kind: str) -> dict[str, RegisteredItem]:
        """All items of one kind (``scorers``, ``explainers``, ``llm_clients``), by name.

        Built-ins are registered first, so on a name clash the built-in wins and the clash is recorded in
        :attr:`failures` under the plugin that lost.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown plugin kind {kind!r}; expected one of {KINDS}")
        out: dict[str, RegisteredItem] = {}
        for plugin_name, provided in self._collect(kind):
            for name, factory in provided.items():
                if name in out:
                    self.failures.setdefault(
                        plugin_name, f"{kind[:-1]} {name!r} already provided by plugin {out[name].plugin!r}"
                    )
                    continue
                out[name] = RegisteredItem(name=name, kind=kind, plugin=plugin_name, factory=factory)
        return out

    def _collect(self, kind: str) -> list[tuple[str, dict[str, Callable[..., Any]]]]:
        """Call one hook on each plugin separately so a crash or bad return names its plugin."""
        hook_name = f"sae_autointerp_{kind}"
        # pluggy calls implementations last-registered-first; we want registration order (built-ins first).
        impls = list(reversed(getattr(self.pm.hook, hook_name).get_hookimpls()))
        results = []
        for impl in impls:
            try:
                provided = impl.function()
                provided = _validate_provided(provided, kind)
            except Exception as exc:
                self.failures[impl.plugin_name] = (
                    f"hook {hook_name} failed: {type(exc).__name__}: {exc}"
                )
                continue
            results.append((impl.plugin_name, provided))
        return results

    def get(self, kind: str, name: str) -> RegisteredItem:
        available = self.items(kind)
        if name not in available:
            singular = kind[:-1].replace("_", " ")
            listed = ", ".join(sorted(available)) or "(none)"
            hint = ""
            broken = {k: v for k, v in self.failures.items()}
            if broken:
                hint = " Plugins that failed to load: " + "; ".join(f"{k} ({v})" for k, v in broken.items()) + "."
            raise UnknownPluginItemError(
                f"unknown {singular} {name!r}. Available: {listed}.{hint} Install the plugin that provides it "
                f"(it registers through the entry-point group {ENTRY_POINT_GROUP!r}), or check "
                f"{BLOCK_ENV_VAR} is not blocking it."
            )
        return available[name]

    def create(self, kind: str, name: str, **kwargs: Any) -> Any:
        """Instantiate the named item; a crash in the plugin's factory names the plugin."""
        item = self.get(kind, name)
        try:
            return item.factory(**kwargs)
        except Exception as exc:
            raise PluginError(
                f"plugin {item.plugin!r} failed to create {kind[:-1]} {name!r}: {type(exc).__name__}: {exc}"
            ) from exc

    def plugins(self) -> list[PluginInfo]:
        per_plugin: dict[str, dict[str, list[str]]] = {}
        for kind in KINDS:
            for item in self.items(kind).values():
                per_plugin.setdefault(item.plugin, {}).setdefault(kind, []).append(item.name)
        names = list(self._versions)
        infos = []
        for name in names:
            version, source = self._versions[name]
            infos.append(
                PluginInfo(
                    name=name,
                    version=version,
                    source=source,
                    provides={k: sorted(v) for k, v in per_plugin.get(name, {}).items()},
                    error=self.failures.get(name),
                )
            )
        return infos


def _validate_provided(provided: Any, kind: str) -> dict[str, Callable[..., Any]]:
    if provided is None:
        return {}
    if not isinstance(provided, Mapping):
        raise PluginError(f"expected a mapping of name -> factory, got {type(provided).__name__}")
    out = {}
    for name, factory in provided.items():
        if not isinstance(name, str) or not name:
            raise PluginError(f"{kind} names must be non-empty strings, got {name!r}")
        if not callable(factory):
            raise PluginError(f"factory for {name!r} is not callable ({type(factory).__name__})")
        out[name] = factory
    return out


def _blocked_names() -> set[str]:
    raw = os.environ.get(BLOCK_ENV_VAR, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def _own_version() -> str:
    from . import __version__

    return __version__


_lock = threading.Lock()
_registry: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry, built on first use (entry points are scanned once)."""
    global _registry
    with _lock:
        if _registry is None or refresh:
            _registry = Registry()
        return _registry

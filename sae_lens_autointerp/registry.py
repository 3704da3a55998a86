"""The plugin registry: one pluggy manager, entry-point discovery, precedence, provenance.

It knows no built-in. The built-in scorers, explainers, LLM backends and export formats are a plugin module of
their own, ``sae_lens_autointerp.builtin``, declared through this distribution's own entry point::

    [project.entry-points.sae_lens_autointerp]
    builtin = "sae_lens_autointerp.builtin"

so they are discovered, blocked, allow-listed, traced and versioned exactly like a third-party plugin. (pytest
does not do this: it imports its built-in plugins by name from a list in its code, ``_pytest.config``'s
``default_plugins``, and reads only third-party plugins from its ``pytest11`` entry points.)
``Registry(load_entry_points=False)`` still loads this distribution's own entry points (the built-ins) and
skips every other distribution's; ``Registry(load_entry_points=False, builtins=False)`` is an empty manager
(tests register plugins by hand on ``registry.pm``).

Environment variables (read when a :class:`Registry` is built, i.e. once per process by
:func:`get_registry`):

* ``SAE_AUTOINTERP_BLOCK_PLUGINS=a,b``: never load these entry points (``builtin`` blocks the built-ins);
* ``SAE_AUTOINTERP_LOAD_PLUGINS=a,b``: load only these entry points (``builtin`` must be named to keep the
  built-ins); a name that no installed distribution declares is reported in :attr:`Registry.failures`;
* ``SAE_AUTOINTERP_TRACE_PLUGINS=1``: log every hook call and its result to the logger
  ``sae_lens_autointerp.trace``, which then (and only then) writes to stderr.

Hooks are called through pluggy's hook callers, once per registry: each plugin's implementation through
``pm.subset_hook_caller(hook, remove_plugins=<every other plugin except the wrappers>)``, so pluggy's
``hookwrapper=True`` / ``wrapper=True`` implementations run around every plugin's call, hook-call
monitoring sees every call, and a crash or a bad return is still attributed to the plugin that caused it.
The result is cached; it is collected again only when the set of registered plugins changes.

Precedence: **the built-in wins**. A third-party plugin providing a built-in name is recorded in
:attr:`Registry.failures` (naming both plugins and both distributions) and logged; the built-in is used.
Two third-party plugins providing the same name: the name is refused when used
(:class:`~sae_lens_autointerp.errors.PluginError` naming both, and how to keep one).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import sys
import threading
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import pluggy

from ._version import __version__
from .errors import ConfigError, PluginError, UnknownPluginItemError
from .hookspecs import HOOKSPEC_VERSION, PROJECT_NAME, AutointerpSpecs

if TYPE_CHECKING:
    from .llm.types import LLMClient

ENTRY_POINT_GROUP = PROJECT_NAME
#: The distribution whose own entry points are the built-ins (and win name clashes).
DISTRIBUTION = "sae-lens-autointerp"
BUILTIN = "builtin"
BLOCK_ENV_VAR = "SAE_AUTOINTERP_BLOCK_PLUGINS"
LOAD_ENV_VAR = "SAE_AUTOINTERP_LOAD_PLUGINS"
TRACE_ENV_VAR = "SAE_AUTOINTERP_TRACE_PLUGINS"
KINDS = ("scorers", "explainers", "llm_clients", "exporters")

logger = logging.getLogger(__name__)
#: Hook-call tracing. Setting SAE_AUTOINTERP_TRACE_PLUGINS asks for the trace on stderr, so only then does
#: this logger get a handler (:func:`_trace_to_stderr`); the library adds no handler otherwise.
trace_logger = logging.getLogger("sae_lens_autointerp.trace")


@dataclass(frozen=True)
class PluginInfo:
    """What ``sae-autointerp plugins`` shows about one plugin."""

    name: str
    version: str
    source: str  # "builtin", "entry point <dist>" or "registered in process"
    provides: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None  # set when the plugin failed to import or its hooks misbehaved


@dataclass(frozen=True)
class RegisteredItem:
    """One scorer / explainer / LLM backend and the plugin (and distribution) that provides it."""

    name: str
    kind: str
    plugin: str
    factory: Callable[..., Any]
    distribution: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class _Source:
    distribution: str | None
    version: str | None
    builtin: bool
    how: str  # "entry point" or "registered in process"


@dataclass
class _Collected:
    items: dict[str, dict[str, RegisteredItem]]
    ambiguous: dict[str, dict[str, list[RegisteredItem]]]
    provides: dict[str, dict[str, list[str]]]
    failures: dict[str, list[str]]


class Registry:
    """The plugin manager (:attr:`pm`) plus what its plugins provide and the failures met on the way."""

    def __init__(self, load_entry_points: bool = True, *, builtins: bool = True) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(AutointerpSpecs)
        self._lock = threading.RLock()
        self._load_failures: dict[str, list[str]] = {}
        self._sources: dict[str, _Source] = {}
        self._collected: _Collected | None = None
        self._snapshot: list[tuple[str, Any]] = []
        self._blocked = _env_names(BLOCK_ENV_VAR) or set()
        self._allowed = _env_names(LOAD_ENV_VAR)  # None when unset: everything not blocked loads
        for name in self._blocked:
            self.pm.set_blocked(name)
        if os.environ.get(TRACE_ENV_VAR, "").strip() not in ("", "0"):
            _trace_to_stderr()
            self.pm.add_hookcall_monitoring(_trace_before, _trace_after)
        self._load(load_entry_points=load_entry_points, builtins=builtins)
        self.pm.check_pending()

    # -- loading -------------------------------------------------------------------------------------------

    def _load(self, load_entry_points: bool, builtins: bool) -> None:
        own, others = _entry_points()
        chosen = [(ep, True) for ep in own if builtins] + [(ep, False) for ep in others if load_entry_points]
        if builtins and not own and self._wanted(BUILTIN):
            self._fail(
                BUILTIN,
                f"the {DISTRIBUTION} distribution declares no entry point in the group "
                f"{ENTRY_POINT_GROUP!r} (stale or missing install metadata), so the built-ins are "
                f"not registered; reinstall it (pip install -e .)",
            )
        for ep, is_own in chosen:
            if self._wanted(ep.name):
                self._load_entry_point(ep, builtin=is_own)
        if self._allowed is not None:
            declared = {ep.name for ep in own + others}
            for name in sorted(self._allowed - declared - self._blocked):
                self._fail(
                    name,
                    f"named in {LOAD_ENV_VAR} but no installed distribution declares an entry point "
                    f"{name!r} in the group {ENTRY_POINT_GROUP!r}",
                )
                self._sources.setdefault(name, _Source(None, None, False, "not installed"))

    def _wanted(self, name: str) -> bool:
        return name not in self._blocked and (self._allowed is None or name in self._allowed)

    def _load_entry_point(self, ep: importlib.metadata.EntryPoint, builtin: bool) -> None:
        dist: str | None
        version: str | None
        if builtin:  # the code that runs is this package: its own version, not possibly stale metadata
            dist, version = DISTRIBUTION, __version__
        else:
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
        source = _Source(dist, version, builtin, "entry point")
        name = ep.name
        if name in self._sources:  # two distributions declare the same entry-point name: the first one stays
            taken = self._sources[name]
            name = f"{ep.name} ({dist} {version})"
            self._sources[name] = source
            self._fail(name, f"entry point name {ep.name!r} is already taken by {_describe(taken)}; not loaded")
            return
        self._sources[name] = source
        try:
            plugin = ep.load()
            declared = getattr(plugin, "SAE_AUTOINTERP_HOOKSPEC_VERSION", HOOKSPEC_VERSION)
            if int(declared) > HOOKSPEC_VERSION:
                raise PluginError(
                    f"needs hookspec version {declared}, this sae-lens-autointerp has {HOOKSPEC_VERSION}; "
                    "upgrade sae-lens-autointerp"
                )
            self.pm.register(plugin, name=name)
            try:
                self.pm.check_pending()  # an unknown hook name is this plugin's (the others passed before)
            except Exception:
                self.pm.unregister(plugin)
                raise
        except Exception as exc:  # a broken plugin must not take the others down
            self._fail(name, f"{type(exc).__name__}: {exc}")

    def _fail(self, plugin: str, message: str) -> None:
        self._load_failures.setdefault(plugin, []).append(message)

    # -- collection (hooks called once, cached) ---------------------------------------------------------------

    def _state(self) -> _Collected:
        with self._lock:
            now = self.pm.list_name_plugin()
            same = len(now) == len(self._snapshot) and all(
                a == c and b is d for (a, b), (c, d) in zip(now, self._snapshot)
            )
            if self._collected is None or not same:
                self._collected = self._collect()
                self._snapshot = now
            return self._collected

    def _source(self, name: str) -> _Source:
        if name in self._sources:
            return self._sources[name]
        plugin = self.pm.get_plugin(name)
        module = plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__module__
        own = module == PROJECT_NAME or module.startswith(PROJECT_NAME + ".")
        return _Source(DISTRIBUTION if own else None, __version__ if own else None, own, "registered in process")

    def _collect(self) -> _Collected:
        registered = [(n, p) for n, p in self.pm.list_name_plugin() if p is not None]
        registered.sort(key=lambda np_: not self._source(np_[0]).builtin)  # stable: built-ins first
        failures: dict[str, list[str]] = {}
        state = _Collected({k: {} for k in KINDS}, {k: {} for k in KINDS}, {}, failures)
        for kind in KINDS:
            hook_name = f"sae_autointerp_{kind}"
            impls = getattr(self.pm.hook, hook_name).get_hookimpls()
            wrappers = [i for i in impls if i.hookwrapper or i.wrapper]
            plain = {i.plugin_name for i in impls if not (i.hookwrapper or i.wrapper)}
            contenders: dict[str, list[RegisteredItem]] = {}
            for name, plugin in registered:
                if name not in plain:
                    continue
                provided = self._call_one(hook_name, kind, name, plugin, wrappers, failures)
                src = self._source(name)
                for item_name, factory in (provided or {}).items():
                    contenders.setdefault(item_name, []).append(
                        RegisteredItem(item_name, kind, name, factory, src.distribution, src.version)
                    )
            for item_name, found in contenders.items():
                self._resolve(state, kind, item_name, found)
        return state

    def _call_one(
        self,
        hook_name: str,
        kind: str,
        name: str,
        plugin: Any,
        wrappers: Sequence[pluggy.HookImpl],
        failures: dict[str, list[str]],
    ) -> dict[str, Any] | None:
        """``plugin``'s implementation of ``hook_name`` through pluggy, with every wrapper around it; a crash
        or a bad return is booked on the plugin, or on the wrapper when the plugin alone works."""

        def call(*keep: Any) -> dict[str, Any]:
            kept = {id(k) for k in keep}
            others = [p for p in self.pm.get_plugins() if id(p) not in kept]
            return _merge(self.pm.subset_hook_caller(hook_name, remove_plugins=others)(), kind)

        def book(who: str, message: str) -> None:
            if message not in failures.setdefault(who, []):
                failures[who].append(message)

        try:
            return call(plugin, *(w.plugin for w in wrappers))
        except Exception as exc:
            first = exc
        if wrappers:
            try:
                alone = call(plugin)
            except Exception as exc:  # the plugin fails on its own: its fault, as it shows without wrappers
                first = exc
            else:  # the plugin is fine alone: a wrapper broke the call
                guilty = []
                for w in wrappers:
                    try:
                        call(plugin, w.plugin)
                    except Exception as exc:
                        guilty.append((w.plugin_name, exc))
                for who, error in guilty or [(w.plugin_name, first) for w in wrappers]:
                    book(
                        who, f"hook {hook_name} wrapper failed around plugin {name!r}: {type(error).__name__}: {error}"
                    )
                return alone
        book(name, f"hook {hook_name} failed: {type(first).__name__}: {first}")
        return None

    def _resolve(self, state: _Collected, kind: str, item_name: str, found: list[RegisteredItem]) -> None:
        singular = _singular(kind)
        builtins = [f for f in found if self._source(f.plugin).builtin]
        winners = builtins[:1] if builtins else (found if len(found) == 1 else [])
        for f in winners or found:
            state.provides.setdefault(f.plugin, {}).setdefault(kind, []).append(item_name)
        if winners:
            winner = winners[0]
            state.items[kind][item_name] = winner
            for loser in found:
                if loser is winner:
                    continue
                message = (
                    f"{singular} {item_name!r} already provided by plugin {winner.plugin!r} "
                    f"({_describe_item(winner)}), which wins: built-ins take precedence, so plugin "
                    f"{loser.plugin!r} ({_describe_item(loser)}) does not provide it; rename it"
                )
                state.failures.setdefault(loser.plugin, []).append(message)
                logger.warning("plugin name clash: %s", message)
            return
        state.ambiguous[kind][item_name] = found
        logger.warning("plugin name clash: %s", _ambiguous_message(singular, item_name, found))

    # -- public ----------------------------------------------------------------------------------------------

    @property
    def failures(self) -> dict[str, str]:
        """``{plugin name: what went wrong}`` for plugins that failed to load, whose hooks misbehaved, or that
        lost a name clash against a built-in."""
        collected = self._state().failures
        out: dict[str, list[str]] = {k: list(v) for k, v in self._load_failures.items()}
        for k, v in collected.items():
            out.setdefault(k, []).extend(v)
        return {k: "; ".join(v) for k, v in out.items() if v}

    def items(self, kind: str) -> dict[str, RegisteredItem]:
        """All usable items of one kind (``scorers``, ``explainers``, ``llm_clients``, ``exporters``), by name.

        A name two third-party plugins provide is not usable and not listed (:meth:`get` explains why).
        """
        _check_kind(kind)
        return dict(self._state().items[kind])

    def get(self, kind: str, name: str) -> RegisteredItem:
        _check_kind(kind)
        state = self._state()
        if name in state.ambiguous[kind]:
            raise PluginError(_ambiguous_message(_singular(kind), name, state.ambiguous[kind][name]))
        available = state.items[kind]
        if name not in available:
            listed = ", ".join(sorted(available)) or "(none)"
            hint = ""
            broken = self.failures
            if broken:
                hint = " Plugins that failed to load: " + "; ".join(f"{k} ({v})" for k, v in broken.items()) + "."
            allow = f" and that {LOAD_ENV_VAR} names it" if self._allowed is not None else ""
            raise UnknownPluginItemError(
                f"unknown {_singular(kind)} {name!r}. Available: {listed}.{hint} Install the plugin that provides it "
                f"(it registers through the entry-point group {ENTRY_POINT_GROUP!r}), or check "
                f"{BLOCK_ENV_VAR} is not blocking it{allow}."
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

    def provenance(self, kind: str, name: str) -> dict[str, str | None]:
        """Who provides ``name``: ``{"plugin": registered plugin name, "distribution": the distribution that
        declares it ("sae-lens-autointerp" for built-ins), "version": that distribution's version}``.
        ``distribution`` and ``version`` are None for a plugin registered by hand, not through an installed
        distribution. Raises like :meth:`get`."""
        item = self.get(kind, name)
        return {"plugin": item.plugin, "distribution": item.distribution, "version": item.version}

    def plugins(self) -> list[PluginInfo]:
        """Every plugin considered (loaded or failed), built-ins first, with what it provides."""
        state = self._state()
        failures = self.failures
        names = list(self._sources)
        names += [n for n, p in self.pm.list_name_plugin() if p is not None and n not in names]
        names += [n for n in failures if n not in names]
        sources = {
            n: self._sources.get(n)
            or (
                self._source(n)
                if self.pm.get_plugin(n) is not None
                else _Source(None, None, False, "registered in process")
            )
            for n in names
        }
        names.sort(key=lambda n: not sources[n].builtin)  # stable: built-ins first, then discovery order
        infos = []
        for name in names:
            src = sources[name]
            if src.builtin:
                where = "builtin"
            elif src.how == "entry point":
                where = f"entry point {src.distribution or '?'}"
            else:
                where = src.how
            infos.append(
                PluginInfo(
                    name=name,
                    version=src.version or "?",
                    source=where,
                    provides={k: sorted(v) for k, v in state.provides.get(name, {}).items()},
                    error=failures.get(name),
                )
            )
        return infos


def get_client(llm: str | LLMClient, **kwargs: Any) -> LLMClient:
    """Resolve ``llm`` through the registry: ``"local"``, ``"openai:MODEL"``, ``"vllm:MODEL"`` (the built-in
    plugin's backends), any ``"prefix:model"`` a plugin registers, or an object implementing ``LLMClient``
    (checked and returned as is; ``kwargs`` must then be empty). ``"prefix:model"`` calls the backend's
    factory with ``model="model"`` (``None`` without a colon) and ``kwargs``."""
    from .llm import check_client, parse_llm_name  # the backend layer (pure: it never imports the registry)

    if not isinstance(llm, str):
        return check_client(llm, kwargs)
    prefix, model = parse_llm_name(llm)
    registry = get_registry()
    client = registry.create("llm_clients", prefix, model=model, **kwargs)
    try:
        return check_client(client)
    except ConfigError as exc:
        plugin = registry.get("llm_clients", prefix).plugin
        raise PluginError(
            f"plugin {plugin!r}: llm client {prefix!r} returned a {type(client).__name__}, which is "
            f"not an LLMClient: {exc}"
        ) from exc


def _merge(results: Any, kind: str) -> dict[str, Callable[..., Any]]:
    if not isinstance(results, list):  # only a wrapper can make pluggy return anything else
        raise PluginError(f"expected the hook call to give a list of results, got {type(results).__name__}")
    out: dict[str, Callable[..., Any]] = {}
    for provided in results:
        for name, factory in _validate_provided(provided, kind).items():
            out.setdefault(name, factory)
    return out


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


def _entry_points() -> tuple[list[importlib.metadata.EntryPoint], list[importlib.metadata.EntryPoint]]:
    """This distribution's own entry points (the built-ins) and every other distribution's."""
    own: list[importlib.metadata.EntryPoint] = []
    others: list[importlib.metadata.EntryPoint] = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        is_own = ep.dist is not None and _normalize(ep.dist.name) == _normalize(DISTRIBUTION)
        (own if is_own else others).append(ep)
    return own, others


def _normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _env_names(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; expected one of {KINDS}")


def _singular(kind: str) -> str:
    return kind[:-1].replace("_", " ")


def _describe(src: _Source) -> str:
    return f"{src.distribution} {src.version}" if src.distribution else "no distribution: registered in process"


def _describe_item(item: RegisteredItem) -> str:
    return f"{item.distribution} {item.version}" if item.distribution else "no distribution: registered in process"


def _ambiguous_message(singular: str, name: str, found: Sequence[RegisteredItem]) -> str:
    who = ", ".join(f"{f.plugin!r} ({_describe_item(f)})" for f in found)
    keep, rest = found[0].plugin, ",".join(f.plugin for f in found[1:])
    return (
        f"{singular} {name!r} is provided by {len(found)} plugins: {who}; refusing to guess which one to use. "
        f"Keep one: {BLOCK_ENV_VAR}={rest} keeps plugin {keep!r} (or allow-list one with {LOAD_ENV_VAR}, "
        f"or uninstall one)"
    )


if TYPE_CHECKING:  # StreamHandler is generic in typeshed only (subscripting it fails at run time on 3.10)
    _StreamHandler = logging.StreamHandler[TextIO]
else:
    _StreamHandler = logging.StreamHandler


class _StderrHandler(_StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a redirect, pytest's capture), like
    :data:`logging.lastResort`."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _trace_to_stderr() -> None:
    if not any(isinstance(h, _StderrHandler) for h in trace_logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[sae_lens_autointerp] %(message)s"))
        trace_logger.addHandler(handler)
    trace_logger.setLevel(logging.DEBUG)
    trace_logger.propagate = False  # the trace is its own channel: not repeated by the host's root handlers


def _trace_before(hook_name: str, hook_impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
    who = ", ".join(f"{i.plugin_name}{' (wrapper)' if i.hookwrapper or i.wrapper else ''}" for i in hook_impls)
    trace_logger.debug("calling %s on %s%s", hook_name, who or "no plugin", f" with {dict(kwargs)}" if kwargs else "")


def _trace_after(
    outcome: pluggy.Result[Any], hook_name: str, hook_impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]
) -> None:
    exc = outcome.exception
    if exc is not None:
        trace_logger.debug("%s raised %s: %s", hook_name, type(exc).__name__, exc)
        return
    result = outcome.get_result()
    shown = (
        [sorted(r) if isinstance(r, Mapping) else type(r).__name__ for r in result]
        if isinstance(result, list)
        else type(result).__name__
    )
    trace_logger.debug("%s returned %s", hook_name, shown)


_lock = threading.Lock()
_registry: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry, built on first use (entry points are scanned once, hooks called once)."""
    global _registry
    with _lock:
        if _registry is None or refresh:
            _registry = Registry()
        return _registry

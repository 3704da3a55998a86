"""The command line's option flags, derived from the fields of :class:`RunConfig` and :class:`HarvestConfig`.

Each field is one flag of the same name (``n_tokens`` is ``--n-tokens``; a harvest field whose name a run field
has too gets ``--harvest-`` in front: ``--harvest-seed``), its help text the field's doc, its value parsed by
the field's type: numbers, names, comma-separated lists, ``0,5,10-12`` for latents, JSON for dicts and nested
configs, ``--x`` / ``--no-x`` for switches. Argparse itself takes every value as text, so a bad value is one
:class:`ConfigError` line naming the flag. A flag not given is left out: the config (or ``--config``) decides.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

from .config import HarvestConfig, RunConfig
from .errors import ConfigError
from .options import closest, doc


@dataclass(frozen=True)
class Flag:
    """One config field on the command line."""

    name: str  # the field
    flag: str  # --the-field
    dest: str  # where argparse puts the text
    type: str  # the field's annotation
    help: str
    default: Any  # the field's default (shown in the help)
    nested: str | None = None  # "harvest" for a HarvestConfig field of RunConfig.harvest

    def parse(self, text: Any) -> Any:
        """The value of ``text`` (a bool for a switch) for this field."""
        if isinstance(text, bool):
            return text
        try:
            return PARSERS[self.type][0](text)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{self.flag} {text!r}: {exc}") from None


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda text: None if text.strip().lower() == "none" else parse(text)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("expected an integer") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("expected a number") from None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"is not JSON ({exc}); expected an object, e.g. '{{\"key\": 1}}'") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object, e.g. '{\"key\": 1}'")
    return value


def _names(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def latent_list(text: str) -> tuple[int, ...]:
    """``0,5,10-12`` -> (0, 5, 10, 11, 12)."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise ValueError("expected comma-separated indices or ranges, e.g. 0,5,10-12") from None
    return tuple(out)


def _switch_or_number(text: str) -> bool | float:
    low = text.strip().lower()
    if low in ("true", "on", "yes"):
        return True
    if low in ("false", "off", "no"):
        return False
    try:
        return float(text)
    except ValueError:
        raise ValueError("expected true, false or a number") from None


def _number_or_object(text: str) -> float | dict[str, Any]:
    return _json_object(text) if text.strip().startswith("{") else _float(text)


def _name_or_object(text: str) -> str | dict[str, Any]:
    return _json_object(text) if text.strip().startswith("{") else text


#: How a field's value is read from its text, and what the help calls it, by the field's annotation. A field of
#: another type is refused when the parser is built (``tests/test_options.py`` builds it), so it cannot miss the
#: command line.
PARSERS: dict[str, tuple[Callable[[str], Any], str]] = {
    "int": (_int, "N"),
    "int | None": (_optional(_int), "N"),
    "float": (_float, "X"),
    "float | None": (_optional(_float), "X"),
    "str": (str, "NAME"),
    "str | None": (_optional(str), "NAME"),
    "bool | float": (_switch_or_number, "on|off|X"),
    "tuple[int, ...] | None": (_optional(latent_list), "LATENTS"),
    "tuple[str, ...]": (_names, "NAMES"),
    "dict[str, Any]": (_json_object, "JSON"),
    "dict[str, Any] | None": (_optional(_json_object), "JSON"),
    "dict[str, dict[str, Any]]": (_json_object, "JSON"),
    "dict[int, str] | None": (_optional(_json_object), "JSON"),
    "float | dict[str, float]": (_number_or_object, "X|JSON"),
    "str | dict[str, str] | None": (_optional(_name_or_object), "NAME|JSON"),
    "SamplingConfig": (_json_object, "JSON"),
}
#: Annotations read as a switch: ``--x`` / ``--no-x``.
SWITCHES = ("bool", "bool | None")


def config_flags(
    cls: type, *, skip: Iterable[str] = (), taken: Iterable[str] = (), nested: str | None = None
) -> list[Flag]:
    """The flags of the fields of ``cls`` (a RunConfig's ``harvest`` field expands into HarvestConfig's), but
    ``skip``; a name in ``taken`` gets the nested field's name in front (``--harvest-seed``)."""
    out: list[Flag] = []
    skipped, used = set(skip), set(taken)
    for f in fields(cls):
        if f.name in skipped:
            continue
        if f.type == "HarvestConfig":
            out += config_flags(HarvestConfig, skip=skipped, taken=[g.name for g in fields(cls)], nested=f.name)
            continue
        if f.type not in PARSERS and f.type not in SWITCHES:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line parser for a field of type {f.type!r}")
        label = f"{nested}_{f.name}" if nested and f.name in used else f.name
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        out.append(Flag(f.name, "--" + label.replace("_", "-"), f"opt_{label}", str(f.type), doc(f), default, nested))
    return out


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flags: Iterable[Flag],
    defaults: Mapping[str, Any] | None = None,
    aliases: Mapping[str, Iterable[str]] | None = None,
) -> None:
    """Add ``flags`` to ``parser``; ``defaults``: this command's own defaults by field, a nested config's under
    its name (``{"harvest": {"n_tokens": 60_000}}``; shown in the help), ``aliases``: more flag names by field
    (``{"out_dir": ["--out"]}``)."""
    for flag in flags:
        own = (defaults or {}).get(flag.nested, {}) if flag.nested else (defaults or {})
        shown = own.get(flag.name, flag.default)
        text = f"{flag.help} (default: {_shown(shown)})".replace("%", "%%")
        names = [flag.flag, *(aliases or {}).get(flag.name, ())]
        if flag.type in SWITCHES:
            parser.add_argument(
                *names, dest=flag.dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text
            )
        else:
            metavar = PARSERS[flag.type][1]
            parser.add_argument(*names, dest=flag.dest, default=argparse.SUPPRESS, metavar=metavar, help=text)


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    if hasattr(value, "__dataclass_fields__"):
        return "its own defaults"
    return "none" if value is None else str(value)


def given(args: argparse.Namespace, flags: Iterable[Flag], defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fields set on the command line, parsed, over the command's ``defaults``: ``{field: value}``, with a
    nested config's fields under its name (``{"harvest": {"n_tokens": 8000}}``)."""
    values = vars(args)
    out: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in (defaults or {}).items()}
    for flag in flags:
        if flag.dest not in values:
            continue
        value = flag.parse(values[flag.dest])
        if flag.nested:
            out.setdefault(flag.nested, {})[flag.name] = value
        else:
            out[flag.name] = value
    return out


#: The flags of ``sae-autointerp run``: every RunConfig field (the harvest's expanded).
RUN_FLAGS = config_flags(RunConfig)
#: The run flags of ``sae-autointerp compare``: every RunConfig field but latents (compare draws them).
COMPARE_FLAGS = config_flags(RunConfig, skip=["latents"])
#: The flags of ``sae-autointerp harvest``: every HarvestConfig field.
HARVEST_FLAGS = config_flags(HarvestConfig)


def harvest_options(args: argparse.Namespace, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The harvest options given to ``sae-autointerp harvest`` over its ``defaults``, checked as a
    HarvestConfig (a bad value fails before anything is loaded)."""
    options = given(args, HARVEST_FLAGS, defaults)
    HarvestConfig(**options)
    return options


def unrecognized(parser: argparse.ArgumentParser, command: str, extra: Iterable[str]) -> str:
    """The error for arguments ``command`` does not take, naming the closest flag of each unknown one."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    flags = [f for action in commands[command]._actions for f in action.option_strings if f.startswith("--")]
    hints = []
    for arg in extra:
        near = closest(arg.split("=", 1)[0], flags) if arg.startswith("--") else None
        hints.append(f"{arg} (did you mean {near}?)" if near else arg)
    return f"{command}: unrecognized arguments: {' '.join(hints)}"

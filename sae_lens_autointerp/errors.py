"""Exceptions raised by sae-lens-autointerp.

Every error a user can trigger with bad input derives from :class:`AutointerpError` and says what is wrong
and how to fix it, so callers can catch one type.
"""

from __future__ import annotations


class AutointerpError(Exception):
    """Base class for errors raised by sae-lens-autointerp."""


class ConfigError(AutointerpError, ValueError):
    """Bad input detected before any expensive work (hook names, widths, corpus, latents, ...)."""


class PluginError(AutointerpError):
    """A plugin failed to load, or returned something that breaks the plugin contract."""


class UnknownPluginItemError(PluginError, KeyError):
    """A scorer / explainer / LLM client name that no registered plugin provides."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""

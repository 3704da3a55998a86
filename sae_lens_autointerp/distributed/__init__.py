"""Distributed executors on Ray (imported lazily: the package imports without Ray).

``sae.autointerp.run(..., executor="ray")`` explains and scores on Ray actors (:mod:`.explain_score`); see
docs/scale.md.
"""

from __future__ import annotations

from .explain_score import run

__all__ = ["run"]

"""Attach ``explain``, ``score`` and the ``autointerp`` namespace to ``sae_lens.SAE``.

We patch the abstract base class once, so every architecture (standard, top-k, JumpReLU, gated,
transcoders, third-party registered ones) and every SAE created before the import gets the methods.
Nothing is stored on instances: ``sae.autointerp`` builds a tiny namespace object on each access, so it is
neither an ``nn.Module`` child nor part of ``__dict__``, and ``deepcopy`` / pickling / ``state_dict`` /
``save_model`` are unaffected.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sae_lens import SAE

    from .namespace import AutointerpNamespace
    from .records import Explanation
    from .results import ScoreResult

_MARK = "__sae_autointerp__"


def _explain(self: SAE, *args: Any, **kwargs: Any) -> dict[int, Explanation]:
    from .namespace import AutointerpNamespace

    return AutointerpNamespace(self).explain(*args, **kwargs)


def _score(self: SAE, *args: Any, **kwargs: Any) -> ScoreResult:
    from .namespace import AutointerpNamespace

    return AutointerpNamespace(self).score(*args, **kwargs)


def _autointerp(self: SAE) -> AutointerpNamespace:
    from .namespace import AutointerpNamespace

    return AutointerpNamespace(self)


def _copy_docs() -> None:
    from .namespace import AutointerpNamespace

    _explain.__doc__ = AutointerpNamespace.explain.__doc__
    _score.__doc__ = AutointerpNamespace.score.__doc__
    _autointerp.__doc__ = AutointerpNamespace.__doc__


def install() -> list[str]:
    """Patch ``sae_lens.SAE``; returns the names attached by this call (empty when already attached).

    An attribute that SAELens (or anything else) already defines is never overwritten: we warn instead.
    """
    from sae_lens import SAE

    _copy_docs()
    wanted: dict[str, Any] = {
        "explain": _explain,
        "score": _score,
        "autointerp": property(_autointerp, doc=_autointerp.__doc__),
    }
    attached = []
    for name, value in wanted.items():
        existing = getattr(SAE, name, None)
        if existing is not None:
            target = existing.fget if isinstance(existing, property) else existing
            if getattr(target, _MARK, False):
                continue  # ours, from an earlier import or reload
            warnings.warn(
                f"sae_lens.SAE already defines {name!r}; sae-lens-autointerp leaves it alone. "
                f"Use `sae_lens_autointerp.for_sae(sae).{name}` instead.",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        setattr(_autointerp if name == "autointerp" else value, _MARK, True)
        setattr(SAE, name, value)
        attached.append(name)
    return attached

"""Known-heuristic filters, before any LLM call: latents explained by token position or token identity alone.

Some latents need no explainer: a *positional* latent's activation is a function of where the token sits in the
context, a *unigram* latent's a function of which token it is (EleutherAI's autointerp notes; Cunningham et al.
2023 call the latter single-token features). Both are read off the harvest's streaming sums (``harvest/stats.py``:
per latent, the sum and sum of squares of its activation per position bucket and per token id, over every valid
harvested token, zeros included), so flagging all latents of an SAE costs no forward pass and no LLM call.

**Variance explained.** For a latent with activations ``x`` over the ``N`` valid tokens and a partition of the
tokens into groups ``g`` (position buckets; token ids), with ``n_g`` tokens, sum ``S_g`` and sum of squares
``Q_g`` per group, the total sum of squares is ``SS = Q - S^2 / N`` and the in-sample share explained is the
correlation ratio ``eta^2 = 1 - sum_g (Q_g - S_g^2 / n_g) / SS`` (what predicting each token by its group's mean
explains). With tens of thousands of token ids most groups are tiny, and a group of one token explains itself
perfectly, so ``eta^2`` by token id is near 1 for any rare latent. We therefore report the *leave-one-out* share
``r2 = 1 - PRESS / SS``, where each token is predicted by the mean of the *other* tokens of its group
(``PRESS = sum_g (n_g / (n_g - 1))^2 (Q_g - S_g^2 / n_g)``; a token alone in its group is predicted by the mean
of all other tokens). It is exact from the sums, close to ``eta^2`` when groups are large (positions) and 0 or
below for a latent whose token groups carry no repeatable signal; it is clipped to ``[0, 1]``.

The token partition is "each token id the latent's per-token table kept, and all other tokens together" (the
table holds, of the tokens a latent fires on, the ``n_token_slots`` of smallest seeded hash, a choice that does
not depend on the order of the corpus, so distributed harvests merge it exactly; a latent's zero tokens are all in
the rest group, which changes nothing: groups whose activations are all zero explain nothing either way). When a
latent's table overflowed (``unigram_complete`` is False) the share is that of a coarser partition, so it is
at most what the full token partition would give: flags are conservative, never inflated.

**Flag.** ``"unigram"`` when ``unigram_r2 >= threshold`` (default :data:`DEFAULT_THRESHOLD` = 0.9: nine tenths of
the activation variance is explained by the token alone), ``"positional"`` when ``positional_r2 >= threshold``
(the larger share wins when both pass), else None. Latents firing on fewer than ``min_firing`` tokens are never
flagged (their shares are still reported).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import torch

from .errors import ConfigError
from .harvest.store import LatentStore

#: Share of the activation variance (leave-one-out) above which a latent is flagged.
DEFAULT_THRESHOLD = 0.9
#: A latent must fire on at least this many harvested tokens to be flagged.
DEFAULT_MIN_FIRING = 20
#: Stop listing a flagged latent's tokens / positions once they hold this share of its activation mass.
MASS_SHARE = 0.9
MAX_LISTED = 10

COLUMNS = [
    "latent",
    "flag",
    "positional_r2",
    "unigram_r2",
    "positional_eta2",
    "unigram_eta2",
    "unigram_complete",
    "n_firing",
    "tokens",
    "token_strings",
    "positions",
]


def has_heuristic_stats(store: LatentStore) -> bool:
    """Whether the store keeps the per-position and per-token sums (stores harvested before they existed do not)."""
    return "pos_sums" in store.stats and "tok_ids" in store.stats


def check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ConfigError(f"the heuristic threshold is a share of variance in (0, 1], got {threshold!r}")
    return float(threshold)


def explained_shares(
    counts: torch.Tensor, sums: torch.Tensor, sq: torch.Tensor, n: torch.Tensor, s: torch.Tensor, q: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(``eta^2``, leave-one-out ``r2``) per row for groups given by ``counts`` / ``sums`` / ``sq`` [rows, groups]
    (counts may be [groups], shared) whose totals are ``n`` / ``s`` / ``q`` [rows]; NaN where the latent is
    constant (``SS = 0``). See the module docstring."""
    counts = counts.double().expand_as(sums)
    n, s, q = n.double(), s.double(), q.double()
    total = q - s * s / n.clamp(min=1)
    safe = counts.clamp(min=1)
    within = (sq - sums * sums / safe).clamp(min=0) * (counts > 0)
    big = counts >= 2
    press_groups = torch.where(big, (counts / (counts - 1).clamp(min=1)) ** 2 * within, torch.zeros_like(within))
    # a token alone in its group: predicted by the mean of all the other tokens
    others = (s.unsqueeze(1) - sums) / (n.unsqueeze(1) - 1).clamp(min=1)
    single = torch.where(counts == 1, (sums - others) ** 2, torch.zeros_like(sums))
    press = press_groups.sum(1) + single.sum(1)
    defined = total > 1e-12 * q.clamp(min=1e-300)
    eta2 = torch.where(defined, 1 - within.sum(1) / total.clamp(min=1e-300), torch.nan).clamp(0, 1)
    r2 = torch.where(defined, 1 - press / total.clamp(min=1e-300), torch.nan).clamp(0, 1)
    return eta2, r2


def heuristic_flags(
    store: LatentStore,
    latents: Iterable[int] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    min_firing: int = DEFAULT_MIN_FIRING,
    tokenizer: Any = None,
) -> pd.DataFrame:
    """Positional and unigram flags of ``latents`` (default: all), one row per latent (indexed by latent).

    Columns: ``flag`` ("positional" / "unigram" / None), ``positional_r2`` and ``unigram_r2`` (leave-one-out
    shares of activation variance explained by the position bucket / the token id), ``positional_eta2`` and
    ``unigram_eta2`` (the in-sample correlation ratios), ``unigram_complete`` (the per-token table held every
    token the latent fired on, so ``unigram_r2`` is exact rather than a lower bound), ``n_firing`` (tokens above
    the harvest threshold), and for flagged latents ``tokens`` (unigram: the token ids carrying most of the
    activation, largest first; ``token_strings`` their text when a ``tokenizer`` is given) or ``positions``
    (positional: the first position of each bucket carrying most of it). See the module docstring.
    """
    threshold = check_threshold(threshold)
    if not has_heuristic_stats(store):
        raise ConfigError(
            f"the store {store.path} has no per-position / per-token sums (it was harvested by an older version); "
            "harvest again to use the heuristic filters"
        )
    st = store.stats
    rows = torch.arange(store.d_sae) if latents is None else torch.tensor([store.check_latent(x) for x in latents])
    rows = rows.long()
    pos_counts = st["pos_counts"].long()
    pos_sums, pos_sq = st["pos_sums"][rows].double(), st["pos_sq"][rows].double()
    n = torch.full((len(rows),), float(pos_counts.sum()), dtype=torch.float64)
    s, q = pos_sums.sum(1), pos_sq.sum(1)
    pos_eta2, pos_r2 = explained_shares(pos_counts, pos_sums, pos_sq, n, s, q)

    tok_ids = st["tok_ids"][rows].long()
    token_counts = st["token_counts"].long()
    kept = tok_ids >= 0
    if token_counts.numel():
        tok_n = torch.where(kept, token_counts[tok_ids.clamp(0, token_counts.numel() - 1)], 0).double()
        tok_sums, tok_sq = st["tok_sums"][rows].double() * kept, st["tok_sq"][rows].double() * kept
        rest = (n - tok_n.sum(1), s - tok_sums.sum(1), q - tok_sq.sum(1))
        g_n, g_s, g_q = (torch.cat([a, b.unsqueeze(1)], 1) for a, b in zip((tok_n, tok_sums, tok_sq), rest))
        uni_eta2, uni_r2 = explained_shares(g_n, g_s, g_q, n, s, q)
    else:  # harvested without token ids
        uni_eta2 = uni_r2 = torch.full((len(rows),), torch.nan, dtype=torch.float64)
    n_firing = st["n_fire_tokens"][rows].long()
    complete = ~st["tok_overflow"][rows].bool()

    starts = _bucket_starts(st["pos_buckets"].long())
    out = []
    # plain lists first: indexing a tensor element by element costs microseconds per value, per latent
    pos_r2_l, uni_r2_l, pos_eta2_l, uni_eta2_l = (t.tolist() for t in (pos_r2, uni_r2, pos_eta2, uni_eta2))
    n_firing_l, complete_l = n_firing.tolist(), complete.tolist()
    for i, latent in enumerate(rows.tolist()):
        pr, ur = pos_r2_l[i], uni_r2_l[i]
        flag = None
        if n_firing_l[i] >= min_firing:
            if ur >= threshold and not (pr > ur):
                flag = "unigram"
            elif pr >= threshold:
                flag = "positional"
        tokens: list[int] = []
        positions: list[int] = []
        if flag == "unigram":
            order = _by_mass(st["tok_sums"][latent].double() * kept[i], s[i])
            tokens = [int(tok_ids[i, j]) for j in order]
        elif flag == "positional":
            positions = [starts[j] for j in _by_mass(pos_sums[i], s[i])]
        out.append(
            {
                "latent": latent,
                "flag": flag,
                "positional_r2": pr,
                "unigram_r2": ur,
                "positional_eta2": pos_eta2_l[i],
                "unigram_eta2": uni_eta2_l[i],
                "unigram_complete": bool(complete_l[i]),
                "n_firing": int(n_firing_l[i]),
                "tokens": tokens,
                "token_strings": [tokenizer.decode([t]) for t in tokens] if tokenizer is not None else [],
                "positions": positions,
            }
        )
    table = pd.DataFrame(out, columns=COLUMNS)
    table["flag"] = pd.Series([r["flag"] for r in out], dtype=object)  # None, not NaN (pandas 3 strings)
    return table.set_index("latent", drop=False)


def _by_mass(mass: torch.Tensor, total: torch.Tensor) -> list[int]:
    """Indices of the largest entries of ``mass``, until they hold :data:`MASS_SHARE` of ``total`` (at most
    :data:`MAX_LISTED`)."""
    values = mass.numpy()
    order = np.argsort(-values, kind="stable")
    out, acc, goal = [], 0.0, MASS_SHARE * float(total)
    for j in order[:MAX_LISTED]:
        if values[j] <= 0:
            break
        out.append(int(j))
        acc += float(values[j])
        if acc >= goal:
            break
    return out


def _bucket_starts(buckets: torch.Tensor) -> list[int]:
    """First position of each bucket."""
    n = int(buckets.max()) + 1 if buckets.numel() else 0
    starts = [0] * n
    for pos in reversed(range(len(buckets))):
        starts[int(buckets[pos])] = pos
    return starts


def flag_summary(flags: pd.DataFrame) -> dict[str, Any]:
    """Counts of a :func:`heuristic_flags` table: latents checked, positional, unigram."""
    counts = flags["flag"].value_counts()
    return {
        "n_checked": len(flags),
        "n_positional": int(counts.get("positional", 0)),
        "n_unigram": int(counts.get("unigram", 0)),
    }

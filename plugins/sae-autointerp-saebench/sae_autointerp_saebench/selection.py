"""SAEBench 0.6.0's example selection (``AutoInterp.gather_data``), reimplemented on dense activations.

Per latent, over the dense bfloat16 activations ``acts`` [rows, seq_len] (see ``dense.py``), in this order
of random draws from one ``torch.Generator`` seeded per latent (:func:`torch_seed`):

1. 10 random windows: rows ``randint(0, rows)``, centres ``randint(buffer, seq_len - buffer)``. They are
   labelled negative without looking at the latent (whether it fires there is recorded in ``fires``).
2. Top windows (no random draw): positions sorted by activation, descending, over the centres
   ``[buffer, seq_len - buffer)`` only (peaks nearer an edge never count); with ``no_overlap`` a position
   within ``buffer`` tokens of an earlier pick in the same row is passed over; the first ``n_top_ex`` (12).
   ``act_threshold`` = ``act_threshold_frac`` x the largest activation in any top window (not only centres).
3. Importance-weighted windows: activations at or above the smallest top *centre* are set to 0; if nothing
   above 1e-6 is left the latent is skipped (SAEBench treats it as dead); else ``n_iw_sampled_ex`` (7)
   centres are drawn without replacement with probability proportional to the squared activation
   (computed in bfloat16, as SAEBench does; when fewer positions are positive, torch fills up with
   zero-probability ones).
4. ``randperm(n_top_ex)`` splits the top windows (first 10 to the explainer), then ``randperm(n_iw)`` the
   importance-weighted ones (first 5 to the explainer).

A window is the ``2 * buffer + 1`` tokens around its centre; a top / importance-weighted window is labelled
active when any of its tokens exceeds ``act_threshold``. The explainer's windows are ordered by their
largest activation, descending (a stable sort of top-then-iw, in split order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.sampling import latent_rng

#: SAEBench's "nothing left below the top windows" test (``acts_thresholded.max() < 1e-6``)
DEAD_BELOW = 1e-6


def torch_seed(seed: int, latent: int) -> int:
    """The seed of ``latent``'s ``torch.Generator`` in the 'saebench' selection (a function of both)."""
    return int(latent_rng(seed, latent, "saebench/torch").integers(0, 2**63 - 1))


@dataclass(frozen=True)
class Positions:
    """The windows SAEBench's ``gather_data`` picks for one latent, as (row, centre) pairs, in draw order."""

    random: tuple[tuple[int, int], ...]
    top: tuple[tuple[int, int], ...]
    iw: tuple[tuple[int, int], ...]
    top_split: tuple[int, ...]  # randperm(n_top): indices into ``top``; the first n_top_for_generation explain
    iw_split: tuple[int, ...]  # randperm(n_iw): indices into ``iw``
    act_threshold: float
    skipped: str | None = None


def _largest(acts: torch.Tensor, k: int, buffer: int, no_overlap: bool) -> list[tuple[int, int]]:
    """Top-``k`` centres over ``[buffer, seq_len - buffer)``, descending, spaced more than ``buffer`` apart."""
    inner = acts[:, buffer : acts.shape[1] - buffer]
    width = inner.shape[1]
    order = torch.argsort(inner.flatten(), descending=True)
    if not no_overlap:
        return [(int(i) // width, int(i) % width + buffer) for i in order[:k].tolist()]
    picked: list[tuple[int, int]] = []
    blocked: set[tuple[int, int]] = set()
    step = max(4 * k, 256)
    for lo in range(0, order.numel(), step):
        for flat in order[lo : lo + step].tolist():
            pos = (flat // width, flat % width + buffer)
            if pos in blocked:
                continue
            picked.append(pos)
            blocked.update((pos[0], pos[1] + d) for d in range(-buffer, buffer + 1))
            if len(picked) == k:
                return picked
    return picked


def _windows(x: torch.Tensor, positions: list[tuple[int, int]], buffer: int) -> torch.Tensor:
    """``x[row, centre - buffer : centre + buffer + 1]`` for each position ([n, 2 * buffer + 1])."""
    if not positions:
        return x.new_zeros((0, 2 * buffer + 1))
    rows = torch.tensor([p[0] for p in positions], dtype=torch.long)
    cols = torch.tensor([p[1] for p in positions], dtype=torch.long)
    offsets = torch.arange(-buffer, buffer + 1)
    return x[rows[:, None], cols[:, None] + offsets[None, :]]


def saebench_positions(
    acts: torch.Tensor,
    generator: torch.Generator,
    *,
    n_top_ex: int = 12,
    n_iw_sampled_ex: int = 7,
    n_random_ex: int = 10,
    buffer: int = 10,
    no_overlap: bool = True,
    act_threshold_frac: float = 0.01,
) -> Positions:
    """SAEBench's windows for one latent from its dense activations ``acts`` [rows, seq_len] (bfloat16)."""
    if acts.ndim != 2:
        raise ConfigError(f"acts must be [rows, seq_len], got shape {tuple(acts.shape)}")
    rows, seq_len = acts.shape
    if buffer < 1 or seq_len <= 2 * buffer:
        raise ConfigError(
            f"SAEBench's windows need 1 <= buffer and seq_len > 2 * buffer; got buffer={buffer}, seq_len={seq_len}"
        )
    if acts.device.type != "cpu" or generator.device.type != "cpu":
        raise ConfigError("saebench_positions draws on the CPU: pass acts.cpu() and a CPU torch.Generator")
    rand_rows = torch.randint(0, rows, (n_random_ex,), generator=generator)
    rand_cols = torch.randint(buffer, seq_len - buffer, (n_random_ex,), generator=generator)
    random = tuple(zip(rand_rows.tolist(), rand_cols.tolist()))

    top = _largest(acts, n_top_ex, buffer, no_overlap)
    top_values = _windows(acts, top, buffer)
    act_threshold = act_threshold_frac * top_values.max().item() if top else 0.0
    if len(top) < n_top_ex:
        return Positions(random, tuple(top), (), (), (), act_threshold, f"only {len(top)} top windows")
    ceiling = top_values[:, buffer].min().item()
    below = torch.where(acts >= ceiling, 0.0, acts)
    inner = below[:, buffer : seq_len - buffer]
    if inner.max() < DEAD_BELOW:
        why = "no activation below the top windows' smallest peak (SAEBench skips the latent as dead)"
        return Positions(random, tuple(top), (), (), (), act_threshold, why)
    weights = inner.pow(2)
    p = weights.flatten() / weights.sum()
    drawn = torch.multinomial(p, n_iw_sampled_ex, replacement=False, generator=generator)
    width = inner.shape[1]
    iw = tuple((int(i) // width, int(i) % width + buffer) for i in drawn.tolist())
    top_split = tuple(torch.randperm(n_top_ex, generator=generator).tolist())
    iw_split = tuple(torch.randperm(n_iw_sampled_ex, generator=generator).tolist())
    return Positions(random, tuple(top), iw, top_split, iw_split, act_threshold)


def window_values(acts: torch.Tensor, positions: tuple[tuple[int, int], ...], buffer: int) -> np.ndarray:
    """The activations of each window as float32 ([n, 2 * buffer + 1]; bfloat16 values are exact in float32)."""
    return _windows(acts, list(positions), buffer).float().cpu().numpy()

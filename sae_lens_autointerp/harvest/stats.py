"""Streaming per-latent statistics with memory bounded independently of the number of tokens.

An *example* is one chunk of ``example_len`` consecutive tokens of a sequence; its activation for a latent
is the latent's maximum over the chunk and its *peak* is where that maximum sits. Per latent we keep:

- ``n_fire_tokens``, ``n_fire_examples``, ``sum_acts`` (exact counts / sums);
- ``top_*``: the ``top_k`` examples with the largest activation (exact, sorted descending);
- ``res_*``: a uniform random sample without replacement of ``n_stratified`` firing examples (bottom-k of
  random keys, which merges exactly across batches). Sorted by activation and cut into equal parts it gives
  the rank deciles of the activation distribution, from which explainer and test examples are drawn.
- for each kept example, the latent's activations over a window of ``example_len`` tokens with the peak at
  index ``peak_offset`` (tokens outside the sequence or masked count as 0), stored as float16.

Shared by all latents: a uniform sample of ``n_random_windows`` chunks with the sparse activations of every
latent on them (source of non-activating examples).

Random keys come from a generator seeded with ``(seed, batch_index)``, so a resumed harvest gives exactly
the result of an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class HarvestSettings:
    n_tokens: int
    ctx_len: int
    batch_size: int = 16
    example_len: int = 32
    peak_offset: int = 24  # tokens shown before the peak; causal models fire on what came before
    top_k: int = 50
    n_stratified: int = 100
    n_random_windows: int = 1000
    threshold: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def n_sequences(self) -> int:
        return -(-self.n_tokens // self.ctx_len)


class LatentStats:
    """The per-latent state, updated one batch of SAE activations at a time."""

    def __init__(self, d_sae: int, settings: HarvestSettings, device: torch.device | str = "cpu") -> None:
        self.d_sae = d_sae
        self.s = settings
        dev = torch.device(device)
        k, r, w = settings.top_k, settings.n_stratified, settings.example_len
        self.n_fire_tokens = torch.zeros(d_sae, dtype=torch.int64, device=dev)
        self.n_fire_examples = torch.zeros(d_sae, dtype=torch.int64, device=dev)
        self.sum_acts = torch.zeros(d_sae, dtype=torch.float64, device=dev)
        self.top_vals = torch.full((d_sae, k), float("-inf"), device=dev)
        self.top_ids = torch.full((d_sae, k), -1, dtype=torch.int64, device=dev)
        self.top_windows = torch.zeros((d_sae, k, w), dtype=torch.float16, device=dev)
        self.res_keys = torch.full((d_sae, r), float("inf"), device=dev)
        self.res_vals = torch.zeros((d_sae, r), device=dev)
        self.res_ids = torch.full((d_sae, r), -1, dtype=torch.int64, device=dev)
        self.res_windows = torch.zeros((d_sae, r, w), dtype=torch.float16, device=dev)
        # Random window pool: chunk start ids, keys and, per slot, the sparse activations on the chunk.
        self.pool_keys = torch.full((settings.n_random_windows,), float("inf"))
        self.pool_ids = torch.full((settings.n_random_windows,), -1, dtype=torch.int64)
        self.pool_entries: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = [
            _empty_entry() for _ in range(settings.n_random_windows)
        ]

    # ------------------------------------------------------------------ update
    @torch.no_grad()
    def update(self, acts: torch.Tensor, valid: torch.Tensor, seq_ids: torch.Tensor, batch_index: int) -> None:
        """Fold in one batch.

        acts: [batch, seq, d_sae] SAE activations (modified in place: masked positions set to 0).
        valid: [batch, seq] bool, False for BOS / padding / special tokens.
        seq_ids: [batch] global index of each sequence in the harvest.
        """
        s = self.s
        batch, seq, d = acts.shape
        w = s.example_len
        valid = valid.to(acts.device)
        acts.masked_fill_(~valid.unsqueeze(-1), 0.0)
        flat = acts.view(batch * seq, d)
        self.n_fire_tokens += (flat > s.threshold).sum(dim=0, dtype=torch.int32)
        self.sum_acts += flat.sum(dim=0)  # float32 within a batch, float64 across batches

        n_chunks = -(-seq // w)
        padded = acts
        if n_chunks * w != seq:
            padded = torch.nn.functional.pad(acts, (0, 0, 0, n_chunks * w - seq))
        chunk_view = padded.view(batch, n_chunks, w, d)
        n = batch * n_chunks
        chunk_max = chunk_view.amax(dim=2).reshape(n, d)  # argmax only for chunks that enter a sample
        chunk_fires = chunk_max > s.threshold
        self.n_fire_examples += chunk_fires.sum(dim=0)
        seq_base = (seq_ids.to(acts.device).long() * s.ctx_len).repeat_interleave(n_chunks)  # [N]

        gen = torch.Generator(device="cpu").manual_seed(s.seed * _SEED_STRIDE + batch_index)
        keys = torch.rand((n, d), generator=gen).to(acts.device)
        pool_keys = torch.rand((n,), generator=gen)

        cand_vals = torch.where(chunk_fires, chunk_max, float("-inf")).T  # [d, N]
        res_score = torch.where(chunk_fires, -keys, float("-inf")).T
        windows_view = acts.unfold(1, w, 1)  # [B, seq - w + 1, d, w], a view

        def enter(rows: torch.Tensor, chunks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Global peak ids and float16 windows of latent ``rows[i]`` in chunk ``chunks[i]``."""
            b, c = chunks // n_chunks, chunks % n_chunks
            pos = c * w + chunk_view[b, c, :, rows].argmax(dim=1)
            start = pos - s.peak_offset
            clamped = start.clamp(0, seq - w)
            windows = windows_view[b, clamped, rows]
            shift = start - clamped  # non-zero when the window sticks out of the sequence
            edge = shift != 0
            if bool(edge.any()):
                idx = torch.arange(w, device=acts.device).unsqueeze(0) + shift[edge].unsqueeze(1)
                inside = (idx >= 0) & (idx < w)
                windows[edge] = torch.where(inside, windows[edge].gather(1, idx.clamp(0, w - 1)), 0.0)
            return seq_base[chunks] + pos, windows.clamp(-65504, 65504).to(torch.float16)

        # Top-k by activation value.
        rows, slots, chunks = _replacements(self.top_vals, cand_vals)
        if rows.numel():
            self.top_vals[rows, slots] = cand_vals[rows, chunks]
            self.top_ids[rows, slots], self.top_windows[rows, slots] = enter(rows, chunks)
        # Uniform sample without replacement: keep the smallest random keys.
        rows, slots, chunks = _replacements(-self.res_keys, res_score)
        if rows.numel():
            self.res_keys[rows, slots] = -res_score[rows, chunks]
            self.res_vals[rows, slots] = cand_vals[rows, chunks]
            self.res_ids[rows, slots], self.res_windows[rows, slots] = enter(rows, chunks)

        self._update_pool(chunk_view, valid, pool_keys, seq_base)

    def _update_pool(
        self, chunks_view: torch.Tensor, valid: torch.Tensor, keys: torch.Tensor, seq_base: torch.Tensor
    ) -> None:
        """chunks_view: [batch, n_chunks, example_len, d_sae] (zero-padded at the end of the sequence)."""
        if self.s.n_random_windows == 0:
            return
        batch, n_chunks, w, _ = chunks_view.shape
        chunk_valid = torch.zeros(batch, n_chunks * w, dtype=torch.bool)
        chunk_valid[:, : valid.shape[1]] = valid.cpu()
        chunk_valid = chunk_valid.view(batch * n_chunks, w).any(dim=1)
        cand = torch.where(chunk_valid, -keys, float("-inf")).unsqueeze(0)
        _, slots, chunks = _replacements(-self.pool_keys.unsqueeze(0), cand)
        if not slots.numel():
            return
        self.pool_keys[slots] = keys[chunks]
        self.pool_ids[slots] = seq_base[chunks].cpu() + (chunks % n_chunks) * w
        # One nonzero over all entering windows, then split per window.
        windows = chunks_view.reshape(batch * n_chunks, w, -1)[chunks.to(chunks_view.device)]
        which, pos, lat = (windows > self.s.threshold).nonzero(as_tuple=True)
        values = windows[which, pos, lat].float().cpu()
        counts = torch.bincount(which.cpu(), minlength=len(chunks)).tolist()
        for slot, p_, l_, v_ in zip(
            slots.tolist(),
            pos.cpu().to(torch.int16).split(counts),
            lat.cpu().to(torch.int32).split(counts),
            values.split(counts),
        ):
            self.pool_entries[slot] = (p_.clone(), l_.clone(), v_.clone())

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([len(e[0]) for e in self.pool_entries], dtype=torch.int64)
        return {
            "n_fire_tokens": self.n_fire_tokens.cpu(),
            "n_fire_examples": self.n_fire_examples.cpu(),
            "sum_acts": self.sum_acts.cpu(),
            "top_vals": self.top_vals.cpu(),
            "top_ids": self.top_ids.cpu(),
            "top_windows": self.top_windows.cpu(),
            "res_keys": self.res_keys.cpu(),
            "res_vals": self.res_vals.cpu(),
            "res_ids": self.res_ids.cpu(),
            "res_windows": self.res_windows.cpu(),
            "pool_keys": self.pool_keys,
            "pool_ids": self.pool_ids,
            "pool_offsets": torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]),
            "pool_pos": torch.cat([e[0] for e in self.pool_entries])
            if self.pool_entries
            else torch.zeros(0, dtype=torch.int16),
            "pool_latents": torch.cat([e[1] for e in self.pool_entries])
            if self.pool_entries
            else torch.zeros(0, dtype=torch.int32),
            "pool_values": torch.cat([e[2] for e in self.pool_entries]) if self.pool_entries else torch.zeros(0),
        }

    @classmethod
    def from_state_dict(
        cls, state: dict[str, torch.Tensor], settings: HarvestSettings, device: torch.device | str = "cpu"
    ) -> LatentStats:
        d_sae = state["n_fire_tokens"].shape[0]
        out = cls(d_sae, settings, device)
        for name in (
            "n_fire_tokens",
            "n_fire_examples",
            "sum_acts",
            "top_vals",
            "top_ids",
            "top_windows",
            "res_keys",
            "res_vals",
            "res_ids",
            "res_windows",
        ):
            setattr(out, name, state[name].to(device))
        out.pool_keys = state["pool_keys"].clone()
        out.pool_ids = state["pool_ids"].clone()
        offsets = state["pool_offsets"].tolist()
        out.pool_entries = [
            (state["pool_pos"][a:b], state["pool_latents"][a:b], state["pool_values"][a:b])
            for a, b in zip(offsets[:-1], offsets[1:])
        ]
        return out


def _empty_entry() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.zeros(0, dtype=torch.int16), torch.zeros(0, dtype=torch.int32), torch.zeros(0)


def _replacements(kept: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which candidates enter a per-row "k largest scores" set, and which slot each one takes.

    ``kept`` [rows, k] are the scores in the slots (-inf = empty), ``cand`` [rows, n] the new scores.
    Returns ``(rows, slots, cand_cols)``: write candidate ``cand_cols[i]`` of row ``rows[i]`` into slot
    ``slots[i]``. Slots keep no order, so entries that stay are never moved (no rewrite of the state).
    Candidates at -inf never enter.
    """
    k = kept.shape[1]
    # Only candidates above the row's current minimum can enter; in steady state that is a few.
    threshold = kept.min(dim=1, keepdim=True).values
    hopeful = (cand > threshold).any(dim=0)
    if not bool(hopeful.any()):
        empty = torch.zeros(0, dtype=torch.long, device=kept.device)
        return empty, empty, empty
    cols = hopeful.nonzero().squeeze(1)
    sel = torch.cat([kept, cand[:, cols]], dim=1).topk(k, dim=1, sorted=False).indices
    scores = torch.cat([kept, cand[:, cols]], dim=1).gather(1, sel)
    is_new = (sel >= k) & (scores > float("-inf"))
    # Old slots that survive; entering candidates all point at a dummy column k, so writes never conflict.
    stays = torch.zeros((kept.shape[0], k + 1), dtype=torch.bool, device=kept.device)
    stays.scatter_(1, torch.where(sel < k, sel, k), True)
    stays = stays[:, :k]
    # Rows pair up: each row has as many freed slots as entering candidates (row-major nonzero order).
    new_rows, new_cols = is_new.nonzero(as_tuple=True)
    freed = ~stays
    # A freed slot that no new candidate fills (fewer than k valid entries) stays as it is.
    n_new = is_new.sum(dim=1, keepdim=True)
    freed_rank = freed.long().cumsum(1)
    take = freed & (freed_rank <= n_new)
    free_rows, free_slots = take.nonzero(as_tuple=True)
    return new_rows, free_slots, cols[sel[new_rows, new_cols] - k]

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

For the known-heuristic filters (``heuristics.py``: is a latent explained by token position or by token
identity alone?), sums over every valid token, exact, in memory independent of the number of tokens:

- ``pos_counts`` [n_position_buckets]: valid tokens per position bucket (shared by all latents), and per latent
  ``pos_sums`` / ``pos_sq`` [d_sae, n_position_buckets]: sum and sum of squares of its activation per bucket.
  ``pos_buckets`` [ctx_len] maps a position inside the sequence to its bucket: every position its own bucket
  when ``ctx_len <= n_position_buckets``, else the first half of the buckets are the first positions one by
  one and the rest cut the remaining positions into equal-width ranges (positional latents mostly care about
  the first few positions).
- ``token_counts`` [vocab seen]: valid tokens per token id (shared), and per latent a table of
  ``n_token_slots`` token ids (``tok_ids``, -1 = empty) with the sum and sum of squares of its activation on
  each (``tok_sums``, ``tok_sq``). A token takes a slot the first time the latent is non-zero on it (within a
  batch in token-id order) while the latent has a free slot, so every kept sum is exact (before that the
  latent was 0 on the token); a token arriving when the table is full is not kept and ``tok_overflow`` is set.
  What the table lacks is the difference to the latent's totals, so the statistics of the partition "each
  kept token, and all other tokens together" are exact.

Random keys come from a generator seeded with ``(seed, batch_index)``, so a resumed harvest gives exactly
the result of an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

_SEED_STRIDE = 1_000_003
_KEY_STRIDE = 1 << 32  # (latent, token) -> latent * _KEY_STRIDE + token; token ids are below 2**31
_PAIR_CHUNK = 1 << 22  # activations scanned for non-zeros at a time (bounds the pair tensors)


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
    n_position_buckets: int = 64
    n_token_slots: int = 64

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
        # Per position bucket and per (latent, token id): sums for the heuristic filters.
        self.pos_buckets = position_buckets(settings.ctx_len, settings.n_position_buckets).to(dev)
        n_buckets = int(self.pos_buckets.max()) + 1
        self.pos_counts = torch.zeros(n_buckets, dtype=torch.int64, device=dev)
        self.pos_sums = torch.zeros((d_sae, n_buckets), dtype=torch.float64, device=dev)
        self.pos_sq = torch.zeros((d_sae, n_buckets), dtype=torch.float64, device=dev)
        self.token_counts = torch.zeros(0, dtype=torch.int64, device=dev)
        m = settings.n_token_slots
        # Row-sorted keys latent * _KEY_STRIDE + token (empty slot: the row's largest key), so the flattened
        # table is sorted and one searchsorted finds every (latent, token) of a batch.
        self._tok_keys = _empty_keys(d_sae, m, dev)
        self.tok_sums = torch.zeros((d_sae, m), dtype=torch.float64, device=dev)
        self.tok_sq = torch.zeros((d_sae, m), dtype=torch.float64, device=dev)
        self.tok_filled = torch.zeros(d_sae, dtype=torch.int64, device=dev)
        self.tok_overflow = torch.zeros(d_sae, dtype=torch.bool, device=dev)

    # ------------------------------------------------------------------ update
    @torch.no_grad()
    def update(
        self,
        acts: torch.Tensor,
        valid: torch.Tensor,
        seq_ids: torch.Tensor,
        batch_index: int,
        tokens: torch.Tensor | None = None,
    ) -> None:
        """Fold in one batch.

        acts: [batch, seq, d_sae] SAE activations (modified in place: masked positions set to 0).
        valid: [batch, seq] bool, False for BOS / padding / special tokens.
        seq_ids: [batch] global index of each sequence in the harvest.
        tokens: [batch, seq] token ids, for the per-token sums (without them only the per-position sums are
            kept, and the store cannot tell unigram latents).
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
        self._update_sums(acts, valid, tokens)

    def _update_sums(self, acts: torch.Tensor, valid: torch.Tensor, tokens: torch.Tensor | None) -> None:
        """Per position bucket and per (latent, token) sums and sums of squares; from the non-zeros only, in
        row chunks so a dense "SAE" (a PCA baseline) never materialises more than a few million pairs."""
        batch, seq, d = acts.shape
        dev = acts.device
        buckets = self.pos_buckets[:seq]
        n_buckets = self.pos_counts.shape[0]
        self.pos_counts += torch.bincount(buckets.expand(batch, seq)[valid], minlength=n_buckets)
        if tokens is not None:
            tokens = tokens.to(dev).long()
            seen = tokens[valid]
            if seen.numel():
                size = max(int(seen.max()) + 1, self.token_counts.shape[0])
                counts = torch.bincount(seen, minlength=size)
                counts[: self.token_counts.shape[0]] += self.token_counts
                self.token_counts = counts
        flat = acts.view(batch * seq, d)
        rows_per_chunk = max(1, _PAIR_CHUNK // max(d, 1))
        for lo in range(0, batch * seq, rows_per_chunk):
            part = flat[lo : lo + rows_per_chunk]
            row, lat = part.nonzero(as_tuple=True)
            if not row.numel():
                continue
            val = part[row, lat].double()
            row = row + lo
            cell = lat * n_buckets + buckets[row % seq]
            self.pos_sums.view(-1).index_add_(0, cell, val)
            self.pos_sq.view(-1).index_add_(0, cell, val * val)
            if tokens is not None:
                self._update_tokens(lat, tokens.view(-1)[row], val)

    def _update_tokens(self, lat: torch.Tensor, tok: torch.Tensor, val: torch.Tensor) -> None:
        """Add the (latent, token, value) pairs of a batch to the per-token tables."""
        keys = lat * _KEY_STRIDE + tok
        table = self._tok_keys.view(-1)
        where = torch.searchsorted(table, keys).clamp(max=table.shape[0] - 1)
        found = table[where] == keys
        if bool(found.any()):  # tokens already in their latent's table (most pairs, once the tables fill)
            at, v = where[found], val[found]
            self.tok_sums.view(-1).index_add_(0, at, v)
            self.tok_sq.view(-1).index_add_(0, at, v * v)
        new = ~found
        if not bool(new.any()):
            return
        keys, lat, val = keys[new], lat[new], val[new]
        m = self._tok_keys.shape[1]
        full = self.tok_filled[lat] >= m
        if bool(full.any()):  # a full table takes no new token
            self.tok_overflow[lat[full]] = True
            keys, val = keys[~full], val[~full]
            if not keys.numel():
                return
        keys, inverse = torch.unique(keys, return_inverse=True)  # sorted
        sums = torch.zeros(keys.shape[0], dtype=torch.float64, device=keys.device).index_add_(0, inverse, val)
        sq = torch.zeros_like(sums).index_add_(0, inverse, val * val)
        latents = keys // _KEY_STRIDE
        # rank of each new key among its latent's new keys (keys are sorted, so a latent's keys are contiguous)
        first = torch.searchsorted(latents, latents)
        rank = torch.arange(latents.shape[0], device=keys.device) - first
        slot = self.tok_filled[latents] + rank
        fits = slot < m
        self.tok_overflow[latents[~fits]] = True
        latents, slot = latents[fits], slot[fits]
        self._tok_keys[latents, slot] = keys[fits]
        self.tok_sums[latents, slot] = sums[fits]
        self.tok_sq[latents, slot] = sq[fits]
        self.tok_filled += torch.bincount(latents, minlength=self.d_sae)
        rows = torch.unique(latents)
        order = self._tok_keys[rows].argsort(dim=1)
        self._tok_keys[rows] = self._tok_keys[rows].gather(1, order)
        self.tok_sums[rows] = self.tok_sums[rows].gather(1, order)
        self.tok_sq[rows] = self.tok_sq[rows].gather(1, order)

    @property
    def tok_ids(self) -> torch.Tensor:
        """[d_sae, n_token_slots] int32 token ids of the per-token table, ascending per row, -1 = empty."""
        tok = self._tok_keys % _KEY_STRIDE
        filled = torch.arange(self._tok_keys.shape[1], device=tok.device).unsqueeze(0) < self.tok_filled.unsqueeze(1)
        return torch.where(filled, tok, -1).to(torch.int32)

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
            "pos_buckets": self.pos_buckets.cpu(),
            "pos_counts": self.pos_counts.cpu(),
            "pos_sums": self.pos_sums.cpu(),
            "pos_sq": self.pos_sq.cpu(),
            "token_counts": self.token_counts.cpu(),
            "tok_ids": self.tok_ids.cpu(),
            "tok_sums": self.tok_sums.cpu(),
            "tok_sq": self.tok_sq.cpu(),
            "tok_overflow": self.tok_overflow.cpu(),
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
        if "pos_sums" in state:  # stores harvested before the heuristic sums keep their zeros
            for name in ("pos_buckets", "pos_counts", "pos_sums", "pos_sq", "token_counts", "tok_sums", "tok_sq"):
                setattr(out, name, state[name].to(device))
            out.tok_overflow = state["tok_overflow"].to(device)
            ids = state["tok_ids"].to(device).long()
            out.tok_filled = (ids >= 0).sum(dim=1)
            rows = torch.arange(d_sae, device=ids.device).unsqueeze(1) * _KEY_STRIDE
            out._tok_keys = torch.where(ids >= 0, rows + ids, rows + _KEY_STRIDE - 1)
        out.pool_keys = state["pool_keys"].clone()
        out.pool_ids = state["pool_ids"].clone()
        offsets = state["pool_offsets"].tolist()
        out.pool_entries = [
            (state["pool_pos"][a:b], state["pool_latents"][a:b], state["pool_values"][a:b])
            for a, b in zip(offsets[:-1], offsets[1:])
        ]
        return out


def position_buckets(ctx_len: int, n_buckets: int) -> torch.Tensor:
    """[ctx_len] bucket of each position: the positions themselves when ``ctx_len <= n_buckets``; else the
    first ``n_buckets // 2`` positions one by one and the rest in equal-width ranges."""
    pos = torch.arange(ctx_len)
    if ctx_len <= n_buckets:
        return pos
    exact = n_buckets // 2
    rest = n_buckets - exact
    width = -(-(ctx_len - exact) // rest)
    return torch.where(pos < exact, pos, exact + (pos - exact) // width)


def _empty_keys(d_sae: int, m: int, device: torch.device) -> torch.Tensor:
    rows = torch.arange(d_sae, dtype=torch.int64, device=device).unsqueeze(1) * _KEY_STRIDE
    return (rows + _KEY_STRIDE - 1).expand(d_sae, m).clone()


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

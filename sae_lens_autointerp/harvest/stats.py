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
        fires = acts > s.threshold
        self.n_fire_tokens += fires.sum(dim=(0, 1))
        self.sum_acts += acts.sum(dim=(0, 1), dtype=torch.float64)

        n_chunks = -(-seq // w)
        padded = acts
        if n_chunks * w != seq:
            padded = torch.nn.functional.pad(acts, (0, 0, 0, n_chunks * w - seq))
        chunk_max, chunk_arg = padded.view(batch, n_chunks, w, d).max(dim=2)  # [B, C, d]
        n = batch * n_chunks
        chunk_max = chunk_max.reshape(n, d)
        peak_pos = (chunk_arg.reshape(batch, n_chunks, d) + w * torch.arange(n_chunks, device=acts.device).view(1, -1, 1)).reshape(n, d)
        chunk_fires = chunk_max > s.threshold
        self.n_fire_examples += chunk_fires.sum(dim=0)
        seq_base = (seq_ids.to(acts.device).long() * s.ctx_len).repeat_interleave(n_chunks)  # [N]

        gen = torch.Generator(device="cpu").manual_seed(s.seed * _SEED_STRIDE + batch_index)
        keys = torch.rand((n, d), generator=gen).to(acts.device)
        pool_keys = torch.rand((n,), generator=gen)

        cand_vals = torch.where(chunk_fires, chunk_max, float("-inf")).T  # [d, N]
        sel_top = _select(self.top_vals, cand_vals, s.top_k)
        res_score = torch.where(chunk_fires, -keys, float("-inf")).T
        sel_res = _select(-self.res_keys, res_score, s.n_stratified)

        def windows_for(sel: torch.Tensor, old_windows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
            is_new = sel >= k
            out = old_windows.gather(1, sel.clamp(max=k - 1).unsqueeze(-1).expand(-1, -1, w)).clone()
            lat, col = is_new.nonzero(as_tuple=True)
            chunk = sel[lat, col] - k
            pos = peak_pos[chunk, lat]
            out[lat, col] = _gather_windows(acts, valid, chunk // n_chunks, pos, lat, s.peak_offset, w)
            ids = torch.zeros_like(sel)
            ids[lat, col] = seq_base[chunk] + pos
            return out, ids

        new_top_vals = _take(self.top_vals, cand_vals, sel_top, s.top_k)
        top_windows, new_ids = windows_for(sel_top, self.top_windows, s.top_k)
        top_ids = torch.where(sel_top >= s.top_k, new_ids, self.top_ids.gather(1, sel_top.clamp(max=s.top_k - 1)))
        empty = torch.isinf(new_top_vals)
        self.top_vals = new_top_vals
        self.top_ids = top_ids.masked_fill(empty, -1)
        self.top_windows = top_windows.masked_fill(empty.unsqueeze(-1), 0)

        res_keys = -_take(-self.res_keys, res_score, sel_res, s.n_stratified)
        res_vals = _take(self.res_vals, cand_vals, sel_res, s.n_stratified)
        res_windows, new_ids = windows_for(sel_res, self.res_windows, s.n_stratified)
        res_ids = torch.where(sel_res >= s.n_stratified, new_ids, self.res_ids.gather(1, sel_res.clamp(max=s.n_stratified - 1)))
        empty = torch.isinf(res_keys)
        self.res_keys = res_keys
        self.res_vals = res_vals.masked_fill(empty, 0)
        self.res_ids = res_ids.masked_fill(empty, -1)
        self.res_windows = res_windows.masked_fill(empty.unsqueeze(-1), 0)

        self._update_pool(acts, valid, pool_keys, seq_base, n_chunks)

    def _update_pool(self, acts: torch.Tensor, valid: torch.Tensor, keys: torch.Tensor, seq_base: torch.Tensor, n_chunks: int) -> None:
        p = self.s.n_random_windows
        if p == 0:
            return
        w = self.s.example_len
        batch, seq, _ = acts.shape
        chunk_valid = torch.zeros(batch, n_chunks * w, dtype=torch.bool)
        chunk_valid[:, :seq] = valid.cpu()
        chunk_valid = chunk_valid.view(batch * n_chunks, w).any(dim=1)
        cand = torch.where(chunk_valid, -keys, float("-inf"))
        scores, sel = torch.cat([-self.pool_keys, cand]).topk(p)
        old_entries = self.pool_entries
        entries, ids = [], torch.full((p,), -1, dtype=torch.int64)
        for slot, (score, index) in enumerate(zip(scores.tolist(), sel.tolist())):
            if score == float("-inf"):
                entries.append(_empty_entry())
            elif index < p:
                entries.append(old_entries[index])
                ids[slot] = self.pool_ids[index]
            else:
                chunk = index - p
                b, c = divmod(chunk, n_chunks)
                start = c * w
                window = acts[b, start : start + w]
                pos, lat = (window > self.s.threshold).nonzero(as_tuple=True)
                entries.append((pos.to(torch.int16).cpu(), lat.to(torch.int32).cpu(), window[pos, lat].float().cpu()))
                ids[slot] = int(seq_base[chunk]) + start
        self.pool_keys = -scores
        self.pool_ids = ids
        self.pool_entries = entries

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
            "pool_pos": torch.cat([e[0] for e in self.pool_entries]) if self.pool_entries else torch.zeros(0, dtype=torch.int16),
            "pool_latents": torch.cat([e[1] for e in self.pool_entries]) if self.pool_entries else torch.zeros(0, dtype=torch.int32),
            "pool_values": torch.cat([e[2] for e in self.pool_entries]) if self.pool_entries else torch.zeros(0),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], settings: HarvestSettings, device: torch.device | str = "cpu") -> LatentStats:
        d_sae = state["n_fire_tokens"].shape[0]
        out = cls(d_sae, settings, device)
        for name in ("n_fire_tokens", "n_fire_examples", "sum_acts", "top_vals", "top_ids", "top_windows", "res_keys", "res_vals", "res_ids", "res_windows"):
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


def _select(old_score: torch.Tensor, cand_score: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices (into ``cat([old, cand], 1)``) of the ``k`` largest scores per row, sorted."""
    return torch.cat([old_score, cand_score], dim=1).topk(k, dim=1).indices


def _take(old: torch.Tensor, cand: torch.Tensor, sel: torch.Tensor, k: int) -> torch.Tensor:
    """Values at ``sel`` of ``cat([old, cand], 1)`` without materialising the concatenation twice."""
    from_old = old.gather(1, sel.clamp(max=k - 1))
    from_cand = cand.gather(1, (sel - k).clamp(min=0))
    return torch.where(sel >= k, from_cand, from_old)


def _gather_windows(acts: torch.Tensor, valid: torch.Tensor, b: torch.Tensor, pos: torch.Tensor, lat: torch.Tensor, lead: int, w: int) -> torch.Tensor:
    """acts[b, pos - lead : pos - lead + w, lat] for each row, zero outside the sequence or where masked."""
    seq = acts.shape[1]
    p = pos.unsqueeze(1) + (torch.arange(w, device=acts.device) - lead).unsqueeze(0)
    inside = (p >= 0) & (p < seq)
    pc = p.clamp(0, seq - 1)
    values = acts[b.unsqueeze(1), pc, lat.unsqueeze(1)]
    keep = inside & valid[b.unsqueeze(1), pc]
    return torch.where(keep, values, 0.0).clamp(-65504, 65504).to(torch.float16)

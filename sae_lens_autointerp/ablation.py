"""Output-side analysis by ablation (Cunningham et al. 2023, sec. 5): what a latent does to the next-token
prediction on the texts where it fires.

For latent ``i`` and one of its activating contexts from the store (the harvested sequence up to and including
the example's peak token, so the model sees exactly what it saw during the harvest), the model runs twice: clean,
and with the latent *ablated*: at the SAE's hook the activation ``x`` becomes ``x - (decode(f) - decode(f'))``
where ``f = encode(x)`` and ``f'`` is ``f`` with latent ``i`` set to 0. That is the SAE reconstruction without
the latent, plus the unchanged error term ``x - decode(f)``; for an affine decoder (every SAELens SAE with
``normalize_activations="none"``) it is ``x - f_i * W_dec[i]`` (divided by ``|W_dec[i]|`` for TopK SAEs with
``rescale_acts_by_decoder_norm``). A transcoder's latent is read at its input hook and removed at its output
hook (``hook_name_out``). By default the latent is removed at every position of the context but special
tokens (BOS; where the harvest never looked), so attention from later tokens no longer sees it either;
``positions="peak"`` removes it at the peak only.

Contexts that share a token with a held-out window (``avoid``: the output explainer passes its sample's test
windows) are skipped, and the next ones taken, so the evidence an explainer reads never came from the text the
scorers test it on; how many were skipped is ``n_excluded``.

The *effect* on token ``t`` is ``clean - ablated`` of its next-token log-probability (``measure="logprob"``, the
default; or its logit, ``"logit"``) at the peak position, averaged over the contexts. A positive effect means
the latent raises the token: ``promoted`` lists the largest, ``suppressed`` the most negative. Next to it,
``direct`` is the unembedding projection of the decoder direction
(:func:`~sae_lens_autointerp.steering.promoted_tokens`), which sees only the direct path; the ablation includes
every downstream layer and only the contexts the latent actually fires in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .errors import ConfigError
from .harvest.store import LatentStore
from .spans import SpanSet
from .steering import Steerer, promoted_tokens
from .subjects import as_subject
from .text import Renderer

Measure = Literal["logprob", "logit"]
Positions = Literal["all", "peak"]


@dataclass(frozen=True)
class AblationEffects:
    """What removing one latent does to the next-token prediction at its peaks (see the module docstring).

    ``promoted`` / ``suppressed`` / ``direct``: ``(token id, token text, mean effect)``, strongest first.
    ``activations``: the latent's activation at each context's peak, as recomputed by this forward pass.
    ``kl``: the mean ``KL(clean || ablated)`` of the next-token distribution at the peaks (nats).
    """

    latent: int
    measure: str
    positions: str
    promoted: list[tuple[int, str, float]]
    suppressed: list[tuple[int, str, float]]
    direct: list[tuple[int, str, float]]
    n_contexts: int
    activations: list[float] = field(default_factory=list)
    kl: float = 0.0
    context_ids: list[int] = field(default_factory=list)  # global token id of each context's peak
    tokens_processed: int = 0
    direct_error: str | None = None
    n_excluded: int = 0  # contexts skipped for sharing a token with a held-out window

    def to_dict(self) -> dict[str, Any]:
        return {
            "latent": self.latent,
            "measure": self.measure,
            "positions": self.positions,
            "promoted": [list(t) for t in self.promoted],
            "suppressed": [list(t) for t in self.suppressed],
            "direct": [list(t) for t in self.direct],
            "n_contexts": self.n_contexts,
            "activations": list(self.activations),
            "kl": self.kl,
            "context_ids": list(self.context_ids),
            "tokens_processed": self.tokens_processed,
            "direct_error": self.direct_error,
            "n_excluded": self.n_excluded,
        }


class Ablator:
    """Runs ``model`` clean and with one latent of ``sae`` ablated (hold :attr:`lock` around use; the public
    method takes it). Counts the tokens of every forward pass in ``tokens_processed``."""

    def __init__(self, model: Any, sae: Any) -> None:
        self.steerer = Steerer(model, sae)  # hook points, padding, the model's lock
        self.model, self.sae = model, sae
        self.lock = self.steerer.lock
        self.adapter = self.steerer.adapter
        self.in_point, self.out_point = self.adapter.hook_point, self.steerer.hook_point
        self.special = torch.tensor(self.adapter.special_token_ids(), dtype=torch.long)
        self.tokens_processed = 0

    def _sae_input(self, act: torch.Tensor) -> torch.Tensor:
        """The SAE's input from the hook's activation, as the harvest reads it (``ModelAdapter.capture``)."""
        head = self.adapter.spec.head_index
        if head is not None:
            act = act[:, :, head, :]
        elif act.ndim == 4:
            act = act.flatten(-2)
        return act.to(device=self.sae.device, dtype=self.sae.dtype)

    def _remove(self, act: torch.Tensor, contribution: torch.Tensor) -> torch.Tensor:
        act = act.clone()
        c = contribution.to(device=act.device, dtype=act.dtype)
        head = self.steerer.head_index
        if head is not None:
            act[:, :, head, :] -= c.reshape(act[:, :, head, :].shape)
        else:
            act -= c.reshape(act.shape)
        return act

    def hooks(self, latent: int, mask: torch.Tensor, activations: list[torch.Tensor]) -> list[tuple[str, Any]]:
        """Forward hooks that remove ``latent``'s decoder contribution where ``mask`` [batch, seq] is True; the
        latent's activations [batch, seq] are appended to ``activations``."""
        box: dict[str, torch.Tensor] = {}

        def read(act: torch.Tensor) -> None:
            feats = self.sae.encode(self._sae_input(act))
            activations.append(feats[..., latent].detach().float().cpu())
            ablated = feats.clone()
            ablated[..., latent] = torch.where(mask.to(feats.device), 0.0, feats[..., latent])
            box["contribution"] = self.sae.decode(feats) - self.sae.decode(ablated)

        def write(act: torch.Tensor) -> torch.Tensor:
            return self._remove(act, box.pop("contribution"))

        if self.in_point == self.out_point:

            def both(act: torch.Tensor) -> torch.Tensor:
                read(act)
                return write(act)

            return [(self.in_point, both)]
        return [(self.in_point, read), (self.out_point, write)]

    @torch.no_grad()
    def run(
        self,
        rows: Sequence[Sequence[int]],
        peaks: Sequence[int],
        latent: int,
        *,
        measure: Measure = "logprob",
        positions: Positions = "all",
        batch_size: int = 8,
    ) -> tuple[torch.Tensor, list[float], list[float]]:
        """Per context: the effect ``clean - ablated`` at its peak ``[n, vocab]``, the latent's activation at the
        peak, and ``KL(clean || ablated)`` at the peak."""
        if measure not in ("logprob", "logit"):
            raise ConfigError(f"measure must be 'logprob' or 'logit', got {measure!r}")
        if positions not in ("all", "peak"):
            raise ConfigError(f"positions must be 'all' or 'peak', got {positions!r}")
        if len(rows) != len(peaks) or not rows:
            raise ConfigError("pass one peak position per context, and at least one context")
        d_sae = int(self.sae.cfg.d_sae)
        if not 0 <= int(latent) < d_sae:
            raise ConfigError(f"latent {latent} is out of range for d_sae={d_sae}")
        effects, acts, kls = [], [], []
        with self.lock:
            for lo in range(0, len(rows), batch_size):
                chunk, where = rows[lo : lo + batch_size], list(peaks[lo : lo + batch_size])
                ids, lengths = self.steerer._batch(chunk)
                if any(not 0 <= p < n for p, n in zip(where, lengths)):
                    raise ConfigError("a peak position lies outside its context")
                if positions == "all":
                    mask = ~torch.isin(ids.cpu(), self.special)
                else:
                    mask = torch.zeros(ids.shape, dtype=torch.bool)
                    mask[torch.arange(len(where)), torch.tensor(where)] = True
                seen: list[torch.Tensor] = []
                subject = self.steerer.subject
                clean = subject.run(ids, [], logits=True)
                ablated = subject.run(ids, self.hooks(int(latent), mask, seen), logits=True)
                assert clean is not None and ablated is not None  # logits passes are never stopped early
                clean, ablated = clean.float(), ablated.float()
                self.tokens_processed += 2 * sum(lengths)
                index = torch.arange(len(where))
                peak = torch.tensor(where)
                c, a = clean[index, peak], ablated[index, peak]
                lc, la = torch.log_softmax(c, -1), torch.log_softmax(a, -1)
                effects.append((lc - la) if measure == "logprob" else (c - a))
                kls += (lc.exp() * (lc - la)).sum(-1).tolist()
                acts += seen[0][index, peak].tolist()
        return torch.cat(effects).cpu(), acts, kls


def contexts_of(
    store: LatentStore, latent: int, n: int, source: str = "top", avoid: Iterable[tuple[int, int]] = ()
) -> tuple[list[list[int]], list[int], list[int]]:
    """Up to ``n`` activating contexts of ``latent`` from the store: (token rows from the sequence start to the
    peak inclusive, the peak's index in each row, the peak's global token id). ``source``: ``"top"`` (the most
    activating examples) or ``"stratified"`` (the uniform sample over the activation distribution). A context
    sharing a token with a span of ``avoid`` (global token ids ``[start, end)``) is skipped."""
    return _contexts(store, latent, n, source, avoid)[:3]


def _contexts(
    store: LatentStore, latent: int, n: int, source: str, avoid: Iterable[tuple[int, int]]
) -> tuple[list[list[int]], list[int], list[int], int]:
    """:func:`contexts_of` and how many contexts ``avoid`` excluded."""
    if source not in ("top", "stratified"):
        raise ConfigError(f"source must be 'top' or 'stratified', got {source!r}")
    examples = store.top_examples(latent) if source == "top" else store.stratified_examples(latent)
    ctx = store.settings.ctx_len
    held_out = SpanSet(avoid)
    rows: list[list[int]] = []
    peaks: list[int] = []
    ids: list[int] = []
    excluded = 0
    for example in examples:
        if len(rows) == n:
            break
        seq, pos = divmod(example.token_id, ctx)
        if held_out.overlaps(seq * ctx, seq * ctx + pos + 1):  # the context runs from the sequence start
            excluded += 1
            continue
        row = [int(t) for t in store.tokens[seq, : pos + 1]]
        if any(t < 0 for t in row):
            continue  # never for a harvested peak: padding only follows a sequence's real tokens
        rows.append(row)
        peaks.append(pos)
        ids.append(example.token_id)
    return rows, peaks, ids, excluded


def ablation_effects(
    sae: Any,
    model: Any,
    store: LatentStore,
    latent: int,
    k: int = 10,
    *,
    n_contexts: int = 16,
    source: str = "top",
    measure: Measure = "logprob",
    positions: Positions = "all",
    batch_size: int = 8,
    avoid: Iterable[tuple[int, int]] = (),
) -> AblationEffects:
    """The ``k`` tokens ``latent`` promotes and suppresses most at its peaks, by ablation on up to ``n_contexts``
    of its activating contexts in ``store`` that share no token with a span of ``avoid`` (see the module
    docstring), with the unembedding view beside it."""
    latent = store.check_latent(latent)
    if store.d_sae != int(sae.cfg.d_sae):
        raise ConfigError(f"the store has d_sae={store.d_sae} but the SAE has {sae.cfg.d_sae}")
    if k < 1 or n_contexts < 1:
        raise ConfigError("k and n_contexts must be >= 1")
    piece = Renderer(as_subject(model).tokenizer).piece
    direct: list[tuple[int, str, float]] = []
    direct_error = None
    try:
        direct = [(t, piece(t), s) for t, s in promoted_tokens(model, sae, latent, k)]
    except ConfigError as exc:  # no direct path to the logits (a per-head SAE, an SAE not on the residual)
        direct_error = str(exc)
    rows, peaks, ids, excluded = _contexts(store, latent, n_contexts, source, avoid)
    if not rows:
        return AblationEffects(
            latent, measure, positions, [], [], direct, 0, direct_error=direct_error, n_excluded=excluded
        )
    ablator = Ablator(model, sae)
    effects, acts, kls = ablator.run(rows, peaks, latent, measure=measure, positions=positions, batch_size=batch_size)
    mean = effects.mean(0)
    top, bottom = mean.topk(k), (-mean).topk(k)
    return AblationEffects(
        latent=latent,
        measure=measure,
        positions=positions,
        promoted=[(int(t), piece(int(t)), float(v)) for v, t in zip(top.values, top.indices)],
        suppressed=[(int(t), piece(int(t)), -float(v)) for v, t in zip(bottom.values, bottom.indices)],
        direct=direct,
        n_contexts=len(rows),
        activations=acts,
        kl=sum(kls) / len(kls),
        context_ids=ids,
        tokens_processed=ablator.tokens_processed,
        direct_error=direct_error,
        n_excluded=excluded,
    )

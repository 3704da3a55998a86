"""Steer one SAE latent and calibrate the steering strength to a target KL divergence.

Steering latent ``i`` by ``alpha`` adds ``alpha * W_dec[i]`` to the activation at the SAE's hook
(``sae.cfg.metadata.hook_name``; for transcoders the output hook ``hook_name_out``, where the decoder writes)
at every position after BOS. For an SAE whose decoder is affine (every
SAELens SAE with ``normalize_activations="none"``) that is exactly "replace the activation by the SAE
reconstruction with latent ``i`` shifted by ``alpha``, plus the unchanged error term":
``x + alpha * W_dec[i] = decode(f + alpha e_i) + (x - decode(f))``. No other latent's contribution changes and
nothing is lost to reconstruction error (tests/test_paper_scorers.py checks both statements on the embedded
model). With ``normalize_activations`` set, the vector is used as is, in the model's activation space.

Calibration (:meth:`Steerer.calibrate`): ``alpha`` is chosen per latent so that the mean KL divergence
``KL(clean || steered)`` of the next-token distribution, averaged over the steered positions of a fixed
set of neutral prompts (:data:`NEUTRAL_PROMPTS`), reaches ``target_kl`` (default 1.0 nats) within
``tolerance`` (default 0.1 nats, absolute). The search starts at ``alpha0`` = the mean norm of the clean
activation at the hook divided by ``|W_dec[i]|`` (a steering vector as large as the activation), doubles
the upper end until the KL passes the target (bracketing, never beyond ``alpha_max``, by default
``64 * alpha0``), then bisects the bracket; at most ``max_evals`` steered forward passes in all. When the
target cannot be reached (``alpha_max`` too small, or the KL never rises that far) the alpha whose KL came
closest is returned with ``converged=False``.

Generation (:meth:`Steerer.generate`) is greedy and batched (right padding, a full forward per new token:
no KV cache, so it is exact for every model kind and cheap for the short continuations used here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConfigError
from .harvest.model import ModelAdapter, model_lock
from .subjects import HookFn, StopForward, as_subject

#: Where steering starts in each prompt: ``None`` (every position after BOS), ``"last"`` (the prompt's last
#: token on, as the paper steers) or one position per prompt (:meth:`Steerer.starts_of`).
Starts = Sequence[int] | str | None

#: Generic sentence beginnings the steered model continues (intervention scoring, output-side explainers).
NEUTRAL_PROMPTS: tuple[str, ...] = (
    "The weather today is",
    "Once upon a time, there was",
    "I think the most important thing is",
    "Yesterday my friend told me that",
    "Here is a short list of",
    "The best way to learn is",
    "In the news this morning,",
    "She opened the door and",
)


def model_name(model: Any) -> str:
    """A readable name of the subject model, for usage accounting."""
    try:
        return as_subject(model).name
    except ConfigError:
        return type(model).__name__


@dataclass(frozen=True)
class Calibration:
    """The steering strength found for one latent: ``kl`` is the mean KL reached at ``alpha``."""

    latent: int
    alpha: float
    kl: float
    target_kl: float
    tolerance: float
    converged: bool
    n_evals: int
    history: tuple[tuple[float, float], ...] = field(default=())  # (alpha, kl) of every evaluation

    def to_dict(self) -> dict[str, Any]:
        return {
            "latent": self.latent,
            "alpha": self.alpha,
            "kl": self.kl,
            "target_kl": self.target_kl,
            "tolerance": self.tolerance,
            "converged": self.converged,
            "n_evals": self.n_evals,
            "history": [list(h) for h in self.history],
        }


class Steerer:
    """Steer latents of ``sae`` inside ``model`` (every model kind of :mod:`~sae_lens_autointerp.subjects`).

    Counts the tokens of every forward pass (``tokens_processed``: real tokens per row, padding excluded)
    and the tokens generated (``tokens_generated``), for cost accounting. Not thread-safe by itself: hold
    :attr:`lock` around use (every public method that runs the model takes it).
    """

    def __init__(self, model: Any, sae: Any) -> None:
        self.model = model
        self.sae = sae
        self.adapter = ModelAdapter(model, sae)
        self.subject = self.adapter.subject
        self.spec = self.adapter.spec
        self.tokenizer = self.adapter.tokenizer
        self.device = self.adapter.device
        self.lock = model_lock(model)
        self.start = 1 if self.spec.prepend_bos else 0  # first steered position (BOS is never steered)
        # Where the decoder writes: the SAE's own hook, or a transcoder's output hook.
        self.head_index = self.spec.head_index
        self.hook_point = self.adapter.hook_point
        out = sae.cfg.metadata.get("hook_name_out") if hasattr(sae.cfg.metadata, "get") else None
        if out:
            self.hook_point = self.subject.resolve(out, what="cfg.metadata.hook_name_out")
            self.head_index = None
        self.subject.check_steerable(self.hook_point)  # before any forward pass
        self.tokens_processed = 0
        self.tokens_generated = 0
        self.n_forward = 0

    # ------------------------------------------------------------------ building blocks

    def direction(self, latent: int) -> torch.Tensor:
        """``W_dec[latent]`` as float32 on the model's device."""
        d_sae = int(self.sae.cfg.d_sae)
        if not 0 <= int(latent) < d_sae:
            raise ConfigError(f"latent {latent} is out of range for d_sae={d_sae}")
        return self.sae.W_dec[int(latent)].detach().to(device=self.device, dtype=torch.float32)

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of ``prompts``, with BOS first when the SAE was trained with ``prepend_bos``."""
        bos = self.adapter.bos_token_id() if self.spec.prepend_bos else None
        out = []
        for p in prompts:
            ids = list(self.tokenizer(p, add_special_tokens=False)["input_ids"])
            out.append(([bos] if bos is not None else []) + ids)
        return out

    def _add(self, act: torch.Tensor, delta: torch.Tensor, start: int, row: slice | int = slice(None)) -> torch.Tensor:
        delta = delta.to(device=act.device, dtype=act.dtype)
        if self.head_index is not None:
            act[row, start:, self.head_index, :] += delta
        elif act.ndim == 4:  # a whole-layer SAE reading a per-head hook: heads concatenated
            act[row, start:] += delta.view(act.shape[-2:])
        else:
            act[row, start:] += delta
        return act

    def starts_of(self, rows: Sequence[Sequence[int]], starts: Starts) -> list[int]:
        """Each row's first steered position: ``None`` -> every position after BOS; ``"last"`` -> the row's
        last token (Paulo et al. 2024, App. G.1: "all token positions after and including the final prompt
        token"); or one position per row."""
        if starts is None:
            return [self.start] * len(rows)
        if starts == "last":
            return [max(len(r) - 1, self.start) for r in rows]
        out = [int(s) for s in starts]
        if len(out) != len(rows):
            raise ConfigError(f"starts has {len(out)} positions for {len(rows)} prompts")
        return out

    def hooks(self, latent: int | None, alpha: float, starts: Sequence[int] | None = None) -> list[tuple[str, HookFn]]:
        """The hooks (``Subject.run``'s) that steer ``latent`` by ``alpha`` (none when not steering), from
        position ``starts[i]`` on in batch row ``i`` (default: every position after BOS in every row)."""
        if latent is None or alpha == 0:
            return []
        delta = float(alpha) * self.direction(latent)
        start = self.start
        row_starts = None if starts is None else list(starts)

        def steer(act: torch.Tensor) -> torch.Tensor:
            act = act.clone()
            if row_starts is None:
                return self._add(act, delta, start)
            for i, s in enumerate(row_starts[: act.shape[0]]):
                self._add(act, delta, s, i)
            return act

        return [(self.hook_point, steer)]

    def _batch(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, list[int]]:
        lengths = [len(r) for r in rows]
        if min(lengths) < 1:
            raise ConfigError("every prompt needs at least one token")
        pad = self.adapter.pad_token_id()
        ids = torch.full((len(rows), max(lengths)), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        return ids.to(self.device), lengths

    @torch.no_grad()
    def log_probs(
        self, rows: Sequence[Sequence[int]], latent: int | None = None, alpha: float = 0.0, starts: Starts = None
    ) -> list[torch.Tensor]:
        """Next-token log-probabilities, one float32 ``[len(row), vocab]`` tensor per row.

        Rows are right-padded into one batch; padding comes after every real token, so with causal
        attention it never changes a real position's output."""
        ids, lengths = self._batch(rows)
        with self.lock:
            logits = self.subject.run(ids, self.hooks(latent, alpha, self.starts_of(rows, starts)), logits=True)
        assert logits is not None  # a logits pass is never stopped early
        self.n_forward += 1
        self.tokens_processed += sum(lengths)
        logp = torch.log_softmax(logits.float(), dim=-1)
        return [logp[i, :n] for i, n in enumerate(lengths)]

    @torch.no_grad()
    def token_logprobs(
        self, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], batch_size: int = 4
    ) -> list[list[float]]:
        """``log P(token | context, earlier tokens)`` of each continuation token, under the clean subject model
        (the subject as its own scorer LM). Only the continuation's logits are normalised, so a long shared
        context costs no ``[length, vocab]`` float32 copy."""
        out: list[list[float]] = []
        with self.lock:
            for i in range(0, len(contexts), batch_size):
                rows = [
                    list(c) + list(x) for c, x in zip(contexts[i : i + batch_size], continuations[i : i + batch_size])
                ]
                ids, lengths = self._batch(rows)
                logits = self.subject.run(ids, [], logits=True)
                assert logits is not None
                self.n_forward += 1
                self.tokens_processed += sum(lengths)
                for j, (c, x) in enumerate(zip(contexts[i : i + batch_size], continuations[i : i + batch_size])):
                    span = logits[j, len(c) - 1 : len(c) + len(x) - 1].float()
                    target = torch.tensor(list(x), device=span.device).unsqueeze(-1)
                    out.append((span.gather(-1, target).squeeze(-1) - torch.logsumexp(span, -1)).tolist())
        return out

    @torch.no_grad()
    def activations(
        self, rows: Sequence[Sequence[int]], latent: int | None = None, alpha: float = 0.0, starts: Starts = None
    ) -> torch.Tensor:
        """The activation at the hook *after* steering, ``[batch, seq, ...]`` (forward stopped there)."""
        ids, _ = self._batch(rows)
        captured: list[torch.Tensor] = []

        def capture(act: torch.Tensor) -> None:
            captured.append(act.detach().clone())
            raise StopForward

        with self.lock:
            hooks = self.hooks(latent, alpha, self.starts_of(rows, starts))
            self.subject.run(ids, [*hooks, (self.hook_point, capture)], logits=False)
        return captured[0]

    def mean_kl(self, clean: Sequence[torch.Tensor], steered: Sequence[torch.Tensor], starts: Starts = None) -> float:
        """``KL(clean || steered)`` of the next-token distribution, averaged over steered positions (with
        ``starts="last"``: the next-token distribution at each prompt's end, as in the paper)."""
        total, count = 0.0, 0
        for p, q, s in zip(clean, steered, self.starts_of([range(len(c)) for c in clean], starts)):
            p, q = p[s:], q[s:]
            if len(p) == 0:
                continue
            kl = (p.exp() * (p - q)).sum(-1)
            total += float(kl.sum())
            count += len(kl)
        if count == 0:
            raise ConfigError("the prompts have no position after BOS to steer")
        return total / count

    def activation_scale(self, rows: Sequence[Sequence[int]], starts: Starts = None) -> float:
        """Mean norm of the clean activation at the hook over the steered positions."""
        act = self.activations(rows).float()
        norms = []
        for i, (r, s) in enumerate(zip(rows, self.starts_of(rows, starts))):
            a = act[i, s : len(r)]
            if self.head_index is not None:
                a = a[:, self.head_index]
            norms.append(a.reshape(a.shape[0], -1).norm(dim=-1))
        return float(torch.cat(norms).mean())

    # ------------------------------------------------------------------ calibration and generation

    def calibrate(
        self,
        latent: int,
        rows: Sequence[Sequence[int]],
        *,
        target_kl: float = 1.0,
        tolerance: float = 0.1,
        max_evals: int = 24,
        alpha_max: float | None = None,
        clean: Sequence[torch.Tensor] | None = None,
        starts: Starts = None,
    ) -> Calibration:
        """The ``alpha`` whose mean KL on ``rows`` is within ``tolerance`` of ``target_kl`` (see module doc)."""
        if target_kl <= 0 or tolerance <= 0:
            raise ConfigError("target_kl and tolerance must be > 0")
        with self.lock:
            if clean is None:
                clean = self.log_probs(rows)
            norm = float(self.direction(latent).norm())
            if norm == 0:
                return Calibration(latent, 0.0, 0.0, target_kl, tolerance, False, 0)
            alpha0 = max(self.activation_scale(rows, starts), 1e-6) / norm
            if alpha_max is None:
                alpha_max = 64 * alpha0
            history: list[tuple[float, float]] = []

            def kl_at(alpha: float) -> float:
                kl = self.mean_kl(clean, self.log_probs(rows, latent, alpha, starts), starts)
                history.append((alpha, kl))
                return kl

            lo, hi = 0.0, min(alpha0, alpha_max)
            kl_hi = kl_at(hi)
            while kl_hi < target_kl - tolerance and hi < alpha_max and len(history) < max_evals:
                lo, hi = hi, min(2 * hi, alpha_max)
                kl_hi = kl_at(hi)
            while abs(history[-1][1] - target_kl) > tolerance and kl_hi >= target_kl and len(history) < max_evals:
                mid = (lo + hi) / 2
                kl_mid = kl_at(mid)
                if kl_mid < target_kl:
                    lo = mid
                else:
                    hi, kl_hi = mid, kl_mid
        best_alpha, best_kl = min(history, key=lambda h: abs(h[1] - target_kl))
        return Calibration(
            latent,
            best_alpha,
            best_kl,
            target_kl,
            tolerance,
            abs(best_kl - target_kl) <= tolerance,
            len(history),
            tuple(history),
        )

    @torch.no_grad()
    def generate(
        self,
        rows: Sequence[Sequence[int]],
        latent: int | None = None,
        alpha: float = 0.0,
        max_new_tokens: int = 12,
        starts: Starts = None,
    ) -> list[list[int]]:
        """Greedy continuations (new token ids only; a row stops after EOS), steered from each row's start
        (``starts``) on, generated tokens included."""
        seqs = [list(r) for r in rows]
        new: list[list[int]] = [[] for _ in rows]
        done = [False] * len(rows)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        first = self.starts_of(rows, starts)
        with self.lock:
            for _ in range(max_new_tokens):
                active = [i for i in range(len(seqs)) if not done[i]]
                if not active:
                    break
                ids, lengths = self._batch([seqs[i] for i in active])
                logits = self.subject.run(ids, self.hooks(latent, alpha, [first[i] for i in active]), logits=True)
                assert logits is not None
                self.n_forward += 1
                self.tokens_processed += sum(lengths)
                for j, i in enumerate(active):
                    tok = int(logits[j, lengths[j] - 1].argmax())
                    seqs[i].append(tok)
                    new[i].append(tok)
                    self.tokens_generated += 1
                    if eos is not None and tok == eos:
                        done[i] = True
        return new

    @torch.no_grad()
    def probability_shift(
        self,
        rows: Sequence[Sequence[int]],
        latent: int,
        alpha: float,
        clean: Sequence[torch.Tensor] | None = None,
        measure: str = "log_ratio",
        eps: float = 1e-6,
    ) -> torch.Tensor:
        """How much steering raises each token's next-token probability over the steered positions, ``[vocab]``.

        ``"log_ratio"`` (default): ``log(mean steered prob + eps) - log(mean clean prob + eps)``, which finds
        the tokens steering makes specifically likelier (``eps`` keeps never-seen tokens from dominating);
        ``"difference"``: mean steered minus mean clean probability, which favours frequent tokens."""
        if measure not in ("log_ratio", "difference"):
            raise ConfigError(f"measure must be 'log_ratio' or 'difference', got {measure!r}")
        with self.lock:
            if clean is None:
                clean = self.log_probs(rows)
            steered = self.log_probs(rows, latent, alpha)
        p = torch.cat([x[self.start :] for x in clean]).exp().mean(0)
        q = torch.cat([x[self.start :] for x in steered]).exp().mean(0)
        return torch.log(q + eps) - torch.log(p + eps) if measure == "log_ratio" else q - p


@torch.no_grad()
def promoted_tokens(model: Any, sae: Any, latent: int, k: int = 10) -> list[tuple[int, float]]:
    """The ``k`` tokens ``W_dec[latent]`` promotes most through the unembedding (direct path, "logit lens"):
    ``(W_dec[latent] * final_norm_weight) @ W_U``, with the final norm's weight when the model keeps one."""
    subject = as_subject(model)
    w_u = subject.unembedding()
    v = sae.W_dec[int(latent)].detach().float().reshape(-1).to(w_u.device)
    if v.shape[0] != w_u.shape[0]:
        raise ConfigError(
            f"W_dec has width {v.shape[0]} but W_U expects {w_u.shape[0]}: the SAE does not write to the residual "
            "stream, so its direct effect on the logits is not defined"
        )
    gamma = subject.final_norm_weight()
    if gamma is not None and gamma.shape == v.shape:
        v = v * gamma.to(v.device)
    logits = v @ w_u
    top = torch.topk(logits, k)
    return [(int(i), float(s)) for s, i in zip(top.values, top.indices)]

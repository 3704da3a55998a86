"""Planted features: a real SAELens SAE whose latents provably fire on known token sets.

Used to check that scorers prefer a true explanation over a mismatched one (tests/test_planted.py,
benchmarks/planted.py), and useful to sanity-check any LLM backend before a long run.

The SAE reads the token embeddings (``hook_embed``), so a latent's activation depends on the current token
only. Latent ``i`` is a JumpReLU unit whose encoder direction separates its token set from the rest of the
vocabulary (weighted least squares) and whose bias puts the largest projection of any token *outside* the set at 0, computed over the
whole vocabulary, below the JumpReLU threshold. So it never fires outside its set; ``firing_tokens`` lists exactly the set members it
fires on (checked over the vocabulary, not assumed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]

#: name -> (true explanation, words whose tokens form the set)
DEFAULT_FEATURES: dict[str, tuple[str, list[str]]] = {
    "months": ("names of months of the year", [" " + m for m in MONTHS] + MONTHS),
    "digits": ("single digits in numbers", [str(d) for d in range(10)]),
    "return": ("the Python keyword 'return'", [" return", "return"]),
}


@dataclass(frozen=True)
class PlantedSAE:
    sae: Any
    names: list[str]
    explanations: dict[int, str]  # latent -> true explanation
    firing_tokens: dict[int, set[int]]  # latent -> token ids it fires on (verified over the vocabulary)

    def mismatched(self) -> dict[int, str]:
        """Each latent paired with the next latent's explanation."""
        n = len(self.names)
        return {i: self.explanations[(i + 1) % n] for i in range(n)}


def build_planted_sae(
    model: Any, features: dict[str, tuple[str, list[str]]] | None = None, margin: float = 1e-3
) -> PlantedSAE:
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    features = features or DEFAULT_FEATURES
    embed = _embedding_matrix(model)  # [vocab, d]
    tokenizer = model.tokenizer
    names, explanations, sets = [], {}, []
    for i, (name, (explanation, words)) in enumerate(features.items()):
        ids = set()
        for w in words:
            toks = tokenizer(w, add_special_tokens=False)["input_ids"]
            if len(toks) == 1:
                ids.add(toks[0])
        if not ids:
            raise ValueError(f"feature {name!r}: none of its words is a single token")
        names.append(name)
        explanations[i] = explanation
        sets.append(sorted(ids))
    d = embed.shape[1]
    w_enc = torch.stack([_separating_direction(embed, s) for s in sets], dim=1)  # [d, n]
    proj = embed @ w_enc  # [vocab, n]
    thresholds, firing = [], {}
    for i, s in enumerate(sets):
        outside = torch.ones(embed.shape[0], dtype=torch.bool)
        outside[s] = False
        t = float(proj[outside, i].max())  # b_enc = -t: every outside token has pre-activation <= 0
        thresholds.append(t)
        firing[i] = {tok for tok in s if float(proj[tok, i]) - t > margin}
        if not firing[i]:
            raise ValueError(f"feature {names[i]!r} is not linearly separable from the rest of the vocabulary")
    cfg = JumpReLUSAEConfig(
        d_in=d,
        d_sae=len(sets),
        apply_b_dec_to_input=False,
        metadata=SAEMetadata(hook_name="hook_embed", prepend_bos=True, context_size=128, model_name="planted"),
    )
    sae = JumpReLUSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.b_enc.copy_(-torch.tensor(thresholds))
        sae.b_dec.zero_()
        sae.threshold.fill_(margin)
        sae.W_dec.copy_(w_enc.T)
    return PlantedSAE(sae, names, explanations, firing)


def _separating_direction(embed: torch.Tensor, members: list[int]) -> torch.Tensor:
    """Weighted least squares for +1 on the set and -1 elsewhere (the set weighs as much as the rest)."""
    vocab = embed.shape[0]
    target = -torch.ones(vocab, dtype=torch.float64)
    target[members] = 1.0
    weight = torch.full((vocab,), 1.0 / (vocab - len(members)), dtype=torch.float64)
    weight[members] = 1.0 / len(members)
    x = embed.double() * weight.sqrt().unsqueeze(1)
    y = target * weight.sqrt()
    ridge = 1e-6 * torch.eye(embed.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(x.T @ x + ridge, x.T @ y)
    return (w / w.norm()).float()


def _embedding_matrix(model: Any) -> torch.Tensor:
    if hasattr(model, "W_E"):
        return model.W_E.detach().float().cpu()
    return model.original_model.get_input_embeddings().weight.detach().float().cpu()


def planted_corpus(n_docs: int = 300, seed: int = 0) -> list[str]:
    """Short synthetic documents mixing dates, numbers, code with ``return`` and plain prose."""
    import random

    rng = random.Random(seed)
    subjects = ["The committee", "Our team", "The library", "A volunteer", "The city council", "My neighbour"]
    verbs = ["met", "published a report", "opened a new branch", "planted trees", "held a vote", "moved house"]
    prose = [
        "The weather was mild and people walked in the park.",
        "Nobody expected the discussion to last so long.",
        "Coffee was served in the hall afterwards.",
        "The results surprised everyone involved.",
        "Several questions remained open for a later meeting.",
    ]
    docs = []
    for i in range(n_docs):
        kind = i % 3
        if kind == 0:
            m = rng.choice(MONTHS)
            docs.append(
                f"{rng.choice(subjects)} {rng.choice(verbs)} on {rng.randint(1, 28)} {m} {rng.randint(1950, 2024)}. "
                + " ".join(rng.sample(prose, 2))
            )
        elif kind == 1:
            name = rng.choice(["total", "area", "score", "count", "mean"])
            docs.append(
                f"def {name}(values):\n    result = 0\n    for v in values:\n        result += v * {rng.randint(2, 99)}\n"
                f"    return result\n\n# " + rng.choice(prose)
            )
        else:
            docs.append(
                " ".join(rng.sample(prose, 3))
                + f" In {rng.choice(MONTHS)} the group counted {rng.randint(10, 9999)} visitors."
            )
    return docs

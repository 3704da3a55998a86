"""A no-LLM baseline: the tokens and bigrams carrying the most activation mass in the explainer examples.

It costs nothing and sets the floor any LLM explanation should beat on the same scorers.
"""

from __future__ import annotations

from collections import defaultdict

from ..records import Context, Explanation, template_id
from ..sampling import LatentSample


class TopTokensExplainer:
    name = "top-tokens"
    needs_llm = False

    def __init__(self, n_tokens: int = 5, n_bigrams: int = 3) -> None:
        self.n_tokens = n_tokens
        self.n_bigrams = n_bigrams
        self.prompt_id = template_id("top-tokens", str(n_tokens), str(n_bigrams))

    async def explain(self, sample: LatentSample, ctx: Context) -> Explanation:
        token_mass: dict[str, float] = defaultdict(float)
        bigram_mass: dict[str, float] = defaultdict(float)
        for example in sample.explain:
            r = ctx.renderer.render(example)
            for i, (tok, act) in enumerate(zip(r.tokens, r.activations)):
                if act <= 0:
                    continue
                token_mass[tok.strip() or repr(tok)] += act
                if i > 0:
                    bigram_mass[(r.tokens[i - 1] + tok).strip()] += act
        top = [t for t, _ in sorted(token_mass.items(), key=lambda kv: -kv[1])[: self.n_tokens]]
        bigrams = [b for b, _ in sorted(bigram_mass.items(), key=lambda kv: -kv[1])[: self.n_bigrams]]
        if not top:
            return Explanation(sample.latent, "", self.name, self.prompt_id, failed=True, error="no activating tokens")
        text = "the tokens " + ", ".join(f'"{t}"' for t in top)
        if bigrams:
            text += "; often in " + ", ".join(f'"{b}"' for b in bigrams)
        shown = tuple(e.token_id for e in sample.explain)
        return Explanation(sample.latent, text, self.name, self.prompt_id, shown)

"""Explainers: turn a latent's examples into an :class:`~sae_lens_autointerp.records.Explanation`."""

from .baseline import TopTokensExplainer
from .llm_explainer import LLMExplainer, parse_explanation

__all__ = ["LLMExplainer", "TopTokensExplainer", "parse_explanation"]

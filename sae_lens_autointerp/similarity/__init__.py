"""Semantic similarity across SAEs: match latents one to one, then compare their explanations.

Paulo et al. (2024, "Automatically Interpreting Millions of Features in Large Language Models") ask whether
latents that correspond across SAEs (adjacent layers, other widths, other seeds) are explained alike. Two steps:

1. :func:`match_latents` pairs the latents of SAE A with those of SAE B one to one (the Hungarian algorithm,
   :func:`scipy.optimize.linear_sum_assignment`) by maximising either the cosine of their decoder directions
   (``method="decoder"``: both SAEs must write into the same space, i.e. the same ``d_in``) or the Pearson
   correlation of their activations over the same tokens (``method="activations"``: works across layers, widths
   and models that share a tokenizer). The :class:`Matching` keeps the similarity of each pair and the
   similarity of uniformly random pairs, the level a pairing carries no information at.
2. :func:`explanation_similarity` embeds the explanations of both sides (sentence embeddings, the project's
   offline MiniLM by default) and compares the cosine of matched pairs with that of random pairs of the same
   latents, each with a 95% bootstrap interval, and their difference with its interval. A cross-score hook
   (any callable scoring an explanation of A on B's examples) adds the behavioural version of the question.

:func:`similarity_matrix` runs either step over a list of SAEs (e.g. adjacent layers) and :func:`heatmap`
draws it. See ``docs/similarity.md``.

Memory: the activation method reads the model in batches and folds each batch into float64 sums, sums of
squares and cross-products (one ``[n_a, n_b]`` matrix), so the number of tokens does not change what is held.
The matrix itself grows as ``n_a * n_b``: restrict wide SAEs with ``latents_a`` / ``latents_b``.

Modules: :mod:`.matching` (step 1), :mod:`.correlations` (the activation method's running sums),
:mod:`.explanations` (step 2), :mod:`.matrix` (two SAEs in one call, many as a matrix, the heatmap).
"""

from .explanations import (
    CrossScorer,
    EmbedderLike,
    ExplanationsLike,
    SimilarityResult,
    explanation_similarity,
    explanation_texts,
)
from .matching import DEFAULT_N_TOKENS, MAX_MATRIX_ENTRIES, Matching, Method, match_latents
from .matrix import PairSimilarity, Statistic, heatmap, similarity, similarity_matrix

__all__ = [
    "DEFAULT_N_TOKENS",
    "MAX_MATRIX_ENTRIES",
    "CrossScorer",
    "EmbedderLike",
    "ExplanationsLike",
    "Matching",
    "Method",
    "PairSimilarity",
    "SimilarityResult",
    "Statistic",
    "explanation_similarity",
    "explanation_texts",
    "heatmap",
    "match_latents",
    "similarity",
    "similarity_matrix",
]

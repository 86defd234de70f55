"""Retrieval metrics (pure numpy); see :mod:`tf_xmr.metrics.retrieval` for the conventions.

``tf_xmr.metrics.plots`` needs matplotlib and is imported on demand by its callers, never from here.
"""

from tf_xmr.metrics.retrieval import (
    DISTANCES,
    NORMALIZATIONS,
    PRESETS,
    RetrievalProtocol,
    average_precision,
    evaluate_retrieval,
    mean_average_precision,
    precision_at_k,
    precision_recall_curve,
    precision_scope_curve,
    recall_at_k,
    relevance_matrix,
    similarity,
)

__all__ = [
    "DISTANCES",
    "NORMALIZATIONS",
    "PRESETS",
    "RetrievalProtocol",
    "average_precision",
    "evaluate_retrieval",
    "mean_average_precision",
    "precision_at_k",
    "precision_recall_curve",
    "precision_scope_curve",
    "recall_at_k",
    "relevance_matrix",
    "similarity",
]

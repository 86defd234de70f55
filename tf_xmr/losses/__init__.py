"""Losses: pure functions of tensors, each with its formula and paper reference in the docstring."""

from tf_xmr.losses.classification import binary_cross_entropy_with_logits, frobenius_norm_sum, label_cross_entropy
from tf_xmr.losses.cross_modal import MINING, POSITIVES, REDUCTIONS, acmr_structure_loss
from tf_xmr.losses.distances import pairwise_euclidean, pairwise_squared_euclidean

__all__ = [
    "acmr_structure_loss",
    "binary_cross_entropy_with_logits",
    "frobenius_norm_sum",
    "label_cross_entropy",
    "pairwise_euclidean",
    "pairwise_squared_euclidean",
    "MINING",
    "POSITIVES",
    "REDUCTIONS",
]

"""How a retriever's ranking is compared with the evaluator's (``tf_xmr.metrics``): what "the same ranking" means.

Both sides score in float32, with different matrix-product kernels (TensorFlow's in the graph, numpy's in the
evaluator), so a score can differ in its last bits (measured up to 7.3e-7 on Wikipedia's 200-d ACMR embeddings). Two
items whose scores differ by less than that can therefore come out in either order; everything else must be
identical. Exact ties (identical embeddings) are scored once in the retriever and rank the lower gallery index first,
as in the evaluator.
"""

import numpy as np

# Largest score difference float32 summation order was measured to produce (7.3e-7), with headroom.
FLOAT_ROUNDING = 2e-6


def ranking_differences(indices: np.ndarray, reference_scores: np.ndarray) -> int:
    """Positions where ``indices`` (b, k) differ from the stable argsort of ``reference_scores`` (b, n), after checking
    that each such position holds an item whose reference score is within FLOAT_ROUNDING of the item the evaluator
    put there (a swap of near-equal scores), and that no item is lost or repeated."""
    k = indices.shape[1]
    expected = np.argsort(-reference_scores, axis=1, kind="stable")[:, :k]
    assert all(len(set(row)) == k for row in indices), "an item appears twice in one ranking"
    rows, cols = np.nonzero(indices != expected)
    gaps = np.abs(reference_scores[rows, indices[rows, cols]] - reference_scores[rows, expected[rows, cols]])
    assert gaps.size == 0 or gaps.max() < FLOAT_ROUNDING, f"a swap of scores {gaps.max()} apart is not a rounding tie"
    return int(rows.size)


def map_tolerance(differences: int, num_queries: int) -> float:
    """How far the mAP of a ranking may move when ``differences`` positions are rounding swaps: a swap of two
    neighbours changes its query's AP by less than 1/2, so the mean moves by less than swaps / 2 / queries."""
    return 1e-6 + (differences / 2) * 0.5 / num_queries

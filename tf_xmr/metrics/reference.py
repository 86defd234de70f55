"""Plain per-query loops for the retrieval metrics: slow, for tests and benchmarks only.

Each function here is written to be obviously correct, not fast: one query at a time, one score per database item,
Python's ``sorted`` on ``(-score, index)`` for the stable tie order, and a walk down the ranked list. The vectorised
functions in :mod:`tf_xmr.metrics.retrieval` must agree with them (same conventions, documented there).

The scores are computed with the same floating-point operations, in the same order, as the vectorised code (a
cosine is ``<a, b> / ||a|| / ||b||``, a Euclidean ranking uses the squared distance), so that exact ties in the data
(integer-valued or duplicated features) are exact ties in both implementations.
"""

from __future__ import annotations

import math

import numpy as np

_EPS = 1e-12


def _score(a: np.ndarray, b: np.ndarray, distance: str) -> float:
    """Higher is better."""
    if distance == "inner":
        return float(np.dot(a, b))
    if distance == "cosine":
        norm_a = max(math.sqrt(float(np.dot(a, a))), _EPS)
        norm_b = max(math.sqrt(float(np.dot(b, b))), _EPS)
        return float(np.dot(a, b)) / norm_a / norm_b
    if distance == "euclidean":
        diff = a - b
        return -float(np.dot(diff, diff))
    raise ValueError(f"unknown distance {distance!r}")


def _relevant(a, b) -> bool:
    a, b = np.atleast_1d(a), np.atleast_1d(b)
    if a.size == 1:
        return bool(a[0] == b[0])
    return any(x != 0 and y != 0 for x, y in zip(a, b, strict=True))


def ranked_relevance_loop(query, database, query_labels, database_labels, *, distance="cosine") -> list[list[bool]]:
    """For every query, the relevance (True/False) of the database items in ranked order, whole ranking."""
    query = np.asarray(query, dtype=np.float64)
    database = np.asarray(database, dtype=np.float64)
    query_labels = np.asarray(query_labels)
    database_labels = np.asarray(database_labels)
    result = []
    for i in range(len(query)):
        scores = [_score(query[i], database[j], distance) for j in range(len(database))]
        # Python's tuples compare -0.0 == 0.0, so equal scores fall through to the index: stable by index.
        ranking = sorted(range(len(database)), key=lambda j: (-scores[j], j))
        result.append([_relevant(query_labels[i], database_labels[j]) for j in ranking])
    return result


def average_precision_loop(
    query, database, query_labels, database_labels, *, distance="cosine", k=None, normalization="all_relevant"
) -> np.ndarray:
    """AP per query, ``(n_q,)``: ``(1/N) * sum_{r<=K} P(r) rel(r)``; N = all relevant or relevant in the top K."""
    aps = []
    for ranked in ranked_relevance_loop(query, database, query_labels, database_labels, distance=distance):
        cutoff = len(ranked) if k is None else min(k, len(ranked))
        hits = 0
        total = 0.0
        for r, is_relevant in enumerate(ranked[:cutoff], start=1):
            if is_relevant:
                hits += 1
                total += hits / r
        n = sum(ranked) if normalization == "all_relevant" else hits
        aps.append(total / n if n else 0.0)
    return np.array(aps)


def precision_at_k_loop(query, database, query_labels, database_labels, ks, *, distance="cosine") -> dict:
    """Mean precision@k per k; k above the database size is clipped to it."""
    ranked_all = ranked_relevance_loop(query, database, query_labels, database_labels, distance=distance)
    result = {}
    for k in ks:
        values = []
        for ranked in ranked_all:
            cutoff = min(k, len(ranked))
            values.append(sum(ranked[:cutoff]) / cutoff)
        result[k] = sum(values) / len(values)
    return result


def recall_at_k_loop(query, database, query_labels, database_labels, ks, *, distance="cosine") -> dict:
    """Mean recall@k per k; a query with no relevant item counts as 0."""
    ranked_all = ranked_relevance_loop(query, database, query_labels, database_labels, distance=distance)
    result = {}
    for k in ks:
        values = [sum(ranked[:k]) / sum(ranked) if sum(ranked) else 0.0 for ranked in ranked_all]
        result[k] = sum(values) / len(values)
    return result


def precision_recall_curve_loop(
    query, database, query_labels, database_labels, *, distance="cosine", num_points=11
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolated precision at recall levels i/(num_points-1): max precision over ranks whose recall reaches it."""
    steps = num_points - 1
    ranked_all = ranked_relevance_loop(query, database, query_labels, database_labels, distance=distance)
    curve = [0.0] * num_points
    for ranked in ranked_all:
        n = sum(ranked)
        if n == 0:
            continue
        points = []  # (hits, precision) at every rank
        hits = 0
        for r, is_relevant in enumerate(ranked, start=1):
            hits += is_relevant
            points.append((hits, hits / r))
        for i in range(num_points):
            curve[i] += max(p for h, p in points if h * steps >= i * n)
    return np.arange(num_points) / steps, np.array(curve) / len(ranked_all)

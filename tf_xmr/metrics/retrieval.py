"""Retrieval metrics for cross-modal search: mAP, precision/recall@k and curves (pure numpy).

Every function here follows one stated convention (design.md section 3, rule 6):

* **Distance** (``distance``): ``"cosine"`` = inner product of L2-normalised rows, computed as
  ``<a, b> / max(||a||, eps) / max(||b||, eps)`` (a zero row scores 0 against everything); ``"euclidean"`` = ascending
  Euclidean distance, ranked by the squared distance ``||a||^2 + ||b||^2 - 2<a, b>`` clipped at 0 (the square root
  is monotone, so it does not change the ranking and is skipped); ``"inner"`` = raw inner product ``<a, b>``.
* **Ranking**: descending similarity; ties are broken stably by database index (the lower index is ranked first).
* **Relevance**: a database item is relevant to a query iff they share at least one label. Labels are either integer
  class ids of shape ``(n,)`` (or ``(n, 1)``) or multi-hot rows of shape ``(n, c)``.
* **Cut-off** (``k``): ``None`` ranks the whole database; otherwise only the top ``K = min(k, n_db)`` items count.
* **AP normalisation** (``normalization``)::

      AP@K = (1 / N) * sum_{r=1..K} P(r) * rel(r),      P(r) = (1 / r) * sum_{i=1..r} rel(i)

  with ``N`` = the number of relevant items in the whole database (``"all_relevant"``, the usual mAP@all, e.g.
  Rasiwasia et al., ACM MM 2010) or the number of relevant items within the top K (``"retrieved"``, the ACMR
  authors' demo code, Wang et al., ACM MM 2017). ``AP = 0`` when ``N = 0``; mAP is the mean over **all** queries, so a
  query without any relevant item pulls the mean down instead of being silently dropped.

All inputs are validated; a bad input raises :class:`tf_xmr.errors.DataError` with a one-line message naming the
argument and its shape. Scores are computed in float64 for ``block_size`` queries at a time (one matrix product
and one sort per block), so memory stays bounded (about 256 MiB of temporaries per block by default) for databases
of any practical size. The results equal the per-query loop in :mod:`tf_xmr.metrics.reference`: same ranking, same
tie order, and the precisions are summed in the same order. The only caveat is floating point: a matrix product
rounds scores differently from a per-item dot product (and differently for different block sizes), which can swap
two items whose scores differ by ~1e-15 relative; exact ties (integer-valued features, duplicated database rows)
stay exact ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from tf_xmr.errors import DataError

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

DISTANCES = ("cosine", "euclidean", "inner")
NORMALIZATIONS = ("all_relevant", "retrieved")

# Guards the cosine denominator: a zero embedding then scores exactly 0 instead of NaN.
_EPS = 1e-12
# Temporaries per (query, database item) pair inside one block, at the peak: float64 sort keys (8), int64 argsort
# (8), the permuted keys used to detect ties (8), relevance before/after permutation (2); rounded up for headroom.
_BYTES_PER_PAIR = 32
_BLOCK_BUDGET_BYTES = 256 * 2**20


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


def _check_distance(distance) -> None:
    if not isinstance(distance, str) or distance not in DISTANCES:
        raise DataError(f"distance must be one of {', '.join(DISTANCES)}; got {distance!r}")


def _check_normalization(normalization) -> None:
    if not isinstance(normalization, str) or normalization not in NORMALIZATIONS:
        raise DataError(f"normalization must be one of {', '.join(NORMALIZATIONS)}; got {normalization!r}")


def _check_k(name: str, value, *, allow_none: bool) -> int | None:
    if value is None and allow_none:
        return None
    # bool is an int subclass; k=True is a bug, not a cut-off of 1.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{name} must be an integer >= 1{' or None' if allow_none else ''}, got {value!r}")
    if value < 1:
        raise DataError(f"{name} must be >= 1, got {value}")
    return int(value)


def _check_ks(name: str, ks) -> list[int]:
    if isinstance(ks, (int, np.integer)) and not isinstance(ks, (bool, np.bool_)):
        ks = [ks]
    try:
        values = list(ks)
    except TypeError:
        raise DataError(f"{name} must be an integer or an iterable of integers >= 1, got {ks!r}") from None
    if not values:
        raise DataError(f"{name} must not be empty")
    checked = [_check_k(f"{name}[{i}]", k, allow_none=False) for i, k in enumerate(values)]
    return list(dict.fromkeys(checked))


def _check_block_size(block_size) -> int | None:
    return _check_k("block_size", block_size, allow_none=True)


def _as_embeddings(name: str, x) -> np.ndarray:
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a numeric array (n, d)") from None
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{name} must be a non-empty 2-D array (n, d), got shape {x.shape}")
    finite = np.isfinite(x)
    if not finite.all():
        row = int(np.argwhere(~finite)[0, 0])
        raise DataError(f"{name} of shape {x.shape} contains NaN or Inf (first in row {row})")
    return x


def _check_embeddings(query, database) -> tuple[np.ndarray, np.ndarray]:
    query = _as_embeddings("query", query)
    database = _as_embeddings("database", database)
    if query.shape[1] != database.shape[1]:
        raise DataError(
            f"query has dimension {query.shape[1]} (shape {query.shape}) but database has dimension "
            f"{database.shape[1]} (shape {database.shape})"
        )
    # Bounds every score by Cauchy-Schwarz: beyond this a product or squared distance could overflow to inf/NaN
    # and silently corrupt the ranking.
    q_max = float(np.max(np.sqrt(np.einsum("ij,ij->i", query, query))))
    db_max = float(np.max(np.sqrt(np.einsum("ij,ij->i", database, database))))
    bound = q_max + db_max
    if not math.isfinite(bound * bound):
        raise DataError(
            f"query {query.shape} and database {database.shape} have norms too large for float64 scores "
            f"(max {q_max:.3g} and {db_max:.3g})"
        )
    return query, database


def _as_labels(name: str, labels, n: int | None) -> np.ndarray:
    """Returns int64 class ids ``(n,)`` or float32 multi-hot ``(n, c)``."""
    try:
        y = np.asarray(labels)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be an array of class ids (n,) or multi-hot rows (n, c)") from None
    # A (n, 1) column is how .mat files store class ids; a one-class multi-hot matrix would be meaningless.
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] == 0):
        raise DataError(f"{name} must be class ids (n,) or multi-hot rows (n, c), got shape {np.shape(labels)}")
    if n is not None and y.shape[0] != n:
        who = "query" if name.startswith("query") else "database"
        raise DataError(f"{name} has {y.shape[0]} rows (shape {np.shape(labels)}) but {who} has {n} rows")
    if y.dtype == bool:
        if y.ndim == 1:
            raise DataError(f"{name} of shape {y.shape} is boolean; class ids must be integers")
        return y.astype(np.float32)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataError(f"{name} must be numeric, got dtype {y.dtype}")
    if y.ndim == 1:
        # Float ids are common from .mat/.h5 files; accept them only when they are whole numbers.
        if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y) & (y == np.round(y))):
            raise DataError(f"{name} of shape {y.shape} holds non-integer class ids")
        return y.astype(np.int64)
    if not np.all((y == 0) | (y == 1)):
        raise DataError(f"{name} of shape {y.shape} is multi-hot but holds values other than 0 and 1")
    return y.astype(np.float32)


def _check_label_kinds(q: np.ndarray, db: np.ndarray) -> None:
    if q.ndim != db.ndim:
        raise DataError(
            f"query_labels {q.shape} and database_labels {db.shape} must both be class ids (n,) "
            "or both multi-hot (n, c)"
        )
    if q.ndim == 2 and q.shape[1] != db.shape[1]:
        raise DataError(
            f"query_labels has {q.shape[1]} classes (shape {q.shape}) but database_labels has {db.shape[1]} "
            f"(shape {db.shape})"
        )


@dataclass(frozen=True)
class RetrievalProtocol:
    """How a ranking is scored: which distance, which cut-off, which AP denominator.

    Tie order (stable by database index) and multi-label relevance (share at least one label) are fixed rather
    than options; :meth:`describe` records them anyway so that a ``metrics.json`` states its whole convention.

    Attributes:
        distance: One of :data:`DISTANCES` (``"cosine"``, ``"euclidean"``, ``"inner"``).
        k: Cut-off of the ranked list for AP; ``None`` ranks the whole database (mAP@all).
        normalization: AP denominator, one of :data:`NORMALIZATIONS`: ``"all_relevant"`` (relevant items in the
            whole database) or ``"retrieved"`` (relevant items within the top k).

    Raises:
        DataError: If a field has an unknown value or ``k < 1``.
    """

    distance: str = "cosine"
    k: int | None = None
    normalization: str = "all_relevant"

    def __post_init__(self):
        _check_distance(self.distance)
        _check_normalization(self.normalization)
        # Stored as a plain int so that describe() stays JSON-able even when k came in as a numpy integer.
        object.__setattr__(self, "k", _check_k("k", self.k, allow_none=True))

    def describe(self) -> dict:
        """Returns the full convention as a JSON-able dict (for ``metrics.json``), including the fixed choices."""
        return {
            "distance": self.distance,
            "k": self.k,
            "normalization": self.normalization,
            "tie_order": "stable_by_index",
            "relevance": "share_at_least_one_label",
        }


PRESETS: dict[str, RetrievalProtocol] = {
    # Project default (design.md rule 6): cosine, whole ranking, AP over all relevant items.
    "default": RetrievalProtocol(),
    # The ACMR authors' demo code: Euclidean distance, mAP@50 normalised by the hits within the top 50.
    "acmr_demo": RetrievalProtocol("euclidean", 50, "retrieved"),
}


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


def relevance_matrix(query_labels, database_labels) -> np.ndarray:
    """Which database items are relevant to which query (they share at least one label).

    Args:
        query_labels: Integer class ids, shape ``(n_q,)`` or ``(n_q, 1)``, or multi-hot 0/1 rows ``(n_q, c)``.
        database_labels: Same kind as ``query_labels``: ``(n_db,)``/``(n_db, 1)`` ids or ``(n_db, c)`` multi-hot.

    Returns:
        Boolean array ``(n_q, n_db)``; ``[i, j]`` is True iff query i and database item j share >= 1 label.

    Raises:
        DataError: On malformed labels or mixed label kinds.
    """
    q = _as_labels("query_labels", query_labels, None)
    db = _as_labels("database_labels", database_labels, None)
    _check_label_kinds(q, db)
    return _relevance(q, db, 0, q.shape[0])


def similarity(query, database, distance: str = "cosine") -> np.ndarray:
    """Similarity of every query to every database item; larger means more similar.

    ``cosine``: ``<a, b> / max(||a||, eps) / max(||b||, eps)`` (eps = 1e-12). ``euclidean``: ``-||a - b||``, from
    ``||a||^2 + ||b||^2 - 2<a, b>`` clipped at 0. ``inner``: ``<a, b>``. The full matrix is materialised, so use the
    metric functions (which work block by block) for large sets.

    Args:
        query: Embeddings ``(n_q, d)``.
        database: Embeddings ``(n_db, d)``.
        distance: One of :data:`DISTANCES`.

    Returns:
        float64 array ``(n_q, n_db)``.

    Raises:
        DataError: On bad shapes, non-finite values or an unknown distance.
    """
    _check_distance(distance)
    query, database = _check_embeddings(query, database)
    keys = _Scorer(query, database, distance).keys(query, 0, query.shape[0])
    if distance == "euclidean":
        return -np.sqrt(keys)
    # The sort keys are negated similarities; adding 0.0 turns the -0.0 of a zero score back into 0.0.
    np.negative(keys, out=keys)
    keys += 0.0
    return keys


def average_precision(
    query,
    database,
    query_labels,
    database_labels,
    *,
    distance: str = "cosine",
    k: int | None = None,
    normalization: str = "all_relevant",
    block_size: int | None = None,
) -> np.ndarray:
    """Average precision of every query against the database.

    ``AP@K = (1 / N) * sum_{r=1..K} P(r) * rel(r)`` with ``K = min(k, n_db)`` (``n_db`` when ``k`` is None),
    ``P(r)`` the precision of the top r, ``rel(r)`` in {0, 1}; ``N`` = relevant items in the whole database
    (``"all_relevant"``) or in the top K (``"retrieved"``); ``AP = 0`` when ``N = 0``. Ties rank the lower database
    index first.

    Args:
        query: Query embeddings ``(n_q, d)``.
        database: Database embeddings ``(n_db, d)``.
        query_labels: ``(n_q,)`` class ids or ``(n_q, c)`` multi-hot.
        database_labels: ``(n_db,)`` class ids or ``(n_db, c)`` multi-hot.
        distance: One of :data:`DISTANCES`.
        k: Cut-off (>= 1) or None for the whole ranking.
        normalization: One of :data:`NORMALIZATIONS`.
        block_size: Queries scored at once; None picks it so a block's temporaries stay under ~256 MiB.

    Returns:
        float64 array ``(n_q,)``.

    Raises:
        DataError: On bad shapes, NaN/Inf embeddings, unknown distance/normalization, or ``k < 1``.
    """
    _check_normalization(normalization)
    k = _check_k("k", k, allow_none=True)
    prep = _prepare(query, database, query_labels, database_labels, distance, block_size)
    n_db = prep.database.shape[0]
    depth = n_db if k is None else min(k, n_db)
    ap = np.empty(prep.query.shape[0])
    for start, stop, rel_sorted, n_relevant in _ranked_blocks(prep, depth):
        ap[start:stop] = _ap_from_ranked(rel_sorted, n_relevant, normalization)
    return ap


def mean_average_precision(
    query,
    database,
    query_labels,
    database_labels,
    *,
    distance: str = "cosine",
    k: int | None = None,
    normalization: str = "all_relevant",
    block_size: int | None = None,
) -> float:
    """Mean over all queries of :func:`average_precision` (queries with no relevant item count as 0).

    Args and Raises: as :func:`average_precision`.

    Returns:
        mAP as a Python float.
    """
    ap = average_precision(
        query,
        database,
        query_labels,
        database_labels,
        distance=distance,
        k=k,
        normalization=normalization,
        block_size=block_size,
    )
    return float(np.mean(ap))


def precision_at_k(
    query,
    database,
    query_labels,
    database_labels,
    ks,
    *,
    distance: str = "cosine",
    block_size: int | None = None,
) -> dict[int, float]:
    """Mean over queries of ``P@k = (relevant items in the top k) / k``.

    A ``k`` larger than the database is clipped to ``n_db`` (the whole ranking), so the denominator is
    ``min(k, n_db)``. Ties rank the lower database index first.

    Args:
        query, database, query_labels, database_labels: As in :func:`average_precision`.
        ks: One cut-off or an iterable of cut-offs, each >= 1.
        distance: One of :data:`DISTANCES`.
        block_size: As in :func:`average_precision`.

    Returns:
        ``{k: mean precision@k}`` in the order of ``ks`` (duplicates removed).

    Raises:
        DataError: As :func:`average_precision`, or on an empty ``ks``.
    """
    ks = _check_ks("ks", ks)
    prep = _prepare(query, database, query_labels, database_labels, distance, block_size)
    hits, _ = _hits_at(prep, ks)
    n_db = prep.database.shape[0]
    return {k: float(np.mean(hits[:, i] / min(k, n_db))) for i, k in enumerate(ks)}


def recall_at_k(
    query,
    database,
    query_labels,
    database_labels,
    ks,
    *,
    distance: str = "cosine",
    block_size: int | None = None,
) -> dict[int, float]:
    """Mean over queries of ``R@k = (relevant items in the top k) / (relevant items in the database)``.

    A query with no relevant item in the database has ``R@k = 0`` and still counts in the mean (as in mAP).
    ``k`` larger than the database is clipped to ``n_db``.

    Args and Raises: as :func:`precision_at_k`.

    Returns:
        ``{k: mean recall@k}`` in the order of ``ks`` (duplicates removed).
    """
    ks = _check_ks("ks", ks)
    prep = _prepare(query, database, query_labels, database_labels, distance, block_size)
    hits, n_relevant = _hits_at(prep, ks)
    return {k: float(np.mean(_safe_ratio(hits[:, i], n_relevant))) for i, k in enumerate(ks)}


def precision_scope_curve(
    query,
    database,
    query_labels,
    database_labels,
    scopes,
    *,
    distance: str = "cosine",
    block_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Precision-scope curve: mean precision@K over queries for each scope K (ACMR, Fig. 3).

    Args:
        query, database, query_labels, database_labels: As in :func:`average_precision`.
        scopes: Iterable of scopes K >= 1 (a scope above ``n_db`` is clipped to ``n_db``, see :func:`precision_at_k`).
        distance: One of :data:`DISTANCES`.
        block_size: As in :func:`average_precision`.

    Returns:
        ``(scopes, precision)``: int64 ``(n_scopes,)`` and float64 ``(n_scopes,)``.

    Raises:
        DataError: As :func:`precision_at_k`.
    """
    precision = precision_at_k(
        query, database, query_labels, database_labels, scopes, distance=distance, block_size=block_size
    )
    return np.array(list(precision), dtype=np.int64), np.array(list(precision.values()), dtype=np.float64)


def precision_recall_curve(
    query,
    database,
    query_labels,
    database_labels,
    *,
    distance: str = "cosine",
    num_points: int = 11,
    block_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolated precision-recall curve over the whole ranking, averaged over queries.

    Recall levels are ``L_i = i / (num_points - 1)``, i = 0..num_points-1 (11-point: 0, 0.1, ..., 1). For one query
    with ``N`` relevant items, ``P_interp(L_i) = max {P(r) : R(r) >= L_i}`` over ranks r, where
    ``R(r) = hits(r) / N``; "``R(r) >= L_i``" is tested exactly as ``hits(r) * (num_points - 1) >= i * N`` so that,
    e.g., 3 of 10 relevant items reach recall 0.3. A query with ``N = 0`` contributes precision 0 at every level.

    Args:
        query, database, query_labels, database_labels: As in :func:`average_precision`.
        distance: One of :data:`DISTANCES`.
        num_points: Number of recall levels (>= 2).
        block_size: As in :func:`average_precision`.

    Returns:
        ``(recall_levels, precision)``, both float64 ``(num_points,)``.

    Raises:
        DataError: As :func:`average_precision`, or if ``num_points < 2``.
    """
    num_points = _check_k("num_points", num_points, allow_none=False)
    if num_points < 2:
        raise DataError(f"num_points must be >= 2, got {num_points}")
    prep = _prepare(query, database, query_labels, database_labels, distance, block_size)
    steps = num_points - 1
    levels = np.arange(num_points, dtype=np.int64)
    total = np.zeros(num_points)
    for _, _, rel_sorted, n_relevant in _ranked_blocks(prep, prep.database.shape[0]):
        for rows in _row_chunks(rel_sorted.shape):
            _, counts, starts, precision = _hit_precisions(rel_sorted[rows])
            # A miss only lowers precision, so the best precision at recall >= L is found at a hit: the maximum of
            # the hit precisions from the m-th hit on, m = ceil(i * N / steps) (>= 1) computed in exact integers.
            has = counts > 0
            first = np.maximum(-((-levels[None, :] * counts[has, None]) // steps), 1) - 1 + starts[has, None]
            end = np.broadcast_to((starts + counts)[has, None], first.shape)
            # reduceat over the interleaved (first, end) bounds gives max(precision[first:end]) at even positions;
            # the appended 0 keeps the last `end` a valid index.
            bounds = np.stack([first, end], axis=-1).ravel()
            best = np.maximum.reduceat(np.append(precision, 0.0), bounds)[::2].reshape(first.shape)
            total += np.sum(best, axis=0)
    return levels / steps, total / prep.query.shape[0]


def evaluate_retrieval(
    query,
    database,
    query_labels,
    database_labels,
    protocol: RetrievalProtocol,
    *,
    ks=(1, 5, 10, 50, 100),
    block_size: int | None = None,
) -> dict:
    """mAP, precision@k and recall@k under one protocol, from a single ranking pass.

    See :func:`average_precision`, :func:`precision_at_k` and :func:`recall_at_k` for the definitions; ``ks`` is
    independent of ``protocol.k`` (which only cuts the AP ranking).

    Args:
        query, database, query_labels, database_labels: As in :func:`average_precision`.
        protocol: The distance, AP cut-off and AP normalisation to use.
        ks: Cut-offs for precision@k and recall@k.
        block_size: As in :func:`average_precision`.

    Returns:
        ``{"map": float, "precision_at": {k: float}, "recall_at": {k: float}}``.

    Raises:
        DataError: As :func:`average_precision` and :func:`precision_at_k`.
    """
    if not isinstance(protocol, RetrievalProtocol):
        raise DataError(f"protocol must be a RetrievalProtocol, got {type(protocol).__name__}")
    ks = _check_ks("ks", ks)
    prep = _prepare(query, database, query_labels, database_labels, protocol.distance, block_size)
    n_q, n_db = prep.query.shape[0], prep.database.shape[0]
    ap_depth = n_db if protocol.k is None else min(protocol.k, n_db)
    clipped = [min(k, n_db) for k in ks]
    ap_sum = 0.0
    hits = np.empty((n_q, len(ks)), dtype=np.int64)
    n_relevant_all = np.empty(n_q, dtype=np.int64)
    for start, stop, rel_sorted, n_relevant in _ranked_blocks(prep, max(ap_depth, *clipped)):
        ap_sum += float(np.sum(_ap_from_ranked(rel_sorted[:, :ap_depth], n_relevant, protocol.normalization)))
        hits[start:stop] = _prefix_hits(rel_sorted, clipped)
        n_relevant_all[start:stop] = n_relevant
    return {
        "map": ap_sum / n_q,
        "precision_at": {k: float(np.mean(hits[:, i] / c)) for i, (k, c) in enumerate(zip(ks, clipped))},
        "recall_at": {k: float(np.mean(_safe_ratio(hits[:, i], n_relevant_all))) for i, k in enumerate(ks)},
    }


# ----------------------------------------------------------------------------------------------------------------
# Blocked ranking core
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    query: np.ndarray
    database: np.ndarray
    query_labels: np.ndarray
    database_labels: np.ndarray
    distance: str
    block_size: int
    scorer: _Scorer


def _prepare(query, database, query_labels, database_labels, distance, block_size) -> _Prepared:
    _check_distance(distance)
    block_size = _check_block_size(block_size)
    query, database = _check_embeddings(query, database)
    q_labels = _as_labels("query_labels", query_labels, query.shape[0])
    db_labels = _as_labels("database_labels", database_labels, database.shape[0])
    _check_label_kinds(q_labels, db_labels)
    if block_size is None:
        block_size = _auto_block_size(database.shape[0])
    return _Prepared(query, database, q_labels, db_labels, distance, block_size, _Scorer(query, database, distance))


def _auto_block_size(n_db: int) -> int:
    return max(1, _BLOCK_BUDGET_BYTES // (_BYTES_PER_PAIR * n_db))


def _row_norms_squared(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _row_stats(x: np.ndarray, distance: str) -> np.ndarray | None:
    if distance == "cosine":
        return np.maximum(np.sqrt(_row_norms_squared(x)), _EPS)
    if distance == "euclidean":
        return _row_norms_squared(x)
    return None


class _Scorer:
    """Computes sort keys ``(b, n_db)`` for blocks of queries, where ascending = better.

    Identical database rows are scored once and the score is copied to every duplicate. BLAS libraries do not
    promise bit-identical results for identical columns (their kernels may round differently at tile edges; OpenBLAS
    already rounds differently for different numbers of query rows), and duplicates that fail to tie exactly would
    be ordered by rounding noise instead of by index. Scoring each distinct row once makes the guarantee
    independent of the BLAS.
    """

    def __init__(self, query: np.ndarray, database: np.ndarray, distance: str):
        self.distance = distance
        self.query_stats = _row_stats(query, distance)
        # np.unique compares values, so rows differing only in the sign of a zero count as duplicates too.
        _, first, inverse = np.unique(database, axis=0, return_index=True, return_inverse=True)
        if first.size == database.shape[0]:
            self.database, self.expand = database, None
        else:
            self.database, self.expand = database[first], inverse.reshape(-1)
        self.database_stats = _row_stats(self.database, distance)

    def keys(self, query_block: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Keys for ``query_block`` = rows ``start:stop`` of the query set: negated similarity or squared distance."""
        keys = query_block @ self.database.T
        if self.distance == "euclidean":
            # ||a||^2 + ||b||^2 - 2ab can dip below 0 by rounding for near-duplicates; clipping keeps them tied at 0.
            keys *= -2.0
            keys += self.query_stats[start:stop, None]
            keys += self.database_stats[None, :]
            np.maximum(keys, 0.0, out=keys)
        else:
            if self.distance == "cosine":
                # Divide the raw inner product (rather than multiply normalised rows) so that integer-valued features
                # give bit-identical scores wherever the exact scores tie, as the per-query reference does.
                keys /= self.query_stats[start:stop, None]
                keys /= self.database_stats[None, :]
            np.negative(keys, out=keys)
            # Negating 0.0 gives -0.0; numpy compares them equal so the sort already treats them as a tie, but
            # adding 0.0 maps -0.0 to +0.0 so that the keys are canonical whatever the sort does with signed zeros.
            keys += 0.0
        if self.expand is not None:
            keys = np.take(keys, self.expand, axis=1)
        return keys


def _stable_order(keys: np.ndarray, depth: int) -> np.ndarray:
    """Top-``depth`` column indices of each row of ``keys``, ascending by (key, index).

    A stable argsort of every row would do, but it is ~4x slower than numpy's default sort. The default sort is only
    unstable among equal keys, so it is used wherever the first ``depth`` positions have no equal neighbours (then
    the order there is unique) and the stable sort is rerun on the rows that do.
    """
    n = keys.shape[1]
    rows = np.arange(keys.shape[0])
    if depth * 4 <= n:
        # Short cut-offs: partition first, then order only the candidates.
        part = np.argpartition(keys, depth - 1, axis=1)[:, :depth]
        threshold = keys[rows, part[:, depth - 1]]
        # If more items than `depth` share the boundary key, which of them make the cut depends on their index.
        clean = np.count_nonzero(keys <= threshold[:, None], axis=1) == depth
        candidates = np.sort(part, axis=1)  # ascending index, so the stable sort below breaks ties by index
        order = np.take_along_axis(
            candidates,
            np.argsort(np.take_along_axis(keys, candidates, axis=1), axis=1, kind="stable"),
            axis=1,
        )
        if not clean.all():
            order[~clean] = np.argsort(keys[~clean], axis=1, kind="stable")[:, :depth]
        return order
    order = np.argsort(keys, axis=1)
    check = min(depth + 1, n)  # a tie straddling position depth decides which item gets in
    ranked = np.take_along_axis(keys, order[:, :check], axis=1)
    tied = np.any(ranked[:, 1:] == ranked[:, :-1], axis=1)
    del ranked
    if tied.any():
        order[tied] = np.argsort(keys[tied], axis=1, kind="stable")
    return order[:, :depth]


def _relevance(q_labels: np.ndarray, db_labels: np.ndarray, start: int, stop: int) -> np.ndarray:
    if q_labels.ndim == 1:
        return q_labels[start:stop, None] == db_labels[None, :]
    # float32 counts of shared labels are exact up to 2^24 classes.
    return (q_labels[start:stop] @ db_labels.T) > 0


def _ranked_blocks(prep: _Prepared, depth: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Yields ``(start, stop, rel_sorted, n_relevant)`` per query block.

    ``rel_sorted`` is bool ``(stop - start, depth)``: relevance of the top-``depth`` ranked database items;
    ``n_relevant`` is int64 ``(stop - start,)``: relevant items in the whole database.
    """
    n_q = prep.query.shape[0]
    for start in range(0, n_q, prep.block_size):
        stop = min(start + prep.block_size, n_q)
        relevant = _relevance(prep.query_labels, prep.database_labels, start, stop)
        n_relevant = np.count_nonzero(relevant, axis=1).astype(np.int64)
        keys = prep.scorer.keys(prep.query[start:stop], start, stop)
        order = _stable_order(keys, depth)
        del keys
        rel_sorted = np.take_along_axis(relevant, order, axis=1)
        # Free the big temporaries before the consumer adds its own: the generator frame would keep them alive.
        del order, relevant
        yield start, stop, rel_sorted, n_relevant


def _row_chunks(shape: tuple[int, int]) -> Iterator[slice]:
    """Row slices of ~1M pairs: the index arrays of :func:`_hit_precisions` take up to 40 bytes per relevant pair,
    which must not outgrow the block's budget when nearly everything is relevant (dense multi-label data)."""
    n_rows, depth = shape
    chunk = max(1, 2**20 // max(depth, 1))
    for start in range(0, n_rows, chunk):
        yield slice(start, min(start + chunk, n_rows))


def _hit_precisions(rel_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision at every relevant rank, as a flat row-major list.

    Args:
        rel_sorted: bool ``(b, K)``, relevance in ranked order.

    Returns:
        ``(rows, counts, starts, precision)``: the row of each hit ``(h,)``, hits per row ``(b,)``, where each row
        starts in the flat list ``(b,)``, and ``P(r) = j / r`` at the j-th hit of its row (rank r) ``(h,)``.
    """
    rows, cols = np.nonzero(rel_sorted)
    counts = np.bincount(rows, minlength=rel_sorted.shape[0])
    starts = np.cumsum(counts) - counts
    j = np.arange(1, rows.size + 1) - np.repeat(starts, counts)
    return rows, counts, starts, j / (cols + 1)


def _ap_from_ranked(rel_sorted: np.ndarray, n_relevant: np.ndarray, normalization: str) -> np.ndarray:
    """AP per row of ``rel_sorted`` (bool ``(b, K)``, relevance in ranked order); ``n_relevant`` is ``(b,)``."""
    precision_sum = np.zeros(rel_sorted.shape[0])
    hits = np.empty(rel_sorted.shape[0], dtype=np.int64)
    for chunk in _row_chunks(rel_sorted.shape):
        rows, counts, _, precision = _hit_precisions(rel_sorted[chunk])
        # Only relevant ranks add to the sum; bincount adds them in rank order, exactly like the loop reference.
        precision_sum[chunk] = np.bincount(rows, weights=precision, minlength=counts.size)
        hits[chunk] = counts
    denominator = n_relevant if normalization == "all_relevant" else hits
    return _safe_ratio(precision_sum, denominator)


def _prefix_hits(rel_sorted: np.ndarray, depths: Iterable[int]) -> np.ndarray:
    return np.stack([np.count_nonzero(rel_sorted[:, :d], axis=1) for d in depths], axis=1)


def _hits_at(prep: _Prepared, ks: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Relevant items within the top k (``(n_q, len(ks))``) and in the whole database (``(n_q,)``)."""
    n_q, n_db = prep.query.shape[0], prep.database.shape[0]
    clipped = [min(k, n_db) for k in ks]
    hits = np.empty((n_q, len(ks)), dtype=np.int64)
    n_relevant_all = np.empty(n_q, dtype=np.int64)
    for start, stop, rel_sorted, n_relevant in _ranked_blocks(prep, max(clipped)):
        hits[start:stop] = _prefix_hits(rel_sorted, clipped)
        n_relevant_all[start:stop] = n_relevant
    return hits, n_relevant_all


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, and 0 where the denominator is 0 (no relevant item => score 0)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    out = np.zeros(numerator.shape)
    np.divide(numerator, denominator, out=out, where=np.asarray(denominator) > 0)
    return out

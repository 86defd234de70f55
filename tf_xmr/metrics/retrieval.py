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
per block, 64 MiB of scores by default; the ranking runs on small chunks of the block, on a few threads; see
"Blocked ranking core" below for how a values-only sort stays exact), so memory stays bounded for databases of any
practical size. The results equal the per-query loop in :mod:`tf_xmr.metrics.reference`: same ranking, same
tie order, and the precisions are summed in the same order. The only caveat is floating point: a matrix product
rounds scores differently from a per-item dot product (and differently for different block sizes), which can swap
two items whose scores differ by ~1e-15 relative; exact ties (integer-valued features, duplicated database rows)
stay exact ties.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

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
    # mAP@50 normalised by the hits within the top 50, ranked by cosine: DA-GAN's tables say "mAP@50", and the
    # DSCMR evaluation code it follows ranks by cosine (specs/da_gan.md section 7.2).
    "map50_cosine": RetrievalProtocol("cosine", 50, "retrieved"),
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
    return _relevance(*_label_codes(q, db), 0, q.shape[0])


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
    scorer = _Scorer(query, database, distance)
    values = scorer.values(scorer.products(query), 0)
    if distance == "euclidean":
        return -np.sqrt(values)
    values += 0.0  # a zero score may come out as -0.0; adding 0.0 makes it 0.0
    return values


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
        block_size: Queries scored by one matrix product; None picks it so the block's scores take ~64 MiB.

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

    def consume(start, stop, flags, n_relevant):
        ap[start:stop] = _ap_from_ranked(flags, n_relevant, normalization)

    _rank_all(prep, depth, consume)
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
    # Per query, its interpolated precision at every level (0 for a query without relevant items).
    curves = np.zeros((prep.query.shape[0], num_points))

    def consume(start, stop, flags, n_relevant):
        _, counts, starts, precision = _hit_precisions(flags)
        # A miss only lowers precision, so the best precision at recall >= L is found at a hit: the maximum of
        # the hit precisions from the m-th hit on, m = ceil(i * N / steps) (>= 1) computed in exact integers.
        has = counts > 0
        first = np.maximum(-((-levels[None, :] * counts[has, None]) // steps), 1) - 1 + starts[has, None]
        end = np.broadcast_to((starts + counts)[has, None], first.shape)
        # reduceat over the interleaved (first, end) bounds gives max(precision[first:end]) at even positions;
        # the appended 0 keeps the last `end` a valid index.
        bounds = np.stack([first, end], axis=-1).ravel()
        best = np.maximum.reduceat(np.append(precision, 0.0), bounds)[::2].reshape(first.shape)
        curves[np.arange(start, stop)[has]] = best

    _rank_all(prep, prep.database.shape[0], consume)
    return levels / steps, np.sum(curves, axis=0) / prep.query.shape[0]


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
    ap = np.empty(n_q)
    hits = np.empty((n_q, len(ks)), dtype=np.int64)
    n_relevant_all = np.empty(n_q, dtype=np.int64)

    def consume(start, stop, flags, n_relevant):
        ap[start:stop] = _ap_from_ranked(flags[:, :ap_depth], n_relevant, protocol.normalization)
        hits[start:stop] = _prefix_hits(flags, clipped)
        n_relevant_all[start:stop] = n_relevant

    _rank_all(prep, max(ap_depth, *clipped), consume)
    return {
        # The same mean of the same per-query APs as mean_average_precision, so the two agree to the last bit.
        "map": float(np.mean(ap)),
        "precision_at": {k: float(np.mean(hits[:, i] / c)) for i, (k, c) in enumerate(zip(ks, clipped, strict=True))},
        "recall_at": {k: float(np.mean(_safe_ratio(hits[:, i], n_relevant_all))) for i, k in enumerate(ks)},
    }


# ----------------------------------------------------------------------------------------------------------------
# Blocked ranking core
# ----------------------------------------------------------------------------------------------------------------
#
# How a block of queries is ranked, and why it is exact. A matrix product scores ``block_size`` queries against the
# database (the one BLAS call; it reads the database once per block, so blocks are large). The block is then cut
# into chunks of a few rows that fit a core's cache and are ranked on a few threads (numpy releases the GIL in its
# sorts and ufuncs). Per chunk:
#
# 1. The float64 scores become int64 keys ``u`` that ascend as the ranking descends: the IEEE bit pattern is a
#    monotone integer for non-negative floats, the sign is folded in by negating the magnitude, and +0.0 and -0.0
#    map to the same key (they compare equal, so they are a tie). Equal keys <=> equal scores.
# 2. The relevance flag replaces the lowest bit of ``u``: ``key = (u & ~1) | rel``. Clearing a bit cannot reorder
#    two keys (``u -> u & ~1`` is monotone), so sorting ``key`` by value alone (numpy's vectorised sort, ~5x faster
#    than argsort, with no gather afterwards) orders the items exactly as the scores do, except within a "pair
#    group" of keys that differ only in that lowest bit (equal scores, or scores one unit in the last place apart).
#    AP depends only on the sequence of relevance flags, so such a group can only change the result if it mixes
#    relevant and irrelevant items; in ``key`` order a mixed group shows up as two neighbours ``2t, 2t + 1``.
# 3. The rare rows with a mixed group inside the top ``depth`` (or straddling it) are ranked again with a stable
#    argsort of ``u``: ties by database index, exactly the reference order.
#
# The flags are then read off the sorted keys (``key & 1``), and the metrics work on those positions only.

# Bytes of the float64 score block of one matrix product: large enough that the database is read from memory once
# per hundreds of queries, small enough to bound memory (20,000 x 20,000 peaks well under 512 MiB with the data).
_BLOCK_BUDGET_BYTES = 64 * 2**20
# Bytes of one chunk's int64 keys; the chunk's other buffers (scratch keys, sorted keys, relevance) are as large.
# Small enough that the elementwise passes mostly run from cache and reuse the same pages (a fresh 80 MiB temporary
# costs more in page faults than the pass itself). Measured at 5,000 x 5,000 on the 2-core machine (busy, load ~12;
# median of 3): chunks of 256 KiB / 1 MiB / 4 MiB took 2.38 / 2.06 / 2.01 s wall with 2 threads.
_CHUNK_BYTES = 2**20
# Threads that rank the chunks of a block (at most one per core). Same measurement: 2 threads 2.06 s wall against
# 2.51 s with 1, for the same CPU time (0.96 vs 1.02 s); the matrix product already uses every core through BLAS.
_MAX_THREADS = 8
_MAGNITUDE = np.int64(0x7FFFFFFFFFFFFFFF)
_CLEAR_LOW_BIT = np.int64(-2)


@dataclass(frozen=True)
class _Prepared:
    query: np.ndarray
    database: np.ndarray
    query_labels: np.ndarray
    database_labels: np.ndarray
    distance: str
    block_size: int
    scorer: _Scorer
    threads: int


def _prepare(query, database, query_labels, database_labels, distance, block_size) -> _Prepared:
    _check_distance(distance)
    block_size = _check_block_size(block_size)
    query, database = _check_embeddings(query, database)
    q_labels = _as_labels("query_labels", query_labels, query.shape[0])
    db_labels = _as_labels("database_labels", database_labels, database.shape[0])
    _check_label_kinds(q_labels, db_labels)
    q_codes, db_codes = _label_codes(q_labels, db_labels)
    if block_size is None:
        block_size = _auto_block_size(database.shape[0])
    scorer = _Scorer(query, database, distance)
    return _Prepared(query, database, q_codes, db_codes, distance, block_size, scorer, _thread_count())


def _auto_block_size(n_db: int) -> int:
    return max(1, _BLOCK_BUDGET_BYTES // (8 * n_db))


def _chunk_rows(n_db: int) -> int:
    return max(1, _CHUNK_BYTES // (8 * n_db))


def _thread_count() -> int:
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may run on (taskset, cgroups' cpusets)
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, _MAX_THREADS))


# ---- labels -> relevance ----------------------------------------------------------------------------------------


def _label_codes(q_labels: np.ndarray, db_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relevance codes: int64 ids ``(n,)`` (relevant iff equal) or uint64 label bit sets ``(n, words)``.

    Multi-hot rows with at most one label each (one-hot labels, the evaluator's format) become ids, compared in one
    pass; a row without any label gets an id that matches nothing (-1 for queries, -2 for the database).
    """
    if q_labels.ndim == 1:
        return q_labels, db_labels
    q_on, db_on = q_labels != 0, db_labels != 0
    q_count, db_count = q_on.sum(axis=1), db_on.sum(axis=1)
    if q_count.max(initial=0) <= 1 and db_count.max(initial=0) <= 1:
        q_ids = np.where(q_count == 1, np.argmax(q_on, axis=1), -1).astype(np.int64)
        db_ids = np.where(db_count == 1, np.argmax(db_on, axis=1), -2).astype(np.int64)
        return q_ids, db_ids
    return _bit_sets(q_on), _bit_sets(db_on)


def _bit_sets(on: np.ndarray) -> np.ndarray:
    packed = np.packbits(on, axis=1, bitorder="little")
    padded = np.zeros((on.shape[0], -(-packed.shape[1] // 8) * 8), dtype=np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view(np.uint64)


def _relevance_into(q_codes: np.ndarray, db_codes: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """Bool ``(len(q_codes), n_db)`` into ``out``: share at least one label. ``scratch`` is a same-shape int buffer."""
    if q_codes.ndim == 1:
        return np.equal(q_codes[:, None], db_codes[None, :], out=out)
    words = scratch.view(np.uint64)
    np.bitwise_and(q_codes[:, 0, None], db_codes[None, :, 0], out=words)
    for w in range(1, q_codes.shape[1]):
        words |= q_codes[:, w, None] & db_codes[None, :, w]
    return np.not_equal(words, 0, out=out)


def _relevance(q_codes: np.ndarray, db_codes: np.ndarray, start: int, stop: int) -> np.ndarray:
    shape = (stop - start, db_codes.shape[0])
    return _relevance_into(q_codes[start:stop], db_codes, np.empty(shape, bool), np.empty(shape, np.int64))


# ---- scores -> keys ---------------------------------------------------------------------------------------------


def _row_norms_squared(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _row_stats(x: np.ndarray, distance: str) -> np.ndarray | None:
    if distance == "cosine":
        return np.maximum(np.sqrt(_row_norms_squared(x)), _EPS)
    if distance == "euclidean":
        return _row_norms_squared(x)
    return None


def _unique_rows(database: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(distinct rows, inverse)``, or ``(database, None)`` when no two rows are equal.

    Two equal rows have equal first columns, so when the first column has no repeated value (real-valued embeddings)
    that sort of one column settles it; only otherwise is the full (much slower) row-wise ``np.unique`` needed.
    """
    first = np.sort(database[:, 0])
    if not np.any(first[1:] == first[:-1]):
        return database, None
    # np.unique compares values, so rows differing only in the sign of a zero count as duplicates too.
    _, index, inverse = np.unique(database, axis=0, return_index=True, return_inverse=True)
    if index.size == database.shape[0]:
        return database, None
    return database[index], inverse.reshape(-1)


class _Scorer:
    """Scores blocks of queries and turns them into int64 ranking keys (ascending = better).

    Identical database rows are scored once and the score is copied to every duplicate. BLAS libraries do not
    promise bit-identical results for identical columns (their kernels may round differently at tile edges; OpenBLAS
    already rounds differently for different numbers of query rows), and duplicates that fail to tie exactly would
    be ordered by rounding noise instead of by index. Scoring each distinct row once makes the guarantee
    independent of the BLAS.
    """

    def __init__(self, query: np.ndarray, database: np.ndarray, distance: str):
        self.distance = distance
        self.query_stats = _row_stats(query, distance)
        self.database, self.expand = _unique_rows(database)
        self.database_stats = _row_stats(self.database, distance)
        self.n_db = database.shape[0]

    def products(self, query_block: np.ndarray) -> np.ndarray:
        """``(b, n_distinct)`` inner products: the one matrix product of a block."""
        return query_block @ self.database.T

    def values(self, products: np.ndarray, start: int, out: np.ndarray | None = None) -> np.ndarray:
        """The scores of query rows ``start:start + len(products)``, ``(r, n_db)``, computed in place in ``products``.

        Similarities (cosine, inner; higher = better) or squared Euclidean distances (lower = better). With
        duplicated database rows the result is expanded into ``out`` (or a new array).
        """
        rows = slice(start, start + products.shape[0])
        if self.distance == "euclidean":
            # ||a||^2 + ||b||^2 - 2ab can dip below 0 by rounding for near-duplicates; clipping keeps them tied at 0.
            products *= -2.0
            products += self.query_stats[rows, None]
            products += self.database_stats[None, :]
            np.maximum(products, 0.0, out=products)
        elif self.distance == "cosine":
            # Divide the raw inner product (rather than multiply normalised rows) so that integer-valued features
            # give bit-identical scores wherever the exact scores tie, as the per-query reference does.
            products /= self.query_stats[rows, None]
            products /= self.database_stats[None, :]
        if self.expand is None:
            return products
        return np.take(products, self.expand, axis=1, out=out)

    def keys(self, values: np.ndarray, scratch: np.ndarray) -> np.ndarray:
        """Int64 keys, in place in ``values``: ``u(a) < u(b)`` iff a ranks before b, ``u(a) == u(b)`` iff tied.

        ``scratch`` is an int64 buffer of the same shape.
        """
        bits = values.view(np.int64)
        if self.distance == "euclidean":
            # Clipped squared distances are >= 0 (or -0.0): the bit pattern of a non-negative float is monotone.
            np.bitwise_and(bits, _MAGNITUDE, out=bits)
            return bits
        # Higher similarity ranks first: u = -magnitude for s >= 0 and +magnitude for s < 0, so that u descends
        # with s and +0.0 / -0.0 both map to 0. With sign = s >> 63 (0 or -1): u = sign - (magnitude ^ sign).
        sign = np.right_shift(bits, 63, out=scratch)
        np.bitwise_and(bits, _MAGNITUDE, out=bits)
        np.bitwise_xor(bits, sign, out=bits)
        np.subtract(sign, bits, out=bits)
        return bits


# ---- keys -> ranked relevance -----------------------------------------------------------------------------------


def _ranked_flags(u: np.ndarray, relevant: np.ndarray, depth: int, key: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """Relevance of the top ``depth`` items of every row, in the exact stable ranking of ``u``.

    Args:
        u: int64 ``(r, n)`` ranking keys (ascending; equal = tied, ties by column index). Left unchanged.
        relevant: bool ``(r, n)``.
        depth: 1 <= depth <= n.
        key: int64 ``(r, n)`` buffer (overwritten; the result is a view of it).
        scratch: int64 ``(r, n)`` buffer (overwritten).

    Returns:
        int64 ``(r, depth)`` of 0/1: ``[i, j]`` = relevance of the item ranked j-th for row i.
    """
    n = u.shape[1]
    np.bitwise_and(u, _CLEAR_LOW_BIT, out=key)
    np.bitwise_or(key, relevant, out=key)
    if depth < n and depth * 4 <= n:
        # Short cut-offs: select the depth + 1 smallest (the extra one shows a group straddling the cut), sort them.
        key.partition(depth, axis=1)
        key[:, : depth + 1].sort(axis=1)
    else:
        key.sort(axis=1)
    m = min(depth + 1, n)
    # A mixed pair group appears as neighbours 2t, 2t + 1, and in sorted order their xor is exactly 1.
    pairs = np.bitwise_xor(key[:, 1:m], key[:, : m - 1], out=scratch[:, : m - 1])
    mixed = np.any(pairs == 1, axis=1)
    if depth < n:
        # The group at the cut may hold irrelevant items (2t) on both sides of it and relevant ones (2t + 1) further
        # down; only a search of the whole row shows those.
        last = key[:, depth - 1]
        open_group = (last == key[:, depth]) & ((last & 1) == 0)
        if open_group.any():
            rows = np.flatnonzero(open_group)
            mixed[rows] |= np.any(key[rows] == (last[rows] + 1)[:, None], axis=1)
    flags = key[:, :depth]
    np.bitwise_and(flags, 1, out=flags)
    if mixed.any():
        rows = np.flatnonzero(mixed)
        order = np.argsort(u[rows], axis=1, kind="stable")[:, :depth]
        flags[rows] = np.take_along_axis(relevant[rows], order, axis=1)
    return flags


Consumer = Callable[[int, int, np.ndarray, np.ndarray], None]


def _rank_all(prep: _Prepared, depth: int, consume: Consumer) -> None:
    """Ranks every query and calls ``consume(start, stop, flags, n_relevant)`` once per chunk of queries.

    ``flags`` is int64 ``(stop - start, depth)``, the relevance (0/1) of the top ``depth`` items in ranked order;
    ``n_relevant`` is int64 ``(stop - start,)``, the relevant items in the whole database. ``flags`` is a reused
    buffer: ``consume`` must copy what it keeps. ``consume`` may run on several threads at once, for disjoint query
    ranges; it must write only to the rows ``start:stop`` of its outputs.
    """
    n_q, n_db = prep.query.shape[0], prep.scorer.n_db
    chunk = _chunk_rows(n_db)

    def rank(block: np.ndarray, block_start: int, spans: list[tuple[int, int]]) -> None:
        rows = max(b - a for a, b in spans)
        key = np.empty((rows, n_db), np.int64)
        scratch = np.empty((rows, n_db), np.int64)
        relevant = np.empty((rows, n_db), bool)
        expanded = None if prep.scorer.expand is None else np.empty((rows, n_db), np.float64)
        for a, b in spans:
            r = b - a
            values = prep.scorer.values(block[a - block_start : b - block_start], a,
                                        None if expanded is None else expanded[:r])
            u = prep.scorer.keys(values, scratch[:r])
            rel = _relevance_into(prep.query_labels[a:b], prep.database_labels, relevant[:r], scratch[:r])
            n_relevant = np.count_nonzero(rel, axis=1).astype(np.int64)
            consume(a, b, _ranked_flags(u, rel, depth, key[:r], scratch[:r]), n_relevant)

    pool = ThreadPoolExecutor(prep.threads) if prep.threads > 1 else None
    try:
        for start in range(0, n_q, prep.block_size):
            stop = min(start + prep.block_size, n_q)
            block = prep.scorer.products(prep.query[start:stop])
            spans = [(a, min(a + chunk, stop)) for a in range(start, stop, chunk)]
            if pool is None or len(spans) == 1:
                rank(block, start, spans)
                continue
            # Interleaved shares, one task per thread: each allocates its buffers once per block.
            shares = [spans[i :: prep.threads] for i in range(min(prep.threads, len(spans)))]
            for future in [pool.submit(rank, block, start, share) for share in shares]:
                future.result()  # re-raises a worker's exception here
            del block
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


# ---- ranked relevance -> metrics --------------------------------------------------------------------------------


def _hit_precisions(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision at every relevant rank, as a flat row-major list.

    Args:
        flags: ``(b, K)`` relevance (0/1 or bool) in ranked order.

    Returns:
        ``(rows, counts, starts, precision)``: the row of each hit ``(h,)``, hits per row ``(b,)``, where each row
        starts in the flat list ``(b,)``, and ``P(r) = j / r`` at the j-th hit of its row (rank r) ``(h,)``.
    """
    hit = flags.astype(bool)
    # flatnonzero of a contiguous bool array is several times faster than a 2-D nonzero (which returns two arrays).
    flat = np.flatnonzero(hit)
    counts = np.count_nonzero(hit, axis=1)
    starts = np.cumsum(counts) - counts
    b, depth = hit.shape
    rows = np.repeat(np.arange(b), counts)
    # Rank r = column + 1 = flat - row * depth + 1; the j-th hit of its row: j = position in the list - start + 1.
    rank = flat + 1 - np.repeat(np.arange(0, b * depth, depth), counts)
    j = np.arange(1, flat.size + 1) - np.repeat(starts, counts)
    return rows, counts, starts, j / rank


def _ap_from_ranked(flags: np.ndarray, n_relevant: np.ndarray, normalization: str) -> np.ndarray:
    """AP per row of ``flags`` (``(b, K)``, relevance in ranked order); ``n_relevant`` is ``(b,)``."""
    rows, counts, _, precision = _hit_precisions(flags)
    # Only relevant ranks add to the sum; bincount adds them in rank order, exactly like the loop reference.
    precision_sum = np.bincount(rows, weights=precision, minlength=counts.size)
    denominator = n_relevant if normalization == "all_relevant" else counts
    return _safe_ratio(precision_sum, denominator)


def _prefix_hits(flags: np.ndarray, depths: Iterable[int]) -> np.ndarray:
    return np.stack([np.count_nonzero(flags[:, :d], axis=1) for d in depths], axis=1)


def _hits_at(prep: _Prepared, ks: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Relevant items within the top k (``(n_q, len(ks))``) and in the whole database (``(n_q,)``)."""
    n_q, n_db = prep.query.shape[0], prep.database.shape[0]
    clipped = [min(k, n_db) for k in ks]
    hits = np.empty((n_q, len(ks)), dtype=np.int64)
    n_relevant_all = np.empty(n_q, dtype=np.int64)

    def consume(start, stop, flags, n_relevant):
        hits[start:stop] = _prefix_hits(flags, clipped)
        n_relevant_all[start:stop] = n_relevant

    _rank_all(prep, max(clipped), consume)
    return hits, n_relevant_all


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, and 0 where the denominator is 0 (no relevant item => score 0)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    out = np.zeros(numerator.shape)
    np.divide(numerator, denominator, out=out, where=np.asarray(denominator) > 0)
    return out

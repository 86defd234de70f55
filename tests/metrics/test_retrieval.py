"""Retrieval metrics: vectorised results against the per-query loop reference, and hand-computed values."""

import json

import numpy as np
import pytest

from tf_xmr.errors import DataError
from tf_xmr.metrics import (
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
    retrieval,
    similarity,
)
from tf_xmr.metrics.reference import (
    average_precision_loop,
    precision_at_k_loop,
    precision_recall_curve_loop,
    recall_at_k_loop,
)

N_QUERY, N_DB = 23, 120
BLOCK = 7  # 23 queries -> three full blocks and a remainder of 2


def _tied_data(seed, multi_label):
    """Small-integer features plus duplicated database rows: many exact ties.

    Inner products and squared distances of small integers are exact, and cosines are computed with the same
    operations in the vectorised code and the reference, so tied scores are bit-identical in both.
    """
    rng = np.random.default_rng(seed)
    query = rng.integers(-2, 3, size=(N_QUERY, 3)).astype(np.float64)
    base = rng.integers(-3, 4, size=(N_DB // 2, 3)).astype(np.float64)
    database = np.concatenate([base, base[rng.permutation(len(base))]])[rng.permutation(N_DB)]
    database[5] = 0.0  # a zero row: its cosine is 0 against every query (the epsilon guard)
    query[3] = 0.0  # a zero query: every cosine is 0, so its ranking is the database order
    if multi_label:
        query_labels = rng.random((N_QUERY, 5)) < 0.25
        database_labels = rng.random((N_DB, 5)) < 0.25
    else:
        query_labels = rng.integers(0, 6, N_QUERY)
        database_labels = rng.integers(0, 5, N_DB)  # class 5 is absent: some queries have no relevant item
    return query, database, query_labels, database_labels


def _continuous_data(seed):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((N_QUERY, 16)),
        rng.standard_normal((N_DB, 16)),
        rng.integers(0, 4, N_QUERY),
        rng.integers(0, 4, N_DB),
    )


# ---------------------------------------------------------------------------------------------------------------
# Vectorised == loop reference
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("k", [None, 50, 5])  # 5 takes the partition path (k * 4 <= n_db), 50 the full sort
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("multi_label", [False, True])
def test_average_precision_matches_loop_with_ties(distance, k, normalization, multi_label):
    data = _tied_data(seed=1 + multi_label, multi_label=multi_label)
    expected = average_precision_loop(*data, distance=distance, k=k, normalization=normalization)
    got = average_precision(*data, distance=distance, k=k, normalization=normalization, block_size=BLOCK)
    # Exact: same scores, same tie order, and the precisions are summed in rank order like the loop does.
    np.testing.assert_array_equal(got, expected)
    assert mean_average_precision(
        *data, distance=distance, k=k, normalization=normalization, block_size=BLOCK
    ) == pytest.approx(float(np.mean(expected)), rel=1e-12)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("k", [None, 50, 5])
@pytest.mark.parametrize("distance", DISTANCES)
def test_average_precision_matches_loop_continuous(distance, k, normalization):
    data = _continuous_data(seed=3)
    expected = average_precision_loop(*data, distance=distance, k=k, normalization=normalization)
    got = average_precision(*data, distance=distance, k=k, normalization=normalization, block_size=BLOCK)
    # Matrix product vs per-item dot products round differently, but no two random scores come that close.
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("distance", DISTANCES)
def test_duplicated_database_rows_tie_with_continuous_features(distance):
    # Every database row appears twice, the copies under different labels, so only the stable tie order between
    # the copies decides the AP. A matrix product alone does not give the copies bit-identical scores.
    rng = np.random.default_rng(10)
    query = rng.standard_normal((N_QUERY, 16))
    base = rng.standard_normal((N_DB // 2, 16))
    position = rng.permutation(N_DB)
    database = np.empty((N_DB, 16))
    database[position[: N_DB // 2]] = base
    database[position[N_DB // 2 :]] = base
    query_labels = rng.integers(0, 3, N_QUERY)
    database_labels = rng.integers(0, 3, N_DB)
    for k in (None, 5):
        expected = average_precision_loop(query, database, query_labels, database_labels, distance=distance, k=k)
        got = average_precision(
            query, database, query_labels, database_labels, distance=distance, k=k, block_size=BLOCK
        )
        np.testing.assert_array_equal(got, expected)


def test_block_size_does_not_change_results():
    data = _tied_data(seed=4, multi_label=True)
    per_query = average_precision(*data, block_size=1)
    np.testing.assert_array_equal(average_precision(*data), per_query)
    np.testing.assert_array_equal(average_precision(*data, block_size=N_QUERY + 5), per_query)


def test_float32_input_gives_the_same_ranking():
    query, database, query_labels, database_labels = _tied_data(seed=5, multi_label=False)
    np.testing.assert_array_equal(
        average_precision(query.astype(np.float32), database.astype(np.float32), query_labels, database_labels),
        average_precision(query, database, query_labels, database_labels),
    )


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("multi_label", [False, True])
def test_precision_and_recall_at_k_match_loop(distance, multi_label):
    data = _tied_data(seed=6, multi_label=multi_label)
    ks = [1, 5, 10, 50, 500]  # 500 > n_db is clipped to the whole ranking
    expected_p = precision_at_k_loop(*data, ks, distance=distance)
    expected_r = recall_at_k_loop(*data, ks, distance=distance)
    got_p = precision_at_k(*data, ks, distance=distance, block_size=BLOCK)
    got_r = recall_at_k(*data, ks, distance=distance, block_size=BLOCK)
    assert list(got_p) == ks and list(got_r) == ks
    for k in ks:
        assert got_p[k] == pytest.approx(expected_p[k], rel=1e-12)
        assert got_r[k] == pytest.approx(expected_r[k], rel=1e-12)


@pytest.mark.parametrize("distance", DISTANCES)
def test_curves_match_loop(distance):
    data = _tied_data(seed=7, multi_label=True)
    recall, precision = precision_recall_curve(*data, distance=distance, block_size=BLOCK)
    expected_recall, expected_precision = precision_recall_curve_loop(*data, distance=distance)
    np.testing.assert_allclose(recall, expected_recall, rtol=0, atol=0)
    np.testing.assert_allclose(precision, expected_precision, rtol=1e-12, atol=0)

    recall5, precision5 = precision_recall_curve(*data, distance=distance, num_points=5, block_size=BLOCK)
    np.testing.assert_allclose(recall5, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(
        precision5, precision_recall_curve_loop(*data, distance=distance, num_points=5)[1], rtol=1e-12
    )

    scopes, scope_precision = precision_scope_curve(*data, [1, 10, 50, 100], distance=distance, block_size=BLOCK)
    expected = precision_at_k_loop(*data, [1, 10, 50, 100], distance=distance)
    np.testing.assert_array_equal(scopes, [1, 10, 50, 100])
    np.testing.assert_allclose(scope_precision, list(expected.values()), rtol=1e-12)


@pytest.mark.parametrize("protocol", [PRESETS["default"], PRESETS["acmr_demo"], RetrievalProtocol("inner", 5)])
def test_evaluate_retrieval_agrees_with_single_metrics(protocol):
    data = _tied_data(seed=8, multi_label=False)
    ks = (1, 5, 10, 50, 100)
    result = evaluate_retrieval(*data, protocol, ks=ks, block_size=BLOCK)
    assert set(result) == {"map", "precision_at", "recall_at"}
    assert result["map"] == pytest.approx(
        mean_average_precision(*data, distance=protocol.distance, k=protocol.k, normalization=protocol.normalization),
        rel=1e-12,
    )
    assert result["precision_at"] == pytest.approx(precision_at_k(*data, ks, distance=protocol.distance), rel=1e-12)
    assert result["recall_at"] == pytest.approx(recall_at_k(*data, ks, distance=protocol.distance), rel=1e-12)


def test_acmr_demo_preset_is_euclidean_map_at_50_over_retrieved():
    assert PRESETS["acmr_demo"] == RetrievalProtocol(distance="euclidean", k=50, normalization="retrieved")
    assert PRESETS["default"] == RetrievalProtocol(distance="cosine", k=None, normalization="all_relevant")
    assert PRESETS["map50_cosine"] == RetrievalProtocol(distance="cosine", k=50, normalization="retrieved")
    data = _continuous_data(seed=9)
    expected = mean_average_precision(*data, distance="euclidean", k=50, normalization="retrieved")
    assert evaluate_retrieval(*data, PRESETS["acmr_demo"])["map"] == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(
        float(np.mean(average_precision_loop(*data, distance="euclidean", k=50, normalization="retrieved"))), rel=1e-12
    )


def test_protocol_describe_is_json_and_states_every_convention():
    described = RetrievalProtocol("euclidean", np.int64(50), "retrieved").describe()
    assert json.loads(json.dumps(described)) == {
        "distance": "euclidean",
        "k": 50,
        "normalization": "retrieved",
        "tie_order": "stable_by_index",
        "relevance": "share_at_least_one_label",
    }


# ---------------------------------------------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------------------------------------------

# Inner product with query [1] ranks this database 0, 1, 2, 3, 4 (scores 5 > 4 > 3 > 2 > 1).
HAND_DATABASE = np.array([[5.0], [4.0], [3.0], [2.0], [1.0]])


def test_hand_computed_ap_all_relevant():
    # Relevance down the ranking: [1, 0, 1, 0, 0]; 2 relevant in the database.
    # AP = (P(1) + P(3)) / 2 = (1/1 + 2/3) / 2 = 5/6.
    ap = average_precision([[1.0]], HAND_DATABASE, [0], [0, 1, 0, 1, 1], distance="inner")
    assert ap[0] == pytest.approx(5 / 6, rel=1e-15)


def test_hand_computed_all_relevant_and_retrieved_differ_at_k():
    # Relevance down the ranking: [0, 1, 1, 0, 1]; 3 relevant in the database, 2 of them in the top 3.
    # Sum over the top 3 of P(r) rel(r) = P(2) + P(3) = 1/2 + 2/3 = 7/6.
    # all_relevant: (7/6) / 3 = 7/18.   retrieved: (7/6) / 2 = 7/12.
    args = ([[1.0]], HAND_DATABASE, [0], [1, 0, 0, 1, 0])
    all_relevant = average_precision(*args, distance="inner", k=3, normalization="all_relevant")
    retrieved = average_precision(*args, distance="inner", k=3, normalization="retrieved")
    assert all_relevant[0] == pytest.approx(7 / 18, rel=1e-15)
    assert retrieved[0] == pytest.approx(7 / 12, rel=1e-15)
    # Whole ranking: (1/2 + 2/3 + 3/5) / 3 = (53/30) / 3 = 53/90 under both normalisations.
    for normalization in NORMALIZATIONS:
        assert average_precision(*args, distance="inner", normalization=normalization)[0] == pytest.approx(
            53 / 90, rel=1e-15
        )


def test_query_without_relevant_items_scores_zero_and_counts_in_the_mean():
    query = [[1.0], [1.0]]
    query_labels = [0, 7]  # class 7 is not in the database
    database_labels = [0, 1, 0, 1, 1]
    ap = average_precision(query, HAND_DATABASE, query_labels, database_labels, distance="inner")
    np.testing.assert_allclose(ap, [5 / 6, 0.0], rtol=1e-15)
    assert mean_average_precision(
        query, HAND_DATABASE, query_labels, database_labels, distance="inner"
    ) == pytest.approx(5 / 12, rel=1e-15)
    recall = recall_at_k(query, HAND_DATABASE, query_labels, database_labels, [1, 5], distance="inner")
    assert recall == pytest.approx({1: (1 / 2 + 0) / 2, 5: (1 + 0) / 2})
    _, precision = precision_recall_curve(query, HAND_DATABASE, query_labels, database_labels, distance="inner")
    # Query 0 reaches full recall at rank 3 with precision 2/3; the best precision at recall <= 0.5 is 1 (rank 1).
    np.testing.assert_allclose(precision, [1 / 2] * 6 + [(2 / 3) / 2] * 5, rtol=1e-15)


@pytest.mark.parametrize("distance", DISTANCES)
def test_ties_are_broken_by_database_index(distance):
    # Items 0 and 1 are duplicates (an exact tie under every distance); item 2 is worse for every distance.
    # Stable order 0, 1, 2 gives relevance [0, 1, 1]: AP = (1/2 + 2/3) / 2 = 7/12.
    # The other tie order (1, 0, 2) would give [1, 0, 1]: AP = (1 + 2/3) / 2 = 5/6.
    database = np.array([[2.0, 1.0], [2.0, 1.0], [-1.0, 3.0]])
    ap = average_precision([[2.0, 1.0]], database, [0], [1, 0, 0], distance=distance)
    assert ap[0] == pytest.approx(7 / 12, rel=1e-15)
    # Swapping the duplicates' labels swaps the outcome: only the index decides.
    ap = average_precision([[2.0, 1.0]], database, [0], [0, 1, 0], distance=distance)
    assert ap[0] == pytest.approx(5 / 6, rel=1e-15)


def test_tie_across_the_cutoff_keeps_the_lower_index():
    # Four items tie for the best score; with k=2 the two lowest indices (0 and 1) make the cut.
    # Relevance by index: [0, 0, 1, 1, 0] -> top 2 = [0, 0] -> AP@2 = 0 under both normalisations,
    # whereas any other tie order would have let a relevant item in.
    database = np.array([[1.0], [1.0], [1.0], [1.0], [0.0]] + [[-1.0]] * 20)
    labels = [1, 1, 0, 0] + [1] * 21
    for normalization in NORMALIZATIONS:
        ap = average_precision([[1.0]], database, [0], labels, distance="inner", k=2, normalization=normalization)
        assert ap[0] == 0.0
    assert precision_at_k([[1.0]], database, [0], labels, [2, 3, 4], distance="inner") == {2: 0.0, 3: 1 / 3, 4: 0.5}


def _reference_flags(u, relevant, depth):
    """Relevance in the stable ranking of u (ascending, ties by index), top depth: the plain argsort way."""
    order = np.argsort(u, axis=1, kind="stable")[:, :depth]
    return np.take_along_axis(relevant, order, axis=1).astype(np.int64)


def _ranked_flags(u, relevant, depth):
    key, scratch = np.empty_like(u), np.empty_like(u)
    return retrieval._ranked_flags(u, relevant, depth, key, scratch).copy()


def test_keys_order_like_the_scores_and_merge_signed_zeros():
    # Every sign, +0.0 / -0.0, subnormals, neighbours one unit in the last place apart, and large magnitudes.
    tiny = np.nextafter(0.0, 1.0)
    scores = np.array(
        [[0.0, -0.0, 1.0, np.nextafter(1.0, 2.0), -1.0, np.nextafter(-1.0, -2.0), tiny, -tiny, 3e300, -3e300, 0.5, 0.0]]
    )
    for distance, ranking in (("inner", -scores), ("euclidean", np.abs(scores))):
        scorer = retrieval._Scorer(np.ones((1, 1)), np.ones((1, 1)), distance)
        values = np.abs(scores) if distance == "euclidean" else scores.copy()
        u = scorer.keys(values.copy(), np.empty(scores.shape, np.int64))
        np.testing.assert_array_equal(
            np.argsort(u, axis=1, kind="stable"), np.argsort(ranking, axis=1, kind="stable")
        )
        # Equal keys exactly where the scores compare equal (so +0.0 and -0.0 tie).
        np.testing.assert_array_equal(u[0][:, None] == u[0][None, :], ranking[0][:, None] == ranking[0][None, :])


@pytest.mark.parametrize("depth", [1, 2, 3, 7, 8, 30, 49, 50])  # depth * 4 <= 50 takes the partition path
def test_ranked_flags_equal_the_stable_ranking(depth):
    # Keys 0..9 only: many exact ties and many neighbours 2t / 2t + 1 that share a key once the flag replaces the
    # lowest bit; relevance at random, so plenty of such groups mix relevant and irrelevant items.
    rng = np.random.default_rng(depth)
    u = rng.integers(0, 10, size=(60, 50)).astype(np.int64)
    u[::4] = rng.permutation(50)  # rows without any tie
    u[1::4] -= 5  # negative keys as well
    relevant = rng.random(u.shape) < 0.4
    np.testing.assert_array_equal(_ranked_flags(u, relevant, depth), _reference_flags(u, relevant, depth))


@pytest.mark.parametrize("n", [4, 40])  # the full sort and the partition path
def test_ranked_flags_group_open_across_the_cut(n):
    # Keys 11, 11 (irrelevant) and 10 (relevant) share the pair group 10/11: flagged, they become 10, 10, 11, so the
    # first two sorted positions look clean. The stable ranking puts the relevant 10 first; only the search of the
    # whole row for the group's relevant member finds that.
    u = np.full((1, n), 100, dtype=np.int64)
    u[0, :3] = [11, 11, 10]
    relevant = np.zeros((1, n), bool)
    relevant[0, 2] = True
    for depth in (1, 2, 3):
        got = _ranked_flags(u, relevant, depth)
        np.testing.assert_array_equal(got, _reference_flags(u, relevant, depth))
        assert got[0, 0] == 1


@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("multi_label", [False, True])
def test_chunks_and_threads_do_not_change_results(distance, multi_label, monkeypatch):
    # Chunks of 3 queries ranked by 3 threads inside blocks of 7: chunk edges fall inside and at the end of blocks.
    data = _tied_data(seed=11, multi_label=multi_label)
    expected = average_precision_loop(*data, distance=distance)
    monkeypatch.setattr(retrieval, "_CHUNK_BYTES", 3 * 8 * N_DB)
    monkeypatch.setattr(retrieval, "_thread_count", lambda: 3)
    for block_size in (BLOCK, 1, N_QUERY):
        got = average_precision(*data, distance=distance, block_size=block_size)
        np.testing.assert_array_equal(got, expected)
    result = evaluate_retrieval(*data, RetrievalProtocol(distance, 5), ks=(1, 5, 200), block_size=BLOCK)
    assert result["map"] == float(np.mean(average_precision_loop(*data, distance=distance, k=5)))
    assert result["precision_at"] == pytest.approx(precision_at_k_loop(*data, [1, 5, 200], distance=distance))


def test_worker_exception_reaches_the_caller(monkeypatch):
    monkeypatch.setattr(retrieval, "_CHUNK_BYTES", 3 * 8 * N_DB)
    monkeypatch.setattr(retrieval, "_thread_count", lambda: 2)

    def broken(*args):
        raise RuntimeError("chunk failed")

    monkeypatch.setattr(retrieval, "_ranked_flags", broken)
    with pytest.raises(RuntimeError, match="chunk failed"):
        average_precision(*_tied_data(seed=12, multi_label=False), block_size=BLOCK)


# ---------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------


def test_similarity_values():
    query = np.array([[3.0, 4.0], [0.0, 0.0]])
    database = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(similarity(query, database, "inner"), [[3, 8, 25], [0, 0, 0]])
    np.testing.assert_allclose(similarity(query, database, "cosine"), [[0.6, 0.8, 1.0], [0, 0, 0]], rtol=1e-15)
    np.testing.assert_allclose(
        similarity(query, database, "euclidean"),
        -np.array([[np.sqrt(20), np.sqrt(13), 0], [1, 2, 5]]),
        rtol=1e-15,
    )
    assert similarity(query, database, "cosine").dtype == np.float64


def test_relevance_matrix_label_kinds():
    expected = np.array([[True, False, True], [False, True, False]])
    np.testing.assert_array_equal(relevance_matrix([2, 5], [2, 5, 2]), expected)
    np.testing.assert_array_equal(relevance_matrix([[2.0], [5.0]], [[2.0], [5.0], [2.0]]), expected)  # .mat columns
    multi_hot_q = [[1, 1, 0], [0, 0, 1]]
    multi_hot_db = [[0, 1, 0], [0, 0, 1], [1, 0, 1]]  # share >= 1 label
    np.testing.assert_array_equal(
        relevance_matrix(multi_hot_q, multi_hot_db), [[True, False, True], [False, True, True]]
    )
    assert relevance_matrix(multi_hot_q, multi_hot_db).dtype == bool


def test_label_codes_one_hot_become_ids_and_multi_hot_bit_sets_agree():
    rng = np.random.default_rng(13)
    # One-hot rows plus rows without any label (they match nothing): the id path.
    q_one = np.eye(4)[rng.integers(0, 4, 9)]
    db_one = np.eye(4)[rng.integers(0, 4, 11)]
    q_one[2] = 0
    db_one[[0, 5]] = 0
    q_codes, db_codes = retrieval._label_codes(q_one.astype(np.float32), db_one.astype(np.float32))
    assert q_codes.ndim == 1 and db_codes.ndim == 1
    expected = (q_one @ db_one.T) > 0
    np.testing.assert_array_equal(relevance_matrix(q_one, db_one), expected)
    # 70 classes, several labels per row: two 64-bit words per row.
    q_multi = rng.random((9, 70)) < 0.05
    db_multi = rng.random((11, 70)) < 0.05
    q_codes, _ = retrieval._label_codes(q_multi.astype(np.float32), db_multi.astype(np.float32))
    assert q_codes.shape == (9, 2)
    expected = (q_multi.astype(int) @ db_multi.T.astype(int)) > 0
    np.testing.assert_array_equal(relevance_matrix(q_multi, db_multi), expected)


def test_unique_rows_finds_duplicates_only_when_there_are_some():
    rng = np.random.default_rng(14)
    distinct = rng.standard_normal((6, 3))
    assert retrieval._unique_rows(distinct)[1] is None
    same_first_column = distinct.copy()
    same_first_column[:, 0] = 1.0  # the quick first-column test is inconclusive, the rows still differ
    assert retrieval._unique_rows(same_first_column)[1] is None
    with_copies = np.concatenate([distinct, distinct[[4, 1]]])
    with_copies[7, 2] = -0.0 if with_copies[1, 2] == 0 else with_copies[7, 2]
    rows, inverse = retrieval._unique_rows(with_copies)
    assert rows.shape == (6, 3)
    np.testing.assert_array_equal(rows[inverse], with_copies)
    zeros = np.array([[0.0, 1.0], [-0.0, 1.0]])  # equal values, different bits: still one row
    assert retrieval._unique_rows(zeros)[0].shape == (1, 2)


def test_auto_block_size_bounds_memory():
    for n_db in (10, 2_000, 20_000, 1_000_000):
        rows = retrieval._auto_block_size(n_db)
        assert rows >= 1
        assert rows == 1 or rows * n_db * 8 <= 64 * 2**20


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------

_Q = np.ones((4, 3))
_DB = np.ones((6, 3))
_QL = np.arange(4)
_DBL = np.arange(6)
_NAN_Q = _Q.copy()
_NAN_Q[2, 1] = np.nan


@pytest.mark.parametrize(
    "call, culprit",
    [
        (lambda: average_precision(_Q, _DB, np.arange(5), _DBL), "query_labels"),
        (lambda: average_precision(_Q, _DB, _QL, np.arange(3)), "database_labels"),
        (lambda: average_precision(_Q, np.ones((6, 2)), _QL, _DBL), "database"),
        (lambda: average_precision(np.ones(3), _DB, _QL, _DBL), "query"),
        (lambda: average_precision(_NAN_Q, _DB, _QL, _DBL), "query"),
        (lambda: average_precision(_Q, _DB * np.inf, _QL, _DBL), "database"),
        (lambda: average_precision(_Q, _DB, _QL, _DBL, distance="manhattan"), "distance"),
        (lambda: average_precision(_Q, _DB, _QL, _DBL, normalization="hits"), "normalization"),
        (lambda: average_precision(_Q, _DB, _QL, _DBL, k=0), "k"),
        (lambda: average_precision(_Q, _DB, _QL, _DBL, k=2.5), "k"),
        (lambda: average_precision(_Q, _DB, _QL, _DBL, block_size=0), "block_size"),
        (lambda: average_precision(_Q, _DB, np.ones((4, 2)), _DBL), "query_labels"),
        (lambda: average_precision(_Q, _DB, np.full((4, 2), 2), np.ones((6, 2))), "query_labels"),
        (lambda: average_precision(_Q, _DB, _QL + 0.5, _DBL), "query_labels"),
        (lambda: precision_at_k(_Q, _DB, _QL, _DBL, [5, 0]), "ks"),
        (lambda: recall_at_k(_Q, _DB, _QL, _DBL, []), "ks"),
        (lambda: precision_recall_curve(_Q, _DB, _QL, _DBL, num_points=1), "num_points"),
        (lambda: evaluate_retrieval(_Q, _DB, _QL, _DBL, "default"), "protocol"),
        (lambda: similarity(_Q, np.ones((6, 4)), "cosine"), "database"),
        (lambda: RetrievalProtocol(distance="l2"), "distance"),
        (lambda: RetrievalProtocol(k=0), "k"),
        (lambda: relevance_matrix(np.ones((4, 3)), _DBL), "query_labels"),
    ],
)
def test_bad_input_raises_data_error_naming_the_argument(call, culprit):
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert culprit in message
    assert "\n" not in message


def test_every_preset_can_be_named_in_eval_extra_presets():
    import typing

    from tf_xmr.config.schema import EvalConfig

    allowed = typing.get_args(typing.get_args(typing.get_type_hints(EvalConfig)["extra_presets"])[0])
    assert set(allowed) == set(PRESETS)

"""The approximate retriever (tf_xmr.retrieval.ann): recall against brute force, the exact retriever's score
convention, growing the gallery, save/load, reproducibility and the one-line errors. Small galleries: seconds."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

pytest.importorskip("faiss")

from tf_xmr.errors import DataError, ModelInputError  # noqa: E402 - after the skip: nothing to test without faiss
from tf_xmr.retrieval.ann import BACKENDS, DISTANCES, ApproximateIndex  # noqa: E402

K = 10


def _clustered(n: int, *, dim: int = 64, classes: int = 20, seed: int = 0) -> np.ndarray:
    """Class-structured float32 embeddings (class centres in a 16-d latent, a linear map, noise), off the origin
    so that inner product and cosine rank differently."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, 16))
    mapping = rng.standard_normal((16, dim)) / 4.0
    z = centres[rng.integers(0, classes, n)] + 0.8 * rng.standard_normal((n, 16))
    scale = rng.uniform(0.5, 2.0, (n, 1))  # unequal norms: cosine and inner product are different problems
    return (scale * (z @ mapping + 0.3 * rng.standard_normal((n, dim)))).astype(np.float32)


def _exact_scores(gallery: np.ndarray, queries: np.ndarray, distance: str) -> np.ndarray:
    g, q = gallery.astype(np.float64), queries.astype(np.float64)
    if distance == "cosine":
        g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    if distance == "euclidean":
        return -np.sqrt(np.maximum(((q[:, None, :] - g[None, :, :]) ** 2).sum(-1), 0.0))
    return q @ g.T


@pytest.fixture(scope="module")
def data():
    both = _clustered(3200)
    return both[:3000], both[3000:]  # gallery, 200 held-out queries from the same distribution


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("distance", DISTANCES)
def test_recall_and_scores_match_brute_force(data, backend, distance):
    gallery, queries = data
    index = ApproximateIndex.build(gallery, distance=distance, backend=backend)
    assert (index.size, index.dim, index.distance, index.backend) == (3000, 64, distance, backend)
    indices, scores = index.search(queries, K)
    assert indices.shape == scores.shape == (200, K)
    assert indices.dtype == np.int64 and scores.dtype == np.float32

    exact = _exact_scores(gallery, queries, distance)
    exact_top = np.argsort(-exact, axis=1, kind="stable")[:, :K]
    recall = np.mean([len(set(a) & set(e)) / K for a, e in zip(indices, exact_top, strict=True)])
    assert recall >= 0.95, f"{backend}/{distance}: recall@10 {recall:.3f}"
    # Every returned score is the exact score of that item in the stated convention, best first.
    np.testing.assert_allclose(scores, np.take_along_axis(exact, indices, axis=1), atol=1e-4, rtol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert np.all(indices >= 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_added_rows_are_found(data, backend):
    gallery, queries = data
    index = ApproximateIndex.build(gallery[:2500], distance="cosine", backend=backend)
    index.add(gallery[2500:])
    index.add(np.zeros((0, 64), np.float32))  # an empty add is a no-op
    assert index.size == 3000
    indices, scores = index.search(gallery[2500:2600], K)
    np.testing.assert_array_equal(indices[:, 0], np.arange(2500, 2600))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_load_round_trip(tmp_path, data, backend):
    gallery, queries = data
    index = ApproximateIndex.build(gallery, distance="euclidean", backend=backend, seed=3)
    index.save(str(tmp_path / "ann"))
    index.save(str(tmp_path / "ann"))  # saving over an earlier save works too
    assert sorted(os.listdir(tmp_path / "ann")) == ["ann.json", "index.faiss"]  # no temporary files left
    meta = json.loads((tmp_path / "ann" / "ann.json").read_text())
    assert meta["backend"] == backend and meta["distance"] == "euclidean" and meta["seed"] == 3
    assert (meta["size"], meta["dim"]) == (3000, 64) and meta["faiss_version"]
    assert meta["params"] == index.params

    loaded = ApproximateIndex.load(str(tmp_path / "ann"))
    assert (loaded.size, loaded.dim, loaded.distance, loaded.backend, loaded.params) == (
        3000, 64, "euclidean", backend, index.params
    )
    for got, want in zip(loaded.search(queries, K), index.search(queries, K), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_builds_are_reproducible_and_growth_survives_save(tmp_path, data, backend):
    gallery, queries = data
    first = ApproximateIndex.build(gallery[:2500], distance="cosine", backend=backend, seed=1)
    first.save(str(tmp_path / "before"))
    again = ApproximateIndex.build(gallery[:2500], distance="cosine", backend=backend, seed=1)
    again.save(str(tmp_path / "again"))
    assert (tmp_path / "before" / "index.faiss").read_bytes() == (tmp_path / "again" / "index.faiss").read_bytes()

    # Grown before saving vs saved, loaded, then grown: the same index.
    first.add(gallery[2500:])
    first.save(str(tmp_path / "grown"))
    loaded = ApproximateIndex.load(str(tmp_path / "before"))
    loaded.add(gallery[2500:])
    loaded.save(str(tmp_path / "loaded_grown"))
    assert (tmp_path / "grown" / "index.faiss").read_bytes() == (
        tmp_path / "loaded_grown" / "index.faiss"
    ).read_bytes()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gallery_smaller_than_k(backend):
    gallery = _clustered(5, seed=4)
    index = ApproximateIndex.build(gallery, distance="inner", backend=backend)
    indices, scores = index.search(gallery[:2], K)
    assert indices.shape == scores.shape == (2, 5)
    assert [sorted(row) for row in indices.tolist()] == [[0, 1, 2, 3, 4]] * 2
    exact = _exact_scores(gallery, gallery[:2], "inner")
    np.testing.assert_allclose(scores, np.take_along_axis(exact, indices, axis=1), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(("backend", "params"), [("faiss-hnsw", {"efSearch": 1}), ("faiss-ivf", {"nprobe": 1})])
def test_narrow_searches_still_return_k_real_results(data, backend, params):
    # faiss alone leaves -1 in these rows (efSearch < k; one IVF cell holding fewer than k items).
    gallery, queries = data
    index = ApproximateIndex.build(gallery[:400], distance="cosine", backend=backend, **params)
    indices, _ = index.search(queries, 300)
    assert indices.shape == (200, 300) and indices.min() >= 0
    assert all(len(set(row)) == 300 for row in indices.tolist())


class _GraphMissingRows:
    """An HNSW index whose graph search always leaves the last result slot empty (-1), as a graph region the beam
    never reaches would; everything else is the real index."""

    def __init__(self, index):
        self._real = index

    def __getattr__(self, name):
        return getattr(self._real, name)

    def search(self, queries, k, params=None):
        distances, indices = self._real.search(queries, k, params=params)
        indices[:, -1] = -1
        return distances, indices


def test_hnsw_falls_back_to_brute_force_when_the_graph_misses(data):
    gallery, queries = data
    index = ApproximateIndex.build(gallery[:500], distance="inner", backend="faiss-hnsw")
    index._index = _GraphMissingRows(index._index)
    indices, scores = index.search(queries[:20], K)
    exact = _exact_scores(gallery[:500], queries[:20], "inner")
    np.testing.assert_array_equal(indices, np.argsort(-exact, axis=1, kind="stable")[:, :K])
    np.testing.assert_allclose(scores, np.take_along_axis(exact, indices, axis=1), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_equal_scores_put_the_lower_index_first(backend):
    rng = np.random.default_rng(5)
    gallery = rng.standard_normal((60, 8)).astype(np.float32)
    gallery[[7, 31, 50]] = gallery[3]  # four identical rows
    index = ApproximateIndex.build(gallery, distance="cosine", backend=backend)
    indices, scores = index.search(gallery[3:4], 4)
    assert indices.tolist() == [[3, 7, 31, 50]]
    assert len(set(scores[0].tolist())) == 1


def test_empty_query_batch(data):
    index = ApproximateIndex.build(data[0][:100], distance="cosine")
    indices, scores = index.search(np.zeros((0, 64), np.float32), K)
    assert indices.shape == scores.shape == (0, K)


@pytest.fixture(scope="module")
def small():
    return ApproximateIndex.build(_clustered(200, seed=6), distance="cosine")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ix: ix.search(np.zeros((2, 63)), K), "queries have dimension 63, the index has dimension 64"),
        (lambda ix: ix.add(np.zeros((2, 65), np.float32)), "added embeddings have dimension 65"),
        (lambda ix: ix.search(np.full((2, 64), np.nan, np.float32), K), "queries contain NaN or infinite values"),
        (lambda ix: ix.add(np.array([[0.0] * 63 + [np.inf]])), "added embeddings contain NaN or infinite"),
        (lambda ix: ix.search(np.zeros((1, 64)), 0), "k must be an integer >= 1, got 0"),
        (lambda ix: ix.search(np.zeros((1, 64)), -3), "k must be an integer >= 1"),
        (lambda ix: ix.search(np.zeros((1, 64)), 2.5), "k must be an integer >= 1"),
        (lambda ix: ix.search(np.zeros(64), K), "queries must be a 2-D (n, d) array, got shape (64,)"),
        (lambda ix: ix.search(np.array([["a"] * 64]), K), "queries must be numeric"),
        # float64 beyond float32's range would silently become inf inside faiss.
        (lambda ix: ix.search(np.full((1, 64), 1e300), K), "queries contain NaN or infinite values"),
    ],
)
def test_bad_search_and_add_inputs(small, call, message):
    with pytest.raises(ModelInputError, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as info:
        call(small)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"embeddings": np.zeros((0, 8), np.float32)}, "the gallery is empty"),
        ({"embeddings": np.array([[1.0, np.nan]])}, "gallery embeddings contain NaN or infinite values in 1 row"),
        ({"backend": "scann"}, "unknown approximate backend 'scann'; valid: faiss-hnsw, faiss-ivf"),
        ({"distance": "dot"}, "unknown distance 'dot'; valid: cosine, inner, euclidean"),
        ({"M": 0}, "faiss-hnsw parameter M must be an integer >= 1, got 0"),
        ({"nprobe": 4}, "unknown parameter(s) nprobe for backend faiss-hnsw; valid: M, efConstruction, efSearch"),
        ({"backend": "faiss-ivf", "nlist": 50}, "faiss-ivf nlist=50 exceeds the gallery size 20"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"embeddings": np.ones((3, 2), bool)}, "gallery embeddings must be numeric, got dtype bool"),
    ],
)
def test_bad_build_inputs(kwargs, message):
    arguments = {"embeddings": _clustered(20, dim=8, seed=7), "distance": "cosine", **kwargs}
    with pytest.raises(ModelInputError) as info:
        ApproximateIndex.build(arguments.pop("embeddings"), **arguments)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_missing_faiss_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    with pytest.raises(ModelInputError, match=r"pip install -r requirements-extra.txt \(faiss-cpu\)"):
        ApproximateIndex.build(np.ones((4, 3), np.float32), distance="cosine")


def test_load_reports_missing_and_mismatched_files(tmp_path, small):
    with pytest.raises(DataError, match="ann.json is missing"):
        ApproximateIndex.load(str(tmp_path / "nowhere"))
    small.save(str(tmp_path / "ann"))
    meta_path = tmp_path / "ann" / "ann.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "size": 999}))
    with pytest.raises(DataError, match="holds 200 x 64, ann.json says 999 x 64"):
        ApproximateIndex.load(str(tmp_path / "ann"))
    meta_path.write_text("{not json")
    with pytest.raises(DataError, match="is malformed"):
        ApproximateIndex.load(str(tmp_path / "ann"))

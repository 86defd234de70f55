"""Approximate top-k over a large retrieval gallery (faiss HNSW or IVF-Flat), behind the exact retriever's API.

The exact retriever scores every gallery item: for 1M items x d=200 a single query took 91 ms (p50, numpy brute
force on 2 shared cores, benchmarks/ann.py). :class:`ApproximateIndex` answers the same question approximately:
the same scores for the items it returns (full-precision vectors are kept, so a returned score is the exact score
of that item), but it may miss some of the true top k. ``benchmarks/ann.py`` measures by how much (recall@10
against brute force) and how fast.

faiss-cpu is an optional extra (``pip install -r requirements-extra.txt``): it is imported only when an index is
built or loaded, and a missing faiss is a one-line :class:`~tf_xmr.errors.ModelInputError`.

Score convention (the exact retriever's; higher is always better):

* ``"cosine"``: gallery rows and queries are each divided by ``max(||x||, 1e-12)`` here (callers need not
  normalise), score = inner product of the normalised vectors, in [-1, 1];
* ``"inner"``: raw inner product ``q . g``;
* ``"euclidean"``: ``-||q - g||`` (faiss's squared L2 distance, converted).

Results: ``search`` returns ``k' = min(k, size)`` columns, best first; among returned items with equal scores the
lower gallery index comes first, as in the exact retriever (which items are returned is the approximate part).
Never a ``-1`` placeholder: faiss leaves one when the search visits fewer than k items (HNSW with ``efSearch < k``,
IVF lists holding fewer than k items in the probed cells); ``efSearch`` is raised to at least k, and a query still
short of k results is searched again with doubled ``efSearch`` / ``nprobe`` (IVF ends exhaustive at
``nprobe = nlist``; HNSW ends with a brute-force scan of its stored vectors), so every row has k' real results.

Reproducibility (faiss 1.15.1, checked on 1 and 2 threads): the same embeddings, parameters and seed give a
byte-identical index. HNSW draws each item's graph level from a generator seeded from ``(seed, size before the add)``
at every ``add``, and faiss inserts vertices deterministically whatever the thread count; IVF seeds its k-means with
``seed`` (``cp.seed``) and trains on a sample drawn with ``seed``. An index grown by ``add`` after ``load`` is
identical to one grown before ``save``. Not reproducible: results across faiss versions or CPUs with different SIMD
paths (float summation order can change which of two near-equal items wins a slot).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from tf_xmr.errors import DataError, ModelInputError

BACKENDS = ("faiss-hnsw", "faiss-ivf")
DISTANCES = ("cosine", "inner", "euclidean")

# Defaults chosen by ``python benchmarks/ann.py`` (2026-12-07, 2 cores shared with other jobs, faiss-cpu 1.15.1;
# d=200 cosine, 10-class clustered embeddings, the hardest structured case measured; 1000 held-out queries):
# * faiss-hnsw M=32, efConstruction=80, efSearch=96 is the cheapest setting with recall@10 >= 0.95 at 1M items:
#   recall@10 0.960, batch-1 p50 0.87 ms, built in 5.3 min (1 GiB index). efConstruction=40 never reached 0.95 (0.920
#   at efSearch=256, 1.9 ms); efConstruction=160 reached 0.975 at the same p50 (0.88 ms) but took 4x the build time
#   (21 min). M=16 stayed below 0.83. More recall costs efSearch: 128 gave 0.978 at 1.02 ms, 256 gave 0.993 at
#   2.3 ms (set ``params["efSearch"]``; search reads it per call). At 100k items the same setting gave ~0.99.
# * faiss-ivf (nlist about 4 sqrt(n)): nprobe=96 is the cheapest nprobe with recall@10 >= 0.95 at 1M (0.967), but
#   batch-1 p50 was 2.9 ms (memory-bound list scans, hurt most by the other jobs): slower than HNSW at equal recall,
#   faster to build (3.9 min) and smaller (774 MB). Kept for galleries that grow or are rebuilt often.
DEFAULT_PARAMS = {
    "faiss-hnsw": {"M": 32, "efConstruction": 80, "efSearch": 96},
    # nlist None = chosen from the gallery size at build (see _auto_nlist); nprobe is the number of cells searched.
    "faiss-ivf": {"nlist": None, "nprobe": 96},
}
DEFAULT_BACKEND = "faiss-hnsw"

_EPS = 1e-12
# Rows per faiss.add call: bounds the normalised float32 copy (cosine) to ~80 MB at d=200 instead of the gallery size.
_ADD_CHUNK = 100_000
INDEX_FILE = "index.faiss"
META_FILE = "ann.json"


def _faiss():
    try:
        import faiss
    except ImportError as error:
        raise ModelInputError(
            f"the approximate retriever needs faiss ({error}): pip install -r requirements-extra.txt (faiss-cpu)"
        ) from None
    return faiss


def _check_distance(distance) -> str:
    if distance not in DISTANCES:
        raise ModelInputError(f"unknown distance {distance!r}; valid: {', '.join(DISTANCES)}")
    return distance


def _check_backend(backend) -> str:
    if backend not in BACKENDS:
        raise ModelInputError(f"unknown approximate backend {backend!r}; valid: {', '.join(BACKENDS)}")
    return backend


def _as_matrix(array, what: str, dim: int | None = None) -> np.ndarray:
    """``array`` as a C-contiguous float32 (n, d) matrix of finite values, or a one-line ModelInputError."""
    try:
        matrix = np.asarray(array)
    except Exception as error:  # anything numpy cannot read is the caller's input problem
        raise ModelInputError(f"{what} cannot be read as an array: {error}") from None
    if matrix.ndim != 2:
        raise ModelInputError(f"{what} must be a 2-D (n, d) array, got shape {matrix.shape}")
    if not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.integer)):
        raise ModelInputError(f"{what} must be numeric, got dtype {matrix.dtype}")
    if matrix.shape[1] < 1:
        raise ModelInputError(f"{what} have no columns (shape {matrix.shape})")
    if dim is not None and matrix.shape[1] != dim:
        raise ModelInputError(f"{what} have dimension {matrix.shape[1]}, the index has dimension {dim}")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf and is reported just below
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    finite = np.isfinite(matrix)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        raise ModelInputError(
            f"{what} contain NaN or infinite values in {bad_rows.size} row(s) (first: row {int(bad_rows[0])})"
        )
    return matrix


def _normalise(x: np.ndarray) -> np.ndarray:
    # The exact retriever's cosine: x / max(||x||, eps), so a zero row stays zero (scores 0) instead of NaN.
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    return x / np.maximum(norms, _EPS)[:, None]


def _auto_nlist(n: int) -> int:
    """IVF cells for ``n`` items: about 4 sqrt(n) (the usual rule), at least 39 training points per cell.

    faiss's k-means wants >= 39 points per centroid; below that, cells are badly placed. 4 sqrt(n) gives the 1265
    cells (100k items) and 4000 cells (1M) measured in benchmarks/ann.py.
    """
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


def _level_seed(seed: int, size: int) -> int:
    # A fresh, reproducible generator per add: graph levels depend on (seed, where the add starts), not on history,
    # so an index grown after load equals one grown before save.
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(size)]).generate_state(1)[0] & 0x7FFFFFFF)


def _check_params(backend: str, params: dict) -> dict:
    defaults = DEFAULT_PARAMS[backend]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ModelInputError(
            f"unknown parameter(s) {', '.join(unknown)} for backend {backend}; valid: {', '.join(defaults)}"
        )
    merged = {**defaults, **params}
    for name, value in merged.items():
        if value is None and name == "nlist":
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ModelInputError(f"{backend} parameter {name} must be an integer >= 1, got {value!r}")
        merged[name] = int(value)
    return merged


class ApproximateIndex:
    """Approximate top-k over gallery embeddings (n, d) float32, same score convention as the exact retriever.

    Build with :meth:`build` or :meth:`load`, not the constructor.

    Attributes:
        size: number of gallery items (rows added so far).
        dim: embedding dimension d.
        distance: "cosine", "inner" or "euclidean".
        backend: "faiss-hnsw" or "faiss-ivf".
        params: the backend's parameters in use (HNSW: M, efConstruction, efSearch; IVF: nlist, nprobe), with
            IVF's automatic ``nlist`` resolved to the number of cells built. ``search`` reads efSearch / nprobe
            from here at every call, so setting them tunes a built index (the others describe the build: read-only).
        seed: the seed the index was built with (HNSW graph levels, IVF k-means and its training sample).
    """

    def __init__(self, index, *, distance: str, backend: str, params: dict, seed: int):
        self._index = index
        self.distance = distance
        self.backend = backend
        self.params = dict(params)
        self.seed = int(seed)

    @property
    def size(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        *,
        distance: str,
        backend: str = DEFAULT_BACKEND,
        seed: int = 0,
        **params,
    ) -> ApproximateIndex:
        """Index a gallery.

        Args:
            embeddings: gallery embeddings (n, d), n >= 1, finite; converted to float32 (not modified).
            distance: "cosine", "inner" or "euclidean" (module docstring: score convention).
            backend: "faiss-hnsw" (graph; default: fastest at recall@10 >= 0.95 in benchmarks/ann.py) or
                "faiss-ivf" (inverted lists over k-means cells; faster to build, slower per query).
            seed: seeds HNSW's level draws, IVF's k-means and its training sample.
            **params: backend parameters overriding :data:`DEFAULT_PARAMS`: HNSW ``M`` (graph degree),
                ``efConstruction`` (build beam), ``efSearch`` (search beam, raised to k per search); IVF ``nlist``
                (cells; None = about 4 sqrt(n)), ``nprobe`` (cells searched per query, capped at nlist).

        Returns:
            The index, holding n items with indices 0..n-1 in row order.

        Raises:
            ModelInputError: faiss missing, empty gallery, NaN/inf, unknown backend, distance or parameter.
        """
        distance = _check_distance(distance)
        backend = _check_backend(backend)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ModelInputError(f"seed must be an integer >= 0, got {seed!r}")
        params = _check_params(backend, params)
        x = _as_matrix(embeddings, "gallery embeddings")
        if x.shape[0] == 0:
            raise ModelInputError("the gallery is empty: an approximate index needs at least one embedding")
        faiss = _faiss()
        n, d = x.shape
        metric = faiss.METRIC_L2 if distance == "euclidean" else faiss.METRIC_INNER_PRODUCT
        if backend == "faiss-hnsw":
            index = faiss.IndexHNSWFlat(d, params["M"], metric)
            index.hnsw.efConstruction = params["efConstruction"]
            index.hnsw.efSearch = params["efSearch"]
        else:
            nlist = params["nlist"] if params["nlist"] is not None else _auto_nlist(n)
            if nlist > n:
                raise ModelInputError(f"faiss-ivf nlist={nlist} exceeds the gallery size {n}: use nlist <= {n}")
            params["nlist"] = nlist
            quantizer = faiss.IndexFlatL2(d) if metric == faiss.METRIC_L2 else faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
            index.own_fields = True
            quantizer.this.disown()  # the IVF index owns (and frees) its quantizer; keeps it alive after return
            index.cp.seed = int(seed)
            # Cosine cells: spherical k-means keeps centroids on the unit sphere, where the data and queries live.
            index.cp.spherical = distance == "cosine"
            index.nprobe = min(params["nprobe"], nlist)
            if nlist == 1:  # galleries under 39 items: one cell is their mean, no k-means (and no faiss warning)
                index.cp.min_points_per_centroid = 1
            # k-means on at most 64 points per cell (faiss's own cap is 256, i.e. the whole 1M gallery at 4000
            # cells): a quarter of the training time; 64 points per centroid is already well above the 39 faiss asks.
            train_size = min(n, 64 * nlist)
            rows = np.sort(np.random.default_rng(seed).choice(n, size=train_size, replace=False))
            sample = x[rows]
            index.train(_normalise(sample) if distance == "cosine" else sample)
        ann = cls(index, distance=distance, backend=backend, params=params, seed=seed)
        ann._add_checked(x)
        return ann

    def add(self, embeddings: np.ndarray) -> None:
        """Append gallery rows without retraining; they get indices size..size+m-1 in row order.

        IVF keeps its cells: a gallery grown far beyond the size it was built at puts more items in each cell,
        so queries get slower at the same nprobe (recall should hold if the new rows follow the distribution the
        cells were trained on; not measured). Rebuild to re-fit ``nlist`` to the new size.

        Args:
            embeddings: (m, d) new rows, finite; m = 0 is a no-op.

        Raises:
            ModelInputError: wrong dimension, NaN/inf.
        """
        self._add_checked(_as_matrix(embeddings, "added embeddings", self.dim))

    def _add_checked(self, x: np.ndarray) -> None:
        faiss = _faiss()
        for start in range(0, x.shape[0], _ADD_CHUNK):
            chunk = x[start : start + _ADD_CHUNK]
            if self.distance == "cosine":
                chunk = _normalise(chunk)
            if self.backend == "faiss-hnsw":
                self._index.hnsw.rng = faiss.RandomGenerator(_level_seed(self.seed, self.size))
            self._index.add(chunk)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k gallery items per query.

        Args:
            queries: (b, d) query embeddings, finite (b = 0 gives empty results).
            k: results per query, >= 1; a gallery with fewer than k items returns all of them (k' = size).

        Returns:
            ``(indices, scores)``: int64 (b, k') gallery indices and float32 (b, k') scores in the module's
            convention, best first, k' = min(k, size); never -1 (see the module docstring).

        Raises:
            ModelInputError: k < 1, wrong dimension, NaN/inf.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ModelInputError(f"k must be an integer >= 1, got {k!r}")
        q = _as_matrix(queries, "queries", self.dim)
        if self.distance == "cosine":
            q = _normalise(q)
        k = min(int(k), self.size)
        if q.shape[0] == 0:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        distances, indices = self._search_complete(q, k)
        # 0 - sqrt, not -sqrt: an exact match scores 0.0 rather than -0.0.
        scores = 0.0 - np.sqrt(np.maximum(distances, 0.0)) if self.distance == "euclidean" else distances
        scores = scores.astype(np.float32, copy=False)
        # faiss orders equal scores arbitrarily; the exact retriever puts the lower gallery index first.
        order = np.lexsort((indices, -scores), axis=-1)
        return np.take_along_axis(indices, order, axis=1), np.take_along_axis(scores, order, axis=1)

    def _search_complete(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss search with k real results per row: widen the search for rows faiss left short (-1)."""
        faiss = _faiss()
        if self.backend == "faiss-hnsw":
            width, limit = max(self.params["efSearch"], k), max(self.size, k)
            make = lambda w: faiss.SearchParametersHNSW(efSearch=w)
        else:
            width, limit = min(self.params["nprobe"], self.params["nlist"]), self.params["nlist"]
            make = lambda w: faiss.SearchParametersIVF(nprobe=w)
        distances, indices = self._index.search(q, k, params=make(width))
        short = np.flatnonzero((indices < 0).any(axis=1))
        while short.size and width < limit:
            width = min(2 * width, limit)
            d_more, i_more = self._index.search(q[short], k, params=make(width))
            distances[short], indices[short] = d_more, i_more
            short = short[(i_more < 0).any(axis=1)]
        if short.size:
            # Only HNSW gets here (IVF at nprobe = nlist scans every list): a graph region the beam never reached.
            storage = faiss.downcast_index(self._index.storage)
            distances[short], indices[short] = storage.search(q[short], k)
        return distances, indices

    def save(self, directory: str) -> None:
        """Write ``index.faiss`` and ``ann.json`` (backend, distance, params, seed, size, dim, faiss version).

        Each file is written to a temporary name in ``directory`` and renamed over the old one (atomic per file);
        the JSON goes last and records size and dim, which :meth:`load` checks against the index file, so a
        reader never silently pairs a new index with old metadata.

        Args:
            directory: created if missing.
        """
        faiss = _faiss()
        os.makedirs(directory, exist_ok=True)
        meta = {
            "format": 1,
            "backend": self.backend,
            "distance": self.distance,
            "params": self.params,
            "seed": self.seed,
            "size": self.size,
            "dim": self.dim,
            "faiss_version": faiss.__version__,
        }
        index_path = os.path.join(directory, INDEX_FILE)
        meta_path = os.path.join(directory, META_FILE)
        _atomic(index_path, lambda tmp: faiss.write_index(self._index, tmp))
        _atomic(meta_path, lambda tmp: _write_text(tmp, json.dumps(meta, indent=2, sort_keys=True) + "\n"))

    @classmethod
    def load(cls, directory: str) -> ApproximateIndex:
        """Read an index written by :meth:`save`.

        Raises:
            DataError: the files are missing, malformed or disagree with each other.
            ModelInputError: faiss is missing.
        """
        meta_path = os.path.join(directory, META_FILE)
        index_path = os.path.join(directory, INDEX_FILE)
        for path in (meta_path, index_path):
            if not os.path.isfile(path):
                raise DataError(f"approximate index {directory}: {os.path.basename(path)} is missing")
        try:
            with open(meta_path, encoding="utf-8") as handle:
                meta = json.load(handle)
            backend, distance, params = meta["backend"], meta["distance"], dict(meta["params"])
            seed, size, dim = int(meta["seed"]), int(meta["size"]), int(meta["dim"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(f"approximate index {meta_path} is malformed: {error}") from None
        if backend not in BACKENDS or distance not in DISTANCES:
            raise DataError(f"approximate index {meta_path}: unknown backend {backend!r} or distance {distance!r}")
        faiss = _faiss()
        try:
            index = faiss.read_index(index_path)
        except RuntimeError as error:
            raise DataError(f"approximate index {index_path} cannot be read: {str(error).splitlines()[0]}") from None
        if int(index.ntotal) != size or int(index.d) != dim:
            raise DataError(
                f"approximate index {directory}: {INDEX_FILE} holds {index.ntotal} x {index.d}, {META_FILE} says"
                f" {size} x {dim} (files from different saves?)"
            )
        return cls(index, distance=distance, backend=backend, params=params, seed=seed)


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _atomic(path: str, write) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

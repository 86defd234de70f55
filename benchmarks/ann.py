"""Recall and speed of the approximate retriever's backends (tf_xmr.retrieval.ann) against exact brute force.

Usage:
    python benchmarks/ann.py [--sizes 100000 1000000] [--dim 200] [--queries 1000] [--data clustered iid]
                             [--classes 10] [--hnsw 16:40 32:80 ...] [--ef-search 16 32 64 128 ...]
                             [--nlist auto 1024 ...] [--nprobe 8 16 32 64 ...] [--no-exact]

The tables reported on the issue (2026-12-07, 2 cores shared with other jobs; about 1.5 h in all, most of it the
1M HNSW builds) came from:
    python benchmarks/ann.py --sizes 100000 --data clustered
    python benchmarks/ann.py --sizes 100000 --data iid --hnsw 16:40 32:80 --ef-search 64 128 256 --nprobe 32 128 256
    python benchmarks/ann.py --sizes 100000 --data clustered --classes 1000 --hnsw 32:80 --ef-search 32 64 128 \
        --nprobe 32 64 128
    python benchmarks/ann.py --sizes 1000000 --data clustered --hnsw 32:40 32:80 32:160 --ef-search 64 96 128 256 \
        --nprobe 32 64 96 128 256
Memory at 1M: the gallery (0.8 GB), its normalised copy for the exact row (0.8 GB, freed before the builds) and
one index at a time (about 1 GB). The full default grid at 1M (four HNSW builds, iid data too, whose builds were
2-3x slower than the clustered ones at 100k) was not run: an estimated 3-5 h on 2 cores.

For each data kind and gallery size, prints one markdown table: one row per setting, measured through
``ApproximateIndex`` itself (input checks, cosine normalisation and result sorting included):

* build: seconds to build the index from the float32 gallery (HNSW: per (M, efConstruction); IVF: per nlist,
  k-means included); the same build serves every efSearch / nprobe row under it.
* index MB: size of the saved ``index.faiss`` (about its size in memory; the flat vectors alone are n * d * 4 bytes).
* recall@10: |approximate top 10 ∩ exact top 10| / 10, averaged over the queries. The exact top 10 is a blocked
  numpy matmul + argpartition over the normalised gallery (cosine, the exact retriever's default distance).
* QPS: queries per second for one search call with the whole query batch (faiss spreads queries over the cores),
  best of 3 calls.
* p50 / p99 ms: latency of single-query calls (batch 1), 500 calls (or --queries, if more) after 50 warm-up calls.
* p50 CPU ms: median CPU time of the calling thread in those calls (faiss runs a single query on the calling
  thread): the work per query, which other processes on a shared machine inflate far less than the wall time (a
  preempted call's wall time counts time slices given to others).

A row "exact (numpy)" gives brute force's own speed for comparison (one matmul over the gallery per call).

Data (float32, d = --dim, queries held out from the same distribution, distance cosine):

* ``clustered``: what a trained encoder's embeddings look like, class-structured and of low intrinsic dimension:
  ``--classes`` classes (default 10, as in make_synthetic and Wikipedia) with centres mu_c ~ N(0, I_32) in a 32-d
  latent; an item is z = mu_c + 0.8 eps, mapped to d dimensions by a fixed random linear map (unit variance per
  output dimension) plus N(0, 0.3^2) noise in every dimension. Like tf_xmr.data.synthetic's generative story (class
  cloud in a shared latent, observed through a fixed map with noise), at the embedding dimension instead of the raw
  feature dimension. Few classes is the hard structured case: a query's 10 nearest neighbours must be found among
  the ~n/10 items of its own class, by the item-level latent; with 100 or 1000 classes (tighter, more numerous
  clusters) both backends reach higher recall at the same settings (measured at 100k).
* ``iid``: standard Gaussian vectors, the worst case for any approximate search (no structure to exploit, intrinsic
  dimension = d).

ScaNN was tried and is not measured: ``pip install scann`` (1.4.2) installs, but ``import scann`` fails with this
stack: it loads a TensorFlow custom-op library built against another TensorFlow/abseil ("undefined symbol:
...absl...raw_log_internal...") under TF 2.21.

The threads are faiss's OpenMP default (all cores; the measured machine had 2). The machine may be shared: run it
on an idle machine and compare rows of the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tf_xmr.retrieval.ann import ApproximateIndex  # noqa: E402 - needs the sys.path insert above

K = 10
LATENT = 32
CLASSES = 10
WARMUP = 50
_CHUNK = 100_000


def make_embeddings(
    kind: str, n: int, dim: int, seed: int, n_queries: int, classes: int = CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """(gallery (n, dim), queries (n_queries, dim)) float32 from one distribution, generated in chunks."""
    rng = np.random.default_rng(seed)
    total = n + n_queries
    out = np.empty((total, dim), np.float32)
    if kind == "iid":
        for start in range(0, total, _CHUNK):
            stop = min(total, start + _CHUNK)
            out[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
    else:
        centres = rng.standard_normal((classes, LATENT), dtype=np.float32)
        # Unit variance per output dimension: z has variance 1 + 0.8^2 per latent coordinate.
        mapping = rng.standard_normal((LATENT, dim), dtype=np.float32) / np.sqrt(LATENT * (1 + 0.8**2))
        for start in range(0, total, _CHUNK):
            stop = min(total, start + _CHUNK)
            labels = rng.integers(0, classes, stop - start)
            z = centres[labels] + 0.8 * rng.standard_normal((stop - start, LATENT), dtype=np.float32)
            out[start:stop] = z @ mapping + 0.3 * rng.standard_normal((stop - start, dim), dtype=np.float32)
    # Queries are the last rows: drawn after the gallery, never part of it.
    return out[:n], out[n:]


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def exact_top_k(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact cosine top-k indices (b, k) by blocked matmul + argpartition (the reference for recall)."""
    q = _normalise(queries)
    best_scores = np.full((q.shape[0], 0), -np.inf, np.float32)
    best_index = np.zeros((q.shape[0], 0), np.int64)
    for start in range(0, gallery.shape[0], _CHUNK):
        block = _normalise(gallery[start : start + _CHUNK])
        scores = np.concatenate([best_scores, q @ block.T], axis=1)
        index = np.concatenate(
            [best_index, np.broadcast_to(np.arange(start, start + block.shape[0]), (q.shape[0], block.shape[0]))],
            axis=1,
        )
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(scores, keep, axis=1)
        best_index = np.take_along_axis(index, keep, axis=1)
    return best_index


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact, strict=True)]
    return float(np.mean(hits)) / exact.shape[1]


def _timings(search, queries: np.ndarray, n_single: int) -> tuple[float, float, float, float]:
    """(QPS for the whole batch, p50 ms, p99 ms, p50 CPU ms of batch-1 calls)."""
    search(queries)  # warm-up of the batch path
    batch_seconds = []
    for _ in range(3):  # best of 3: on a shared machine the fastest run is the one least disturbed
        start = time.perf_counter()
        search(queries)
        batch_seconds.append(time.perf_counter() - start)
    qps = queries.shape[0] / min(batch_seconds)
    for i in range(WARMUP):
        search(queries[i % queries.shape[0]][None])
    latencies, cpu = [], []
    for i in range(n_single):
        one = queries[i % queries.shape[0]][None]
        start, start_cpu = time.perf_counter(), time.thread_time()
        search(one)
        latencies.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - start_cpu)
    p50, p99 = np.percentile(np.array(latencies) * 1e3, [50, 99])
    return qps, float(p50), float(p99), float(np.median(cpu) * 1e3)


def _index_mb(index: ApproximateIndex) -> float:
    with tempfile.TemporaryDirectory() as folder:
        index.save(folder)
        return os.path.getsize(os.path.join(folder, "index.faiss")) / 2**20


def _load() -> str:
    # Printed before and after each table: a load above 0 from other processes inflates latencies (p99 first).
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def bench_size(args, kind: str, n: int) -> None:
    t0 = time.perf_counter()
    gallery, queries = make_embeddings(kind, n, args.dim, seed=args.seed, n_queries=args.queries, classes=args.classes)
    exact = exact_top_k(gallery, queries, K)
    print(f"\n### {kind}, {n:,} items x d={args.dim}, {args.queries} queries, cosine, k={K}\n")
    print(f"(data + exact top-{K}: {time.perf_counter() - t0:.1f} s; load average {_load()})\n")
    print(_row(["backend", "build params", "search param", "build s", "index MB", "recall@10", "QPS", "p50 ms",
                "p99 ms", "p50 CPU ms"]))
    print(_row(["---"] * 10))
    n_single = max(500, args.queries)
    sys.stdout.flush()

    if args.exact:
        normalised = _normalise(gallery)

        def exact_search(q):
            # 32 queries at a time: the whole batch's (1000, 1M) score matrix and its argpartition would take 12 GB.
            tops = []
            for start in range(0, q.shape[0], 32):
                scores = _normalise(q[start : start + 32]) @ normalised.T
                top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
                order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
                tops.append(np.take_along_axis(top, order, axis=1))
            return np.concatenate(tops)

        qps, p50, p99, cpu = _timings(exact_search, queries, min(n_single, 100 if n > 200_000 else n_single))
        print(_row(["exact (numpy)", "-", "-", "-", f"{normalised.nbytes / 2**20:.0f}", "1.000", f"{qps:.0f}",
                    f"{p50:.2f}", f"{p99:.2f}", "-"]))  # numpy's BLAS threads: one thread's CPU says nothing
        del normalised
        sys.stdout.flush()

    for spec in args.hnsw:
        m, ef_construction = (int(v) for v in spec.split(":"))
        start = time.perf_counter()
        index = ApproximateIndex.build(gallery, distance="cosine", backend="faiss-hnsw", M=m,
                                       efConstruction=ef_construction)
        build = time.perf_counter() - start
        mb = _index_mb(index)
        for ef in args.ef_search:
            # search() reads params per call, so one build serves the whole efSearch sweep.
            index.params["efSearch"] = ef
            recall = recall_at_k(index.search(queries, K)[0], exact)
            qps, p50, p99, cpu = _timings(partial(index.search, k=K), queries, n_single)
            print(_row(["faiss-hnsw", f"M={m} efC={ef_construction}", f"efSearch={ef}", f"{build:.1f}",
                        f"{mb:.0f}", f"{recall:.3f}", f"{qps:.0f}", f"{p50:.2f}", f"{p99:.2f}", f"{cpu:.2f}"]))
            sys.stdout.flush()
        del index

    for nlist_arg in args.nlist:
        params = {} if nlist_arg == "auto" else {"nlist": int(nlist_arg)}
        start = time.perf_counter()
        index = ApproximateIndex.build(gallery, distance="cosine", backend="faiss-ivf", **params)
        build = time.perf_counter() - start
        mb = _index_mb(index)
        nlist = index.params["nlist"]
        for nprobe in args.nprobe:
            if nprobe > nlist:
                continue
            index.params["nprobe"] = nprobe
            recall = recall_at_k(index.search(queries, K)[0], exact)
            qps, p50, p99, cpu = _timings(partial(index.search, k=K), queries, n_single)
            print(_row(["faiss-ivf", f"nlist={nlist}" + (" (auto)" if nlist_arg == "auto" else ""),
                        f"nprobe={nprobe}", f"{build:.1f}", f"{mb:.0f}", f"{recall:.3f}", f"{qps:.0f}",
                        f"{p50:.2f}", f"{p99:.2f}", f"{cpu:.2f}"]))
            sys.stdout.flush()
        del index
    print(f"\n(load average after the table: {_load()})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=200)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--data", nargs="+", choices=("clustered", "iid"), default=["clustered", "iid"])
    parser.add_argument("--hnsw", nargs="*", default=["16:40", "32:40", "32:80", "32:160"],
                        help="M:efConstruction builds")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 96, 128, 256])
    parser.add_argument("--nlist", nargs="*", default=["auto"], help="IVF cells per build; auto = about 4 sqrt(n)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64, 96, 128, 256])
    parser.add_argument("--classes", type=int, default=CLASSES, help="classes of the clustered data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-exact", dest="exact", action="store_false", help="skip the brute-force speed row")
    args = parser.parse_args(argv)

    import faiss

    print(f"{time.strftime('%Y-%m-%d %H:%M')}: faiss {faiss.__version__}, numpy {np.__version__}, "
          f"{os.cpu_count()} cores, faiss threads {faiss.omp_get_max_threads()}, "
          f"{platform.processor() or platform.machine()}")
    for kind in args.data:
        for n in args.sizes:
            bench_size(args, kind, n)


if __name__ == "__main__":
    main()

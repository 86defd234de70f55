"""Speed and memory of tf_xmr's exact mAP, side by side with the fastest other exact numpy method and a loop.

Usage:
    python benchmarks/map_speed.py [--quick] [--repeats 3]

Three methods rank the same data (200-d float32 embeddings clustered in 10 classes, cosine, whole ranking, AP over
all relevant items) in one process, interleaved, ``--repeats`` times per size; the table shows the median wall and
CPU seconds:

* ``tf_xmr``: :func:`tf_xmr.metrics.mean_average_precision`.
* ``flag-sort``: an independent exact numpy implementation written for this benchmark, the best other one built
  (issue 18): blocks of queries scored by one matrix product, the relevance flag written into the lowest mantissa
  bit of each float64 score so that a values-only ``np.sort`` replaces argsort + gather, a stable argsort for the
  rare rows where a relevant and an irrelevant item share a flagged score, AP summed over the hit positions. One
  thread, whole blocks (~256 MiB of temporaries).
* ``argsort loop``: one query at a time, ``np.argsort`` of its scores; then either the AP over the query's hits in
  numpy, or DSCMR's evaluation code's Python walk down the whole ranking (the baseline of issue 18). Both skipped
  at the largest size (minutes to hours).

Each method's AP per query is compared with tf_xmr's (the largest absolute difference is printed; 0 = the same
floats). Peak memory: each method runs once more at each size in a fresh process, which reports its peak resident
set (ru_maxrss: the Python runtime, numpy, the data and the method's temporaries).

The machine may be shared: CPU seconds are the fairer figure when wall > CPU / cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tf_xmr.metrics import average_precision, retrieval  # noqa: E402 - needs the sys.path insert above

DIM = 200
N_CLASSES = 10
_EPS = 1e-12


def _make(n: int, seed: int):
    """Class-clustered float32 embeddings, like the output of a trained encoder."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CLASSES, DIM)).astype(np.float32)
    labels = rng.integers(0, N_CLASSES, n)
    features = centres[labels] + 2.0 * rng.standard_normal((n, DIM)).astype(np.float32)
    return features, labels


def _data(n: int):
    query, query_labels = _make(n, seed=2 * n)
    database, database_labels = _make(n, seed=2 * n + 1)
    return query, database, query_labels, database_labels


# ---------------------------------------------------------------------------------------------------------------
# The other methods


def flag_sort_ap(query, database, query_labels, database_labels, budget_bytes=256 * 2**20):
    """Exact AP per query (cosine, whole ranking, all relevant items): the issue's values-only sort, one thread.

    The flag lives in the lowest mantissa bit of the negated cosine, so a relevant and an irrelevant item whose
    scores differ only in that bit (or are equal) may come out of the sort in either order: those rows (rare with
    real-valued data) are ranked again with a stable argsort of the true scores. Exact for every score except the
    two smallest subnormals (a flagged -5e-324 sorts equal to +0.0), which a cosine of real data never produces.
    """
    q = np.asarray(query, np.float64)
    db = np.asarray(database, np.float64)
    # The same operations as tf_xmr and its loop reference (dot / |q| / |db|), so the scores are the same floats.
    q_norm = np.maximum(np.sqrt(np.einsum("ij,ij->i", q, q)), _EPS)
    db_norm = np.maximum(np.sqrt(np.einsum("ij,ij->i", db, db)), _EPS)
    n_q, n_db = q.shape[0], db.shape[0]
    block = max(1, budget_bytes // (40 * n_db))  # scores, flagged keys, their bits, relevance, the tie test
    ap = np.empty(n_q)
    for start in range(0, n_q, block):
        stop = min(start + block, n_q)
        scores = q[start:stop] @ db.T
        scores /= q_norm[start:stop, None]
        scores /= db_norm[None, :]
        np.negative(scores, out=scores)  # ascending = better
        scores += 0.0  # -0.0 -> 0.0
        relevant = query_labels[start:stop, None] == database_labels[None, :]
        keys = scores.view(np.int64) & np.int64(-2)
        keys |= relevant
        ranked = keys.view(np.float64)
        ranked.sort(axis=1)
        bits = ranked.view(np.int64)
        flags = bits & 1
        same_score = (bits[:, 1:] >> 1) == (bits[:, :-1] >> 1)
        tied = np.flatnonzero(np.any(same_score & (flags[:, 1:] != flags[:, :-1]), axis=1))
        del same_score, ranked, bits, keys
        if tied.size:
            order = np.argsort(scores[tied], axis=1, kind="stable")
            flags[tied] = np.take_along_axis(relevant[tied], order, axis=1)
        # Hit positions: flatnonzero of a bool array is several times faster than a 2-D nonzero.
        hit = flags.astype(bool)
        flat = np.flatnonzero(hit)
        counts = np.count_nonzero(hit, axis=1)
        starts = np.cumsum(counts) - counts
        rows = np.repeat(np.arange(stop - start), counts)
        rank = flat + 1 - np.repeat(np.arange(stop - start) * n_db, counts)
        j = np.arange(1, flat.size + 1) - np.repeat(starts, counts)
        sums = np.bincount(rows, weights=j / rank, minlength=stop - start)  # in rank order, like the loop
        n_relevant = np.count_nonzero(relevant, axis=1)
        ap[start:stop] = np.divide(sums, n_relevant, out=np.zeros(stop - start), where=n_relevant > 0)
    return ap


def _cosine_setup(query, database):
    q = np.asarray(query, np.float64)
    db = np.asarray(database, np.float64)
    q_norm = np.maximum(np.sqrt(np.einsum("ij,ij->i", q, q)), _EPS)
    db_norm = np.maximum(np.sqrt(np.einsum("ij,ij->i", db, db)), _EPS)
    return q, db, q_norm, db_norm


def dscmr_loop_ap(query, database, query_labels, database_labels):
    """AP per query the way DSCMR's evaluation code computes it: an argsort per query, then a Python walk down the
    whole ranking that compares labels item by item (``fx_calc_map_label``); stable argsort here, for exact ties."""
    q, db, q_norm, db_norm = _cosine_setup(query, database)
    ap = np.zeros(q.shape[0])
    for i in range(q.shape[0]):
        order = np.argsort(-(db @ q[i] / q_norm[i] / db_norm), kind="stable")
        p, r = 0.0, 0.0
        for j in range(order.shape[0]):
            if query_labels[i] == database_labels[order[j]]:
                r += 1
                p += r / (j + 1)
        ap[i] = p / r if r else 0.0
    return ap


def argsort_loop_ap(query, database, query_labels, database_labels):
    """AP per query, one query at a time with np.argsort, the AP vectorised over the query's hits."""
    q, db, q_norm, db_norm = _cosine_setup(query, database)
    ap = np.zeros(q.shape[0])
    for i in range(q.shape[0]):
        scores = db @ q[i] / q_norm[i] / db_norm
        order = np.argsort(-scores, kind="stable")
        relevant = database_labels[order] == query_labels[i]
        hits = np.flatnonzero(relevant)
        if hits.size:
            # cumsum adds in rank order (np.sum would add pairwise): the same floats as a walk down the ranking.
            ap[i] = np.cumsum(np.arange(1, hits.size + 1) / (hits + 1))[-1] / hits.size
    return ap


METHODS = {
    "tf_xmr": lambda *data: average_precision(*data),
    "flag-sort (best other exact numpy)": flag_sort_ap,
    "argsort loop, AP vectorised per query": argsort_loop_ap,
    "argsort loop, DSCMR style (Python walk)": dscmr_loop_ap,
}


# ---------------------------------------------------------------------------------------------------------------
# Measurement


def _peak_rss_mib() -> float:
    try:
        # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so a fresh child would report the peak of the
        # benchmark process that started it.
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _one_process(method: str, n: int) -> int:
    """Runs one method once in this (fresh) process; prints its peak RSS and the RSS before it, as JSON."""
    data = _data(n)
    before = _peak_rss_mib()
    METHODS[method](*data)
    print(json.dumps({"before_mib": before, "peak_mib": _peak_rss_mib()}))
    return 0


def _peak_in_fresh_process(method: str, n: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--one", method, "--size", str(n)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _timed(fn, *data):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn(*data)
    return value, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per size (median reported)")
    parser.add_argument("--one", choices=list(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return _one_process(args.one, args.size)
    sizes = (300, 1_000, 3_000) if args.quick else (2_000, 5_000, 20_000)
    loop_limit = sizes[1]  # the loop takes minutes beyond this

    print(f"{DIM}-d float32 embeddings, {N_CLASSES} classes, cosine, whole ranking; {os.cpu_count()} CPUs, tf_xmr "
          f"ranks on {retrieval._thread_count()} thread(s); numpy {np.__version__}; median of {args.repeats} "
          "interleaved runs")
    header = ("n_q x n_db", "method", "wall (s)", "CPU (s)", "wall vs tf_xmr", "mAP", "max |AP - tf_xmr|",
              "peak RSS (MiB)")
    table = [header]
    loop_difference = 0.0  # |mAP of tf_xmr - mAP of the DSCMR-style loop|, largest over the sizes
    for n in sizes:
        data = _data(n)
        methods = [m for m in METHODS if n <= loop_limit or not m.startswith("argsort")]
        walls = {m: [] for m in methods}
        cpus = {m: [] for m in methods}
        aps = {}
        for _ in range(args.repeats):
            for m in methods:
                aps[m], wall, cpu = _timed(METHODS[m], *data)
                walls[m].append(wall)
                cpus[m].append(cpu)
        base = float(np.median(walls["tf_xmr"]))
        if "argsort loop, DSCMR style (Python walk)" in aps:
            loop = aps["argsort loop, DSCMR style (Python walk)"]
            loop_difference = max(loop_difference, abs(float(np.mean(aps["tf_xmr"])) - float(np.mean(loop))))
        for m in methods:
            peak = _peak_in_fresh_process(m, n)
            wall = float(np.median(walls[m]))
            table.append((
                f"{n:,} x {n:,}", m, f"{wall:.2f}", f"{np.median(cpus[m]):.2f}", f"{wall / base:.2f}x",
                f"{np.mean(aps[m]):.6f}", f"{np.max(np.abs(aps[m] - aps['tf_xmr'])):.0e}",
                f"{peak['peak_mib']:.0f} (data {peak['before_mib']:.0f})",
            ))
        print(f"  {n:,} done", file=sys.stderr, flush=True)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print("| " + " | ".join(cell.ljust(w) for cell, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table[1:]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
    print("'data' = the peak RSS of the fresh process once the data were built, before the method ran.")
    print(f"|vectorised - loop| mAP difference: {loop_difference:.1e} (tf_xmr against the DSCMR-style loop, largest "
          f"over the sizes up to {loop_limit:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

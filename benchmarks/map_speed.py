"""Speed and memory of the vectorised mAP against the per-query loop reference.

Usage:
    python benchmarks/map_speed.py [--quick]

Prints one table: the loop reference and the vectorised code on a small problem (same result, speed-up), then the
vectorised code alone on a large problem with the peak resident memory, which stays far below the size of the full
score matrix because queries are scored block by block. ``--quick`` shrinks both problems (a smoke run).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tf_xmr.metrics import PRESETS, evaluate_retrieval, mean_average_precision  # noqa: E402
from tf_xmr.metrics import retrieval  # noqa: E402
from tf_xmr.metrics.reference import average_precision_loop  # noqa: E402

DIM = 200
N_CLASSES = 10


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _make(n: int, seed: int):
    """Class-clustered float32 embeddings, like the output of a trained encoder."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CLASSES, DIM)).astype(np.float32)
    labels = rng.integers(0, N_CLASSES, n)
    features = centres[labels] + 2.0 * rng.standard_normal((n, DIM)).astype(np.float32)
    return features, labels


def _timed(fn):
    """Returns (value, wall seconds, CPU seconds); CPU time is the fairer figure on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args(argv)
    small, large = (300, 2_000) if args.quick else (2_000, 20_000)

    rows = []
    query, query_labels = _make(small, seed=0)
    database, database_labels = _make(small, seed=1)
    loop_ap, loop_s, loop_cpu = _timed(lambda: average_precision_loop(query, database, query_labels, database_labels))
    vec_map, vec_s, vec_cpu = _timed(lambda: mean_average_precision(query, database, query_labels, database_labels))
    diff = abs(vec_map - float(np.mean(loop_ap)))
    size = f"{small:,} x {small:,}"
    rows.append(("mAP@all cosine, loop reference", size, loop_s, loop_cpu, "1x", f"{np.mean(loop_ap):.6f}", ""))
    speed_up = f"{loop_s / vec_s:.0f}x"
    rows.append(("mAP@all cosine, vectorised", size, vec_s, vec_cpu, speed_up, f"{vec_map:.6f}", ""))

    query, query_labels = _make(large, seed=2)
    database, database_labels = _make(large, seed=3)
    size = f"{large:,} x {large:,}"
    block = retrieval._auto_block_size(large)
    rss_before = _peak_rss_mib()
    vec_map, vec_s, vec_cpu = _timed(lambda: mean_average_precision(query, database, query_labels, database_labels))
    rows.append(("mAP@all cosine, vectorised", size, vec_s, vec_cpu, "", f"{vec_map:.6f}", f"{_peak_rss_mib():.0f}"))
    demo, demo_s, demo_cpu = _timed(
        lambda: evaluate_retrieval(query, database, query_labels, database_labels, PRESETS["acmr_demo"])
    )
    peak = f"{_peak_rss_mib():.0f}"
    rows.append(("acmr_demo mAP@50 + P/R@k", size, demo_s, demo_cpu, "", f"{demo['map']:.6f}", peak))

    header = ("case", "n_q x n_db", "wall (s)", "CPU (s)", "speed-up", "mAP", "peak RSS (MiB)")
    table = [header] + [(c, s, f"{t:.2f}", f"{u:.2f}", x, m, r) for c, s, t, u, x, m, r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print(f"{DIM}-d float32 embeddings, {N_CLASSES} classes, {os.cpu_count()} CPUs, numpy {np.__version__}")
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    full_matrix_mib = large * large * (8 + 8) / 2**20
    print(
        f"|vectorised - loop| mAP difference: {diff:.1e}. Large run: {block} queries per block; peak RSS was "
        f"{rss_before:.0f} MiB before it, while one float64 score matrix + int64 argsort for all {large:,} queries "
        f"would take {full_matrix_mib:,.0f} MiB."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Serving latency and size of tf_xmr's SavedModels: the exported encoders and the text-to-image retrievers.

Usage:
    python benchmarks/serving.py [--sizes 2000 100000 1000000] [--calls 500] [--backend faiss-hnsw]
                                 [--out DIR] [--keep] [--reuse] [--quick]

Everything runs in this process, through SavedModels loaded from disk, on TensorFlow's default threads:

* Two ACMR runs are trained first (``configs/acmr.yaml``, the config's encoder widths, 2 epochs: quality does not
  matter for speed, the graphs are the product's): run ``encoders`` on the built-in synthetic benchmark as shipped
  (4096-d image, 300-d text features) and run ``retrievers`` on the same benchmark with 512-d image features
  (``data.synthetic.dims={image: 512, text: 300}``). An ``--out`` folder that already holds them is reused.
* Encoders: the run's ``export/{image,text}_encoder/1``, ``serving_default`` (features -> unit embedding).
* Retrievers: one ``text2image_retriever`` version per gallery size, built by ``build_retriever`` with the
  approximate ``--backend`` (default: the library's default), so that each version holds both the exact graph
  (``serving_default``: text encoder, matrix product with every gallery row, top 10) and the approximate index
  (``assets.extra/ann``). The gallery items are image features drawn from the run's own synthetic generator (its
  seed, class vectors and modality maps; ``num_test`` raised to the largest size + the queries), the first n rows
  for a gallery of n; the queries are the text features of 1,000 further items of the same draw, none of which is
  in the gallery. Why 512-d images: a 1M-item gallery of 4096-d features is 16 GB before embedding; the
  retriever SavedModel holds only the query (text) encoder, 300 -> 500 -> 200 in both runs, and the 200-d gallery
  embeddings, so its latency and size do not depend on the image width (which only sets the build's embedding
  time).

Latency: ``--calls`` timed calls (``time.perf_counter`` around each) after 20 warm-up calls, cycling through
distinct query rows (batch 1: one query per call; batch 64: 64 queries per call); p50 and p99 in milliseconds.

* encoder / exact retriever: the loaded signature called with a prepared ``tf.constant``
  (``tf.saved_model.load(path).signatures["serving_default"](features=x)``), the path TF Serving's graph takes.
* ``embed_query``: the retriever's query encoder alone (the first step of the approximate path).
* ``<backend> index alone``: ``ApproximateIndex.search`` on the queries' embeddings (the second step), faiss's
  OpenMP default threads.
* approximate retriever: ``Retriever.load(path).search(x)`` on a numpy array (the Python API: input checks,
  ``embed_query``, the faiss search, the keys looked up), the only way the approximate index is served.

recall@10: |approximate top 10 ∩ exact top 10| / 10 over the 1,000 queries, the exact top 10 being the SavedModel's
own ``serving_default`` answer.

Size: the version folder's files (bytes, not blocks) against what it must hold: the query encoder's variables
(float32, read from the checkpoint), the gallery embeddings (n x 200 float32) and the keys (their UTF-8 bytes);
the approximate index is shown apart (``assets.extra/ann``: faiss keeps its own copy of the vectors plus the graph).
build: seconds of ``build_retriever`` (read the features, embed them, deduplicate, approximate index, save).
``--keep`` leaves the retriever versions in the run; a later ``--reuse`` run with the same ``--out`` measures them
again without building (only versions whose approximate index has the backend's current default parameters).

The machine may be shared and has few cores: compare rows of one run, and rerun when a number looks off.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks._runs import run_parent, train_run  # noqa: E402 - needs the sys.path insert above

CONFIG = "configs/acmr.yaml"
EPOCHS = 2
RETRIEVER_DIMS = "data.synthetic.dims={image: 512, text: 300}"
QUERIES = 1_000
WARMUP = 20
K = 10
BATCHES = (1, 64)
# The targets, 2 CPU cores.
TARGET_ENCODER_MS = 1.0
TARGET_EXACT_100K_MS = 5.0
TARGET_APPROX_1M_MS = 2.0
TARGET_RECALL = 0.95


# ---------------------------------------------------------------------------------------------------------------
# Runs and data


def _trained(out: str, name: str, overrides, epochs: int) -> str:
    """A finished run under ``out`` (trained now unless an earlier invocation left one there)."""
    run_dir = os.path.join(out, name)
    if os.path.isdir(os.path.join(run_dir, "export", "text_encoder")):
        print(f"  reusing {run_dir}", file=sys.stderr, flush=True)
        return run_dir
    started = time.perf_counter()
    train_run(os.path.join(_repo(), CONFIG), [*overrides, f"train.epochs={epochs}"], seed=0, run_dir=run_dir)
    print(f"  trained {run_dir} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return run_dir


def _key(i: int) -> str:
    return f"item{i:07d}"


def _kept_version(run_dir: str, n: int, backend: str) -> str | None:
    """The newest retriever version of ``run_dir`` over ``n`` gallery items with ``backend`` at its current default
    parameters, if an earlier ``--keep`` run left one."""
    import json

    from tf_xmr.export.saved_model import read_metadata, versions
    from tf_xmr.retrieval import retriever_dir
    from tf_xmr.retrieval.ann import DEFAULT_PARAMS
    from tf_xmr.retrieval.index import ANN_FOLDER

    model_dir = retriever_dir(run_dir, "text", "image")
    for version in reversed(versions(model_dir)):
        path = os.path.join(model_dir, str(version))
        metadata = read_metadata(path)
        if metadata.get("backend") != backend or metadata.get("gallery", {}).get("size") != n:
            continue
        if backend != "exact":
            with open(os.path.join(path, "assets.extra", ANN_FOLDER, "ann.json"), encoding="utf-8") as handle:
                params = json.load(handle)["params"]
            if any(value is not None and params.get(name) != value
                   for name, value in DEFAULT_PARAMS[backend].items()):
                continue
        return path
    return None


def _repo() -> str:
    return str(Path(__file__).resolve().parents[1])


def _items(run_dir: str, n_gallery: int, n_queries: int):
    """Image features of ``n_gallery`` items and text features of ``n_queries`` other items, drawn from the run's own
    synthetic generator (its config and seed, only the test split enlarged)."""
    import dataclasses

    from tf_xmr.data.from_config import load_feature_set
    from tf_xmr.run_dir import load_run_config

    config = load_run_config(run_dir)
    synthetic = dataclasses.replace(config.data.synthetic, num_test=n_gallery + n_queries)
    feature_set = load_feature_set(dataclasses.replace(config.data, synthetic=synthetic), seed=config.seed)
    test = feature_set.splits["test"]
    gallery = test.features["image"][:n_gallery]
    queries = np.ascontiguousarray(test.features["text"][n_gallery:])
    return gallery, queries


# ---------------------------------------------------------------------------------------------------------------
# Measurement


def _latency(call, inputs, calls: int) -> tuple[float, float]:
    """p50 and p99 (ms) of ``calls`` timed calls after the warm-up, cycling through ``inputs``."""
    for i in range(WARMUP):
        call(inputs[i % len(inputs)])
    times = np.empty(calls)
    for i in range(calls):
        x = inputs[i % len(inputs)]
        start = time.perf_counter()
        call(x)
        times[i] = time.perf_counter() - start
    p50, p99 = np.percentile(times, [50, 99]) * 1e3
    return float(p50), float(p99)


def _batches(rows: np.ndarray, batch: int, as_tensor: bool):
    """Distinct query batches of ``rows`` (all of them for batch 1)."""
    import tensorflow as tf

    count = max(1, rows.shape[0] // batch)
    chunks = [rows[i * batch:(i + 1) * batch] for i in range(count)]
    return [tf.constant(c) for c in chunks] if as_tensor else chunks


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def _variable_bytes(version_dir: str) -> dict[str, int]:
    """Bytes of the numeric variables in a SavedModel's checkpoint, by top-level name (string variables skipped)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(version_dir, "variables", "variables"))
    dtypes = reader.get_variable_to_dtype_map()
    sizes: dict[str, int] = {}
    for name, shape in reader.get_variable_to_shape_map().items():
        if dtypes[name] == tf.string:
            continue
        top = name.split("/")[0]
        sizes[top] = sizes.get(top, 0) + int(np.prod(shape, dtype=np.int64)) * dtypes[name].size
    return sizes


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:,.1f}"


def _ms(value: float) -> str:
    return f"{value:.2f}"


def _encoder_rows(run_dir: str, calls: int, n_rows: int):
    import tensorflow as tf

    latency, size = [], []
    for modality in ("image", "text"):
        path = os.path.join(run_dir, "export", f"{modality}_encoder", "1")
        signature = tf.saved_model.load(path).signatures["serving_default"]
        dim = int(signature.structured_input_signature[1]["features"].shape[-1])
        rows = np.random.default_rng(0).standard_normal((n_rows, dim)).astype(np.float32)
        for batch in BATCHES:
            p50, p99 = _latency(lambda x, s=signature: s(features=x), _batches(rows, batch, True), calls)
            latency.append((f"{modality} ({dim}-d)", str(batch), _ms(p50), _ms(p99)))
        params = sum(_variable_bytes(path).values())
        disk = _folder_bytes(path)
        size.append((f"{modality} ({dim}-d)", _mb(disk), _mb(params), f"{disk / params:.2f}"))
        print(f"  {modality} encoder done", file=sys.stderr, flush=True)
    return latency, size


def _exact_rows(path: str, queries: np.ndarray, calls: int):
    """Latency rows of a retriever version's own graphs (loaded as TF Serving would), and its exact top-k indices."""
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    serve, embed = loaded.signatures["serving_default"], loaded.signatures["embed_query"]
    rows = {}
    for what, signature in (("exact (serving_default)", serve), ("embed_query alone", embed)):
        for batch in BATCHES:
            rows[(what, batch)] = _latency(lambda x, s=signature: s(features=x), _batches(queries, batch, True),
                                           calls)
    chunks = [tf.constant(queries[start:start + 64]) for start in range(0, queries.shape[0], 64)]
    exact = np.concatenate([serve(features=x)["indices"].numpy() for x in chunks])
    embeddings = np.concatenate([embed(features=x)["embedding"].numpy() for x in chunks])
    return rows, exact, embeddings


def _approximate_rows(path: str, queries: np.ndarray, embeddings: np.ndarray, calls: int, backend: str,
                      exact: np.ndarray):
    """Latency rows of the Python API over the approximate index and of the index alone (on the queries' embeddings),
    and the API's recall@10 against ``exact``."""
    from tf_xmr.retrieval import Retriever
    from tf_xmr.retrieval.ann import ApproximateIndex
    from tf_xmr.retrieval.index import ANN_FOLDER

    rows = {}
    index = ApproximateIndex.load(os.path.join(path, "assets.extra", ANN_FOLDER))
    for batch in BATCHES:
        rows[(f"{backend} index alone", batch)] = _latency(
            lambda x: index.search(x, K), _batches(embeddings, batch, False), calls)
    index = None  # its copy of the vectors goes before the Retriever loads its own
    retriever = Retriever.load(path)
    if retriever.backend != backend:
        raise RuntimeError(f"{path} serves {retriever.backend}, not the {backend} it was built with")
    for batch in BATCHES:
        rows[(f"{backend} (Retriever.search)", batch)] = _latency(
            lambda x: retriever.search(x, K), _batches(queries, batch, False), calls)
    approximate = retriever.search_indices(queries, K)[0]
    recall = float(np.mean([np.intersect1d(a, e).size / K for a, e in zip(approximate, exact, strict=True)]))
    return rows, recall


def _table(header, rows) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print("| " + " | ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    print()


def _verdict(value: float, limit: float, below: bool = True) -> str:
    return "met" if (value <= limit if below else value >= limit) else "NOT met"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000, 100_000, 1_000_000], help="gallery sizes")
    parser.add_argument("--calls", type=int, default=500, help="timed calls per row, after 20 warm-up calls")
    parser.add_argument("--backend", default=None, help="approximate backend (default: the library's), or exact")
    parser.add_argument("--out", default=None, help="folder of the two runs (default saved_models/serving-<time>)")
    parser.add_argument("--keep", action="store_true", help="keep the retriever versions (the 1M one is ~2 GB)")
    parser.add_argument("--reuse", action="store_true",
                        help="measure retriever versions kept by an earlier --keep run in --out instead of building "
                             "them again (same gallery size and backend; the build column then says 'reused')")
    parser.add_argument("--quick", action="store_true", help="2k gallery, 100 calls, 1-epoch runs: a smoke run")
    args = parser.parse_args(argv)
    sizes, calls, epochs = ((2_000,), 100, 1) if args.quick else (tuple(args.sizes), args.calls, EPOCHS)

    from tf_xmr.cli import quiet_tensorflow

    quiet_tensorflow()
    import faiss
    import keras
    import tensorflow as tf

    from tf_xmr.retrieval import build_retriever
    from tf_xmr.retrieval.ann import BACKENDS, DEFAULT_BACKEND

    backend = args.backend or DEFAULT_BACKEND
    if backend not in ("exact", *BACKENDS):
        parser.error(f"--backend must be exact or one of {', '.join(BACKENDS)}")
    threading = tf.config.threading
    print(f"# tf_xmr serving benchmark, {datetime.datetime.now().isoformat(timespec='minutes')}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} "
          f"usable), {platform.system()} {platform.release()}; Python {platform.python_version()}, TensorFlow "
          f"{tf.__version__}, Keras {keras.__version__}, faiss {faiss.__version__}, numpy {np.__version__}")
    print(f"TF threads: inter-op {threading.get_inter_op_parallelism_threads()}, intra-op "
          f"{threading.get_intra_op_parallelism_threads()} (0 = TensorFlow's default: all cores); faiss OpenMP "
          f"threads {faiss.omp_get_max_threads()}")
    print(f"{calls} timed calls per row after {WARMUP} warm-up calls; k = {K}; {QUERIES:,} queries for recall@10\n")

    out = run_parent(args.out, "serving")
    encoder_run = _trained(out, "encoders", [], epochs)
    retriever_run = _trained(out, "retrievers", [RETRIEVER_DIMS], epochs)

    print("## Encoders (ACMR, configs/acmr.yaml: image 4096 -> 2000 -> 200, text 300 -> 500 -> 200)\n")
    latency, size = _encoder_rows(encoder_run, calls, QUERIES)
    _table(("encoder", "batch", "p50 ms", "p99 ms"), latency)
    _table(("encoder", "SavedModel MB", "variables MB", "ratio"), size)
    encoder_p50 = {row[0].split()[0]: float(row[2]) for row in latency if row[1] == "1"}

    gallery_all, queries = _items(retriever_run, max(sizes), QUERIES)
    print(f"  {gallery_all.shape[0]:,} gallery items and {queries.shape[0]:,} queries drawn", file=sys.stderr,
          flush=True)
    work = os.path.join(out, "gallery")
    os.makedirs(work, exist_ok=True)
    latency_rows, size_rows, results = [], [], {}
    for n in sorted(sizes):
        path = _kept_version(retriever_run, n, backend) if args.reuse else None
        build = None
        if path is None:
            features, keys = os.path.join(work, "features.npz"), os.path.join(work, "keys.txt")
            np.savez(features, image=gallery_all[:n])
            with open(keys, "w", encoding="utf-8") as handle:
                handle.writelines(f"{_key(i)}\n" for i in range(n))
            started = time.perf_counter()
            path = build_retriever(retriever_run, target="image", gallery_features=features, keys=keys, k=K,
                                   backend=backend)
            build = time.perf_counter() - started
            os.remove(features)
            os.remove(keys)
        print(f"  {n:,}: " + (f"built {path} in {build:.0f} s" if build is not None else f"reusing {path}"),
              file=sys.stderr, flush=True)

        rows, exact, embeddings = _exact_rows(path, queries, calls)
        gc.collect()  # the exact graph's copy of the gallery, before the Python API loads its own
        recall = None
        if backend != "exact":
            approximate, recall = _approximate_rows(path, queries, embeddings, calls, backend, exact)
            rows.update(approximate)
        results[n] = (rows, recall)
        for (what, batch), (p50, p99) in rows.items():
            recall_cell = f"{recall:.3f}" if recall is not None and what.endswith("search)") else ""
            latency_rows.append((f"{n:,}", what, str(batch), _ms(p50), _ms(p99), recall_cell))

        variables = _variable_bytes(path)
        encoder_bytes = sum(v for name, v in variables.items() if not name.startswith("gallery_"))
        gallery_bytes = sum(v for name, v in variables.items() if name.startswith("gallery_"))
        key_bytes = sum(len(_key(i).encode("utf-8")) for i in range(n))
        ann = os.path.join(path, "assets.extra", "ann")
        ann_bytes = _folder_bytes(ann) if os.path.isdir(ann) else 0
        disk = _folder_bytes(path) - ann_bytes
        expected = encoder_bytes + gallery_bytes + key_bytes
        size_rows.append((f"{n:,}", _mb(disk), _mb(encoder_bytes), _mb(gallery_bytes), _mb(key_bytes),
                          f"{disk / expected:.2f}", _mb(ann_bytes) if ann_bytes else "-",
                          f"{build:.0f}" if build is not None else "reused"))
        if not (args.keep or args.reuse):
            shutil.rmtree(path)
        gc.collect()
        print(f"  {n:,} measured", file=sys.stderr, flush=True)
    del gallery_all

    print(f"## Text-to-image retrievers (query encoder text 300 -> 500 -> 200, cosine, top {K}; "
          f"approximate backend {backend})\n")
    _table(("gallery", "retriever", "batch", "p50 ms", "p99 ms", "recall@10"), latency_rows)
    _table(("gallery", "SavedModel MB (without ANN)", "query encoder MB", "gallery embeddings MB", "keys MB",
            "ratio", "ANN index MB", "build s"), size_rows)

    targets = [(f"{m} encoder, batch 1, p50 <= {TARGET_ENCODER_MS:g} ms", f"{p50:.2f} ms",
                _verdict(p50, TARGET_ENCODER_MS)) for m, p50 in encoder_p50.items()]
    if 100_000 in results:
        p50 = results[100_000][0][("exact (serving_default)", 1)][0]
        targets.append((f"exact retriever, 100k items, batch 1, p50 <= {TARGET_EXACT_100K_MS:g} ms", f"{p50:.2f} ms",
                        _verdict(p50, TARGET_EXACT_100K_MS)))
    if 1_000_000 in results and backend != "exact":
        rows, recall = results[1_000_000]
        p50 = rows[(f"{backend} (Retriever.search)", 1)][0]
        targets.append((f"approximate retriever, 1M items, batch 1, p50 <= {TARGET_APPROX_1M_MS:g} ms",
                        f"{p50:.2f} ms", _verdict(p50, TARGET_APPROX_1M_MS)))
        targets.append((f"approximate retriever, 1M items, recall@10 >= {TARGET_RECALL}", f"{recall:.3f}",
                        _verdict(recall, TARGET_RECALL, below=False)))
    print("## Targets (2 CPU cores)\n")
    _table(("target", "measured", "verdict"), targets)
    print(f"runs: {out}" + ("" if args.keep or args.reuse else " (retriever versions removed; --keep keeps them)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

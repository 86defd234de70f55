"""Retriever SavedModels: a run's query encoder and an embedded gallery of the target modality, top k in one graph.

Layout (design.md section 5)::

    <run_dir>/export/<query>2<target>_retriever/<version>/
        serving_default: features float32[None, d_query] -> keys string[None, k], scores float32[None, k],
                         indices int64[None, k]
        variables:       gallery_embeddings (d_common, n distinct rows), gallery_keys, gallery_classes (n,),
                         gallery_rows (n,) when rows repeat, gallery_squared_norms for euclidean
        embed_query:     features float32[None, d_query] -> embedding float32[None, d_common]
        assets.extra/tf_xmr.json                  what it is: directions, distance, k, gallery size, fingerprints
        assets.extra/tf_serving_warmup_requests   one request TF Serving replays at load
        assets.extra/ann/                         only with an approximate backend (tf_xmr.retrieval.ann)

The ranking is the evaluator's (``tf_xmr.metrics``, design.md rule 6): the run's ``eval.distance``, ties to the lower
gallery index (``tf.math.top_k`` keeps the lower index first among equal values). ``scores`` are higher-is-better:
the cosine similarity (unit query against unit gallery rows), the inner product, or the negative Euclidean distance.
The gallery is embedded once, at build time, by the same graph that embeds queries (``embed_query``), and lives in the
SavedModel as variables (stored once; a 1M x 200 gallery is 800 MB, which a graph constant could not hold).

A gallery grows without retraining: ``build --append`` embeds only the new items and writes the next version with the
old rows first (their indices do not change). It is refused when the run's encoder is no longer the one that embedded
the gallery (weights fingerprint in ``tf_xmr.json``), so two embedding spaces never mix in one index.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from tf_xmr.errors import ConfigError, DataError, ModelInputError

RETRIEVER_SIGNATURE = "serving_default"
EMBED_SIGNATURE = "embed_query"
INPUT_NAME = "features"
DEFAULT_K = 10
GALLERY_SPLITS = ("test", "val", "train")  # --gallery all: every split, in this order
ANN_FOLDER = "ann"  # in assets.extra/
# Gallery rows embedded per call at build time: bounded memory for galleries of millions of items.
EMBED_BATCH = 4096


def retriever_name(query: str, target: str) -> str:
    return f"{query}2{target}_retriever"


def retriever_dir(run_dir: str, query: str, target: str) -> str:
    return os.path.join(run_dir, "export", retriever_name(query, target))


@dataclasses.dataclass
class Gallery:
    """The items a retriever ranks, in index order.

    Attributes:
        embeddings: float32 (n, d_common), as ranked (unit rows for a cosine run).
        keys: str (n,): what a search answers with (the dataset's item ids, row names or user keys).
        classes: str (n,): class names per item ("|"-joined when multi-label, "" when unknown); for people, not ranking.
    """

    embeddings: np.ndarray
    keys: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def extended(self, other: Gallery) -> Gallery:
        duplicate = np.intersect1d(self.keys, other.keys)
        if duplicate.size:
            raise DataError(f"the appended keys are already in the gallery: {', '.join(duplicate[:5])}"
                            + (" ..." if duplicate.size > 5 else ""))
        return Gallery(np.concatenate([self.embeddings, other.embeddings]),
                       np.concatenate([self.keys, other.keys]), np.concatenate([self.classes, other.classes]))


def class_strings(labels: np.ndarray, class_names) -> np.ndarray:
    """Class names per item from int class ids (n,) or multi-hot (n, c) labels: str (n,)."""
    names = np.asarray(class_names, dtype=str)
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return names[labels.astype(np.int64)]
    return np.asarray(["|".join(names[np.flatnonzero(row)]) for row in labels], dtype=str)


# ----------------------------------------------------------------------------------------------------------------------
# Where gallery items come from


@dataclasses.dataclass
class GalleryItems:
    """Raw gallery items before embedding: features float32 (n, d_target), keys str (n,), classes str (n,)."""

    features: np.ndarray
    keys: np.ndarray
    classes: np.ndarray
    source: str


def dataset_items(feature_set, target: str, gallery: str) -> GalleryItems:
    """The target modality's items of the run's own data: one split, or ``all`` of them (test, val, train)."""
    names = GALLERY_SPLITS if gallery == "all" else (gallery,)
    missing = [n for n in names if n not in feature_set.splits]
    if gallery != "all" and missing:
        raise ConfigError(f"--gallery {gallery}: the run's data has no {gallery!r} split "
                          f"(has: {', '.join(feature_set.splits)})")
    features, keys, classes = [], [], []
    for name in (n for n in names if n in feature_set.splits):
        split = feature_set.splits[name]
        rows, labels = split_arrays(split, target, feature_set.num_classes)
        features.append(rows)
        keys.append(split.keys(target, name))
        classes.append(class_strings(labels, feature_set.class_names))
    return GalleryItems(np.concatenate(features), np.concatenate(keys), np.concatenate(classes),
                        f"the run's {gallery} split{'s' if gallery == 'all' else ''}")


def split_arrays(split, modality: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A split's ``modality`` features (n, d) and labels, in item order: in memory already, or streamed once from
    TFRecords (the records' round-robin read returns the items in their written order)."""
    if hasattr(split, "features"):
        return split.features[modality], split.labels[modality]
    from tf_xmr.data import make_dataset

    rows, labels = [], []
    for batch in make_dataset(split, batch_size=1024, num_classes=num_classes, modalities=[modality]):
        rows.append(batch[modality].numpy())
        labels.append(batch["labels"].numpy())
    return np.concatenate(rows), np.concatenate(labels)


def file_items(features_path: str, keys_path: str | None, target: str) -> GalleryItems:
    """Gallery items from a user's files: ``F.npz`` (the array named after the target modality, or its only array)
    or ``F.npy`` (n, d_target), and ``K.txt`` with one key per line (UTF-8)."""
    features = read_feature_file(features_path, target, "gallery features")
    if keys_path is None:
        raise ConfigError(f"--keys K.txt is required with {features_path}: one key per gallery item, one per line")
    try:
        with open(keys_path, encoding="utf-8") as handle:
            keys = [line.rstrip("\r\n") for line in handle]
    except FileNotFoundError:
        raise DataError(f"keys file not found: {keys_path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read keys file {keys_path}: {exc}") from None
    while keys and keys[-1] == "":
        keys.pop()  # a trailing newline
    if len(keys) != features.shape[0]:
        raise DataError(f"{keys_path} has {len(keys)} keys but {features_path} has {features.shape[0]} rows; "
                        "give one key per row")
    empty = [i + 1 for i, key in enumerate(keys) if not key.strip()]
    if empty:
        raise DataError(f"{keys_path} line {empty[0]} is an empty key")
    keys = np.asarray(keys, dtype=str)
    unique, counts = np.unique(keys, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{keys_path} lists the key {unique[counts > 1][0]!r} more than once")
    return GalleryItems(features, keys, np.full(len(keys), "", dtype=str), features_path)


def read_feature_file(path: str, modality: str, what: str, *, one_row: bool = False) -> np.ndarray:
    """Feature rows float32 (n, d) from a ``.npy``, or an ``.npz`` holding the array named after ``modality`` (or a
    single array); with ``one_row``, a vector (d,) is one row.

    Raises:
        DataError: a missing or unreadable file, an ambiguous .npz, a non-numeric or misshapen array, no rows, or a
            row with NaN/Inf (named by its index). ``what`` names the file's role in the message.
    """
    if not os.path.exists(path):
        raise DataError(f"{what} file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable .npy or .npz file ({str(exc).splitlines()[0]})") from None
    if isinstance(loaded, np.ndarray):
        array, where = loaded, path
    else:
        with loaded:
            names = list(loaded.files)
            if modality not in names and len(names) != 1:
                raise DataError(f"{path} holds arrays {names}; name the {what} {modality!r} or store a single array")
            name = modality if modality in names else names[0]
            array, where = loaded[name], f"{path}[{name}]"
    if one_row and array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.dtype.kind not in "fiu":
        shapes = "(n, d) or (d,)" if one_row else "(n, d)"
        raise DataError(f"{where} must be a numeric {shapes} array of {what}, got {array.dtype} {array.shape}")
    if array.shape[0] == 0:
        raise DataError(f"{where} has no rows")
    array = np.ascontiguousarray(array, dtype=np.float32)
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise DataError(f"{where} row {int(np.flatnonzero(bad)[0])} contains NaN or Inf")
    return array


# ----------------------------------------------------------------------------------------------------------------------
# The SavedModel


def _retriever_module(query_encoder, target_encoder, query_dim: int, target_dim: int, distance: str,
                      raw_input=None):
    """A ``tf.Module`` with the query encoder and a gallery slot; built lazily so that ``tf_xmr.retrieval`` imports
    without TensorFlow."""
    import tensorflow as tf

    from tf_xmr.export.saved_model import checked_features, checked_raw

    class RetrieverModule(tf.Module):
        """Query encoder + gallery variables + top k: what a retriever SavedModel holds."""

        def __init__(self):
            super().__init__(name="retriever_export")
            self.query_encoder = query_encoder
            spec = [tf.TensorSpec([None, query_dim], tf.float32, name=INPUT_NAME)]
            self.embed_query = tf.function(self._embed_query, input_signature=spec)
            if raw_input is not None:
                # A run on featurized data: the query featurizer's graph too (tf_xmr.featurize.raw).
                self.raw_featurizer = raw_input.trackable

        def _unit(self, embedding):
            # Cosine: unit rows on both sides, so the inner product is the cosine similarity.
            return tf.math.l2_normalize(embedding, axis=-1, epsilon=1e-12) if distance == "cosine" else embedding

        def _embed_query(self, features):
            return {"embedding": self._unit(self.query_encoder(checked_features(features), training=False))}

        def set_gallery(self, gallery: Gallery, k: int):
            # Identical gallery rows must score identically so that the tie rule holds, but a matrix product does not
            # promise it (its kernels accumulate different output columns in different orders: two copies of one
            # image measured 1 ulp apart). As the evaluator does, the distinct rows are scored once and their scores
            # gathered back to every item (``gallery_rows``, only when the gallery has duplicates).
            distinct, rows = np.unique(gallery.embeddings, axis=0, return_inverse=True)
            self._deduplicated = distinct.shape[0] < len(gallery)
            embeddings = distinct if self._deduplicated else gallery.embeddings
            # Stored transposed, (d_common, n): the product (b, d) x (d, n) streams the gallery about 1.7x faster
            # on CPU than (b, d) x (n, d)^T (100k x 200, batch 1: 6.0 against 10.3 ms median, interleaved runs on a
            # busy 2-core machine, 2026-12-07), and batch-1 latency is memory-bound on reading the gallery.
            self.gallery_embeddings = tf.Variable(np.ascontiguousarray(embeddings.T), trainable=False,
                                                  name="gallery_embeddings")
            if self._deduplicated:
                self.gallery_rows = tf.Variable(rows.reshape(-1).astype(np.int64), trainable=False,
                                                name="gallery_rows")
            self.gallery_keys = tf.Variable(np.char.encode(gallery.keys, "utf-8"), trainable=False,
                                            dtype=tf.string, name="gallery_keys")
            self.gallery_classes = tf.Variable(np.char.encode(gallery.classes, "utf-8"), trainable=False,
                                               dtype=tf.string, name="gallery_classes")
            if distance == "euclidean":
                squared = np.einsum("ij,ij->i", embeddings, embeddings).astype(np.float32)
                self.gallery_squared_norms = tf.Variable(squared, trainable=False, name="gallery_squared_norms")
            self.k = min(int(k), len(gallery))
            self.serve = tf.function(
                self._serve, input_signature=[tf.TensorSpec([None, query_dim], tf.float32, name=INPUT_NAME)])
            if raw_input is not None:
                self.serve_raw = tf.function(
                    self._serve_raw, input_signature=[tf.TensorSpec([None], tf.string, name=raw_input.signature)])

        def _serve(self, features):
            return self._top_k(self._embed_query(features)["embedding"])

        def _serve_raw(self, raw):
            features = raw_input.fn(checked_raw(raw, raw_input.signature))
            return self._top_k(self._unit(self.query_encoder(features, training=False)))

        def _top_k(self, query):
            products = tf.matmul(query, self.gallery_embeddings)
            if distance == "euclidean":
                # The evaluator's squared distance ||q||^2 + ||g||^2 - 2<q, g>, clipped at 0, negated so that top k
                # ranks it ascending (ranking the square, so sqrt never merges two distinct distances).
                squared = tf.reduce_sum(tf.square(query), axis=1, keepdims=True)
                values = -tf.maximum(squared + self.gallery_squared_norms[tf.newaxis, :] - 2.0 * products, 0.0)
            else:
                values = products
            if self._deduplicated:
                values = tf.gather(values, self.gallery_rows, axis=1)
            best, indices = tf.math.top_k(values, k=self.k)
            scores = -tf.sqrt(-best) if distance == "euclidean" else best
            return {"keys": tf.gather(self.gallery_keys, indices), "scores": scores,
                    "indices": tf.cast(indices, tf.int64)}

    module = RetrieverModule()
    # Embeds the gallery at build time. Kept off the module (a tf.Module saves every attribute it holds), so the
    # SavedModel stores the query encoder and the gallery, not the target encoder's weights.
    embed_target = tf.function(lambda features: module._unit(target_encoder(features, training=False)),
                               input_signature=[tf.TensorSpec([None, target_dim], tf.float32)])
    return module, embed_target


def embed_items(embed_target, items: GalleryItems) -> np.ndarray:
    """The gallery rows as ranked (unit rows for cosine), embedded in bounded batches: float32 (n, d_common)."""
    chunks = [np.asarray(embed_target(items.features[start:start + EMBED_BATCH]))
              for start in range(0, items.features.shape[0], EMBED_BATCH)]
    return np.concatenate(chunks).astype(np.float32)


def load_gallery(version_dir: str) -> Gallery:
    """The gallery stored in a retriever version (its variables; the graph is not run)."""
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(version_dir)
        embeddings = loaded.gallery_embeddings.numpy().T  # stored (d_common, n)
        if hasattr(loaded, "gallery_rows"):  # a gallery with duplicate rows stores each distinct row once
            embeddings = embeddings[loaded.gallery_rows.numpy()]
        return Gallery(embeddings,
                       np.char.decode(loaded.gallery_keys.numpy().astype(bytes), "utf-8"),
                       np.char.decode(loaded.gallery_classes.numpy().astype(bytes), "utf-8"))
    except (OSError, ValueError, AttributeError, tf.errors.OpError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelInputError(f"{version_dir} is not a readable tf_xmr retriever SavedModel ({reason})") from None


# ----------------------------------------------------------------------------------------------------------------------
# Build


_SCORES = {
    "cosine": "cosine similarity of the query and the gallery item (higher is better)",
    "inner": "inner product of the query and gallery embeddings (higher is better)",
    "euclidean": "negative Euclidean distance between the embeddings (higher is better)",
}


def resolve_direction(modalities, target: str, query: str | None) -> tuple[str, str]:
    """``(query, target)`` checked against the run's modalities; the query defaults to the other one of two."""
    if target not in modalities:
        raise ConfigError(f"--target {target!r} is not a modality of this run (has: {', '.join(modalities)})")
    if query is None:
        others = [m for m in modalities if m != target]
        if len(others) != 1:
            raise ConfigError(f"this run has modalities {', '.join(modalities)}; say which one queries with --query")
        query = others[0]
    if query not in modalities:
        raise ConfigError(f"--query {query!r} is not a modality of this run (has: {', '.join(modalities)})")
    if query == target:
        raise ConfigError(f"--query and --target are both {query!r}; a retriever ranks one modality for the other")
    return query, target


def build_retriever(run_dir: str, *, target: str, query: str | None = None, gallery: str = "test",
                    gallery_features: str | None = None, keys: str | None = None, append: str | None = None,
                    k: int | None = None, backend: str = "exact", version: int | None = None) -> str:
    """Embed a gallery with a run's best encoders and write the next version of its retriever SavedModel.

    Args:
        run_dir: a finished run.
        target: the modality ranked (the gallery's); ``query`` the modality asked with (default: the other one).
        gallery: ``test``, ``val``, ``train`` or ``all`` of the run's own data (ignored with ``gallery_features``).
        gallery_features: a user's ``.npz``/``.npy`` of target features instead, with ``keys`` (one per line).
        append: extend the latest version with these features (and ``keys``) instead of starting a gallery.
        k: results per query (default 10, or the extended version's).
        backend: ``exact`` (brute force in the graph) or an approximate backend of ``tf_xmr.retrieval.ann``, which is
            stored beside the exact graph for the Python API and the CLI (TF Serving always runs the exact graph).
        version: integer version folder (default: the next).

    Returns:
        The written version folder.
    """
    from tf_xmr.export.saved_model import read_metadata, save_module, versions, weights_fingerprint, write_version
    from tf_xmr.export.serving import write_models_config
    from tf_xmr.modeling import prepare_data, trained_encoders
    from tf_xmr.run_dir import RunDirLock, load_run_config, run_modalities

    if k is not None and k < 1:
        raise ConfigError(f"--k must be at least 1, got {k}")
    if append and gallery_features:
        raise ConfigError("--append extends the latest gallery; --gallery-features starts a new one: give one")
    config, feature_set = prepare_data(load_run_config(run_dir))
    scored = run_modalities(run_dir)
    if scored is not None:
        feature_set = feature_set.select_modalities(scored)
    query, target = resolve_direction(feature_set.modalities, target, query)
    if backend != "exact":
        from tf_xmr.retrieval.ann import BACKENDS

        if backend not in BACKENDS:
            raise ConfigError(f"--backend {backend!r} is not one of exact, {', '.join(BACKENDS)}")
    encoders = trained_encoders(run_dir, config, feature_set)
    distance = config.eval.distance
    dims = {m: int(feature_set.dims[m]) for m in (query, target)}
    from tf_xmr.featurize.raw import raw_inputs

    raw_input = raw_inputs(config.data).get(query)  # a raw-input signature when the run trained on featurized data
    module, embed_target = _retriever_module(encoders[query], encoders[target], dims[query], dims[target], distance,
                                             raw_input)
    fingerprints = {"query": weights_fingerprint(encoders[query]), "target": weights_fingerprint(encoders[target])}
    model_dir = retriever_dir(run_dir, query, target)

    base, previous, sources = None, None, []
    if append:
        found = versions(model_dir)
        if not found:
            raise ConfigError(f"--append: there is no {retriever_name(query, target)} under {run_dir}/export to "
                              "extend; build one first")
        previous = os.path.join(model_dir, str(found[-1]))
        stored = read_metadata(previous)
        if stored.get("encoder_fingerprints") != fingerprints:
            raise ModelInputError(f"{previous} was embedded by other encoders than this run's best checkpoint (another "
                                  "run's retriever, or the run was retrained since); build a new gallery instead")
        base = load_gallery(previous)
        sources = list(stored.get("gallery", {}).get("sources", []))
        k = k if k is not None else int(stored.get("k_requested", DEFAULT_K))
        items = file_items(append, keys, target)
    elif gallery_features:
        items = file_items(gallery_features, keys, target)
    else:
        if gallery not in (*GALLERY_SPLITS, "all"):
            raise ConfigError(f"--gallery {gallery!r} is not one of test, val, train, all")
        items = dataset_items(feature_set, target, gallery)
    if items.features.shape[1] != dims[target]:
        raise DataError(f"gallery features {items.source} are {items.features.shape[1]}-d but the run's {target} "
                        f"encoder takes {dims[target]}-d features")
    k = DEFAULT_K if k is None else int(k)

    added = Gallery(embed_items(embed_target, items), items.keys, items.classes)
    full = base.extended(added) if base is not None else added
    module.set_gallery(full, k)
    sources.append({"source": items.source, "items": len(added)})
    index = None
    if backend != "exact":
        from tf_xmr.retrieval.ann import ApproximateIndex

        stored_ann = os.path.join(previous, "assets.extra", ANN_FOLDER) if previous else None
        stored = ApproximateIndex.load(stored_ann) if stored_ann and os.path.isdir(stored_ann) else None
        if stored is not None and stored.backend == backend:
            index = stored  # read once (a 1M-item index is 1 GB)
            index.add(added.embeddings)  # new rows take the next indices, as in the exact gallery
        else:
            index = ApproximateIndex.build(full.embeddings, distance=distance, backend=backend, seed=config.seed)
    name = retriever_name(query, target)
    metadata = {
        "kind": "retriever",
        "query": query,
        "target": target,
        "distance": distance,
        "scores": _SCORES[distance],
        "ties": "equal scores rank the lower gallery index first",
        "k": module.k,
        "k_requested": k,
        "backend": backend,
        "inputs": {INPUT_NAME: {"dtype": "float32", "shape": [None, dims[query]]}},
        "outputs": {"keys": {"dtype": "string", "shape": [None, module.k]},
                    "scores": {"dtype": "float32", "shape": [None, module.k]},
                    "indices": {"dtype": "int64", "shape": [None, module.k]}},
        "gallery": {"size": len(full), "dim": int(full.embeddings.shape[1]), "sources": sources},
        "encoder_fingerprints": fingerprints,
        "run_dir": os.path.abspath(run_dir),
    }

    signatures = {RETRIEVER_SIGNATURE: module.serve, EMBED_SIGNATURE: module.embed_query}
    warmup = [(RETRIEVER_SIGNATURE, {INPUT_NAME: np.zeros((1, dims[query]), np.float32)})]
    if raw_input is not None:
        signatures[raw_input.signature] = module.serve_raw
        warmup.append((raw_input.signature, {raw_input.signature: raw_input.example}))
        metadata["raw_input"] = {"signature": raw_input.signature, "input": raw_input.signature, "dtype": "string",
                                 "shape": [None]}

    def write(folder: str) -> None:
        save_module(module, folder, signatures, metadata, warmup, name)
        if index is not None:
            index.save(os.path.join(folder, "assets.extra", ANN_FOLDER))

    with RunDirLock(run_dir):  # one writer per run directory (a training run, an export or another build)
        path = write_version(model_dir, write, version)
        write_models_config(run_dir)
    return path

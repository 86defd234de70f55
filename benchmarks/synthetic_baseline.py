"""Supervised baseline on the synthetic benchmark: how hard is it?

Per modality, a one-hidden-layer Keras MLP classifier is trained on "train" (features standardised with train
statistics); the epoch is picked on "val" (lowest validation loss, weights restored). Items are then embedded as their
softmax class posteriors and retrieved across modalities by cosine similarity; the score is mAP over the whole ranking
(relevant = shares a class; AP normalised by all relevant items; ties broken by gallery index). The same protocol on
the real Wikipedia features gives about 0.29 / 0.23 (shared/data/wikipedia/README.md).

Usage:
    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/synthetic_baseline.py [--seed 0] [--noise 1.0] [--item-spread 1.6]
        [--multi-label] [--wikipedia DIR]

``--wikipedia DIR`` runs the identical protocol on the real Wikipedia features instead, as a calibration check.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def local_mean_average_precision(queries, gallery, query_labels, gallery_labels) -> float:
    """Cosine mAP over the whole ranking (fallback when tf_xmr.metrics is unavailable).

    AP(q) = (1 / R_q) * sum_{r: rel(q, r)} precision@r, with R_q the number of relevant gallery items; queries with no
    relevant item are skipped. Relevance: share at least one class. Ties keep gallery order (stable sort).

    Args:
        queries: (nq, d) embeddings; gallery: (ng, d) embeddings.
        query_labels, gallery_labels: multi-hot (nq, c) / (ng, c).
    """
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    sims = q @ g.T
    relevant = (query_labels @ gallery_labels.T) > 0
    aps = []
    for i in range(sims.shape[0]):
        order = np.argsort(-sims[i], kind="stable")
        rel = relevant[i, order]
        total = rel.sum()
        if total == 0:
            continue
        hits = np.cumsum(rel)
        aps.append(float(np.sum(hits[rel] / (np.flatnonzero(rel) + 1)) / total))
    return float(np.mean(aps))


def train_classifier(x_train, y_train, x_val, y_val, *, hidden, dropout, l2, epochs, seed):
    """One-hidden-layer MLP classifier; returns the model at the epoch with the lowest validation loss."""
    import keras

    keras.utils.set_random_seed(seed)
    reg = keras.regularizers.L2(l2)
    model = keras.Sequential(
        [
            keras.Input((x_train.shape[1],)),
            keras.layers.Dropout(dropout / 2),
            keras.layers.Dense(hidden, activation="relu", kernel_regularizer=reg),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(y_train.shape[1], activation="softmax", kernel_regularizer=reg),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=8, restore_best_weights=True)
    history = model.fit(
        x_train, y_train, validation_data=(x_val, y_val), epochs=epochs, batch_size=64, callbacks=[stop], verbose=0
    )
    best_epoch = int(np.argmin(history.history["val_loss"])) + 1
    return model, best_epoch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=None, help="override make_synthetic noise")
    parser.add_argument("--item-spread", type=float, default=None, help="override make_synthetic item_spread")
    parser.add_argument("--multi-label", action="store_true")
    parser.add_argument("--wikipedia", default=None, help="run on the Wikipedia features in this directory instead")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--l2", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=200)
    args = parser.parse_args(argv)

    try:  # the library's metric when present (same convention: cosine, whole ranking, all relevant, stable ties)
        from tf_xmr.metrics import mean_average_precision
        metric_name = "tf_xmr.metrics.mean_average_precision"
    except ImportError:
        mean_average_precision, metric_name = local_mean_average_precision, "local mean_average_precision"

    from tf_xmr.data import feature_stats, load_wikipedia, make_synthetic, to_multi_hot

    start = time.perf_counter()
    if args.wikipedia:
        fs = load_wikipedia(args.wikipedia, seed=args.seed)
    else:
        overrides = {}
        if args.noise is not None:
            overrides["noise"] = args.noise
        if args.item_spread is not None:
            overrides["item_spread"] = args.item_spread
        fs = make_synthetic(seed=args.seed, multi_label=args.multi_label, **overrides)
    generated = time.perf_counter() - start
    c = fs.num_classes
    first, second = fs.modalities[:2]

    def arrays(split_name, modality):
        split = fs.splits[split_name]
        mean, std = feature_stats(fs.splits["train"], modality)
        x = (split.features[modality] - mean) / np.maximum(std, 1e-6)
        return x, to_multi_hot(split.labels[modality], c)

    posteriors, epochs = {}, {}
    for m in (first, second):
        x_tr, y_tr = arrays("train", m)
        x_va, y_va = arrays("val", m)
        model, epochs[m] = train_classifier(
            x_tr, y_tr, x_va, y_va, hidden=args.hidden, dropout=args.dropout, l2=args.l2, epochs=args.epochs,
            seed=args.seed,
        )
        for split_name in ("val", "test"):
            x, _ = arrays(split_name, m)
            posteriors[split_name, m] = model.predict(x, batch_size=1024, verbose=0)

    print(f"dataset {fs.name} ({fs.source}): generated/loaded in {generated:.2f} s; dims {fs.dims}; "
          f"counts {fs.summary()['splits']}")
    print(f"epochs picked on val: {epochs}; metric: {metric_name} (cosine, whole ranking)")
    for split_name in ("val", "test"):
        labels = to_multi_hot(fs.splits[split_name].labels[first], c)
        i2t = mean_average_precision(posteriors[split_name, first], posteriors[split_name, second], labels, labels)
        t2i = mean_average_precision(posteriors[split_name, second], posteriors[split_name, first], labels, labels)
        local = local_mean_average_precision(posteriors[split_name, first], posteriors[split_name, second],
                                             labels, labels)
        assert abs(local - i2t) < 1e-4, (local, i2t)  # the two implementations agree on this protocol
        print(f"{split_name:5s} mAP {first}2{second} (i2t) {i2t:.4f}  {second}2{first} (t2i) {t2i:.4f}  "
              f"avg {(i2t + t2i) / 2:.4f}")
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

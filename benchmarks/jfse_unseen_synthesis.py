"""Does a trained JFSE generator synthesise unseen-class features that look like the real ones? A diagnostic of why
unseen-class synthesis does (or does not) help zero-shot retrieval.

    python benchmarks/jfse_unseen_synthesis.py --run-dir saved_models/zero-shot-wikipedia-<stamp>/jfse-seed0 \
        [--per-class 200]

For a finished zero-shot JFSE run (its best checkpoint), per modality and class: synthesise ``--per-class``
features ``G_m(c_k, z)`` and classify each by the nearest real class mean (cosine) of the standardised TEST features
of all classes; the same in the common space (``R_m(G_m(c_k, z))`` against the class means of ``R_m`` of the real
test features). Seen classes had real training data, unseen ones only their class embedding. An unseen-class accuracy
near chance (1 / number of classes) means the generator does not transfer to unseen classes, so the synthetic
unseen pairs cannot teach the regressors where real unseen items lie. The test split is only read here, never used to
choose anything.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _nearest_mean_accuracy(samples: np.ndarray, sample_class: np.ndarray, means: np.ndarray) -> float:
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    return float(np.mean(np.argmax(unit(samples) @ unit(means).T, axis=1) == sample_class))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from tf_xmr.modeling import build_model, data_spec, load_data, unseen_classes
    from tf_xmr.run_dir import load_run_config

    config = load_run_config(args.run_dir)
    if config.method != "jfse":
        raise SystemExit(f"{args.run_dir} is a {config.method} run; this diagnostic needs a JFSE run")
    feature_set = load_data(config)
    unseen = set(unseen_classes(config, feature_set))
    model = build_model(config, data_spec(config, feature_set))
    model.load_weights(os.path.join(args.run_dir, "checkpoints", "best.weights.h5"))
    keras.utils.set_random_seed(args.seed)

    test = feature_set.splits["test"]
    c = feature_set.num_classes
    classes = np.arange(c)
    condition = tf.repeat(model.class_targets, args.per_class, axis=0)
    sample_class = np.repeat(classes, args.per_class)
    print(f"run: {args.run_dir}; unseen: {[feature_set.class_names[k] for k in sorted(unseen)]}; "
          f"{args.per_class} synthetic features per class; chance = {1 / c:.3f}")
    print("| modality | space | seen-class synthetic accuracy | unseen-class synthetic accuracy |")
    print("|---|---|---|---|")
    for m in feature_set.modalities:
        labels = np.asarray(test.labels[m])
        label_ids = labels.argmax(axis=1) if labels.ndim == 2 else labels
        real = model.standardizers[m](tf.constant(test.features[m]), training=False)
        fake = model.synthesize(m, condition, training=False)
        spaces = {
            "features": (np.asarray(real), np.asarray(fake)),
            "common": (np.asarray(model.regressors[m](real, training=False)),
                       np.asarray(model.regressors[m](fake, training=False))),
        }
        for space, (real_x, fake_x) in spaces.items():
            means = np.stack([real_x[label_ids == k].mean(axis=0) for k in classes])
            seen_rows = np.isin(sample_class, sorted(set(classes) - unseen))
            unseen_rows = ~seen_rows
            seen_acc = _nearest_mean_accuracy(fake_x[seen_rows], sample_class[seen_rows], means)
            unseen_acc = _nearest_mean_accuracy(fake_x[unseen_rows], sample_class[unseen_rows], means)
            print(f"| {m} | {space} | {seen_acc:.3f} | {unseen_acc:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

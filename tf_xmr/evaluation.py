"""Re-scoring a finished run (``evaluate.py``): its exported encoders (or best checkpoint) on any split."""

from __future__ import annotations

import os

import numpy as np

from tf_xmr.errors import ConfigError, ModelInputError


def load_run_config(run_dir: str, overrides=()):
    from tf_xmr.config.schema import load_experiment

    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isdir(run_dir):
        raise ConfigError(f"run directory {run_dir} does not exist")
    if not os.path.exists(path):
        raise ConfigError(f"{run_dir} is not a tf_xmr run directory (no config.yaml)")
    return load_experiment(path, overrides)


def run_encoders(run_dir: str, config, feature_set, source: str = "auto") -> tuple[dict, str]:
    """modality -> callable encoder, from the exported SavedModels or the best checkpoint.

    Args:
        source: ``"export"``, ``"checkpoint"`` or ``"auto"`` (exports when present).

    Returns:
        ``(encoders, description of where they came from)``.
    """
    from tf_xmr.export import encoder_dir, load_exported, versions

    have_exports = all(versions(encoder_dir(run_dir, m)) for m in feature_set.modalities)
    if source == "export" or (source == "auto" and have_exports):
        encoders = {m: load_exported(run_dir, m) for m in feature_set.modalities}
        for m, encoder in encoders.items():
            if encoder.input_dim != feature_set.dims[m]:
                raise ModelInputError(
                    f"exported {m} encoder {encoder.path} takes {encoder.input_dim}-d features but the data's "
                    f"{m} features are {feature_set.dims[m]}-d"
                )
        return encoders, "export (" + ", ".join(e.path for e in encoders.values()) + ")"
    from tf_xmr.training.independent import run_modalities

    if run_modalities(run_dir) is not None:
        # Independent modality networks (e.g. SDML): one checkpoint per modality.
        import tensorflow as tf

        from tf_xmr.training.independent import load_networks, load_shared_state
        from tf_xmr.training.trainer import data_spec

        nets = load_networks(config, data_spec(config, feature_set), load_shared_state(run_dir), run_dir,
                             feature_set.modalities)
        encoders = {m: tf.function(lambda x, enc=net.encoder: enc(x, training=False), reduce_retracing=True)
                    for m, net in nets.items()}
        return encoders, f"checkpoints ({os.path.join(run_dir, 'modalities')})"
    best = os.path.join(run_dir, "checkpoints", "best.weights.h5")
    if not os.path.exists(best):
        raise ModelInputError(f"{run_dir} has neither exported encoders nor checkpoints/best.weights.h5")
    from tf_xmr.training.trainer import build_model, data_spec, keras_encoders

    model = build_model(config, data_spec(config, feature_set))
    try:
        model.load_weights(best)
    except ValueError as exc:
        raise ModelInputError(f"checkpoint {best} does not fit the model built from the data: {exc}") from None
    return keras_encoders(model), f"checkpoint ({best})"


def evaluate_run(run_dir: str, overrides=(), *, split: str = "test", preset: str | None = None,
                 source: str = "auto", curves: bool = False) -> dict:
    """Score a finished run's encoders on ``split`` with the (possibly overridden) ``eval`` protocol.

    Returns:
        ``{split: scores, "protocol": ..., "model": where the encoders came from, "curves": {...} (if asked)}``.
    """
    from tf_xmr.metrics import precision_recall_curve, precision_scope_curve
    from tf_xmr.metrics.evaluator import direction_name, directions, embed_split, score_embeddings
    from tf_xmr.training.trainer import load_data, protocol

    from tf_xmr.training.independent import run_modalities

    config = load_run_config(run_dir, overrides)
    feature_set = load_data(config)
    scored = run_modalities(run_dir)
    if scored is not None and tuple(scored) != tuple(feature_set.modalities):
        # A run that trained (or was extended to) a subset of the data's modalities scores exactly those.
        feature_set = feature_set.select_modalities(scored)
    if split not in feature_set.splits:
        raise ConfigError(f"split {split!r} not in the data; it has {sorted(feature_set.splits)}")
    encoders, origin = run_encoders(run_dir, config, feature_set, source)
    chosen = protocol(config, preset)
    embeddings, labels = embed_split(
        feature_set.splits[split], encoders, batch_size=config.train.eval_batch_size,
        num_classes=feature_set.num_classes,
    )
    result = {
        split: score_embeddings(embeddings, labels, chosen, feature_set.modalities, detailed=True),
        "protocol": chosen.describe(),
        "model": origin,
    }
    from tf_xmr.training.trainer import unseen_classes, zero_shot_scores

    unseen = unseen_classes(config, feature_set)
    if unseen:
        # A zero-shot run (or --set data.unseen_classes=...): the three zero-shot protocols and their chance level.
        result["zero_shot"] = zero_shot_scores(encoders, feature_set, split, config, unseen)
    if curves:
        result["curves"] = {}
        scopes = np.unique(np.linspace(1, min(1000, min(len(v) for v in embeddings.values())), 21).astype(int))
        for query, target in directions(feature_set.modalities):
            args = (embeddings[query], embeddings[target], labels[query], labels[target])
            recall, precision = precision_recall_curve(*args, distance=chosen.distance)
            scope, scope_precision = precision_scope_curve(*args, scopes, distance=chosen.distance)
            result["curves"][direction_name(query, target, feature_set.modalities)] = {
                "pr": (np.asarray(recall).tolist(), np.asarray(precision).tolist()),
                "scope": (np.asarray(scope).tolist(), np.asarray(scope_precision).tolist()),
            }
    return result

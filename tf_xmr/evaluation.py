"""Re-scoring a finished run (``evaluate.py``): its exported encoders (or best checkpoint) on any split."""

from __future__ import annotations

import os

import numpy as np

from tf_xmr.errors import ConfigError, ModelInputError


def run_encoders(run_dir: str, config, feature_set, source: str = "auto", distance: str = "cosine") -> tuple[dict, str]:
    """modality -> callable encoder, from the exported SavedModels or the best checkpoint.

    Args:
        source: ``"export"``, ``"checkpoint"`` or ``"auto"`` (exports when present and they give the embedding the
            protocol's ``distance`` ranks: unit-vector exports of a cosine run rank as the raw embedding under cosine,
            not under euclidean or inner, so those protocols then score the checkpoint, as training did).
        distance: the distance of the protocol to be scored.

    Returns:
        ``(encoders, description of where they came from)``.
    """
    from tf_xmr.export import encoder_dir, load_exported, read_metadata, versions

    found = {m: versions(encoder_dir(run_dir, m)) for m in feature_set.modalities}
    have_exports = all(found.values())
    if source == "auto" and have_exports and distance != "cosine":
        # The exports' own record says whether they are unit vectors (a file read; no SavedModel is loaded twice).
        latest = {m: os.path.join(encoder_dir(run_dir, m), str(v[-1])) for m, v in found.items()}
        if any(read_metadata(path).get("normalized") for path in latest.values()):
            have_exports = False
    if source == "export" or (source == "auto" and have_exports):
        encoders = {m: load_exported(run_dir, m) for m in feature_set.modalities}
        for m, encoder in encoders.items():
            if encoder.input_dim != feature_set.dims[m]:
                raise ModelInputError(
                    f"exported {m} encoder {encoder.path} takes {encoder.input_dim}-d features but the data's "
                    f"{m} features are {feature_set.dims[m]}-d"
                )
        return encoders, "export (" + ", ".join(e.path for e in encoders.values()) + ")"
    from tf_xmr.modeling import encoder_functions, trained_encoders
    from tf_xmr.run_dir import best_checkpoint, run_modalities

    if run_modalities(run_dir) is None and not os.path.exists(best_checkpoint(run_dir)):
        raise ModelInputError(f"{run_dir} has neither exported encoders nor checkpoints/best.weights.h5")
    where = (os.path.join(run_dir, "modalities") if run_modalities(run_dir) is not None
             else best_checkpoint(run_dir))
    return encoder_functions(trained_encoders(run_dir, config, feature_set)), f"checkpoint ({where})"


def retrieval_curves(embeddings: dict, labels: dict, modalities, distance: str = "cosine") -> dict:
    """Per direction, the 11-point interpolated precision-recall curve and precision@K at 21 scopes up to
    min(1000, the smallest modality's size): ``{direction: {"pr": (recall, precision), "scope": (K, precision)}}``
    as lists (JSON-ready)."""
    from tf_xmr.metrics import precision_recall_curve, precision_scope_curve
    from tf_xmr.metrics.evaluator import direction_name, directions

    out = {}
    scopes = np.unique(np.linspace(1, min(1000, min(len(v) for v in embeddings.values())), 21).astype(int))
    for query, target in directions(modalities):
        args = (embeddings[query], embeddings[target], labels[query], labels[target])
        recall, precision = precision_recall_curve(*args, distance=distance)
        scope, scope_precision = precision_scope_curve(*args, scopes, distance=distance)
        out[direction_name(query, target, modalities)] = {
            "pr": (np.asarray(recall).tolist(), np.asarray(precision).tolist()),
            "scope": (np.asarray(scope).tolist(), np.asarray(scope_precision).tolist()),
        }
    return out


def evaluate_run(run_dir: str, overrides=(), *, split: str = "test", preset: str | None = None,
                 source: str = "auto", curves: bool = False, keep_embeddings: bool = False) -> dict:
    """Score a finished run's encoders on ``split`` with the (possibly overridden) ``eval`` protocol.

    Returns:
        ``{split: scores, "protocol": ..., "model": where the encoders came from, "curves": {...} (if asked),
        "embeddings": (modality -> embeddings, modality -> multi-hot labels) (if asked), "class_names": [...]}``.
    """
    from tf_xmr.metrics.evaluator import score_embeddings
    from tf_xmr.modeling import prepare_data, unseen_classes
    from tf_xmr.run_dir import load_run_config, run_modalities
    from tf_xmr.scoring import embed_config_split, protocol, zero_shot_scores

    config, feature_set = prepare_data(load_run_config(run_dir, overrides))
    scored = run_modalities(run_dir)
    if scored is not None and tuple(scored) != tuple(feature_set.modalities):
        # A run that trained (or was extended to) a subset of the data's modalities scores exactly those.
        feature_set = feature_set.select_modalities(scored)
    if split not in feature_set.splits:
        raise ConfigError(f"split {split!r} not in the data; it has {sorted(feature_set.splits)}")
    chosen = protocol(config, preset)
    encoders, origin = run_encoders(run_dir, config, feature_set, source, chosen.distance)
    embeddings, labels = embed_config_split(encoders, feature_set, split, config)
    result = {
        split: score_embeddings(embeddings, labels, chosen, feature_set.modalities, detailed=True),
        "protocol": chosen.describe(),
        "model": origin,
    }
    unseen = unseen_classes(config, feature_set)
    if unseen:
        # A zero-shot run (or --set data.unseen_classes=...): the three zero-shot protocols and their chance level.
        result["zero_shot"] = zero_shot_scores(encoders, feature_set, split, config, unseen)
    if curves:
        result["curves"] = retrieval_curves(embeddings, labels, feature_set.modalities, chosen.distance)
    if keep_embeddings:
        result["embeddings"] = (embeddings, labels)
        result["class_names"] = list(feature_set.class_names)
    return result

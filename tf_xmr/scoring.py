"""Scoring a model's encoders on a feature-set split under the run's protocol; the record ``metrics.json`` holds.

The one path from encoders to numbers: validation during training, the test split at the end, ``evaluate.py`` and
the benchmarks all go through ``score_split`` (embed with ``embed_split``, then ``tf_xmr.metrics``), so the numbers
printed later are those written during training. ``tf_xmr.metrics`` itself stays pure (arrays in, numbers out);
this module is what feeds it from the data pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

# Random-ranking reference of the zero-shot report: the mean over this many draws of random Gaussian embeddings of
# RANDOM_REFERENCE_DIM dimensions, seeded by the run seed, so every method run on one seed and split gets the same
# reference (one draw on a few hundred test items varies by about 0.005 mAP; the mean of 10 by a third of that).
RANDOM_REFERENCE_DRAWS = 10
RANDOM_REFERENCE_DIM = 16


def protocol(config, preset: str | None = None):
    """The run's ``RetrievalProtocol`` (``eval.*``), or a named preset."""
    from tf_xmr.metrics import PRESETS, RetrievalProtocol

    if preset is not None:
        return PRESETS[preset]
    return RetrievalProtocol(config.eval.distance, config.eval.k, config.eval.normalization)


def embed_split(split, encoders: Mapping[str, Callable], *, batch_size: int, num_classes: int):
    """Run every encoder over a whole split, in order, without dropping the last partial batch.

    Args:
        split: a ``tf_xmr.data`` split (in memory or streamed records).
        encoders: modality -> callable mapping a (b, d_m) float32 batch to (b, d_common) embeddings.
        batch_size: evaluation batch size.
        num_classes: number of classes (labels come back multi-hot).

    Returns:
        ``(embeddings, labels)``: modality -> (n_m, d_common) float32 and modality -> (n_m, c) float32.
    """
    from tf_xmr.data import make_dataset

    embeddings, labels = {}, {}
    groups = [tuple(encoders)] if split.paired else [(m,) for m in encoders]
    for group in groups:
        dataset = make_dataset(split, batch_size=batch_size, num_classes=num_classes, modalities=list(group))
        chunks = {m: [] for m in group}
        label_chunks = []
        for batch in dataset:
            for m in group:
                chunks[m].append(np.asarray(encoders[m](batch[m])))
            label_chunks.append(batch["labels"].numpy())
        stacked_labels = np.concatenate(label_chunks)
        for m in group:
            embeddings[m] = np.concatenate(chunks[m]).astype(np.float32)
            labels[m] = stacked_labels
    return embeddings, labels


def embed_config_split(encoders, feature_set, split: str, config):
    """``embed_split`` of ``feature_set.splits[split]`` with the run's evaluation batch size."""
    return embed_split(feature_set.splits[split], encoders, batch_size=config.train.eval_batch_size,
                       num_classes=feature_set.num_classes)


def score_split(encoders, feature_set, split: str, config, preset: str | None = None,
                detailed: bool = False) -> dict:
    """mAP of every direction (and ``map_avg``) of ``encoders`` on one split, under the run's protocol."""
    from tf_xmr.metrics.evaluator import score_embeddings

    embeddings, labels = embed_config_split(encoders, feature_set, split, config)
    return score_embeddings(embeddings, labels, protocol(config, preset), feature_set.modalities, detailed=detailed)


def _mean_reports(reports: list):
    if isinstance(reports[0], dict):
        return {key: _mean_reports([r[key] for r in reports]) for key in reports[0]}
    if isinstance(reports[0], float):
        return float(sum(reports) / len(reports))
    return reports[0]


def zero_shot_scores(encoders, feature_set, split: str, config, unseen) -> dict:
    """The zero-shot protocols (standard / zero-shot / generalised, ``tf_xmr.metrics.zero_shot``) on one split.

    Besides the model's scores, ``random_ranking`` holds the same report for random embeddings (Gaussian, seeded by
    the run seed, mean of ``RANDOM_REFERENCE_DRAWS`` draws, the same for every method): the chance level of every
    number under the same protocol and the same class mix, which differs between the seen, unseen and generalised
    query sets.
    """
    from tf_xmr.metrics.zero_shot import zero_shot_report

    embeddings, labels = embed_config_split(encoders, feature_set, split, config)
    chosen = protocol(config)
    report = zero_shot_report(embeddings, labels, unseen, chosen, feature_set.modalities)
    rng = np.random.default_rng(config.seed)
    draws = [
        zero_shot_report({m: rng.standard_normal((len(e), RANDOM_REFERENCE_DIM)).astype(np.float32)
                          for m, e in embeddings.items()},
                         labels, unseen, chosen, feature_set.modalities)
        for _ in range(RANDOM_REFERENCE_DRAWS)
    ]
    random_ranking = _mean_reports(draws)
    random_ranking.pop("unseen_classes")
    return {
        **report,
        "unseen_class_names": [feature_set.class_names[k] for k in unseen],
        "split": split,
        "random_ranking": random_ranking,
    }


def score_test(encoders, feature_set, config, unseen) -> dict:
    """Everything a run reports on the test split, scored once with the chosen checkpoint's encoders.

    Returns:
        ``{"test": detailed scores, "presets": {name: scores}, "embeddings": (embeddings, labels)}`` plus
        ``"zero_shot"`` for a zero-shot run (validation used seen classes only; the test split is whole and is also
        scored under the three zero-shot protocols). The split is embedded once; every protocol scores the same
        embeddings.
    """
    from tf_xmr.metrics.evaluator import score_embeddings

    embeddings, labels = embed_config_split(encoders, feature_set, "test", config)
    out = {
        "test": score_embeddings(embeddings, labels, protocol(config), feature_set.modalities, detailed=True),
        "presets": {name: score_embeddings(embeddings, labels, protocol(config, name), feature_set.modalities)
                    for name in config.eval.extra_presets},
        "embeddings": (embeddings, labels),
    }
    if unseen:
        out["zero_shot"] = zero_shot_scores(encoders, feature_set, "test", config, unseen)
    return out


def metrics_record(config, feature_set, val: dict, test: dict, presets: dict, **extra) -> dict:
    """What ``metrics.json`` holds: validation and test scores, the protocol, the presets, the run's identity."""
    return {
        "val": val,
        "test": test,
        "protocol": protocol(config).describe(),
        "presets": {name: {"protocol": protocol(config, name).describe(), "test": scores}
                    for name, scores in presets.items()},
        "method": config.method,
        "seed": config.seed,
        **extra,
        "data": {"loader": config.data.source, **feature_set.summary()},
    }

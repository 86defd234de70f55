"""The one evaluator: score the embeddings of every modality in every query -> target direction.

Used identically for validation during training, for the final test scoring and by ``evaluate.py`` (through
``tf_xmr.scoring``, which embeds a split and calls ``score_embeddings``), so the numbers in ``metrics.json`` and those
printed later come from the same code path. Pure: arrays in, numbers out; no data pipeline, no model.
"""

from __future__ import annotations

import numpy as np

from tf_xmr.metrics.retrieval import RetrievalProtocol, evaluate_retrieval, mean_average_precision

# The design contract names the two-modality directions i2t / t2i; other modality sets use full names.
_SHORT = {"image": "i", "text": "t"}


def direction_name(query: str, target: str, modalities) -> str:
    """``"i2t"``/``"t2i"`` for an image/text set, ``"<query>2<target>"`` otherwise."""
    if set(modalities) == {"image", "text"}:
        return f"{_SHORT[query]}2{_SHORT[target]}"
    return f"{query}2{target}"


def directions(modalities) -> list[tuple[str, str]]:
    """Every ordered pair of distinct modalities, in feature-set order."""
    return [(q, t) for q in modalities for t in modalities if q != t]


def score_embeddings(embeddings, labels, protocol: RetrievalProtocol, modalities, *, detailed: bool = False) -> dict:
    """mAP for every ordered modality pair plus their mean.

    Args:
        embeddings: modality -> (n_m, d) embeddings.
        labels: modality -> (n_m, c) multi-hot labels.
        protocol: distance, cut-off and AP normalisation.
        modalities: modality order (fixes the direction order).
        detailed: also report precision@k and recall@k per direction.

    Returns:
        ``{"map_<dir>": float, ..., "map_avg": float}`` (plus ``"precision_at_<dir>"``/``"recall_at_<dir>"`` dicts
        when ``detailed``).
    """
    out = {}
    for query, target in directions(modalities):
        name = direction_name(query, target, modalities)
        args = (embeddings[query], embeddings[target], labels[query], labels[target])
        if detailed:
            result = evaluate_retrieval(*args, protocol)
            out[f"map_{name}"] = float(result["map"])
            out[f"precision_at_{name}"] = {str(k): float(v) for k, v in result["precision_at"].items()}
            out[f"recall_at_{name}"] = {str(k): float(v) for k, v in result["recall_at"].items()}
        else:
            out[f"map_{name}"] = float(
                mean_average_precision(
                    *args, distance=protocol.distance, k=protocol.k, normalization=protocol.normalization
                )
            )
    maps = [v for k, v in out.items() if k.startswith("map_")]
    out["map_avg"] = float(np.mean(maps))
    return out

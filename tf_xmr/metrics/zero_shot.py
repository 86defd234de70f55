"""Zero-shot retrieval protocols (JFSE Sec. 4.1 / spec 6): seen/unseen class splits and the three test protocols.

Pure functions of class ids, labels and embeddings; the trainer (or evaluate.py) embeds the splits and calls
``zero_shot_report`` (the unseen classes come from ``tf_xmr.data.class_split.resolve_unseen_classes``). Conventions:

- An item belongs to a class set when EVERY one of its labels is in the set (multi-label items that mix seen and
  unseen classes belong to neither: they would leak unseen classes into training and blur both test sets).
- ``standard``: seen-class queries against seen-class targets of the test split.
- ``zero_shot``: unseen-class queries against unseen-class targets of the test split.
- ``generalized`` (GZS): queries of all classes against targets of all classes of the test split; mAP reported
  separately over the seen-class queries and over the unseen-class queries, and their harmonic mean
  ``H = 2 s u / (s + u)`` (0 when both are 0).

Every mAP uses the given ``RetrievalProtocol`` (distance, cut-off, AP normalisation) as standard retrieval does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tf_xmr.errors import DataError
from tf_xmr.metrics.evaluator import direction_name, directions, score_embeddings
from tf_xmr.metrics.retrieval import RetrievalProtocol, average_precision


def _multi_hot(labels, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 1:
        out = np.zeros((labels.shape[0], num_classes), np.float32)
        out[np.arange(labels.shape[0]), labels.astype(np.int64)] = 1.0
        return out
    if labels.ndim != 2 or labels.shape[1] != num_classes:
        raise DataError(f"labels must be (n,) class ids or (n, {num_classes}) multi-hot, got shape {labels.shape}")
    return labels.astype(np.float32)


def in_classes(labels, classes: Sequence[int], num_classes: int) -> np.ndarray:
    """(n,) bool: True for items with at least one label, all of them in ``classes``.

    Args:
        labels: (n,) int class ids or (n, c) multi-hot labels.
        classes: class ids of the set.
        num_classes: c.
    """
    hot = _multi_hot(labels, num_classes) > 0
    member = np.zeros(num_classes, bool)
    member[list(classes)] = True
    return hot.any(axis=1) & ~(hot & ~member[None, :]).any(axis=1)


def seen_unseen_masks(labels, unseen: Sequence[int], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(seen mask, unseen mask) of the items; mixed multi-label items are in neither."""
    seen = [k for k in range(num_classes) if k not in set(unseen)]
    return in_classes(labels, seen, num_classes), in_classes(labels, unseen, num_classes)


def harmonic_mean(seen: float, unseen: float) -> float:
    """``H = 2 s u / (s + u)``; 0 when ``s + u = 0``."""
    return 0.0 if seen + unseen <= 0 else float(2.0 * seen * unseen / (seen + unseen))


def _subset(embeddings, labels, masks):
    return ({m: embeddings[m][masks[m]] for m in embeddings}, {m: labels[m][masks[m]] for m in labels})


def zero_shot_report(embeddings: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], unseen: Sequence[int],
                     protocol: RetrievalProtocol, modalities: Sequence[str]) -> dict:
    """The three protocols on one embedded split (normally the test split).

    Args:
        embeddings: modality -> (n_m, e) embeddings of the split.
        labels: modality -> (n_m, c) multi-hot labels.
        unseen: unseen class ids.
        protocol: the retrieval protocol.
        modalities: modality order (direction order).

    Returns:
        ``{"standard": {map_<dir>, map_avg}, "zero_shot": {...}, "generalized": {"seen": {...}, "unseen": {...},
        "harmonic": {...}}, "unseen_classes": [...]}``; every block has one ``map_<dir>`` per direction and ``map_avg``
        (for ``harmonic``: H of the seen and unseen ``map_avg``).

    Raises:
        DataError: a modality of the split has no seen or no unseen item.
    """
    num_classes = next(iter(labels.values())).shape[1]
    masks = {m: seen_unseen_masks(labels[m], unseen, num_classes) for m in modalities}
    for m in modalities:
        if not masks[m][0].any() or not masks[m][1].any():
            raise DataError(f"zero-shot evaluation: modality {m!r} has no "
                            f"{'seen' if not masks[m][0].any() else 'unseen'} item in this split")
    standard = score_embeddings(*_subset(embeddings, labels, {m: masks[m][0] for m in modalities}), protocol,
                                modalities)
    zero = score_embeddings(*_subset(embeddings, labels, {m: masks[m][1] for m in modalities}), protocol, modalities)
    seen_block, unseen_block, harmonic_block = {}, {}, {}
    for query, target in directions(modalities):
        name = direction_name(query, target, modalities)
        ap = average_precision(embeddings[query], embeddings[target], labels[query], labels[target],
                               distance=protocol.distance, k=protocol.k, normalization=protocol.normalization)
        seen_block[f"map_{name}"] = float(np.mean(ap[masks[query][0]]))
        unseen_block[f"map_{name}"] = float(np.mean(ap[masks[query][1]]))
        harmonic_block[f"map_{name}"] = harmonic_mean(seen_block[f"map_{name}"], unseen_block[f"map_{name}"])
    for block in (seen_block, unseen_block):
        block["map_avg"] = float(np.mean([v for k, v in block.items() if k.startswith("map_")]))
    # The headline GZS number: H of the seen and unseen averages (per direction: H of that direction's pair).
    harmonic_block["map_avg"] = harmonic_mean(seen_block["map_avg"], unseen_block["map_avg"])
    return {
        "standard": standard,
        "zero_shot": zero,
        "generalized": {"seen": seen_block, "unseen": unseen_block, "harmonic": harmonic_block},
        "unseen_classes": [int(k) for k in unseen],
    }

"""Data-level class filtering for zero-shot training: keep only the items of the seen classes in a split.

The class ids stay as they are (label k is still ``class_names[k]``, and the class-embedding matrix keeps every
class, unseen ones included: class names are side information a zero-shot method may use). Which items count as
members of a class set: items whose labels ALL lie in the set (the convention of ``tf_xmr.metrics.zero_shot``,
which, as a leaf package, keeps its own copy of this test).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from tf_xmr.data.feature_set import FeatureSet, Split, to_multi_hot
from tf_xmr.errors import ConfigError, DataError

logger = logging.getLogger("tf_xmr.data")


def resolve_unseen_classes(class_names: Sequence[str], unseen, seed: int) -> tuple[int, ...]:
    """The unseen class ids (sorted) from a config value.

    Args:
        class_names: the c class names in label order.
        unseen: a list of class names and/or ids, or a fraction in (0, 1): ``round(fraction * c)`` classes drawn by a
            seeded permutation (at least 1, at most c - 1).
        seed: seed of the permutation (the run seed, so the split is reproducible and written into metrics.json).

    Raises:
        ConfigError: unknown names, ids out of range, duplicates, or every / no class unseen.
    """
    c = len(class_names)
    if isinstance(unseen, float):
        fraction = float(unseen)
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"data.unseen_classes as a fraction must lie in (0, 1), got {unseen}")
        count = min(c - 1, max(1, int(round(fraction * c))))
        return tuple(sorted(int(k) for k in np.random.default_rng(seed).permutation(c)[:count]))
    index = {name: k for k, name in enumerate(class_names)}
    ids = []
    for item in unseen:
        if isinstance(item, str) and item in index:
            ids.append(index[item])
        elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < c:
            ids.append(item)
        else:
            raise ConfigError(
                f"data.unseen_classes: {item!r} is neither a class name nor a class id in [0, {c}); "
                f"classes: {list(class_names)}"
            )
    if len(set(ids)) != len(ids):
        raise ConfigError(f"data.unseen_classes lists a class twice: {list(unseen)}")
    if not ids or len(ids) >= c:
        raise ConfigError(f"data.unseen_classes must leave at least one seen and one unseen class, got {list(unseen)}")
    return tuple(sorted(ids))


def in_classes(labels, classes: Sequence[int], num_classes: int) -> np.ndarray:
    """(n,) bool: items with at least one label, all of them in ``classes`` ((n,) ids or (n, c) multi-hot)."""
    hot = to_multi_hot(labels, num_classes) > 0
    member = np.zeros(num_classes, bool)
    member[list(classes)] = True
    return hot.any(axis=1) & ~(hot & ~member[None, :]).any(axis=1)


def restrict_split(split: Split, classes: Sequence[int], num_classes: int, *, where: str = "") -> Split:
    """The items of ``split`` whose labels all lie in ``classes`` (pairs stay aligned in a paired split).

    Raises:
        DataError: no item of some modality is left.
    """
    features, labels, ids = {}, {}, ({} if split.ids is not None else None)
    shared = None
    if split.paired:
        first = next(iter(split.labels))
        shared = in_classes(split.labels[first], classes, num_classes)
    for m in split.features:
        mask = shared if shared is not None else in_classes(split.labels[m], classes, num_classes)
        if not mask.any():
            raise DataError(f"split{where} modality {m!r} has no item of the classes {sorted(classes)}")
        features[m], labels[m] = split.features[m][mask], split.labels[m][mask]
        if ids is not None and m in split.ids:
            ids[m] = split.ids[m][mask]
    return Split(features=features, labels=labels, paired=split.paired, ids=ids)


def seen_classes_only(feature_set: FeatureSet, unseen: Sequence[int], splits: Sequence[str] = ("train", "val")):
    """A copy of ``feature_set`` whose ``splits`` (default: training and validation) hold seen-class items only.

    The test split is left whole: the zero-shot protocols need its seen and unseen items.
    """
    seen = [k for k in range(feature_set.num_classes) if k not in set(unseen)]
    new_splits = dict(feature_set.splits)
    for name in splits:
        if name in new_splits:
            if not isinstance(new_splits[name], Split):
                raise DataError(f"zero-shot filtering needs in-memory splits; split {name!r} is streamed records")
            new_splits[name] = restrict_split(new_splits[name], seen, feature_set.num_classes, where=f" {name!r}")
    logger.info("zero-shot split: %d unseen class(es) held out of %s: %s", len(unseen), "/".join(splits),
                ", ".join(feature_set.class_names[k] for k in unseen))
    # The test split holds classes training never saw: intended here, so validate() need not warn about it.
    return dataclasses.replace(feature_set, splits=new_splits).validate(warn_unseen=False)

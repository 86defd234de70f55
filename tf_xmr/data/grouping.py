"""Semantic grouping (DA-GAN Sec. 4.2.3, Eqs. 10-12): for every training pair, alpha same-class items per modality.

``SemanticGroups`` holds per-class pools of a split's items and attaches, inside a batched tf.data pipeline, a group
``{modality}_group: float32 (b, alpha, d_m)`` to every element: for each item, ``alpha`` items drawn uniformly (with
replacement) from the OTHER training items of the same class, independently per modality [spec 2.4 REC] (the item
is recognised by its features; it can only be its own group when it is the only member of its class). A multi-label
item draws its group from one of its labels, chosen at random per item. The group is resampled every batch [REC];
draws come from a seeded ``tf.data.Dataset.random`` stream that is re-randomised each epoch, so a run is reproducible.

The pools live in memory (as tensors captured by the pipeline); for data too large for that, precompute groups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tf_xmr.data.feature_set import LABELS_KEY, to_multi_hot
from tf_xmr.errors import DataError

GROUP_SUFFIX = "_group"


def group_key(modality: str) -> str:
    """The element key of ``modality``'s group, e.g. ``image_group``."""
    return f"{modality}{GROUP_SUFFIX}"


class SemanticGroups:
    """Per-class pools of items, one per modality.

    Args:
        features: modality -> (n, d_m) array (paired rows).
        labels: (n, c) multi-hot (or (n,) class ids with ``num_classes``).
        num_classes: c, needed for class ids.
    """

    def __init__(self, features: Mapping[str, np.ndarray], labels: np.ndarray, num_classes: int | None = None):
        labels = np.asarray(labels)
        if labels.ndim == 1:
            if num_classes is None:
                raise DataError("SemanticGroups: class ids need num_classes")
            labels = to_multi_hot(labels, num_classes)
        self.labels = labels.astype(np.float32)
        self.num_classes = self.labels.shape[1]
        self.features = {m: np.ascontiguousarray(x, dtype=np.float32) for m, x in features.items()}
        for m, x in self.features.items():
            if x.shape[0] != self.labels.shape[0]:
                raise DataError(f"SemanticGroups: {m} has {x.shape[0]} rows, labels {self.labels.shape[0]}")
        # Pool of class c = pool_index[offsets[c] : offsets[c] + counts[c]] (an item appears once per label).
        members = [np.flatnonzero(self.labels[:, c] > 0) for c in range(self.num_classes)]
        if not any(len(m) for m in members):
            raise DataError("semantic grouping: no item has a label")
        self.counts = np.array([len(m) for m in members], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.pool_index = np.concatenate(members).astype(np.int64)

    @classmethod
    def from_split(cls, split, num_classes: int, modalities: Sequence[str] | None = None) -> SemanticGroups:
        """Pools of an in-memory paired split."""
        if not getattr(split, "paired", True):
            raise DataError("semantic grouping needs a paired split")
        mods = tuple(modalities or split.modalities)
        return cls({m: split.features[m] for m in mods}, to_multi_hot(split.labels[mods[0]], num_classes))

    @classmethod
    def from_dataset(cls, dataset, modalities: Sequence[str]) -> SemanticGroups:
        """Pools of every item of a (batched) dataset of ``{modality: (b, d), "labels": (b, c)}`` elements, in one
        pass (works for in-memory and streamed splits alike)."""
        chunks = {m: [] for m in modalities}
        labels = []
        for batch in dataset:
            for m in modalities:
                chunks[m].append(np.asarray(batch[m]))
            labels.append(np.asarray(batch[LABELS_KEY]))
        if not labels:
            raise DataError("semantic grouping: the training dataset is empty")
        return cls({m: np.concatenate(c) for m, c in chunks.items()}, np.concatenate(labels))

    # -- sampling -----------------------------------------------------------------------------------------------
    def _sample(self, anchors: Mapping, labels, alpha: int, seed, exclude_anchor: bool):
        """Groups for one batch (TensorFlow ops). seed: int64 (2,) stateless seed."""
        import tensorflow as tf

        counts = tf.constant(self.counts)
        offsets = tf.constant(self.offsets)
        pool_index = tf.constant(self.pool_index)
        labels = tf.cast(labels, tf.float32)
        b = tf.shape(labels)[0]
        features = {m: tf.constant(x) for m, x in self.features.items()}
        out = {}
        for i, (m, anchor) in enumerate(anchors.items()):
            s_class = tf.random.experimental.stateless_fold_in(seed, 2 * i)
            s_item = tf.random.experimental.stateless_fold_in(seed, 2 * i + 1)
            # One of the item's labels, uniformly (single-label data: its class).
            logits = tf.where(labels > 0, 0.0, -1e9)
            cls_ = tf.random.stateless_categorical(logits, 1, s_class, dtype=tf.int64)[:, 0]  # (b,)
            n_c = tf.gather(counts, cls_)
            offset = tf.gather(offsets, cls_)
            # Excluding the item: draw among the first n_c - 1 pool slots and replace a draw of the item itself by the
            # last slot, which is uniform over the other n_c - 1 members (the item occupies one slot of its class).
            n_draw = tf.where(n_c > 1, n_c - 1, n_c) if exclude_anchor else n_c
            u = tf.random.stateless_uniform((b, alpha), s_item)
            within = tf.minimum(tf.cast(u * tf.cast(n_draw[:, None], tf.float32), tf.int64),
                                tf.maximum(n_draw[:, None] - 1, 0))
            last_slot = max(int(self.pool_index.size) - 1, 0)
            rows = tf.gather(pool_index, tf.minimum(offset[:, None] + within, last_slot))  # (b, alpha)
            group = tf.gather(features[m], rows)  # (b, alpha, d)
            anchor = tf.cast(anchor, tf.float32)
            if exclude_anchor:
                is_anchor = tf.reduce_all(tf.equal(group, anchor[:, None, :]), axis=-1) & (n_c > 1)[:, None]
                last = tf.gather(pool_index, tf.minimum(offset + tf.maximum(n_c - 1, 0), last_slot))
                rows = tf.where(is_anchor, last[:, None], rows)
                group = tf.gather(features[m], rows)
            # A class with no training items (cannot happen for the training split itself): the item is its group.
            empty = tf.equal(n_c, 0)[:, None, None]
            out[group_key(m)] = tf.where(empty, tf.broadcast_to(anchor[:, None, :], tf.shape(group)), group)
        return out

    def attach(self, dataset, alpha: int, seed: int, exclude_anchor: bool = True, first_step: int | None = None):
        """``dataset`` (batched) with ``{modality}_group`` (b, alpha, d_m) added to every element.

        Args:
            dataset: batched ``tf.data.Dataset`` of dicts holding every pooled modality and ``"labels"``.
            alpha: group size.
            seed: seeds the draw stream (a different, reproducible stream each epoch).
            exclude_anchor: leave the item itself out of its group.
            first_step: when given, batch ``i`` of ``dataset`` draws with the key ``(first_step + i, seed)``, a pure
                function of the global step (for a dataset that streams every epoch from a resume point); otherwise
                the keys come from a seeded random stream re-randomised per iterator.
        """
        import tensorflow as tf

        if alpha < 1:
            raise DataError(f"semantic grouping: alpha must be >= 1, got {alpha}")
        modalities = tuple(self.features)
        cardinality = dataset.cardinality()
        if first_step is None:
            stream = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        else:
            stream = tf.data.Dataset.range(int(first_step), 2**62)

        def add(element, r):
            seed_pair = tf.stack([r, tf.constant(seed, tf.int64)])
            groups = self._sample({m: element[m] for m in modalities}, element[LABELS_KEY], alpha, seed_pair,
                                  exclude_anchor)
            return {**element, **groups}

        out = tf.data.Dataset.zip((dataset, stream)).map(add, num_parallel_calls=tf.data.AUTOTUNE,
                                                          deterministic=True)
        if cardinality >= 0:
            out = out.apply(tf.data.experimental.assert_cardinality(cardinality))
        return out.prefetch(tf.data.AUTOTUNE)

    def sample(self, features: Mapping[str, np.ndarray], labels: np.ndarray, alpha: int, seed: int,
               exclude_anchor: bool = True) -> dict[str, np.ndarray]:
        """Groups for given items and their (known) labels, eagerly: modality -> (n, alpha, d_m). Used for the
        training-time (oracle) form of the encoders, never for retrieval."""
        import tensorflow as tf

        seed_pair = tf.constant([seed, 0], tf.int64)
        groups = self._sample({m: tf.constant(features[m], tf.float32) for m in self.features},
                              tf.constant(labels, tf.float32), alpha, seed_pair, exclude_anchor)
        return {k: v.numpy() for k, v in groups.items()}

"""Semantic grouping in the tf.data pipeline (DA-GAN Sec. 4.2.3)."""

import numpy as np
import pytest
import tensorflow as tf

from tf_xmr.data.grouping import SemanticGroups, group_key
from tf_xmr.errors import DataError

N, C = 30, 3


def _data():
    labels = np.arange(N) % C
    # Row i's features encode i, so a group member can be traced back to its item.
    image = np.stack([np.arange(N), labels], axis=1).astype(np.float32)
    text = np.stack([-np.arange(N), labels, np.ones(N)], axis=1).astype(np.float32)
    return {"image": image, "text": text}, np.eye(C, dtype=np.float32)[labels]


def _dataset(features, labels, batch=8):
    return tf.data.Dataset.from_tensor_slices({**features, "labels": labels}).shuffle(N, seed=3).batch(batch)


def _collect(ds):
    return [{k: v.numpy() for k, v in batch.items()} for batch in ds]


def test_groups_are_same_class_other_items_and_reproducible():
    features, labels = _data()
    groups = SemanticGroups.from_dataset(_dataset(features, labels), ("image", "text"))
    ds = groups.attach(_dataset(features, labels), alpha=4, seed=7)
    assert ds.cardinality().numpy() == 4
    first, again = _collect(ds), _collect(ds)
    for batch in first:
        b = batch["labels"].shape[0]
        assert batch[group_key("image")].shape == (b, 4, 2) and batch[group_key("text")].shape == (b, 4, 3)
        anchor_class = batch["labels"].argmax(1)
        # Every member has the anchor's class, and the anchor itself is left out (classes have 10 > alpha items).
        np.testing.assert_array_equal(batch[group_key("image")][:, :, 1], np.repeat(anchor_class[:, None], 4, 1))
        np.testing.assert_array_equal(batch[group_key("text")][:, :, 1], np.repeat(anchor_class[:, None], 4, 1))
        assert not np.any(batch[group_key("image")][:, :, 0] == batch["image"][:, None, 0])
        # Image and text groups are drawn independently (not the same items).
    ids_image = np.concatenate([b[group_key("image")][:, :, 0] for b in first])
    ids_text = np.concatenate([-b[group_key("text")][:, :, 0] for b in first])
    assert np.mean(ids_image == ids_text) < 0.5
    # Re-iterating (next epoch) draws new groups; a new pipeline with the same seed repeats the run exactly.
    assert any(np.any(a[group_key("image")] != b[group_key("image")]) for a, b in zip(first, again, strict=True))
    rerun = _collect(groups.attach(_dataset(features, labels), alpha=4, seed=7))
    for a, b in zip(first, rerun, strict=True):
        np.testing.assert_array_equal(a[group_key("image")], b[group_key("image")])


def test_multi_label_groups_share_a_label_and_eager_sampling():
    features, _ = _data()
    labels = np.zeros((N, C), np.float32)
    labels[np.arange(N), np.arange(N) % C] = 1
    labels[::2, 0] = 1  # even items also carry class 0
    groups = SemanticGroups(features, labels)
    out = groups.sample(features, labels, alpha=3, seed=0)
    members = out[group_key("image")][:, :, 0].astype(int)  # item ids
    for i in range(N):
        assert np.all(labels[members[i]] @ labels[i] > 0)
    with pytest.raises(DataError, match="alpha"):
        groups.attach(tf.data.Dataset.from_tensor_slices({**features, "labels": labels}).batch(4), alpha=0, seed=0)

"""Zero-shot protocols: unseen-class resolution, membership, data-level filtering, and the three protocols on
hand-made embeddings whose mAP is known."""

import numpy as np
import pytest

from tf_xmr.data.class_split import resolve_unseen_classes, restrict_split, seen_classes_only
from tf_xmr.data.feature_set import FeatureSet, Split
from tf_xmr.errors import ConfigError, DataError
from tf_xmr.metrics import RetrievalProtocol
from tf_xmr.metrics.zero_shot import harmonic_mean, in_classes, zero_shot_report

NAMES = ("art", "biology", "geography", "history")


def test_unseen_classes_from_names_ids_or_a_seeded_fraction():
    assert resolve_unseen_classes(NAMES, ["history", 1], seed=0) == (1, 3)
    half = resolve_unseen_classes(NAMES, 0.5, seed=3)
    assert len(half) == 2 and half == resolve_unseen_classes(NAMES, 0.5, seed=3)
    assert {resolve_unseen_classes(NAMES, 0.5, seed=s) for s in range(10)} != {half}  # the seed matters
    assert len(resolve_unseen_classes(NAMES, 0.01, seed=0)) == 1 and len(resolve_unseen_classes(NAMES, 0.99, 0)) == 3
    for bad, message in ((["poetry"], "neither a class name"), ([0, 0], "twice"), ([0, 1, 2, 3], "at least one seen"),
                         (1.5, r"\(0, 1\)"), ([7], "neither")):
        with pytest.raises(ConfigError, match=message):
            resolve_unseen_classes(NAMES, bad, seed=0)


def test_membership_needs_every_label_in_the_set():
    multi = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]], np.float32)
    np.testing.assert_array_equal(in_classes(multi, [0], 4), [True, False, False, False])
    np.testing.assert_array_equal(in_classes(multi, [0, 1], 4), [True, True, False, True])
    np.testing.assert_array_equal(in_classes(np.array([0, 2, 3]), [2, 3], 4), [False, True, True])


def _split(labels, seed=0):
    rng = np.random.default_rng(seed)
    n = len(labels)
    return Split(features={"image": rng.normal(size=(n, 3)), "text": rng.normal(size=(n, 2))},
                 labels={"image": np.asarray(labels), "text": np.asarray(labels)})


def test_training_splits_keep_seen_items_and_test_stays_whole():
    fs = FeatureSet("toy", ("image", "text"), NAMES,
                    {"train": _split([0, 1, 2, 3, 0, 1]), "val": _split([0, 3, 1]), "test": _split([0, 1, 2, 3])})
    out = seen_classes_only(fs, unseen=(1, 3))
    assert list(out.splits["train"].labels["image"]) == [0, 2, 0]
    assert list(out.splits["val"].labels["text"]) == [0]
    np.testing.assert_array_equal(out.splits["train"].features["text"], fs.splits["train"].features["text"][[0, 2, 4]])
    assert out.splits["test"] is fs.splits["test"] and out.class_names == NAMES
    with pytest.raises(DataError, match="no item of the classes"):
        restrict_split(_split([1, 3]), [0, 2], 4)


def test_protocols_on_embeddings_with_known_map():
    # Test split: classes 0, 1 seen; 2, 3 unseen. Image and text embeddings of class k point along axis k, except
    # that the unseen texts of class 2 point along axis 3 and vice versa (a model that confuses the unseen classes).
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    hot = np.eye(4, dtype=np.float32)[labels]
    image = np.eye(4, dtype=np.float32)[labels]
    text = np.eye(4, dtype=np.float32)[np.array([0, 0, 1, 1, 3, 3, 2, 2])]
    report = zero_shot_report({"image": image, "text": text}, {"image": hot, "text": hot}, (2, 3),
                              RetrievalProtocol(), ("image", "text"))
    assert report["unseen_classes"] == [2, 3]
    assert report["standard"]["map_i2t"] == pytest.approx(1.0) and report["standard"]["map_avg"] == pytest.approx(1.0)
    # Among unseen items only: every relevant item is ranked behind the two wrong ones -> AP = (1/3 + 2/4) / 2.
    assert report["zero_shot"]["map_i2t"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    gzs = report["generalized"]
    assert gzs["seen"]["map_t2i"] == pytest.approx(1.0)
    # All-class database: the two relevant texts sit behind the two confused ones, ties after them in index order.
    assert 0.0 < gzs["unseen"]["map_i2t"] < 1.0
    assert gzs["harmonic"]["map_i2t"] == pytest.approx(harmonic_mean(gzs["seen"]["map_i2t"], gzs["unseen"]["map_i2t"]))
    assert gzs["harmonic"]["map_avg"] == pytest.approx(harmonic_mean(gzs["seen"]["map_avg"], gzs["unseen"]["map_avg"]))
    assert harmonic_mean(0.0, 0.0) == 0.0 and harmonic_mean(0.5, 0.5) == pytest.approx(0.5)
    with pytest.raises(DataError, match="no unseen item"):
        zero_shot_report({"image": image[:4], "text": text[:4]}, {"image": hot[:4], "text": hot[:4]}, (2, 3),
                         RetrievalProtocol(), ("image", "text"))


def test_data_config_unseen_classes_filter_training_and_validation_only():
    from tf_xmr.config import from_dict
    from tf_xmr.config.schema import DataConfig
    from tf_xmr.data.from_config import load_feature_set

    synthetic = {"dims": {"image": 8, "text": 4}, "num_train": 100, "num_test": 40, "num_classes": 4}
    config = from_dict(DataConfig, {"unseen_classes": 0.5, "synthetic": synthetic})
    fs = load_feature_set(config, seed=0)
    unseen = resolve_unseen_classes(fs.class_names, 0.5, seed=0)
    for split in ("train", "val"):
        assert not set(fs.splits[split].labels["image"].tolist()) & set(unseen)
    assert set(fs.splits["test"].labels["text"].tolist()) == {0, 1, 2, 3}
    assert fs.class_embeddings.shape[0] == 4  # unseen classes keep their embeddings (side information)
    named = from_dict(DataConfig, {"unseen_classes": ["class_1", 3], "synthetic": synthetic})
    assert set(load_feature_set(named, seed=0).splits["train"].labels["image"].tolist()) == {0, 2}

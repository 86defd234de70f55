"""FeatureSet / Split invariants, validate() errors, stratified splitting, multi-hot and feature statistics."""

import json
import logging

import numpy as np
import pytest

from tf_xmr.data import FeatureSet, Split, feature_stats, split_validation, stratified_split, to_multi_hot
from tf_xmr.errors import DataError


def _split(n=12, dims=(5, 3), num_classes=3, seed=0, paired=True):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    return Split(
        features={"image": rng.standard_normal((n, dims[0])), "text": rng.standard_normal((n, dims[1]))},
        labels={"image": labels, "text": labels},
        paired=paired,
    )


def _feature_set(**splits):
    splits = splits or {"train": _split(12), "test": _split(6, seed=1)}
    return FeatureSet(name="toy", modalities=("image", "text"), class_names=("a", "b", "c"), splits=splits,
                      source="toy.npz")


def _error(fs) -> str:
    with pytest.raises(DataError) as info:
        fs.validate()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_set_passes_and_converts_to_float32_c_contiguous():
    x = np.asfortranarray(np.random.default_rng(0).standard_normal((12, 5)))  # float64, Fortran order
    split = _split(12)
    split = Split(features={"image": x, "text": split.features["text"]}, labels=split.labels)
    fs = _feature_set(train=split).validate()
    image = fs.splits["train"].features["image"]
    assert image.dtype == np.float32 and image.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(image, x, rtol=1e-6)
    assert fs.splits["train"].labels["image"].dtype == np.int64
    assert fs.num_classes == 3 and fs.dims == {"image": 5, "text": 3}
    assert fs.splits["train"].num_examples() == 12 and fs.splits["train"].num_examples("text") == 12


def test_summary_is_json_able():
    summary = _feature_set().summary()
    json.dumps(summary)
    assert summary["dims"] == {"image": 5, "text": 3}
    assert summary["splits"]["test"]["counts"] == {"image": 6, "text": 6}
    assert summary["splits"]["train"]["paired"] is True
    assert summary["classes"] == ["a", "b", "c"] and summary["multi_label"] is False


def test_missing_modality():
    split = _split()
    del split.features["text"]
    message = _error(_feature_set(train=split))
    assert "'train'" in message and "'text'" in message


def test_features_not_2d():
    split = _split()
    split.features["image"] = np.zeros(12, dtype=np.float32)
    message = _error(_feature_set(train=split))
    assert "'image'" in message and "(12,)" in message


def test_features_not_numbers():
    split = _split()
    split.features["text"] = np.array([["x"] * 3] * 12)
    message = _error(_feature_set(train=split))
    assert "'text'" in message and "real numbers" in message


def test_dims_differ_across_splits():
    message = _error(_feature_set(train=_split(12), test=_split(6, dims=(7, 3))))
    assert "'image'" in message and "5" in message and "7" in message and "'test'" in message


def test_nan_rows_named_with_first_row_and_count():
    split = _split()
    split.features["text"][3, 1] = np.nan
    split.features["text"][8, 0] = np.inf
    message = _error(_feature_set(train=split))
    assert "'train'" in message and "'text'" in message
    assert "2 row(s)" in message and "first at row 3" in message


def test_label_count_differs_from_rows():
    split = _split()
    split.labels["image"] = split.labels["image"][:10]
    split.labels["text"] = split.labels["text"][:10]
    message = _error(_feature_set(train=split))
    assert "10 labels" in message and "12 feature rows" in message and "'image'" in message


def test_label_out_of_range_names_value():
    split = _split()
    labels = split.labels["image"].copy()
    labels[4] = 7
    split.labels = {"image": labels, "text": labels}
    message = _error(_feature_set(train=split))
    assert "label 7" in message and "row 4" in message and "[0, 3)" in message


def test_negative_label():
    split = _split()
    labels = split.labels["image"] - 1
    split.labels = {"image": labels, "text": labels}
    assert "label -1" in _error(_feature_set(train=split))


def test_multi_hot_wrong_width():
    split = _split()
    wrong = np.eye(4, dtype=np.float32)[np.arange(12) % 4]
    split.labels = {"image": wrong, "text": wrong}
    message = _error(_feature_set(train=split))
    assert "width 4" in message and "num_classes=3" in message


def test_multi_hot_rows_need_multi_label_flag():
    split = _split()
    labels = np.zeros((12, 3), dtype=np.float32)
    labels[:, 0] = 1
    labels[5, 2] = 1
    split.labels = {"image": labels, "text": labels}
    message = _error(_feature_set(train=split))
    assert "row 5" in message and "multi_label" in message
    fs = _feature_set(train=split)
    fs.multi_label = True
    fs.validate()


def test_paired_split_with_unequal_counts():
    split = _split()
    split.features["text"] = split.features["text"][:9]
    split.labels["text"] = split.labels["text"][:9]
    message = _error(_feature_set(train=split))
    assert "paired" in message and "'image': 12" in message and "'text': 9" in message
    split.paired = False
    _feature_set(train=split).validate()  # fine when unpaired


def test_paired_split_with_disagreeing_labels():
    split = _split()
    split.labels["text"] = split.labels["text"].copy()
    split.labels["text"][2] = 0
    assert "first at row 2" in _error(_feature_set(train=split))


def test_empty_split_is_an_error():
    empty = Split(
        features={"image": np.zeros((0, 5)), "text": np.zeros((0, 3))},
        labels={"image": np.zeros(0, dtype=np.int64), "text": np.zeros(0, dtype=np.int64)},
    )
    message = _error(_feature_set(train=_split(), test=empty))
    assert "'test'" in message and "empty" in message


def test_unknown_split_name_and_reserved_modality():
    assert "'holdout'" in _error(_feature_set(train=_split(), holdout=_split()))
    fs = FeatureSet(name="x", modalities=("image", "labels"), class_names=("a",), splits={"train": _split()})
    assert "reserved" in _error(fs)


def test_bad_class_embeddings():
    fs = _feature_set()
    fs.class_embeddings = np.zeros((4, 2), dtype=np.float32)
    assert "class_embeddings" in _error(fs) and "(4, 2)" in _error(fs)


def test_warns_when_eval_split_has_class_absent_from_train(caplog):
    train = _split(12)
    labels = np.where(train.labels["image"] == 2, 0, train.labels["image"])  # class "c" never in train
    train.labels = {"image": labels, "text": labels}
    with caplog.at_level(logging.WARNING, logger="tf_xmr.data"):
        _feature_set(train=train, test=_split(6)).validate()
    assert any("absent from train" in r.getMessage() and "c" in r.getMessage() for r in caplog.records)


def test_unpaired_num_examples_needs_modality():
    split = _split(paired=False)
    with pytest.raises(DataError):
        split.num_examples()
    assert split.num_examples("text") == 12


# --- stratified splitting ---------------------------------------------------------------------------------------------


def test_stratified_split_counts_per_class():
    counts = [138, 272, 244, 248, 202, 178, 186, 144, 214, 347]  # Wikipedia train class sizes
    labels = np.random.default_rng(3).permutation(np.repeat(np.arange(10), counts))
    keep, held = stratified_split(labels, 0.1, seed=0)
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(labels.size))
    assert np.all(np.diff(keep) > 0) and np.all(np.diff(held) > 0)
    held_counts = np.bincount(labels[held], minlength=10)
    expected = np.floor(0.1 * np.asarray(counts) + 0.5).astype(int)
    np.testing.assert_array_equal(held_counts, expected)


def test_stratified_split_small_classes():
    labels = np.array([0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2])  # class 0: 2 items, class 1: 1 item
    keep, held = stratified_split(labels, 0.1, seed=1)
    assert np.bincount(labels[held], minlength=3).tolist() == [1, 0, 1]  # >= 1 per class with >= 2 items
    assert 1 in labels[keep]  # a singleton class stays in the kept part
    keep0, held0 = stratified_split(labels, 0.0, seed=1)
    assert held0.size == 0 and keep0.size == labels.size


def test_stratified_split_is_seeded():
    labels = np.arange(200) % 7
    a = stratified_split(labels, 0.2, seed=5)
    b = stratified_split(labels, 0.2, seed=5)
    c = stratified_split(labels, 0.2, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])


def test_stratified_split_multi_hot_uses_first_label():
    labels = np.zeros((40, 3), dtype=np.float32)
    labels[:20, 0] = 1
    labels[20:, 1] = 1
    labels[::2, 2] = 1  # extra labels do not change the stratum
    keep, held = stratified_split(labels, 0.25, seed=0)
    assert (held < 20).sum() == 5 and (held >= 20).sum() == 5


def test_stratified_split_rejects_bad_fraction():
    with pytest.raises(DataError, match="fraction"):
        stratified_split(np.arange(10) % 2, 1.0, seed=0)


def test_split_validation_keeps_rows_aligned():
    split = _split(30)
    train, val = split_validation(split, 0.2, seed=0)
    assert train.num_examples() + val.num_examples() == 30
    assert val.num_examples() == 6  # 2 per class
    # Every val row is an original row, in every modality at the same index.
    rows = [int(np.flatnonzero((split.features["image"] == r).all(axis=1))[0]) for r in val.features["image"]]
    np.testing.assert_array_equal(split.features["text"][rows], val.features["text"])
    np.testing.assert_array_equal(split.labels["image"][rows], val.labels["image"])
    with pytest.raises(DataError, match="paired"):
        split_validation(_split(paired=False), 0.2, seed=0)


def test_to_multi_hot():
    out = to_multi_hot(np.array([2, 0, 1]), 3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.eye(3, dtype=np.float32)[[2, 0, 1]])
    np.testing.assert_array_equal(to_multi_hot(out, 3), out)
    with pytest.raises(DataError, match="label 3"):
        to_multi_hot(np.array([3]), 3)
    with pytest.raises(DataError, match="width 3"):
        to_multi_hot(out, 4)


def test_feature_stats_in_memory():
    split = _split(50)
    mean, std = feature_stats(split, "image")
    assert mean.dtype == np.float32 and mean.shape == (5,) and std.shape == (5,)
    np.testing.assert_allclose(mean, split.features["image"].astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, split.features["image"].astype(np.float64).std(0), rtol=1e-5)
    with pytest.raises(DataError, match="'audio'"):
        feature_stats(split, "audio")

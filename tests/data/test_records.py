"""TFRecord storage: round trip through make_dataset, sidecar contents, atomic writes, unpaired splits, errors."""

import json
import os

import numpy as np
import pytest

from tf_xmr.data import (
    FeatureSet,
    RecordSplit,
    Split,
    feature_stats,
    load_records,
    make_dataset,
    make_synthetic,
    write_records,
)
from tf_xmr.errors import DataError


@pytest.fixture(scope="module")
def small():
    # 47 train items over 4 shards and batch 8: neither divides evenly.
    return make_synthetic(dims={"image": 12, "text": 5}, num_train=53, num_test=23, num_classes=4,
                          class_embedding_dim=6, seed=1)


@pytest.fixture(scope="module")
def written(small, tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "small"
    write_records(small, str(out), num_shards=4)
    return str(out)


def _collect(ds):
    batches = list(ds.as_numpy_iterator())
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}, [len(b["labels"]) for b in batches]


def test_round_trip_equals_in_memory_pipeline(small, written):
    loaded = load_records(written)
    assert loaded.modalities == small.modalities and loaded.class_names == small.class_names
    assert loaded.dims == small.dims
    for split_name in small.splits:
        mem_split, rec_split = small.splits[split_name], loaded.splits[split_name]
        assert isinstance(rec_split, RecordSplit) and rec_split.num_examples() == mem_split.num_examples()
        kwargs = dict(batch_size=8, num_classes=small.num_classes)
        mem_ds, rec_ds = make_dataset(mem_split, **kwargs), make_dataset(rec_split, **kwargs)
        assert mem_ds.element_spec == rec_ds.element_spec
        mem_batches, rec_batches = list(mem_ds.as_numpy_iterator()), list(rec_ds.as_numpy_iterator())
        assert len(mem_batches) == len(rec_batches)
        for a, b in zip(mem_batches, rec_batches, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].dtype == b[key].dtype == np.float32
                np.testing.assert_array_equal(a[key], b[key])


def test_round_trip_with_drop_remainder_has_same_static_spec(small, written):
    loaded = load_records(written)
    kwargs = dict(batch_size=8, num_classes=4, drop_remainder=True)
    mem_ds, rec_ds = make_dataset(small.splits["test"], **kwargs), make_dataset(loaded.splits["test"], **kwargs)
    assert mem_ds.element_spec == rec_ds.element_spec
    assert rec_ds.element_spec["image"].shape.as_list() == [8, 12]
    assert sum(1 for _ in rec_ds) == 23 // 8


def test_sidecar_contents(small, written):
    meta = json.load(open(os.path.join(written, "dataset.json")))
    assert meta["format_version"] == 1 and meta["name"] == "synthetic"
    assert meta["modalities"] == ["image", "text"] and meta["dims"] == {"image": 12, "text": 5}
    assert meta["class_names"] == list(small.class_names) and meta["multi_label"] is False
    assert meta["num_shards"] == 4
    for split_name, split in small.splits.items():
        info = meta["splits"][split_name]
        n = split.num_examples()
        assert info["paired"] is True and info["counts"] == {"image": n, "text": n}
        assert sum(info["class_counts"]["image"]) == split.num_examples()
    for m in small.modalities:
        mean, std = feature_stats(small.splits["train"], m)
        np.testing.assert_array_equal(np.asarray(meta["feature_stats"]["train"][m]["mean"], np.float32), mean)
        np.testing.assert_array_equal(np.asarray(meta["feature_stats"]["train"][m]["std"], np.float32), std)
        rec_mean, rec_std = feature_stats(load_records(written).splits["train"], m)
        np.testing.assert_array_equal(rec_mean, mean)
        np.testing.assert_array_equal(rec_std, std)
    np.testing.assert_array_equal(np.asarray(meta["class_embeddings"], np.float32), small.class_embeddings)
    np.testing.assert_array_equal(load_records(written).class_embeddings, small.class_embeddings)
    names = sorted(os.listdir(written))
    assert "train-00000-of-00004.tfrecord" in names and "test-00003-of-00004.tfrecord" in names
    assert len(names) == 1 + 3 * 4


def test_record_split_file_pattern(written):
    split = load_records(written).splits["val"]
    assert split.file_pattern() == os.path.join(written, "val-*-of-00004.tfrecord")
    assert split.file_pattern("image") == split.file_pattern()
    assert len(split.files()) == 4


def test_refuses_to_overwrite_and_leaves_nothing_behind(small, written, tmp_path):
    before = sorted(os.listdir(written))
    with pytest.raises(DataError, match="refusing to overwrite"):
        write_records(small, written)
    assert sorted(os.listdir(written)) == before
    assert not [n for n in os.listdir(os.path.dirname(written)) if ".tmp-" in n]
    empty = tmp_path / "empty"
    empty.mkdir()
    write_records(small, str(empty), num_shards=1)  # an empty directory may be filled
    assert load_records(str(empty)).splits["test"].num_examples() == 23
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_failed_write_leaves_no_output(small, tmp_path, monkeypatch):
    import tf_xmr.data.records as records

    calls = []
    real = records._write_family

    def fail_on_second_split(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(records, "_write_family", fail_on_second_split)
    with pytest.raises(OSError, match="disk full"):
        write_records(small, str(tmp_path / "out"))
    assert calls == ["train", "val"] and os.listdir(tmp_path) == []  # neither out nor a temp dir remains


def test_only_in_memory_splits_can_be_written(small, written, tmp_path):
    with pytest.raises(DataError, match="in-memory"):
        write_records(load_records(written), str(tmp_path / "again"))
    with pytest.raises(DataError, match="num_shards"):
        write_records(small, str(tmp_path / "zero"), num_shards=0)
    assert os.listdir(tmp_path) == []


def test_records_shuffle_and_repeat(small, written):
    split = load_records(written).splits["train"]
    n = split.num_examples()
    ds = make_dataset(split, batch_size=8, num_classes=4, shuffle=True, seed=3, modalities=["image"])
    original = small.splits["train"].features["image"]
    epochs = []
    for _ in range(2):
        got, sizes = _collect(ds)
        assert sizes[-1] == n % 8
        order = [int(np.flatnonzero((original == row).all(1))[0]) for row in got["image"]]
        assert sorted(order) == list(range(n))  # every item exactly once per epoch
        epochs.append(order)
    assert epochs[0] != epochs[1] and epochs[0] != list(range(n))
    again, _ = _collect(make_dataset(split, batch_size=8, num_classes=4, shuffle=True, seed=3, modalities=["image"]))
    np.testing.assert_array_equal(again["image"], original[epochs[0]])
    repeated = list(make_dataset(split, batch_size=8, num_classes=4, repeat=True).take(20).as_numpy_iterator())
    assert len(repeated) == 20 and all(len(b["labels"]) == 8 for b in repeated)


def _unpaired_set():
    rng = np.random.default_rng(0)
    train = Split(features={"image": rng.random((10, 3)), "text": rng.random((7, 2))},
                  labels={"image": np.arange(10) % 2, "text": np.arange(7) % 2}, paired=False)
    return FeatureSet(name="unpaired", modalities=("image", "text"), class_names=("a", "b"), splits={"train": train})


def test_unpaired_split_one_file_family_per_modality(tmp_path):
    fs = _unpaired_set()
    out = write_records(fs, str(tmp_path / "u"), num_shards=2)
    names = sorted(os.listdir(out))
    assert "train.image-00000-of-00002.tfrecord" in names and "train.text-00001-of-00002.tfrecord" in names
    split = load_records(out).splits["train"]
    assert not split.paired and split.num_examples("image") == 10 and split.num_examples("text") == 7
    with pytest.raises(DataError, match="modality"):
        split.num_examples()
    for m in ("image", "text"):
        got, _ = _collect(make_dataset(split, batch_size=4, num_classes=2, modalities=[m]))
        assert set(got) == {m, "labels"}
        np.testing.assert_array_equal(got[m], fs.splits["train"].features[m])
        np.testing.assert_array_equal(got["labels"].argmax(1), fs.splits["train"].labels[m])
    with pytest.raises(DataError, match="exactly one"):
        make_dataset(split, batch_size=4, num_classes=2)
    with pytest.raises(DataError, match="exactly one"):
        make_dataset(split, batch_size=4, num_classes=2, modalities=["image", "text"])


def test_multi_label_round_trip(tmp_path):
    fs = make_synthetic(dims={"image": 6, "text": 4}, num_train=40, num_test=20, num_classes=3, multi_label=True)
    loaded = load_records(write_records(fs, str(tmp_path / "ml"), num_shards=3))
    assert loaded.multi_label
    got, _ = _collect(make_dataset(loaded.splits["test"], batch_size=6, num_classes=3))
    np.testing.assert_array_equal(got["labels"], fs.splits["test"].labels["image"])
    np.testing.assert_array_equal(got["text"], fs.splits["test"].features["text"])


def _load_error(root) -> str:
    with pytest.raises(DataError) as info:
        load_records(root)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_load_errors(written, tmp_path):
    assert "not found" in _load_error(str(tmp_path / "nope"))
    (tmp_path / "bare").mkdir()
    assert "dataset.json" in _load_error(str(tmp_path / "bare"))

    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(written, copy)
    meta = json.load(open(copy / "dataset.json"))
    del meta["dims"]
    json.dump(meta, open(copy / "dataset.json", "w"))
    assert "'dims'" in _load_error(str(copy))

    (copy / "dataset.json").write_text("{not json")
    assert "dataset.json" in _load_error(str(copy))

    shutil.rmtree(copy)
    shutil.copytree(written, copy)
    os.remove(copy / "val-00002-of-00004.tfrecord")
    assert "val-00002-of-00004.tfrecord" in _load_error(str(copy))
    for name in os.listdir(copy):
        if name.startswith("val-"):
            os.remove(copy / name)
    assert "no shard files" in _load_error(str(copy))


def test_item_ids_round_trip_and_key_gallery_items(small, tmp_path):
    """Ids stored beside the shards come back as the split's keys (a retrieval gallery answers with them) and a
    records split streams into the same gallery items as the in-memory one; splits without ids are keyed by row."""
    from tf_xmr.retrieval.index import dataset_items

    test = small.splits["test"]
    ids = {"image": np.asarray([f"img-{i:03d}" for i in range(test.num_examples())]),
           "text": np.asarray([f"caption {i}" for i in range(test.num_examples())])}
    with_ids = small.replace(splits={**small.splits, "test": Split(test.features, test.labels, ids=ids)})
    out = write_records(with_ids, str(tmp_path / "ids"), num_shards=3)
    assert json.load(open(os.path.join(out, "dataset.json")))["splits"]["test"]["ids"] == ["image", "text"]
    loaded = load_records(out)
    np.testing.assert_array_equal(loaded.splits["test"].keys("text", "test"), ids["text"])
    assert loaded.splits["train"].keys("image", "train")[:2].tolist() == ["train/0", "train/1"]
    streamed, held = dataset_items(loaded, "image", "test"), dataset_items(with_ids, "image", "test")
    np.testing.assert_array_equal(streamed.features, held.features)
    np.testing.assert_array_equal(streamed.keys, held.keys)
    np.testing.assert_array_equal(streamed.classes, held.classes)
    os.remove(os.path.join(out, "test.text.ids"))
    with pytest.raises(DataError, match="ids file missing: .*test.text.ids"):
        load_records(out)
    bad = small.replace(splits={"test": Split(test.features, test.labels, ids={"image": np.asarray(
        ["a\nb"] + ["x"] * (test.num_examples() - 1))})})
    with pytest.raises(DataError, match="contains a line break"):
        write_records(bad, str(tmp_path / "bad"))
    assert not os.path.exists(tmp_path / "bad")

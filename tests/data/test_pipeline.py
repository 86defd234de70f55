"""make_dataset over in-memory splits: element structure, order, partial batches, shuffling, repetition."""

import numpy as np
import pytest

from tf_xmr.data import Split, make_dataset, to_multi_hot
from tf_xmr.errors import DataError

N = 23  # not divisible by the batch size below


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(0)
    labels = np.arange(N) % 3
    return Split(features={"image": rng.random((N, 4)), "text": rng.random((N, 2))},
                 labels={"image": labels, "text": labels})


def _batches(ds):
    return list(ds.as_numpy_iterator())


def test_elements_are_dicts_of_float32_with_multi_hot_labels(split):
    ds = make_dataset(split, batch_size=5, num_classes=3)
    spec = ds.element_spec
    assert set(spec) == {"image", "text", "labels"}
    assert spec["image"].shape.as_list() == [None, 4] and spec["labels"].shape.as_list() == [None, 3]
    assert all(s.dtype.name == "float32" for s in spec.values())
    first = _batches(ds)[0]
    np.testing.assert_array_equal(first["labels"], to_multi_hot(split.labels["image"][:5], 3))


def test_never_drops_the_last_partial_batch_and_keeps_order(split):
    batches = _batches(make_dataset(split, batch_size=5, num_classes=3))
    assert [len(b["image"]) for b in batches] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches]), split.features["image"])
    np.testing.assert_array_equal(np.concatenate([b["text"] for b in batches]), split.features["text"])


def test_drop_remainder_gives_static_full_batches(split):
    ds = make_dataset(split, batch_size=5, num_classes=3, drop_remainder=True)
    assert ds.element_spec["text"].shape.as_list() == [5, 2]
    assert [len(b["image"]) for b in _batches(ds)] == [5, 5, 5, 5]


def test_modality_subset_and_errors(split):
    ds = make_dataset(split, batch_size=4, num_classes=3, modalities=["text"])
    assert set(ds.element_spec) == {"text", "labels"}
    with pytest.raises(DataError, match="'audio'"):
        make_dataset(split, batch_size=4, num_classes=3, modalities=["audio"])
    with pytest.raises(DataError, match="batch_size"):
        make_dataset(split, batch_size=0, num_classes=3)
    with pytest.raises(DataError, match="outside"):
        make_dataset(split, batch_size=4, num_classes=2)


def test_shuffle_is_a_seeded_permutation_reshuffled_each_epoch(split):
    ds = make_dataset(split, batch_size=5, num_classes=3, shuffle=True, seed=7)
    epoch1 = np.concatenate([b["image"] for b in _batches(ds)])
    epoch2 = np.concatenate([b["image"] for b in _batches(ds)])
    order = lambda x: [int(np.flatnonzero((split.features["image"] == row).all(1))[0]) for row in x]  # noqa: E731
    assert sorted(order(epoch1)) == list(range(N)) and sorted(order(epoch2)) == list(range(N))
    assert order(epoch1) != order(epoch2) and order(epoch1) != list(range(N))
    again = np.concatenate([b["image"] for b in _batches(make_dataset(split, batch_size=5, num_classes=3,
                                                                         shuffle=True, seed=7))])
    np.testing.assert_array_equal(again, epoch1)


def test_repeat_runs_indefinitely(split):
    ds = make_dataset(split, batch_size=5, num_classes=3, repeat=True)
    batches = _batches(ds.take(12))  # 60 items > 2 epochs
    assert len(batches) == 12 and all(len(b["image"]) == 5 for b in batches)
    np.testing.assert_array_equal(batches[4]["image"][:3], split.features["image"][20:])
    np.testing.assert_array_equal(batches[4]["image"][3:], split.features["image"][:2])


def test_unpaired_split_needs_one_modality():
    split = Split(features={"image": np.zeros((4, 2)), "text": np.zeros((3, 2))},
                  labels={"image": np.zeros(4, np.int64), "text": np.zeros(3, np.int64)}, paired=False)
    with pytest.raises(DataError, match="exactly one"):
        make_dataset(split, batch_size=2, num_classes=1)
    batches = _batches(make_dataset(split, batch_size=2, num_classes=1, modalities="text"))
    assert [len(b["text"]) for b in batches] == [2, 1]


def test_every_pipeline_runs_without_the_tf_data_autotuner(split, tmp_path):
    """Issue 20: an autotuned iterator's model thread can hold up its destruction (and so Keras fit's return) for the
    rest of its optimisation period, up to 60 s; the pipelines here switch the tuner off, in memory and for records,
    for evaluation passes and for the resumable training stream (whatever a model's hook adds on top keeps it)."""
    from tf_xmr.data import load_records, make_synthetic, make_training_stream, write_records

    write_records(make_synthetic(num_train=40, num_test=10, dims={"image": 4, "text": 3}, seed=0), str(tmp_path),
                  num_shards=2)
    records = load_records(str(tmp_path)).splits["train"]
    pipelines = {
        "memory pass": make_dataset(split, batch_size=5, num_classes=3),
        "memory stream": make_training_stream(split, batch_size=5, num_classes=3, seed=1, first_epoch=1, epochs=3),
        "records pass": make_dataset(records, batch_size=5, num_classes=10, shuffle=True, seed=2),
        "records stream": make_training_stream(records, batch_size=5, num_classes=10, seed=1, first_epoch=0,
                                               epochs=2),
    }
    pipelines["memory stream, mapped"] = pipelines["memory stream"].map(lambda batch: batch)
    assert {name: ds.options().autotune.enabled for name, ds in pipelines.items()} == dict.fromkeys(pipelines, False)

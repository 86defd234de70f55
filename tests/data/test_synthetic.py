"""The synthetic benchmark: seeded, shaped as asked, class-structured but not trivially separable."""

import time

import numpy as np
import pytest

from tf_xmr.data import make_synthetic
from tf_xmr.errors import DataError

SMALL = dict(dims={"image": 64, "text": 16}, num_train=200, num_test=80, num_classes=5)


def _arrays(fs):
    out = {}
    for split_name, split in fs.splits.items():
        for m in fs.modalities:
            out[split_name, m, "x"] = split.features[m]
            out[split_name, m, "y"] = split.labels[m]
    out["class_embeddings"] = fs.class_embeddings
    return out


def test_same_seed_gives_byte_identical_arrays():
    a, b = _arrays(make_synthetic(seed=3, **SMALL)), _arrays(make_synthetic(seed=3, **SMALL))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key
    c = _arrays(make_synthetic(seed=4, **SMALL))
    assert a["train", "image", "x"].tobytes() != c["train", "image", "x"].tobytes()


def test_default_shapes_match_wikipedia_sizes():
    start = time.perf_counter()
    fs = make_synthetic()
    assert time.perf_counter() - start < 10
    assert fs.name == "synthetic" and fs.modalities == ("image", "text")
    assert fs.dims == {"image": 4096, "text": 300} and fs.num_classes == 10
    counts = {s: fs.splits[s].num_examples() for s in fs.splits}
    assert counts["train"] + counts["val"] == 2173 and counts["test"] == 693
    assert abs(counts["val"] - 217) <= 5
    for split in fs.splits.values():
        assert split.paired
        for m in fs.modalities:
            assert split.features[m].dtype == np.float32 and split.features[m].flags["C_CONTIGUOUS"]
            assert split.labels[m].dtype == np.int64
    sizes = np.bincount(fs.splits["test"].labels["image"], minlength=10)
    assert sizes.min() >= 1 and sizes.max() / sizes.min() > 1.3  # unequal class sizes


def test_class_structured_but_not_trivially_separable():
    fs = make_synthetic(dims={"image": 256, "text": 64}, seed=0)
    train, test = fs.splits["train"], fs.splits["test"]
    for m in fs.modalities:
        mean, std = train.features[m].mean(0), train.features[m].std(0) + 1e-6
        z_train, z_test = (train.features[m] - mean) / std, (test.features[m] - mean) / std
        centroids = np.stack([z_train[train.labels[m] == k].mean(0) for k in range(fs.num_classes)])
        predicted = np.argmax(z_test @ centroids.T - 0.5 * (centroids**2).sum(1), axis=1)
        accuracy = float((predicted == test.labels[m]).mean())
        assert 0.25 < accuracy < 0.95, (m, accuracy)  # chance is ~0.1


def test_any_number_of_modalities():
    dims = {"image": 20, "text": 8, "audio": 12, "video": 6}
    fs = make_synthetic(dims=dims, num_train=100, num_test=40, num_classes=4)
    assert fs.modalities == tuple(dims) and fs.dims == dims
    for split in fs.splits.values():
        n = {split.num_examples(m) for m in dims}
        assert len(n) == 1
    # Each modality sees the items through its own map: no two are copies of each other.
    x = fs.splits["train"].features
    assert not np.allclose(x["image"][:, :6], x["video"])


def test_needs_two_modalities():
    with pytest.raises(DataError, match="two modalities"):
        make_synthetic(dims={"image": 10})


def test_multi_label():
    fs = make_synthetic(multi_label=True, **SMALL)
    assert fs.multi_label
    y = fs.splits["train"].labels["image"]
    assert y.dtype == np.float32 and y.shape == (fs.splits["train"].num_examples(), 5)
    per_item = y.sum(1)
    assert per_item.min() >= 1 and per_item.max() <= 3 and (per_item > 1).mean() > 0.2
    np.testing.assert_array_equal(fs.splits["test"].labels["text"], fs.splits["test"].labels["image"])


def test_class_embeddings():
    fs = make_synthetic(class_embedding_dim=12, **SMALL)
    e = fs.class_embeddings
    assert e.shape == (5, 12) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    assert make_synthetic(class_embedding_dim=None, **SMALL).class_embeddings is None


def test_no_val_split_when_fraction_zero():
    fs = make_synthetic(val_fraction=0.0, **SMALL)
    assert set(fs.splits) == {"train", "test"} and fs.splits["train"].num_examples() == 200

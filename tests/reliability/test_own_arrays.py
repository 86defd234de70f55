"""Issue 17 item 8: bringing your own arrays through the config, on small generated .mat / .npz / v7.3 files.

``data.arrays.transpose`` is a config key (the loader's row-count error tells users to set it); splits may be index
vectors into one matrix per modality; keys may be dotted paths into a MATLAB struct; one-hot labels, three named
modalities and class names load as documented; and class embeddings from word vectors refuse placeholder class names.
"""

import os

import h5py
import numpy as np
import pytest
import scipy.io

from tests.conftest import run_in_process
from tf_xmr.config import from_dict
from tf_xmr.config.schema import DataConfig
from tf_xmr.data.from_config import load_feature_set
from tf_xmr.errors import ConfigError, DataError

RNG = np.random.default_rng(7)
N, NUM_CLASSES = 30, 3
IMAGE, TEXT, AUDIO = RNG.random((N, 6)), RNG.random((N, 4)), RNG.random((N, 5))
LABELS = np.arange(N) % NUM_CLASSES
TRAIN_ROWS = np.array([0, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 23])  # 0-based, every class
TEST_ROWS = np.array([1, 4, 7, 10, 13, 16, 19, 22, 25, 28])


def _config(**arrays) -> DataConfig:
    return from_dict(DataConfig, {"source": "arrays", "val_fraction": 0.25, "arrays": arrays})


def _load(**arrays):
    return load_feature_set(_config(**arrays), seed=0)


def _error(kind, **arrays) -> str:
    with pytest.raises(kind) as info:
        _load(**arrays)
    message = str(info.value)
    assert "\n" not in message
    return message


def _same_keys(**keys):
    return {"train": dict(keys), "test": dict(keys)}


def _matlab_struct_file(path):
    """One scalar struct ``data`` as MATLAB's save writes it: doubles, 1-based labels and 1-based row-vector indices."""
    scipy.io.savemat(path, {"data": {
        "X1": IMAGE, "X2": TEXT, "Y": (LABELS + 1.0)[:, None],
        "train_idx": (TRAIN_ROWS + 1.0)[None, :], "test_idx": (TEST_ROWS + 1.0)[None, :],
    }})
    return str(path)


STRUCT_KEYS = _same_keys(image="data.X1", text="data.X2", labels="data.Y")
STRUCT_INDICES = {"train": "data.train_idx", "test": "data.test_idx"}


def _assert_rows(fs, split_rows):
    """Every item of each split is the row of the source matrices its index vector named."""
    train_val = np.concatenate([fs.splits["train"].features["image"], fs.splits["val"].features["image"]])
    expected = {tuple(np.float32(IMAGE[r])) for r in split_rows["train"]}
    assert {tuple(row) for row in train_val} == expected and len(train_val) == len(expected)
    np.testing.assert_array_equal(fs.splits["test"].features["text"], TEXT[split_rows["test"]].astype(np.float32))
    np.testing.assert_array_equal(fs.splits["test"].labels["image"], LABELS[split_rows["test"]])


# ---------------------------------------------------------------------------------------------------- transpose


def test_transpose_is_a_config_key_and_the_hint_names_it(tmp_path):
    path = str(tmp_path / "columns.npz")
    np.savez(path, img=IMAGE.T, txt=TEXT.T, y=LABELS)  # items as columns, as MATLAB code often saves them
    keys = {"train": {"image": "img", "text": "txt", "labels": "y"}}
    message = _error(DataError, paths={"train": path}, keys=keys)
    assert "'img' has 6 rows but labels key 'y' has 30 items" in message
    assert "set data.arrays.transpose: true" in message
    fs = _load(paths={"train": path}, keys=keys, transpose=True)  # what the message says, as a config key
    assert fs.dims == {"image": 6, "text": 4}
    assert fs.splits["train"].num_examples() + fs.splits["val"].num_examples() == N


def test_transpose_accepts_only_auto_true_false():
    with pytest.raises(ConfigError, match="'arrays.transpose' must be a bool .* or one of 'auto'"):
        _config(paths={"train": "x.npz"}, keys={"train": {"image": "a", "labels": "y"}}, transpose="yes")


# ---------------------------------------------------------------------------------------------------- struct keys


def test_keys_inside_a_matlab_v5_struct_and_index_vector_splits(tmp_path):
    path = _matlab_struct_file(tmp_path / "all.mat")
    fs = _load(paths={"train": path, "test": path}, keys=STRUCT_KEYS, indices=STRUCT_INDICES, index_base=1,
               label_base=1, class_names=["cat", "dog", "bird"])
    assert fs.class_names == ("cat", "dog", "bird") and fs.modalities == ("image", "text")
    assert fs.splits["test"].num_examples() == len(TEST_ROWS)
    _assert_rows(fs, {"train": TRAIN_ROWS, "test": TEST_ROWS})


def test_keys_inside_a_matlab_v73_struct(tmp_path):
    """v7.3: the struct is an HDF5 group, matrices stored column-major (transposed), behind MATLAB's header."""
    path = tmp_path / "all73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        group = f.create_group("data")
        for key, value in {"X1": IMAGE, "X2": TEXT, "Y": (LABELS + 1.0)[:, None],
                           "train_idx": (TRAIN_ROWS + 1.0)[:, None], "test_idx": (TEST_ROWS + 1.0)[:, None]}.items():
            group.create_dataset(key, data=np.asarray(value).T)
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116) + b"\x00" * 8 + b"\x00\x02IM")
    fs = _load(paths={"train": str(path), "test": str(path)}, keys=STRUCT_KEYS, indices=STRUCT_INDICES,
               index_base=1, label_base=1)
    _assert_rows(fs, {"train": TRAIN_ROWS, "test": TEST_ROWS})
    message = _error(DataError, paths={"train": str(path)}, keys={"train": {"image": "data", "labels": "data.Y"}},
                     label_base=1)
    assert "'data'" in message and "is a group (a MATLAB struct?)" in message and "X1" in message


def test_struct_key_errors_name_the_fields(tmp_path):
    path = _matlab_struct_file(tmp_path / "all.mat")
    paths = {"train": path}
    missing = _error(DataError, paths=paths, keys={"train": {"image": "data.X9", "labels": "data.Y"}}, label_base=1)
    assert missing == (f"arrays: key 'data.X9' missing from {path}: struct 'data' has fields X1, X2, Y, train_idx, "
                       f"test_idx")
    whole = _error(DataError, paths=paths, keys={"train": {"image": "data", "labels": "data.Y"}}, label_base=1)
    assert "key 'data'" in whole and "is a MATLAB struct with fields X1, X2" in whole and "data.X1" in whole
    listed = _error(DataError, paths=paths, keys={"train": {"image": "X1", "labels": "data.Y"}}, label_base=1)
    assert "keys present: data.X1, data.X2, data.Y, data.test_idx, data.train_idx" in listed


# ---------------------------------------------------------------------------------------------------- index vectors


def _index_file(tmp_path, **indices):
    path = str(tmp_path / "indexed.npz")
    np.savez(path, img=IMAGE, txt=TEXT, y=LABELS, **indices)
    return path


INDEX_KEYS = _same_keys(image="img", text="txt", labels="y")


def test_zero_based_index_vectors_in_npz(tmp_path):
    path = _index_file(tmp_path, tr=TRAIN_ROWS, te=TEST_ROWS.astype(np.float64))  # whole-number floats are fine
    fs = _load(paths={"train": path, "test": path}, keys=INDEX_KEYS, indices={"train": "tr", "test": "te"})
    _assert_rows(fs, {"train": TRAIN_ROWS, "test": TEST_ROWS})


def test_one_based_indices_without_index_base_get_a_hint(tmp_path):
    path = _index_file(tmp_path, tr=TRAIN_ROWS + 1, te=np.array([1, N]))
    message = _error(DataError, paths={"train": path, "test": path}, keys=INDEX_KEYS,
                     indices={"train": "tr", "test": "te"})
    assert f"key 'te' (split 'test') hold {N}, outside [0, {N})" in message
    assert "they look 1-based (MATLAB): set data.arrays.index_base: 1" in message


@pytest.mark.parametrize("indices, says", [
    ({"tr": TRAIN_ROWS, "te": np.append(TEST_ROWS, 3)}, "splits 'train' and 'test' share 1 row(s)"),
    ({"tr": np.append(TRAIN_ROWS, 0), "te": TEST_ROWS}, "name row 0 2 times"),
    ({"tr": TRAIN_ROWS, "te": np.arange(N) % 2 == 0}, "are booleans (a mask)"),
    ({"tr": TRAIN_ROWS, "te": TEST_ROWS + 0.5}, "must be whole numbers"),
    ({"tr": TRAIN_ROWS, "te": np.ones((2, 3), np.int64)}, "must be a vector of row numbers, got shape (2, 3)"),
    ({"tr": TRAIN_ROWS, "te": np.array([-1, 4])}, "hold -1, outside [0, 30)"),
])
def test_bad_index_vectors_are_one_line(tmp_path, indices, says):
    path = _index_file(tmp_path, **indices)
    message = _error(DataError, paths={"train": path, "test": path}, keys=INDEX_KEYS,
                     indices={"train": "tr", "test": "te"})
    assert says in message and path in message


def test_indices_for_an_unknown_split(tmp_path):
    path = _index_file(tmp_path, tr=TRAIN_ROWS)
    message = _error(DataError, paths={"train": path}, keys={"train": INDEX_KEYS["train"]}, indices={"test": "tr"})
    assert "indices name split 'test'" in message


# ------------------------------------------------------------------------------------------------ documented layouts


def test_one_hot_labels_three_named_modalities_and_class_names(tmp_path):
    path = str(tmp_path / "three.npz")
    np.savez(path, a=IMAGE, b=TEXT, c=AUDIO, onehot=np.eye(NUM_CLASSES)[LABELS])
    keys = {"train": {"image": "a", "text": "b", "audio": "c", "labels": "onehot"}}
    fs = _load(paths={"train": path}, keys=keys, class_names=["cat", "dog", "bird"])
    assert fs.modalities == ("image", "text", "audio") and fs.dims == {"image": 6, "text": 4, "audio": 5}
    assert not fs.multi_label and fs.class_names == ("cat", "dog", "bird")
    assert fs.splits["train"].labels["audio"].dtype == np.int64  # one-hot rows read as class ids


# ---------------------------------------------------------------------------------------------------- placeholder names


def _word_vectors(tmp_path):
    path = tmp_path / "words.txt"  # GloVe text: every word a placeholder name would be split into, and real names
    path.write_text("class 1 0\n0 0 1\n1 1 1\n2 2 2\ncat 3 1\ndog 1 3\nbird 2 2\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("source", ["glove_6b_50d", "word_vectors"])
def test_word_vector_class_embeddings_refuse_placeholder_names(tmp_path, source):
    path = _index_file(tmp_path)
    config = {"paths": {"train": path}, "keys": {"train": INDEX_KEYS["train"]}}
    data = from_dict(DataConfig, {"source": "arrays", "arrays": config,
                                  "class_embeddings": {"source": source, "path": _word_vectors(tmp_path)}})
    with pytest.raises(ConfigError) as info:
        load_feature_set(data, seed=0)
    message = str(info.value)
    assert message == (
        f"data.class_embeddings.source is {source!r}, which embeds the class names, but 3 of the 3 classes have "
        f"placeholder names (class_0, class_1, class_2) because the data names none; name the classes in label "
        f"order (data.arrays.class_names: [cat, dog, ...] for arrays files) or use data.class_embeddings.source: "
        f"one_hot"
    )


def test_named_classes_and_one_hot_still_embed(tmp_path):
    path = _index_file(tmp_path)
    arrays = {"paths": {"train": path}, "keys": {"train": INDEX_KEYS["train"]}}
    words = _word_vectors(tmp_path)
    named = from_dict(DataConfig, {"source": "arrays", "arrays": {**arrays, "class_names": ["cat", "dog", "bird"]},
                                   "class_embeddings": {"source": "word_vectors", "path": words}})
    np.testing.assert_array_equal(load_feature_set(named, seed=0).class_embeddings, [[3, 1], [1, 3], [2, 2]])
    one_hot = from_dict(DataConfig, {"source": "arrays", "arrays": arrays, "class_embeddings": {"source": "one_hot"}})
    np.testing.assert_array_equal(load_feature_set(one_hot, seed=0).class_embeddings, np.eye(3))


def test_jfse_with_glove_and_placeholder_names_stops_before_writing(tmp_path, capsys, monkeypatch):
    # train.py's main() in this process (its one-line errors in a fresh process: tests/training/test_train_cli.py).
    path = _index_file(tmp_path, tr=TRAIN_ROWS, te=TEST_ROWS)
    run_dir = tmp_path / "run"
    result = run_in_process(
        capsys, monkeypatch, "train.py", "--config", "configs/jfse.yaml", "--set", f"run_dir={run_dir}",
        "--set", "data.source=arrays", "--set", f"data.arrays.paths={{train: {path}, test: {path}}}",
        "--set", "data.arrays.keys={train: {image: img, text: txt, labels: y}, "
                 "test: {image: img, text: txt, labels: y}}",
        "--set", "data.arrays.indices={train: tr, test: te}", "--set", "data.class_embeddings.source=glove_6b_50d")
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "placeholder names (class_0, class_1, class_2)" in errors[0]
    assert "data.arrays.class_names" in errors[0] and "one_hot" in errors[0]
    assert "Traceback" not in result.stderr and not os.path.exists(run_dir)

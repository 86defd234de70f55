"""load_arrays over .mat v5, .mat v7.3 (HDF5 in MATLAB column-major layout), .h5 and .npz files."""


import h5py
import numpy as np
import pytest
import scipy.io

from tf_xmr.data import load_arrays
from tf_xmr.errors import DataError

RNG = np.random.default_rng(0)
X_TR, T_TR, Y_TR = RNG.random((40, 6)), RNG.random((40, 4)), np.arange(40) % 4
X_TE, T_TE, Y_TE = RNG.random((16, 6)), RNG.random((16, 4)), np.arange(16) % 4
KEYS = {
    "train": {"image": "I_tr", "text": "T_tr", "labels": "L_tr"},
    "test": {"image": "I_te", "text": "T_te", "labels": "L_te"},
}


def _both(path):
    return {"train": str(path), "test": str(path)}


def _check(fs, val=True):
    assert fs.modalities == ("image", "text") and fs.dims == {"image": 6, "text": 4}
    assert set(fs.splits) == ({"train", "val", "test"} if val else {"train", "test"})
    np.testing.assert_allclose(fs.splits["test"].features["image"], X_TE, rtol=1e-6)
    np.testing.assert_array_equal(fs.splits["test"].labels["text"], Y_TE)
    n_train = sum(fs.splits[s].num_examples() for s in ("train", "val") if s in fs.splits)
    assert n_train == 40


def _write_mat73(path, arrays):
    """A MATLAB v7.3-style file: HDF5 behind a 512-byte MATLAB header, matrices stored column-major (transposed)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=np.asarray(value).T)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116) + b"\x00" * 8 + b"\x00\x02IM")


def test_mat_v5_with_one_based_column_labels(tmp_path):
    path = tmp_path / "f.mat"
    # MATLAB style: 1-based doubles in an (n, 1) column.
    scipy.io.savemat(path, {"I_tr": X_TR, "T_tr": T_TR, "L_tr": (Y_TR + 1.0)[:, None],
                            "I_te": X_TE, "T_te": T_TE, "L_te": (Y_TE + 1.0)[:, None]})
    fs = load_arrays(_both(path), KEYS, label_base=1, name="toy")
    _check(fs)
    assert fs.name == "toy" and fs.class_names == ("class_0", "class_1", "class_2", "class_3")
    assert fs.splits["train"].labels["image"].dtype == np.int64


def test_one_based_labels_without_label_base_fail_range_check(tmp_path):
    path = tmp_path / "f.mat"
    scipy.io.savemat(path, {"I_tr": X_TR, "T_tr": T_TR, "L_tr": Y_TR + 1, "I_te": X_TE, "T_te": T_TE, "L_te": Y_TE + 1})
    with pytest.raises(DataError, match="label 4"):
        load_arrays(_both(path), KEYS, class_names=["a", "b", "c", "d"])


def test_mat_v73_is_read_with_h5py_and_transposed(tmp_path):
    path = tmp_path / "f73.mat"
    _write_mat73(path, {"I_tr": X_TR, "T_tr": T_TR, "L_tr": (Y_TR + 1.0)[:, None],
                        "I_te": X_TE, "T_te": T_TE, "L_te": (Y_TE + 1.0)[:, None]})
    assert open(path, "rb").read(10) == b"MATLAB 7.3"
    with pytest.raises(NotImplementedError):
        scipy.io.loadmat(path)  # why the loader needs h5py
    _check(load_arrays(_both(path), KEYS, label_base=1))


def test_h5_with_group_keys_and_given_val_split(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        for split, (x, t, y) in {"train": (X_TR, T_TR, Y_TR), "val": (X_TE[:8], T_TE[:8], Y_TE[:8]),
                                 "test": (X_TE, T_TE, Y_TE)}.items():
            f[f"{split}/image"], f[f"{split}/text"], f[f"{split}/labels"] = x, t, y
    keys = {s: {"image": f"{s}/image", "text": f"{s}/text", "labels": f"{s}/labels"} for s in ("train", "val", "test")}
    fs = load_arrays({s: str(path) for s in keys}, keys)
    assert fs.splits["train"].num_examples() == 40  # no carving when val is given
    assert fs.splits["val"].num_examples() == 8
    np.testing.assert_allclose(fs.splits["test"].features["text"], T_TE, rtol=1e-6)


def test_npz_with_one_hot_labels_and_separate_files(tmp_path):
    np.savez(tmp_path / "train.npz", img=X_TR, txt=T_TR, y=np.eye(4)[Y_TR])
    np.savez(tmp_path / "test.npz", img=X_TE, txt=T_TE, y=np.eye(4)[Y_TE])
    keys = {s: {"image": "img", "text": "txt", "labels": "y"} for s in ("train", "test")}
    fs = load_arrays({"train": str(tmp_path / "train.npz"), "test": str(tmp_path / "test.npz")}, keys,
                     class_names=["a", "b", "c", "d"], val_fraction=0.25, seed=3)
    _check(fs)
    assert not fs.multi_label and fs.splits["test"].labels["image"].dtype == np.int64
    assert fs.splits["val"].num_examples() == 12  # round(0.25 * 10) = 3 per class (half rounds up)


def test_multi_hot_labels_make_a_multi_label_set(tmp_path):
    y_tr = np.eye(4)[Y_TR]
    y_tr[::3, 0] = 1
    np.savez(tmp_path / "f.npz", I_tr=X_TR, T_tr=T_TR, L_tr=y_tr, I_te=X_TE, T_te=T_TE, L_te=np.eye(4)[Y_TE])
    fs = load_arrays(_both(tmp_path / "f.npz"), KEYS)
    assert fs.multi_label
    for split in fs.splits.values():
        assert split.labels["image"].dtype == np.float32 and split.labels["image"].shape[1] == 4
    np.testing.assert_array_equal(fs.splits["test"].labels["image"], np.eye(4)[Y_TE])


def _error(*args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_arrays(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_key_lists_keys_present(tmp_path):
    np.savez(tmp_path / "f.npz", I_tr=X_TR, T_tr=T_TR, L_tr=Y_TR, I_te=X_TE, L_te=Y_TE)
    message = _error(_both(tmp_path / "f.npz"), KEYS)
    assert "'T_te'" in message and "f.npz" in message and "I_te, I_tr, L_te, L_tr, T_tr" in message


def test_missing_key_in_hdf5(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f["I_tr"] = X_TR
    message = _error({"train": str(path)}, {"train": KEYS["train"]})
    assert "'L_tr'" in message and "I_tr" in message


def test_unknown_extension_and_missing_file(tmp_path):
    assert "'.csv'" in _error({"train": str(tmp_path / "f.csv")}, {"train": KEYS["train"]})
    assert "missing" in _error({"train": str(tmp_path / "none.npz")}, {"train": KEYS["train"]})


def test_labels_entry_required():
    message = _error({"train": "x.npz"}, {"train": {"image": "a", "text": "b"}})
    assert "'labels'" in message


def test_row_count_mismatch_hints_at_transpose(tmp_path):
    np.savez(tmp_path / "f.npz", I_tr=X_TR.T, T_tr=T_TR, L_tr=Y_TR)
    message = _error({"train": str(tmp_path / "f.npz")}, {"train": KEYS["train"]})
    assert "'I_tr'" in message and "6 rows" in message and "40 items" in message and "transpose" in message
    fs = load_arrays({"train": str(tmp_path / "f.npz")}, {"train": {"image": "I_tr", "labels": "L_tr"}},
                     transpose=True, val_fraction=0)  # transposes labels too, harmless for 1-D
    assert fs.dims == {"image": 6}


def test_wrong_shapes(tmp_path):
    np.savez(tmp_path / "f.npz", I_tr=X_TR[:, 0], T_tr=T_TR, L_tr=Y_TR, L3=np.zeros((40, 2, 2)))
    assert "'I_tr'" in _error({"train": str(tmp_path / "f.npz")}, {"train": KEYS["train"]})
    keys = {"train": {"image": "T_tr", "labels": "L3"}}
    assert "'L3'" in _error({"train": str(tmp_path / "f.npz")}, keys)


def test_nan_is_named(tmp_path):
    bad = X_TR.copy()
    bad[7, 1] = np.nan
    np.savez(tmp_path / "f.npz", I_tr=bad, T_tr=T_TR, L_tr=Y_TR)
    message = _error({"train": str(tmp_path / "f.npz")}, {"train": KEYS["train"]})
    assert "'I_tr'" in message and "first at row 7" in message


def test_class_id_gaps_without_class_names_are_an_error(tmp_path):
    labels = Y_TR.copy()
    labels[5] = 9  # a corrupt label: ids 4..8 never occur
    np.savez(tmp_path / "f.npz", I_tr=X_TR, T_tr=T_TR, L_tr=labels)
    message = _error({"train": str(tmp_path / "f.npz")}, {"train": KEYS["train"]})
    assert "'L_tr'" in message and "9" in message and "4, 5, 6, 7, 8" in message and "class_names" in message
    # Declared classes make the same ids legal.
    fs = load_arrays({"train": str(tmp_path / "f.npz")}, {"train": KEYS["train"]}, class_names=list("abcdefghij"))
    assert fs.num_classes == 10

"""Wikipedia loader: the real files (via TF_XMR_WIKIPEDIA) and error cases on small files written to tmp_path."""

import os

import numpy as np
import pytest
import scipy.io

from tf_xmr.data import load_wikipedia
from tf_xmr.data.wikipedia import CATEGORIES_FILE, FEATURES_FILE, TEST_LIST, TRAIN_LIST
from tf_xmr.errors import DataError

WIKIPEDIA_FILES = (FEATURES_FILE, TRAIN_LIST, TEST_LIST, CATEGORIES_FILE)
# shared/data/wikipedia/README.md
TRAIN_CLASS_COUNTS = [138, 272, 244, 248, 202, 178, 186, 144, 214, 347]
TEST_CLASS_COUNTS = [34, 88, 96, 85, 65, 58, 51, 41, 71, 104]
CATEGORIES = ("art", "biology", "geography", "history", "literature", "media", "music", "royalty", "sport", "warfare")


def wikipedia_root_or_skip() -> str:
    """The real Wikipedia directory from $TF_XMR_WIKIPEDIA; skip when unavailable, but fail under CI (env CI set)."""
    root = os.environ.get("TF_XMR_WIKIPEDIA")
    if not root:
        problem = "TF_XMR_WIKIPEDIA is not set (point it at the Wikipedia features, e.g. ../shared/data/wikipedia)"
    else:
        missing = [f for f in WIKIPEDIA_FILES if not os.path.isfile(os.path.join(root, f))]
        if not missing:
            return root
        problem = f"TF_XMR_WIKIPEDIA={root} lacks {', '.join(missing)}"
    if os.environ.get("CI"):
        pytest.fail(f"Wikipedia data required under CI: {problem}")
    pytest.skip(problem)


# --- the real data ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wikipedia():
    return load_wikipedia(wikipedia_root_or_skip())


def test_real_counts_and_classes(wikipedia):
    fs = wikipedia
    assert fs.name == "wikipedia" and fs.modalities == ("image", "text") and fs.class_names == CATEGORIES
    assert fs.dims == {"image": 128, "text": 10} and not fs.multi_label
    train, val, test = fs.splits["train"], fs.splits["val"], fs.splits["test"]
    assert train.num_examples() + val.num_examples() == 2173 and test.num_examples() == 693
    train_counts = np.bincount(train.labels["image"], minlength=10) + np.bincount(val.labels["image"], minlength=10)
    assert train_counts.tolist() == TRAIN_CLASS_COUNTS
    assert np.bincount(test.labels["text"], minlength=10).tolist() == TEST_CLASS_COUNTS
    for split in (train, val, test):
        assert split.features["image"].dtype == np.float32
        np.testing.assert_allclose(split.features["image"].sum(1), 1.0, atol=1e-4)  # BoW histograms


def test_real_val_split_is_stratified_10_percent(wikipedia):
    val_counts = np.bincount(wikipedia.splits["val"].labels["image"], minlength=10)
    assert val_counts.sum() == 217
    np.testing.assert_array_equal(val_counts, np.floor(0.1 * np.asarray(TRAIN_CLASS_COUNTS) + 0.5))


def test_real_val_split_is_seeded():
    root = wikipedia_root_or_skip()
    a, b = load_wikipedia(root, seed=0), load_wikipedia(root, seed=0)
    c = load_wikipedia(root, seed=1)
    assert a.splits["val"].features["image"].tobytes() == b.splits["val"].features["image"].tobytes()
    assert a.splits["val"].features["image"].tobytes() != c.splits["val"].features["image"].tobytes()
    full = load_wikipedia(root, val_fraction=0)
    assert set(full.splits) == {"train", "test"} and full.splits["train"].num_examples() == 2173


def test_real_test_rows_match_the_mat_file():
    root = wikipedia_root_or_skip()
    mat = scipy.io.loadmat(os.path.join(root, FEATURES_FILE))
    fs = load_wikipedia(root)
    np.testing.assert_array_equal(fs.splits["test"].features["text"], mat["T_te"].astype(np.float32))
    first_line = open(os.path.join(root, TEST_LIST)).readline().split("\t")
    assert fs.splits["test"].labels["image"][0] == int(first_line[2]) - 1


# --- small files with the same layout, for error cases (never written into the repository) --------------------------


def _write_fake(root, n_train=30, n_test=12, mat=None, seed=0):
    """Wikipedia-layout files with tiny random content in ``root``."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    data = {
        "I_tr": rng.random((n_train, 8)), "T_tr": rng.random((n_train, 3)),
        "I_te": rng.random((n_test, 8)), "T_te": rng.random((n_test, 3)),
    }
    data.update(mat or {})
    scipy.io.savemat(os.path.join(root, FEATURES_FILE), {k: v for k, v in data.items() if v is not None})
    for name, n in ((TRAIN_LIST, n_train), (TEST_LIST, n_test)):
        with open(os.path.join(root, name), "w") as f:
            for i in range(n):
                f.write(f"t{i}\ti{i}\t{i % 10 + 1}\n")
    with open(os.path.join(root, CATEGORIES_FILE), "w") as f:
        f.write("\n".join(CATEGORIES) + "\n")
    return str(root)


def _error(root, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_wikipedia(root, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_fake_layout_loads(tmp_path):
    fs = load_wikipedia(_write_fake(tmp_path / "wiki"))
    assert fs.dims == {"image": 8, "text": 3}
    assert fs.splits["train"].num_examples() + fs.splits["val"].num_examples() == 30


def test_root_missing(tmp_path):
    assert str(tmp_path / "nope") in _error(str(tmp_path / "nope"))


@pytest.mark.parametrize("name", WIKIPEDIA_FILES)
def test_each_file_missing_is_named(tmp_path, name):
    root = _write_fake(tmp_path / "wiki")
    os.remove(os.path.join(root, name))
    assert os.path.join(root, name) in _error(root)


def test_mat_lacking_a_key_names_key_file_and_present_keys(tmp_path):
    root = _write_fake(tmp_path / "wiki", mat={"T_te": None})
    message = _error(root)
    assert "'T_te'" in message and FEATURES_FILE in message and "I_te, I_tr, T_tr" in message


def test_unreadable_mat(tmp_path):
    root = _write_fake(tmp_path / "wiki")
    with open(os.path.join(root, FEATURES_FILE), "wb") as f:
        f.write(b"this is not a MATLAB file" * 10)
    assert FEATURES_FILE in _error(root)


def test_row_counts_of_mat_and_list_disagree(tmp_path):
    root = _write_fake(tmp_path / "wiki")
    path = os.path.join(root, TEST_LIST)
    lines = open(path).read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(lines[:-2]) + "\n")
    message = _error(root)
    assert "'I_te'" in message and "12 rows" in message and "10 items" in message and TEST_LIST in message


def test_bad_list_line(tmp_path):
    root = _write_fake(tmp_path / "wiki")
    with open(os.path.join(root, TRAIN_LIST), "a") as f:
        f.write("t99\ti99\t11\n")
    message = _error(root)
    assert TRAIN_LIST in message and "line 31" in message and "category 11" in message


def test_nan_features_named(tmp_path):
    bad = np.random.default_rng(0).random((12, 8))
    bad[5, 2] = np.nan
    root = _write_fake(tmp_path / "wiki", mat={"I_te": bad})
    message = _error(root)
    assert "'test'" in message and "'image'" in message and "first at row 5" in message

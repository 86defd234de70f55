"""Loader for the Wikipedia image-text benchmark (Rasiwasia et al., ACM MM 2010) with its original features.

Expected files in ``root`` (see shared/data/wikipedia/README.md):

- ``raw_features.mat`` (MATLAB v5): ``I_tr`` (2173, 128) and ``I_te`` (693, 128) SIFT bag-of-visual-words
  histograms; ``T_tr`` (2173, 10) and ``T_te`` (693, 10) LDA topic proportions; float64.
- ``trainset_txt_img_cat.list`` / ``testset_txt_img_cat.list``: one line ``<text_id>\\t<image_id>\\t<category>`` per
  item (category 1..10), in the row order of the matrices.
- ``categories.list``: the class names in label order.

There is no official validation split; "val" is a stratified, seeded part of the training set (never the test set).
"""

from __future__ import annotations

import os

import numpy as np

from tf_xmr.data.feature_set import FeatureSet, Split, split_validation
from tf_xmr.errors import DataError

FEATURES_FILE = "raw_features.mat"
TRAIN_LIST = "trainset_txt_img_cat.list"
TEST_LIST = "testset_txt_img_cat.list"
CATEGORIES_FILE = "categories.list"

#: .mat key per (split, modality).
MAT_KEYS = {("train", "image"): "I_tr", ("train", "text"): "T_tr", ("test", "image"): "I_te", ("test", "text"): "T_te"}


def _read_text(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise DataError(f"wikipedia: file missing: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"wikipedia: cannot read {path}: {e}") from None


def _read_categories(path: str) -> tuple[str, ...]:
    names = tuple(line.strip() for line in _read_text(path) if line.strip())
    if not names:
        raise DataError(f"wikipedia: {path} lists no categories")
    if len(set(names)) != len(names):
        raise DataError(f"wikipedia: {path} lists a category twice: {list(names)}")
    return names


def _read_list(path: str, num_classes: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Category per line of a ``*_txt_img_cat.list`` file, as 0-based int64 (n,), and the item ids per modality
    (``{"text": (n,) str, "image": (n,) str}``, the first two fields: the keys a retrieval gallery answers with)."""
    labels, ids = [], {"text": [], "image": []}
    for lineno, line in enumerate(_read_text(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise DataError(
                f"wikipedia: {path} line {lineno}: expected 3 tab-separated fields <text_id> <image_id> <category>, "
                f"got {len(fields)}"
            )
        try:
            category = int(fields[2])
        except ValueError:
            raise DataError(f"wikipedia: {path} line {lineno}: category {fields[2]!r} is not an integer") from None
        if not 1 <= category <= num_classes:
            raise DataError(f"wikipedia: {path} line {lineno}: category {category} outside 1..{num_classes}")
        labels.append(category - 1)
        ids["text"].append(fields[0].strip())
        ids["image"].append(fields[1].strip())
    if not labels:
        raise DataError(f"wikipedia: {path} has no items")
    return np.asarray(labels, dtype=np.int64), {m: np.asarray(v, dtype=str) for m, v in ids.items()}


def _read_mat(path: str) -> dict:
    import scipy.io

    if not os.path.isfile(path):
        raise DataError(f"wikipedia: file missing: {path}")
    try:
        return scipy.io.loadmat(path)
    except NotImplementedError:
        # scipy raises this for v7.3 (HDF5) files; the published file is v5, so this is a different file.
        raise DataError(f"wikipedia: {path} is a MATLAB v7.3 file; expected the original v5 raw_features.mat") from None
    except Exception as e:  # scipy raises ValueError/TypeError/OSError variants on corrupt files
        raise DataError(f"wikipedia: cannot read {path} as a MATLAB v5 file: {type(e).__name__}: {e}") from None


def load_wikipedia(root: str, *, val_fraction: float = 0.1, seed: int = 0) -> FeatureSet:
    """Load the Wikipedia benchmark features (2173 train / 693 test items, 10 classes, single label).

    Args:
        root: directory holding the four files listed in the module docstring.
        val_fraction: stratified share of the training items moved to "val" (default 10%, i.e. 217 of 2173);
            0 gives no "val" split.
        seed: seed of the validation split.

    Returns:
        A validated FeatureSet named "wikipedia" with modalities ("image", "text") of dimensions 128 and 10,
        labels = category - 1 (int64), splits "train" (1956 at the default fraction), "val" (217) and "test" (693).

    Raises:
        DataError: root or a file missing/unreadable (names the path), a .mat key missing (names the key, the file
            and the keys it has), or row counts of the .mat and the .list files disagreeing.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"wikipedia: data directory not found: {root}")
    class_names = _read_categories(os.path.join(root, CATEGORIES_FILE))
    mat_path = os.path.join(root, FEATURES_FILE)
    mat = _read_mat(mat_path)
    present = sorted(k for k in mat if not k.startswith("__"))

    splits = {}
    for split_name, list_name in (("train", TRAIN_LIST), ("test", TEST_LIST)):
        list_path = os.path.join(root, list_name)
        labels, ids = _read_list(list_path, len(class_names))
        features = {}
        for modality in ("image", "text"):
            key = MAT_KEYS[split_name, modality]
            if key not in mat:
                raise DataError(f"wikipedia: key {key!r} missing from {mat_path} (keys present: {', '.join(present)})")
            x = np.asarray(mat[key])
            if x.ndim != 2 or x.dtype.kind not in "fiu":
                raise DataError(f"wikipedia: {mat_path} key {key!r} must be a 2-D numeric matrix, "
                                f"got {x.dtype} {x.shape}")
            if x.shape[0] != labels.shape[0]:
                raise DataError(
                    f"wikipedia: {mat_path} key {key!r} has {x.shape[0]} rows "
                    f"but {list_path} has {labels.shape[0]} items"
                )
            features[modality] = x
        splits[split_name] = Split(features=features, labels={"image": labels, "text": labels}, paired=True,
                                   ids={"image": ids["image"], "text": ids["text"]})

    if val_fraction and val_fraction > 0:
        train, val = split_validation(splits["train"], val_fraction, seed)
        splits = {"train": train, "val": val, "test": splits["test"]}

    return FeatureSet(
        name="wikipedia",
        modalities=("image", "text"),
        class_names=class_names,
        splits=splits,
        multi_label=False,
        source=root,
    ).validate()


__all__ = ["load_wikipedia"]

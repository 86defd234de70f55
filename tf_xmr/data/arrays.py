"""Generic loader for feature matrices stored in .mat (v5 and v7.3), .h5/.hdf5 and .npz files.

Most published cross-modal feature releases are a handful of matrices in one or a few files, named differently in
every release. :func:`load_arrays` takes the file of each split and the key of each array, so a new dataset needs a
config entry, not code::

    load_arrays(
        paths={"train": "pascal.mat", "test": "pascal.mat"},
        keys={"train": {"image": "I_tr", "text": "T_tr", "labels": "L_tr"},
              "test": {"image": "I_te", "text": "T_te", "labels": "L_te"}},
        label_base=1,
    )
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from tf_xmr.data.feature_set import LABELS_KEY, SPLIT_NAMES, FeatureSet, Split, check_finite_rows, split_validation
from tf_xmr.errors import DataError


SUFFIXES = (".mat", ".h5", ".hdf5", ".npz")


class _ArrayFile:
    """One opened data file: lists its keys and reads arrays by key, in numpy's row-major (n, d) convention."""

    def __init__(self, path: str, transpose: str | bool):
        self.path = path
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in SUFFIXES:
            raise DataError(f"arrays: unsupported file type {suffix or '(none)'!r} for {path}; supported: {', '.join(SUFFIXES)}")
        if not os.path.isfile(path):
            raise DataError(f"arrays: file missing: {path}")
        self.kind = suffix
        self._data: dict | None = None
        if suffix == ".mat":
            import h5py

            # MATLAB v7.3 files are HDF5 containers behind a 512-byte header; scipy cannot read them.
            self.kind = "mat73" if h5py.is_hdf5(path) else "mat5"
        # MATLAB writes column-major: an n x d matrix lands in HDF5 as (d, n). Other writers are row-major.
        if transpose == "auto":
            self.transpose = self.kind == "mat73"
        elif isinstance(transpose, bool):
            self.transpose = transpose
        else:
            raise DataError(f"arrays: transpose must be 'auto', true or false, got {transpose!r}")

    def _load_eager(self) -> dict:
        if self._data is None:
            try:
                if self.kind == "mat5":
                    import scipy.io

                    self._data = {k: v for k, v in scipy.io.loadmat(self.path).items() if not k.startswith("__")}
                else:  # .npz
                    with np.load(self.path, allow_pickle=False) as z:
                        self._data = {k: z[k] for k in z.files}
            except DataError:
                raise
            except Exception as e:  # corrupt or truncated files raise a zoo of types in scipy/numpy
                raise DataError(f"arrays: cannot read {self.path}: {type(e).__name__}: {e}") from None
        return self._data

    def keys(self) -> list[str]:
        if self.kind in ("mat73", ".h5", ".hdf5"):
            import h5py

            names = []
            try:
                with h5py.File(self.path, "r") as f:
                    # MATLAB v7.3 keeps cell contents under '#refs#'; those are not user variables.
                    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset)
                                 and not name.startswith("#") else None)
            except OSError as e:
                raise DataError(f"arrays: cannot read {self.path} as HDF5: {e}") from None
            return sorted(names)
        return sorted(self._load_eager())

    def read(self, key: str) -> np.ndarray:
        if self.kind in ("mat73", ".h5", ".hdf5"):
            import h5py

            try:
                with h5py.File(self.path, "r") as f:
                    obj = f.get(key)
                    if not isinstance(obj, h5py.Dataset):
                        raise DataError(f"arrays: key {key!r} missing from {self.path} (keys present: {', '.join(self.keys())})")
                    arr = np.asarray(obj[()])
            except OSError as e:
                raise DataError(f"arrays: cannot read {self.path} as HDF5: {e}") from None
        else:
            data = self._load_eager()
            if key not in data:
                raise DataError(f"arrays: key {key!r} missing from {self.path} (keys present: {', '.join(sorted(data))})")
            arr = np.asarray(data[key])
        if arr.dtype.kind not in "fiub":
            raise DataError(f"arrays: {self.path} key {key!r} is not a numeric array (dtype {arr.dtype})")
        if self.transpose and arr.ndim == 2:
            arr = arr.T
        return arr


def _labels_from_array(raw: np.ndarray, where: str, label_base: int) -> tuple[np.ndarray, int | None]:
    """Labels as stored -> (labels, width).

    Returns:
        labels: class ids int64 (n,) from 1-D / (n, 1) ints or from one-hot (n, c); multi-hot float32 (n, c) when a
            row carries several classes.
        width: c when the file stored (n, c) indicator labels (so unused trailing classes still count), else None.
    """
    y = raw
    if y.ndim == 2 and 1 in y.shape and not (y.shape[0] == 1 and y.shape[1] == 1):
        y = y.reshape(-1)  # (n, 1) or a MATLAB row vector (1, n)
    if y.ndim == 1:
        if not np.all(np.isfinite(y)) or (y.dtype.kind == "f" and not np.all(y == np.round(y))):
            raise DataError(f"arrays: labels {where} must be whole numbers (class ids), got non-integer values")
        return y.astype(np.int64) - int(label_base), None
    if y.ndim != 2:
        raise DataError(f"arrays: labels {where} must be (n,), (n, 1) or (n, c), got shape {tuple(raw.shape)}")
    if not np.all((y == 0) | (y == 1)):
        raise DataError(f"arrays: labels {where} of shape {tuple(y.shape)} must be one-hot/multi-hot 0/1 values")
    per_row = y.sum(axis=1)
    if np.all(per_row == 1):
        return np.argmax(y, axis=1).astype(np.int64), y.shape[1]  # one-hot: plain class ids
    return y.astype(np.float32), y.shape[1]


def _infer_num_classes(raw_labels, widths, paths, keys) -> int:
    """Number of classes when no class_names are given: the indicator width, or the largest class id + 1.

    Integer ids that skip classes (e.g. ids 0-3 and one 9) almost always mean a corrupt label or a wrong label_base,
    so gaps are an error here; a dataset whose splits genuinely miss classes declares them with class_names.
    """
    num_classes = max(widths)
    used = np.zeros(num_classes, dtype=bool)
    for split_name, y in raw_labels.items():
        if y.ndim == 1:
            used[y[(y >= 0) & (y < num_classes)]] = True
        else:
            return num_classes  # indicator labels declare their width
    if not used.all():
        top = max(raw_labels, key=lambda s: int(raw_labels[s].max()) if raw_labels[s].size else -1)
        unused = np.flatnonzero(~used)
        raise DataError(
            f"arrays: labels key {keys[top][LABELS_KEY]!r} in {os.fspath(paths[top])} use class id "
            f"{int(raw_labels[top].max())} but ids {', '.join(str(int(k)) for k in unused[:10])}"
            f"{' ...' if unused.size > 10 else ''} never occur in any split; pass class_names to declare the classes "
            f"(or check the labels / label_base)"
        )
    return num_classes


def load_arrays(
    paths: Mapping[str, str],
    keys: Mapping[str, Mapping[str, str]],
    *,
    label_base: int = 0,
    class_names: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    transpose: str | bool = "auto",
    name: str = "arrays",
) -> FeatureSet:
    """Load a paired feature set from .mat (v5 or v7.3), .h5/.hdf5 or .npz files.

    Args:
        paths: split ("train", "val", "test") -> file; one file may serve several splits.
        keys: split -> {modality: key, ..., "labels": key}; every split names the same modalities. In HDF5 files a
            key may be a path such as "features/image".
        label_base: subtracted from integer labels (1 for MATLAB-style 1-based ids). Not applied to one-hot labels.
            Labels may be (n,) or (n, 1) ints, or (n, c) 0/1: exactly one 1 per row gives class ids, otherwise the
            set becomes multi-label (float32 multi-hot).
        class_names: names in label order; default "class_0", "class_1", ... for as many classes as the labels use.
        val_fraction: if no "val" split is given, the stratified share of "train" moved to "val" (0: none).
        seed: seed of that validation split.
        transpose: "auto" transposes 2-D arrays read from MATLAB v7.3 files (MATLAB is column-major, so h5py sees
            (d, n)); True transposes every 2-D array; False none.
        name: the feature set's name.

    Returns:
        A validated FeatureSet whose modalities are the non-"labels" keys of the first split, in that order.

    Raises:
        DataError: unknown extension, missing file, missing key (lists the keys present), arrays of the wrong shape
            or row count (names file and key), NaN/Inf values, labels out of range.
    """
    if not paths:
        raise DataError("arrays: no files given (paths is empty)")
    if set(paths) != set(keys):
        raise DataError(f"arrays: paths has splits {sorted(paths)} but keys has {sorted(keys)}; they must match")
    for split_name in paths:
        if split_name not in SPLIT_NAMES:
            raise DataError(f"arrays: unknown split {split_name!r}; valid splits: {', '.join(SPLIT_NAMES)}")
    first_split = next(iter(keys))
    modalities = tuple(k for k in keys[first_split] if k != LABELS_KEY)
    if not modalities:
        raise DataError(f"arrays: keys[{first_split!r}] names no modality, only {list(keys[first_split])}")
    for split_name, split_keys in keys.items():
        if LABELS_KEY not in split_keys:
            raise DataError(f"arrays: keys[{split_name!r}] lacks the required entry 'labels' (has: {', '.join(split_keys)})")
        mods = tuple(k for k in split_keys if k != LABELS_KEY)
        if set(mods) != set(modalities):
            raise DataError(
                f"arrays: keys[{split_name!r}] names modalities {list(mods)} but keys[{first_split!r}] names {list(modalities)}"
            )

    files: dict[str, _ArrayFile] = {}
    raw_labels, widths, features = {}, [], {}
    for split_name, path in paths.items():
        path = os.fspath(path)
        if path not in files:
            files[path] = _ArrayFile(path, transpose)
        f = files[path]
        label_key = keys[split_name][LABELS_KEY]
        y, width = _labels_from_array(f.read(label_key), f"{path} key {label_key!r}", label_base)
        raw_labels[split_name] = y
        widths.append(width if width is not None else int(y.max()) + 1 if y.size else 0)
        features[split_name] = {}
        for m in modalities:
            key = keys[split_name][m]
            x = f.read(key)
            at = f"{path} key {key!r}"
            if x.ndim != 2:
                raise DataError(f"arrays: {at} must be a 2-D (items, dims) matrix, got shape {tuple(x.shape)}")
            if x.shape[0] != y.shape[0]:
                hint = " (a MATLAB-layout file? pass transpose=true)" if x.shape[1] == y.shape[0] else ""
                raise DataError(
                    f"arrays: {at} has {x.shape[0]} rows but labels key {label_key!r} has {y.shape[0]} items{hint}"
                )
            check_finite_rows(x, f"arrays: {at}")
            features[split_name][m] = x

    # One label format for the whole set: if any split is multi-label, all become multi-hot.
    multi_label = any(y.ndim == 2 for y in raw_labels.values())
    if class_names is None:
        class_names = tuple(f"class_{k}" for k in range(_infer_num_classes(raw_labels, widths, paths, keys)))
    num_classes = len(class_names)
    splits = {}
    for split_name, y in raw_labels.items():
        if multi_label and y.ndim == 1:
            if np.any((y < 0) | (y >= num_classes)):
                bad = int(y[np.argmax((y < 0) | (y >= num_classes))])
                raise DataError(f"arrays: split {split_name!r} label {bad} outside [0, {num_classes}) (label_base={label_base})")
            onehot = np.zeros((y.shape[0], num_classes), dtype=np.float32)
            onehot[np.arange(y.shape[0]), y] = 1.0
            y = onehot
        splits[split_name] = Split(features=features[split_name], labels={m: y for m in modalities}, paired=True)

    if "val" not in splits and "train" in splits and val_fraction and val_fraction > 0:
        train, val = split_validation(splits["train"], val_fraction, seed)
        splits["train"], splits["val"] = train, val
    splits = {s: splits[s] for s in SPLIT_NAMES if s in splits}

    source = ", ".join(dict.fromkeys(os.fspath(p) for p in paths.values()))
    return FeatureSet(
        name=name,
        modalities=modalities,
        class_names=tuple(class_names),
        splits=splits,
        multi_label=multi_label,
        source=source,
    ).validate()


__all__ = ["load_arrays"]

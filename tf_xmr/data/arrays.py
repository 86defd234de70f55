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

# An .npz archive is a zip file (the second signature is an empty zip); np.save writes a single array behind the
# .npy magic. Anything else would reach numpy's pickle fallback, whose error advises allow_pickle=True: an unsafe load
# of a file that is not even an array archive.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"


class _ObjectArray:
    """Placeholder for an .npz member that holds Python objects (numpy refuses it without unpickling)."""


def _is_struct(value) -> bool:
    """A MATLAB struct as scipy.io.loadmat returns it: a numpy record array of shape (1, 1)."""
    return isinstance(value, np.ndarray) and value.dtype.names is not None


def _struct_keys(name: str, value) -> list[str]:
    """``name`` or, for a scalar MATLAB struct, its fields as dotted keys (``data.X1``), recursively."""
    if _is_struct(value) and value.size == 1:
        record = value.reshape(-1)[0]
        return [k for field in value.dtype.names for k in _struct_keys(f"{name}.{field}", record[field])]
    return [name]


class _ArrayFile:
    """One opened data file: lists its keys and reads arrays by key, in numpy's row-major (n, d) convention.

    Keys are variable names; HDF5 paths (``features/image``); or dotted paths into a MATLAB struct (``data.X1``), which
    for MATLAB v7.3 files (HDF5 groups) is the same as ``data/X1``.
    """

    def __init__(self, path: str, transpose: str | bool):
        self.path = path
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in SUFFIXES:
            raise DataError(f"arrays: unsupported file type {suffix or '(none)'!r} for {path}; "
                            f"supported: {', '.join(SUFFIXES)}")
        if not os.path.isfile(path):
            raise DataError(f"arrays: file missing: {path}")
        self.kind = suffix
        self._data: dict | None = None
        self._read: dict[str, np.ndarray] = {}
        if suffix == ".mat":
            import h5py

            # MATLAB v7.3 files are HDF5 containers behind a 512-byte header; scipy cannot read them.
            self.kind = "mat73" if h5py.is_hdf5(path) else "mat5"
        elif suffix == ".npz":
            self._check_npz_signature()
        # MATLAB writes column-major: an n x d matrix lands in HDF5 as (d, n). Other writers are row-major.
        if transpose == "auto":
            self.transpose = self.kind == "mat73"
        elif isinstance(transpose, bool):
            self.transpose = transpose
        else:
            raise DataError(f"arrays: transpose must be 'auto', true or false, got {transpose!r}")

    def _check_npz_signature(self) -> None:
        try:
            with open(self.path, "rb") as f:
                head = f.read(8)
        except OSError as e:
            raise DataError(f"arrays: cannot read {self.path}: {e.strerror}") from None
        if not head:
            raise DataError(f"arrays: {self.path} is empty (0 bytes), not an .npz archive")
        if head.startswith(_NPY_MAGIC):
            raise DataError(
                f"arrays: {self.path} is a single .npy array (np.save), not an .npz archive of named arrays "
                f"(np.savez(path, image=..., text=..., labels=...))"
            )
        if not head.startswith(_ZIP_MAGIC):
            raise DataError(
                f"arrays: {self.path} is not an .npz archive (a zip of named .npy arrays, as np.savez writes): "
                f"it starts with {head[:8]!r}"
            )

    @property
    def _hdf5(self) -> bool:
        return self.kind in ("mat73", ".h5", ".hdf5")

    def _load_eager(self) -> dict:
        if self._data is None:
            try:
                if self.kind == "mat5":
                    import scipy.io

                    self._data = {k: v for k, v in scipy.io.loadmat(self.path).items() if not k.startswith("__")}
                else:  # .npz, its signature checked on opening
                    data = {}
                    with np.load(self.path, allow_pickle=False) as z:
                        for k in z.files:
                            try:
                                data[k] = z[k]
                            except ValueError:  # an object array: reported only if the config asks for this key
                                data[k] = _ObjectArray()
                    self._data = data
            except DataError:
                raise
            except Exception as e:  # corrupt or truncated files raise a zoo of types in scipy/numpy
                raise DataError(f"arrays: cannot read {self.path}: {type(e).__name__}: {e}") from None
        return self._data

    def keys(self) -> list[str]:
        if self._hdf5:
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
        return sorted(k for name, value in self._load_eager().items() for k in _struct_keys(name, value))

    def _missing(self, key: str, detail: str = "") -> DataError:
        keys = self.keys()
        shown = ", ".join(keys[:40]) + (f" ... ({len(keys)} keys)" if len(keys) > 40 else "")
        return DataError(f"arrays: key {key!r} missing from {self.path}{detail} (keys present: {shown or 'none'})")

    def _read_hdf5(self, key: str) -> np.ndarray:
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                obj = f.get(key)
                if obj is None and "." in key:
                    obj = f.get(key.replace(".", "/"))  # a MATLAB struct is an HDF5 group in v7.3 files
                if isinstance(obj, h5py.Group):
                    raise DataError(
                        f"arrays: key {key!r} in {self.path} is a group (a MATLAB struct?) with members "
                        f"{', '.join(sorted(obj))}; name one of them, e.g. {key}.{next(iter(sorted(obj)), 'X')}"
                    )
                if not isinstance(obj, h5py.Dataset):
                    raise self._missing(key)
                return np.asarray(obj[()])
        except OSError as e:
            raise DataError(f"arrays: cannot read {self.path} as HDF5: {e}") from None

    def _read_eager(self, key: str):
        data = self._load_eager()
        if key in data:
            return data[key]
        parts = key.split(".")
        if len(parts) == 1 or parts[0] not in data or self.kind != "mat5":
            raise self._missing(key)
        value, walked = data[parts[0]], parts[0]
        for part in parts[1:]:
            if not _is_struct(value):
                raise self._missing(key, f" ({walked!r} is not a struct)")
            if value.size != 1:
                raise DataError(
                    f"arrays: {walked!r} in {self.path} is a {'x'.join(map(str, value.shape))} struct array; "
                    f"only a single (1x1) struct can be read by key"
                )
            if part not in value.dtype.names:
                raise DataError(
                    f"arrays: key {key!r} missing from {self.path}: struct {walked!r} has fields "
                    f"{', '.join(value.dtype.names)}"
                )
            value, walked = value.reshape(-1)[0][part], f"{walked}.{part}"
        return value

    def read(self, key: str) -> np.ndarray:
        if key in self._read:
            return self._read[key]
        raw = self._read_hdf5(key) if self._hdf5 else self._read_eager(key)
        if isinstance(raw, _ObjectArray):
            raise DataError(f"arrays: {self.path} key {key!r} holds Python objects, not numbers; store it as a "
                            f"numeric array")
        arr = np.asarray(raw)
        if _is_struct(arr):
            raise DataError(
                f"arrays: key {key!r} in {self.path} is a MATLAB struct with fields {', '.join(arr.dtype.names)}; "
                f"name one of them, e.g. {key}.{arr.dtype.names[0]}"
            )
        if arr.dtype.kind not in "fiub":
            what = " (a MATLAB cell array?)" if arr.dtype.kind == "O" else ""
            raise DataError(f"arrays: {self.path} key {key!r} is not a numeric array (dtype {arr.dtype}){what}")
        if self.transpose and arr.ndim == 2:
            arr = arr.T
        self._read[key] = arr
        return arr


def _index_vector(raw: np.ndarray, where: str, index_base: int, num_rows: int, rows_from: str) -> np.ndarray:
    """A split's index vector as stored -> int64 (k,) row numbers into ``num_rows`` rows, checked.

    Raises:
        DataError: not a vector of whole numbers, out of range (with a hint when it looks 1-based), a repeated row,
            or empty.
    """
    idx = raw.reshape(-1) if raw.ndim == 2 and 1 in raw.shape else raw
    if idx.ndim != 1:
        raise DataError(f"arrays: indices {where} must be a vector of row numbers, got shape {tuple(raw.shape)}")
    if idx.dtype.kind == "b":
        raise DataError(f"arrays: indices {where} are booleans (a mask); store the row numbers of the split instead")
    if idx.size == 0:
        raise DataError(f"arrays: indices {where} are empty: the split would have no items")
    if idx.dtype.kind == "f" and not (np.all(np.isfinite(idx)) and np.all(idx == np.round(idx))):
        raise DataError(f"arrays: indices {where} must be whole numbers (row numbers)")
    idx = idx.astype(np.int64) - int(index_base)
    bad = (idx < 0) | (idx >= num_rows)
    if np.any(bad):
        first = int(idx[np.argmax(bad)]) + int(index_base)
        hint = ""
        if index_base == 0 and idx.min() >= 1 and idx.max() == num_rows:
            hint = "; they look 1-based (MATLAB): set data.arrays.index_base: 1"
        raise DataError(
            f"arrays: indices {where} hold {first}, outside [{index_base}, {num_rows + index_base}) for the "
            f"{num_rows} rows of {rows_from} (index_base={index_base}){hint}"
        )
    unique, counts = np.unique(idx, return_counts=True)
    if np.any(counts > 1):
        raise DataError(f"arrays: indices {where} name row {int(unique[np.argmax(counts > 1)]) + index_base} "
                        f"{int(counts.max())} times; each row may be in a split once")
    return idx


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
    for y in raw_labels.values():
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


def _check_disjoint(taken: dict, split_name: str, rows: np.ndarray, path: str, label_key: str, index_base: int):
    """Refuse two splits that select the same row of the same arrays (identified by file and labels key): an item in
    both train and test would leak into the scores."""
    source = (path, label_key)
    if source in taken:
        other, other_rows = taken[source]
        shared = np.intersect1d(rows, other_rows)
        if shared.size:
            raise DataError(
                f"arrays: splits {other!r} and {split_name!r} share {shared.size} row(s) of {path} (first: row "
                f"{int(shared[0]) + index_base}); their index vectors must not overlap"
            )
        taken[source] = (f"{other}+{split_name}", np.union1d(rows, other_rows))
    else:
        taken[source] = (split_name, rows)


def load_arrays(
    paths: Mapping[str, str],
    keys: Mapping[str, Mapping[str, str]],
    *,
    label_base: int = 0,
    class_names: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    transpose: str | bool = "auto",
    indices: Mapping[str, str] | None = None,
    index_base: int = 0,
    name: str = "arrays",
) -> FeatureSet:
    """Load a paired feature set from .mat (v5 or v7.3), .h5/.hdf5 or .npz files.

    Args:
        paths: split ("train", "val", "test") -> file; one file may serve several splits.
        keys: split -> {modality: key, ..., "labels": key}; any number of modalities, named freely; every split names
            the same ones. A key is a variable name, an HDF5 path such as "features/image", or a dotted path into a
            MATLAB struct such as "data.X1" (v5 and v7.3 files).
        label_base: subtracted from integer labels (1 for MATLAB-style 1-based ids). Not applied to one-hot labels.
            Labels may be (n,), (n, 1) or (1, n) ints, or (n, c) 0/1: exactly one 1 per row gives class ids, otherwise
            the set becomes multi-label (float32 multi-hot).
        class_names: names in label order; default "class_0", "class_1", ... for as many classes as the labels use.
        val_fraction: if no "val" split is given, the stratified share of "train" moved to "val" (0: none).
        seed: seed of that validation split.
        transpose: "auto" transposes 2-D arrays read from MATLAB v7.3 files (MATLAB is column-major, so h5py sees
            (d, n)); True transposes every 2-D array; False none.
        indices: split -> key of a vector of row numbers selecting the split's items from the arrays its ``keys``
            name (files holding one matrix per modality for every item); splits not listed take every row. Splits
            that read the same arrays must not share a row.
        index_base: subtracted from those row numbers (1 for MATLAB-style 1-based indices).
        name: the feature set's name.

    Returns:
        A validated FeatureSet whose modalities are the non-"labels" keys of the first split, in that order.

    Raises:
        DataError: unknown extension, missing file, a file that is not what its extension says, missing key (lists
            the keys present), arrays of the wrong shape or row count (names file and key), NaN/Inf values, labels
            out of range, bad index vectors (out of range, repeated, shared between splits), an empty split.
    """
    if not paths:
        raise DataError("arrays: no files given (paths is empty)")
    if set(paths) != set(keys):
        raise DataError(f"arrays: paths has splits {sorted(paths)} but keys has {sorted(keys)}; they must match")
    for split_name in paths:
        if split_name not in SPLIT_NAMES:
            raise DataError(f"arrays: unknown split {split_name!r}; valid splits: {', '.join(SPLIT_NAMES)}")
    indices = dict(indices or {})
    unknown = [s for s in indices if s not in paths]
    if unknown:
        raise DataError(f"arrays: indices name split {unknown[0]!r}, which paths does not have ({', '.join(paths)})")
    first_split = next(iter(keys))
    modalities = tuple(k for k in keys[first_split] if k != LABELS_KEY)
    if not modalities:
        raise DataError(f"arrays: keys[{first_split!r}] names no modality, only {list(keys[first_split])}")
    for split_name, split_keys in keys.items():
        if LABELS_KEY not in split_keys:
            raise DataError(f"arrays: keys[{split_name!r}] lacks the required entry 'labels' "
                            f"(has: {', '.join(split_keys)})")
        mods = tuple(k for k in split_keys if k != LABELS_KEY)
        if set(mods) != set(modalities):
            raise DataError(
                f"arrays: keys[{split_name!r}] names modalities {list(mods)} "
                f"but keys[{first_split!r}] names {list(modalities)}"
            )

    files: dict[str, _ArrayFile] = {}
    raw_labels, widths, features = {}, [], {}
    rows_taken: dict[tuple[str, str], tuple[str, np.ndarray]] = {}
    for split_name, path in paths.items():
        path = os.fspath(path)
        if path not in files:
            files[path] = _ArrayFile(path, transpose)
        f = files[path]
        label_key = keys[split_name][LABELS_KEY]
        y, width = _labels_from_array(f.read(label_key), f"{path} key {label_key!r}", label_base)
        rows = None
        if split_name in indices:
            index_key = indices[split_name]
            rows = _index_vector(f.read(index_key), f"{path} key {index_key!r} (split {split_name!r})", index_base,
                                 y.shape[0], f"labels key {label_key!r}")
            _check_disjoint(rows_taken, split_name, rows, path, label_key, index_base)
        features[split_name] = {}
        for m in modalities:
            key = keys[split_name][m]
            x = f.read(key)
            at = f"{path} key {key!r}"
            if x.ndim != 2:
                raise DataError(f"arrays: {at} must be a 2-D (items, dims) matrix, got shape {tuple(x.shape)}")
            if x.shape[0] != y.shape[0]:
                hint = ""
                if x.shape[1] == y.shape[0]:
                    hint = " (a MATLAB-layout (dims, items) file? set data.arrays.transpose: true)"
                raise DataError(
                    f"arrays: {at} has {x.shape[0]} rows but labels key {label_key!r} has {y.shape[0]} items{hint}"
                )
            if rows is not None:
                x = x[rows]
            check_finite_rows(x, f"arrays: {at}" + ("" if rows is None else f" (split {split_name!r} rows)"))
            features[split_name][m] = x
        if rows is not None:
            y = y[rows]
        if y.shape[0] == 0:
            raise DataError(f"arrays: split {split_name!r} is empty: labels key {label_key!r} in {path} has 0 items")
        raw_labels[split_name] = y
        widths.append(width if width is not None else int(y.max()) + 1)

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
                raise DataError(f"arrays: split {split_name!r} label {bad} outside [0, {num_classes}) "
                                f"(label_base={label_base})")
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

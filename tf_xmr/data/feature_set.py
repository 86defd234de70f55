"""In-memory and on-disk feature sets: the one data structure every loader returns and every pipeline consumes.

A :class:`FeatureSet` holds precomputed feature vectors for several modalities (``"image"``, ``"text"``, ...) with
class labels, organised in splits (``"train"``, ``"val"``, ``"test"``). A split is either a :class:`Split` (numpy
arrays in memory) or a :class:`RecordSplit` (sharded TFRecord files described by a JSON sidecar, streamed by
:func:`tf_xmr.data.make_dataset`). Both answer the same questions: which modalities, how many items, paired or not.

Nothing in this module imports TensorFlow, so ``import tf_xmr.data`` stays cheap.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from tf_xmr.errors import DataError

logger = logging.getLogger("tf_xmr.data")

#: Split names a FeatureSet may hold. Model selection uses "val", final numbers "test" (design.md rule 7).
SPLIT_NAMES = ("train", "val", "test")

#: The key under which labels travel next to the modalities in pipeline elements; no modality may use it.
LABELS_KEY = "labels"


# ----------------------------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------------------------


def _as_features(array) -> np.ndarray:
    """Float32 C-contiguous copy of a real numeric array; anything else is kept for validate() to report."""
    arr = np.asarray(array)
    # Integer/bool features (e.g. bag-of-words counts) are legitimate and convert exactly enough; complex, string
    # and object arrays are not features, and converting them would hide the mistake.
    if arr.dtype.kind in "fiub":
        return np.ascontiguousarray(arr, dtype=np.float32)
    return arr


def _as_labels(array) -> np.ndarray:
    """Class ids as int64 (n,) or multi-hot as float32 (n, c); anything else is kept for validate() to report."""
    arr = np.asarray(array)
    if arr.ndim == 1 and arr.dtype.kind in "iub":
        return np.ascontiguousarray(arr, dtype=np.int64)
    if (arr.ndim == 1 and arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr))
            and np.all(arr == np.round(arr))):
        # Labels that went through a float container (MATLAB doubles, some .npz writers) but are whole numbers.
        return arr.astype(np.int64)
    if arr.ndim == 2 and arr.dtype.kind in "fiub":
        return np.ascontiguousarray(arr, dtype=np.float32)
    return arr


@dataclass
class Split:
    """One split of a feature set, held in memory.

    Paired: every modality has the same number of rows and row ``i`` of each modality is the same item (so the labels
    agree). Unpaired: each modality is its own collection and the counts may differ.

    Attributes:
        features: modality name -> float32 array of shape (n_m, d_m). Converted to float32 C-contiguous on
            construction (from any real numeric dtype).
        labels: modality name -> int64 class ids of shape (n_m,), or float32 multi-hot of shape (n_m, c).
        paired: whether row ``i`` of every modality is the same item.
        ids: optional modality name -> str array (n_m,) of the items' ids in the source (e.g. the Wikipedia .list
            ids); a retrieval gallery answers with them. Modalities without ids are keyed by row (:meth:`keys`).
    """

    features: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    paired: bool = True
    ids: dict[str, np.ndarray] | None = None

    def __post_init__(self):
        self.features = {str(m): _as_features(x) for m, x in dict(self.features).items()}
        self.labels = {str(m): _as_labels(y) for m, y in dict(self.labels).items()}
        self.paired = bool(self.paired)
        if self.ids is not None:
            self.ids = {str(m): np.asarray(v, dtype=str) for m, v in dict(self.ids).items() if m in self.features}

    def keys(self, modality: str, split_name: str) -> np.ndarray:
        """The item keys of ``modality`` (str (n_m,)): its ids when the source has them, else ``<split>/<row>``."""
        if self.ids is not None and modality in self.ids:
            return self.ids[modality]
        return np.asarray([f"{split_name}/{i}" for i in range(self.num_examples(modality))], dtype=str)

    def _ids_at(self, index) -> dict[str, np.ndarray] | None:
        if self.ids is None:
            return None
        return {m: v[index] for m, v in self.ids.items()}

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modality names in this split, in insertion order."""
        return tuple(self.features)

    def num_examples(self, modality: str | None = None) -> int:
        """Number of items of ``modality``; with ``modality=None`` the common count of a paired split.

        Raises:
            DataError: the modality is unknown, or ``modality=None`` on an unpaired split with several modalities.
        """
        if modality is None:
            if not self.features:
                return 0
            if not self.paired and len(self.features) > 1:
                raise DataError(
                    f"unpaired split with modalities {list(self.features)} has one count per modality; pass modality="
                )
            modality = next(iter(self.features))
        if modality not in self.features:
            raise DataError(f"split has no modality {modality!r} (has: {', '.join(self.features)})")
        return int(np.shape(self.features[modality])[0]) if np.ndim(self.features[modality]) else 0

    def select(self, indices) -> Split:
        """A paired sub-split holding rows ``indices`` (int array (k,)) of every modality, in that order."""
        if not self.paired:
            raise DataError("select() needs a paired split: row i must be the same item in every modality")
        idx = np.asarray(indices, dtype=np.int64)
        return Split(
            features={m: x[idx] for m, x in self.features.items()},
            labels={m: y[idx] for m, y in self.labels.items()},
            paired=True,
            ids=self._ids_at(idx),
        )


@dataclass
class RecordSplit:
    """One split stored as sharded TFRecord files (see :mod:`tf_xmr.data.records`); the data is streamed, not loaded.

    Paired splits keep all modalities of an item in one ``tf.train.Example`` in files ``<split>-<i>-of-<n>.tfrecord``;
    unpaired splits have one file family per modality, ``<split>.<modality>-<i>-of-<n>.tfrecord``.

    Attributes:
        root: directory holding the shards and ``dataset.json``.
        name: split name ("train", "val" or "test").
        paired: whether row ``i`` of every modality is the same item.
        counts: modality -> number of items.
        dims: modality -> feature dimension d_m.
        num_classes: width c of the multi-hot labels stored in the records.
        num_shards: number of shard files per file family.
        stats: modality -> (mean float32 (d,), std float32 (d,)) of this split, from the sidecar.
        class_counts: modality -> int64 (c,) number of items carrying each class, from the sidecar.
        ids_files: modality -> text file of the items' ids, one per line in item order (modalities without one are
            keyed by row).
    """

    root: str
    name: str
    paired: bool
    counts: dict[str, int]
    dims: dict[str, int]
    num_classes: int
    num_shards: int
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    class_counts: dict[str, np.ndarray] = field(default_factory=dict)
    ids_files: dict[str, str] = field(default_factory=dict)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modality names in this split, in sidecar order."""
        return tuple(self.counts)

    def keys(self, modality: str, split_name: str) -> np.ndarray:
        """The item keys of ``modality`` (str (n_m,)): its stored ids when there are any, else ``<split>/<row>``."""
        n = self.num_examples(modality)
        path = self.ids_files.get(modality)
        if path is None:
            return np.asarray([f"{split_name}/{i}" for i in range(n)], dtype=str)
        try:
            with open(path, encoding="utf-8") as handle:
                ids = handle.read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"records: cannot read ids file {path}: {exc}") from None
        if len(ids) != n:
            raise DataError(f"records: {path} holds {len(ids)} ids but dataset.json says {n} {modality} items")
        return np.asarray(ids, dtype=str)

    def num_examples(self, modality: str | None = None) -> int:
        """Number of items of ``modality``; with ``modality=None`` the common count of a paired split."""
        if modality is None:
            if not self.paired and len(self.counts) > 1:
                raise DataError(
                    f"unpaired split {self.name!r} in {self.root} has one count per modality "
                    f"{list(self.counts)}; pass modality="
                )
            modality = next(iter(self.counts))
        if modality not in self.counts:
            raise DataError(f"split {self.name!r} in {self.root} has no modality {modality!r} "
                            f"(has: {', '.join(self.counts)})")
        return int(self.counts[modality])

    def _family(self, modality: str | None) -> str:
        if self.paired:
            if modality is not None and modality not in self.counts:
                raise DataError(
                    f"split {self.name!r} in {self.root} has no modality {modality!r} (has: {', '.join(self.counts)})"
                )
            return self.name
        if modality is None:
            if len(self.counts) != 1:
                raise DataError(
                    f"unpaired split {self.name!r} in {self.root} has one file family per modality "
                    f"{list(self.counts)}; pass modality="
                )
            modality = next(iter(self.counts))
        if modality not in self.counts:
            raise DataError(f"split {self.name!r} in {self.root} has no modality {modality!r} "
                            f"(has: {', '.join(self.counts)})")
        return f"{self.name}.{modality}"

    def file_pattern(self, modality: str | None = None) -> str:
        """Glob pattern of the shard files holding ``modality`` (paired splits: all modalities share the files)."""
        return os.path.join(self.root, f"{self._family(modality)}-*-of-{self.num_shards:05d}.tfrecord")

    def files(self, modality: str | None = None) -> list[str]:
        """The shard file paths of ``modality`` in shard order (the order the writer distributed items in)."""
        family = self._family(modality)
        return [
            os.path.join(self.root, f"{family}-{i:05d}-of-{self.num_shards:05d}.tfrecord")
            for i in range(self.num_shards)
        ]


# ----------------------------------------------------------------------------------------------------------------------
# Feature set
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class FeatureSet:
    """Precomputed features of several modalities with class labels, in named splits.

    Attributes:
        name: dataset name, e.g. "wikipedia" or "synthetic".
        modalities: modality names, e.g. ("image", "text"); the canonical order everywhere.
        class_names: the c class names, in label order (label k is ``class_names[k]``).
        splits: split name ("train", "val", "test") -> :class:`Split` or :class:`RecordSplit`.
        multi_label: whether an item may carry several classes (labels are then multi-hot (n, c)).
        class_embeddings: optional float32 (c, e) semantic vector per class (for zero-shot methods).
        source: the file or directory the data came from, quoted in error messages.
    """

    name: str
    modalities: tuple[str, ...]
    class_names: tuple[str, ...]
    splits: dict[str, Split | RecordSplit]
    multi_label: bool = False
    class_embeddings: np.ndarray | None = None
    source: str = ""

    def __post_init__(self):
        self.modalities = tuple(str(m) for m in self.modalities)
        self.class_names = tuple(str(c) for c in self.class_names)
        self.splits = dict(self.splits)
        self.multi_label = bool(self.multi_label)
        if self.class_embeddings is not None:
            self.class_embeddings = _as_features(self.class_embeddings)

    @property
    def num_classes(self) -> int:
        """Number of classes c."""
        return len(self.class_names)

    @property
    def dims(self) -> dict[str, int]:
        """Modality -> feature dimension d_m (taken from the first split that holds the modality)."""
        out = {}
        for m in self.modalities:
            for split in self.splits.values():
                if isinstance(split, RecordSplit) and m in split.dims:
                    out[m] = int(split.dims[m])
                    break
                if isinstance(split, Split) and m in split.features and np.ndim(split.features[m]) == 2:
                    out[m] = int(split.features[m].shape[1])
                    break
        return out

    def _where(self) -> str:
        return f" in {self.source}" if self.source else ""

    def validate(self, *, warn_unseen: bool = True) -> FeatureSet:
        """Check every invariant; raise on the first violation, warn about suspicious-but-legal data.

        Args:
            warn_unseen: warn about val/test classes absent from train (off for zero-shot splits, where that is the
                point).

        Returns:
            self, so loaders can ``return FeatureSet(...).validate()``.

        Raises:
            DataError: (one line naming split, modality, shape or value) for a missing modality, a feature array that
                is not 2-D real numbers, a dimension differing across splits, NaN/Inf rows, a label count differing
                from the feature rows, labels outside [0, num_classes), multi-hot labels of the wrong width or not
                0/1, several labels per item when ``multi_label`` is False, a paired split with unequal counts or
                disagreeing labels, an empty split, or malformed class embeddings.
        """
        where = self._where()
        if not self.modalities:
            raise DataError(f"feature set {self.name!r}{where} has no modalities")
        if len(set(self.modalities)) != len(self.modalities):
            raise DataError(f"feature set {self.name!r}{where} lists a modality twice: {list(self.modalities)}")
        if LABELS_KEY in self.modalities:
            raise DataError(f"feature set {self.name!r}{where}: {LABELS_KEY!r} is reserved "
                            "and cannot be a modality name")
        if not self.class_names:
            raise DataError(f"feature set {self.name!r}{where} has no class names")
        if not self.splits:
            raise DataError(f"feature set {self.name!r}{where} has no splits")
        c = self.num_classes
        dims: dict[str, tuple[int, str]] = {}
        for split_name, split in self.splits.items():
            if split_name not in SPLIT_NAMES:
                raise DataError(f"unknown split {split_name!r}{where}; valid splits: {', '.join(SPLIT_NAMES)}")
            if isinstance(split, RecordSplit):
                self._validate_record_split(split_name, split, dims)
            elif isinstance(split, Split):
                self._validate_split(split_name, split, dims)
            else:
                raise DataError(f"split {split_name!r}{where} is a {type(split).__name__}, "
                                "expected Split or RecordSplit")
        if self.class_embeddings is not None:
            e = self.class_embeddings
            if e.ndim != 2 or e.shape[0] != c or e.dtype != np.float32:
                raise DataError(
                    f"class_embeddings{where} must be float32 of shape ({c}, e), got {e.dtype} {tuple(e.shape)}"
                )
            if not np.all(np.isfinite(e)):
                raise DataError(f"class_embeddings{where} contain NaN/Inf "
                                f"(first bad class {int(np.argwhere(~np.isfinite(e))[0, 0])})")
        if warn_unseen:
            self._warn_unseen_classes()
        return self

    def _validate_split(self, split_name: str, split: Split, dims: dict) -> None:
        where = self._where()
        c = self.num_classes
        for m in self.modalities:
            if m not in split.features:
                raise DataError(
                    f"split {split_name!r}{where} lacks modality {m!r} (has: {', '.join(split.features) or 'none'})"
                )
            if m not in split.labels:
                raise DataError(
                    f"split {split_name!r}{where} has no labels for modality {m!r} "
                    f"(labels for: {', '.join(split.labels) or 'none'})"
                )
        extra = [m for m in split.features if m not in self.modalities]
        if extra:
            raise DataError(
                f"split {split_name!r}{where} has modality {extra[0]!r} "
                f"not among the feature set's {list(self.modalities)}"
            )
        for m, ids in (split.ids or {}).items():
            if ids.shape != (split.num_examples(m),):
                raise DataError(f"split {split_name!r}{where}: {m} ids have shape {ids.shape}, expected "
                                f"({split.num_examples(m)},), one id per item")
        for m in self.modalities:
            x, y = split.features[m], split.labels[m]
            at = f"split {split_name!r} modality {m!r}{where}"
            if x.ndim != 2 or x.dtype != np.float32:
                raise DataError(f"{at}: features must be a 2-D array of real numbers, got {x.dtype} {tuple(x.shape)}")
            if x.shape[0] == 0:
                raise DataError(f"{at}: split is empty (features of shape {tuple(x.shape)})")
            if x.shape[1] == 0:
                raise DataError(f"{at}: features have zero columns (shape {tuple(x.shape)})")
            if m in dims and dims[m][0] != x.shape[1]:
                raise DataError(
                    f"modality {m!r}{where} has dimension {dims[m][0]} in split {dims[m][1]!r} "
                    f"but {x.shape[1]} in split {split_name!r}"
                )
            dims.setdefault(m, (x.shape[1], split_name))
            check_finite_rows(x, at)
            if y.shape[:1] != x.shape[:1]:
                raise DataError(f"{at}: {y.shape[0] if y.ndim else 0} labels for {x.shape[0]} feature rows")
            self._validate_labels(y, at, c)
        if split.paired:
            counts = {m: split.features[m].shape[0] for m in self.modalities}
            if len(set(counts.values())) > 1:
                raise DataError(f"paired split {split_name!r}{where} has unequal counts per modality {counts}")
            first = self.modalities[0]
            for m in self.modalities[1:]:
                a, b = split.labels[first], split.labels[m]
                if a.shape != b.shape:
                    raise DataError(
                        f"paired split {split_name!r}{where}: labels of {first!r} {tuple(a.shape)} and {m!r} "
                        f"{tuple(b.shape)} differ in shape; row i must be the same item in every modality"
                    )
                if not np.array_equal(a, b):
                    bad = _first_difference(a, b)
                    raise DataError(
                        f"paired split {split_name!r}{where}: labels of {first!r} and {m!r} differ "
                        f"(first at row {bad}); row i must be the same item in every modality"
                    )

    def _validate_labels(self, y: np.ndarray, at: str, c: int) -> None:
        if y.ndim == 1:
            if y.dtype != np.int64:
                raise DataError(f"{at}: 1-D labels must be whole numbers (class ids), got {y.dtype}")
            bad = (y < 0) | (y >= c)
            if np.any(bad):
                i = int(np.argmax(bad))
                raise DataError(
                    f"{at}: label {int(y[i])} at row {i} outside [0, {c}) ({int(bad.sum())} rows out of range)"
                )
        elif y.ndim == 2:
            if y.dtype != np.float32:
                raise DataError(f"{at}: multi-hot labels must be numbers, got {y.dtype}")
            if y.shape[1] != c:
                raise DataError(f"{at}: multi-hot labels have width {y.shape[1]}, expected num_classes={c}")
            bad = ~((y == 0) | (y == 1))
            if np.any(bad):
                r, col = (int(v) for v in np.argwhere(bad)[0])
                raise DataError(f"{at}: multi-hot labels must be 0/1, found {y[r, col]!r} at row {r} column {col}")
            if not self.multi_label:
                per_row = y.sum(axis=1)
                many = per_row != 1
                if np.any(many):
                    i = int(np.argmax(many))
                    raise DataError(
                        f"{at}: row {i} carries {int(per_row[i])} labels but the feature set is not multi_label "
                        f"(each row needs exactly one)"
                    )
        else:
            raise DataError(f"{at}: labels must be (n,) class ids or (n, {c}) multi-hot, got shape {tuple(y.shape)}")

    def _validate_record_split(self, split_name: str, split: RecordSplit, dims: dict) -> None:
        where = self._where()
        for m in self.modalities:
            if m not in split.counts or m not in split.dims:
                raise DataError(f"split {split_name!r}{where} lacks modality {m!r} "
                                f"(has: {', '.join(split.counts) or 'none'})")
            n, d = int(split.counts[m]), int(split.dims[m])
            if n <= 0:
                raise DataError(f"split {split_name!r} modality {m!r}{where}: split is empty")
            if m in dims and dims[m][0] != d:
                raise DataError(
                    f"modality {m!r}{where} has dimension {dims[m][0]} in split {dims[m][1]!r} "
                    f"but {d} in split {split_name!r}"
                )
            dims.setdefault(m, (d, split_name))
        if split.num_classes != self.num_classes:
            raise DataError(
                f"split {split_name!r}{where} stores labels of width {split.num_classes}, expected {self.num_classes}"
            )
        if split.paired and len({int(split.counts[m]) for m in self.modalities}) > 1:
            raise DataError(f"paired split {split_name!r}{where} has unequal counts per modality {dict(split.counts)}")

    def _warn_unseen_classes(self) -> None:
        train = self.splits.get("train")
        if train is None:
            return
        seen = np.zeros(self.num_classes, dtype=bool)
        for m in self.modalities:
            counts = split_class_counts(train, m, self.num_classes)
            if counts is not None:
                seen |= counts > 0
        for split_name in ("val", "test"):
            split = self.splits.get(split_name)
            if split is None:
                continue
            for m in self.modalities:
                counts = split_class_counts(split, m, self.num_classes)
                if counts is None:
                    continue
                unseen = np.flatnonzero((counts > 0) & ~seen)
                if unseen.size:
                    names = [self.class_names[k] for k in unseen[:5]]
                    logger.warning(
                        "%s split %r modality %r has %d class(es) absent from train: %s%s",
                        self.name, split_name, m, unseen.size, ", ".join(names), " ..." if unseen.size > 5 else "",
                    )

    def summary(self) -> dict:
        """A JSON-able description: name, modalities, dims, classes, counts per split/modality, multi_label, paired."""
        splits = {}
        for split_name, split in self.splits.items():
            counts = {}
            for m in self.modalities:
                try:
                    counts[m] = split.num_examples(m)
                except DataError:
                    counts[m] = 0
            splits[split_name] = {
                "paired": bool(split.paired),
                "counts": counts,
                "storage": "records" if isinstance(split, RecordSplit) else "memory",
            }
        return {
            "name": self.name,
            "modalities": list(self.modalities),
            "dims": self.dims,
            "num_classes": self.num_classes,
            "classes": list(self.class_names),
            "multi_label": self.multi_label,
            "class_embedding_dim": None if self.class_embeddings is None else int(self.class_embeddings.shape[1]),
            "splits": splits,
            "source": self.source,
        }

    def select_modalities(self, modalities) -> FeatureSet:
        """The same feature set restricted to ``modalities`` (in the given order); in-memory splits only.

        Raises:
            DataError: a named modality is not in the feature set (the message lists what it has).
        """
        modalities = tuple(modalities)
        missing = [m for m in modalities if m not in self.modalities]
        if missing:
            raise DataError(
                f"feature set {self.name!r}{self._where()} has no modality {missing[0]!r} "
                f"(has: {', '.join(self.modalities)})"
            )
        splits = {}
        for name, split in self.splits.items():
            if not isinstance(split, Split):
                raise DataError(f"select_modalities needs in-memory splits; split {name!r} is streamed from records")
            splits[name] = Split(
                features={m: split.features[m] for m in modalities},
                labels={m: split.labels[m] for m in modalities},
                paired=split.paired,
                ids=split.ids,
            )
        return dataclasses.replace(self, modalities=modalities, splits=splits)

    def replace(self, **changes) -> FeatureSet:
        """A shallow copy with some fields replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def check_finite_rows(x: np.ndarray, at: str) -> None:
    """Raise DataError naming ``at``, the first bad row and the number of bad rows if ``x`` (n, d) has NaN/Inf."""
    finite = np.isfinite(x)
    if finite.all():
        return
    bad_rows = ~finite.reshape(finite.shape[0], -1).all(axis=1) if x.ndim > 1 else ~finite
    first = int(np.argmax(bad_rows))
    raise DataError(f"{at}: {int(bad_rows.sum())} row(s) contain NaN/Inf, first at row {first}")


def _first_difference(a: np.ndarray, b: np.ndarray) -> int:
    """First row index where two equally shaped label arrays differ."""
    n = a.shape[0]
    diff = np.flatnonzero(~np.all(a.reshape(n, -1) == b.reshape(n, -1), axis=1))
    return int(diff[0]) if diff.size else n


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Number of items carrying each class: int64 (c,). ``labels`` are class ids (n,) or multi-hot (n, c)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return np.bincount(labels.astype(np.int64), minlength=num_classes)[:num_classes].astype(np.int64)
    return (labels > 0).sum(axis=0).astype(np.int64)


def split_class_counts(split: Split | RecordSplit, modality: str, num_classes: int) -> np.ndarray | None:
    """Per-class item counts (c,) of ``modality`` in ``split``, or None when unknown."""
    if isinstance(split, RecordSplit):
        counts = split.class_counts.get(modality)
        return None if counts is None else np.asarray(counts, dtype=np.int64)
    y = split.labels.get(modality)
    if y is None:
        return None
    return class_counts(y, num_classes)


def primary_labels(labels: np.ndarray) -> np.ndarray:
    """Class id per item, int64 (n,): the id itself, or for multi-hot (n, c) the first (lowest) positive class.

    Multi-hot rows without any positive class get the id ``c`` (a stratum of their own).
    """
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels.astype(np.int64)
    if labels.ndim != 2:
        raise DataError(f"labels must be (n,) class ids or (n, c) multi-hot, got shape {tuple(labels.shape)}")
    positive = labels > 0
    first = np.argmax(positive, axis=1).astype(np.int64)
    first[~positive.any(axis=1)] = labels.shape[1]
    return first


def stratified_split(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a seeded, class-stratified ``fraction`` of the items.

    Each class with k items contributes ``round(fraction * k)`` held-out items (half rounds up), at least 1 when
    ``fraction > 0`` and k >= 2, and never all k (the kept part keeps every class). Multi-hot labels are stratified by
    their first positive class. The result depends only on ``labels``, ``fraction`` and ``seed``.

    Args:
        labels: int class ids (n,) or multi-hot (n, c).
        fraction: share to hold out, in [0, 1).
        seed: integer seed.

    Returns:
        (keep_idx, held_idx): sorted int64 index arrays that partition ``range(n)``.
    """
    fraction = float(fraction)
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"hold-out fraction must be in [0, 1), got {fraction}")
    strata = primary_labels(labels)
    rng = np.random.default_rng(seed)
    held = []
    for k in np.unique(strata):
        members = np.flatnonzero(strata == k)
        if fraction == 0.0 or members.size < 2:
            continue
        n_held = int(np.floor(fraction * members.size + 0.5))
        n_held = min(max(n_held, 1), members.size - 1)
        held.append(rng.permutation(members)[:n_held])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(strata.shape[0], dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask).astype(np.int64), held_idx.astype(np.int64)


def split_validation(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Carve a stratified, seeded validation split out of a paired training split.

    Stratifies on the labels of the split's first modality (identical across modalities in a paired split).

    Args:
        split: a paired in-memory :class:`Split`.
        fraction: share of items moved to validation, in (0, 1).
        seed: integer seed.

    Returns:
        (train, val) Splits; row order within each follows the original order.
    """
    if not isinstance(split, Split):
        raise DataError(f"split_validation needs an in-memory Split, got {type(split).__name__}")
    if not split.paired:
        raise DataError("split_validation needs a paired split (rows of all modalities are the same items)")
    if not split.labels:
        raise DataError("split_validation: split has no labels")
    if not 0.0 < float(fraction) < 1.0:
        raise DataError(f"validation fraction must be in (0, 1), got {fraction}")
    if split.num_examples() == 0:
        raise DataError("split_validation: the training split is empty, so no validation items can be held out")
    first = next(iter(split.labels))
    keep, held = stratified_split(split.labels[first], fraction, seed)
    if held.size == 0:
        raise DataError(
            f"validation fraction {fraction} of {split.num_examples()} items leaves no validation item "
            f"(every class has fewer than 2 items)"
        )
    return split.select(keep), split.select(held)


def to_multi_hot(labels, num_classes: int) -> np.ndarray:
    """Labels as float32 multi-hot (n, c).

    Args:
        labels: int class ids (n,) (or (n, 1)), or already multi-hot (n, c).
        num_classes: c.

    Returns:
        float32 (n, c) with 1 where the item carries the class.
    """
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1 and num_classes != 1:
        y = y[:, 0]
    if y.ndim == 1:
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
                raise DataError("class-id labels must be whole numbers")
        y = y.astype(np.int64)
        bad = (y < 0) | (y >= num_classes)
        if np.any(bad):
            raise DataError(f"label {int(y[np.argmax(bad)])} outside [0, {num_classes})")
        out = np.zeros((y.shape[0], num_classes), dtype=np.float32)
        out[np.arange(y.shape[0]), y] = 1.0
        return out
    if y.ndim == 2:
        if y.shape[1] != num_classes:
            raise DataError(f"multi-hot labels have width {y.shape[1]}, expected num_classes={num_classes}")
        return np.ascontiguousarray(y, dtype=np.float32)
    raise DataError(f"labels must be (n,) class ids or (n, c) multi-hot, got shape {tuple(y.shape)}")


def feature_stats(split: Split | RecordSplit, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and (population) standard deviation of ``modality`` in ``split``.

    For an in-memory :class:`Split` they are computed (in float64, for accuracy over many rows); for a
    :class:`RecordSplit` they come from the ``dataset.json`` sidecar, written from the same computation. Constant
    dimensions have std 0: guard the division when standardising.

    Returns:
        (mean, std): float32 arrays of shape (d,).
    """
    if isinstance(split, RecordSplit):
        if modality not in split.stats:
            raise DataError(
                f"split {split.name!r} in {split.root}: no feature statistics for modality {modality!r} "
                f"in dataset.json (has: {', '.join(split.stats) or 'none'})"
            )
        mean, std = split.stats[modality]
        return np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    if not isinstance(split, Split):
        raise DataError(f"feature_stats needs a Split or RecordSplit, got {type(split).__name__}")
    if modality not in split.features:
        raise DataError(f"split has no modality {modality!r} (has: {', '.join(split.features)})")
    x = split.features[modality]
    if x.ndim != 2 or x.shape[0] == 0:
        raise DataError(f"feature_stats: modality {modality!r} features must be non-empty 2-D, got {tuple(x.shape)}")
    mean = x.mean(axis=0, dtype=np.float64)
    var = np.square(x - mean).mean(axis=0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


__all__ = [
    "Split",
    "RecordSplit",
    "FeatureSet",
    "SPLIT_NAMES",
    "LABELS_KEY",
    "stratified_split",
    "split_validation",
    "to_multi_hot",
    "feature_stats",
    "class_counts",
    "primary_labels",
    "check_finite_rows",
]

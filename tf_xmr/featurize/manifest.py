"""The manifest of a raw dataset: one row per item, CSV or JSON Lines.

Columns (CSV header, or JSON keys):

- ``id`` (required): the item's key, unique; retrieval answers with it.
- ``split`` (optional): ``train``, ``val`` or ``test``. Give it for every row or for none; without it, the items
  are split by class, seeded (``split.val_fraction``, ``split.test_fraction``, ``split.seed`` of the featurize config).
- ``label`` (required): the class name; several for a multi-label item (a JSON list, or names joined by ``|`` in CSV).
- ``image`` (optional): path of the image file, relative to the manifest's folder (or absolute).
- ``text`` (optional): the text itself, or the path of a ``.txt`` file (relative to the manifest) holding it: a value
  that ends in ``.txt`` and names an existing file is read from that file.

Every row has an image, a text or both. Rows with only one modality make the dataset unpaired (each modality its own
collection, as SDML trains); when every row has both, the items are paired.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np

from tf_xmr.errors import DataError

SPLITS = ("train", "val", "test")
COLUMNS = ("id", "split", "label", "image", "text")
LABEL_SEPARATOR = "|"


@dataclasses.dataclass(frozen=True)
class Row:
    """One manifest item. ``line`` is its line in the file (CSV: counting the header), for error messages."""

    line: int
    id: str
    split: str | None
    labels: tuple[str, ...]
    image: str | None  # absolute path
    text: str | None  # the text itself (a .txt file already read)


@dataclasses.dataclass(frozen=True)
class Manifest:
    path: str
    rows: tuple[Row, ...]

    @property
    def class_names(self) -> tuple[str, ...]:
        """Every class name used, sorted (label k is ``class_names[k]``)."""
        return tuple(sorted({name for row in self.rows for name in row.labels}))

    @property
    def multi_label(self) -> bool:
        return any(len(row.labels) > 1 for row in self.rows)

    @property
    def paired(self) -> bool:
        return all(row.image is not None and row.text is not None for row in self.rows)

    def where(self, row: Row) -> str:
        return f"{self.path} line {row.line} (id {row.id!r})"


def read_manifest(path: str) -> Manifest:
    """Read and check a CSV (``.csv``) or JSON Lines (``.jsonl``/``.json``) manifest.

    Raises:
        DataError: one line naming the file and line: a missing file or column, an empty or duplicate id, no label,
            an unknown split, a row with neither image nor text, a missing image or .txt file, a malformed line.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise DataError(f"manifest not found: {path}")
    extension = os.path.splitext(path)[1].lower()
    if extension == ".csv":
        records = list(_csv_records(path))
    elif extension in (".jsonl", ".json"):
        records = list(_jsonl_records(path))
    else:
        raise DataError(f"manifest {path}: use a .csv or .jsonl file (got {extension or 'no extension'!r})")
    if not records:
        raise DataError(f"manifest {path} has no items")
    base = os.path.dirname(path)
    rows, seen = [], {}
    for line, record in records:
        row = _row(path, base, line, record)
        if row.id in seen:
            raise DataError(f"{path} line {line}: id {row.id!r} is already used on line {seen[row.id]}")
        seen[row.id] = line
        rows.append(row)
    given = [row.split is not None for row in rows]
    if any(given) and not all(given):
        missing = next(row for row in rows if row.split is None)
        raise DataError(f"{path} line {missing.line}: no split; give a split for every row or for none (then the "
                        "items are split by class, seeded)")
    return Manifest(path, tuple(rows))


def _csv_records(path: str):
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                return
            unknown = [name for name in reader.fieldnames if name not in COLUMNS]
            if unknown:
                raise DataError(f"manifest {path}: unknown column {unknown[0]!r}; columns are {', '.join(COLUMNS)}")
            for record in reader:
                if None in record:  # more fields than the header names
                    raise DataError(f"{path} line {reader.line_num}: more fields than the header's "
                                    f"{len(reader.fieldnames)}")
                yield reader.line_num, record
    except UnicodeDecodeError as exc:
        raise DataError(f"manifest {path} is not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise DataError(f"manifest {path}: malformed CSV ({exc})") from None


def _jsonl_records(path: str):
    try:
        with open(path, encoding="utf-8") as handle:
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path} line {line}: not JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path} line {line}: expected a JSON object, got {type(record).__name__}")
                unknown = [key for key in record if key not in COLUMNS]
                if unknown:
                    raise DataError(f"{path} line {line}: unknown key {unknown[0]!r}; keys are {', '.join(COLUMNS)}")
                yield line, record
    except UnicodeDecodeError as exc:
        raise DataError(f"manifest {path} is not UTF-8 text ({exc.reason})") from None


def _text_value(value, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    value = value.strip()
    return value or None


def _row(path: str, base: str, line: int, record: dict) -> Row:
    at = f"{path} line {line}"
    item_id = _text_value(record.get("id"), f"{at}: id")
    if item_id is None:
        raise DataError(f"{at}: no id")
    split = _text_value(record.get("split"), f"{at}: split")
    if split is not None and split not in SPLITS:
        raise DataError(f"{at}: split {split!r} is not one of {', '.join(SPLITS)}")
    raw_label = record.get("label")
    if isinstance(raw_label, list):
        labels = [_text_value(name, f"{at}: label") for name in raw_label]
    else:
        labels = (_text_value(raw_label, f"{at}: label") or "").split(LABEL_SEPARATOR)
    labels = tuple(dict.fromkeys(name.strip() for name in labels if name and name.strip()))
    if not labels:
        raise DataError(f"{at}: no label")
    image = _text_value(record.get("image"), f"{at}: image")
    if image is not None:
        image = os.path.normpath(os.path.join(base, image))
        if not os.path.isfile(image):
            raise DataError(f"{at}: image file not found: {image}")
    text = _text_value(record.get("text"), f"{at}: text")
    if text is not None and text.lower().endswith(".txt"):
        candidate = os.path.normpath(os.path.join(base, text))
        if os.path.isfile(candidate):
            try:
                with open(candidate, encoding="utf-8") as handle:
                    text = handle.read().strip() or None
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"{at}: cannot read text file {candidate}: {exc}") from None
            if text is None:
                raise DataError(f"{at}: text file {candidate} is empty")
    if image is None and text is None:
        raise DataError(f"{at}: the item has neither an image nor a text")
    return Row(line, item_id, split, labels, image, text)


def assign_splits(manifest: Manifest, *, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[Row]]:
    """split name -> rows, in manifest order: the manifest's own splits, or a seeded split by class.

    Without a split column, each class's items (by first label) are shuffled with ``seed`` and the first
    ``round(test_fraction * n)`` go to test, the next ``round(val_fraction * n)`` to val, the rest to train (a class of
    three or more items keeps at least one in each split whose fraction is set; at least one stays in train).
    """
    if manifest.rows[0].split is not None:
        out = {name: [row for row in manifest.rows if row.split == name] for name in SPLITS}
    else:
        rng = np.random.default_rng(seed)
        chosen: dict[str, str] = {}
        for name in manifest.class_names:
            members = [row.id for row in manifest.rows if row.labels[0] == name]
            members = [members[i] for i in rng.permutation(len(members))]
            # At least one test and one validation item per class when its fraction is set and the class has three
            # items (training selects on val and scores every class on test); at least one stays in train.
            n_test = max(int(round(test_fraction * len(members))), int(test_fraction > 0 and len(members) >= 3))
            n_val = max(int(round(val_fraction * len(members))), int(val_fraction > 0 and len(members) >= 3))
            n_test, n_val = min(n_test, len(members) - 1), min(n_val, max(len(members) - 1 - n_test, 0))
            for i, item_id in enumerate(members):
                chosen[item_id] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
        out = {name: [row for row in manifest.rows if chosen[row.id] == name] for name in SPLITS}
    if not out["train"]:
        raise DataError(f"manifest {manifest.path} has no train items")
    return {name: rows for name, rows in out.items() if rows}

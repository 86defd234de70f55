"""Manifest in, feature records out: ``python -m tf_xmr.featurize --manifest M --config C --out DIR``.

Output (what ``data.source: records`` trains on, plus what later queries need)::

    DIR/dataset.json, DIR/<split>-*.tfrecord, DIR/<split>.<modality>.ids     tf_xmr.data.records
    DIR/featurizers/featurize.yaml      the resolved featurize config
    DIR/featurizers/text/               the text featurizer fitted on the train split (if texts were featurized)
    DIR/featurizers/image.json          the image featurizer's description (backbone, weights, size)
    DIR/report.json                     counts per split and modality, skipped rows, featurizers, timings

Resumable: the work happens in ``DIR.partial/`` next to ``DIR``, chunk by chunk (``chunk_size`` items per modality);
a finished chunk is kept there, so running the same command again after an interruption continues with the next
chunk. ``DIR`` appears only when everything is written (records written to a temporary folder, then renamed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time

import numpy as np

from tf_xmr.errors import ConfigError, DataError
from tf_xmr.featurize.manifest import SPLITS, Manifest, Row, assign_splits, read_manifest

MODALITIES = ("image", "text")
FEATURIZERS = "featurizers"
REPORT = "report.json"


def _fingerprint(manifest_path: str, config) -> str:
    from tf_xmr.config import to_dict

    digest = hashlib.sha256()
    with open(manifest_path, "rb") as handle:
        digest.update(handle.read())
    digest.update(json.dumps(to_dict(config), sort_keys=True).encode())
    return digest.hexdigest()


def _ordered_items(splits: dict[str, list[Row]], modality: str) -> list[tuple[str, Row]]:
    """(split, row) of every row that has ``modality``, split by split (train, val, test), manifest order within."""
    return [(name, row) for name in SPLITS for row in splits.get(name, []) if getattr(row, modality) is not None]


class _Progress:
    """One line per modality on stderr, rewritten in place on a terminal, every 10% otherwise."""

    def __init__(self, modality: str, total: int, stream=None):
        self.modality, self.total, self.stream = modality, total, stream or sys.stderr
        self.start, self.shown = time.perf_counter(), -1

    def update(self, done: int) -> None:
        tenth = int(10 * done / max(self.total, 1))
        interactive = getattr(self.stream, "isatty", lambda: False)()
        if not interactive and tenth == self.shown and done < self.total:
            return
        self.shown = tenth
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        end = "\r" if interactive and done < self.total else "\n"
        print(f"{self.modality}: {done}/{self.total} items ({100 * done / max(self.total, 1):.0f}%, "
              f"{rate:.1f}/s)", end=end, file=self.stream, flush=True)


def featurize(manifest_path: str, config, out_dir: str, *, skip_bad: bool = False, quiet: bool = False) -> dict:
    """Featurize every item of a manifest and write the feature records to ``out_dir``.

    Args:
        manifest_path: the CSV or JSON Lines manifest (``tf_xmr.featurize.manifest``).
        config: a ``FeaturizeConfig``.
        out_dir: the records directory to create (must not exist, or be empty).
        skip_bad: leave out items whose image cannot be read (listed in ``report.json``) instead of stopping.
        quiet: no progress lines.

    Returns:
        The report written to ``out_dir/report.json``.

    Raises:
        DataError: a bad manifest, an unreadable image (naming the file and the manifest line), an existing output,
            a partial run of another manifest or config in ``<out_dir>.partial``.
    """
    from tf_xmr.config import dump_yaml

    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.lexists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise DataError(f"--out {out_dir} exists and is not an empty folder; choose another --out")
    manifest = read_manifest(manifest_path)
    modalities = _modalities(manifest, config)
    splits = assign_splits(manifest, val_fraction=config.split.val_fraction,
                           test_fraction=config.split.test_fraction, seed=config.split.seed)
    work = out_dir + ".partial"
    fingerprint = _fingerprint(manifest.path, config)
    stamp = os.path.join(work, "fingerprint")
    if os.path.isdir(work):
        with open(stamp, encoding="utf-8") as handle:
            if handle.read().strip() != fingerprint:
                raise DataError(f"{work} holds a partial run of another manifest or config; remove it or choose "
                                "another --out")
    else:
        os.makedirs(os.path.dirname(out_dir), exist_ok=True)
        os.makedirs(work + ".new", exist_ok=True)
        with open(os.path.join(work + ".new", "fingerprint"), "w", encoding="utf-8") as handle:
            handle.write(fingerprint + "\n")
        os.replace(work + ".new", work)

    started = time.perf_counter()
    featurizers = _featurizers(config, modalities, splits, work)
    features, skipped, timings = {}, [], {}
    for modality in modalities:
        begun = time.perf_counter()
        features[modality], bad = _featurize_modality(manifest, featurizers[modality], modality, splits, work,
                                                       config.chunk_size, skip_bad, quiet)
        skipped.extend(bad)
        items = len(_ordered_items(splits, modality))
        timings[modality] = {"seconds": round(time.perf_counter() - begun, 2), "items": items}

    feature_set = _feature_set(manifest, config, modalities, splits, features, {s["id"] for s in skipped})
    from tf_xmr.data.records import write_records

    staging = os.path.join(work, "records")
    shutil.rmtree(staging, ignore_errors=True)
    write_records(feature_set, staging, num_shards=config.num_shards)
    saved = os.path.join(staging, FEATURIZERS)
    os.makedirs(saved)
    dump_yaml(config, os.path.join(saved, "featurize.yaml"))
    if "text" in featurizers:
        featurizers["text"].save(os.path.join(saved, "text"))
    if "image" in featurizers:
        with open(os.path.join(saved, "image.json"), "w", encoding="utf-8") as handle:
            json.dump(featurizers["image"].describe(), handle, indent=2)
    report = {
        "manifest": manifest.path,
        "items": len(manifest.rows),
        "paired": feature_set.splits["train"].paired,
        "counts": {name: {m: split.num_examples(m) for m in modalities} for name, split in feature_set.splits.items()},
        "classes": list(feature_set.class_names),
        "skipped": skipped,
        "featurizers": {m: featurizers[m].describe() for m in modalities},
        "timings": {**timings, "total_seconds": round(time.perf_counter() - started, 2)},
    }
    with open(os.path.join(staging, REPORT), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    if os.path.isdir(out_dir):
        os.rmdir(out_dir)  # empty (checked above)
    os.rename(staging, out_dir)
    shutil.rmtree(work, ignore_errors=True)
    return report


def _modalities(manifest: Manifest, config) -> tuple[str, ...]:
    present = {m for m in MODALITIES if any(getattr(row, m) is not None for row in manifest.rows)}
    configured = {m for m in MODALITIES if getattr(config, m) is not None}
    if not configured:
        raise ConfigError("the featurize config sets neither image nor text; nothing to featurize")
    absent = sorted(configured - present)
    if absent:
        raise DataError(f"the featurize config has a {absent[0]} featurizer but no row of {manifest.path} has a "
                        f"{absent[0]}")
    chosen = tuple(m for m in MODALITIES if m in configured and m in present)
    if len(chosen) < 2:
        # One modality cannot be retrieved across; say why rather than writing a set no method trains on.
        missing = next(m for m in MODALITIES if m not in chosen)
        raise ConfigError(f"cross-modal retrieval needs images and texts, but {missing}s are "
                          + ("not in the manifest" if missing not in present else "off in the featurize config"))
    return chosen


def _featurizers(config, modalities, splits, work: str) -> dict:
    out = {}
    if "text" in modalities:
        from tf_xmr.featurize.text import TextFeaturizer

        fitted = os.path.join(work, "text-featurizer")
        if os.path.isdir(fitted):  # a resumed run: the same train texts were fitted already
            out["text"] = TextFeaturizer.load(fitted)
        else:
            texts = [row.text for row in splits["train"] if row.text is not None]
            if not texts:
                raise DataError("no train item has a text to fit the text featurizer on")
            # Fitted on the train split only, so validation, test and every later query are featurized alike.
            out["text"] = TextFeaturizer.fit(config.text, texts)
            out["text"].save(fitted)
    if "image" in modalities:
        from tf_xmr.featurize.image import ImageFeaturizer

        out["image"] = ImageFeaturizer(config.image)
    return out


def _featurize_modality(manifest, featurizer, modality, splits, work, chunk_size, skip_bad, quiet):
    """Features of every item with ``modality`` (in ``_ordered_items`` order; skipped images are NaN rows) and the
    skipped items."""
    items = _ordered_items(splits, modality)
    progress = None if quiet else _Progress(modality, len(items))
    chunks, skipped = [], []
    for start in range(0, len(items), chunk_size):
        part = items[start:start + chunk_size]
        path = os.path.join(work, f"{modality}-{start // chunk_size:06d}.npz")
        if not os.path.exists(path):
            if modality == "image":
                rows, bad = featurizer.features_from_paths([row.image for _, row in part], on_error="skip")
                full = np.full((len(part), featurizer.dim), np.nan, np.float32)
                ok = np.setdiff1d(np.arange(len(part)), [index for index, _ in bad])
                full[ok] = rows
                for index, reason in bad:
                    row = part[index][1]
                    if not skip_bad:
                        raise DataError(f"{manifest.where(row)}: image {row.image} cannot be read ({reason}); fix "
                                        "or remove the row, or pass --skip-bad")
            else:
                full, bad = featurizer.transform([row.text for _, row in part]).astype(np.float32), []
            bad_json = json.dumps([[int(i), str(r)] for i, r in bad])
            np.savez(path + ".tmp.npz", features=full, bad=np.asarray(bad_json))
            os.replace(path + ".tmp.npz", path)  # a finished chunk, kept for a resumed run
        with np.load(path) as stored:
            chunks.append(stored["features"])
            for index, reason in json.loads(str(stored["bad"])):
                row = part[index][1]
                skipped.append({"id": row.id, "line": row.line, "modality": modality, "file": row.image,
                                "reason": reason})
        if progress is not None:
            progress.update(min(start + chunk_size, len(items)))
    return (np.concatenate(chunks) if chunks else np.zeros((0, featurizer.dim), np.float32)), skipped


def _feature_set(manifest, config, modalities, splits, features, skipped_ids):
    from tf_xmr.data.feature_set import FeatureSet, Split

    class_names = manifest.class_names
    index = {name: k for k, name in enumerate(class_names)}
    multi = manifest.multi_label
    paired = manifest.paired

    def labels(rows):
        if not multi:
            return np.asarray([index[row.labels[0]] for row in rows], dtype=np.int64)
        out = np.zeros((len(rows), len(class_names)), np.float32)
        for i, row in enumerate(rows):
            out[i, [index[name] for name in row.labels]] = 1.0
        return out

    positions = {m: {(name, row.id): i for i, (name, row) in enumerate(_ordered_items(splits, m))}
                 for m in modalities}
    out = {}
    for name, rows in splits.items():
        # A skipped image drops its whole item from a paired set (its text would have no partner).
        kept = {m: [row for row in rows if getattr(row, m) is not None and row.id not in skipped_ids]
                for m in modalities}
        if paired:
            kept = {m: [row for row in rows if row.id not in skipped_ids] for m in modalities}
        if any(not kept[m] for m in modalities):
            empty = next(m for m in modalities if not kept[m])
            raise DataError(f"the {name} split of {manifest.path} has no {empty} item")
        out[name] = Split(
            features={m: features[m][[positions[m][name, row.id] for row in kept[m]]] for m in modalities},
            labels={m: labels(kept[m]) for m in modalities},
            paired=paired,
            ids={m: np.asarray([row.id for row in kept[m]], dtype=str) for m in modalities},
        )
    return FeatureSet(name=config.name, modalities=modalities, class_names=class_names, splits=out,
                      multi_label=multi, source=manifest.path).validate()


# ----------------------------------------------------------------------------------------------------------------------
# Fitted featurizers for queries


@dataclasses.dataclass
class Featurizers:
    """The featurizers a featurized dataset was made with, for new queries: ``.image(paths)``, ``.text(strings)``."""

    root: str
    image_featurizer: object | None
    text_featurizer: object | None

    def image(self, paths) -> np.ndarray:
        """Image files -> features float32 (n, d_image), exactly as the dataset's images were featurized."""
        if self.image_featurizer is None:
            raise DataError(f"{self.root} was featurized without images")
        return self.image_featurizer.features_from_paths([os.fspath(p) for p in paths], on_error="raise")[0]

    def image_bytes(self, encoded) -> np.ndarray:
        """Encoded image files (bytes) -> features float32 (n, d_image)."""
        if self.image_featurizer is None:
            raise DataError(f"{self.root} was featurized without images")
        return self.image_featurizer.features_from_bytes(list(encoded))

    def text(self, texts) -> np.ndarray:
        """Texts -> features float32 (n, d_text) with the featurizer fitted on the train split."""
        if self.text_featurizer is None:
            raise DataError(f"{self.root} was featurized without texts")
        if isinstance(texts, str):
            texts = [texts]
        return self.text_featurizer.transform(list(texts)).astype(np.float32)


def has_featurizers(root: str | None) -> bool:
    return bool(root) and os.path.isfile(os.path.join(root, FEATURIZERS, "featurize.yaml"))


def load(root: str) -> Featurizers:
    """The fitted featurizers of a directory written by ``python -m tf_xmr.featurize``.

    Raises:
        DataError: ``root`` was not written by the featurize command, or its featurizers are damaged.
    """
    root = os.path.abspath(os.fspath(root))
    if not has_featurizers(root):
        raise DataError(f"{root} holds no featurizers (it was not written by python -m tf_xmr.featurize)")
    from tf_xmr.featurize.config import load_featurize_config

    config = load_featurize_config(os.path.join(root, FEATURIZERS, "featurize.yaml"))
    image = text = None
    if os.path.isfile(os.path.join(root, FEATURIZERS, "image.json")) and config.image is not None:
        from tf_xmr.featurize.image import ImageFeaturizer

        image = ImageFeaturizer(config.image)
    if os.path.isdir(os.path.join(root, FEATURIZERS, "text")):
        from tf_xmr.featurize.text import TextFeaturizer

        text = TextFeaturizer.load(os.path.join(root, FEATURIZERS, "text"))
    return Featurizers(root, image, text)

"""Query input for the retrieval CLI: feature files, items of the run's own data by key, the run's direction."""

from __future__ import annotations

import os

import numpy as np

from tf_xmr.errors import ConfigError, DataError


def run_direction(run_dir: str, query: str, target: str | None) -> tuple[str, str]:
    """``(query, target)`` of a run, checked against its modalities (from its config, without loading data)."""
    from tf_xmr.retrieval.index import resolve_direction
    from tf_xmr.run_dir import load_run_config, run_modalities

    modalities = run_modalities(run_dir)
    if modalities is None:
        from tf_xmr.files import read_json_if_present

        # A finished run records its data's modalities in data.json; the config alone does not name them.
        record = read_json_if_present(os.path.join(run_dir, "data.json")) or {}
        modalities = tuple(record.get("modalities") or ())
        if not modalities:
            load_run_config(run_dir)  # a clear error when run_dir is not a run at all
            raise ConfigError(f"{run_dir} has no data.json naming its modalities; is the run finished?")
    return resolve_direction(tuple(modalities), target if target is not None else _other(modalities, query), query)


def _other(modalities, query: str) -> str:
    others = [m for m in modalities if m != query]
    if query not in modalities:
        raise ConfigError(f"--query {query!r} is not a modality of this run (has: {', '.join(modalities)})")
    if len(others) != 1:
        raise ConfigError(f"this run has modalities {', '.join(modalities)}; say which one is ranked with --target")
    return others[0]


def read_query_features(path: str, query: str) -> np.ndarray:
    """Query rows float32 (n, d) from a .npy or an .npz (the array named after the query modality, or the only
    one); a single row (d,) is one query."""
    from tf_xmr.retrieval.index import read_feature_file

    return read_feature_file(path, query, "query features", one_row=True)


def query_by_key(run_dir: str, query: str, key: str) -> tuple[np.ndarray, str]:
    """The features (1, d) and class name of the run's own ``query`` item with this key (test, val, then train)."""
    from tf_xmr.modeling import prepare_data
    from tf_xmr.retrieval.index import class_strings, split_arrays
    from tf_xmr.run_dir import load_run_config

    config, feature_set = prepare_data(load_run_config(run_dir))
    for name in ("test", "val", "train"):
        split = feature_set.splits.get(name)
        if split is None or query not in split.modalities:
            continue
        rows = np.flatnonzero(split.keys(query, name) == key)
        if rows.size:
            row = int(rows[0])
            features, labels = split_arrays(split, query, feature_set.num_classes)
            label = class_strings(labels[row:row + 1], feature_set.class_names)[0]
            return features[row:row + 1], str(label)
    raise DataError(f"no {query} item with key {key!r} in the run's data (keys are the dataset's item ids, or "
                    "<split>/<row> where it has none)")


def featurize_query(run_dir: str, modality: str, raw) -> np.ndarray:
    """Raw texts or image paths -> features (n, d) with the featurizers of the run's featurized training data."""
    from tf_xmr.featurize.pipeline import has_featurizers, load
    from tf_xmr.run_dir import load_run_config

    data = load_run_config(run_dir).data
    if data.source != "records" or not has_featurizers(data.root):
        raise ConfigError(f"{run_dir} was not trained on data written by python -m tf_xmr.featurize (its data is "
                          f"{data.source} {data.root or ''}); give --features or --query-key")
    featurizers = load(data.root)
    return featurizers.text(list(raw)) if modality == "text" else featurizers.image(list(raw))

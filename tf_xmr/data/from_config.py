"""The bridge from the ``data:`` config section to the loaders (the loaders themselves take plain arguments)."""

from __future__ import annotations

import os

from tf_xmr.errors import ConfigError

WIKIPEDIA_ENV = "TF_XMR_WIKIPEDIA"


def resolve_data_root(data_config):
    """The data config with ``root`` filled in where the loader has a documented default location.

    Wikipedia features are found through ``$TF_XMR_WIKIPEDIA`` when ``data.root`` is unset (CI and the README set
    it). The value is resolved here, once, so that the run's ``config.yaml`` records the folder that was read (never
    ``root: null``) and evaluation and resuming read the same folder.
    """
    if data_config.source == "wikipedia" and not data_config.root and os.environ.get(WIKIPEDIA_ENV):
        import dataclasses
        import logging

        root = os.environ[WIKIPEDIA_ENV]
        logging.getLogger("tf_xmr.data").info("data.root is unset: reading the Wikipedia features from $%s = %s",
                                              WIKIPEDIA_ENV, root)
        return dataclasses.replace(data_config, root=root)
    return data_config


def load_feature_set(data_config, seed: int):
    """Load and validate the feature set a ``DataConfig`` describes, with the class embeddings it asks for and,
    for zero-shot runs (``unseen_classes``), training and validation splits restricted to the seen classes.

    Args:
        data_config: ``tf_xmr.config.schema.DataConfig``.
        seed: the run seed (validation split, synthetic generator).

    Returns:
        A validated ``FeatureSet`` with ``train``, ``val`` and ``test`` splits.
    """
    from tf_xmr.data.class_embeddings import attach_class_embeddings

    data_config = resolve_data_root(data_config)
    feature_set = attach_class_embeddings(_load_features(data_config, seed), data_config.class_embeddings)
    if data_config.unseen_classes is not None:
        from tf_xmr.data.class_split import resolve_unseen_classes, seen_classes_only

        unseen = resolve_unseen_classes(feature_set.class_names, data_config.unseen_classes, seed)
        feature_set = seen_classes_only(feature_set, unseen)
    return feature_set


def _load_features(data_config, seed: int):
    """Load and validate the feature set a ``DataConfig`` describes.

    Args:
        data_config: ``tf_xmr.config.schema.DataConfig``.
        seed: the run seed (validation split, synthetic generator).

    Returns:
        A validated ``FeatureSet`` with ``train``, ``val`` and ``test`` splits.
    """
    source = data_config.source
    if source == "synthetic":
        from tf_xmr.data.synthetic import make_synthetic

        syn = data_config.synthetic
        return make_synthetic(
            num_classes=syn.num_classes,
            dims=dict(syn.dims),
            num_train=syn.num_train,
            num_test=syn.num_test,
            val_fraction=data_config.val_fraction,
            latent_dim=syn.latent_dim,
            multi_label=syn.multi_label,
            class_embedding_dim=syn.class_embedding_dim,
            modality_fractions=dict(syn.modality_fractions) or None,
            seed=seed,
        )
    if source == "wikipedia":
        from tf_xmr.data.wikipedia import load_wikipedia

        if not data_config.root:
            raise ConfigError(
                f"data.source is 'wikipedia' but neither data.root nor ${WIKIPEDIA_ENV} is set; "
                "pass --set data.root=PATH/TO/wikipedia"
            )
        return load_wikipedia(data_config.root, val_fraction=data_config.val_fraction, seed=seed)
    if source == "arrays":
        from tf_xmr.data.arrays import load_arrays

        arrays = data_config.arrays
        if not arrays.paths or not arrays.keys:
            raise ConfigError("data.source is 'arrays' but data.arrays.paths or data.arrays.keys is empty")
        return load_arrays(
            dict(arrays.paths),
            {split: dict(keys) for split, keys in arrays.keys.items()},
            label_base=arrays.label_base,
            class_names=arrays.class_names,
            val_fraction=data_config.val_fraction,
            seed=seed,
            transpose=arrays.transpose,
            indices=dict(arrays.indices),
            index_base=arrays.index_base,
        )
    if source == "records":
        from tf_xmr.data.records import load_records

        if not data_config.root:
            raise ConfigError("data.source is 'records' but data.root (the records folder) is not set")
        return load_records(data_config.root)
    raise ConfigError(f"unknown data.source {source!r}")

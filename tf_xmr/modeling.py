"""From a config and loaded data to models: the data spec, the method's model, its optimisers, and a finished run's
encoders rebuilt from its checkpoints.

This sits between ``methods`` and everything that uses a model (``training``, ``evaluation``, ``export``), so those
never import each other to build one. It runs no training and writes no file.
"""

from __future__ import annotations

import os
import re

from tf_xmr.errors import ConfigError, DataError, ModelInputError


def prepare_data(config):
    """The config with its data location resolved (``tf_xmr.data.from_config.resolve_data_root``), and the validated
    ``FeatureSet`` it describes; the data layer does every read.

    Returns:
        ``(config, feature_set)``: the config to record in the run directory, and the data.
    """
    import dataclasses

    from tf_xmr.data.from_config import load_feature_set, resolve_data_root

    config = dataclasses.replace(config, data=resolve_data_root(config.data))
    feature_set = load_feature_set(config.data, seed=config.seed)
    for modality in feature_set.modalities:
        # Modality names become Keras layer, TensorBoard and export folder names (<modality>_encoder/).
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", modality):
            raise DataError(
                f"modality name {modality!r} of the {config.data.source} data is not usable as a model and folder "
                "name; use letters, digits, '_', '-' and '.' only"
            )
    return config, feature_set


def load_data(config):
    """The validated ``FeatureSet`` an experiment config describes (the data layer does every read)."""
    return prepare_data(config)[1]


def unseen_classes(config, feature_set) -> tuple[int, ...]:
    """The zero-shot run's unseen class ids (``data.unseen_classes`` resolved with the run seed); () otherwise.

    ``load_data`` resolved the same value to drop these classes from training and validation; resolving it again
    here (a pure function of the class names, the config value and the seed) keeps the feature set a plain record.
    """
    if config.data.unseen_classes is None:
        return ()
    from tf_xmr.data.class_split import resolve_unseen_classes

    return resolve_unseen_classes(feature_set.class_names, config.data.unseen_classes, config.seed)


def data_spec(config, feature_set):
    """The ``DataSpec`` for a model: dims, classes, training-split statistics if z-scoring, unseen classes, and the
    word vectors a model config names (read here, through the data layer, so a model never opens a file)."""
    from tf_xmr.data import feature_stats
    from tf_xmr.methods.base import DataSpec

    stats = None
    if config.data.standardize == "zscore":
        stats = {m: feature_stats(feature_set.splits["train"], m) for m in feature_set.modalities}
    word_embeddings = None
    word_vectors = getattr(config.model, "word_vectors", None)
    if word_vectors:
        from tf_xmr.data.word_vectors import embedding_matrix, load_keyed_vectors

        word_embeddings = embedding_matrix(load_keyed_vectors(word_vectors))
    return DataSpec(
        modalities=tuple(feature_set.modalities),
        dims=dict(feature_set.dims),
        num_classes=feature_set.num_classes,
        standardize=config.data.standardize,
        stats=stats,
        class_embeddings=feature_set.class_embeddings,
        unseen_classes=unseen_classes(config, feature_set),
        word_embeddings=word_embeddings,
    )


def method_class(config):
    """The registered model class of ``config.method``."""
    from tf_xmr.methods.registry import get_method

    return get_method(config.method).model_class


def is_independent(method: str) -> bool:
    """Whether the registered method opted into independent per-modality training (``IndependentModalities``)."""
    from tf_xmr.methods.registry import get_method

    return bool(getattr(get_method(method).model_class, "independent_modalities", False))


def build_model(config, spec):
    """Instantiate the configured method's model and create all its variables."""
    model = method_class(config)(config.model, spec)
    model.build_for_training()
    return model


def build_optimizer(opt_cfg, learning_rate_scale: float = 1.0, name: str | None = None):
    """A Keras optimiser from one ``train.optimizers`` entry."""
    import keras

    # Named by player so the optimiser slots in a checkpoint are keyed by role, not by creation order.
    kwargs = {"learning_rate": opt_cfg.learning_rate * learning_rate_scale, "name": name}
    if opt_cfg.clipnorm is not None:
        kwargs["global_clipnorm"] = opt_cfg.clipnorm
    if opt_cfg.name in ("adam", "adamw"):
        kwargs.update(beta_1=opt_cfg.beta_1, beta_2=opt_cfg.beta_2, epsilon=opt_cfg.epsilon)
    if opt_cfg.name == "adamw":
        return keras.optimizers.AdamW(weight_decay=opt_cfg.weight_decay, **kwargs)
    if opt_cfg.name == "adam":
        return keras.optimizers.Adam(**kwargs)
    if opt_cfg.name == "sgd":
        return keras.optimizers.SGD(**kwargs)
    return keras.optimizers.RMSprop(**kwargs)


def compile_model(model, config, jit_compile: bool | None = None) -> dict:
    """One optimiser per player, from ``train.optimizers``; a missing player entry is a config error.

    ``jit_compile`` overrides ``train.jit_compile`` (a distribution strategy turns XLA off).

    Returns:
        player name -> optimiser.
    """
    optimizers = {}
    for player in model.players():
        if player.name not in config.train.optimizers:
            raise ConfigError(
                f"config key 'train.optimizers' has no entry for player {player.name!r} of method "
                f"{config.method!r}; it has {sorted(config.train.optimizers)}"
            )
        optimizers[player.name] = build_optimizer(
            config.train.optimizers[player.name], player.learning_rate_scale, name=f"{player.name}_optimizer"
        )
    jit = config.train.jit_compile if jit_compile is None else jit_compile
    model.compile(optimizers=optimizers, jit_compile=jit)
    return optimizers


def modality_optimizer_config(config, modality: str):
    """For independent modality networks: ``train.optimizers.<modality>``, else ``train.optimizers.default``."""
    optimizers = config.train.optimizers
    if modality in optimizers:
        return optimizers[modality]
    if "default" in optimizers:
        return optimizers["default"]
    raise ConfigError(
        f"config key 'train.optimizers' has neither an entry for modality {modality!r} nor a 'default' entry; "
        f"it has {sorted(optimizers)}"
    )


def encoder_functions(encoders: dict) -> dict:
    """modality -> compiled inference function of a Keras encoder (``training=False``, one trace per shape)."""
    import tensorflow as tf

    return {m: tf.function(lambda x, enc=enc: enc(x, training=False), reduce_retracing=True)
            for m, enc in encoders.items()}


def keras_encoders(model) -> dict:
    """modality -> compiled inference function of a jointly trained model's encoder."""
    return encoder_functions({m: model.encoder(m) for m in model.modalities})


def load_weights(model, path: str, what: str) -> None:
    """``model.load_weights(path)``, with a one-line error when the checkpoint does not fit or cannot be read."""
    if not os.path.exists(path):
        raise ModelInputError(f"{what} checkpoint {path} does not exist")
    import h5py

    try:
        # Opened by h5py first: a truncated or corrupt file is reported by name (HDF5 checks the stored length).
        with h5py.File(path, "r"):
            pass
    except OSError as exc:
        raise ModelInputError(f"checkpoint {path} is not a readable weights file ({exc})") from None
    try:
        model.load_weights(path)
    except ValueError as exc:
        raise ModelInputError(f"checkpoint {path} does not fit the {what} built from the data: {exc}") from None
    except (OSError, KeyError) as exc:
        raise ModelInputError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None


def load_networks(config, spec, state, run_dir: str, modalities) -> dict:
    """An independent run's modality networks with their chosen checkpoints loaded: modality -> network."""
    from tf_xmr.run_dir import checkpoint_path

    model_class = method_class(config)
    nets = {}
    for m in modalities:
        net = model_class.modality_model(config.model, spec, m, state)
        load_weights(net, checkpoint_path(run_dir, m), f"{m} network")
        nets[m] = net
    return nets


def trained_encoders(run_dir: str, config, feature_set) -> dict:
    """A finished run's Keras encoders (modality -> ``keras.Model``) rebuilt from its best checkpoint(s).

    Jointly trained runs load ``checkpoints/best.weights.h5`` into the whole model; runs with independent modality
    networks (SDML) load each modality's own checkpoint against the stored shared state.
    """
    from tf_xmr import run_dir as layout

    spec = data_spec(config, feature_set)
    if layout.run_modalities(run_dir) is not None:
        nets = load_networks(config, spec, layout.load_shared_state(run_dir), run_dir, feature_set.modalities)
        return {m: net.encoder for m, net in nets.items()}
    best = layout.best_checkpoint(run_dir)
    if not os.path.exists(best):
        raise ModelInputError(f"{run_dir} has no checkpoints/best.weights.h5")
    model = build_model(config, spec)
    load_weights(model, best, "model")
    return {m: model.encoder(m) for m in model.modalities}

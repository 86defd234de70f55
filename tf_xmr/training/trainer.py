"""Fit orchestration: config -> data -> model -> adversarial training -> validation selection -> test -> export.

``train(config)`` is what ``train.py`` calls. The order of operations is what keeps bad input from leaving
half-written output: the config and the data are fully loaded and validated, and the model is built, before the run
directory is created; results (``metrics.json``, exports) are written to temporary names and renamed.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil

from tf_xmr.config import dump_yaml, to_dict
from tf_xmr.config.schema import ExperimentConfig
from tf_xmr.errors import ConfigError, XmrError

log = logging.getLogger("tf_xmr.training")


class TrainingError(XmrError):
    """Training could not continue (for example the loss became NaN)."""

    exit_code = 1


@dataclasses.dataclass
class RunResult:
    run_dir: str
    metrics: dict
    exports: dict


# ----------------------------------------------------------------------------------------------------------------
# Building blocks shared by train / evaluate / export


def load_data(config: ExperimentConfig):
    """The validated ``FeatureSet`` a config describes."""
    from tf_xmr.data.from_config import load_feature_set

    return load_feature_set(config.data, seed=config.seed)


def unseen_classes(config: ExperimentConfig, feature_set) -> tuple[int, ...]:
    """The zero-shot run's unseen class ids (``data.unseen_classes`` resolved with the run seed); () otherwise.

    ``load_data`` resolved the same value to drop these classes from training and validation; resolving it again
    here (a pure function of the class names, the config value and the seed) keeps the feature set a plain record.
    """
    if config.data.unseen_classes is None:
        return ()
    from tf_xmr.data.class_split import resolve_unseen_classes

    return resolve_unseen_classes(feature_set.class_names, config.data.unseen_classes, config.seed)


def data_spec(config: ExperimentConfig, feature_set):
    """The ``DataSpec`` for a model: dims, classes, training-split statistics if z-scoring, unseen classes."""
    from tf_xmr.data import feature_stats
    from tf_xmr.methods.base import DataSpec

    stats = None
    if config.data.standardize == "zscore":
        stats = {m: feature_stats(feature_set.splits["train"], m) for m in feature_set.modalities}
    return DataSpec(
        modalities=tuple(feature_set.modalities),
        dims=dict(feature_set.dims),
        num_classes=feature_set.num_classes,
        standardize=config.data.standardize,
        stats=stats,
        class_embeddings=feature_set.class_embeddings,
        unseen_classes=unseen_classes(config, feature_set),
    )


def build_model(config: ExperimentConfig, spec):
    """Instantiate the configured method's model and create all its variables."""
    from tf_xmr.methods.registry import get_method

    model = get_method(config.method).model_class(config.model, spec)
    model.build_for_training()
    return model


def build_optimizer(opt_cfg, learning_rate_scale: float = 1.0, name: str | None = None):
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


def compile_model(model, config: ExperimentConfig, jit_compile: bool | None = None):
    """One optimiser per player, from ``train.optimizers``; a missing player entry is a config error.

    ``jit_compile`` overrides ``train.jit_compile`` (a distribution strategy turns XLA off).
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


def protocol(config: ExperimentConfig, preset: str | None = None):
    from tf_xmr.metrics import PRESETS, RetrievalProtocol

    if preset is not None:
        return PRESETS[preset]
    return RetrievalProtocol(config.eval.distance, config.eval.k, config.eval.normalization)


def keras_encoders(model) -> dict:
    """modality -> compiled inference function of the Keras encoder."""
    import tensorflow as tf

    return {
        m: tf.function(lambda x, enc=model.encoder(m): enc(x, training=False), reduce_retracing=True)
        for m in model.modalities
    }


def score_split(encoders, feature_set, split: str, config: ExperimentConfig, preset: str | None = None,
                detailed: bool = False) -> dict:
    from tf_xmr.metrics.evaluator import embed_split, score_embeddings

    embeddings, labels = embed_split(
        feature_set.splits[split], encoders, batch_size=config.train.eval_batch_size,
        num_classes=feature_set.num_classes,
    )
    return score_embeddings(embeddings, labels, protocol(config, preset), feature_set.modalities, detailed=detailed)


def steps_per_epoch(config: ExperimentConfig, split) -> int:
    """Training steps in one pass over ``split`` (the last partial batch counts unless ``train.drop_remainder``)."""
    n = split.num_examples()
    steps = n // config.train.batch_size
    if not config.train.drop_remainder and n % config.train.batch_size:
        steps += 1
    return steps


def training_stream(model, config: ExperimentConfig, feature_set, *, first_epoch: int, epochs: int,
                    steps_per_epoch: int):
    """The training batches of epochs ``first_epoch .. epochs - 1`` as one stream (train.py and tune.py).

    Each epoch's order is keyed to (seed, epoch), so a run resumed at epoch e sees exactly the batches an
    uninterrupted run sees from epoch e on (``make_training_stream``); the model's own hook then adds what it draws
    per step (DA-GAN's semantic groups, keyed to the global step).
    """
    from tf_xmr.data import make_dataset, make_training_stream

    split = feature_set.splits["train"]
    stream = make_training_stream(
        split, batch_size=config.train.batch_size, num_classes=feature_set.num_classes, seed=config.seed,
        first_epoch=first_epoch, epochs=epochs, drop_remainder=config.train.drop_remainder,
        shuffle_buffer=config.train.shuffle_buffer,
    )
    one_pass = make_dataset(split, batch_size=config.train.batch_size, num_classes=feature_set.num_classes)
    return model.prepare_training_stream(stream, one_pass=one_pass, first_step=first_epoch * steps_per_epoch)


def fit_callbacks(model, *, validation, steps_per_epoch: int, epochs: int, log_dir: str, extra=()):
    """The callbacks every fit of a jointly trained model uses (train.py and tune.py), in the order that matters.

    GRL schedule first (it sets the strength the step reads), the NaN guard, the optimiser/GRL state logger, then
    ``validation`` (a ``RetrievalValidation``, or None on a non-chief worker), ``extra``, and TensorBoard last so
    that it logs the ``val_map_*`` entries validation adds to the epoch logs.

    Returns:
        ``(callbacks, nan_guard)``.
    """
    from tf_xmr.training import callbacks as cb

    grl_layers = model.gradient_reversal_layers()
    nan_guard = cb.StopOnNonFinite()
    callbacks = [nan_guard, cb.TrainingStateLogger(model.player_optimizers, grl_layers)]
    if grl_layers:
        schedule, max_strength = model.gradient_reversal_schedule()
        callbacks.insert(0, cb.GradientReversalSchedule(grl_layers, schedule=schedule, max_strength=max_strength,
                                                        total_epochs=epochs, steps_per_epoch=steps_per_epoch))
    if validation is not None:
        callbacks.append(validation)
    callbacks += list(extra)
    callbacks.append(cb.TensorBoard(log_dir=log_dir, write_graph=False, update_freq="epoch"))
    return callbacks, nan_guard


# Random-ranking reference of the zero-shot report: the mean over this many draws of random Gaussian embeddings of
# RANDOM_REFERENCE_DIM dimensions, seeded by the run seed, so every method run on one seed and split gets the same
# reference (one draw on a few hundred test items varies by about 0.005 mAP; the mean of 10 by a third of that).
RANDOM_REFERENCE_DRAWS = 10
RANDOM_REFERENCE_DIM = 16


def _mean_reports(reports: list):
    if isinstance(reports[0], dict):
        return {key: _mean_reports([r[key] for r in reports]) for key in reports[0]}
    if isinstance(reports[0], float):
        return float(sum(reports) / len(reports))
    return reports[0]


def zero_shot_scores(encoders, feature_set, split: str, config: ExperimentConfig, unseen) -> dict:
    """The zero-shot protocols (standard / zero-shot / generalised, ``tf_xmr.metrics.zero_shot``) on one split.

    Besides the model's scores, ``random_ranking`` holds the same report for random embeddings (Gaussian, seeded by
    the run seed, mean of ``RANDOM_REFERENCE_DRAWS`` draws, the same for every method): the chance level of every number under the same
    protocol and the same class mix, which differs between the seen, unseen and generalised query sets.
    """
    import numpy as np

    from tf_xmr.metrics.evaluator import embed_split
    from tf_xmr.metrics.zero_shot import zero_shot_report

    embeddings, labels = embed_split(
        feature_set.splits[split], encoders, batch_size=config.train.eval_batch_size,
        num_classes=feature_set.num_classes,
    )
    chosen = protocol(config)
    report = zero_shot_report(embeddings, labels, unseen, chosen, feature_set.modalities)
    rng = np.random.default_rng(config.seed)
    draws = [
        zero_shot_report({m: rng.standard_normal((len(e), RANDOM_REFERENCE_DIM)).astype(np.float32)
                          for m, e in embeddings.items()},
                         labels, unseen, chosen, feature_set.modalities)
        for _ in range(RANDOM_REFERENCE_DRAWS)
    ]
    random_ranking = _mean_reports(draws)
    random_ranking.pop("unseen_classes")
    return {
        **report,
        "unseen_class_names": [feature_set.class_names[k] for k in unseen],
        "split": split,
        "random_ranking": random_ranking,
    }


# ----------------------------------------------------------------------------------------------------------------
# Run directory


def resolve_run_dir(config: ExperimentConfig, config_path: str | None) -> str:
    if config.run_dir:
        return config.run_dir
    stem = "run"
    if config_path:
        from tf_xmr.config.schema import config_name

        stem = config_name(config_path)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("saved_models", f"{stem}-{stamp}")


def claim_run_dir(run_dir: str) -> str:
    """Create an automatically named run directory (``run_dir: null``) exclusively and return its path.

    The first free name of ``<name>``, ``<name>-2``, ``<name>-3``... is taken: two runs of one config started in the
    same second (a script, parallel jobs) would otherwise share a folder, and the second would look like the resume
    of an interrupted first one. A run_dir given in the config is not claimed: it may hold a run to resume.
    """
    parent = os.path.dirname(run_dir)
    if parent:
        os.makedirs(parent, exist_ok=True)
    candidate, n = run_dir, 1
    while True:
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{run_dir}-{n}"


def prepare_run_dir(run_dir: str, config: ExperimentConfig) -> bool:
    """Check the run directory before anything is written; returns True when resuming an interrupted run.

    A folder holding a finished run, another run's config or unknown files is refused; one holding an interrupted run
    with the same resolved config is resumed from its last epoch backup (tf_xmr.training.resume).
    """
    resolved = to_dict(dataclasses.replace(config, run_dir=run_dir))
    if os.path.exists(run_dir):
        if not os.path.isdir(run_dir):
            raise ConfigError(f"run_dir {run_dir} exists and is not a directory")
        entries = set(os.listdir(run_dir))
        if "metrics.json" in entries:
            raise ConfigError(f"run_dir {run_dir} already holds a finished run (metrics.json); choose another run_dir")
        if entries and "config.yaml" not in entries:
            raise ConfigError(f"run_dir {run_dir} is not empty and is not a tf_xmr run; choose another run_dir")
        if entries:
            import yaml

            with open(os.path.join(run_dir, "config.yaml"), encoding="utf-8") as handle:
                previous = yaml.safe_load(handle)
            if previous != resolved:
                changed = sorted(_diff_keys(previous, resolved))
                raise ConfigError(
                    f"run_dir {run_dir} holds an interrupted run with a different config (differs at: "
                    f"{', '.join(changed[:5])}); resume with the same config or choose another run_dir"
                )
            return True
    # Whether it can be created and written is checked by resume.check_run_dir, by trying (and undoing it).
    return False


def metrics_record(config: ExperimentConfig, feature_set, val: dict, test: dict, presets: dict, **extra) -> dict:
    """What ``metrics.json`` holds: validation and test scores, the protocol, the presets, the run's identity."""
    return {
        "val": val,
        "test": test,
        "protocol": protocol(config).describe(),
        "presets": {name: {"protocol": protocol(config, name).describe(), "test": scores}
                    for name, scores in presets.items()},
        "method": config.method,
        "seed": config.seed,
        **extra,
        "data": {"loader": config.data.source, **feature_set.summary()},
    }


def _diff_keys(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in set(a) | set(b):
            yield from _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip(".")


def _write_json(path: str, payload: dict) -> None:
    from tf_xmr.training.callbacks import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# The run


def train(config: ExperimentConfig, *, config_path: str | None = None) -> RunResult:
    """Train, select on validation, score the test split once, export.

    Args:
        config: resolved experiment config.
        config_path: the YAML file it came from (names the default run directory).

    Returns:
        ``RunResult`` with the run directory, the metrics written to ``metrics.json`` and the export paths; on a
        non-chief worker of a ``train.distribution=multi_worker`` run, ``RunResult(None, {}, {})`` (the chief
        evaluates and writes the run directory).
    """
    from tf_xmr.training.independent import is_independent, train_independent

    if is_independent(config.method) and config.train.distribution != "none":
        raise ConfigError(
            f"train.distribution={config.train.distribution} is for jointly trained methods; {config.method!r} "
            "trains independent modality networks (use train.parallel_modalities instead)"
        )
    if is_independent(config.method):
        # The method opted into independent per-modality networks (IndependentModalities hook, e.g. SDML).
        return train_independent(config, config_path=config_path)
    if config.resume_from:
        raise ConfigError(
            f"resume_from is for methods whose modality networks train independently; {config.method!r} trains "
            "all its networks jointly (to continue an interrupted run, rerun it with the same run_dir)"
        )

    import keras
    import tensorflow as tf

    from tf_xmr.training.distribution import setup_distribution

    # First, before TensorFlow runs any op (MultiWorkerMirroredStrategy refuses later); a bad TF_CONFIG fails here.
    dist = setup_distribution(config.train.distribution)
    keras.utils.set_random_seed(config.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()

    # 1. Everything that can fail on bad input, before anything is written.
    feature_set = load_data(config)
    spec = data_spec(config, feature_set)
    # Variables, optimiser slots and the compiled train step must belong to the strategy (mirrored variables).
    with dist.scope():
        model = build_model(config, spec)
        optimizers = compile_model(model, config, jit_compile=dist.jit_compile(config.train.jit_compile))
        # Keras 3 traces it at the first step, inside strategy.run; every variable it touches exists already.
        model.make_train_function()
    from tf_xmr.training import resume

    backup = config.train.backup and dist.supports_backup()
    if dist.is_chief:
        auto_named = not config.run_dir
        run_dir = resolve_run_dir(config, config_path)
        config = dataclasses.replace(config, run_dir=run_dir)
        # A fresh automatic name never holds an interrupted run (claim_run_dir moves to a free name).
        resuming = False if auto_named else prepare_run_dir(run_dir, config)
        if resuming and not dist.supports_backup():
            raise ConfigError(
                f"run_dir {run_dir} holds an interrupted run; resuming is not supported with "
                f"train.distribution={config.train.distribution}; choose another run_dir"
            )
        # Unwritable or too full: one line, exit 2, before anything is written.
        resume.check_run_dir(run_dir, resume.joint_run_bytes(model, optimizers, export=config.export.enabled,
                                                             backup=backup), config.train.disk_margin)
    else:
        # Non-chief workers keep their files out of the run directory (a private temp folder, removed at the end).
        run_dir, resuming, auto_named = dist.scratch_dir(), False, False  # the scratch folder exists already

    # 2. The run directory.
    if auto_named:
        run_dir = claim_run_dir(run_dir)
        config = dataclasses.replace(config, run_dir=run_dir)
    checkpoint_dir = os.path.join(run_dir, "checkpoints")
    os.makedirs(checkpoint_dir, exist_ok=True)
    if not resuming:
        dump_yaml(config, os.path.join(run_dir, "config.yaml"))
        _write_json(os.path.join(run_dir, "data.json"), feature_set.summary())

    from tf_xmr.training import callbacks as cb

    steps = steps_per_epoch(config, feature_set.splits["train"])
    encoders = keras_encoders(model)
    validation = cb.RetrievalValidation(
        lambda: score_split(encoders, feature_set, "val", config),
        checkpoint_dir,
        every=config.train.eval_every,
        patience=config.train.early_stopping_patience,
        min_delta=config.train.min_delta,
        total_epochs=config.train.epochs,
    )
    # Only the chief evaluates; dist.callbacks() then shares its early-stopping decision with the other workers.
    callbacks, nan_guard = fit_callbacks(model, validation=validation if dist.is_chief else None,
                                         steps_per_epoch=steps, epochs=config.train.epochs,
                                         log_dir=os.path.join(run_dir, "logs"), extra=dist.callbacks())
    fault = cb.FaultInjection.from_env()
    if fault is not None:
        callbacks.insert(0, fault)
    backup_dir = os.path.join(checkpoint_dir, "backup")
    state, resumed_from = resume.resume_state(resuming and backup, backup_dir, checkpoint_dir, model,
                                       optimizers, validation, config.train.epochs,
                                       f"the interrupted run in {run_dir}")
    if backup:
        # Last: it saves the epoch's validation state and best checkpoint too.
        callbacks.append(resume.training_checkpoint(
            backup_dir, optimizers=optimizers, validation=validation, resumed_from=resumed_from,
            step=state["step"] if state else 0, skip=lambda: nan_guard.failure is not None))

    first_epoch = state["epoch"] if state else 0
    if first_epoch < config.train.epochs and not (state and state["stop_training"]):
        train_ds = training_stream(model, config, feature_set, first_epoch=first_epoch, epochs=config.train.epochs,
                                   steps_per_epoch=steps)
        model.fit(dist.prepare_dataset(train_ds), epochs=config.train.epochs, initial_epoch=first_epoch,
                  steps_per_epoch=steps, callbacks=callbacks, verbose=config.train.verbose,
                  shuffle=False)  # the tf.data pipeline shuffles (seeded); Keras must not
    if not dist.is_chief:
        dist.cleanup()
    if nan_guard.failure:
        raise TrainingError(
            f"training stopped: {nan_guard.failure}; lower the learning rates or loss weights "
            f"(run directory {run_dir} kept for inspection)"
        )
    if not dist.is_chief:
        # The chief scores, exports and writes metrics.json; this worker's part ended with the last step.
        return RunResult(run_dir=None, metrics={}, exports={})

    # 3. The checkpoint chosen on validation; the test split is scored exactly once, here.
    best = validation.best
    if best["epoch"] is None:
        raise TrainingError("no validation evaluation ran, so no checkpoint was selected")
    model.load_weights(validation.best_path)
    test_scores = score_split(encoders, feature_set, "test", config, detailed=True)
    presets = {
        name: score_split(encoders, feature_set, "test", config, preset=name) for name in config.eval.extra_presets
    }
    extra = {"distribution": dist.describe(), "resumed_from": resumed_from}
    unseen = unseen_classes(config, feature_set)
    if unseen:
        # Zero-shot run: validation (and the checkpoint) used seen classes only; the test split is whole and is
        # scored here under the three zero-shot protocols as well (still once, with the chosen checkpoint).
        extra["zero_shot"] = zero_shot_scores(encoders, feature_set, "test", config, unseen)
    metrics = metrics_record(config, feature_set, {**best["val"], "best_epoch": best["epoch"]}, test_scores, presets,
                             **extra)

    exports = {}
    if config.export.enabled:
        from tf_xmr.export import export_model

        exports = export_model(model, run_dir, l2_normalize=config.export.l2_normalize)
    # metrics.json last: its presence marks a finished run.
    _write_json(os.path.join(run_dir, "metrics.json"), metrics)
    if config.train.backup:
        shutil.rmtree(os.path.join(checkpoint_dir, "backup"), ignore_errors=True)
    return RunResult(run_dir=run_dir, metrics=metrics, exports=exports)

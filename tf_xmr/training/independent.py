"""Training for methods whose modality networks are independent (the ``IndependentModalities`` hook, e.g. SDML).

Each modality's network trains on its own: its own data stream (unpaired modalities are fine), optimiser, ``fit``,
TensorBoard log and checkpoint, chosen on its own validation loss. With ``train.parallel_modalities: true`` every
network trains in its own worker process (spawned, so each has its own TensorFlow runtime); otherwise one after the
other in this process. Only then are the chosen checkpoints loaded together and the validation and test splits
scored over every ordered modality pair (the test split exactly once).

Run directory (on top of the usual config.yaml, data.json, metrics.json, export/)::

    shared_state.npz                 the method's fixed shared arrays (SDML: P), written once, never rewritten
    independent.json                 per modality: best epoch, validation loss, training time, file hashes
    modalities/<m>/checkpoints/      best.weights.h5 + best.json of modality m (backup/ while training)
    modalities/<m>/logs/             TensorBoard of modality m
    history/                         config.yaml / metrics.json as they were before each extension

Extending a finished run (``resume_from: RUN_DIR``) trains only the requested new modalities against the stored
shared state, in place: nothing under ``modalities/<old>/`` or ``export/<old>_encoder/`` is written, the new network
is staged in ``modalities/<new>.partial/`` and renamed when complete, and metrics.json is rewritten with every pair.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import hashlib
import json
import logging
import multiprocessing
import os
import resource
import shutil
import time

import numpy as np

from tf_xmr.config import dump_yaml, to_dict
from tf_xmr.config.schema import ExperimentConfig
from tf_xmr.errors import ConfigError, DataError

log = logging.getLogger("tf_xmr.training")

RUN_FILE = "independent.json"
SHARED_FILE = "shared_state.npz"
MODALITY_DIR = "modalities"
PARTIAL_SUFFIX = ".partial"
CHECKPOINT = "best.weights.h5"
#: Written into a network's folder when it has finished training (its summary): a resumed run keeps it as it is.
FINISHED_FILE = "training.json"


def is_independent(method: str) -> bool:
    """Whether the registered method opted into independent per-modality training."""
    from tf_xmr.methods.registry import get_method

    return bool(getattr(get_method(method).model_class, "independent_modalities", False))


def optimizer_config(config: ExperimentConfig, modality: str):
    """``train.optimizers.<modality>``, else ``train.optimizers.default``."""
    optimizers = config.train.optimizers
    if modality in optimizers:
        return optimizers[modality]
    if "default" in optimizers:
        return optimizers["default"]
    raise ConfigError(
        f"config key 'train.optimizers' has neither an entry for modality {modality!r} nor a 'default' entry; "
        f"it has {sorted(optimizers)}"
    )


def modality_dir(run_dir: str, modality: str) -> str:
    return os.path.join(run_dir, MODALITY_DIR, modality)


def checkpoint_path(run_dir: str, modality: str) -> str:
    return os.path.join(modality_dir(run_dir, modality), "checkpoints", CHECKPOINT)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_hashes(root: str) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root``."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = file_sha256(path)
    return dict(sorted(out.items()))


def _read_json_if_present(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_run_record(run_dir: str) -> dict | None:
    return _read_json_if_present(os.path.join(run_dir, RUN_FILE))


def load_shared_state(run_dir: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(run_dir, SHARED_FILE)) as data:
        return {key: np.asarray(data[key]) for key in data.files}


def _save_shared_state(run_dir: str, state: dict) -> None:
    final = os.path.join(run_dir, SHARED_FILE)
    tmp = os.path.join(run_dir, f".tmp-{os.getpid()}-{SHARED_FILE}")
    with open(tmp, "wb") as handle:
        np.savez(handle, **state)
    os.replace(tmp, final)


def _write_json(path: str, payload: dict) -> None:
    from tf_xmr.training.callbacks import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------------------------------------------
# One modality


def _stop_when_orphaned(parent_pid: int):
    """A callback that ends a worker's training once the process that started it is gone (killed or crashed):
    otherwise the worker would keep a core busy for a run nobody collects."""
    import keras

    class StopWhenOrphaned(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if os.getppid() != parent_pid:
                log.warning("the training process %d is gone; this worker stops", parent_pid)
                os._exit(1)

    return StopWhenOrphaned()


def train_modality(config: ExperimentConfig, feature_set, spec, state, modality: str, out_dir: str,
                   extra_callbacks=()) -> dict:
    """Fit one modality's network into ``out_dir`` (checkpoints/, logs/); returns its summary.

    The network is seeded with the run seed whichever way it is run (in-process or in a worker), as the authors'
    code reseeds every view process, so sequential and parallel runs build the same initial weights.

    Resuming: a network whose ``out_dir`` holds a backup (``checkpoints/backup``, one per epoch end) continues from
    it, exactly as a jointly trained model does (``tf_xmr.training.resume``); a finished network leaves
    ``FINISHED_FILE`` (its summary) and is never retrained.
    """
    import keras

    from tf_xmr.data import make_dataset, make_training_stream
    from tf_xmr.methods.registry import get_method
    from tf_xmr.training import callbacks as cb
    from tf_xmr.training import resume
    from tf_xmr.training.trainer import TrainingError, build_optimizer

    keras.utils.set_random_seed(config.seed)
    model_class = get_method(config.method).model_class
    net = model_class.modality_model(config.model, spec, modality, state)
    optimizer = build_optimizer(optimizer_config(config, modality), name=f"{modality}_optimizer")
    net.compile(optimizer=optimizer, jit_compile=config.train.jit_compile)

    train_split = feature_set.splits["train"]
    n_train = train_split.num_examples(modality)
    batch = config.train.batch_size
    steps = n_train // batch + (0 if config.train.drop_remainder or n_train % batch == 0 else 1)
    if steps == 0:
        raise DataError(
            f"modality {modality!r} has {n_train} training items, fewer than one batch of {batch} with "
            "train.drop_remainder=true; lower train.batch_size"
        )
    val_ds = make_dataset(feature_set.splits["val"], batch_size=config.train.eval_batch_size,
                          num_classes=feature_set.num_classes, modalities=[modality])

    checkpoint_dir = os.path.join(out_dir, "checkpoints")
    os.makedirs(checkpoint_dir, exist_ok=True)
    validation = cb.RetrievalValidation(
        lambda: {"loss": net.validation_loss(val_ds)}, checkpoint_dir, every=config.train.eval_every,
        patience=config.train.early_stopping_patience, min_delta=config.train.min_delta,
        total_epochs=config.train.epochs, monitor="loss", mode="min",
    )
    nan_guard = cb.StopOnNonFinite()
    callbacks = [
        nan_guard,
        cb.TrainingStateLogger({modality: optimizer}, []),
        validation,
        cb.TensorBoard(log_dir=os.path.join(out_dir, "logs"), write_graph=False, update_freq="epoch"),
    ]
    fault = cb.FaultInjection.from_env(network=modality)
    if fault is not None:
        callbacks.insert(0, fault)
    callbacks.extend(extra_callbacks)
    backup_dir = os.path.join(checkpoint_dir, "backup")
    optimizers = {modality: optimizer}
    state, resumed_from = resume.resume_state(config.train.backup and os.path.isdir(backup_dir), backup_dir, checkpoint_dir,
                                       net, optimizers, validation, config.train.epochs,
                                       f"the interrupted {modality} network in {out_dir}")
    if config.train.backup:
        callbacks.append(resume.training_checkpoint(  # last: it saves the epoch's validation state too
            backup_dir, optimizers=optimizers, validation=validation, resumed_from=resumed_from,
            step=state["step"] if state else 0, skip=lambda: nan_guard.failure is not None))
    first_epoch = state["epoch"] if state else 0
    start = time.perf_counter()
    epochs_run = 0
    if first_epoch < config.train.epochs and not (state and state["stop_training"]):
        # Each epoch's order keyed to (seed, epoch), one iterator over the remaining epochs (make_training_stream).
        train_ds = make_training_stream(
            train_split, batch_size=batch, num_classes=feature_set.num_classes, modalities=[modality],
            seed=config.seed, first_epoch=first_epoch, epochs=config.train.epochs,
            drop_remainder=config.train.drop_remainder, shuffle_buffer=config.train.shuffle_buffer,
        )
        history = net.fit(train_ds, epochs=config.train.epochs, initial_epoch=first_epoch, steps_per_epoch=steps,
                          callbacks=callbacks, verbose=config.train.verbose, shuffle=False)
        epochs_run = len(history.epoch)
    seconds = time.perf_counter() - start
    if nan_guard.failure:
        raise TrainingError(f"modality {modality!r}: training stopped: {nan_guard.failure}; lower its learning rate")
    if validation.best["epoch"] is None:
        raise TrainingError(f"modality {modality!r}: no validation evaluation ran, so no checkpoint was selected")
    summary = {
        "best_epoch": int(validation.best["epoch"]),
        "val_loss": float(validation.best["val"]["loss"]),
        "epochs_run": first_epoch + epochs_run,  # before an interruption too
        "train_items": int(n_train),
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "pid": os.getpid(),
        "resumed_from": resumed_from,
    }
    # The marker first, then the backup goes: a kill in between leaves a finished network, never a lost one.
    _write_json(os.path.join(out_dir, FINISHED_FILE), summary)
    if config.train.backup:
        shutil.rmtree(backup_dir, ignore_errors=True)
    return summary


def finished_summary(out_dir: str) -> dict | None:
    """The summary a network wrote when it finished training into ``out_dir``, or None."""
    return _read_json_if_present(os.path.join(out_dir, FINISHED_FILE))


def _worker(config_dict: dict, run_dir: str, modality: str, out_dir: str, threads: int, log_level: int,
            parent_pid: int) -> dict:
    """Worker-process entry: its own TensorFlow runtime, ``threads`` intra-op threads, the data loaded afresh."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The parent's log lines (validation loss per epoch) come from every worker at once: say whose they are.
    logging.basicConfig(level=log_level, format=f"[{modality}] %(message)s")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    from tf_xmr.config.schema import experiment_from_dict
    from tf_xmr.training.trainer import data_spec, load_data

    config = experiment_from_dict(config_dict)
    feature_set = load_data(config)
    return train_modality(config, feature_set, data_spec(config, feature_set), load_shared_state(run_dir),
                          modality, out_dir, extra_callbacks=[_stop_when_orphaned(parent_pid)])


def _train_modalities(config, feature_set, spec, state, modalities, run_dir) -> dict:
    """Train each modality into its staging folder and rename it into place; modality -> summary."""
    staging = {m: modality_dir(run_dir, m) + PARTIAL_SUFFIX for m in modalities}
    results = {}
    # Networks that finished before an interruption are kept as they are; the interrupted one resumes from its
    # last epoch backup, the others start.
    for m in modalities:
        summary = finished_summary(staging[m])
        if summary is not None:
            log.info("the %s network finished before the interruption; kept", m)
            results[m] = {**summary, "kept": True}
    pending = tuple(m for m in modalities if m not in results)
    parallel = config.train.parallel_modalities and len(pending) > 1
    start = time.perf_counter()
    if parallel:
        workers = min(len(pending), config.train.max_workers or len(pending))
        threads = max(1, (os.cpu_count() or 1) // workers)
        log.info("training %d modality networks in %d worker processes (%d thread(s) each)", len(pending),
                 workers, threads)
        context = multiprocessing.get_context("spawn")
        payload = to_dict(config)
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(_worker, payload, run_dir, m, staging[m], threads, logging.getLogger().level,
                                   os.getpid()): m
                       for m in pending}
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = future.result()
    else:
        for m in pending:
            log.info("training the %s network", m)
            results[m] = train_modality(config, feature_set, spec, state, m, staging[m])
    wall = time.perf_counter() - start
    for m in modalities:
        os.replace(staging[m], modality_dir(run_dir, m))
    return {"modalities": {m: results[m] for m in modalities}, "wall_seconds": round(wall, 3),
            "mode": "parallel" if parallel else "sequential"}


# ----------------------------------------------------------------------------------------------------------------
# Loading a run's networks


def load_networks(config: ExperimentConfig, spec, state, run_dir: str, modalities) -> dict:
    """modality -> its network with the chosen checkpoint loaded."""
    from tf_xmr.errors import ModelInputError
    from tf_xmr.methods.registry import get_method

    model_class = get_method(config.method).model_class
    nets = {}
    for m in modalities:
        path = checkpoint_path(run_dir, m)
        if not os.path.exists(path):
            raise ModelInputError(f"{run_dir} has no checkpoint for modality {m!r} ({path})")
        net = model_class.modality_model(config.model, spec, m, state)
        try:
            net.load_weights(path)
        except ValueError as exc:
            raise ModelInputError(f"checkpoint {path} does not fit the {m} network built from the data: {exc}") from None
        nets[m] = net
    return nets


def run_modalities(run_dir: str) -> tuple[str, ...] | None:
    """The modalities a finished independent run scores (from independent.json), or None for other runs."""
    record = read_run_record(run_dir)
    return None if record is None else tuple(record["order"])


# ----------------------------------------------------------------------------------------------------------------
# The run


def _check_extension(config: ExperimentConfig, available, requested):
    """Validate ``resume_from`` before anything is written; returns (run_dir, record, stored modalities)."""
    source = config.resume_from
    if config.run_dir and os.path.abspath(config.run_dir) != os.path.abspath(source):
        raise ConfigError(
            f"resume_from extends {source} in place; leave run_dir unset (it is {config.run_dir})"
        )
    if not os.path.isdir(source):
        raise ConfigError(f"resume_from {source} does not exist or is not a directory")
    record = read_run_record(source)
    if record is None or not os.path.exists(os.path.join(source, SHARED_FILE)):
        raise ConfigError(
            f"resume_from {source} is not a finished {config.method!r} run with independent modality networks "
            f"(no {RUN_FILE} or {SHARED_FILE})"
        )
    if record.get("method") != config.method:
        raise ConfigError(f"resume_from {source} is a {record.get('method')!r} run, not a {config.method!r} run")
    if not os.path.exists(os.path.join(source, "metrics.json")):
        raise ConfigError(f"resume_from {source} is not a finished run (no metrics.json)")
    stored = tuple(record["order"])
    lacking = [m for m in stored if m not in available]
    if lacking:
        raise ConfigError(
            f"the data lacks modality {lacking[0]!r}, which the run in resume_from {source} has; the data must hold "
            f"every stored modality (data modalities: {', '.join(available)})"
        )
    new = tuple(requested) if requested is not None else tuple(m for m in available if m not in stored)
    again = [m for m in new if m in stored]
    if again:
        raise ConfigError(
            f"modality {again[0]!r} is already trained in resume_from {source}; nothing was overwritten (list only "
            "new modalities in model.train_modalities)"
        )
    if not new:
        raise ConfigError(f"resume_from {source}: no new modality to train (the run already has {', '.join(stored)})")
    leftovers = [m for m in new if os.path.exists(modality_dir(source, m))]
    if leftovers:
        raise ConfigError(
            f"{modality_dir(source, leftovers[0])} exists but the run does not record it; remove it by hand first"
        )
    return source, record, stored, new


def _check_same_data(config: ExperimentConfig, source: str) -> None:
    """The stored networks' validation/test items must stay what they were: same seed and data protocol."""
    import yaml

    with open(os.path.join(source, "config.yaml"), encoding="utf-8") as handle:
        previous = yaml.safe_load(handle) or {}
    data = previous.get("data", {})
    current = to_dict(config.data)
    checks = [("seed", previous.get("seed"), config.seed)]
    checks += [(f"data.{k}", data.get(k), current.get(k)) for k in ("source", "val_fraction", "standardize")]
    for key, was, now in checks:
        if was != now:
            raise ConfigError(
                f"config key {key!r} is {now!r} but the run in resume_from {source} used {was!r}; a new modality must "
                "see the same splits as the stored ones"
            )


def _check_stored_dims(record: dict, feature_set, source: str) -> None:
    for m, info in record["modalities"].items():
        if m in feature_set.dims and int(info["dim"]) != int(feature_set.dims[m]):
            raise ConfigError(
                f"modality {m!r} is {feature_set.dims[m]}-d in the data but its network in {source} takes "
                f"{info['dim']}-d features"
            )


def train_independent(config: ExperimentConfig, *, config_path: str | None = None):
    """Train (or add) independent modality networks, score every ordered pair, export the new encoders.

    Returns:
        ``trainer.RunResult``.
    """
    import keras
    import tensorflow as tf

    from tf_xmr.methods.registry import get_method
    from tf_xmr.training.trainer import (
        RunResult, claim_run_dir, data_spec, load_data, metrics_record, prepare_run_dir, resolve_run_dir, score_split,
        unseen_classes, zero_shot_scores,
    )

    keras.utils.set_random_seed(config.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    model_class = get_method(config.method).model_class

    # 1. Everything that can fail on bad input, before anything is written.
    feature_set = load_data(config)
    available = tuple(feature_set.modalities)
    requested = model_class.modalities_to_train(config.model, available)
    if requested is not None:
        missing = [m for m in requested if m not in available]
        if missing:
            raise ConfigError(
                f"config key 'model.train_modalities' names modality {missing[0]!r}, which the data lacks "
                f"(data modalities: {', '.join(available)})"
            )
        if len(set(requested)) != len(requested) or not requested:
            raise ConfigError(f"config key 'model.train_modalities' must list distinct modalities, got {list(requested)}")
    spec = data_spec(config, feature_set)
    extending = bool(config.resume_from)
    auto_named = not extending and not config.run_dir
    if extending:
        run_dir, record, stored, to_train = _check_extension(config, available, requested)
        _check_same_data(config, run_dir)
        _check_stored_dims(record, feature_set, run_dir)
        state = load_shared_state(run_dir)
        model_class.check_shared_state(config.model, spec, state, os.path.join(run_dir, SHARED_FILE))
        resuming = False
    else:
        record, stored = None, ()
        to_train = tuple(requested) if requested is not None else available
        run_dir = resolve_run_dir(config, config_path)
    scored = tuple(m for m in available if m in stored or m in to_train)
    if len(scored) < 2:
        raise ConfigError(
            f"retrieval needs at least two modalities, this run would have only {list(scored)} "
            "(model.train_modalities)"
        )
    for m in to_train:
        optimizer_config(config, m)  # a missing optimiser entry is a config error now, not in a worker later
    config = dataclasses.replace(config, run_dir=run_dir)
    if not extending:
        # A fresh automatic name never holds an interrupted run (claim_run_dir moves to a free name).
        resuming = False if auto_named else prepare_run_dir(run_dir, config)
        state = (load_shared_state(run_dir) if resuming and os.path.exists(os.path.join(run_dir, SHARED_FILE))
                 else model_class.create_shared_state(config.model, spec, config.seed))
        model_class.check_shared_state(config.model, spec, state, "the generated shared state")
    # Build one network per modality to be trained now: a model that does not fit its data fails here.
    from tf_xmr.training import resume

    needed = 0
    for m in to_train:
        net = model_class.modality_model(config.model, spec, m, state)
        trainable = resume.variable_bytes(net.trainable_variables)
        # Optimiser state counted as Adam's two slots per trainable variable (the most any supported optimiser has).
        needed += resume.estimate_run_bytes(
            resume.variable_bytes(net.variables), 2 * trainable,
            resume.variable_bytes(net.encoder.variables) if config.export.enabled else 0, config.train.backup)
    # Unwritable or too full: one line, exit 2, before anything is written.
    resume.check_run_dir(run_dir, needed, config.train.disk_margin)

    # 2. The run directory.
    if auto_named:
        run_dir = claim_run_dir(run_dir)
        config = dataclasses.replace(config, run_dir=run_dir)
    os.makedirs(os.path.join(run_dir, MODALITY_DIR), exist_ok=True)
    if extending:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        history = os.path.join(run_dir, "history")
        os.makedirs(history, exist_ok=True)
        for name in ("config.yaml", "metrics.json", "data.json"):
            if os.path.exists(os.path.join(run_dir, name)):
                shutil.copy2(os.path.join(run_dir, name), os.path.join(history, f"{stamp}-{name}"))
        log.info("adding %s to %s (stored: %s)", ", ".join(to_train), run_dir, ", ".join(stored))
    elif not resuming:
        dump_yaml(config, os.path.join(run_dir, "config.yaml"))
        _write_json(os.path.join(run_dir, "data.json"), feature_set.summary())
        _save_shared_state(run_dir, state)
    else:
        log.info("resuming the interrupted run in %s", run_dir)
    done = tuple(m for m in to_train if os.path.isdir(modality_dir(run_dir, m))) if resuming else ()
    training = _train_modalities(config, feature_set, spec, state, tuple(m for m in to_train if m not in done), run_dir)

    # 3. The chosen checkpoints together; the test split is scored exactly once, here.
    nets = load_networks(config, spec, state, run_dir, scored)
    scored_set = feature_set.select_modalities(scored) if scored != available else feature_set

    encoders = {m: tf.function(lambda x, enc=nets[m].encoder: enc(x, training=False), reduce_retracing=True)
                for m in scored}
    val_scores = score_split(encoders, scored_set, "val", config)
    test_scores = score_split(encoders, scored_set, "test", config, detailed=True)
    presets = {name: score_split(encoders, scored_set, "test", config, preset=name)
               for name in config.eval.extra_presets}

    modalities = dict(record["modalities"]) if record else {}
    trained_at = datetime.datetime.now().isoformat(timespec="seconds")
    for m in to_train:
        summary = training["modalities"].get(m)
        if summary is None:  # trained before an interruption of this same run
            with open(os.path.join(modality_dir(run_dir, m), "checkpoints", "best.json"), encoding="utf-8") as handle:
                best = json.load(handle)
            summary = {"best_epoch": best["epoch"], "val_loss": best["val"]["loss"]}
        modalities[m] = {**summary, "dim": int(feature_set.dims[m]), "trained_at": trained_at,
                         "optimizer": to_dict(optimizer_config(config, m))}
    val = {**val_scores,
           "best_epoch": {m: modalities[m]["best_epoch"] for m in scored},
           "selection_loss": {m: modalities[m]["val_loss"] for m in scored}}
    unseen = unseen_classes(config, feature_set)
    zero_shot = {"zero_shot": zero_shot_scores(encoders, scored_set, "test", config, unseen)} if unseen else {}
    metrics = metrics_record(
        config, feature_set, val, test_scores, presets, **zero_shot,
        # Per network trained by this run: its resume history ({"epoch", "step"} per resume; [] = uninterrupted).
        resumed_from={m: training["modalities"].get(m, {}).get("resumed_from", []) for m in to_train},
        modalities=list(scored),
        selection="per-modality checkpoint with the lowest validation loss of that modality's own network",
        training={"trained_now": list(to_train), "reused": list(stored), **training},
    )

    exports = {}
    if config.export.enabled:
        from tf_xmr.export import encoder_dir, export_encoder

        for m in to_train:
            exports[m] = export_encoder(nets[m].encoder, encoder_dir(run_dir, m), input_dim=int(feature_set.dims[m]),
                                        l2_normalize=config.export.l2_normalize)
    for m in to_train:
        modalities[m]["sha256"] = tree_hashes(modality_dir(run_dir, m))
    new_record = {
        "method": config.method,
        "order": list(scored),
        "shared_state": {"file": SHARED_FILE, "sha256": file_sha256(os.path.join(run_dir, SHARED_FILE))},
        "modalities": {m: modalities[m] for m in scored},
    }
    _write_json(os.path.join(run_dir, RUN_FILE), new_record)
    if extending:
        dump_yaml(config, os.path.join(run_dir, "config.yaml"))
        _write_json(os.path.join(run_dir, "data.json"), feature_set.summary())
    # metrics.json last: its presence marks a finished run.
    _write_json(os.path.join(run_dir, "metrics.json"), metrics)
    return RunResult(run_dir=run_dir, metrics=metrics, exports=exports)

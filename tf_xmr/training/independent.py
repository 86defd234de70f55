"""Fitting methods whose modality networks are independent (the ``IndependentModalities`` hook, e.g. SDML).

Each modality's network trains on its own: its own data stream (unpaired modalities are fine), optimiser, ``fit``,
TensorBoard log and checkpoint, chosen on its own validation loss. With parallel modalities every network trains in
its own worker process (spawned, so each has its own TensorFlow runtime); otherwise one after the other in this
process. Only then are the chosen checkpoints loaded together and the validation and test splits scored over every
ordered modality pair (the test split exactly once, by the run pipeline).

``IndependentFit`` is one of the two fit stages of the run pipeline (``tf_xmr.training.pipeline``); the run
directory's extra files (``shared_state.npz``, ``independent.json``, ``modalities/<m>/``, ``history/``) are
described in ``tf_xmr.run_dir``.

Extending a finished run (``resume_from: RUN_DIR``) trains only the requested new modalities against the stored
shared state, in place: nothing under ``modalities/<old>/`` or ``export/<old>_encoder/`` is written, the new network
is staged in ``modalities/<new>.partial/`` and renamed when complete, and metrics.json is rewritten with every pair.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import resource
import shutil
import time

from tf_xmr import modeling, scoring
from tf_xmr.config import dump_yaml, to_dict
from tf_xmr.errors import ConfigError, DataError, TrainingError
from tf_xmr.files import file_sha256, read_json_if_present, tree_hashes, write_json
from tf_xmr.run_dir import (
    MODALITY_DIR,
    RUN_FILE,
    SHARED_FILE,
    load_shared_state,
    modality_dir,
    read_run_record,
    save_shared_state,
)

log = logging.getLogger("tf_xmr.training")

PARTIAL_SUFFIX = ".partial"
#: Written into a network's folder when it has finished training (its summary): a resumed run keeps it as it is.
FINISHED_FILE = "training.json"


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------------------------------------------
# One modality


def train_modality(config, feature_set, spec, state, modality: str, out_dir: str,
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
    from tf_xmr.training import callbacks as cb
    from tf_xmr.training import resume

    keras.utils.set_random_seed(config.seed)
    net = modeling.method_class(config).modality_model(config.model, spec, modality, state)
    optimizer = modeling.build_optimizer(modeling.modality_optimizer_config(config, modality),
                                         name=f"{modality}_optimizer")
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
    validation.skip = lambda: nan_guard.failure is not None
    callbacks = [
        cb.ProgressLine(config.train.verbose, config.train.epochs, steps),
        nan_guard,
        cb.TrainingStateLogger({modality: optimizer}, []),
        validation,
        cb.TensorBoard(log_dir=os.path.join(out_dir, "logs"), write_graph=False, update_freq="epoch"),
    ]
    if config.eval.epoch_trace:
        # Report only: this network's val/test embeddings per epoch, scored with the other networks' once all have
        # finished (IndependentFit.fit, tf_xmr.training.trace).
        from tf_xmr.training.trace import STASH_DIR, EmbeddingStash

        encoder = modeling.encoder_functions({modality: net.encoder})

        def embed(split):
            embeddings, labels = scoring.embed_config_split(encoder, feature_set, split, config)
            return embeddings[modality], labels[modality]

        stash = EmbeddingStash(embed, os.path.join(out_dir, STASH_DIR))
        stash.skip = lambda: nan_guard.failure is not None
        callbacks.insert(callbacks.index(validation) + 1, stash)
    callbacks.extend(extra_callbacks)
    backup_dir = os.path.join(checkpoint_dir, "backup")
    optimizers = {modality: optimizer}
    state, resumed_from = resume.resume_state(config.train.backup and os.path.isdir(backup_dir), backup_dir,
                                              checkpoint_dir, net, optimizers, validation, config.train.epochs,
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
                          callbacks=callbacks, verbose=0, shuffle=False)
        epochs_run = len(history.epoch)
    seconds = time.perf_counter() - start
    if nan_guard.failure:
        raise TrainingError(f"modality {modality!r}: training stopped: {nan_guard.failure}; lower its learning rate "
                            f"(run directory kept for inspection: remove it or choose another run_dir to retry with "
                            f"other settings)")
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
    write_json(os.path.join(out_dir, FINISHED_FILE), summary)
    if config.train.backup:
        shutil.rmtree(backup_dir, ignore_errors=True)
    return summary


def finished_summary(out_dir: str) -> dict | None:
    """The summary a network wrote when it finished training into ``out_dir``, or None."""
    return read_json_if_present(os.path.join(out_dir, FINISHED_FILE))


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
    from tf_xmr.training import workers  # the worker plan and process pool

    plan = workers.plan_workers(cores=workers.available_cores(), gpus=workers.visible_gpus(), networks=len(pending),
                                mode=config.train.parallel_modalities, max_workers=config.train.max_workers)
    log.info("%s", plan.describe(len(pending)))
    start = time.perf_counter()
    if plan.parallel:
        results.update(workers.train_in_workers(config, {m: staging[m] for m in pending}, plan,
                                                train_fn=train_modality, state=state))
    else:
        for m in pending:
            log.info("training the %s network", m)
            results[m] = train_modality(config, feature_set, spec, state, m, staging[m])
    wall = time.perf_counter() - start
    for m in modalities:
        os.replace(staging[m], modality_dir(run_dir, m))
    return {"modalities": {m: results[m] for m in modalities}, "wall_seconds": round(wall, 3),
            "mode": "parallel" if plan.parallel else "sequential", "workers": plan.workers,
            "threads_per_worker": plan.threads, "plan": plan.reason}


# ----------------------------------------------------------------------------------------------------------------
# Extending a finished run


def _check_extension(config, available, requested):
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


def _check_same_data(config, source: str) -> None:
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


# ----------------------------------------------------------------------------------------------------------------
# The fit stage


class IndependentFit:
    """The fit stage of a method with independent modality networks (``tf_xmr.training.pipeline`` has the contract).

    Besides a fresh run and the resume of an interrupted one (same ``run_dir``), it extends a finished run with new
    modalities (``resume_from``): ``extending`` tells the pipeline to keep the stored config.yaml and data.json
    until the end (copied to ``history/`` first).
    """

    is_chief = True

    def __init__(self, config):
        if config.train.distribution != "none":
            raise ConfigError(
                f"train.distribution={config.train.distribution} is for jointly trained methods; {config.method!r} "
                "trains independent modality networks (use train.parallel_modalities instead)"
            )
        self.extending = bool(config.resume_from)

    def prepare(self, config, config_path, feature_set, spec):
        """Which networks to train, the shared state, each network built once as a check, the run directory
        checked; nothing is written yet.

        Returns:
            ``(config, run_dir, resuming, auto_named)``; ``config.run_dir`` is set.
        """
        from tf_xmr import run_dir as layout
        from tf_xmr.training import resume

        model_class = modeling.method_class(config)
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
                raise ConfigError(
                    f"config key 'model.train_modalities' must list distinct modalities, got {list(requested)}")
        auto_named = not self.extending and not config.run_dir
        resuming = False
        if self.extending:
            run_dir, self.stored_record, self.stored, self.to_train = _check_extension(config, available, requested)
            _check_same_data(config, run_dir)
            _check_stored_dims(self.stored_record, feature_set, run_dir)
            state = load_shared_state(run_dir)
            model_class.check_shared_state(config.model, spec, state, os.path.join(run_dir, SHARED_FILE))
        else:
            self.stored_record, self.stored = None, ()
            self.to_train = tuple(requested) if requested is not None else available
            run_dir = layout.resolve_run_dir(config, config_path)
        self.scored = tuple(m for m in available if m in self.stored or m in self.to_train)
        if len(self.scored) < 2:
            raise ConfigError(
                f"retrieval needs at least two modalities, this run would have only {list(self.scored)} "
                "(model.train_modalities)"
            )
        for m in self.to_train:
            modeling.modality_optimizer_config(config, m)  # a missing entry fails now, not in a worker later
        config = dataclasses.replace(config, run_dir=run_dir)
        if not self.extending:
            # A fresh automatic name never holds an interrupted run (claim_run_dir moves to a free name).
            resuming = False if auto_named else layout.prepare_run_dir(run_dir, config)
            state = (load_shared_state(run_dir) if resuming and os.path.exists(os.path.join(run_dir, SHARED_FILE))
                     else model_class.create_shared_state(config.model, spec, config.seed))
            model_class.check_shared_state(config.model, spec, state, "the generated shared state")
        # Build one network per modality to be trained now: a model that does not fit its data fails here.
        needed = 0
        for m in self.to_train:
            net = model_class.modality_model(config.model, spec, m, state)
            trainable = resume.variable_bytes(net.trainable_variables)
            # Optimiser state counted as Adam's two slots per trainable variable (the most any optimiser has).
            needed += resume.estimate_run_bytes(
                resume.variable_bytes(net.variables), 2 * trainable,
                resume.variable_bytes(net.encoder.variables) if config.export.enabled else 0, config.train.backup)
        # Unwritable or too full: one line, exit 2, before anything is written.
        resume.check_run_dir(run_dir, needed, config.train.disk_margin)
        self.feature_set, self.spec, self.state = feature_set, spec, state
        return config, run_dir, resuming, auto_named

    def begin(self, run_dir: str, resuming: bool) -> None:
        """The shared state of a new run; the history copy of an extended one."""
        os.makedirs(os.path.join(run_dir, MODALITY_DIR), exist_ok=True)
        if self.extending:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            history = os.path.join(run_dir, "history")
            os.makedirs(history, exist_ok=True)
            for name in ("config.yaml", "metrics.json", "data.json"):
                if os.path.exists(os.path.join(run_dir, name)):
                    shutil.copy2(os.path.join(run_dir, name), os.path.join(history, f"{stamp}-{name}"))
            log.info("adding %s to %s (stored: %s)", ", ".join(self.to_train), run_dir, ", ".join(self.stored))
        elif not resuming:
            save_shared_state(run_dir, self.state)
        else:
            log.info("resuming the interrupted run in %s", run_dir)

    def fit(self, config, run_dir: str, resuming: bool) -> None:
        """Train every network not finished before an interruption (sequentially or in worker processes)."""
        done = tuple(m for m in self.to_train if os.path.isdir(modality_dir(run_dir, m))) if resuming else ()
        self.training = _train_modalities(config, self.feature_set, self.spec, self.state,
                                          tuple(m for m in self.to_train if m not in done), run_dir)
        if config.eval.epoch_trace:
            from tf_xmr.training.trace import STASH_DIR, TRACE_FILE, combine_stashes

            combine_stashes({m: os.path.join(modality_dir(run_dir, m), STASH_DIR) for m in self.scored},
                            self.scored, scoring.protocol(config), os.path.join(run_dir, TRACE_FILE))

    def select(self, config, run_dir: str):
        """Load every scored network's chosen checkpoint; validation mAP over every ordered pair.

        Returns:
            ``(encoders, feature_set, val)`` as ``JointFit.select``; the feature set holds the scored modalities.
        """
        feature_set = self.feature_set
        self.nets = modeling.load_networks(config, self.spec, self.state, run_dir, self.scored)
        if self.scored != tuple(feature_set.modalities):
            feature_set = feature_set.select_modalities(self.scored)
        encoders = modeling.encoder_functions({m: net.encoder for m, net in self.nets.items()})
        modalities = dict(self.stored_record["modalities"]) if self.stored_record else {}
        trained_at = datetime.datetime.now().isoformat(timespec="seconds")
        for m in self.to_train:
            summary = self.training["modalities"].get(m)
            if summary is None:  # trained before an interruption of this same run
                with open(os.path.join(modality_dir(run_dir, m), "checkpoints", "best.json"),
                          encoding="utf-8") as handle:
                    best = json.load(handle)
                summary = {"best_epoch": best["epoch"], "val_loss": best["val"]["loss"]}
            modalities[m] = {**summary, "dim": int(self.feature_set.dims[m]), "trained_at": trained_at,
                             "optimizer": to_dict(modeling.modality_optimizer_config(config, m))}
        self.modalities = modalities
        val = {**scoring.score_split(encoders, feature_set, "val", config),
               "best_epoch": {m: modalities[m]["best_epoch"] for m in self.scored},
               "selection_loss": {m: modalities[m]["val_loss"] for m in self.scored}}
        return encoders, feature_set, val

    def record(self) -> dict:
        """What this fit adds to metrics.json."""
        return {
            # Per network trained by this run: its resume history ({"epoch", "step"} per resume; [] = uninterrupted).
            "resumed_from": {m: self.training["modalities"].get(m, {}).get("resumed_from", []) for m in self.to_train},
            "modalities": list(self.scored),
            "selection": "per-modality checkpoint with the lowest validation loss of that modality's own network",
            "training": {"trained_now": list(self.to_train), "reused": list(self.stored), **self.training},
        }

    def export_encoders(self) -> dict:
        """modality -> the Keras encoder to export: the networks trained now (stored ones keep their exports)."""
        return {m: self.nets[m].encoder for m in self.to_train}

    def finish(self, config, run_dir: str) -> None:
        """independent.json with each network's file hashes; an extended run's config.yaml and data.json."""
        for m in self.to_train:
            self.modalities[m]["sha256"] = tree_hashes(modality_dir(run_dir, m))
        write_json(os.path.join(run_dir, RUN_FILE), {
            "method": config.method,
            "order": list(self.scored),
            "shared_state": {"file": SHARED_FILE, "sha256": file_sha256(os.path.join(run_dir, SHARED_FILE))},
            "modalities": {m: self.modalities[m] for m in self.scored},
        })
        if self.extending:
            dump_yaml(config, os.path.join(run_dir, "config.yaml"))
            write_json(os.path.join(run_dir, "data.json"), self.feature_set.summary())

    def cleanup(self, config, run_dir: str) -> None:
        """Each network removed its own backups when it finished."""

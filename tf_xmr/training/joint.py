"""Fitting a jointly trained model (ACMR, JFSE, X-GACMN, DA-GAN): every player's network in one ``fit``, one
validation mAP per epoch, one best checkpoint, optionally under a ``tf.distribute`` strategy.

``JointFit`` is one of the two fit stages of the run pipeline (``tf_xmr.training.pipeline``; the other is
``tf_xmr.training.independent.IndependentFit``). The stream and callback helpers here are shared with tune.py's trials.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from tf_xmr import modeling, scoring
from tf_xmr import run_dir as layout
from tf_xmr.errors import ConfigError, DataError, TrainingError

log = logging.getLogger("tf_xmr.training")


def steps_per_epoch(config, split) -> int:
    """Training steps in one pass over ``split`` (the last partial batch counts unless ``train.drop_remainder``)."""
    n = split.num_examples()
    steps = n // config.train.batch_size
    if not config.train.drop_remainder and n % config.train.batch_size:
        steps += 1
    return steps


def training_stream(model, config, feature_set, *, first_epoch: int, epochs: int, steps_per_epoch: int):
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


def fit_callbacks(model, *, validation, steps_per_epoch: int, epochs: int, log_dir: str, extra=(), verbose: int = 0):
    """The callbacks every fit of a jointly trained model uses (train.py and tune.py), in the order that matters.

    The progress line first (its epoch summary must end its line before anything else logs), the GRL schedule (it
    sets the strength the step reads), the NaN guard, the optimiser/GRL state logger, then
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
    callbacks.insert(0, cb.ProgressLine(verbose, epochs, steps_per_epoch))
    return callbacks, nan_guard


class JointFit:
    """The fit stage of a jointly trained method (see ``tf_xmr.training.pipeline`` for the stages' contract)."""

    extending = False

    def __init__(self, config):
        if config.resume_from:
            raise ConfigError(
                f"resume_from is for methods whose modality networks train independently; {config.method!r} trains "
                "all its networks jointly (to continue an interrupted run, rerun it with the same run_dir)"
            )
        from tf_xmr.training.distribution import setup_distribution

        # First, before TensorFlow runs any op (MultiWorkerMirroredStrategy refuses later); a bad TF_CONFIG fails here.
        self.dist = setup_distribution(config.train.distribution)
        self.is_chief = self.dist.is_chief

    def prepare(self, config, config_path, feature_set, spec):
        """Build and compile the model, then choose and check the run directory; nothing is written yet.

        Returns:
            ``(config, run_dir, resuming, auto_named)``; ``config.run_dir`` is set.
        """
        from tf_xmr.training import resume

        self.config, self.feature_set = config, feature_set
        if steps_per_epoch(config, feature_set.splits["train"]) == 0:
            raise DataError(
                f"the training split has {feature_set.splits['train'].num_examples()} items, fewer than one batch of "
                f"train.batch_size={config.train.batch_size} with train.drop_remainder=true; lower train.batch_size"
            )
        # Variables, optimiser slots and the compiled train step must belong to the strategy (mirrored variables).
        with self.dist.scope():
            self.model = modeling.build_model(config, spec)
            self.optimizers = modeling.compile_model(
                self.model, config, jit_compile=self.dist.jit_compile(config.train.jit_compile))
            # Keras 3 traces it at the first step, inside strategy.run; every variable it touches exists already.
            self.model.make_train_function()
        self.backup = config.train.backup and self.dist.supports_backup()
        if not self.is_chief:
            # Non-chief workers keep their files out of the run directory (a private temp folder, removed at the end).
            run_dir = self.dist.scratch_dir()
            return dataclasses.replace(config, run_dir=run_dir), run_dir, False, False
        auto_named = not config.run_dir
        run_dir = layout.resolve_run_dir(config, config_path)
        config = dataclasses.replace(config, run_dir=run_dir)
        # A fresh automatic name never holds an interrupted run (claim_run_dir moves to a free name).
        resuming = False if auto_named else layout.prepare_run_dir(run_dir, config)
        if resuming and not self.dist.supports_backup():
            raise ConfigError(
                f"run_dir {run_dir} holds an interrupted run; resuming is not supported with "
                f"train.distribution={config.train.distribution}; choose another run_dir"
            )
        # Unwritable or too full: one line, exit 2, before anything is written.
        resume.check_run_dir(run_dir, resume.joint_run_bytes(self.model, self.optimizers,
                                                             export=config.export.enabled, backup=self.backup),
                             config.train.disk_margin)
        return config, run_dir, resuming, auto_named

    def begin(self, run_dir: str, resuming: bool) -> None:
        """Nothing beyond the pipeline's config.yaml and data.json."""

    def fit(self, config, run_dir: str, resuming: bool) -> None:
        """Train with validation-based checkpoint selection, backing up every epoch, resuming from a backup."""
        from tf_xmr.training import callbacks as cb
        from tf_xmr.training import resume

        feature_set, model, dist = self.feature_set, self.model, self.dist
        checkpoint_dir = os.path.join(run_dir, "checkpoints")
        os.makedirs(checkpoint_dir, exist_ok=True)
        steps = steps_per_epoch(config, feature_set.splits["train"])
        self.encoders = modeling.keras_encoders(model)
        validation = cb.RetrievalValidation(
            lambda: scoring.score_split(self.encoders, feature_set, "val", config),
            checkpoint_dir,
            every=config.train.eval_every,
            patience=config.train.early_stopping_patience,
            min_delta=config.train.min_delta,
            total_epochs=config.train.epochs,
        )
        self.validation = validation
        # Only the chief evaluates; dist.callbacks() then shares its early-stopping decision with the other workers.
        callbacks, nan_guard = fit_callbacks(model, validation=validation if dist.is_chief else None,
                                             steps_per_epoch=steps, epochs=config.train.epochs,
                                             log_dir=os.path.join(run_dir, "logs"), extra=dist.callbacks(),
                                             verbose=config.train.verbose if dist.is_chief else 0)
        validation.skip = lambda: nan_guard.failure is not None
        backup_dir = os.path.join(checkpoint_dir, "backup")
        state, self.resumed_from = resume.resume_state(resuming and self.backup, backup_dir, checkpoint_dir, model,
                                                       self.optimizers, validation, config.train.epochs,
                                                       f"the interrupted run in {run_dir}")
        if self.backup:
            # Last: it saves the epoch's validation state and best checkpoint too.
            callbacks.append(resume.training_checkpoint(
                backup_dir, optimizers=self.optimizers, validation=validation, resumed_from=self.resumed_from,
                step=state["step"] if state else 0, skip=lambda: nan_guard.failure is not None))

        first_epoch = state["epoch"] if state else 0
        if config.eval.epoch_trace and dist.is_chief:
            # Report only; after validation, whose epoch logs it reads (see tf_xmr.training.trace).
            from tf_xmr.training.trace import TRACE_FILE, EpochTrace

            trace = EpochTrace(lambda split: scoring.score_split(self.encoders, feature_set, split, config),
                               os.path.join(run_dir, TRACE_FILE), scoring.protocol(config).describe(),
                               first_epoch=first_epoch)
            trace.skip = lambda: nan_guard.failure is not None
            callbacks.insert(callbacks.index(validation) + 1, trace)
        if first_epoch < config.train.epochs and not (state and state["stop_training"]):
            train_ds = training_stream(model, config, feature_set, first_epoch=first_epoch,
                                       epochs=config.train.epochs, steps_per_epoch=steps)
            model.fit(dist.prepare_dataset(train_ds), epochs=config.train.epochs, initial_epoch=first_epoch,
                      steps_per_epoch=steps, callbacks=callbacks, verbose=0,
                      shuffle=False)  # the tf.data pipeline shuffles (seeded); Keras must not
        if not dist.is_chief:
            dist.cleanup()
        if nan_guard.failure:
            raise TrainingError(
                f"training stopped: {nan_guard.failure}; lower the learning rates or loss weights (run directory "
                f"{run_dir} kept for inspection: remove it or choose another run_dir to retry with other settings)"
            )

    def select(self, config, run_dir: str):
        """Load the checkpoint chosen on validation.

        Returns:
            ``(encoders, feature_set, val)``: inference functions per modality, the feature set to score, and the
            validation scores of the chosen epoch.
        """
        best = self.validation.best
        if best["epoch"] is None:
            raise TrainingError("no validation evaluation ran, so no checkpoint was selected")
        self.model.load_weights(self.validation.best_path)
        return self.encoders, self.feature_set, {**best["val"], "best_epoch": best["epoch"]}

    def record(self) -> dict:
        """What this fit adds to metrics.json."""
        return {"distribution": self.dist.describe(), "resumed_from": self.resumed_from}

    def export_encoders(self) -> dict:
        """modality -> the Keras encoder to export (every modality of the model)."""
        return {m: self.model.encoder(m) for m in self.model.modalities}

    def finish(self, config, run_dir: str) -> None:
        """Nothing to write before metrics.json."""

    def cleanup(self, config, run_dir: str) -> None:
        """After metrics.json: the epoch backups of a finished run are no longer needed."""
        if config.train.backup:
            import shutil

            shutil.rmtree(os.path.join(run_dir, "checkpoints", "backup"), ignore_errors=True)

"""Hyperparameter search over any dotted config key, with keras_tuner (what ``tune.py`` runs).

A config's ``tune:`` section (``tf_xmr.config.schema.TuneConfig``) names the keys to search and their ranges. Each
trial substitutes its values into the config exactly as ``--set key=value`` would, builds and compiles the model with
``tf_xmr.modeling``, trains it with the joint fit's stream and callbacks (``tf_xmr.training.joint``), and reports the
best validation ``map_avg`` seen by ``RetrievalValidation`` on the WHOLE validation split. The test split is never
embedded: choosing hyperparameters on it would leak the test set into model selection (design.md rule 7).

The order of operations mirrors the run pipeline's (``tf_xmr.training.pipeline``): the config, every value the space
can take, the tuner directory and the data are all checked before anything is written, so a typo'd key costs one
line and leaves no folder behind.

Tuner directory (``tune.directory``, default ``saved_models/<config name>``)::

    search.json            the search's identity (the resolved config); a rerun must match it to continue
    oracle.json tuner0.json trial_<id>/trial.json     keras_tuner's own state (what makes a rerun resume)
    trial_<id>/config.yaml the trial's resolved config;  trial_<id>/result.json  best epoch and validation scores
    trial_<id>/checkpoints/best.weights.h5            the trial's best validation checkpoint (Hyperband continues it)
    trials.csv             one row per trial: id, each value, best val mAP, best epoch, epochs, status
    best_config.yaml       the best trial's full config, ready for ``python train.py --config``
    tensorboard/           HParams (one run per trial, with its training curves) for ``tensorboard --logdir``
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import importlib.util
import io
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from tf_xmr import modeling, scoring
from tf_xmr.config import apply_overrides, dump_yaml, load_yaml, to_dict
from tf_xmr.config.schema import ExperimentConfig, SearchDimension, TuneConfig, config_name
from tf_xmr.errors import ConfigError, XmrError
from tf_xmr.experiment import experiment_from_dict
from tf_xmr.files import atomic_write_text, write_json
from tf_xmr.run_dir import diff_keys
from tf_xmr.training import joint

log = logging.getLogger("tf_xmr.training")

#: The trial metric keras_tuner maximises: the best validation map_avg of the trial (RetrievalValidation).
OBJECTIVE = "val_map_avg"
SEARCH_FILE = "search.json"
TABLE_FILE = "trials.csv"
BEST_FILE = "best_config.yaml"
HPARAMS_DIR = "tensorboard"
RESULT_FILE = "result.json"
# Top-level keys a trial may not change: they define the search itself (tune), where outputs go (run_dir), or which
# model section the config even has (method: its `model` keys would stop being valid).
_NOT_SEARCHABLE = ("tune", "run_dir", "resume_from", "method")
# Settings that change neither what a trial computes nor which trials exist, so a rerun may change them.
_RESUMABLE_CHANGES = (("tune", "max_trials"), ("tune", "directory"), ("train", "verbose"))


class TuningError(XmrError):
    """The search could not continue (for example every trial failed)."""

    exit_code = 1


@dataclasses.dataclass
class TrialRow:
    """One line of the trials table; ``val_map_avg`` / ``best_epoch`` are None unless the trial completed."""

    trial_id: str
    values: dict
    val_map_avg: float | None
    best_epoch: int | None
    epochs: int | None
    status: str


@dataclasses.dataclass
class TuneResult:
    """What ``tune`` returns: every trial's row, the best one, the files written, the trials run by this call."""

    search: Search
    directory: str
    rows: list[TrialRow]
    best: TrialRow | None
    best_config_path: str | None
    table_path: str
    new_trials: int


# ----------------------------------------------------------------------------------------------------------------
# The search: config data + space, validated


class Search:
    """A validated search: the config data without its ``tune`` section, the space, and the tuner directory.

    Args:
        config_path: the YAML file (names the default directory and errors).
        overrides: ``--set key=value`` strings.

    Raises:
        ConfigError: no ``tune`` section, a space key that is not a config key, a value the config rejects, a tuner
            setting that does not fit the tuner, or a directory holding a different search.
    """

    def __init__(self, config_path: str, overrides: Sequence[str] = ()):
        data, sources = load_yaml(config_path)
        data = apply_overrides(data, overrides, sources)
        self.config_path = config_path
        self.overrides = list(overrides)
        self.config: ExperimentConfig = experiment_from_dict(data, sources)
        if self.config.tune is None:
            raise ConfigError(f"config {config_path} has no 'tune' section: tune.py needs one naming the search space "
                              "(see configs/tune/)")
        self.tune: TuneConfig = self.config.tune
        self.sources = sources
        # Trials are resolved from the plain data (not the dataclasses) so a trial value goes through exactly the
        # checks a `--set` of that value would.
        self.data = {key: value for key, value in data.items() if key != "tune"}
        self.directory = self.tune.directory or os.path.join("saved_models", config_name(config_path))
        self._feature_sets: dict[str, Any] = {}
        self._check_method()
        self._check_tuner_settings()
        self._check_space()

    # -- resolving trial configs -----------------------------------------------------------------------------------

    def resolve(self, values: Mapping[str, Any], *, for_trial: bool = True, label: str | None = None
                ) -> ExperimentConfig:
        """The experiment config with ``values`` (dotted key -> value) substituted, built strictly.

        ``for_trial`` applies ``tune.epochs`` (the search's per-trial budget); the best config written at the end
        keeps ``train.epochs``.
        """
        sources = self.sources.copy()
        overrides = [f"{key}={json.dumps(value)}" for key, value in values.items()]
        if for_trial and self.tune.epochs is not None:
            overrides.insert(0, f"train.epochs={self.tune.epochs}")
        data = apply_overrides(self.data, overrides, sources)
        for key, value in values.items():
            # Errors about a searched value then point at the tune.space entry's file, not at "--set".
            sources.drop(key)
            sources.record(value, label or self.sources.lookup(f"tune.space.{key}") or "tune.space", key)
        config = experiment_from_dict(data, sources)
        return dataclasses.replace(config, tune=None)

    def values_of(self, hp_values: Mapping[str, Any]) -> dict:
        """A trial's values of the space keys (keras_tuner adds tuner/* entries of its own).

        Stepped floats are rounded to 12 significant digits: keras_tuner computes them as min + i * step, which gives
        0.30000000000000004 for 0 + 3 * 0.1, a value nobody would write into a config.
        """
        values = {}
        for key, dim in self.tune.space.items():
            value = hp_values.get(key)
            if isinstance(value, float) and dim.kind in ("float", "log") and dim.step is not None:
                value = float(f"{value:.12g}")
            values[key] = value
        return values

    def feature_set(self, config: ExperimentConfig):
        """The loaded data for ``config``; loaded once per distinct data section and seed (both may be searched)."""
        key = json.dumps([to_dict(config.data), config.seed], sort_keys=True)
        if key not in self._feature_sets:
            self._feature_sets[key] = modeling.load_data(config)
        return self._feature_sets[key]

    # -- checks (before anything is written) -----------------------------------------------------------------------

    def _where(self, key: str) -> str:
        return self.sources.where(key)

    def _check_method(self):
        if modeling.is_independent(self.config.method):
            raise ConfigError(f"tune.py searches jointly trained methods; {self.config.method!r} trains independent "
                              "per-modality networks (train.py) and is not supported")
        if self.config.resume_from:
            raise ConfigError("resume_from must be null in a tune config (a search trains every trial from scratch)")
        if self.config.eval.epoch_trace:
            raise ConfigError(f"config key 'eval.epoch_trace'{self._where('eval.epoch_trace')} must be false in a tune "
                              "config: a search never scores the test split (the trace is for benchmarks/report.py)")

    def _check_tuner_settings(self):
        tune = self.tune
        where = self._where("tune")
        if not tune.space:
            raise ConfigError(f"config key 'tune.space'{where} is empty: name at least one dotted config key to search")
        if tune.tuner in ("random", "bayesian") and tune.max_trials is None:
            raise ConfigError(f"config key 'tune.max_trials'{where} is required for tuner {tune.tuner!r}")
        if tune.tuner == "bayesian" and importlib.util.find_spec("sklearn") is None:
            # keras_tuner's BayesianOptimization imports scikit-learn lazily, which requirements.txt does not pin.
            raise ConfigError(f"config key 'tune.tuner'{self._where('tune.tuner')}: 'bayesian' needs scikit-learn "
                              "(pip install scikit-learn, not part of requirements.txt); or use random or hyperband")
        if tune.tuner == "hyperband" and tune.max_trials is not None:
            raise ConfigError(f"config key 'tune.max_trials'{self._where('tune.max_trials')} must be null for tuner "
                              "'hyperband' (its trial count follows from the epochs and tune.factor)")
        if tune.tuner == "grid":
            for key, dim in tune.space.items():
                if dim.kind in ("float", "log") and dim.step is None:
                    raise ConfigError(f"tune.space entry '{key}'{self._where(f'tune.space.{key}')}: tuner 'grid' "
                                      f"needs a step for kind {dim.kind} (or use kind choice)")
        if tune.epochs is not None and "train.epochs" in tune.space:
            raise ConfigError(f"tune.epochs{self._where('tune.epochs')} and tune.space entry 'train.epochs' both set "
                              "the trial epochs; keep one")

    def _check_space(self):
        resolved = to_dict(self.config)
        for key, dim in self.tune.space.items():
            where = self._where(f"tune.space.{key}")
            top = key.split(".")[0]
            if top in _NOT_SEARCHABLE:
                raise ConfigError(f"tune.space entry '{key}'{where}: '{top}' cannot be searched "
                                  f"(not searchable: {', '.join(_NOT_SEARCHABLE)})")
            _check_key_exists(resolved, key, where)
            # Each value the dimension can produce at its ends (every value of a choice) must pass the config's own
            # type and range checks, so a bad range fails now rather than as trial N of a long search.
            for value in probe_values(dim):
                try:
                    self.resolve({key: value}, for_trial=False)
                except ConfigError as exc:
                    raise ConfigError(f"tune.space entry '{key}'{where} cannot take {dim.kind} value "
                                      f"{json.dumps(value)}: {exc}") from None

    def fingerprint(self) -> dict:
        """What a resumed search must share with the stored one: the whole resolved config bar cosmetic keys."""
        resolved = to_dict(self.config)
        for section, key in _RESUMABLE_CHANGES:
            resolved[section].pop(key, None)
        return resolved


def _check_key_exists(resolved: dict, key: str, where: str) -> None:
    """A space key must name a value that exists in the resolved config (so a typo, or an optimiser for a player
    the method does not have, is an error instead of a silently ignored trial value)."""
    node: Any = resolved
    parts = key.split(".")
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth])
        if not isinstance(node, dict):
            raise ConfigError(f"tune.space key '{key}'{where}: '{prefix}' is a value, not a section")
        if part not in node:
            close = difflib.get_close_matches(part, list(node), n=1, cutoff=0.6)
            hint = f"; did you mean '{_join(prefix, close[0])}'?" if close else ";"
            under = f"under '{prefix}'" if prefix else "at the top level"
            raise ConfigError(f"tune.space key '{key}'{where} is not a config key{hint} valid keys {under}: "
                              f"{', '.join(sorted(node)) or '(none)'}")
        node = node[part]
    if isinstance(node, dict):
        raise ConfigError(f"tune.space key '{key}'{where} is a section, not a value; search one of its keys: "
                          f"{', '.join(sorted(node))}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def choice_values(dim: SearchDimension) -> list:
    """A choice's values; ints become floats when any value is a float (YAML reads `1` as an int in [0.1, 1, 10])."""
    values = list(dim.values)
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers and any(isinstance(v, float) for v in numbers):
        return [float(v) for v in values]
    return values


def probe_values(dim: SearchDimension) -> list:
    """The values checked against the config before the search: every choice, or both ends of a range."""
    if dim.kind == "choice":
        return choice_values(dim)
    if dim.kind == "int":
        return [int(dim.min), int(dim.max)]
    return [float(dim.min), float(dim.max)]


# ----------------------------------------------------------------------------------------------------------------
# Tuner directory


def prepare_directory(search: Search) -> bool:
    """Check the tuner directory before anything is written; returns True when continuing a stored search."""
    directory = search.directory
    if not os.path.exists(directory):
        return False
    if not os.path.isdir(directory):
        raise ConfigError(f"tuner directory {directory} exists and is not a directory")
    entries = os.listdir(directory)
    if not entries:
        return False
    stored_path = os.path.join(directory, SEARCH_FILE)
    if not os.path.exists(stored_path):
        raise ConfigError(f"tuner directory {directory} is not empty and holds no tf_xmr search ({SEARCH_FILE}); "
                          "set tune.directory to another folder")
    with open(stored_path, encoding="utf-8") as handle:
        stored = json.load(handle)["search"]
    current = search.fingerprint()
    if stored != current:
        changed = sorted(diff_keys(stored, current))
        what = "search space" if any(k.startswith("tune.") for k in changed) else "config"
        raise ConfigError(f"tuner directory {directory} holds a search with a different {what} (differs at: "
                          f"{', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}); rerun the same config to "
                          "continue it, or set tune.directory to a new folder")
    return True


# ----------------------------------------------------------------------------------------------------------------
# keras_tuner glue (imported lazily: keras_tuner imports TensorFlow)


def _hyperparameters(space: Mapping[str, SearchDimension]):
    import keras_tuner as kt

    hps = kt.HyperParameters()
    for key, dim in space.items():
        if dim.kind == "choice":
            hps.Choice(key, choice_values(dim))
        elif dim.kind == "int":
            hps.Int(key, int(dim.min), int(dim.max), step=int(dim.step) if dim.step else 1)
        elif dim.kind == "float":
            hps.Float(key, float(dim.min), float(dim.max), step=dim.step)
        else:
            hps.Float(key, float(dim.min), float(dim.max), step=dim.step, sampling="log")
    return hps


def make_hypermodel(search: Search):
    """The ``keras_tuner.HyperModel`` of a search (a function so keras_tuner is imported only when tuning)."""
    import keras
    import keras_tuner as kt

    class XmrHyperModel(kt.HyperModel):
        """Builds a trial's model from the config with the trial's values; trains it like
        ``tf_xmr.training.pipeline.train``.

        ``fit`` returns the best validation scores seen by ``RetrievalValidation`` (objective ``val_map_avg``).
        """

        def __init__(self):
            super().__init__(name=search.config.method)
            self.search = search

        def trial_config(self, hp) -> ExperimentConfig:
            return search.resolve(search.values_of(hp.values))

        def build(self, hp):
            config = self.trial_config(hp)
            # The same seed for every trial (set after keras_tuner's clear_session), so that trials differ only by
            # their values: initial weights, dropout masks and the shuffling order are those of `train.py`.
            keras.utils.set_random_seed(config.seed)
            feature_set = search.feature_set(config)
            model = modeling.build_model(config, modeling.data_spec(config, feature_set))
            modeling.compile_model(model, config)
            return model

        def fit(self, hp, model, *args, trial_dir: str, epochs: int | None = None, initial_epoch: int = 0,
                callbacks=(), **kwargs):
            return _fit_trial(search, self.trial_config(hp), model, trial_dir, epochs=epochs,
                              initial_epoch=initial_epoch, extra_callbacks=list(callbacks or ()))

    return XmrHyperModel()


def _fit_trial(search: Search, config: ExperimentConfig, model, trial_dir: str, *, epochs: int | None,
               initial_epoch: int, extra_callbacks: list) -> dict:
    """Train one trial with the joint fit's stream and callbacks; return its best validation scores.

    The pipeline and callbacks are the joint fit's (``tf_xmr.training.joint``) (``training_stream``, ``fit_callbacks``);
    there is no test scoring, export or backup: an interrupted trial is rerun from scratch by keras_tuner.
    """
    import keras_tuner as kt

    from tf_xmr.training import callbacks as cb

    epochs = epochs or config.train.epochs
    feature_set = search.feature_set(config)
    checkpoint_dir = os.path.join(trial_dir, "checkpoints")
    # A rerun of an interrupted trial starts clean: RetrievalValidation would otherwise resume its stale best.
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    os.makedirs(checkpoint_dir)
    dump_yaml(dataclasses.replace(config, run_dir=None), os.path.join(trial_dir, "config.yaml"))
    logs_dir = os.path.join(search.directory, HPARAMS_DIR, os.path.basename(trial_dir))
    shutil.rmtree(logs_dir, ignore_errors=True)

    steps = joint.steps_per_epoch(config, feature_set.splits["train"])
    encoders = modeling.keras_encoders(model)
    # The objective: the WHOLE validation split, scored by the same function and protocol as train.py's selection.
    validation = cb.RetrievalValidation(
        lambda: scoring.score_split(encoders, feature_set, "val", config),
        checkpoint_dir,
        every=config.train.eval_every,
        patience=config.train.early_stopping_patience,
        min_delta=config.train.min_delta,
        total_epochs=epochs,
    )
    # The same callbacks and batch stream as train.py (a Hyperband continuation starts at its initial_epoch, in the
    # order an uninterrupted run would have reached there); keras_tuner's own callbacks go before TensorBoard.
    callbacks, nan_guard = joint.fit_callbacks(model, validation=validation, steps_per_epoch=steps, epochs=epochs,
                                                 log_dir=logs_dir, extra=extra_callbacks, verbose=config.train.verbose)
    train_ds = joint.training_stream(model, config, feature_set, first_epoch=initial_epoch, epochs=epochs,
                                       steps_per_epoch=steps)
    model.fit(train_ds, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps, callbacks=callbacks,
              verbose=0, shuffle=False)
    if nan_guard.failure:
        # FailedTrialError: keras_tuner records the trial as FAILED and moves on to the next one.
        raise kt.errors.FailedTrialError(f"training stopped: {nan_guard.failure}")
    best = validation.best
    if best["epoch"] is None:
        raise kt.errors.FailedTrialError("no validation evaluation ran, so the trial has no score")
    write_json(os.path.join(trial_dir, RESULT_FILE), {
        "best_epoch": best["epoch"], "val": best["val"], "epochs": epochs, "initial_epoch": initial_epoch,
    })
    return {f"val_{key}": float(value) for key, value in best["val"].items()}


def _tuner_class(kind: str):
    import keras_tuner as kt

    class _XmrTuner(kt.Tuner):
        """What every tf_xmr tuner changes in keras_tuner's Tuner.

        ``run_trial`` hands the trial directory to ``HyperModel.fit`` and leaves checkpointing to
        RetrievalValidation (keras_tuner's own SaveBestEpoch would save a second copy on every improving epoch);
        ``_get_checkpoint_fname`` points Hyperband at that checkpoint when it continues a trial.
        """

        def run_trial(self, trial, *args, **kwargs):
            model = self._try_build(trial.hyperparameters)
            trial_dir = self.get_trial_dir(trial.trial_id)
            # Hyperband reads this back before continuing a trial (keras_tuner's own fit path writes it too); our
            # models are fully built by build(), so it holds null.
            write_json(self._get_build_config_fname(trial.trial_id), model.get_build_config())
            return self.hypermodel.fit(trial.hyperparameters, model, *args, trial_dir=trial_dir, **kwargs)

        def _populate_initial_space(self):
            # The space is fixed and passed in as `hyperparameters`; keras_tuner's default builds a whole model here
            # just to discover hyperparameters declared inside build().
            return None

        def _get_checkpoint_fname(self, trial_id):
            return os.path.join(self.get_trial_dir(trial_id), "checkpoints", "best.weights.h5")

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            _write_trial_hparams(self.search_spec, self.oracle.trials[trial.trial_id], self.get_trial_dir(
                trial.trial_id))
            # The table after every trial, so a long search can be watched (and read if it is interrupted).
            write_table(self.search_spec, trial_rows(self.search_spec, self))
            self.trials_run += 1

    base = {"random": kt.RandomSearch, "bayesian": kt.BayesianOptimization, "hyperband": kt.Hyperband,
            "grid": kt.GridSearch}[kind]
    return type(f"Xmr{base.__name__}", (base, _XmrTuner), {})


def make_tuner(search: Search):
    import keras_tuner as kt

    tune = search.tune
    directory = os.path.abspath(search.directory)
    kwargs = dict(
        hypermodel=make_hypermodel(search),
        objective=kt.Objective(OBJECTIVE, direction="max"),
        # keras_tuner 1.4.8 takes seed 0 for "no seed" (`seed or random.randint(1, 10000)`), which would make
        # tune.seed 0 draw different trials on every fresh start; shifting by one keeps every tune.seed repeatable.
        seed=tune.seed + 1,
        hyperparameters=_hyperparameters(tune.space),
        # The space is exactly tune.space: nothing else becomes a hyperparameter behind the user's back.
        tune_new_entries=False,
        allow_new_entries=False,
        directory=os.path.dirname(directory),
        project_name=os.path.basename(directory),
        # Reload a stored search and run only the missing trials (an interrupted trial is rerun).
        overwrite=False,
    )
    if tune.tuner == "hyperband":
        kwargs.update(max_epochs=tune.epochs or search.config.train.epochs, factor=tune.factor)
    else:
        kwargs.update(max_trials=tune.max_trials)
    tuner = _tuner_class(tune.tuner)(**kwargs)
    tuner.search_spec = search
    tuner.trials_run = 0
    return tuner


# ----------------------------------------------------------------------------------------------------------------
# TensorBoard HParams


def _hparam_domains(space: Mapping[str, SearchDimension]):
    from tensorboard.plugins.hparams import api as hp_api

    hparams = []
    for key, dim in space.items():
        if dim.kind == "choice":
            domain = hp_api.Discrete(choice_values(dim))
        elif dim.kind == "int":
            domain = hp_api.IntInterval(int(dim.min), int(dim.max))
        else:
            domain = hp_api.RealInterval(float(dim.min), float(dim.max))
        hparams.append(hp_api.HParam(key, domain))
    return hparams


def write_hparams_config(search: Search) -> None:
    """The HParams experiment (the space and the metrics), once per tuner directory."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    with tf.summary.create_file_writer(os.path.join(search.directory, HPARAMS_DIR)).as_default():
        hp_api.hparams_config(
            hparams=_hparam_domains(search.tune.space),
            metrics=[hp_api.Metric(OBJECTIVE, display_name="best validation mAP (avg)"),
                     hp_api.Metric("best_epoch", display_name="best epoch")],
        )


def _write_trial_hparams(search: Search, trial, trial_dir: str) -> None:
    """One HParams session per trial, in the same run folder as the trial's training curves."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    values = search.values_of(trial.hyperparameters.values)
    result = _read_result(trial_dir)
    run = os.path.join(search.directory, HPARAMS_DIR, os.path.basename(trial_dir))
    with tf.summary.create_file_writer(run).as_default():
        hp_api.hparams({k: v for k, v in values.items() if v is not None}, trial_id=trial.trial_id)
        if trial.status == "COMPLETED" and trial.score is not None:
            step = result.get("best_epoch") or 0
            tf.summary.scalar(OBJECTIVE, float(trial.score), step=step)
            tf.summary.scalar("best_epoch", float(step), step=step)


# ----------------------------------------------------------------------------------------------------------------
# Results


def _read_result(trial_dir: str) -> dict:
    path = os.path.join(trial_dir, RESULT_FILE)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def trial_rows(search: Search, tuner) -> list[TrialRow]:
    rows = []
    # Trial ids are numbers as strings, zero-padded only to the width of max_trials: sort "10" after "9".
    for trial_id in sorted(tuner.oracle.trials, key=lambda t: (len(t), t)):
        trial = tuner.oracle.trials[trial_id]
        result = _read_result(tuner.get_trial_dir(trial_id))
        score = trial.score if trial.status == "COMPLETED" else None
        rows.append(TrialRow(
            trial_id=trial_id,
            values=search.values_of(trial.hyperparameters.values),
            val_map_avg=None if score is None or math.isnan(score) else float(score),
            best_epoch=result.get("best_epoch") if score is not None else None,
            epochs=trial.hyperparameters.values.get("tuner/epochs", result.get("epochs")),
            status=str(trial.status),
        ))
    return rows


def _columns(search: Search) -> list[str]:
    return ["trial", *search.tune.space, OBJECTIVE, "best_epoch", "epochs", "status"]


def _cells(row: TrialRow) -> list:
    return [row.trial_id, *row.values.values(), row.val_map_avg, row.best_epoch, row.epochs, row.status]


def write_table(search: Search, rows: list[TrialRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_columns(search))
    for row in rows:
        writer.writerow(["" if cell is None else cell for cell in _cells(row)])
    path = os.path.join(search.directory, TABLE_FILE)
    atomic_write_text(path, buffer.getvalue())
    return path


def format_table(search: Search, rows: list[TrialRow]) -> str:
    """The trials as an aligned text table (values as given, mAP to 4 decimals)."""
    def show(cell):
        if cell is None:
            return "-"
        return f"{cell:.4g}" if isinstance(cell, float) else str(cell)

    def cells(row):
        shown = [show(c) for c in _cells(row)]
        if row.val_map_avg is not None:
            shown[len(row.values) + 1] = f"{row.val_map_avg:.4f}"
        return shown

    table = [_columns(search)] + [cells(row) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in table)


def write_best_config(search: Search, best: TrialRow) -> str:
    """The best trial's full config, without the tune section and with run_dir null, for ``train.py --config``."""
    config = search.resolve(best.values, for_trial=False, label="the best trial")
    plain = to_dict(dataclasses.replace(config, run_dir=None))
    plain.pop("tune", None)
    path = os.path.join(search.directory, BEST_FILE)
    # dump_yaml gives the project's YAML dialect (quoting strings that would read back as numbers); the header
    # comment is added around it.
    tmp = os.path.join(search.directory, f".{BEST_FILE}.body")
    dump_yaml(plain, tmp)
    with open(tmp, encoding="utf-8") as handle:
        body = handle.read()
    os.remove(tmp)
    values = ", ".join(f"{key}={json.dumps(value)}" for key, value in best.values.items())
    trained = f"{best.epochs} epochs per trial" if best.epochs else ""
    command = " ".join(" ".join(["python tune.py --config", search.config_path,
                                 *(f"--set {o}" for o in search.overrides)]).split())  # one comment line
    header = (
        f"# Best trial ({best.trial_id}) of the search in {search.directory} ({command}):\n"
        f"# best validation map_avg {best.val_map_avg:.4f} at epoch {best.best_epoch}"
        f"{' of ' + trained if trained else ''}.\n"
        f"# Values: {values}. The test split was not used to choose them.\n"
        f"# Train and test it with: python train.py --config {path}\n"
    )
    atomic_write_text(path, header + body)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Entry point


def tune(config_path: str, overrides: Sequence[str] = ()) -> TuneResult:
    """Run (or continue) the search a config's ``tune`` section describes.

    Args:
        config_path: YAML config with a ``tune`` section.
        overrides: ``--set key=value`` strings.

    Returns:
        ``TuneResult`` with every trial's row, the best trial and the paths written.

    Raises:
        ConfigError: see ``Search``; raised before anything is written.
        TuningError: too many consecutive trials failed.
    """
    search = Search(config_path, overrides)
    resuming = prepare_directory(search)

    import tensorflow as tf

    if search.config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    # Data problems (missing files, NaN features) surface here, before the directory exists.
    search.feature_set(search.resolve({}))

    created = not os.path.exists(search.directory)
    try:
        # keras_tuner creates the directory (and, when continuing, reloads its state) here.
        tuner = make_tuner(search)
    except BaseException:
        if created:
            shutil.rmtree(search.directory, ignore_errors=True)
        raise
    if not resuming:
        write_json(os.path.join(search.directory, SEARCH_FILE), {"format": 1, "search": search.fingerprint()})
        write_hparams_config(search)
    else:
        log.info("continuing the search in %s", search.directory)
    try:
        # keras_tuner's per-trial summary (values, score, best so far) is shown even when train.verbose silences
        # the per-epoch progress bars: it is what a long search is watched by.
        tuner.search(verbose=1)
    except RuntimeError as exc:
        # keras_tuner stops after max_consecutive_failed_trials FAILED trials with a multi-line RuntimeError.
        if "consecutive failures" not in str(exc).lower():
            raise
        failed = [t for t in tuner.oracle.trials.values() if t.status == "FAILED"]
        last = failed[-1].message.strip().splitlines()[-1] if failed and failed[-1].message else "unknown"
        raise TuningError(f"the search stopped after {len(failed)} failed trials (last: {last}); "
                          f"see {search.directory}/trial_*/trial.json") from None

    rows = trial_rows(search, tuner)
    table_path = write_table(search, rows)
    best_trials = tuner.oracle.get_best_trials(1)
    best = next((row for row in rows if best_trials and row.trial_id == best_trials[0].trial_id
                 and row.val_map_avg is not None), None)
    best_path = write_best_config(search, best) if best is not None else None
    return TuneResult(search=search, directory=search.directory, rows=rows, best=best, best_config_path=best_path,
                      table_path=table_path, new_trials=tuner.trials_run)


def format_report(result: TuneResult) -> str:
    """What tune.py prints: the trials table, the best trial and where everything was written."""
    lines = [format_table(result.search, result.rows), f"trials table: {result.table_path}"]
    if result.best is not None:
        lines += [f"best trial: {result.best.trial_id} (validation map_avg {result.best.val_map_avg:.4f} at epoch "
                  f"{result.best.best_epoch})",
                  f"best config: {result.best_config_path}",
                  f"train it: python train.py --config {result.best_config_path}"]
    else:
        lines.append("no trial completed, so there is no best config")
    lines.append(f"tuner directory: {result.directory} ({result.new_trials} trials run now, "
                 f"{len(result.rows)} in total)")
    return "\n".join(lines)

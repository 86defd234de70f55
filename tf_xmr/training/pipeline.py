"""The one run pipeline behind ``train.py``: config -> data -> model -> fit -> select on validation -> score the test
split once -> export -> ``metrics.json`` last.

Every method goes through the same steps; only the fit stage differs:

- ``JointFit`` (``tf_xmr.training.joint``): every player's network in one Keras ``fit``, optionally distributed;
- ``IndependentFit`` (``tf_xmr.training.independent``): one network per modality, sequentially or in worker
  processes, against a fixed shared state (SDML), also extending a finished run with new modalities.

A fit stage provides ``prepare`` (build and check; returns the run directory, nothing written), ``begin`` (its own
first files), ``fit``, ``select`` (load the checkpoint chosen on validation; encoders, the feature set to score and
the validation scores), ``record`` (its part of metrics.json), ``export_encoders``, ``finish`` (its files before
metrics.json) and ``cleanup`` (after it). The order keeps bad input from leaving half-written output: the config and
the data are fully loaded and validated, and the model is built, before the run directory is created; results are
written to temporary names and renamed; ``metrics.json``, last, marks a finished run.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from tf_xmr import modeling, scoring
from tf_xmr import run_dir as layout
from tf_xmr.config import dump_yaml
from tf_xmr.errors import ConfigError, DataError
from tf_xmr.files import write_json

log = logging.getLogger("tf_xmr.training")


@dataclasses.dataclass
class RunResult:
    """What a finished run left: its directory, the metrics written to metrics.json and the export paths."""

    run_dir: str | None
    metrics: dict
    exports: dict


def fit_stage(config):
    """The fit stage the configured method asks for (its constructor checks the method-specific config rules)."""
    if modeling.is_independent(config.method):
        from tf_xmr.training.independent import IndependentFit

        return IndependentFit(config)
    from tf_xmr.training.joint import JointFit

    return JointFit(config)


def seed_everything(config) -> None:
    """The run seed for Python, NumPy and TensorFlow, and op determinism when ``train.deterministic`` is set."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()


def train(config, *, config_path: str | None = None) -> RunResult:
    """Train, select on validation, score the test split once, export.

    Args:
        config: resolved experiment config.
        config_path: the YAML file it came from (names the default run directory).

    Returns:
        ``RunResult``; on a non-chief worker of a ``train.distribution=multi_worker`` run, ``RunResult(None, {}, {})``
        (the chief evaluates and writes the run directory).
    """
    stage = fit_stage(config)
    seed_everything(config)

    # 1. Everything that can fail on bad input, before anything is written.
    config, feature_set = modeling.prepare_data(config)
    _check_pairing(config, feature_set)
    _check_splits(config, feature_set)
    spec = modeling.data_spec(config, feature_set)
    config, run_dir, resuming, auto_named = stage.prepare(config, config_path, feature_set, spec)

    # 2. The run directory, locked against a second writer for as long as this run writes it.
    if auto_named:
        run_dir = layout.claim_run_dir(run_dir)
        config = dataclasses.replace(config, run_dir=run_dir)
    os.makedirs(run_dir, exist_ok=True)
    if not stage.is_chief:
        # A non-chief worker of a multi-worker run writes only its own scratch folder.
        return _run(stage, config, feature_set, run_dir, resuming)
    with layout.RunDirLock(run_dir):
        _check_unchanged(stage, config, run_dir, resuming, auto_named)
        return _run(stage, config, feature_set, run_dir, resuming)


def _check_splits(config, feature_set) -> None:
    """Training selects its checkpoint on val and scores test once. In-memory sources carve val out of train
    (data.val_fraction); streamed records cannot, so they must hold all three."""
    missing = [name for name in ("train", "val", "test") if name not in feature_set.splits]
    if missing:
        raise DataError(f"the {config.data.source} data {config.data.root or ''} has no {' or '.join(missing)} split "
                        f"(it has {', '.join(feature_set.splits)}); training selects on val and scores test: write "
                        "the records with all three (python -m tf_xmr.data convert carves val from train)")


def _check_pairing(config, feature_set) -> None:
    """A jointly trained method pairs row i of every modality in one batch; unpaired data has no such rows."""
    if modeling.is_independent(config.method):
        return
    unpaired = [name for name, split in feature_set.splits.items() if not split.paired]
    if unpaired:
        raise ConfigError(f"method {config.method!r} trains on paired items, but the {'/'.join(unpaired)} split of "
                          f"{feature_set.name!r} is unpaired; use method sdml (one network per modality, no pairs)")


def _check_unchanged(stage, config, run_dir: str, resuming: bool, auto_named: bool) -> None:
    """What ``prepare`` decided about the run directory still holds now that this process owns it (another run may
    have written it between the check and the lock)."""
    if stage.extending:
        if layout.read_run_record(run_dir) != stage.stored_record:
            raise ConfigError(f"resume_from {run_dir} changed while this run was starting (another run extended "
                              "it); run the command again")
    elif not auto_named and layout.prepare_run_dir(run_dir, config) != resuming:
        raise ConfigError(f"run_dir {run_dir} changed while this run was starting (another run wrote it); "
                          "run the command again or choose another run_dir")


def _run(stage, config, feature_set, run_dir: str, resuming: bool) -> RunResult:
    if not resuming and not stage.extending:
        dump_yaml(config, os.path.join(run_dir, layout.CONFIG_FILE))
        write_json(os.path.join(run_dir, "data.json"), feature_set.summary())
    stage.begin(run_dir, resuming)

    # 3. Fit, then the checkpoint chosen on validation.
    stage.fit(config, run_dir, resuming)
    if not stage.is_chief:
        # The chief scores, exports and writes metrics.json; this worker's part ended with the last step.
        return RunResult(run_dir=None, metrics={}, exports={})
    encoders, scored_set, val = stage.select(config, run_dir)

    # 4. The test split, scored exactly once, here.
    test = scoring.score_test(encoders, scored_set, config, modeling.unseen_classes(config, feature_set))
    extra = {"zero_shot": test["zero_shot"]} if "zero_shot" in test else {}
    metrics = scoring.metrics_record(config, feature_set, val, test["test"], test["presets"], **stage.record(),
                                     **extra)

    # 5. Exports and the fit's own records; metrics.json last: its presence marks a finished run.
    exports = {}
    if config.export.enabled:
        from tf_xmr.export import export_run_encoders

        # On a resume, versions written by the interrupted attempt of this same unfinished run (metrics.json was
        # never written, so nothing served them) are dropped: the finished run has version 1, as an uninterrupted one.
        exports = export_run_encoders(run_dir, config, feature_set.dims, stage.export_encoders(), replace=resuming)
    if config.eval.projector:
        _write_projector(config, scored_set, run_dir, *test["embeddings"])
    stage.finish(config, run_dir)
    write_json(os.path.join(run_dir, layout.METRICS_FILE), metrics)
    stage.cleanup(config, run_dir)
    return RunResult(run_dir=run_dir, metrics=metrics, exports=exports)


def _write_projector(config, feature_set, run_dir: str, embeddings: dict, labels: dict) -> None:
    """The test embeddings of the chosen checkpoint for TensorBoard's Embedding Projector (``logs/``); unit vectors
    for a cosine run, so the projector's neighbours are the ranking's."""
    from tf_xmr.training.projector import write_projector

    test = feature_set.splits["test"]
    write_projector(os.path.join(run_dir, "logs"), embeddings, labels, class_names=feature_set.class_names,
                    keys={m: test.keys(m, "test") for m in embeddings},
                    max_items=config.eval.projector_max_items, seed=config.seed,
                    normalize=config.eval.distance == "cosine")

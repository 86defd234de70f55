"""The training orchestration in-process: model selection on validation only, resume, NaN guard, records."""

import json
import os

import numpy as np
import pytest

from tests.conftest import run_in_process, tiny_overrides
from tf_xmr import run_dir as layout
from tf_xmr import scoring
from tf_xmr.experiment import load_experiment
from tf_xmr.training import callbacks as cb
from tf_xmr.training.pipeline import train


def _config(run_dir, epochs=3, extra=()):
    return load_experiment("configs/acmr.yaml", tiny_overrides(run_dir, epochs=epochs, extra=extra))


def test_test_split_is_scored_once_after_selection_on_validation(tmp_path, monkeypatch):
    splits = []
    real = scoring.embed_config_split

    def spy(encoders, feature_set, split, config):
        splits.append(split)
        return real(encoders, feature_set, split, config)

    monkeypatch.setattr(scoring, "embed_config_split", spy)
    result = train(_config(str(tmp_path / "run"), epochs=3, extra=["train.jit_compile=false"]))
    # Every validation evaluation happens before the test split is touched; the test split is embedded once, with
    # the selected checkpoint, and every reported protocol (the primary one and the acmr_demo preset) scores it.
    assert splits == ["val"] * 3 + ["test"]
    assert set(result.metrics["presets"]) == {"acmr_demo"}
    assert result.metrics["val"]["best_epoch"] in (1, 2, 3)


def test_selected_checkpoint_is_the_best_validation_epoch(tmp_path):
    scores = iter([0.2, 0.5, 0.3, 0.4])

    class Tiny:
        stop_training = False

        def save_weights(self, path):
            with open(path, "w") as handle:
                handle.write("weights")

    callback = cb.RetrievalValidation(lambda: {"map_avg": next(scores)}, str(tmp_path), every=1, patience=2,
                                      min_delta=0.0, total_epochs=10)
    callback.set_model(Tiny())
    for epoch in range(4):
        logs = {}
        callback.on_epoch_end(epoch, logs)
        assert "val_map_avg" in logs
    assert callback.best["epoch"] == 2
    # Two evaluations without improvement (0.3, 0.4 < 0.5) trigger early stopping.
    assert callback.model.stop_training
    with open(tmp_path / "best.json") as handle:
        assert json.load(handle)["epoch"] == 2


@pytest.mark.slow
def test_interrupted_run_resumes_from_the_last_epoch(tmp_path, monkeypatch):
    run_dir = str(tmp_path / "run")
    config = _config(run_dir, epochs=4, extra=["train.jit_compile=false"])
    real_begin = cb.StopOnNonFinite.on_epoch_begin

    def crash_in_third_epoch(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real_begin(self, epoch, logs)

    monkeypatch.setattr(cb.StopOnNonFinite, "on_epoch_begin", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert not os.path.exists(os.path.join(run_dir, "metrics.json"))
    assert os.path.isdir(os.path.join(run_dir, "checkpoints", "backup"))
    monkeypatch.setattr(cb.StopOnNonFinite, "on_epoch_begin", real_begin)

    evaluated = []
    real_end = cb.RetrievalValidation.on_epoch_end

    def record(self, epoch, logs=None):
        evaluated.append(epoch)
        return real_end(self, epoch, logs)

    monkeypatch.setattr(cb.RetrievalValidation, "on_epoch_end", record)
    result = train(config)
    # BackupAndRestore: the second run trains only epochs 3 and 4.
    assert evaluated == [2, 3]
    assert os.path.exists(os.path.join(run_dir, "metrics.json"))
    assert result.metrics["val"]["best_epoch"] in (1, 2, 3, 4)


def test_resuming_with_a_different_config_is_refused(tmp_path):
    from tf_xmr.errors import ConfigError

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(ConfigError, match="different config"):
        layout.prepare_run_dir(str(run_dir), _config(str(run_dir)))
    (run_dir / "config.yaml").unlink()
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a tf_xmr run"):
        layout.prepare_run_dir(str(run_dir), _config(str(run_dir)))


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    """run_dir: null names the folder <config>-<timestamp>; a second run of the same config in the same second must
    not land in (and "resume") the first one's folder."""
    import datetime

    config_path = os.path.abspath("configs/acmr.yaml")
    frozen = datetime.datetime(2026, 12, 1, 12, 0, 0)
    monkeypatch.setattr(layout.datetime, "datetime", type("Frozen", (datetime.datetime,), {
        "now": classmethod(lambda cls, tz=None: frozen)}))
    monkeypatch.chdir(tmp_path)
    overrides = [*(o for o in tiny_overrides("unused", epochs=1) if not o.startswith("run_dir=")),
                 "export.enabled=false", "train.jit_compile=false"]
    dirs = [train(load_experiment(config_path, overrides), config_path=config_path).run_dir
            for _ in range(2)]
    assert dirs == [os.path.join("saved_models", "acmr-20261201-120000"),
                    os.path.join("saved_models", "acmr-20261201-120000-2")]
    for run_dir in dirs:
        with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as handle:
            assert json.load(handle)["resumed_from"] == []   # each trained from scratch
        assert load_experiment(os.path.join(run_dir, "config.yaml")).run_dir == run_dir


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    guard = cb.StopOnNonFinite()

    class Model:
        stop_training = False

    guard.set_model(Model())
    guard.on_epoch_begin(1)
    guard.on_train_batch_end(0, {"embedding_loss": 1.0})
    assert guard.failure is None
    guard.on_train_batch_end(4, {"embedding_loss": float("nan")})
    assert guard.model.stop_training and guard.failure == "embedding_loss became nan at epoch 2, batch 5"


def test_grl_dann_schedule():
    class Layer:
        def __init__(self):
            import tensorflow as tf

            self.strength = tf.Variable(0.0)

    layer = Layer()
    schedule = cb.GradientReversalSchedule([layer], schedule="dann", max_strength=2.0, total_epochs=2,
                                           steps_per_epoch=5)
    assert schedule.strength(0) == 0.0
    np.testing.assert_allclose(schedule.strength(5), 2.0 * (2.0 / (1.0 + np.exp(-5.0)) - 1.0))
    schedule.on_epoch_begin(1)
    schedule.on_train_batch_begin(4)
    np.testing.assert_allclose(float(layer.strength.numpy()), schedule.strength(9), rtol=1e-6)


@pytest.mark.slow
def test_convert_to_records_and_train_on_them(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "records")
    sets = tiny_overrides(str(tmp_path / "unused"))
    args = [a for s in sets for a in ("--set", s)]
    # `python -m tf_xmr.data convert`'s main() in this process (tests/test_readme.py runs the README's convert command
    # in a fresh process): a new interpreter would only add its TensorFlow import.
    result = run_in_process(capsys, monkeypatch, "data", "convert", "--config", "configs/acmr.yaml", "--out", out,
                            *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("wrote ") and out in result.stdout
    with open(os.path.join(out, "dataset.json")) as handle:
        sidecar = json.load(handle)
    assert sidecar["dims"] == {"image": 48, "text": 24}
    # Training streams the records through the same make_dataset() pipeline.
    run_dir = str(tmp_path / "run")
    config = load_experiment(
        "configs/acmr.yaml",
        tiny_overrides(run_dir, epochs=1, extra=["data.source=records", f"data.root={out}",
                                                "train.jit_compile=false", "export.enabled=false"]),
    )
    result = train(config)
    assert result.metrics["data"]["loader"] == "records"
    counts = result.metrics["data"]
    assert 0.0 <= result.metrics["test"]["map_avg"] <= 1.0 and counts


def test_joint_method_on_unpaired_data_says_use_sdml(tmp_path):
    """A jointly trained method needs row i of every modality to be one item; on unpaired records it stops before
    anything is written and names the method that trains without pairs."""
    from tf_xmr.data.feature_set import FeatureSet, Split
    from tf_xmr.data.records import write_records
    from tf_xmr.errors import ConfigError

    rng = np.random.default_rng(0)

    def split(n_image, n_text):
        return Split(features={"image": rng.random((n_image, 6)).astype(np.float32),
                               "text": rng.random((n_text, 4)).astype(np.float32)},
                     labels={"image": np.arange(n_image) % 2, "text": np.arange(n_text) % 2}, paired=False)

    records = write_records(FeatureSet(name="unpaired", modalities=("image", "text"), class_names=("a", "b"),
                                       splits={"train": split(40, 30), "test": split(12, 10)}),
                            str(tmp_path / "records"), num_shards=1)
    run_dir = tmp_path / "run"
    config = _config(str(run_dir), extra=["data.source=records", f"data.root={records}"])
    with pytest.raises(ConfigError, match=r"acmr.*unpaired.*use method sdml"):
        train(config)
    assert not run_dir.exists()
    # Paired records without a validation split: records cannot have one carved out of train, so training refuses.
    from tf_xmr.errors import DataError

    def paired(n):
        return Split(features={"image": rng.random((n, 6)).astype(np.float32),
                               "text": rng.random((n, 4)).astype(np.float32)},
                     labels={"image": np.arange(n) % 2, "text": np.arange(n) % 2}, paired=True)

    no_val = write_records(FeatureSet(name="no-val", modalities=("image", "text"), class_names=("a", "b"),
                                      splits={"train": paired(40), "test": paired(12)}),
                           str(tmp_path / "no-val"), num_shards=1)
    config = _config(str(run_dir), extra=["data.source=records", f"data.root={no_val}"])
    with pytest.raises(DataError, match=r"has no val split \(it has train, test\); training selects on val"):
        train(config)
    assert not run_dir.exists()

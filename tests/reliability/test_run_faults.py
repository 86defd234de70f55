"""Faults around a run directory (issue: reliability): one writer per run, resumed runs leave the files an
uninterrupted one does, numbers TensorFlow cannot take are refused at config time, divergence says so, and corrupt
checkpoints or exports are one line. Each case checks the error, and the exact files left behind."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, tiny_overrides
from tf_xmr import run_dir as layout
from tf_xmr.errors import ConfigError, DataError, ModelInputError, TrainingError
from tf_xmr.experiment import load_experiment
from tf_xmr.training.pipeline import train


def _config(run_dir, *extra, epochs=1):
    # No XLA: compiling the step would be most of each seconds-long run, and none of these faults depends on it (the
    # XLA path of a whole run is tests/training/test_train_cli.py's).
    return load_experiment("configs/acmr.yaml", tiny_overrides(str(run_dir), epochs=epochs,
                                                               extra=["train.jit_compile=false", *extra]))


def _listing(root) -> list[str]:
    """Every file under ``root``; TensorBoard event files by folder only (their names carry a timestamp, and each
    attempt of a resumed run appends its own file, which TensorBoard reads as one log)."""
    out = set()
    for folder, _, files in os.walk(root):
        for name in files:
            if name.startswith("events.out.tfevents."):
                name = "events.out.tfevents.*"
            out.add(os.path.relpath(os.path.join(folder, name), root))
    return sorted(out)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished tiny run, and the file listing an uninterrupted run leaves."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(_config(run_dir))
    return run_dir, _listing(run_dir)


# ---------------------------------------------------------------------------------------------------------------
# One writer per run directory


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with layout.RunDirLock(str(run_dir)):
        with pytest.raises(ConfigError, match=rf"being written by another tf_xmr run \(pid {os.getpid()}\)"):
            train(_config(run_dir))
        assert sorted(os.listdir(run_dir)) == [layout.WRITER_FILE]  # nothing of the refused run
    assert os.listdir(run_dir) == []  # the lock's pid file goes with the lock


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tf_xmr.run_dir import RunDirLock; "
         "RunDirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)", str(run_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"pid {holder.pid}"):
            layout.RunDirLock(str(run_dir)).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with layout.RunDirLock(str(run_dir)):  # the kernel dropped the dead process's lock
        pass


def test_export_cli_waits_its_turn(finished):
    from tf_xmr.export.__main__ import main

    run_dir, _ = finished
    with layout.RunDirLock(str(run_dir)):
        with pytest.raises(ConfigError, match="being written by another tf_xmr run"):
            main(["--run-dir", str(run_dir)])


# ---------------------------------------------------------------------------------------------------------------
# Kills leave nothing that a finished run would not have


def test_resumed_run_exports_version_1_and_leaves_the_files_of_an_uninterrupted_run(finished, tmp_path):
    _, expected = finished
    run_dir = tmp_path / "run"
    train(_config(run_dir))
    # A kill after the exports and before metrics.json: the export folders hold version 1, an export killed midway
    # left its temporary folder, and metrics.json is missing.
    os.remove(run_dir / "metrics.json")
    (run_dir / "export" / "text_encoder" / ".tmp-2-999999999").mkdir()
    train(_config(run_dir))
    assert _listing(run_dir) == expected


def test_finished_run_with_leftover_backups_is_refused_and_cleaned(finished, tmp_path):
    import shutil

    source, expected = finished
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    (run_dir / "checkpoints" / "backup" / "epoch-000001").mkdir(parents=True)  # a kill right after metrics.json
    with pytest.raises(ConfigError, match="already holds a finished run"):
        train(_config(run_dir))
    assert _listing(run_dir) == expected


# ---------------------------------------------------------------------------------------------------------------
# Config values TensorFlow cannot take: refused at load time, before anything is written


@pytest.mark.parametrize("override, message", [
    ("seed=4294967296", "config key 'seed' from --set must be an int >= 0 and <= 4294967295"),
    ("train.epochs=9223372036854775808", "config key 'train.epochs' from --set must fit in a 64-bit integer"),
    ("train.shuffle_buffer=9223372036854775808", "config key 'train.shuffle_buffer' from --set must fit"),
    ("train.optimizers.embedding.learning_rate=.inf", "must be a finite number, got inf"),
    ("train.optimizers.embedding.learning_rate=.nan", "must be a finite number, got nan"),
])
def test_numbers_tensorflow_cannot_take_are_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _config(tmp_path / "run", override)
    assert not (tmp_path / "run").exists()


def test_drop_remainder_with_a_batch_larger_than_the_training_split(tmp_path):
    config = _config(tmp_path / "run", "train.drop_remainder=true", "train.batch_size=100000")
    with pytest.raises(DataError, match=r"fewer than one batch of train.batch_size=100000"):
        train(config)
    assert not (tmp_path / "run").exists()


def test_modality_names_must_be_usable_as_folder_names(tmp_path):
    config = _config(tmp_path / "run", "data.synthetic.dims={im/age: 48, text: 24}",
                     "model.hidden_units={im/age: [32], text: [16]}")
    with pytest.raises(DataError, match=r"modality name 'im/age'"):
        train(config)
    assert not (tmp_path / "run").exists()


def test_divergence_reports_the_guard_not_bad_data(tmp_path):
    with pytest.raises(TrainingError, match=r"training stopped: \w+ became (nan|inf) at epoch 1, batch \d+; "
                                            r"lower the learning rates"):
        train(_config(tmp_path / "run", "train.optimizers.embedding.learning_rate=3.0e38"))
    # No validation, no best checkpoint, no metrics: only what the run had written when it stopped.
    assert "metrics.json" not in os.listdir(tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints" / "best.weights.h5").exists()


# ---------------------------------------------------------------------------------------------------------------
# Corrupt checkpoints and exports: one line naming the file


def _copy_without_exports(source, target):
    import shutil

    shutil.copytree(source, target)
    shutil.rmtree(target / "export")


def test_truncated_best_checkpoint(finished, tmp_path):
    from tf_xmr.evaluation import evaluate_run

    run_dir = tmp_path / "run"
    _copy_without_exports(finished[0], run_dir)
    best = run_dir / "checkpoints" / "best.weights.h5"
    os.truncate(best, os.path.getsize(best) // 2)
    with pytest.raises(ModelInputError, match=rf"checkpoint {best} is not a readable weights file"):
        evaluate_run(str(run_dir))


@pytest.mark.parametrize("damage", ["corrupt saved_model.pb", "no variables folder"])
def test_damaged_export(finished, tmp_path, damage):
    import shutil

    from tf_xmr.evaluation import evaluate_run

    run_dir = tmp_path / "run"
    shutil.copytree(finished[0], run_dir)
    version = run_dir / "export" / "image_encoder" / "1"
    if damage == "corrupt saved_model.pb":
        (version / "saved_model.pb").write_bytes(b"not a protobuf")
    else:
        shutil.rmtree(version / "variables")
    with pytest.raises(ModelInputError, match=rf"{version} is not a readable tf_xmr encoder SavedModel"):
        evaluate_run(str(run_dir))


def test_corrupt_config_of_an_interrupted_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_bytes(np.random.default_rng(0).bytes(64))
    with pytest.raises(ConfigError, match=r"config.yaml of the interrupted run"):
        train(_config(run_dir))


@pytest.mark.parametrize("path, message", [("curves.xyz", "unknown image format .xyz"),
                                           ("curves", "unknown image format (no suffix)")])
def test_plot_path_checked_before_any_work(path, message):
    from tf_xmr.metrics.plots import check_plot_path

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_plot_path(path)


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KiB tmpfs; skipped where this process may not mount one (it needs root and a kernel that allows it)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip() or result.returncode}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_disk_full_at_the_best_checkpoint_is_one_line_and_resumable(small_disk):
    run_dir = small_disk / "run"
    # A model whose checkpoint (about 1 MiB) cannot fit; the free-space check before training is turned off
    # (disk_margin 0) so that the write itself meets the full disk.
    config = _config(run_dir, "train.disk_margin=0", "model.hidden_units={image: [512], text: [256]}")
    from tf_xmr.training.callbacks import CheckpointWriteError

    with pytest.raises(CheckpointWriteError, match=r"cannot write the checkpoint .*best.weights.h5: about [\d.]+ MiB "
                                                   r"needed, [\d.]+ MiB free; free some space and rerun"):
        train(config)
    # No partial file: what an interrupted run has, which the same command resumes once there is space.
    assert _listing(run_dir) == ["config.yaml", "data.json"]

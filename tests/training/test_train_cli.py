"""The user's path through the command line: train -> evaluate -> export, and every bad input on the way.

One tiny training run (module fixture, ``python train.py`` in a fresh process) is shared by the tests that only read
its outputs. Each command also runs once more in a fresh process (``evaluate.py``,
``python -m tf_xmr.export``, and ``train.py`` refusing a config typo); the other calls run the command's own
``main()`` under ``tf_xmr.cli.run`` in this process (``run_in_process``): the same argument parsing, error contract (one
``error:`` line, exit 2) and printing, without the seconds a new interpreter spends importing TensorFlow.
"""

import json
import os

import numpy as np
import pytest

from tests.conftest import run_cli, run_in_process, tiny_overrides


def _sets(overrides):
    return [arg for item in overrides for arg in ("--set", item)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("run") / "acmr")
    # Without XLA: compiling the step took about two thirds of this seconds-long run. The XLA-compiled steps are
    # checked in tests/methods/test_acmr.py and test_x_gacmn.py, and the README's commands run the configs as they
    # are (tests/test_readme.py).
    result = run_cli("train.py", "--config", "configs/acmr.yaml",
                     *_sets(tiny_overrides(run_dir, epochs=3, extra=["train.jit_compile=false"])))
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


@pytest.mark.slow
@pytest.mark.e2e
def test_train_writes_the_run_directory(finished_run):
    run_dir, result = finished_run
    for name in ("config.yaml", "data.json", "metrics.json", "checkpoints/best.weights.h5", "checkpoints/best.json"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    # The backup used for resuming is removed once the run is finished.
    assert not os.path.exists(os.path.join(run_dir, "checkpoints", "backup"))
    assert any(f.startswith("events.out.tfevents") for _, _, files in os.walk(os.path.join(run_dir, "logs"))
               for f in files)
    for modality in ("image", "text"):
        assert os.path.exists(os.path.join(run_dir, "export", f"{modality}_encoder", "1", "saved_model.pb"))
    assert "run directory:" in result.stdout and "test" in result.stdout


@pytest.mark.slow
@pytest.mark.e2e
def test_metrics_json_contract(finished_run):
    run_dir, _ = finished_run
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    for split in ("val", "test"):
        for key in ("map_i2t", "map_t2i", "map_avg"):
            assert 0.0 <= metrics[split][key] <= 1.0
        assert metrics[split]["map_avg"] == pytest.approx((metrics[split]["map_i2t"] + metrics[split]["map_t2i"]) / 2)
    assert metrics["protocol"]["distance"] == "cosine" and metrics["protocol"]["k"] is None
    assert 1 <= metrics["val"]["best_epoch"] <= 3
    demo = metrics["presets"]["acmr_demo"]
    assert demo["protocol"]["distance"] == "euclidean" and demo["protocol"]["k"] == 50
    # The validation score stored with the chosen checkpoint is the best one seen during training.
    with open(os.path.join(run_dir, "checkpoints", "best.json")) as handle:
        best = json.load(handle)
    assert best["epoch"] == metrics["val"]["best_epoch"]


@pytest.mark.slow
@pytest.mark.e2e
def test_evaluate_rescoring_matches_training(finished_run, tmp_path, capsys, monkeypatch):
    run_dir, _ = finished_run
    result = run_cli("evaluate.py", "--run-dir", run_dir, "--json")  # the fresh-process run of evaluate.py
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads(result.stdout)
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    # Exported SavedModels re-scored from scratch give the numbers training wrote.
    for key in ("map_i2t", "map_t2i", "map_avg"):
        assert scores["test"][key] == pytest.approx(metrics["test"][key], abs=1e-5)
    assert "export" in scores["model"]

    plot = tmp_path / "curves.png"
    result = run_in_process(capsys, monkeypatch, "evaluate.py", "--run-dir", run_dir, "--set", "eval.k=50", "--plot",
                            str(plot))
    assert result.returncode == 0, result.stderr[-2000:]
    assert plot.stat().st_size > 1000 and "i2t" in result.stdout and "k=50" in result.stdout

    result = run_in_process(capsys, monkeypatch, "evaluate.py", "--run-dir", run_dir, "--preset", "acmr_demo", "--json",
                            "--source", "checkpoint")
    assert result.returncode == 0, result.stderr[-2000:]
    demo = json.loads(result.stdout)["test"]
    assert demo["map_avg"] == pytest.approx(metrics["presets"]["acmr_demo"]["test"]["map_avg"], abs=1e-5)
    # Without --source: the exports are unit vectors (a cosine run), which the euclidean preset would rank otherwise
    # than training did, so the checkpoint is scored and the model line says so.
    result = run_in_process(capsys, monkeypatch, "evaluate.py", "--run-dir", run_dir, "--preset", "acmr_demo", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    auto = json.loads(result.stdout)
    assert auto["model"].startswith("checkpoint") and auto["test"]["map_avg"] == demo["map_avg"]


@pytest.mark.slow
@pytest.mark.e2e
def test_export_cli_adds_a_version(finished_run):
    run_dir, _ = finished_run
    result = run_cli("-m", "tf_xmr.export", "--run-dir", run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    versions = sorted(os.listdir(os.path.join(run_dir, "export", "image_encoder")))
    assert versions == ["1", "2"]


@pytest.mark.slow
@pytest.mark.e2e
def test_finished_run_directory_is_not_overwritten(finished_run, capsys, monkeypatch):
    run_dir, _ = finished_run
    before = os.path.getmtime(os.path.join(run_dir, "metrics.json"))
    result = run_in_process(capsys, monkeypatch, "train.py", "--config", "configs/acmr.yaml",
                            *_sets(tiny_overrides(run_dir)))
    assert result.returncode == 2
    assert "already holds a finished run" in result.stderr
    assert os.path.getmtime(os.path.join(run_dir, "metrics.json")) == before


def _assert_clean_failure(result, run_dir, *needles):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in error_lines[0], error_lines[0]
    assert not os.path.exists(run_dir), "a failed run must not leave a run directory"


@pytest.mark.slow
@pytest.mark.e2e
def test_config_typo_is_a_one_line_error(tmp_path):
    # The bad-input case that runs train.py in a fresh process: TensorFlow's start-up output must not add a line
    # or a traceback to the one error line. The other bad inputs below run train.py's main() in this process.
    run_dir = str(tmp_path / "run")
    result = run_cli("train.py", "--config", "configs/acmr.yaml",
                     *_sets(tiny_overrides(run_dir, extra=["train.epcohs=3"])))
    _assert_clean_failure(result, run_dir, "train.epcohs", "epochs")


def test_bad_config_value_and_missing_file(tmp_path, capsys, monkeypatch):
    run_dir = str(tmp_path / "run")
    result = run_in_process(capsys, monkeypatch, "train.py", "--config", "configs/acmr.yaml",
                            *_sets(tiny_overrides(run_dir, extra=["model.k=0"])))
    _assert_clean_failure(result, run_dir, "model.k", ">= 1")
    result = run_in_process(capsys, monkeypatch, "train.py", "--config", "configs/nope.yaml")
    _assert_clean_failure(result, run_dir, "configs/nope.yaml")


def _npz_config(tmp_path, image, text, labels, test_labels=None, name="bad.npz"):
    path = tmp_path / name
    test_labels = labels if test_labels is None else test_labels
    np.savez(path, image=image, text=text, labels=labels, test_labels=test_labels)
    return [
        "data.source=arrays",
        f"data.arrays.paths={{train: {path}, test: {path}}}",
        "data.arrays.keys={train: {image: image, text: text, labels: labels}, "
        "test: {image: image, text: text, labels: test_labels}}",
    ], str(path)


@pytest.mark.parametrize("problem", ["nan", "label_range", "label_count", "missing_key"])
def test_bad_data_is_a_one_line_error(tmp_path, capsys, monkeypatch, problem):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(60, 48)).astype(np.float32)
    text = rng.normal(size=(60, 24)).astype(np.float32)
    labels = np.arange(60) % 4
    needles = []
    if problem == "nan":
        image[7, 3] = np.nan
        needles = ["NaN", "image"]
    elif problem == "label_range":
        labels = labels.copy()
        labels[5] = 9
        needles = ["9"]
    elif problem == "label_count":
        labels = labels[:50]
        needles = ["50", "60"]
    data_sets, path = _npz_config(tmp_path, image, text, labels)
    if problem == "missing_key":
        data_sets[-1] = data_sets[-1].replace("text: text, labels: labels}", "text: txt, labels: labels}")
        needles = ["txt"]
    run_dir = str(tmp_path / "run")
    result = run_in_process(capsys, monkeypatch, "train.py", "--config", "configs/acmr.yaml",
                            *_sets(tiny_overrides(run_dir, extra=data_sets)))
    _assert_clean_failure(result, run_dir, *needles)


def test_missing_wikipedia_folder_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    run_dir = str(tmp_path / "run")
    result = run_in_process(capsys, monkeypatch, "train.py", "--config", "configs/wikipedia/acmr.yaml",
                            "--set", f"run_dir={run_dir}", "--set", f"data.root={tmp_path / 'no_such_dir'}")
    _assert_clean_failure(result, run_dir, "no_such_dir")


@pytest.mark.slow
@pytest.mark.e2e
def test_export_dimension_mismatch_is_a_one_line_error(finished_run, capsys, monkeypatch):
    run_dir, _ = finished_run
    result = run_in_process(capsys, monkeypatch, "evaluate.py", "--run-dir", run_dir, "--set",
                            "data.synthetic.dims={image: 50, text: 24}")
    assert result.returncode == 2
    assert "48" in result.stderr and "50" in result.stderr and "Traceback" not in result.stderr


def _scalar_tags(log_dir):
    import tensorflow as tf

    tags = set()
    for path in tf.io.gfile.glob(os.path.join(log_dir, "*", "events.out.tfevents*")):
        sub = os.path.basename(os.path.dirname(path))
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.add(f"{sub}/{value.tag}")
    return tags


@pytest.mark.slow
@pytest.mark.e2e
def test_tensorboard_logs_every_loss_term(finished_run):
    run_dir, _ = finished_run
    tags = _scalar_tags(os.path.join(run_dir, "logs"))
    expected = {f"train/embedding_{t}" for t in ("loss", "imi", "imd", "reg", "adv", "modality_accuracy")}
    expected |= {"train/discriminator_loss", "train/discriminator_accuracy",
                 "train/learning_rate_embedding", "train/learning_rate_discriminator",
                 "train/grl_strength", "validation/map_i2t", "validation/map_t2i",
                 "validation/map_avg"}
    assert expected <= tags, sorted(expected - tags)

"""Where independent modality networks train: the worker plan (a pure function) and auto in a real run."""

import dataclasses
import logging

import pytest

from tf_xmr.errors import ConfigError
from tf_xmr.experiment import load_experiment
from tf_xmr.training import workers
from tf_xmr.training.workers import MIN_THREADS_PER_WORKER, plan_workers


def _plan(cores, gpus, networks, mode="auto", max_workers=None):
    return plan_workers(cores=cores, gpus=gpus, networks=networks, mode=mode, max_workers=max_workers)


@pytest.mark.parametrize(
    "cores, gpus, networks, max_workers, workers_, threads",
    [
        (1, 0, 5, None, 0, 0),
        (2, 0, 2, None, 0, 0),  # this machine: parallel was measured slower, so sequential
        (2, 0, 5, None, 0, 0),
        (2 * MIN_THREADS_PER_WORKER - 1, 0, 5, None, 0, 0),  # one worker short of 2 x the thread floor
        (2 * MIN_THREADS_PER_WORKER, 0, 5, None, 2, MIN_THREADS_PER_WORKER),
        (64, 0, 5, None, 5, 12),  # never more workers than networks; the cores are split between them
        (64, 0, 5, 3, 3, 21),  # max_workers caps the plan
        (64, 0, 5, 1, 0, 0),  # a cap of one worker is no parallelism: sequential in this process
        (2, 1, 5, None, 0, 0),  # one GPU would be shared by every worker
        (2, 2, 5, None, 2, 1),  # one worker per GPU, even on few cores
        (16, 4, 3, None, 3, 5),
        (16, 4, 5, 2, 2, 8),
        (16, 4, 1, None, 0, 0),  # one network: nothing to run in parallel
    ],
)
def test_auto_plan(cores, gpus, networks, max_workers, workers_, threads):
    plan = _plan(cores, gpus, networks, max_workers=max_workers)
    assert (plan.workers, plan.threads) == (workers_, threads)
    assert plan.parallel == (workers_ > 0)
    assert plan.reason.startswith("auto: ") or networks <= 1
    if plan.parallel and gpus >= 2:
        assert plan.gpus == tuple(range(workers_))  # each worker its own GPU
    else:
        assert plan.gpus == ()


def test_auto_on_few_cores_says_why_with_the_measurement():
    plan = _plan(2, 0, 5)
    assert "2 core(s)" in plan.reason and workers.MEASURED in plan.reason
    line = plan.describe(5)
    assert line.startswith("training 5 modality network(s) one after the other in this process: auto:")
    assert "\n" not in line


def test_true_and_false_force_the_mode_whatever_the_machine():
    forced = _plan(2, 0, 5, mode=True)
    assert (forced.workers, forced.threads, forced.gpus) == (5, 1, ())
    assert _plan(2, 0, 5, mode=True, max_workers=2).workers == 2
    assert _plan(2, 3, 5, mode=True).gpus == (0, 1, 2, 0, 1)  # GPUs shared out in turn
    assert not _plan(64, 8, 5, mode=False).parallel
    assert not _plan(64, 0, 1, mode=True).parallel  # a single network never needs a worker
    line = forced.describe(5)
    assert "5 worker process(es), 1 TensorFlow thread(s) each: train.parallel_modalities is true" in line


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="'sometimes'"):
        _plan(2, 0, 5, mode="sometimes")


def test_config_accepts_auto_true_false_and_nothing_else():
    assert load_experiment("configs/sdml.yaml", ["train.parallel_modalities=auto"]).train.parallel_modalities == "auto"
    assert load_experiment("configs/sdml.yaml", ["train.parallel_modalities=true"]).train.parallel_modalities is True
    for bad in ("yes", "1", "Auto"):
        with pytest.raises(ConfigError, match="train.parallel_modalities"):
            load_experiment("configs/sdml.yaml", [f"train.parallel_modalities={bad}"])


def test_default_is_auto():
    from tf_xmr.config.schema import TrainConfig

    assert {f.name: f.default for f in dataclasses.fields(TrainConfig)}["parallel_modalities"] == "auto"


def test_auto_on_two_cores_trains_in_this_process(tmp_path, monkeypatch, caplog):
    # The machine's cores and GPUs are fixed to this CI machine's (2, none) so the test means the same anywhere.
    from tests.methods.test_sdml import tiny
    from tf_xmr.training.pipeline import train

    monkeypatch.setattr(workers, "available_cores", lambda: 2)
    monkeypatch.setattr(workers, "visible_gpus", lambda: 0)

    def no_pool(*args, **kwargs):
        raise AssertionError("auto on 2 cores must not start worker processes")

    monkeypatch.setattr(workers, "train_in_workers", no_pool)
    config = load_experiment("configs/sdml.yaml", tiny(str(tmp_path / "run"), "{image: 12, text: 10}") +
                             ["export.enabled=false", "train.parallel_modalities=auto"])
    with caplog.at_level(logging.INFO, logger="tf_xmr.training"):
        result = train(config)
    training = result.metrics["training"]
    assert (training["mode"], training["workers"]) == ("sequential", 0)
    lines = [r.getMessage() for r in caplog.records if "one after the other" in r.getMessage()]
    assert len(lines) == 1 and "auto: 2 core(s)" in lines[0]

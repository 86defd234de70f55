"""eval.epoch_trace: val and test mAP after every epoch for the results report, never used for selection."""

import json
import os

import pytest

from tests.conftest import tiny_overrides
from tf_xmr.experiment import load_experiment
from tf_xmr.training.pipeline import train
from tf_xmr.training.trace import TRACE_FILE, EpochTrace, best_epochs, read_trace

SDML_TINY = [
    "train.verbose=0", "train.batch_size=32", "data.synthetic.dims={image: 48, text: 24}",
    "data.synthetic.num_train=240", "data.synthetic.num_test=90", "data.synthetic.num_classes=4",
    "model.encoder_units=[16, 16]", "model.decoder_units=[16, 16]", "model.common_dim=8",
]


def _acmr(run_dir, trace: bool):
    extra = ["eval.epoch_trace=true"] if trace else []
    return train(load_experiment("configs/acmr.yaml", tiny_overrides(run_dir, epochs=4, extra=extra)))


def test_trace_changes_nothing_and_reproduces_the_honest_number(tmp_path):
    plain = _acmr(str(tmp_path / "plain"), trace=False)
    traced = _acmr(str(tmp_path / "traced"), trace=True)
    # The same seed with and without the trace: the same chosen epoch and the same numbers (the trace only reads).
    assert traced.metrics["val"] == plain.metrics["val"]
    assert traced.metrics["test"] == plain.metrics["test"]
    assert not os.path.exists(os.path.join(plain.run_dir, TRACE_FILE))

    trace = read_trace(traced.run_dir)
    assert [e["epoch"] for e in trace["epochs"]] == [1, 2, 3, 4]
    assert "never reads" in trace["note"] and trace["protocol"] == traced.metrics["protocol"]
    chosen = traced.metrics["val"]["best_epoch"]
    at_chosen = next(e for e in trace["epochs"] if e["epoch"] == chosen)
    # The chosen checkpoint is that epoch's weights: the trace scores exactly the honest test number there, and the
    # validation score that selected it.
    assert at_chosen["test"]["map_avg"] == pytest.approx(traced.metrics["test"]["map_avg"], abs=1e-9)
    assert at_chosen["val"]["map_avg"] == pytest.approx(traced.metrics["val"]["map_avg"], abs=1e-9)
    best = best_epochs(trace)
    assert best["val"]["epoch"] == chosen
    assert best["test"]["test"]["map_avg"] == max(e["test"]["map_avg"] for e in trace["epochs"])
    # The trace stays out of TensorBoard and the epoch logs: no test_ scalars anywhere in the logs' tags.
    with open(os.path.join(traced.run_dir, "checkpoints", "best.json"), encoding="utf-8") as handle:
        assert "test" not in json.dumps(json.load(handle))


def test_sdml_trace_pairs_the_networks_epochs_and_removes_its_stashes(tmp_path):
    run_dir = str(tmp_path / "sdml")
    # One epoch: both networks' chosen checkpoint is epoch 1, so the lockstep trace must reproduce the honest number.
    result = train(load_experiment("configs/sdml.yaml", [f"run_dir={run_dir}", "train.epochs=1",
                                                         "eval.epoch_trace=true", *SDML_TINY]))
    trace = read_trace(run_dir)
    assert [e["epoch"] for e in trace["epochs"]] == [1]
    assert trace["epochs"][0]["test"]["map_avg"] == pytest.approx(result.metrics["test"]["map_avg"], abs=1e-6)
    assert trace["epochs"][0]["val"]["map_avg"] == pytest.approx(result.metrics["val"]["map_avg"], abs=1e-6)
    for m in ("image", "text"):
        assert not os.path.exists(os.path.join(run_dir, "modalities", m, "trace"))
    with open(os.path.join(run_dir, "independent.json"), encoding="utf-8") as handle:
        assert "trace/" not in handle.read()


def test_sdml_trace_covers_every_epoch_and_changes_nothing(tmp_path):
    run_dir = str(tmp_path / "sdml")
    traced = train(load_experiment("configs/sdml.yaml", [f"run_dir={run_dir}", "train.epochs=3",
                                                         "eval.epoch_trace=true", *SDML_TINY]))
    plain = train(load_experiment("configs/sdml.yaml", [f"run_dir={tmp_path / 'plain'}", "train.epochs=3",
                                                        *SDML_TINY]))
    # Embedding val and test after every epoch leaves each network's training and selection as they were.
    assert traced.metrics["val"] == plain.metrics["val"] and traced.metrics["test"] == plain.metrics["test"]
    trace = read_trace(run_dir)
    assert [e["epoch"] for e in trace["epochs"]] == [1, 2, 3]
    assert set(trace["epochs"][0]["test"]) == {"map_i2t", "map_t2i", "map_avg"}


def test_a_resumed_trace_drops_the_epochs_the_interrupted_attempt_scored_past_its_backup(tmp_path):
    path = str(tmp_path / TRACE_FILE)
    first = EpochTrace(lambda split: {"map_avg": 0.1}, path, {"distance": "cosine"})
    for epoch in range(3):
        first.on_epoch_end(epoch, {})
    # Killed after epoch 3 was traced but before its backup: the resumed run starts again at epoch 3 (index 2).
    resumed = EpochTrace(lambda split: {"map_avg": 0.5}, path, {"distance": "cosine"}, first_epoch=2)
    resumed.on_epoch_end(2, {"val_map_avg": 0.7, "val_map_i2t": 0.7})
    epochs = read_trace(str(tmp_path))["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert [e["test"]["map_avg"] for e in epochs] == [0.1, 0.1, 0.5]
    # Validation's own score from the epoch logs is taken as it is (no second embedding of val).
    assert epochs[2]["val"] == {"map_avg": 0.7, "map_i2t": 0.7}


def test_best_epochs_break_ties_towards_the_earlier_epoch():
    trace = {"epochs": [{"epoch": e, "val": {"map_avg": v}, "test": {"map_avg": t}}
                        for e, v, t in ((1, 0.2, 0.3), (2, 0.4, 0.5), (3, 0.4, 0.5), (4, 0.1, 0.2))]}
    best = best_epochs(trace)
    assert best["test"]["epoch"] == 2 and best["val"]["epoch"] == 2

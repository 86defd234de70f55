"""Kill-and-resume: an interrupted run, rerun with the same command, continues from its last epoch backup and (with
``train.deterministic: true``) ends with exactly the metrics and the best-checkpoint arrays of an uninterrupted run;
a run directory that cannot be written, or a disk without room for the run, is refused before anything is written.

This is the resume part of the method contract (tests/methods/test_contract.py): it runs for every registered method.

Equality is exact (``==`` on the floats of metrics.json, ``array_equal`` on every array of the best checkpoints), not
a tolerance: with op determinism both runs execute the same ops on the same values in the same order, so any
difference at all means some state (optimiser slots, RNG, shuffle order, schedule position, validation state) was not
restored. The arrays cover what the scores cannot see (the discriminators, critics and other players that do not
embed).

Cost: every run is tiny (120 items, 6-24-d features, 2 epochs of 4 steps, no XLA, no export). An uninterrupted
reference run per method doubles as the interrupted one: a copy of its run directory taken mid-epoch 2 is exactly what
a kill at that moment leaves on disk (the in-memory progress of epoch 2 is lost either way), so each method costs two
in-process trainings. ACMR's case is the real thing instead: SIGKILL of a ``train.py`` process mid-epoch and
the same command again. The interruption points are set by ``tests/faults.py``, which patches a callback into
``keras.Model.fit`` (in this process, or in the subprocess it runs ``train.py`` in); production code has no fault
hook.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from tests import faults
from tests.conftest import ROOT
from tf_xmr.experiment import load_experiment
from tf_xmr.methods import registered_methods
from tf_xmr.training import callbacks as cb
from tf_xmr.training.pipeline import train

EPOCHS = 2
COMMON = [
    f"train.epochs={EPOCHS}", "train.verbose=0", "train.batch_size=32", "train.jit_compile=false",
    "train.deterministic=true", "eval.extra_presets=[]", "export.enabled=false",
    "data.synthetic.num_train=120", "data.synthetic.num_test=40", "data.synthetic.num_classes=4",
]
# 120 items, 10% validation -> 108 training pairs -> 4 steps of 32 per epoch (the last one partial): the k-step
# schedules below (ACMR k=3, X-GACMN generator_steps=3) are mid-phase at the epoch boundary.
STEPS_PER_EPOCH = 4
# X-GACMN, JFSE and DA-GAN peak on validation after epoch 1 at these sizes, so their scores would come from the
# checkpoint written before the interruption: they are validated only after the last epoch (the backup's validation
# state is exercised by ACMR, SDML and the kill-between-validation-and-backup test).
LAST_EPOCH_ONLY = "train.eval_every=2"
METHODS = {
    "acmr": ["data.synthetic.dims={image: 24, text: 12}", "model.hidden_units={image: [16], text: [16]}",
             "model.common_dim=8", "model.k=3", "model.grl_schedule=dann",
             # A learning rate small enough that validation still improves in epoch 2 (after the interruption), so
             # the compared scores come from a checkpoint the resumed run trained itself.
             "train.optimizers.embedding.learning_rate=1e-4"],
    "x_gacmn": ["data.synthetic.dims={image: 24, text: 12}", "model.encoder_units=[16]", "model.decoder_units=[16]",
                "model.common_dim=8", "model.synthetic_discriminator_hidden=8", "model.common_discriminator_hidden=8",
                "model.generator_steps=3", LAST_EPOCH_ONLY],
    "jfse": ["data.synthetic.dims={image: 24, text: 12}", "data.synthetic.class_embedding_dim=6", "model.noise_dim=4",
             "model.generator_hidden=16", "model.critic_hidden=16", "model.regressor_hidden=[16]",
             "model.discriminator_hidden=[8]", "model.n_critic=2", "model.grl_schedule=dann", LAST_EPOCH_ONLY],
    "da_gan": ["data.synthetic.dims={image: 16, text: 6}", "model.feature_dim=16", "model.common_dim=8",
               "model.encoder_hidden=8", "model.decoder_hidden=8", "model.inter_discriminator_hidden=4",
               "model.intra_positions=4", "model.inter_positions=2", "model.group_size=2",
               # Inter-attention holds no state and draws nothing (unlike the groups and prototypes of the intra
               # side, which stay on); off, it saves a fifth of DA-GAN's tracing time.
               "model.use_inter_attention=false", LAST_EPOCH_ONLY],
    "sdml": ["data.synthetic.dims={image: 24, text: 12}", "model.encoder_units=[16]", "model.decoder_units=[16]",
             "model.common_dim=8"],
}
# A registered method without an entry above runs at its config's size (slower, still correct), validated after the
# last epoch only so that its compared checkpoint comes from the resumed epoch.
DEFAULT_METHOD_OVERRIDES = [LAST_EPOCH_ONLY]
# Where the interruption happens: mid-epoch 2 (after the epoch-1 backup, two steps into epoch 2). SDML
# is interrupted in its second network, so the first one is finished and must be kept as it is.
INTERRUPT = {"epoch": 2, "step": 2}
SDML_INTERRUPTED_NETWORK = "text"
# The scores an interrupted-and-resumed run must reproduce exactly.
COMPARED = ("val", "test", "presets", "protocol")


def overrides(method, run_dir):
    return [f"run_dir={run_dir}", *COMMON, *METHODS.get(method, DEFAULT_METHOD_OVERRIDES)]


def config(method, run_dir):
    return load_experiment(os.path.join(ROOT, "configs", f"{method}.yaml"), overrides(method, run_dir))


def cli_command(method, run_dir):
    sets = [arg for item in overrides(method, run_dir) for arg in ("--set", item)]
    return [sys.executable, "train.py", "--config", f"configs/{method}.yaml", *sets]


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as handle:
        return json.load(handle)


def backups(checkpoint_dir):
    folder = os.path.join(checkpoint_dir, "backup")
    return sorted(n for n in os.listdir(folder) if n.startswith("epoch-")) if os.path.isdir(folder) else []


_references = {}


def reference_with_snapshot(method, tmp_root):
    """An uninterrupted run of ``method`` (its metrics.json) and a copy of its run directory taken at the start of
    step ``INTERRUPT["step"]`` of epoch ``INTERRUPT["epoch"]``: what a kill at that moment leaves on disk. Cached
    per method (the ACMR reference serves the SIGKILL test too)."""
    if method in _references:
        return _references[method]
    run_dir = os.path.join(tmp_root, f"{method}-reference")
    snapshot = os.path.join(tmp_root, f"{method}-snapshot")
    network = SDML_INTERRUPTED_NETWORK if method == "sdml" else None

    def take_snapshot():
        if not os.path.exists(snapshot):
            shutil.copytree(run_dir, snapshot)

    with faults.at_step(INTERRUPT["epoch"], INTERRUPT["step"], take_snapshot, network=network):
        metrics = train(config(method, run_dir)).metrics
    assert os.path.isdir(snapshot), "the interruption point was never reached"
    _references[method] = (metrics, snapshot)
    return metrics, snapshot


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    yield str(tmp_path_factory.mktemp("resume"))
    _references.clear()


def assert_same_scores(resumed, reference):
    # The selected checkpoint must come from an epoch trained AFTER the interruption (the last one), or equal scores
    # would only say that the pre-interruption checkpoint was kept. The tiny configs are set so that it does.
    best = reference["val"]["best_epoch"]
    assert (best[SDML_INTERRUPTED_NETWORK] if isinstance(best, dict) else best) == EPOCHS, best
    for key in COMPARED:
        assert resumed[key] == reference[key], key
    assert resumed["val"]["best_epoch"] == reference["val"]["best_epoch"]
    assert reference["resumed_from"] in ([], {"image": [], "text": []})


def checkpoint_arrays(run_dir):
    """Every array of every best checkpoint of a run (joint: one file; independent: one per modality)."""
    arrays = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "**", "best.weights.h5"), recursive=True)):
        relative = os.path.relpath(path, run_dir)
        with h5py.File(path, "r") as handle:
            handle.visititems(lambda name, item, r=relative: arrays.__setitem__(f"{r}:{name}", item[()])
                              if isinstance(item, h5py.Dataset) else None)
    return arrays


def assert_same_checkpoints(resumed_dir, reference_dir):
    # Both best checkpoints come from the last epoch (assert_same_scores checks best_epoch), so they hold the final
    # weights of every player.
    expected, got = checkpoint_arrays(reference_dir), checkpoint_arrays(resumed_dir)
    assert expected and sorted(got) == sorted(expected)
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)


@pytest.mark.slow
@pytest.mark.e2e
def test_sigkill_mid_epoch_then_the_same_command_resumes_and_matches_an_uninterrupted_run(tmp_root):
    """ACMR's resume-equivalence case (the other methods: the next test), with a real process kill."""
    run_dir = os.path.join(tmp_root, "acmr-killed")
    marker = os.path.join(tmp_root, "acmr-paused")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # The first attempt stops (sleeps) at the start of step 2 of epoch 2 and says so in the marker file: the epoch-1
    # backup is on disk and two batches of epoch 2 have changed the weights in memory only. Then: SIGKILL.
    # tests/faults.py runs train.py with that pause patched in (production code has no fault hook).
    paused = [sys.executable, "-m", "tests.faults", "pause", f"--epoch={INTERRUPT['epoch']}",
              f"--step={INTERRUPT['step']}", f"--marker={marker}", "--", *cli_command("acmr", run_dir)[1:]]
    with open(os.path.join(tmp_root, "first.log"), "w") as log_file:
        process = subprocess.Popen(paused, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        try:
            # The uninterrupted reference trains in this process meanwhile (two cores).
            reference, _ = reference_with_snapshot("acmr", tmp_root)
            deadline = time.monotonic() + 300
            while not os.path.exists(marker):
                assert process.poll() is None, open(os.path.join(tmp_root, "first.log")).read()[-3000:]
                assert time.monotonic() < deadline, "the run never reached the interruption point"
                time.sleep(0.2)
            checkpoint_dir = os.path.join(run_dir, "checkpoints")
            assert backups(checkpoint_dir) == ["epoch-000001"]  # mid-epoch 2: epoch 1 saved, epoch 2 not
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(run_dir, "metrics.json"))

    # The same command again (plain train.py).
    second = subprocess.run(cli_command("acmr", run_dir), cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming the interrupted run in {run_dir} from the end of epoch 1 of {EPOCHS} " \
           f"(global step {STEPS_PER_EPOCH};" in second.stderr
    # Only epoch 2 was trained (again), not epoch 1.
    assert "epoch 1: validation" not in second.stderr and "epoch 2: validation" in second.stderr
    resumed = read_metrics(run_dir)
    assert resumed["resumed_from"] == [{"epoch": 1, "step": STEPS_PER_EPOCH}]
    assert_same_scores(resumed, reference)
    assert_same_checkpoints(run_dir, os.path.join(tmp_root, "acmr-reference"))
    assert not os.path.exists(os.path.join(checkpoint_dir, "backup"))  # removed once the run finished
    # TensorBoard continues: the resumed process logs epoch 2 (step 2) in a new event file next to the killed one's
    # epoch 1 (step 1), which is on disk although the process was killed (flushed at the epoch end).
    import tensorflow as tf

    for sub in ("train", "validation"):
        steps_by_file = {}
        logs = os.path.join(run_dir, "logs", sub)
        for name in sorted(os.listdir(logs)):
            steps = set()
            for record in tf.data.TFRecordDataset(os.path.join(logs, name)):
                event = tf.compat.v1.Event.FromString(record.numpy())
                if any(v.tag in ("embedding_loss", "map_avg") for v in event.summary.value):
                    steps.add(event.step)
            steps_by_file[name] = sorted(steps)
        assert sorted(steps_by_file.values()) == [[1], [2]], (sub, steps_by_file)


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in registered_methods() if m != "acmr"])  # ACMR: the SIGKILL test above
def test_every_method_resumes_mid_epoch_to_the_uninterrupted_result(method, tmp_root):
    reference, snapshot = reference_with_snapshot(method, tmp_root)
    run_dir = os.path.join(tmp_root, f"{method}-reference")
    # The interrupted state goes where the run was (its config names that run_dir), and the same config resumes it.
    shutil.move(run_dir, run_dir + "-done")
    shutil.move(snapshot, run_dir)
    _references.pop(method)
    assert not os.path.exists(os.path.join(run_dir, "metrics.json"))
    resumed = train(config(method, run_dir)).metrics
    assert_same_scores(resumed, reference)
    assert_same_checkpoints(run_dir, run_dir + "-done")
    # SDML drops the last partial batch (configs/_base/sdml.yaml, as its authors' code): 107 // 32 = 3 steps.
    steps = 3 if method == "sdml" else STEPS_PER_EPOCH
    point = {"epoch": INTERRUPT["epoch"] - 1, "step": (INTERRUPT["epoch"] - 1) * steps}
    if method == "sdml":
        # The finished image network is kept (not retrained); the text network resumed from its epoch-1 backup.
        assert resumed["resumed_from"] == {"image": [], "text": [point]}
        assert resumed["training"]["modalities"]["image"].get("kept") is True
        assert resumed["training"]["modalities"]["text"]["epochs_run"] == EPOCHS
    else:
        assert resumed["resumed_from"] == [point]


def test_training_stream_order_is_keyed_to_the_epoch_not_to_the_iterator():
    """The fix behind exact resumes of the input: a stream started at epoch e (a fresh process) yields exactly the
    batches an uninterrupted stream yields from epoch e on; every epoch is a new permutation of every item."""
    from tf_xmr.data import make_training_stream
    from tf_xmr.data.feature_set import Split

    n = 10
    split = Split(features={"image": np.arange(n, dtype=np.float32)[:, None], "text": np.zeros((n, 1))},
                  labels={"image": np.arange(n) % 2, "text": np.arange(n) % 2})

    def epochs(first):
        stream = make_training_stream(split, batch_size=4, num_classes=2, seed=3, first_epoch=first, epochs=4)
        items = [int(x) for batch in stream for x in batch["image"].numpy()[:, 0]]
        return [items[i:i + n] for i in range(0, len(items), n)]

    full = epochs(0)
    assert all(sorted(epoch) == list(range(n)) for epoch in full)  # each epoch: every item once
    assert len({tuple(epoch) for epoch in full}) == 4  # reshuffled every epoch
    assert epochs(2) == full[2:]
    assert epochs(0) == full  # and a second "process" gets the same order again
    # Epoch e is pass 2e of make_dataset's seeded reshuffling pipeline, the order fit gave every epoch e before
    # resumes were exact (Keras makes two iterators per epoch over a finite dataset), so earlier results reproduce.
    from tf_xmr.data import make_dataset

    passes = make_dataset(split, batch_size=4, num_classes=2, shuffle=True, seed=3)
    orders = [[int(x) for batch in passes for x in batch["image"].numpy()[:, 0]] for _ in range(8)]
    assert orders[0::2] == full


def test_the_stream_feeds_fit_the_epochs_a_finite_pipeline_fed_it():
    """The claim behind the previous assertion, measured on fit itself: a finite make_dataset pipeline given to fit
    epoch by epoch, and the stream given to fit with steps_per_epoch, deliver the same batches in the same order."""
    import keras

    from tf_xmr.data import make_dataset, make_training_stream
    from tf_xmr.data.feature_set import Split

    n, epochs = 10, 3
    split = Split(features={"image": np.arange(n, dtype=np.float32)[:, None], "text": np.zeros((n, 1))},
                  labels={"image": np.arange(n) % 2, "text": np.arange(n) % 2})

    class Recorder(keras.Model):
        def __init__(self):
            super().__init__()
            self.seen = []
            self.w = self.add_weight(shape=(), initializer="zeros")

        def train_step(self, data):
            self.seen.extend(int(v) for v in data["image"].numpy()[:, 0])  # run_eagerly: a concrete batch
            return {"items": len(self.seen)}

    def feed(dataset, **kwargs):
        model = Recorder()
        model.compile(run_eagerly=True)
        model.fit(dataset, epochs=epochs, verbose=0, **kwargs)
        return model.seen

    finite = make_dataset(split, batch_size=4, num_classes=2, shuffle=True, seed=3)
    stream = make_training_stream(split, batch_size=4, num_classes=2, seed=3, first_epoch=0, epochs=epochs)
    assert feed(stream, steps_per_epoch=3) == feed(finite)


# ----------------------------------------------------------------------------------------------------------------
# Refused before anything is written


def run_train_cli(monkeypatch, capsys, args):
    """``python train.py ARGS`` in this process (so that shutil.disk_usage can be patched): (exit status, stderr)."""
    import train
    from tf_xmr.cli import run

    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    with pytest.raises(SystemExit) as exited:
        run(train.main)
    return exited.value.code, capsys.readouterr().err


def tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, dirs, files in os.walk(root) for f in dirs + files)


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_run_dir_is_one_line_exit_2_and_nothing_written(where, tmp_path, monkeypatch, capsys):
    # Permission bits do not stop root, so the run directory is one that cannot be created at all.
    if where == "under_a_file":
        (tmp_path / "a_file").write_text("not a folder")
        run_dir = str(tmp_path / "a_file" / "runs" / "acmr")
    else:
        if not os.path.isdir("/proc/self"):
            pytest.skip("no /proc")
        run_dir = "/proc/tf_xmr_resume_test_run"  # no one, not even root, can create a folder in /proc
    before = tree(tmp_path)
    status, err = run_train_cli(monkeypatch, capsys, cli_command("acmr", run_dir)[2:])
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and run_dir in lines[0], err
    assert "Traceback" not in err
    assert tree(tmp_path) == before and not os.path.exists(run_dir)


def test_not_enough_disk_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    calls = []

    def almost_full(path):
        calls.append(path)
        return usage(10**9, 10**9 - 200_000, 200_000)

    monkeypatch.setattr(shutil, "disk_usage", almost_full)
    run_dir = str(tmp_path / "runs" / "acmr")
    status, err = run_train_cli(monkeypatch, capsys, cli_command("acmr", run_dir)[2:])
    assert status == 2 and calls
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "not enough free disk space" in lines[0] and "train.disk_margin" in lines[0], err
    # Not even the missing parent folder the probe created is left behind.
    assert tree(tmp_path) == []
    # The estimate the message quotes is the documented formula (train.disk_margin's comment).
    from tf_xmr.training import resume

    assert resume.estimate_run_bytes(1000, 2000, 300) == 5 * 3000 + 300 + resume.FIXED_ALLOWANCE_BYTES


def test_a_kill_between_validation_and_backup_resumes_with_the_backup_validation_state(tmp_path):
    """RetrievalValidation writes best.json and best.weights.h5 at the epoch end BEFORE the backup is written. A kill
    in between must neither count the re-trained epoch twice (patience, "best" that is not better) nor keep the
    killed attempt's checkpoint labelled with the backup's best epoch."""
    import keras

    from tf_xmr.training import resume

    def tiny():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        optimizer = keras.optimizers.Adam()
        optimizer.build(model.trainable_variables)
        return model, {"only": optimizer}

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    scores = iter([0.5, 0.7])

    def validation_for(model):
        validation = cb.RetrievalValidation(lambda: {"map_avg": next(scores)}, str(checkpoints), every=1, patience=3,
                                            min_delta=0.0, total_epochs=5)
        validation.set_model(model)
        return validation

    model, optimizers = tiny()
    validation = validation_for(model)
    saver = resume.training_checkpoint(str(checkpoints / "backup"), optimizers=optimizers, validation=validation)
    saver.set_model(model)
    validation.on_epoch_end(0)  # epoch 1: best so far
    saver.on_epoch_end(0)
    epoch1 = [np.array(w.numpy()) for w in model.weights]
    model.weights[0].assign(model.weights[0] + 1.0)  # epoch 2 trains ...
    validation.on_epoch_end(1)  # ... is a new best, written ... and the process dies before saver.on_epoch_end(1)
    assert json.loads((checkpoints / "best.json").read_text())["epoch"] == 2

    resumed_model, resumed_optimizers = tiny()
    resumed_validation = validation_for(resumed_model)
    state, resumed_from = resume.resume_state(True, str(checkpoints / "backup"), str(checkpoints), resumed_model,
                                               resumed_optimizers, resumed_validation, 5, "the test run")
    assert state["epoch"] == 1 and resumed_from == [{"epoch": 1, "step": 0}]
    assert resumed_validation.best["epoch"] == 1 and resumed_validation.best["evaluations_since_best"] == 0
    assert json.loads((checkpoints / "best.json").read_text())["epoch"] == 1
    for restored, saved in zip(resumed_model.weights, epoch1, strict=True):
        np.testing.assert_array_equal(restored.numpy(), saved)  # the backup's weights
    best, _ = tiny()
    best.load_weights(str(checkpoints / "best.weights.h5"))
    for restored, saved in zip(best.weights, epoch1, strict=True):
        np.testing.assert_array_equal(restored.numpy(), saved)  # the best checkpoint of epoch 1, not epoch 2's

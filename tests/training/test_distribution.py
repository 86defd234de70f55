"""train.distribution: a distributed run equals the single-device run with the same global batch and seed.

One in-process single-device run is the reference; a MirroredStrategy run over two logical CPU devices and a
two-process MultiWorkerMirroredStrategy cluster on 127.0.0.1 must end with the same weights. The comparison is only
meaningful if it would catch the usual mistakes, so the shared config is chosen for that:

* SGD for both players: Adam is nearly invariant to the gradient scale, so a missing 1/replicas factor (Keras SUMS
  replica gradients) would hide behind it; with SGD it doubles every step.
* batch 41 over the 216 training items: the last batch of each epoch (11 items) splits unevenly (6 / 5), which a
  plain 1/replicas loss scale gets wrong; per-replica-share weighting gets it right.
* ACMR's in-batch triplet term on (mining over the gathered global batch), the k = 2 discriminator schedule, a
  gradient clip that binds on the embedding player (Keras would clip each replica's part), and the seeded
  reshuffle-each-epoch pipeline (Keras' strategy-only peek at the data would shift the epochs' orders).
* dropout 0: dropout masks are drawn per replica, so with dropout a distributed run matches only in distribution.
* eval_every > epochs: validation runs once, after the last epoch, so checkpoints/best.weights.h5 holds the final
  weights of every run.

Tolerance: |w_distributed - w_single| <= 1e-5 for every weight. Measured differences are 3e-8 (float32 summation
order: replicas sum half-batches, then all-reduce); the weights move 3e-2 from their initial values during these 12
steps (asserted to exceed 100x the tolerance). Measured with the mirrored run, each mistake above breaks it by far:
a plain 1/replicas loss scale 1.1e-3 (only the two uneven batches differ), Keras' per-replica clipping 1.4e-2,
Keras' data peek 1.2e-2 with an even batch (and with batch 41 it crashes: it averages the two replicas' 21- and
20-item batches).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tests.conftest import ROOT

TOLERANCE = 1e-5
# Only against a hung process (a cluster worker waiting forever for its peer), never a speed requirement: the runs
# take 1-2 minutes alone and several times that on a loaded machine, which must not fail the test.
SAFETY_NET_SECONDS = 30 * 60

# Everything except run_dir and train.distribution; shared by the reference and the distributed runs.
SHARED = [
    "train.epochs=2",
    "train.verbose=0",
    "train.batch_size=41",
    "train.eval_every=100",
    "train.jit_compile=false",
    "data.synthetic.dims={image: 64, text: 32}",
    "data.synthetic.num_train=240",
    "data.synthetic.num_test=60",
    "data.synthetic.num_classes=4",
    "model.hidden_units={image: [32], text: [16]}",
    "model.common_dim=8",
    "model.k=2",
    "model.dropout=0",
    "train.optimizers.embedding.name=sgd",
    "train.optimizers.embedding.learning_rate=0.05",
    "train.optimizers.embedding.clipnorm=0.3",
    "train.optimizers.discriminator.name=sgd",
    "train.optimizers.discriminator.learning_rate=0.05",
    "export.enabled=false",
    # Less work per process (the whole file runs on a shared 2-core machine): no per-epoch backup, one protocol.
    "train.backup=false",
    "eval.extra_presets=[]",
]


def _sets(overrides):
    return [arg for item in overrides for arg in ("--set", item)]


def _weights(path):
    import h5py

    out = {}
    with h5py.File(path) as handle:
        handle.visititems(lambda name, obj: out.__setitem__(name, np.array(obj))
                          if isinstance(obj, h5py.Dataset) else None)
    return out


def _max_difference(a, b, keys=None):
    if keys is None:
        assert a.keys() == b.keys()
        keys = a.keys()
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in keys if a[k].size)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _mirrored_script(run_dir):
    # Logical devices must be configured before TensorFlow initialises: a fresh process does it first thing.
    # jit_compile=true here checks the explicit XLA fallback (the reference trains without XLA).
    sets = [f"run_dir={run_dir}", *SHARED, "train.distribution=mirrored", "train.jit_compile=true"]
    return textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tf_xmr.experiment import load_experiment
        from tf_xmr.training.pipeline import train
        train(load_experiment("configs/acmr.yaml", {sets!r}))
    """)


class _Run:
    """A distributed run in the background (started before the in-process reference, so they overlap)."""

    def __init__(self, root):
        self.root = root
        self.run_dir = str(root / "run")
        self.scratch = []
        self.processes = []
        self.outputs = None
        self.start = time.monotonic()
        self.elapsed = None

    def spawn(self, args, env=None):
        scratch = self.root / f"tmp{len(self.processes)}"
        scratch.mkdir()
        self.scratch.append(scratch)
        full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(scratch), **(env or {})}
        self.processes.append(subprocess.Popen([sys.executable, *args], cwd=ROOT, env=full_env, text=True,
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE))

    def wait(self, timeout=SAFETY_NET_SECONDS):
        if self.outputs is None:
            try:
                self.outputs = [p.communicate(timeout=timeout) for p in self.processes]
            finally:
                for p in self.processes:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
            self.elapsed = time.monotonic() - self.start
        return self.outputs


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    mirrored = _Run(tmp_path_factory.mktemp("mirrored"))
    mirrored.spawn(["-c", _mirrored_script(mirrored.run_dir)])
    workers = _Run(tmp_path_factory.mktemp("workers"))
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    for index in range(2):
        workers.spawn(["train.py", "--config", "configs/acmr.yaml",
                       *_sets([f"run_dir={workers.run_dir}", *SHARED, "train.distribution=multi_worker"])],
                      env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})})
    yield {"mirrored": mirrored, "multi_worker": workers}
    for run in (mirrored, workers):
        run.wait()


@pytest.fixture(scope="module")
def reference(launched, tmp_path_factory):
    """The single-device run (in-process): final weights, and how far training moved them from initialisation."""
    import keras

    from tf_xmr import modeling
    from tf_xmr.experiment import load_experiment
    from tf_xmr.training.pipeline import train

    run_dir = str(tmp_path_factory.mktemp("single") / "run")
    config = load_experiment(os.path.join(ROOT, "configs/acmr.yaml"), [f"run_dir={run_dir}", *SHARED])
    assert modeling.load_data(config).splits["train"].num_examples() % 41 == 11  # the uneven last batch
    result = train(config)
    final = _weights(os.path.join(run_dir, "checkpoints", "best.weights.h5"))
    # The initial weights: same seed, same construction order as train().
    keras.utils.set_random_seed(config.seed)
    feature_set = modeling.load_data(config)
    initial_path = os.path.join(str(tmp_path_factory.mktemp("init")), "init.weights.h5")
    modeling.build_model(config, modeling.data_spec(config, feature_set)).save_weights(initial_path)
    initial = _weights(initial_path)
    # Float weights only: the untrained model has no optimiser state, and the step counter is not a weight.
    keys = [k for k in initial if k in final and np.issubdtype(initial[k].dtype, np.floating)]
    return {"weights": final, "moved": _max_difference(final, initial, keys=keys), "metrics": result.metrics}


@pytest.mark.slow
def test_reference_run_moves_the_weights_far_beyond_the_tolerance(reference):
    assert reference["metrics"]["distribution"] == {"kind": "none", "replicas": 1}
    assert reference["moved"] > 100 * TOLERANCE


@pytest.mark.slow
def test_mirrored_two_logical_cpus_matches_single_device(launched, reference):
    run = launched["mirrored"]
    ((_, stderr),) = run.wait()
    assert run.processes[0].returncode == 0, stderr[-3000:]
    assert "train.jit_compile=true is not supported with train.distribution=mirrored" in stderr
    with open(os.path.join(run.run_dir, "metrics.json")) as handle:
        assert json.load(handle)["distribution"] == {"kind": "mirrored", "replicas": 2}
    difference = _max_difference(_weights(os.path.join(run.run_dir, "checkpoints", "best.weights.h5")),
                                 reference["weights"])
    print(f"mirrored: max |w - w_single| = {difference:.3g} (moved {reference['moved']:.3g}), {run.elapsed:.1f} s")
    assert difference <= TOLERANCE


@pytest.mark.slow
@pytest.mark.e2e
def test_two_workers_finish_and_the_chief_matches_single_device(launched, reference):
    run = launched["multi_worker"]
    outputs = run.wait()
    for process, (_, stderr) in zip(run.processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    chief_out, worker_out = outputs[0][0], outputs[1][0]
    assert "run directory:" in chief_out
    assert "worker finished; the chief writes the run directory" in worker_out
    with open(os.path.join(run.run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    assert metrics["distribution"] == {"kind": "multi_worker", "replicas": 2, "workers": 2, "task": "worker:0"}
    # The non-chief wrote nothing that outlives it: its private scratch folder (under its TMPDIR) is gone again.
    assert os.listdir(run.scratch[1]) == []
    difference = _max_difference(_weights(os.path.join(run.run_dir, "checkpoints", "best.weights.h5")),
                                 reference["weights"])
    print(f"multi_worker: max |w - w_single| = {difference:.3g} (moved {reference['moved']:.3g}), "
          f"{run.elapsed:.1f} s")
    assert difference <= TOLERANCE


@pytest.mark.parametrize("raw, message", [
    (None, "which is not set"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}', "not valid JSON"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}',
     "task index 1 is out of range"),
    ('{"cluster": {"worker": ["127.0.0.1:1"], "ps": ["127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}',
     "job(s) ['ps']"),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', "'host:port'"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "chief", "index": 0}}', "not a job of the cluster"),
])
def test_bad_tf_config_is_one_line_config_error(raw, message):
    from tf_xmr.errors import ConfigError
    from tf_xmr.training.distribution import parse_tf_config

    with pytest.raises(ConfigError) as info:
        parse_tf_config(raw)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_tf_config_roles():
    from tf_xmr.training.distribution import parse_tf_config

    workers = {"worker": ["a:1", "b:2"]}
    assert parse_tf_config(json.dumps({"cluster": workers, "task": {"type": "worker", "index": 0}})).is_chief
    assert not parse_tf_config(json.dumps({"cluster": workers, "task": {"type": "worker", "index": 1}})).is_chief
    with_chief = {"chief": ["c:0"], **workers}
    role = parse_tf_config(json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}}))
    assert not role.is_chief and role.num_workers == 3
    assert parse_tf_config(json.dumps({"cluster": with_chief, "task": {"type": "chief", "index": 0}})).is_chief


def test_bad_tf_config_cli_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    # train.py's own main() and error contract, run in this process: a fresh interpreter would only add a
    # TensorFlow import (~4 s of CPU) to a file that must stay within its time budget.
    import runpy

    run_dir = tmp_path / "run"
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]')
    monkeypatch.setattr(sys, "argv", ["train.py", "--config", "configs/acmr.yaml",
                                      *_sets([f"run_dir={run_dir}", *SHARED, "train.distribution=multi_worker"])])
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as info:
        runpy.run_path(os.path.join(ROOT, "train.py"), run_name="__main__")
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: TF_CONFIG is not valid JSON")
    assert not run_dir.exists() and os.listdir(tmp_path) == []

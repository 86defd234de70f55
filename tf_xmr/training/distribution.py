"""Data-parallel training with ``tf.distribute``: ``train.distribution: none | mirrored | multi_worker``.

What a distributed run means here, and why each piece is the way it is:

* **Strategies.** ``mirrored`` is ``tf.distribute.MirroredStrategy`` over this machine's devices (all GPUs, or, on a
  machine without GPUs, every logical CPU device: one replica unless the process split its CPU into logical devices).
  ``multi_worker`` is ``tf.distribute.MultiWorkerMirroredStrategy``; the cluster and this process's role come from the
  ``TF_CONFIG`` environment variable, as everywhere in TensorFlow. The chief is the ``chief`` task if the cluster has
  one, else ``worker`` 0 (TensorFlow's convention).
* **Global batch.** ``train.batch_size`` is the GLOBAL batch: each step consumes ``batch_size`` items in total, split
  across the ``R`` replicas (``batch_size / R`` each, the last partial batch unevenly). Steps per epoch, learning
  rates and the loss scale are therefore those of the single-device run with the same batch size.
* **Input.** Every worker runs the same seeded pipeline and keeps its slice of every global batch (tf.data
  ``AutoShardPolicy.DATA``), so the union of what the replicas see in a step is exactly the single-device batch.
  (File sharding would read less but changes which items meet in a batch.)
* **Loss scale.** Keras 3's TF optimizer SUMS gradients over replicas (``TFOptimizer._all_reduce_sum_gradients``,
  called from ``apply``); it does not average. The adversarial template (``tf_xmr.methods.base``) therefore multiplies
  each replica's loss by ``b_r / B`` (its share of the global batch): for losses that are means over the batch the sum
  of the replicas' gradients is then exactly the gradient of the global-batch mean, also for an uneven last batch; for
  terms every replica computes on the whole gathered batch (``gather_replicas``) and for parameter-only terms such as
  weight norms the weights sum to one, which is exact too. Gradient clipping is done on the summed gradient (Keras
  would clip each replica's part), see ``AdversarialModel._update``.
* **What is exact and what is not.** Exact up to float summation order: per-item means (cross-entropies,
  adversarial losses, per-item reconstruction / gradient-penalty terms), parameter regularisers, and ACMR's triplet
  term (computed on the gathered global batch). Approximate: other batch-level terms a method computes on its local
  slice (kernel MMD / correlation alignment, in-batch statistics, DA-GAN's semantic groups when a group is split
  between replicas), BatchNormalization (per-replica statistics unless ``synchronized=True``; no method here uses
  it), and random draws (dropout masks, generator noise), which differ per replica and so match the single-device run
  only in distribution.
* **XLA.** XLA cannot compile a train step that spans devices or contains collectives on CPU ("Collectives are not
  yet implemented for CPU devices when compiling with XLA"); under a strategy ``train.jit_compile`` is turned off and
  a warning says so.
* **Outputs.** Only the chief evaluates (validation, test, export, ``metrics.json``) and writes the run directory.
  Other workers write what Keras insists on (TensorBoard logs) into a temporary folder that is deleted at the end, and
  learn about early stopping from the chief through a collective (``SyncStopTraining``), so every worker runs the same
  number of steps. Resuming an interrupted multi-worker run is not supported (every worker would have to restore the
  same epoch): ``train.backup`` is ignored under ``multi_worker`` and a run directory holding an interrupted run is
  refused.
* **Keras 3.15 details the template works around** (``tf_xmr.methods.base.AdversarialModel``): an optimiser update
  inside ``tf.cond`` cannot synchronise replicas on CPU, so a player scheduled every k-th step gets one compiled step
  per schedule phase; Keras' strategy-only peek at a batch before training (which shifts the shuffled epochs and
  crashes on an uneven first batch) is skipped for the fully built model; multi-worker step outputs get a batch axis
  for Keras' ``strategy.reduce(MEAN, axis=0)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile

import keras

from tf_xmr.errors import ConfigError

log = logging.getLogger("tf_xmr.training")

DISTRIBUTIONS = ("none", "mirrored", "multi_worker")


@dataclasses.dataclass(frozen=True)
class ClusterRole:
    """This process's place in a multi-worker cluster (from ``TF_CONFIG``)."""

    task_type: str
    task_index: int
    num_workers: int
    is_chief: bool


def parse_tf_config(raw: str | None) -> ClusterRole:
    """Validate ``TF_CONFIG`` the way ``MultiWorkerMirroredStrategy`` will read it, with a one-line error.

    Args:
        raw: the value of the ``TF_CONFIG`` environment variable (None when unset).

    Raises:
        ConfigError: unset, not JSON, or a cluster/task that does not describe a worker of a worker cluster.
    """
    where = "train.distribution=multi_worker needs TF_CONFIG"
    if not raw or not raw.strip():
        raise ConfigError(
            f"{where}, which is not set: export TF_CONFIG='{{\"cluster\": {{\"worker\": [\"host1:port\", "
            f"\"host2:port\"]}}, \"task\": {{\"type\": \"worker\", \"index\": 0}}}}' on each machine"
        )
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if (not isinstance(spec, dict) or not isinstance(spec.get("cluster"), dict)
            or not isinstance(spec.get("task"), dict)):
        raise ConfigError("TF_CONFIG must be a JSON object with a 'cluster' mapping and a 'task' mapping")
    cluster, task = spec["cluster"], spec["task"]
    unsupported = sorted(set(cluster) - {"chief", "worker"})
    if unsupported:
        raise ConfigError(
            f"TF_CONFIG cluster has job(s) {unsupported}; multi_worker training uses only 'chief' and 'worker' jobs"
        )
    for job, addresses in cluster.items():
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and ":" in a for a in addresses)):
            raise ConfigError(f"TF_CONFIG cluster job {job!r} must be a non-empty list of 'host:port' strings")
    if len(cluster.get("chief", [])) > 1:
        raise ConfigError("TF_CONFIG cluster may have at most one 'chief' address")
    if "worker" not in cluster and "chief" not in cluster:
        raise ConfigError("TF_CONFIG cluster has no 'worker' job")
    task_type, task_index = task.get("type"), task.get("index")
    if task_type not in cluster:
        raise ConfigError(f"TF_CONFIG task type {task_type!r} is not a job of the cluster ({sorted(cluster)})")
    if isinstance(task_index, bool) or not isinstance(task_index, int) or not 0 <= task_index < len(cluster[task_type]):
        raise ConfigError(
            f"TF_CONFIG task index {task_index!r} is out of range for job {task_type!r} "
            f"({len(cluster[task_type])} address(es))"
        )
    num_workers = sum(len(addresses) for addresses in cluster.values())
    is_chief = task_type == "chief" or (task_type == "worker" and task_index == 0 and "chief" not in cluster)
    return ClusterRole(task_type, task_index, num_workers, is_chief)


@dataclasses.dataclass
class Distribution:
    """The strategy of a run and what this process may write.

    Attributes:
        kind: ``none | mirrored | multi_worker``.
        strategy: the ``tf.distribute.Strategy`` (the default strategy for ``none``).
        is_chief: this process evaluates and writes the run directory.
        role: the multi-worker role, else None.
    """

    kind: str
    strategy: object
    is_chief: bool = True
    role: ClusterRole | None = None
    _scratch: str | None = None

    @property
    def num_replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    def scope(self):
        """Where model, variables, optimisers and the compiled train step must be created."""
        if self.kind == "none":
            return contextlib.nullcontext()
        return self.strategy.scope()

    def jit_compile(self, requested: bool) -> bool:
        """``train.jit_compile`` as it can actually run: off under a strategy (XLA cannot compile collectives on CPU,
        nor a step that spans several devices)."""
        if requested and self.kind != "none":
            log.warning(
                "train.jit_compile=true is not supported with train.distribution=%s (XLA cannot compile a train step "
                "with cross-replica collectives on CPU); training without XLA", self.kind,
            )
            return False
        return requested

    def supports_backup(self) -> bool:
        """BackupAndRestore resumes one process; workers restoring different epochs would deadlock collectives."""
        return self.kind != "multi_worker"

    def prepare_dataset(self, dataset):
        """Shard by data, not by file: every replica's slice of a step is part of the same global batch."""
        if self.kind == "none":
            return dataset
        import tensorflow as tf

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return dataset.with_options(options)

    def scratch_dir(self) -> str:
        """A non-chief worker's private output folder (Keras' multi-worker convention), removed by ``cleanup``."""
        if self._scratch is None:
            label = f"{self.role.task_type}{self.role.task_index}" if self.role else "worker"
            self._scratch = tempfile.mkdtemp(prefix=f"tf_xmr-{label}-")
        return self._scratch

    def cleanup(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def callbacks(self) -> list:
        """Callbacks every worker needs after the chief's validation callback (early-stopping agreement)."""
        if self.kind != "multi_worker":
            return []
        return [SyncStopTraining(self.strategy)]

    def describe(self) -> dict:
        out = {"kind": self.kind, "replicas": self.num_replicas}
        if self.role is not None:
            out.update(workers=self.role.num_workers, task=f"{self.role.task_type}:{self.role.task_index}")
        return out


# One strategy object per process and kind, reused by every train() call: a second MirroredStrategy in the same
# process reuses collective instance keys of the first and its all-reduces fail ("Shape mismatch in the collective
# instance ..."), and TensorFlow allows only one MultiWorkerMirroredStrategy per process anyway.
_STRATEGIES: dict = {}


def _process_strategy(key, create):
    if key not in _STRATEGIES:
        _STRATEGIES[key] = create()
    return _STRATEGIES[key]


def setup_distribution(kind: str, *, environ=None) -> Distribution:
    """Create the strategy of ``train.distribution``.

    Must run before TensorFlow executes any op: ``MultiWorkerMirroredStrategy`` configures the process's collective
    runtime and refuses once the eager context exists.

    Raises:
        ConfigError: unknown kind, or (multi_worker) a missing or malformed ``TF_CONFIG``.
    """
    import tensorflow as tf

    environ = os.environ if environ is None else environ
    if kind == "none":
        return Distribution("none", tf.distribute.get_strategy())
    if kind == "mirrored":
        devices = None
        if not tf.config.list_physical_devices("GPU"):
            # MirroredStrategy's default is "all GPUs, else CPU:0"; logical CPU devices are replicas too.
            devices = [device.name for device in tf.config.list_logical_devices("CPU")]
        return Distribution("mirrored", _process_strategy(("mirrored", tuple(devices or ())),
                                                          lambda: tf.distribute.MirroredStrategy(devices=devices)))
    if kind == "multi_worker":
        role = parse_tf_config(environ.get("TF_CONFIG"))
        strategy = _process_strategy(("multi_worker", environ.get("TF_CONFIG")),
                                     tf.distribute.MultiWorkerMirroredStrategy)
        log.info("multi-worker training: task %s:%d of %d workers (%s), %d replicas", role.task_type, role.task_index,
                 role.num_workers, "chief" if role.is_chief else "not chief", strategy.num_replicas_in_sync)
        return Distribution("multi_worker", strategy, is_chief=role.is_chief, role=role)
    raise ConfigError(f"config key 'train.distribution' must be one of {list(DISTRIBUTIONS)}, got {kind!r}")


class SyncStopTraining(keras.callbacks.Callback):
    """Every worker stops when any worker decided to stop (the chief's early stopping, a NaN guard).

    Only the chief runs validation, so only its ``model.stop_training`` can turn true at an epoch end; the other
    workers would go on into the next epoch and wait forever for the chief in the first all-reduce. One scalar
    all-reduce per epoch makes the decision common.
    """

    def __init__(self, strategy):
        super().__init__()
        import tensorflow as tf

        def any_replica(flag):
            # tf.identity places the value on this replica's device (collectives refuse device-less inputs).
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(flag))

        self._strategy = strategy
        self._reduce = tf.function(lambda flag: strategy.run(any_replica, args=(flag,)))

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        flag = tf.constant(1.0 if self.model.stop_training else 0.0)
        total = self._strategy.experimental_local_results(self._reduce(flag))[0]
        self.model.stop_training = bool(float(total) > 0.0)

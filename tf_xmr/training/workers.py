"""Where independent modality networks train (e.g. SDML's): the plan (in this process or in worker processes, how
many, with how many threads) and the process pool that runs it.

``train.parallel_modalities`` is ``true`` (always worker processes), ``false`` (always one network after the other
in this process) or ``auto`` (the default): :func:`plan_workers` decides from the cores and GPUs this process may use.

The auto rule and the measurement behind it (``benchmarks/sdml_scaling.py --epochs 3 --skip memory add``,
5-modality synthetic set, 2 cores, no GPU, 2026-12-03, the machine shared with other jobs):

* Parallel workers only pay off where each one gets a device or cores that would otherwise sit idle. On 2 cores
  every parallel mode was slower than sequential training (training seconds, each worker set up once with
  cores // workers threads): sequential 60.2; 1 worker x 2 threads 68.9 (1.15x); 2 workers x 1 thread 76.7
  (1.27x); 5 workers x 1 thread 108.2 (1.80x). An earlier run under heavier load (load average ~12) ranked the
  same: 1.06x, 1.10x, 1.50x. Why: a worker costs ~13 s of start-up and data loading before its first step (1
  worker: 56.0 s of training inside 68.9 s), and two networks training at once each ran ~1.75x slower than alone
  (image 34.5 s against 19.9 s), so the second core bought only ~1.14x throughput, less than the start-up costs.
* So, CPU only (or a single GPU, which the workers would share): ``workers = min(networks, cores //
  MIN_THREADS_PER_WORKER, max_workers)``, and sequential when that is below 2. With ``MIN_THREADS_PER_WORKER = 4``
  that is sequential below 8 cores. The floor of 4 is NOT measured (this machine has 2 cores); it is chosen so that
  auto stays sequential on small machines, where parallel was measured to lose, and splits only machines with
  cores to spare. ``true`` remains there to force workers on any machine.
* Two or more visible GPUs: one worker per GPU (each worker sees only its own GPU, through
  ``CUDA_VISIBLE_DEVICES``), up to the number of networks; the cores are split between the workers. Not measured
  (no GPU here): the paper's parallel gain came from a second GPU.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import multiprocessing
import os

log = logging.getLogger("tf_xmr.training")

#: The fewest TensorFlow threads a CPU worker must keep for auto to choose workers (see the module docstring).
MIN_THREADS_PER_WORKER = 4
#: The measurement the auto rule is based on, quoted in the log line when auto falls back to sequential.
MEASURED = "every parallel mode was 1.15-1.80x slower than sequential on 2 cores (benchmarks/sdml_scaling.py)"


@dataclasses.dataclass(frozen=True)
class WorkerPlan:
    """Where the networks train.

    Attributes:
        workers: Worker processes; 0 = one network after the other in this process.
        threads: TensorFlow intra-op and inter-op threads of each worker (0 when sequential: this process keeps
            TensorFlow's defaults, i.e. every core).
        gpus: The GPU index each worker sees (one per worker), or () on CPU.
        reason: Why, in a few words (logged).
    """

    workers: int
    threads: int
    gpus: tuple[int, ...]
    reason: str

    @property
    def parallel(self) -> bool:
        return self.workers > 0

    def describe(self, networks: int) -> str:
        """The one log line: what was chosen and why."""
        if not self.parallel:
            return f"training {networks} modality network(s) one after the other in this process: {self.reason}"
        where = f", GPU {', '.join(map(str, self.gpus))} (one each)" if self.gpus else ""
        return (f"training {networks} modality networks in {self.workers} worker process(es), {self.threads} "
                f"TensorFlow thread(s) each{where}: {self.reason}")


def plan_workers(*, cores: int, gpus: int, networks: int, mode, max_workers: int | None = None) -> WorkerPlan:
    """Decides where ``networks`` independent networks train. Pure: no probing, no side effects.

    Args:
        cores: CPU cores this process may use (>= 1).
        gpus: Visible GPUs (>= 0).
        networks: Networks still to train.
        mode: ``train.parallel_modalities``: True, False or ``"auto"``.
        max_workers: ``train.max_workers``: an upper bound on the workers, or None.

    Returns:
        The plan; see the module docstring for the auto rule.
    """
    cores = max(1, int(cores))
    cap = networks if max_workers is None else min(networks, max_workers)

    def sequential(reason: str) -> WorkerPlan:
        return WorkerPlan(0, 0, (), reason)

    def parallel(workers: int, reason: str, use_gpus: bool) -> WorkerPlan:
        gpu_ids = tuple(i % gpus for i in range(workers)) if use_gpus and gpus else ()
        return WorkerPlan(workers, max(1, cores // workers), gpu_ids, reason)

    if mode is False:
        return sequential("train.parallel_modalities is false")
    if networks <= 1:
        return sequential(f"{networks} network to train")
    if mode is True:
        # Forced: as asked, even where it is slower; the GPUs (if any) are shared out in turn.
        return parallel(cap, "train.parallel_modalities is true", use_gpus=True)
    if mode != "auto":
        raise ValueError(f"mode must be True, False or 'auto', got {mode!r}")
    if gpus >= 2:
        workers = min(cap, gpus)
        if workers >= 2:
            return parallel(workers, f"auto: {gpus} GPUs, one network per GPU at a time", use_gpus=True)
        return sequential(f"auto: train.max_workers={max_workers} leaves one worker")
    workers = min(cap, cores // MIN_THREADS_PER_WORKER)
    if workers >= 2:
        return parallel(workers, f"auto: {cores} cores leave >= {MIN_THREADS_PER_WORKER} threads per worker",
                        use_gpus=False)
    if max_workers is not None and max_workers < 2:
        return sequential(f"auto: train.max_workers={max_workers} leaves one worker")
    device = "1 GPU, which workers would share, and " if gpus == 1 else ""
    return sequential(f"auto: {device}{cores} core(s) cannot give 2 workers {MIN_THREADS_PER_WORKER} threads "
                      f"each; {MEASURED}")


def available_cores() -> int:
    """The cores this process may run on (taskset and cgroup cpusets included), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def visible_gpus() -> int:
    """GPUs TensorFlow can see in this process (0 with tensorflow-cpu)."""
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


# ----------------------------------------------------------------------------------------------------------------
# The pool. Each worker process is set up once (its threads, its GPU, TensorFlow, the data and the shared state)
# by _init_worker, then trains the networks it is handed; start-up is paid once per worker, not per network.
# The training function arrives as an argument (pickled by reference), so this module never imports the training
# code that imports it.

_WORKER: dict = {}


def _init_worker(config_dict: dict, train_fn, state: dict, threads: int, slots, log_level: int,
                 parent_pid: int) -> None:
    slot = slots.get()  # this worker's place in the plan: which GPU it sees
    if slot is not None:
        # Must be set before TensorFlow initialises its devices, i.e. before it is imported in this process.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=log_level, format="%(message)s")
    import tensorflow as tf

    # Before the first op: TensorFlow fixes its thread pools when it first runs one.
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    from tf_xmr import modeling
    from tf_xmr.experiment import experiment_from_dict

    config = experiment_from_dict(config_dict)
    feature_set = modeling.load_data(config)
    _WORKER.update(config=config, feature_set=feature_set, spec=modeling.data_spec(config, feature_set),
                   state=state, train_fn=train_fn, parent_pid=parent_pid)


def _stop_when_orphaned(parent_pid: int):
    """A callback that ends a worker's training once the process that started it is gone (killed or crashed):
    otherwise the worker would keep cores busy for a run nobody collects."""
    import keras

    class StopWhenOrphaned(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if os.getppid() != parent_pid:
                log.warning("the training process %d is gone; this worker stops", parent_pid)
                os._exit(1)

    return StopWhenOrphaned()


def _train_one(modality: str, out_dir: str) -> dict:
    # The parent's log shows every worker's lines at once: say whose they are.
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(f"[{modality}] %(message)s"))
    w = _WORKER
    return w["train_fn"](w["config"], w["feature_set"], w["spec"], w["state"], modality, out_dir,
                         extra_callbacks=[_stop_when_orphaned(w["parent_pid"])])


def train_in_workers(config, out_dirs: dict[str, str], plan: WorkerPlan, *, train_fn, state: dict) -> dict[str, dict]:
    """Trains every ``modality -> out_dir`` of ``out_dirs`` in the plan's worker processes; modality -> summary.

    Args:
        config: The run's ``ExperimentConfig`` (each worker loads the data from it, once).
        out_dirs: modality -> the folder its network trains into.
        plan: From :func:`plan_workers`, with ``plan.parallel``.
        train_fn: ``train_fn(config, feature_set, spec, state, modality, out_dir, extra_callbacks=[...])`` -> the
            network's summary; a module-level function (it is pickled by reference).
        state: The method's shared arrays (SDML: P), sent to each worker once.

    Workers are spawned (a fork of a process with a running TensorFlow is unsafe). A worker's exception is raised
    here once the pool has stopped.
    """
    from tf_xmr.config import to_dict

    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for i in range(plan.workers):
        slots.put(plan.gpus[i] if plan.gpus else None)
    init_args = (to_dict(config), train_fn, state, plan.threads, slots, logging.getLogger().level, os.getpid())
    results = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=plan.workers, mp_context=context,
                                                initializer=_init_worker, initargs=init_args) as pool:
        futures = {pool.submit(_train_one, m, out_dir): m for m, out_dir in out_dirs.items()}
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
    return results

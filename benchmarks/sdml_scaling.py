"""SDML's scalability claims (Tables 6-7 of the paper), measured on the 5-modality synthetic benchmark.

    python benchmarks/sdml_scaling.py [--epochs 3] [--config configs/sdml_5modal.yaml] [--set KEY=VALUE ...]

Prints three tables:

1. Wall time of training the five networks one after another in one process (SDML-2) vs in parallel worker
   processes (SDML-3: 1 worker, 2 workers, one per modality; each worker gets cores // workers TensorFlow threads),
   and of the joint model that trains all five in one graph (SDML-1: one step = one batch of every modality, spec
   12.18). Same epochs, same data, exports off. Below it, one network (image) alone in a fresh process with 1
   thread and with every core: how well TensorFlow spreads one network over the cores, which decides whether
   splitting the cores between workers can pay off. The line after says what ``parallel_modalities: auto`` picks
   on this machine (tf_xmr/training/workers.py).
2. Peak memory of training one modality's network vs the joint model, each in a fresh process: the resident set once
   TensorFlow and the data are loaded, and the peak above it while training (the kernel's peak mark is reset after
   loading, because generating the 4096-d synthetic data peaks higher than any training does).
3. Time to add a sixth modality to the finished five-modality run (resume_from) vs retraining all six.

CPU-only: "memory" is the resident set of the process (the paper's numbers are GPU MiB from nvidia-smi), and the
parallel speed-up is bounded by the core count (os.cpu_count() is printed).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SIXTH = ("sketch", 4096)


def _overrides(args, run_dir, extra=()):
    where = [] if run_dir is None else [f"run_dir={run_dir}"]
    return [*args.overrides, f"train.epochs={args.epochs}", "train.verbose=0", "export.enabled=false",
            "train.backup=false", *where, *extra]


def _dims_with_sixth(config):
    dims = dict(config.data.synthetic.dims)
    dims[SIXTH[0]] = SIXTH[1]
    return "{" + ", ".join(f"{m}: {d}" for m, d in dims.items()) + "}"


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak() -> float:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS and return that RSS (MiB).

    Generating the 4096-d synthetic data peaks far above what training needs (float64 intermediates), so the peak
    of the training itself is only visible after this reset (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``).
    """
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _status_mb("VmRSS")


def _rss_mb() -> float:
    """Peak RSS (MiB) since the last ``_reset_peak``."""
    return _status_mb("VmHWM")


def worker(args) -> int:
    """One measurement in this (fresh) process; prints one JSON line."""
    import tensorflow as tf

    if args.threads:
        # As a worker process does: before TensorFlow runs its first op, which fixes the thread pools.
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from tf_xmr.experiment import load_experiment
    from tf_xmr.modeling import build_optimizer, data_spec, load_data, modality_optimizer_config
    from tf_xmr.training import independent

    config = load_experiment(args.config, _overrides(args, None))
    feature_set = load_data(config)
    spec = data_spec(config, feature_set)
    from tf_xmr.methods.sdml import SDML

    state = SDML.create_shared_state(config.model, spec, config.seed)
    tf.zeros((1,)) + 1  # the runtime is initialised
    loaded = _reset_peak()
    if args.worker == "baseline":
        print(json.dumps({"what": "baseline", "rss_mb": _rss_mb(), "loaded_mb": loaded}))
        return 0
    if args.worker == "one":
        with tempfile.TemporaryDirectory() as out:
            summary = independent.train_modality(config, feature_set, spec, state, args.modality, out)
        print(json.dumps({"what": f"one:{args.modality}", "rss_mb": _rss_mb(), "loaded_mb": loaded,
                          "seconds": summary["seconds"], "threads": args.threads}))
        return 0
    # Joint (SDML-1): every network in one model and one graph; each step takes one batch of every modality
    # (smaller modalities cycle, reshuffled), an epoch = ceil(n_max / batch) steps.
    import math

    from tf_xmr.data import make_dataset

    tf.keras.utils.set_random_seed(config.seed)
    model = SDML(config.model, spec, shared=state)
    model.build_for_training()
    model.compile({m: build_optimizer(modality_optimizer_config(config, m), name=f"{m}_optimizer")
                   for m in spec.modalities}, jit_compile=config.train.jit_compile)
    train = feature_set.splits["train"]
    batch = config.train.batch_size
    streams = {}
    for m in spec.modalities:
        ds = make_dataset(train, batch_size=batch, num_classes=spec.num_classes, modalities=[m], shuffle=True,
                          seed=config.seed, repeat=True, drop_remainder=True)
        streams[m] = ds
    n_max = max(train.num_examples(m) for m in spec.modalities)
    steps = math.ceil(n_max / batch)

    def merge(*elements):
        out = {m: e[m] for m, e in zip(spec.modalities, elements, strict=True)}
        out["labels"] = {m: e["labels"] for m, e in zip(spec.modalities, elements, strict=True)}
        return out

    joint = tf.data.Dataset.zip(tuple(streams[m] for m in spec.modalities)).map(merge)
    val = {m: make_dataset(feature_set.splits["val"], batch_size=config.train.eval_batch_size,
                           num_classes=spec.num_classes, modalities=[m]) for m in spec.modalities}

    class Validate(tf.keras.callbacks.Callback):
        # The same per-epoch validation pass the independent networks make, so the times compare.
        def on_epoch_end(self, epoch, logs=None):
            for m, net in model.dsaes.items():
                net.validation_loss(val[m])

    start = time.perf_counter()
    model.fit(joint, epochs=config.train.epochs, steps_per_epoch=steps, verbose=0, callbacks=[Validate()])
    print(json.dumps({"what": "joint", "rss_mb": _rss_mb(), "loaded_mb": loaded,
                      "seconds": time.perf_counter() - start}))
    return 0


def _measure(args, *extra) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--config", args.config, "--epochs", str(args.epochs),
               *[a for s in args.overrides for a in ("--set", s)], *extra]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if result.returncode:
        raise SystemExit(f"measurement {extra} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sdml_5modal.yaml")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=None, help="parent folder of the run directories (default: a temp folder)")
    parser.add_argument("--worker", choices=("baseline", "one", "joint"), help=argparse.SUPPRESS)
    parser.add_argument("--modality", default="image", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--skip", nargs="*", default=[], choices=("time", "memory", "add"))
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    from tf_xmr.experiment import load_experiment
    from tf_xmr.training.pipeline import train

    out = args.out or tempfile.mkdtemp(prefix="sdml-scaling-")
    base = load_experiment(args.config, _overrides(args, None))
    modalities = list(base.data.synthetic.dims)
    print(f"config {args.config}, {args.epochs} epochs, modalities {modalities}, os.cpu_count()={os.cpu_count()}")
    print(f"dims {dict(base.data.synthetic.dims)}, fractions {dict(base.data.synthetic.modality_fractions)}")
    from tf_xmr.training import workers

    cores = workers.available_cores()
    runs = {}
    counts = sorted({1, 2, len(modalities)})
    modes = [("sequential", ["train.parallel_modalities=false"])] + [
        (f"parallel, {n} worker{'s' if n > 1 else ''}", ["train.parallel_modalities=true", f"train.max_workers={n}"])
        for n in counts]
    if "time" in args.skip:
        modes = modes[:1]  # Table C needs only the sequential five-modality run to extend
    if "time" not in args.skip or "add" not in args.skip:
        for name, extra in modes:
            run_dir = os.path.join(out, name.split(",")[0] + str(len(runs)))
            start = time.perf_counter()
            metrics = train(load_experiment(args.config, _overrides(args, run_dir, extra))).metrics
            runs[name] = {"run_dir": run_dir, "total": time.perf_counter() - start, "metrics": metrics}
            print(f"  {name}: {runs[name]['total']:.1f} s", flush=True)
    if "time" not in args.skip:
        joint = _measure(args, "--worker", "joint")
        seq = runs["sequential"]["metrics"]["training"]["wall_seconds"]
        print()
        print(f"Table A: wall time of training all networks on {cores} cores (seconds; 'training' includes the "
              "workers' start-up and data loading, not the scoring)")
        print("| mode | workers | threads per worker | training | whole run | vs sequential | test map_avg |")
        print("|---|---|---|---|---|---|---|")
        for name, run in runs.items():
            training = run["metrics"]["training"]
            wall = training["wall_seconds"]
            threads = training.get("threads_per_worker") or f"{cores} (TF default)"
            print(f"| {name} | {training.get('workers', 0)} | {threads} | {wall:.1f} | {run['total']:.1f} | "
                  f"{wall / seq:.2f}x | {run['metrics']['test']['map_avg']:.4f} |")
        print(f"| joint model, all networks in one graph (SDML-1) | 0 | {cores} (TF default) | {joint['seconds']:.1f} "
              f"| | {joint['seconds'] / seq:.2f}x | |")
        one = {t: _measure(args, "--worker", "one", "--modality", "image", "--threads", str(t))
               for t in sorted({1, cores})}
        print("one image network alone, fresh process (training seconds): "
              + ", ".join(f"{t} thread(s) {r['seconds']:.1f}" for t, r in one.items())
              + (f"; speed-up {one[1]['seconds'] / one[cores]['seconds']:.2f}x on {cores} cores" if cores > 1 else ""))
        plan = workers.plan_workers(cores=cores, gpus=workers.visible_gpus(), networks=len(modalities), mode="auto")
        print(f"parallel_modalities=auto here: {plan.describe(len(modalities))}")
        per = runs["sequential"]["metrics"]["training"]["modalities"]
        print("per-modality training time, sequential (s): "
              + ", ".join(f"{m} {per[m]['seconds']:.1f}" for m in modalities))
    if "memory" not in args.skip:
        baseline = _measure(args, "--worker", "baseline")
        ones = {m: _measure(args, "--worker", "one", "--modality", m) for m in modalities}
        joint = _measure(args, "--worker", "joint")
        print()
        print("Table B: peak resident memory of training in one fresh process (MiB), measured after TensorFlow and the")
        print("data are loaded (the peak mark is reset there); 'training' = peak minus the RSS at that point")
        print("| process | RSS with TF + data | peak while training | training | vs joint (training) |")
        print("|---|---|---|---|---|")
        joint_training = joint["rss_mb"] - joint["loaded_mb"]
        print(f"| nothing trained | {baseline['loaded_mb']:.0f} | {baseline['rss_mb']:.0f} | "
              f"{baseline['rss_mb'] - baseline['loaded_mb']:.0f} | |")
        for m, r in ones.items():
            training = r["rss_mb"] - r["loaded_mb"]
            print(f"| one network: {m} | {r['loaded_mb']:.0f} | {r['rss_mb']:.0f} | {training:.0f} | "
                  f"{training / joint_training:.2f}x |")
        print(f"| joint model, all {len(modalities)} networks | {joint['loaded_mb']:.0f} | {joint['rss_mb']:.0f} | "
              f"{joint_training:.0f} | 1.00x |")
    if "add" not in args.skip:
        seq_dir = runs["sequential"]["run_dir"]
        dims6 = _dims_with_sixth(base)
        start = time.perf_counter()
        added = train(load_experiment(args.config, [
            *_overrides(args, None), f"data.synthetic.dims={dims6}", f"resume_from={seq_dir}",
            f"model.train_modalities=[{SIXTH[0]}]",
        ])).metrics
        add_total = time.perf_counter() - start
        start = time.perf_counter()
        full = train(load_experiment(args.config, _overrides(args, os.path.join(out, "six-from-scratch"), [
            f"data.synthetic.dims={dims6}",
        ]))).metrics
        full_total = time.perf_counter() - start
        print()
        print(f"Table C: a sixth modality ({SIXTH[0]}, {SIXTH[1]}-d) (seconds)")
        print("| | training | whole run | test map_avg (30 directions) |")
        print("|---|---|---|---|")
        print(f"| add {SIXTH[0]} to the 5-modality run | {added['training']['wall_seconds']:.1f} | {add_total:.1f} | "
              f"{added['test']['map_avg']:.4f} |")
        print(f"| retrain all six | {full['training']['wall_seconds']:.1f} | {full_total:.1f} | "
              f"{full['test']['map_avg']:.4f} |")
        print("ratio add / retrain (training): "
              f"{added['training']['wall_seconds'] / full['training']['wall_seconds']:.2f}")
    print(f"run directories under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

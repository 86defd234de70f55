"""Training throughput per method with and without XLA, and the wait between the last epoch and ``fit`` returning.

    python benchmarks/train_step_speed.py [--methods acmr,sdml,jfse,x_gacmn,da_gan] [--sets synthetic,wikipedia]
        [--steps 10] [--repeats 3] [--stall-runs 3] [--stall-with-autotune] [--skip-epochs] [--skip-stall]

Table 1, seconds per training epoch: each method's own config (``configs/<method>.yaml`` on the synthetic benchmark,
``configs/wikipedia/<method>.yaml`` on the Wikipedia features, found through ``$TF_XMR_WIKIPEDIA``), with
``train.jit_compile`` false and true, built and fed exactly as train.py builds and feeds it (the model, its
optimisers, the resumable training stream, the fit callbacks), without the validation pass. A first chunk of
``--steps`` steps traces and compiles; then ``--repeats`` chunks of ``--steps`` steps are timed, XLA off and on in
alternation (so that load from other jobs hits both alike), and an epoch is the median time per step times the
config's steps per epoch (SDML: the sum over its modality networks). Each cell gives wall seconds and, in brackets,
the process's CPU seconds: on a shared machine the wall time is inflated by waiting for a core, the CPU time much
less. The warm-up note is the first chunk's time beyond its steps' share (tracing, XLA compilation).

Table 2, the teardown check (issue 20): SDML on ``configs/sdml.yaml`` for 6 epochs through the real per-network fit
(``tf_xmr.training.independent.train_modality``), ``--stall-runs`` times; for every network's fit, the time from
the end of its last epoch (after every epoch-end callback) to the fit returning, median and max. It was 7-31 s in
6 of 14 runs before the training stream turned tf.data autotuning off (its model thread, joined when ``fit`` drops
the iterator); ``--stall-with-autotune`` interleaves runs with autotuning turned back on, to show what the check
catches (intermittent: the wait is the rest of the tuner's optimisation period, so a few runs may show none). No time
is asserted: read the table.
"""

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("acmr", "sdml", "jfse", "x_gacmn", "da_gan")
SETS = ("synthetic", "wikipedia")


def _config_path(method: str, data_set: str) -> str:
    if data_set == "wikipedia":
        return os.path.join(ROOT, "configs", "wikipedia", f"{method}.yaml")
    return os.path.join(ROOT, "configs", f"{method}.yaml")


class _Clock:
    """A keras callback, appended last, that stamps every epoch's begin and end and the end of training."""

    def __new__(cls):
        import keras

        class Clock(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.begins, self.ends, self.train_end = [], [], None
                self.cpu_begins, self.cpu_ends = [], []

            def on_epoch_begin(self, epoch, logs=None):
                self.begins.append(time.perf_counter())
                self.cpu_begins.append(time.process_time())

            def on_epoch_end(self, epoch, logs=None):
                self.ends.append(time.perf_counter())
                self.cpu_ends.append(time.process_time())

            def on_train_end(self, logs=None):
                self.train_end = time.perf_counter()

        return Clock()


def _trainers(config, feature_set, jit: bool, steps: int, log_dir: str):
    """``[(fit_chunk, full_steps)]``, one per network trained by ``config`` (SDML: one per modality, else one), with
    ``train.jit_compile = jit``; ``fit_chunk()`` fits ``min(steps, full_steps)`` steps and returns their seconds
    and CPU seconds of this process (epoch begin to end, so fit's own set-up is left out)."""
    import keras

    from tf_xmr import modeling
    from tf_xmr.data import make_training_stream
    from tf_xmr.training import callbacks as cb
    from tf_xmr.training import joint

    config = dataclasses.replace(config, train=dataclasses.replace(config.train, jit_compile=jit))
    keras.utils.set_random_seed(config.seed)
    spec = modeling.data_spec(config, feature_set)
    split = feature_set.splits["train"]
    batch = config.train.batch_size

    def stream_epochs(full_steps, k):
        # Every fit call makes a new iterator from the stream's start: enough epochs for one chunk.
        return -(-k // full_steps) + 1

    def chunk(model, stream, k, callbacks):
        def fit_chunk():
            clock = _Clock()
            model.fit(stream, epochs=1, steps_per_epoch=k, verbose=0, shuffle=False, callbacks=[*callbacks, clock])
            return clock.ends[-1] - clock.begins[-1], clock.cpu_ends[-1] - clock.cpu_begins[-1]
        return fit_chunk

    trainers = []
    if modeling.is_independent(config.method):
        model_class = modeling.method_class(config)
        state = model_class.create_shared_state(config.model, spec, config.seed)
        for m in feature_set.modalities:
            n = split.num_examples(m)
            full_steps = n // batch if config.train.drop_remainder else -(-n // batch)
            k = min(steps, full_steps)
            net = model_class.modality_model(config.model, spec, m, state)
            net.compile(optimizer=modeling.build_optimizer(modeling.modality_optimizer_config(config, m),
                                                           name=f"{m}_optimizer"),
                        jit_compile=jit)
            stream = make_training_stream(split, batch_size=batch, num_classes=feature_set.num_classes,
                                          modalities=[m], seed=config.seed, first_epoch=0,
                                          epochs=stream_epochs(full_steps, k),
                                          drop_remainder=config.train.drop_remainder,
                                          shuffle_buffer=config.train.shuffle_buffer)
            trainers.append((chunk(net, stream, k, [cb.StopOnNonFinite()]), k, full_steps))
        return trainers
    full_steps = joint.steps_per_epoch(config, split)
    k = min(steps, full_steps)
    model = modeling.build_model(config, spec)
    modeling.compile_model(model, config, jit_compile=jit)
    epochs = stream_epochs(full_steps, k)
    stream = joint.training_stream(model, config, feature_set, first_epoch=0, epochs=epochs,
                                   steps_per_epoch=full_steps)
    callbacks, _ = joint.fit_callbacks(model, validation=None, steps_per_epoch=full_steps, epochs=epochs,
                                       log_dir=os.path.join(log_dir, "on" if jit else "off"))
    return [(chunk(model, stream, k, callbacks), k, full_steps)]


def _epoch_seconds(config, feature_set, steps: int, repeats: int) -> dict:
    """jit -> (wall seconds per epoch, CPU seconds per epoch, warm-up wall seconds beyond the steps' share), XLA off
    and on timed in alternation."""
    log_dir = tempfile.mkdtemp(prefix="train_step_speed-")  # TensorBoard's, removed at the end
    trainers = {jit: _trainers(config, feature_set, jit, steps, log_dir) for jit in (False, True)}
    first = {jit: [fit_chunk() for fit_chunk, _, _ in trainers[jit]] for jit in (False, True)}
    times = {jit: [[] for _ in trainers[jit]] for jit in (False, True)}
    for _ in range(repeats):
        for jit in (False, True):  # alternated, so that load from other jobs hits both alike
            for i, (fit_chunk, _, _) in enumerate(trainers[jit]):
                times[jit][i].append(fit_chunk())
    out = {}
    for jit in (False, True):
        epoch, cpu, warm = 0.0, 0.0, 0.0
        for (_, k, full_steps), chunk_times, first_time in zip(trainers[jit], times[jit], first[jit], strict=True):
            per_step = statistics.median(wall for wall, _ in chunk_times) / k
            epoch += per_step * full_steps
            cpu += statistics.median(cpu_s for _, cpu_s in chunk_times) / k * full_steps
            warm += max(0.0, first_time[0] - per_step * k)
        out[jit] = (epoch, cpu, warm)
    shutil.rmtree(log_dir, ignore_errors=True)
    return out


def epoch_table(methods, sets, steps: int, repeats: int) -> None:
    from tf_xmr import modeling
    from tf_xmr.experiment import load_experiment

    print(f"\nSeconds per training epoch (no validation pass), {os.cpu_count()} CPUs; {steps}-step chunks, XLA off "
          f"and on alternated, median of {repeats} after one warm-up chunk each; wall seconds (CPU seconds of the "
          "process in brackets: on a busy machine the wall time is inflated, the CPU time much less)")
    print("| method | " + " | ".join(f"{s} XLA off | {s} XLA on | {s} on/off" for s in sets) + " |")
    print("|---|" + "---|---|---|" * len(sets))
    compile_notes = []
    for method in methods:
        cells = []
        for data_set in sets:
            if data_set == "wikipedia" and not os.environ.get("TF_XMR_WIKIPEDIA"):
                cells += ["n/a (set TF_XMR_WIKIPEDIA)"] * 3
                continue
            config = load_experiment(_config_path(method, data_set), [])
            config, feature_set = modeling.prepare_data(config)
            timed = _epoch_seconds(config, feature_set, steps, repeats)
            (off, off_cpu, off_warm), (on, on_cpu, on_warm) = timed[False], timed[True]
            default = "on" if config.train.jit_compile else "off"
            cells += [f"{off:.2f} ({off_cpu:.2f})", f"{on:.2f} ({on_cpu:.2f})",
                      f"{on / off:.2f}x ({on_cpu / off_cpu:.2f}x); config: {default}"]
            compile_notes.append(f"{method}/{data_set}: warm-up chunk beyond its steps' share (tracing, compiling) "
                                 f"{off_warm:.1f} s without XLA, {on_warm:.1f} s with")
        print(f"| {method} | " + " | ".join(cells) + " |", flush=True)
    for note in compile_notes:
        print(f"  {note}")


def stall_table(runs: int, with_autotune: bool, epochs: int = 6) -> None:
    """Issue 20's check: last epoch end -> fit return of every SDML network fit, median and max over ``runs``."""
    import keras

    import tf_xmr.data.pipeline as pipeline
    from tf_xmr import modeling
    from tf_xmr.experiment import load_experiment
    from tf_xmr.training.independent import train_modality

    config = load_experiment(_config_path("sdml", "synthetic"), [f"train.epochs={epochs}", "train.verbose=0"])
    config, feature_set = modeling.prepare_data(config)
    spec = modeling.data_spec(config, feature_set)
    model_class = modeling.method_class(config)
    state = model_class.create_shared_state(config.model, spec, config.seed)
    shipped = pipeline._finish

    def autotuned(ds):
        # The stream as it was before issue 20's fix: tf.data autotuning on.
        import tensorflow as tf

        options = tf.data.Options()
        options.autotune.enabled = True
        return shipped(ds).with_options(options)

    variants = [("stream as built", shipped)] + ([("tf.data autotune on (before the fix)", autotuned)]
                                                if with_autotune else [])
    waits = {name: [] for name, _ in variants}
    fit_seconds = {name: [] for name, _ in variants}
    original_fit = keras.Model.fit
    now = {"run": 0, "variant": variants[0][0]}

    def timed_fit(self, *args, **kwargs):
        # The clock goes after train_modality's own callbacks (validation, backup), so its last epoch end is the
        # end of every epoch-end callback; the fit's frame, and the training iterator it owns, is gone at return.
        clock = _Clock()
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), clock]
        start = time.perf_counter()
        history = original_fit(self, *args, **kwargs)
        returned = time.perf_counter()
        waits[now["variant"]].append(returned - clock.ends[-1])
        fit_seconds[now["variant"]].append(returned - start)
        print(f"  run {now['run']} {now['variant']}: fit {returned - start:.1f} s, last epoch end -> return "
              f"{returned - clock.ends[-1]:.2f} s", flush=True)
        return history

    keras.Model.fit = timed_fit
    try:
        for run in range(runs):
            for name, finish in variants:  # interleaved, so that machine load hits both alike
                now.update(run=run, variant=name)
                pipeline._finish = finish
                for m in feature_set.modalities:
                    keras.backend.clear_session()
                    with tempfile.TemporaryDirectory() as out_dir:
                        train_modality(config, feature_set, spec, state, m, out_dir)
    finally:
        keras.Model.fit = original_fit
        pipeline._finish = shipped
    print(f"\nSDML (configs/sdml.yaml, {epochs} epochs): last epoch end -> fit returned, per network fit")
    print("| stream | fits | median (s) | max (s) | fits > 1 s | median fit (s) |")
    print("|---|---|---|---|---|---|")
    for name, values in waits.items():
        print(f"| {name} | {len(values)} | {statistics.median(values):.2f} | {max(values):.2f} | "
              f"{sum(v > 1.0 for v in values)} | {statistics.median(fit_seconds[name]):.1f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--steps", type=int, default=10, help="steps per timed chunk")
    parser.add_argument("--repeats", type=int, default=3, help="timed chunks after the warm-up chunk")
    parser.add_argument("--stall-runs", type=int, default=3)
    parser.add_argument("--stall-with-autotune", action="store_true")
    parser.add_argument("--skip-epochs", action="store_true")
    parser.add_argument("--skip-stall", action="store_true")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    sets = [s for s in args.sets.split(",") if s]
    for name, given, known in (("method", methods, METHODS), ("set", sets, SETS)):
        unknown = [g for g in given if g not in known]
        if unknown:
            parser.error(f"unknown {name} {unknown[0]!r} (choose from {', '.join(known)})")
    if args.steps < 1 or args.repeats < 1 or args.stall_runs < 1:
        parser.error("--steps, --repeats and --stall-runs must be positive")

    from tf_xmr.cli import quiet_tensorflow

    quiet_tensorflow()
    if not args.skip_epochs:
        epoch_table(methods, sets, args.steps, args.repeats)
    if not args.skip_stall:
        stall_table(args.stall_runs, args.stall_with_autotune)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

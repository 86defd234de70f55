"""Time ACMR training steps with and without XLA (train.jit_compile), to back the config default.

    python benchmarks/train_step_speed.py [--steps 60] [--repeats 3]

Prints ms per step (median of the repeats, after a warm-up epoch that includes tracing and compilation) for the
synthetic benchmark's dimensions (4096 / 300) and the Wikipedia features' (128 / 10), batch 64.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _time_fit(dims, jit: bool, steps: int, repeats: int, batch: int = 64) -> tuple[float, float]:
    import tensorflow as tf

    from tf_xmr.config import from_dict
    from tf_xmr.config.schema import OptimizerConfig
    from tf_xmr.methods.acmr import ACMR, ACMRConfig
    from tf_xmr.methods.base import DataSpec
    from tf_xmr.modeling import build_optimizer

    rng = np.random.default_rng(0)
    spec = DataSpec(("image", "text"), dims, 10)
    model = ACMR(from_dict(ACMRConfig, {}), spec)
    model.build_for_training()
    model.compile(optimizers={p.name: build_optimizer(OptimizerConfig(), p.learning_rate_scale)
                              for p in model.players()}, jit_compile=jit)
    n = steps * batch
    data = {m: rng.normal(size=(n, d)).astype(np.float32) for m, d in dims.items()}
    data["labels"] = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(batch).cache()
    start = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)
        times.append((time.perf_counter() - start) / steps * 1000)
    return float(np.median(times)), first


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"ACMR train step, batch 64, {os.cpu_count()} CPUs, {args.steps} steps per timed epoch")
    print("| features | jit_compile | ms / step (median) | first epoch incl. compile (s) |")
    print("|---|---|---|---|")
    for name, dims in (("synthetic 4096/300", {"image": 4096, "text": 300}),
                       ("wikipedia 128/10", {"image": 128, "text": 10})):
        for jit in (False, True):
            per_step, first = _time_fit(dims, jit, args.steps, args.repeats)
            print(f"| {name} | {jit} | {per_step:.1f} | {first:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train one config under several seeds and print validation/test mAP per seed with mean and spread.

    python benchmarks/seeds.py --config configs/wikipedia/acmr.yaml --seeds 0 1 2 \
        --set data.root=../shared/data/wikipedia [--out saved_models/seeds]

Each seed is a full, ordinary run (its own run directory): the checkpoint is chosen on validation mAP and the test
split is scored once with it. The table reports the primary protocol (cosine, whole ranking by default) and every
preset the config lists in eval.extra_presets.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks._runs import run_parent, train_run  # noqa: E402 - needs the sys.path insert above


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=None, help="parent folder of the per-seed run directories")
    args = parser.parse_args(argv)

    from tf_xmr.config.schema import config_name

    out = run_parent(args.out, f"seeds-{config_name(args.config)}")
    rows = []
    for seed in args.seeds:
        metrics = train_run(args.config, args.overrides, seed=seed, run_dir=os.path.join(out, f"seed{seed}"))
        rows.append((seed, metrics))
        print(f"seed {seed}: val map_avg {metrics['val']['map_avg']:.4f} (epoch {metrics['val']['best_epoch']}), "
              f"test map_avg {metrics['test']['map_avg']:.4f}", flush=True)

    directions = [k for k in rows[0][1]["test"] if k.startswith("map_")]
    print()
    print(f"config: {args.config} {' '.join(args.overrides)}")
    print(f"protocol: {rows[0][1]['protocol']}")
    header = "| seed | best epoch | " + " | ".join(f"val {d[4:]}" for d in directions) + " | " + \
        " | ".join(f"test {d[4:]}" for d in directions) + " |"
    print(header)
    print("|" + "---|" * (2 + 2 * len(directions)))
    for seed, m in rows:
        print(f"| {seed} | {m['val']['best_epoch']} | " + " | ".join(f"{m['val'][d]:.4f}" for d in directions)
              + " | " + " | ".join(f"{m['test'][d]:.4f}" for d in directions) + " |")
    for label, fn in (("mean", np.mean), ("std", np.std)):
        print(f"| {label} | | " + " | ".join(f"{fn([m['val'][d] for _, m in rows]):.4f}" for d in directions)
              + " | " + " | ".join(f"{fn([m['test'][d] for _, m in rows]):.4f}" for d in directions) + " |")
    for preset in rows[0][1].get("presets", {}):
        values = {d: [m["presets"][preset]["test"][d] for _, m in rows] for d in directions}
        cells = ", ".join(f"{d[4:]} {np.mean(v):.4f} ± {np.std(v):.4f}" for d, v in values.items())
        print(f"test with preset {preset} (mean ± std over seeds): {cells}")
    print(f"run directories under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

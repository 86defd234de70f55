"""JFSE distribution-alignment schemes side by side (the paper's Table 2): CMPM, CMMD, CMCA under one config.

    python benchmarks/jfse_alignment.py --config configs/wikipedia/jfse.yaml --seeds 0 \
        --set data.root=../shared/data/wikipedia [--schemes cmpm cmmd cmca] [--out saved_models/jfse-alignment]

Each (scheme, seed) is a full, ordinary run with ``model.alignment=<scheme>`` (checkpoint chosen on validation mAP,
test scored once with it); every other setting, the alignment weights included, comes from the config, so the table
compares the schemes at the weights tuned for the config's default scheme (state that when quoting it).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks._runs import mean_std, run_parent, train_run  # noqa: E402 - needs the sys.path insert above


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--schemes", nargs="+", default=["cmpm", "cmmd", "cmca"], choices=["cmpm", "cmmd", "cmca"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=None, help="parent folder of the run directories")
    args = parser.parse_args(argv)

    from tf_xmr.config.schema import config_name

    out = run_parent(args.out, f"jfse-alignment-{config_name(args.config)}")
    results = {}
    for scheme in args.schemes:
        for seed in args.seeds:
            metrics = train_run(args.config, [*args.overrides, f"model.alignment={scheme}"], seed=seed,
                                run_dir=os.path.join(out, f"{scheme}-seed{seed}"))
            results.setdefault(scheme, []).append(metrics)
            print(f"{scheme} seed {seed}: val map_avg {metrics['val']['map_avg']:.4f} (epoch "
                  f"{metrics['val']['best_epoch']}), test i2t {metrics['test']['map_i2t']:.4f} "
                  f"t2i {metrics['test']['map_t2i']:.4f} avg {metrics['test']['map_avg']:.4f}", flush=True)

    print()
    print(f"config: {args.config} {' '.join(args.overrides)}; seeds {args.seeds}")
    print(f"protocol: {next(iter(results.values()))[0]['protocol']}")
    print("| scheme | val avg | test i2t | test t2i | test avg |")
    print("|---|---|---|---|---|")
    for scheme, runs in results.items():
        cells = []
        for split, key in (("val", "map_avg"), ("test", "map_i2t"), ("test", "map_t2i"), ("test", "map_avg")):
            cells.append(mean_std([m[split][key] for m in runs]))
        print(f"| {scheme} | " + " | ".join(cells) + " |")
    print(f"run directories under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

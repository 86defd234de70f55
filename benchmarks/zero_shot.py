"""Zero-shot retrieval side by side: JFSE with and without unseen-class synthesis, and ACMR, on one seen/unseen split.

    python benchmarks/zero_shot.py --data wikipedia --seeds 0 1 2 --set data.root=../shared/data/wikipedia \
        [--methods jfse jfse_no_synthesis acmr] [--out saved_models/zero-shot]
    python benchmarks/zero_shot.py --data synthetic --seeds 0

Every (method, seed) is a full, ordinary run (checkpoint chosen on seen-class validation mAP, the whole test split
scored once with it) with ``data.unseen_classes: 0.5``; the unseen classes are drawn from the run seed, so the
methods of one seed share the split. The table gives, per direction and averaged over seeds: zero-shot mAP (unseen
queries against unseen targets) next to a random ranking's on the same items, standard (seen -> seen) mAP, and the
generalised zero-shot harmonic mean H of the seen- and unseen-query mAP (all targets), with its random level.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks._runs import mean_std, run_parent, train_run  # noqa: E402 - needs the sys.path insert above

# method label -> (config per data source, extra overrides)
METHODS = {
    "jfse": ({"synthetic": "configs/jfse_zero_shot.yaml", "wikipedia": "configs/wikipedia/jfse_zero_shot.yaml"}, []),
    "jfse_no_synthesis": ({"synthetic": "configs/jfse_zero_shot.yaml",
                           "wikipedia": "configs/wikipedia/jfse_zero_shot.yaml"}, ["model.synthesize_unseen=false"]),
    # ACMR cannot synthesise unseen classes: it learns from the seen classes only, under the same split.
    "acmr": ({"synthetic": "configs/acmr.yaml", "wikipedia": "configs/wikipedia/acmr.yaml"},
             ["data.unseen_classes=0.5"]),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("synthetic", "wikipedia"), default="synthetic")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="overrides applied to every run (e.g. data.root=..., train.epochs=...)")
    parser.add_argument("--method-set", dest="method_overrides", nargs=2, action="append", default=[],
                        metavar=("METHOD", "KEY=VALUE"),
                        help="an override for one method's runs only (jfse also covers jfse_no_synthesis)")
    parser.add_argument("--out", default=None, help="parent folder of the run directories")
    args = parser.parse_args(argv)

    out = run_parent(args.out, f"zero-shot-{args.data}")
    results = {}
    for seed in args.seeds:
        for label in args.methods:
            configs, extra = METHODS[label]
            own = [kv for method, kv in args.method_overrides if label.split("_")[0] == method]
            metrics = train_run(configs[args.data], [*extra, *args.overrides, *own], seed=seed,
                                run_dir=os.path.join(out, f"{label}-seed{seed}"))
            zs = metrics["zero_shot"]
            results.setdefault(label, []).append(zs)
            print(f"{label} seed {seed}: unseen {zs['unseen_class_names']}; zero-shot map_avg "
                  f"{zs['zero_shot']['map_avg']:.4f} (random {zs['random_ranking']['zero_shot']['map_avg']:.4f}), "
                  f"standard {zs['standard']['map_avg']:.4f}, GZS H {zs['generalized']['harmonic']['map_avg']:.4f}",
                  flush=True)

    first = next(iter(results.values()))[0]
    directions = [k for k in first["zero_shot"] if k.startswith("map_")]
    print()
    print(f"data: {args.data} {' '.join(args.overrides)}; seeds {args.seeds}; half the classes unseen (per seed)")
    header = "| method | " + " | ".join(
        f"{block} {d[4:]}" for block in ("ZS", "ZS random", "seen", "GZS-H", "GZS-H random") for d in directions
    ) + " |"
    print(header)
    print("|---|" + "---|" * (5 * len(directions)))
    for label, runs in results.items():
        cells = []
        for getter in (lambda r: r["zero_shot"], lambda r: r["random_ranking"]["zero_shot"],
                       lambda r: r["standard"], lambda r: r["generalized"]["harmonic"],
                       lambda r: r["random_ranking"]["generalized"]["harmonic"]):
            cells += [mean_std([getter(r)[d] for r in runs]) for d in directions]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"run directories under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

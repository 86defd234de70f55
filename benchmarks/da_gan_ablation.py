"""DA-GAN ablations (no attention, intra only, inter only, both) on Wikipedia and the synthetic benchmark, with the
upper bound of the paper's training-time form next to the honest retrieval-time number.

    TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/da_gan_ablation.py [--datasets wikipedia synthetic] [--seeds 0]
        [--variants none intra inter both] [--epochs N] [--data-root DIR] [--out-dir DIR]

Each (dataset, variant, seed) is one ordinary ``python train.py`` run in a fresh process (configs/da_gan.yaml or
configs/wikipedia/da_gan.yaml plus the variant's ``--set`` overrides): validation mAP of the retrieval-time encoders
picks the checkpoint, the test split is scored once. Then, in this process, the selected checkpoint is reloaded and
the test split is embedded twice more:

- ``retrieval`` (the reported number): ``model.encoders``, the query's own features only (class prototypes for
  zeta_bar, F without inter-attention), exactly what is exported;
- ``upper bound``: ``upper_bound_embeddings``, the paper's training-time form: zeta_bar from training items of the
  item's TRUE class, inter-attention with the item's TRUE partner. Leaks labels and pairs; not a retrieval result.

Protocols: mAP over the whole ranking, cosine, all relevant items (the project's default), and the DA-GAN paper's
mAP@50 (cosine, top 50, AP normalised by the relevant items retrieved in the top 50; spec 7.2). Also printed for the
full model: every retrieval-time reference variant of the same checkpoint on validation and test (choose on
validation). ``--out-dir`` keeps the run directories and makes an interrupted benchmark resume.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CONFIGS = {"wikipedia": "configs/wikipedia/da_gan.yaml", "synthetic": "configs/da_gan.yaml"}
VARIANTS = {
    "none": ("no attention", ["model.use_intra_attention=false", "model.use_inter_attention=false"]),
    "intra": ("intra only", ["model.use_inter_attention=false"]),
    "inter": ("inter only", ["model.use_intra_attention=false"]),
    "both": ("intra + inter (DA-GAN)", []),
}
REFERENCES = [  # (intra, inter) retrieval-time references, spec A1 / A2
    ("prototype_soft", "none"), ("prototype_nearest", "none"), ("prototype_mean", "none"), ("self", "none"),
    ("none", "none"), ("prototype_soft", "prototype_soft"), ("prototype_soft", "self"),
]


def _overrides(dataset, seed, run_dir, epochs, data_root, extra):
    sets = [f"run_dir={run_dir}", f"seed={seed}", "train.verbose=0", "export.enabled=false", *extra]
    if dataset == "wikipedia":
        sets.append(f"data.root={data_root}")
    if epochs is not None:
        sets.append(f"train.epochs={epochs}")
    return sets


def _train(config, sets, run_dir):
    if os.path.exists(os.path.join(run_dir, "metrics.json")):
        return True
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)
    command = [sys.executable, "train.py", "--config", config, *[a for s in sets for a in ("--set", s)]]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if result.returncode != 0:
        print(f"run failed ({' '.join(command)}):\n{result.stderr[-2000:]}", file=sys.stderr, flush=True)
    return result.returncode == 0


def _score_run(config_path, sets, run_dir, with_references):
    """Retrieval-time and upper-bound test scores of a finished run (and the reference variants)."""
    from tf_xmr.experiment import load_experiment
    from tf_xmr.methods.da_gan import upper_bound_embeddings
    from tf_xmr.metrics import RetrievalProtocol
    from tf_xmr.metrics.evaluator import score_embeddings
    from tf_xmr.modeling import build_model, data_spec, load_data
    from tf_xmr.scoring import embed_split

    protocols = {"all": RetrievalProtocol("cosine", None, "all_relevant"),
                 "at50": RetrievalProtocol("cosine", 50, "retrieved")}

    def load(extra=()):
        config = load_experiment(os.path.join(ROOT, config_path), [*sets, *extra])
        feature_set = load_data(config)
        model = build_model(config, data_spec(config, feature_set))
        model.load_weights(os.path.join(run_dir, "checkpoints", "best.weights.h5"))
        return config, feature_set, model

    def retrieval(model, feature_set, split):
        encoders = {m: (lambda x, e=model.encoders[m]: e(x, training=False)) for m in model.modalities}
        emb, lab = embed_split(feature_set.splits[split], encoders, batch_size=1024,
                               num_classes=feature_set.num_classes)
        return {k: score_embeddings(emb, lab, p, feature_set.modalities) for k, p in protocols.items()}

    config, feature_set, model = load()
    out = {"retrieval": retrieval(model, feature_set, "test")}
    emb, lab = upper_bound_embeddings(model, feature_set.splits["test"], feature_set.splits["train"],
                                      feature_set.num_classes, seed=config.seed)
    out["upper"] = {k: score_embeddings(emb, lab, p, feature_set.modalities) for k, p in protocols.items()}
    out["peak"] = _attention_peaks(model, feature_set, config.seed)
    if with_references:
        out["references"] = {}
        for intra, inter in REFERENCES:
            _, fs, variant = load([f"model.retrieval_intra_reference={intra}",
                                   f"model.retrieval_inter_reference={inter}"])
            out["references"][(intra, inter)] = {s: retrieval(variant, fs, s)["all"]["map_avg"]
                                                 for s in ("val", "test")}
    return out


def _attention_peaks(model, feature_set, seed):
    """p * mean_i max_j A_ij on the test split in the training-time form (1 = a uniform map, p = one-hot)."""
    import numpy as np

    from tf_xmr.data.feature_set import to_multi_hot
    from tf_xmr.data.grouping import SemanticGroups, group_key

    test, mods = feature_set.splits["test"], model.modalities
    feats = {m: np.asarray(test.features[m], np.float32) for m in mods}
    peaks = {}
    if model.intra:
        labels = to_multi_hot(test.labels[mods[0]], feature_set.num_classes).astype(np.float32)
        groups = SemanticGroups.from_split(feature_set.splits["train"], feature_set.num_classes, mods).sample(
            feats, labels, model.config.group_size, seed, exclude_anchor=False)
        maps = [model.intra[m].attention_map(model._zeta(m, feats[m], False),
                                             model._group_mean(m, groups[group_key(m)])).numpy() for m in mods]
        peaks["intra"] = float(np.mean([a.max(1).mean() * a.shape[1] for a in maps]))
    if model.inter:
        common = model.training_form(feats)["common"]
        maps = [model.inter[m].attention_map(common[m], common[model.other[m]]).numpy() for m in mods]
        peaks["inter"] = float(np.mean([a.max(1).mean() * a.shape[1] for a in maps]))
    return peaks


def _ms(values):
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {std:.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(CONFIGS), default=["wikipedia", "synthetic"])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: the config's)")
    parser.add_argument("--data-root", default=os.environ.get("TF_XMR_WIKIPEDIA", "../shared/data/wikipedia"))
    parser.add_argument("--out-dir", default=None, help="keep the run directories here (default: temporary)")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra --set for every run")
    args = parser.parse_args(argv)

    data_root = os.path.abspath(os.path.join(ROOT, args.data_root))
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="da_gan_ablation-")
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    tables = {}
    try:
        for dataset in args.datasets:
            rows = []
            for name in args.variants:
                label, variant_sets = VARIANTS[name]
                per_seed = []
                for seed in args.seeds:
                    t0 = time.perf_counter()
                    run_dir = os.path.join(out_dir, f"{dataset}-{name}-seed{seed}")
                    sets = _overrides(dataset, seed, run_dir, args.epochs, data_root, [*variant_sets, *args.extra])
                    if not _train(CONFIGS[dataset], sets, run_dir):
                        continue
                    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as handle:
                        metrics = json.load(handle)
                    scores = _score_run(CONFIGS[dataset], sets, run_dir, with_references=name == "both")
                    scores["val"] = metrics["val"]["map_avg"]
                    scores["epoch"] = metrics["val"]["best_epoch"]
                    per_seed.append(scores)
                    print(f"[{dataset} {name} seed {seed}] val {scores['val']:.4f} (epoch {scores['epoch']}), test "
                          f"retrieval {scores['retrieval']['all']['map_avg']:.4f}, upper bound "
                          f"{scores['upper']['all']['map_avg']:.4f} ({time.perf_counter() - t0:.0f}s)",
                          file=sys.stderr, flush=True)
                rows.append((name, label, per_seed))
            tables[dataset] = rows
    finally:
        if args.out_dir is None:
            shutil.rmtree(out_dir, ignore_errors=True)

    epochs = f"{args.epochs} epochs" if args.epochs else "the config's epochs"
    for dataset, rows in tables.items():
        print(f"\nDA-GAN ablation, {dataset} ({CONFIGS[dataset]} {' '.join(args.extra)}), seeds {args.seeds}, "
              f"{epochs}; test split, checkpoint chosen on validation mAP (retrieval-time encoders).\n")
        print("| variant | val mAP avg | retrieval mAP i2t | t2i | avg | retrieval mAP@50 avg "
              "| upper bound mAP avg | upper bound mAP@50 avg | attention peak intra / inter |")
        print("|---|---|---|---|---|---|---|---|---|")
        for _name, label, per_seed in rows:
            if not per_seed:
                print(f"| {label} (failed) |" + " - |" * 8)
                continue
            cells = [_ms([s["val"] for s in per_seed])]
            cells += [_ms([s["retrieval"]["all"][k] for s in per_seed]) for k in ("map_i2t", "map_t2i", "map_avg")]
            cells.append(_ms([s["retrieval"]["at50"]["map_avg"] for s in per_seed]))
            cells.append(_ms([s["upper"]["all"]["map_avg"] for s in per_seed]))
            cells.append(_ms([s["upper"]["at50"]["map_avg"] for s in per_seed]))
            cells.append(" / ".join(_ms([s["peak"][k] for s in per_seed]) if k in per_seed[0]["peak"] else "-"
                                    for k in ("intra", "inter")))
            print(f"| {label} | " + " | ".join(cells) + " |")
        for name, _label, per_seed in rows:
            if name != "both" or not per_seed or "references" not in per_seed[0]:
                continue
            print(f"\nRetrieval-time references of the full model's checkpoint (mAP avg, whole ranking), {dataset}:\n")
            print("| zeta_bar at retrieval | inter-attention at retrieval | val | test |")
            print("|---|---|---|---|")
            for key in REFERENCES:
                print(f"| {key[0]} | {key[1]} | {_ms([s['references'][key]['val'] for s in per_seed])} | "
                      f"{_ms([s['references'][key]['test'] for s in per_seed])} |")
    print("\nretrieval = exported encoders (query features only); upper bound = the paper's training-time form with "
          "the TRUE class group and the TRUE partner (leaks labels and pairs). mAP = whole ranking, cosine, all "
          "relevant; mAP@50 = cosine, top 50, normalised by hits in the top 50 (the DA-GAN tables' convention). "
          "Attention peak = p * mean max_j A_j on the test split in the training-time form: 1 = uniform map "
          "(x * (1 + A) is then a constant rescale), p = all weight on one position. "
          f"Total {time.perf_counter() - start:.0f}s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The results report: every method over several seeds, honest vs test-selected mAP, published numbers, references.

    python benchmarks/report.py --data-root ../shared/data/wikipedia --seeds 0 1 2 [--reuse] [--readme README.md]
    python benchmarks/report.py --data synthetic --seeds 0 [--reuse]

For each method (configs/<dataset>/<method>.yaml; synthetic: configs/<method>.yaml) and seed it trains one ordinary
run (checkpoint chosen on validation, test scored once) into ``<out>/<method>/seed<k>/`` with ``eval.epoch_trace``
on, so the run also records val and test mAP after every epoch (for this report only; selection never reads it).
``--reuse`` reads finished runs instead of training them again (their config must equal the one asked for), so
regenerating the report after a change of its text or figures takes a minute.

It writes ``docs/results/<dataset>.md`` and its figures (``docs/results/<dataset>/*.png``):

- per method, mean ± std over seeds (population std, as benchmarks/seeds.py) of the honest test mAP (i2t, t2i, avg);
  what test-set selection would report: the test mAP of the epoch with the best test avg, and the gap;
- the published number with its convention and the runs scored under the matching protocol (mAP@50 over hits,
  euclidean where the authors' code ranked that way; from metrics.json's presets);
- references on the same split and protocol: random ranking, linear CCA, the plain supervised MLP
  (benchmarks/references.py);
- figures: precision-recall and precision@k for every method per direction, val/test mAP per epoch (one seed per
  method), the 2-D PCA picture of one run's test common space, and the honest vs test-selected bars (in the README).

``--readme README.md`` also rewrites the README's results table (between its ``<!-- report:<dataset> -->`` markers)
with the report's table; tests/test_readme.py checks that the two agree.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

METHODS = ("acmr", "x_gacmn", "sdml", "jfse", "da_gan")
NAMES = {"acmr": "ACMR", "x_gacmn": "X-GACMN", "sdml": "SDML", "jfse": "JFSE", "da_gan": "DA-GAN"}
# Both extra protocols are scored for every run, so each method's published convention is at hand.
PRESETS = ("acmr_demo", "map50_cosine")
PRESET_TEXT = {
    "default": "cosine, mAP over the whole ranking (this project's protocol)",
    "acmr_demo": "euclidean, mAP@50 normalised by the hits in the top 50 (the ACMR authors' demo code)",
    "map50_cosine": "cosine, mAP@50 normalised by the hits in the top 50 (DA-GAN's tables, DSCMR's code)",
}
# Published Wikipedia numbers (i2t, t2i, avg), the protocol that matches the authors' convention, and why they are
# or are not comparable with these features and this split. Sources: shared/specs/<method>.md and
# shared/data/wikipedia/README.md.
PUBLISHED = {
    "wikipedia": {
        "acmr": ((0.366, 0.277, 0.322), "acmr_demo",
                 "ACMR Table 2, shallow features; the paper states a 1300/1566 split and no mAP convention (the "
                 "authors' demo code: euclidean mAP@50 over hits)"),
        "x_gacmn": ((0.326, 0.241, 0.284), "default",
                    "X-GACMN Table 1, these shallow features and this 2173/693 split; 'mAP' without a cut-off, read "
                    "as the whole ranking"),
        "sdml": ((0.522, 0.488, 0.505), "default",
                 "SDML Table 3, mAP@all, but on VGG-19 fc7 + Doc2Vec features (not these) and a 2173/231/462 "
                 "split: not comparable"),
        "jfse": ((0.527, 0.484, 0.506), "default",
                 "JFSE Table 2 (CMPM), MAP@all, on VGG + CNN text features and a 2173/462 split: not comparable; "
                 "the authors' code keeps the best test mAP"),
        "da_gan": ((0.543, 0.639, 0.591), "map50_cosine",
                   "DA-GAN Table 2, mAP@50, on deep (VGG) features: not comparable"),
    },
}
REFERENCE_NAMES = ("random", "CCA", "MLP")


# ----------------------------------------------------------------------------------------------------------------
# Runs


def method_config(dataset: str, method: str) -> str:
    return os.path.join("configs", "wikipedia", f"{method}.yaml") if dataset == "wikipedia" else \
        os.path.join("configs", f"{method}.yaml")


def run_overrides(args, seed: int, run_dir: str) -> list[str]:
    base = [f"seed={seed}", f"run_dir={run_dir}", "train.verbose=0", "eval.epoch_trace=true",
            f"eval.extra_presets=[{', '.join(PRESETS)}]"]
    if args.data == "wikipedia":
        base.append(f"data.root={args.data_root}")
    return [*base, *args.overrides]


def finished(run_dir: str) -> bool:
    return os.path.exists(os.path.join(run_dir, "metrics.json"))


def check_reusable(run_dir: str, config) -> None:
    """A finished run is reused only when it was trained with exactly the config asked for now."""
    from tf_xmr.config import to_dict
    from tf_xmr.errors import ConfigError
    from tf_xmr.run_dir import diff_keys, load_run_config

    stored = to_dict(load_run_config(run_dir))
    wanted = to_dict(config)
    # data.root is resolved to an absolute path when a run starts; compare where it points.
    for d in (stored, wanted):
        if d.get("data", {}).get("root"):
            d["data"]["root"] = os.path.realpath(d["data"]["root"])
    changed = sorted(diff_keys(stored, wanted))
    if changed:
        raise ConfigError(f"{run_dir} was trained with another config ({', '.join(changed[:5])} differ); remove it, "
                          "or choose another --out")
    if not os.path.exists(os.path.join(run_dir, "epoch_trace.json")):
        raise ConfigError(f"{run_dir} has no epoch_trace.json (trained without eval.epoch_trace); remove it")


def ensure_run(args, method: str, seed: int) -> dict:
    """Train (or, with --reuse, read) one run; its metrics and wall time."""
    from tf_xmr.errors import ConfigError
    from tf_xmr.experiment import load_experiment
    from tf_xmr.training.pipeline import train

    config_path = method_config(args.data, method)
    run_dir = os.path.join(args.out, method, f"seed{seed}")
    config = load_experiment(config_path, run_overrides(args, seed, run_dir))
    timing_path = os.path.join(args.out, method, f"seed{seed}.time.json")
    if finished(run_dir):
        if not args.reuse:
            raise ConfigError(f"{run_dir} holds a finished run: pass --reuse to read it, or choose another --out")
        check_reusable(run_dir, config)
        print(f"{method} seed {seed}: reusing {run_dir}", flush=True)
    else:
        print(f"{method} seed {seed}: training {config_path} into {run_dir}", flush=True)
        start = time.perf_counter()
        train(config, config_path=config_path)
        write(timing_path, json.dumps({"seconds": round(time.perf_counter() - start, 1),
                                       "finished": datetime.datetime.now().isoformat(timespec="seconds")}))
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as handle:
        metrics = json.load(handle)
    with open(os.path.join(run_dir, "epoch_trace.json"), encoding="utf-8") as handle:
        trace = json.load(handle)
    seconds = None
    if os.path.exists(timing_path):
        with open(timing_path, encoding="utf-8") as handle:
            seconds = json.load(handle)["seconds"]
    return {"run_dir": run_dir, "metrics": metrics, "trace": trace, "seconds": seconds, "config": config}


def write(path: str, text: str) -> None:
    from tf_xmr.files import atomic_write_text

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write_text(path, text)


# ----------------------------------------------------------------------------------------------------------------
# Numbers


def directions_of(metrics: dict) -> list[str]:
    return [k[len("map_"):] for k in metrics["test"] if k.startswith("map_") and k != "map_avg"]


def summarise(method: str, runs: list[dict]) -> dict:
    """Mean ± std over seeds of the honest test mAP, the test-selected one, the presets; epochs."""
    from tf_xmr.training.trace import best_epochs

    dirs = directions_of(runs[0]["metrics"]) + ["avg"]
    honest = {d: [r["metrics"]["test"][f"map_{d}"] for r in runs] for d in dirs}
    selected, chosen, best_test = {d: [] for d in dirs}, [], []
    for r in runs:
        best = best_epochs(r["trace"])["test"]
        best_test.append(best["epoch"])
        for d in dirs:
            selected[d].append(best["test"][f"map_{d}"])
        chosen.append(r["metrics"]["val"]["best_epoch"])
        check_trace_consistency(method, r)
    presets = {p: {d: [r["metrics"]["presets"][p]["test"][f"map_{d}"] for r in runs] for d in dirs}
               for p in PRESETS}
    presets["default"] = honest
    return {"dirs": dirs, "honest": honest, "selected": selected, "chosen": chosen, "best_test": best_test,
            "presets": presets, "seconds": [r["seconds"] for r in runs],
            "epochs_trained": [len(r["trace"]["epochs"]) for r in runs]}


def check_trace_consistency(method: str, run: dict) -> None:
    """For a jointly trained method the chosen checkpoint is the weights of its epoch, so the trace's test mAP at
    that epoch must be the honest number (the same embeddings, the same metric): a check that the report compares
    like with like."""
    chosen = run["metrics"]["val"]["best_epoch"]
    if not isinstance(chosen, int):
        return  # SDML: one epoch per modality network, not one point of the lockstep trace
    entry = next((e for e in run["trace"]["epochs"] if e["epoch"] == chosen), None)
    honest = run["metrics"]["test"]["map_avg"]
    if entry is None or abs(entry["test"]["map_avg"] - honest) > 1e-6:
        raise RuntimeError(f"{method} {run['run_dir']}: the epoch trace at the chosen epoch {chosen} does not "
                           f"reproduce the honest test mAP {honest} ({entry and entry['test']['map_avg']})")


def cell(values, digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def gap_cell(values) -> str:
    """A signed mean ± std of differences (best-on-test minus honest)."""
    return f"{np.mean(values):+.3f}" + (f" ± {np.std(values):.3f}" if len(values) > 1 else "")


def epochs_cell(values) -> str:
    return ", ".join(str(v) if not isinstance(v, dict) else "/".join(str(x) for x in v.values()) for v in values)


# ----------------------------------------------------------------------------------------------------------------
# References


def references(args, seeds, first_config) -> dict:
    """Random ranking, CCA and the MLP on the same splits (one per seed: the validation carve is seeded)."""
    import dataclasses

    from benchmarks.references import cca_reference, mlp_reference, random_reference
    from tf_xmr.modeling import prepare_data

    out = {name: [] for name in REFERENCE_NAMES}
    for seed in seeds:
        config = dataclasses.replace(first_config, seed=seed)
        # The raw features: the MLP standardises with train statistics itself, and CCA whitens each view.
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, standardize="none"))
        _, feature_set = prepare_data(config)
        out["random"].append(random_reference(feature_set, seed=seed))
        out["CCA"].append(cca_reference(feature_set))
        out["MLP"].append(mlp_reference(feature_set, seed=seed))
        print(f"references seed {seed}: random {out['random'][-1]['test']['map_avg']:.4f}, CCA "
              f"{out['CCA'][-1]['test']['map_avg']:.4f}, MLP {out['MLP'][-1]['test']['map_avg']:.4f}", flush=True)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Figures


def figures(args, summaries, runs, refs, figure_dir: str, dataset_label: str) -> dict:
    """Draw every figure; returns name -> path relative to the report."""
    from benchmarks import report_figures as rf
    from tf_xmr.evaluation import evaluate_run, retrieval_curves

    written = {}
    # Precision-recall and precision@k of seed 0 of every method (re-embedded from the run; its test mAP must be
    # metrics.json's), with the references' curves from their own embeddings. The first method's embeddings are
    # kept for the picture of the common space.
    curves, space = {}, None
    for method, method_runs in runs.items():
        run = method_runs[0]
        result = evaluate_run(run["run_dir"], curves=True, keep_embeddings=space is None)
        for d in summaries[method]["dirs"][:-1]:
            stored, again = run["metrics"]["test"][f"map_{d}"], result["test"][f"map_{d}"]
            if abs(stored - again) > 1e-5:
                raise RuntimeError(f"{method}: re-embedding {run['run_dir']} gives test map_{d} {again}, metrics.json "
                                   f"{stored}")
        for d, c in result["curves"].items():
            curves.setdefault(d, {})[NAMES[method]] = {"pr": c["pr"], "pk": c["scope"]}
        if space is None:
            space = (method, run, result)
    for name in ("CCA", "MLP"):  # the references with a common space (random rankings have a flat curve)
        embeddings, labels = refs[name][0]["test_embeddings"]
        for d, c in retrieval_curves(embeddings, labels, list(embeddings)).items():
            curves.setdefault(d, {})[name] = {"pr": c["pr"], "pk": c["scope"]}
    for d, by_method in curves.items():
        path = rf.curves_figure(by_method, f"{d}, {dataset_label} test split (seed {args.seeds[0]})",
                                os.path.join(figure_dir, f"curves_{d}.png"), references=REFERENCE_NAMES)
        written[f"curves_{d}"] = path

    traces = {}
    for method, method_runs in runs.items():
        run, s = method_runs[0], summaries[method]
        entries = run["trace"]["epochs"]
        chosen = s["chosen"][0]
        traces[NAMES[method]] = {
            "epochs": [e["epoch"] for e in entries],
            "val": [e["val"].get("map_avg") if e.get("val") else None for e in entries],
            "test": [e["test"]["map_avg"] for e in entries],
            "chosen_epoch": chosen if isinstance(chosen, int) else None,
            "best_test_epoch": s["best_test"][0],
        }
        if not isinstance(chosen, int):
            # SDML: each network at its own epoch (least validation loss), so the honest number is no point of the
            # lockstep curve; it is drawn as a level.
            traces[NAMES[method]].update(
                honest_test=run["metrics"]["test"]["map_avg"],
                note="networks chosen on val loss at epochs " + "/".join(str(v) for v in chosen.values()))
    written["epochs"] = rf.epoch_figure(traces, os.path.join(figure_dir, "epochs.png"),
                                        title=f"Validation and test mAP (avg) per epoch, seed {args.seeds[0]}")

    method, run, result = space
    embeddings, labels = result["embeddings"]
    written["space"] = rf.space_figure(
        embeddings, {m: np.argmax(v, axis=1) for m, v in labels.items()}, result["class_names"],
        os.path.join(figure_dir, "space.png"), normalize=run["config"].eval.distance == "cosine",
        title=f"{NAMES[method]} common space, {dataset_label} test split (seed {args.seeds[0]}), PCA")

    rows = {NAMES[m]: {"honest": (np.mean(s["honest"]["avg"]), np.std(s["honest"]["avg"])),
                       "test_selected": (np.mean(s["selected"]["avg"]), np.std(s["selected"]["avg"]))}
            for m, s in summaries.items()}
    for name in REFERENCE_NAMES:
        values = [r["test"]["map_avg"] for r in refs[name]]
        rows[name] = {"honest": (np.mean(values), np.std(values)), "test_selected": None}
    written["bars"] = rf.method_bar_figure(rows, os.path.join(figure_dir, "methods.png"),
                                           title=f"{dataset_label}: test mAP avg, honest vs best-on-test epoch")
    return written


# ----------------------------------------------------------------------------------------------------------------
# Markdown


def readme_table(summaries, refs, dataset: str) -> str:
    """The compact table the README shows (the report's first table without the epochs)."""
    lines = ["| method | test i2t | test t2i | test avg (honest) | best-on-test avg (not used) | gap | published |",
             "|---|---|---|---|---|---|---|"]
    for method, s in summaries.items():
        gap = [b - h for b, h in zip(s["selected"]["avg"], s["honest"]["avg"], strict=True)]
        published = PUBLISHED.get(dataset, {}).get(method)
        pub = f"{published[0][2]:.3f} ({published[1]})" if published else "–"
        lines.append(f"| {NAMES[method]} | {cell(s['honest'][s['dirs'][0]])} | {cell(s['honest'][s['dirs'][1]])} | "
                     f"**{cell(s['honest']['avg'])}** | {cell(s['selected']['avg'])} | {np.mean(gap):+.3f} | {pub} |")
    for name in REFERENCE_NAMES:
        values = refs[name]
        dirs = [k for k in values[0]["test"] if k.startswith("map_") and k != "map_avg"]
        lines.append(f"| {name} (reference) | {cell([v['test'][dirs[0]] for v in values])} | "
                     f"{cell([v['test'][dirs[1]] for v in values])} | {cell([v['test']['map_avg'] for v in values])} "
                     "| – | – | – |")
    return "\n".join(lines)


def markdown(args, summaries, runs, refs, figs, dataset_label: str, report_seconds: float) -> str:
    dataset = args.data
    first_run = next(iter(runs.values()))[0]
    dirs = next(iter(summaries.values()))["dirs"]
    out = [f"# Results: {dataset_label}", ""]
    out += [f"Generated by `{command_line(args)}` on {datetime.date.today().isoformat()} "
            f"({platform.machine()}, {os.cpu_count()} CPU cores, no GPU). Seeds: {', '.join(map(str, args.seeds))}.",
            "",
            f"Protocol: {PRESET_TEXT['default']}; relevant = shares a class; the test split is scored once with the "
            "checkpoint chosen on validation (a seeded, stratified 10% of the training set). mean ± std over seeds "
            "(population std).", "", f"Data (seed {args.seeds[0]}): {split_counts(first_run['run_dir'])}.", ""]
    out += ["## Every method", "", readme_table(summaries, refs, dataset), ""]
    out += ["- **test avg (honest)**: what this project reports.",
            "- **best-on-test avg**: the test mAP of the epoch with the best test mAP, scored after every epoch for "
            "this report only (`eval.epoch_trace`; never used for selection): what choosing the checkpoint on the "
            "test split, as some authors' code does, would claim. **gap** = its mean minus the honest mean.",
            "- **published**: the paper's number and the protocol that matches its convention (table below).", ""]
    out += ["Per direction, the best-on-test numbers (the epoch with the best test avg; one checkpoint per run, as "
            "test-set selection would keep) and their gap to the honest ones:", "",
            "| method | " + " | ".join(f"best-on-test {d}" for d in dirs) + " | "
            + " | ".join(f"gap {d}" for d in dirs) + " |", "|---" * (1 + 2 * len(dirs)) + "|"]
    for method, s in summaries.items():
        gaps = {d: [b - h for b, h in zip(s["selected"][d], s["honest"][d], strict=True)] for d in dirs}
        out.append(f"| {NAMES[method]} | " + " | ".join(cell(s["selected"][d]) for d in dirs) + " | "
                   + " | ".join(gap_cell(gaps[d]) for d in dirs) + " |")
    out += ["", "Epochs (per seed): chosen on validation / best on test / trained.", "",
            "| method | chosen on val | best on test | epochs trained | training time per run |",
            "|---|---|---|---|---|"]
    for method, s in summaries.items():
        secs = [x for x in s["seconds"] if x is not None]
        timing = f"{np.mean(secs) / 60:.1f} min" if secs else "–"
        out.append(f"| {NAMES[method]} | {epochs_cell(s['chosen'])} | {epochs_cell(s['best_test'])} | "
                   f"{epochs_cell(s['epochs_trained'])} | {timing} |")
    out.append("")
    if any(isinstance(c, dict) for s in summaries.values() for c in s["chosen"]):
        out += ["SDML chooses each modality network on its own validation loss (image/text epochs above); its trace "
                "pairs epoch e of both networks.", ""]

    out += ["## Published numbers and conventions", ""]
    if dataset in PUBLISHED:
        out += ["| method | published i2t / t2i / avg | source and convention | these runs under the matching "
                "protocol (i2t / t2i / avg) | protocol |", "|---|---|---|---|---|"]
        for method, s in summaries.items():
            pub = PUBLISHED[dataset].get(method)
            if not pub:
                continue
            (i2t, t2i, avg), preset, source = pub
            matched = " / ".join(cell(s["presets"][preset][d]) for d in dirs)
            out.append(f"| {NAMES[method]} | {i2t:.3f} / {t2i:.3f} / {avg:.3f} | {source} | {matched} | "
                       f"{PRESET_TEXT[preset]} |")
        out.append("")
    else:
        out += ["No published numbers exist for this dataset.", ""]
    out += ["Every run under every protocol (test avg, mean ± std):", "",
            "| method | " + " | ".join(["default", *PRESETS]) + " |", "|---" * (1 + 1 + len(PRESETS)) + "|"]
    for method, s in summaries.items():
        out.append(f"| {NAMES[method]} | " + " | ".join(cell(s["presets"][p]["avg"]) for p in ["default", *PRESETS])
                   + " |")
    out += ["", *(f"- `{p}`: {PRESET_TEXT[p]}" for p in ["default", *PRESETS]), ""]

    out += ["## References on the same split", "",
            "| reference | val avg | test i2t | test t2i | test avg | what it is |", "|---|---|---|---|---|---|"]
    what = {"random": "random Gaussian embeddings, mean of 20 draws: the chance level",
            "CCA": "linear CCA (closed form), regulariser chosen on validation",
            "MLP": "one supervised MLP classifier per modality, softmax posteriors compared "
                   "(benchmarks/synthetic_baseline.py)"}
    for name in REFERENCE_NAMES:
        values = refs[name]
        dirs = [k for k in values[0]["test"] if k.startswith("map_") and k != "map_avg"]
        out.append(f"| {name} | {cell([v['val']['map_avg'] for v in values])} | "
                   f"{cell([v['test'][dirs[0]] for v in values])} | {cell([v['test'][dirs[1]] for v in values])} | "
                   f"{cell([v['test']['map_avg'] for v in values])} | {what[name]} |")
    out.append("")

    out += ["## Figures", ""]
    first_method = NAMES[next(iter(runs))]
    captions = {
        "bars": "Honest test mAP (checkpoint chosen on validation) beside the best test mAP over epochs, mean ± std "
                "over seeds; the references in grey.",
        "epochs": f"Validation and test mAP per epoch (seed {args.seeds[0]}); solid line: the epoch chosen on "
                  "validation; dotted: the best epoch on test where it differs (never used); dashed level: the "
                  "honest number of a method whose networks are chosen at different epochs (SDML).",
        "space": f"The test split in {first_method}'s common space (seed {args.seeds[0]}; PCA of the "
                 "unit-normalised embeddings), coloured by class, one marker per modality.",
    }
    for name, path in figs.items():
        rel = os.path.relpath(path, os.path.dirname(args.report_path))
        caption = captions.get(name, f"Precision-recall (11-point interpolated) and precision@k, direction "
                                     f"{name.split('_', 1)[-1]}, every method (seed {args.seeds[0]}) and the CCA "
                                     "and MLP references.")
        out += [f"![{name}]({rel})", "", caption, ""]
    total = sum(x for s in summaries.values() for x in s["seconds"] if x is not None)
    out += ["## Runtime", "",
            f"Training the runs took {total / 60:.1f} min of wall time in all on this machine (the sum of each "
            "run's time when it was trained, per method above; runs that shared the two cores with other jobs took "
            f"longer); this report (references, re-embedding, figures) took {report_seconds / 60:.1f} min. With "
            "`--reuse` only the latter is spent.", ""]
    return "\n".join(out)


def split_counts(run_dir: str) -> str:
    with open(os.path.join(run_dir, "data.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    splits = summary.get("splits", {})
    return ", ".join(f"{name} " + " / ".join(f"{n} {m}" for m, n in split["counts"].items())
                     for name, split in splits.items())


def command_line(args) -> str:
    parts = ["python", "benchmarks/report.py"]
    parts += ["--data-root", args.data_root] if args.data == "wikipedia" else ["--data", args.data]
    parts += ["--seeds", *map(str, args.seeds)]
    for override in args.overrides:
        parts += ["--set", override]
    return " ".join(shlex.quote(p) for p in parts)


def readme_parts(path: str, dataset: str) -> tuple[str, str]:
    """The README's text before and after its ``<!-- report:<dataset> -->`` block (markers included), or a
    ConfigError naming the file (checked before any run is trained)."""
    from tf_xmr.errors import ConfigError

    begin, end = f"<!-- report:{dataset} -->", f"<!-- /report:{dataset} -->"
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"--readme {path}: cannot be read ({exc.strerror})") from None
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ConfigError(f"--readme {path}: needs exactly one {begin} ... {end} block to rewrite")
    head, rest = text.split(begin, 1)
    return head + begin, end + rest.split(end, 1)[1]


def update_readme(path: str, dataset: str, table: str) -> None:
    head, tail = readme_parts(path, dataset)
    write(path, f"{head}\n{table}\n{tail}")


# ----------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("wikipedia", "synthetic"), default=None,
                        help="the dataset (wikipedia when --data-root is given)")
    parser.add_argument("--data-root", default=None, help="the Wikipedia features folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="a config override applied to every method's runs (KEY=VALUE)")
    parser.add_argument("--reuse", action="store_true", help="read finished runs instead of training them again")
    parser.add_argument("--out", default=None, help="parent folder of the runs (default saved_models/report-<data>)")
    parser.add_argument("--docs", default=os.path.join("docs", "results"), help="where the report goes")
    parser.add_argument("--readme", default=None, help="also rewrite this README's results table")
    parser.add_argument("--runs-only", action="store_true", help="train (or check) the runs, write no report")
    args = parser.parse_args(argv)
    if args.data is None:
        args.data = "wikipedia" if args.data_root else "synthetic"
    if args.data == "wikipedia" and not args.data_root:
        parser.error("--data wikipedia needs --data-root DIR")
    args.out = args.out or os.path.join("saved_models", f"report-{args.data}")
    args.report_path = os.path.join(args.docs, f"{args.data}.md")
    dataset_label = {"wikipedia": "Wikipedia (128-d SIFT + 10-d LDA, 2173 / 693)",
                     "synthetic": "synthetic benchmark"}[args.data]

    from tf_xmr.errors import XmrError

    try:
        if args.readme:
            readme_parts(args.readme, args.data)  # a README without the block fails now, not after the training
        runs = {m: [ensure_run(args, m, seed) for seed in args.seeds] for m in args.methods}
        if args.runs_only:
            return 0
        start = time.perf_counter()
        summaries = {m: summarise(m, r) for m, r in runs.items()}
        refs = references(args, args.seeds, runs[args.methods[0]][0]["config"])
        figure_dir = os.path.join(args.docs, args.data)
        figs = figures(args, summaries, runs, refs, figure_dir, dataset_label)
        text = markdown(args, summaries, runs, refs, figs, dataset_label, time.perf_counter() - start)
    except XmrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write(args.report_path, text)
    table = readme_table(summaries, refs, args.data)
    if args.readme:
        update_readme(args.readme, args.data, table)
    print(table)
    print(f"report: {args.report_path}; figures: {figure_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Search hyperparameters of a cross-modal retrieval config on validation mAP (keras_tuner).

    python tune.py --config configs/tune/acmr.yaml [--set tune.max_trials=20 --set data.root=...]

The config's `tune:` section names the dotted keys to search and their ranges. Writes the tuner directory (trials,
trials.csv, best_config.yaml, TensorBoard HParams) and prints one row per trial; rerunning the same command continues
the search. The test split is never used.
"""

import argparse

from tf_xmr.cli import add_override_argument, quiet_tensorflow


def main(argv=None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config with a tune section (see configs/tune/)")
    add_override_argument(parser)
    args = parser.parse_args(argv)

    quiet_tensorflow()
    from tf_xmr.training.tuning import format_report, tune

    result = tune(args.config, args.overrides)
    print(format_report(result))
    return 0


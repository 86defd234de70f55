"""Train a cross-modal retrieval model from a YAML config.

    python train.py --config configs/acmr.yaml [--set train.epochs=5 --set data.root=...]

Writes the run directory (config.yaml, checkpoints/, logs/, metrics.json, export/) and prints the validation and test
mAP of the checkpoint selected on validation.
"""

import argparse

from tf_xmr.cli import add_override_argument, quiet_tensorflow


def main(argv=None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    add_override_argument(parser)
    args = parser.parse_args(argv)

    quiet_tensorflow()
    from tf_xmr.experiment import load_experiment
    from tf_xmr.reporting import format_table
    from tf_xmr.training.pipeline import train

    config = load_experiment(args.config, args.overrides)
    result = train(config, config_path=args.config)
    if result.run_dir is None:
        # A non-chief worker of a multi-worker run: the chief evaluates and writes the run directory.
        print("worker finished; the chief writes the run directory")
        return 0
    print(format_table(result.metrics, splits=("val", "test")))
    print(f"run directory: {result.run_dir}")
    return 0


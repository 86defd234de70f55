"""Search hyperparameters of a cross-modal retrieval config on validation mAP (keras_tuner).

    python tune.py --config configs/tune/acmr.yaml [--set tune.max_trials=20 --set data.root=...]

The config's `tune:` section names the dotted keys to search and their ranges. Writes the tuner directory (trials,
trials.csv, best_config.yaml, TensorBoard HParams) and prints one row per trial; rerunning the same command continues
the search. The test split is never used.

This script runs ``tf_xmr.commands.tune`` (installed as ``tf-xmr tune`` by ``pip install -e .``).
"""

from tf_xmr.cli import run
from tf_xmr.commands.tune import main

if __name__ == "__main__":
    run(main)

"""Train a cross-modal retrieval model from a YAML config.

    python train.py --config configs/acmr.yaml [--set train.epochs=5 --set data.root=...]

Writes the run directory (config.yaml, checkpoints/, logs/, metrics.json, export/) and prints the validation and test
mAP of the checkpoint selected on validation.

This script runs ``tf_xmr.commands.train`` (installed as ``tf-xmr train`` by ``pip install -e .``).
"""

from tf_xmr.cli import run
from tf_xmr.commands.train import main

if __name__ == "__main__":
    run(main)

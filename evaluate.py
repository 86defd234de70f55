"""Re-score a finished run and print a table.

    python evaluate.py --run-dir saved_models/acmr-20261123-120000 [--set eval.k=50 ...] [--preset acmr_demo]
                       [--split test] [--json] [--plot curves.png]

Uses the run's exported SavedModels (or, without exports, its best checkpoint) and the run's config, with any
``--set`` overrides (typically ``eval.*``, or ``data.root`` when the data moved).

This script runs ``tf_xmr.commands.evaluate`` (installed as ``tf-xmr evaluate`` by ``pip install -e .``).
"""

from tf_xmr.cli import run
from tf_xmr.commands.evaluate import main

if __name__ == "__main__":
    run(main)

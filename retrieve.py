"""Ask a run's retriever for the top k items of the other modality and print them.

    python retrieve.py --run-dir saved_models/acmr-20261207-120000 --query text --features Q.npy [--k 10] [--json]
    python retrieve.py --run-dir saved_models/acmr-20261207-120000 --query text --query-key <item id>

Build the retriever first: ``python -m tf_xmr.retrieval build --run-dir DIR --target image``.

This script runs ``tf_xmr.commands.retrieve`` (installed as ``tf-xmr retrieve`` by ``pip install -e .``).
"""

from tf_xmr.cli import run
from tf_xmr.commands.retrieve import main

if __name__ == "__main__":
    run(main)

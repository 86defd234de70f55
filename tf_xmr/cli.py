"""Shared command-line plumbing: quiet TensorFlow, ``--set`` parsing, and the error contract.

Errors caused by user input (``XmrError``) print one line ``error: ...`` to stderr and exit with status 2, without a
traceback; a Python traceback always means a bug in tf_xmr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable

#: ``tf-xmr <command>`` -> the module whose ``main(argv, prog)`` runs it (the same code as the top-level scripts).
COMMANDS = {
    "train": ("tf_xmr.commands.train", "train a method from a YAML config (python train.py)"),
    "evaluate": ("tf_xmr.commands.evaluate", "re-score a finished run (python evaluate.py)"),
    "tune": ("tf_xmr.commands.tune", "search hyperparameters on validation mAP (python tune.py)"),
    "export": ("tf_xmr.export.__main__", "export a run's best checkpoint as SavedModels (python -m tf_xmr.export)"),
    "retrieval": ("tf_xmr.retrieval.__main__", "build or extend a retriever SavedModel (python -m tf_xmr.retrieval)"),
    "retrieve": ("tf_xmr.commands.retrieve", "top k items of the other modality for a query (python retrieve.py)"),
    "featurize": ("tf_xmr.featurize.__main__", "raw images and texts -> feature records (python -m tf_xmr.featurize)"),
    "data": ("tf_xmr.data.__main__", "data utilities: convert a feature set to TFRecords (python -m tf_xmr.data)"),
}


# What TensorFlow's C++ runtime prints at import on every machine, before its log level applies ("All log messages
# before absl::InitializeLog() is called are written to STDERR"): none of it is actionable for a user.
_IMPORT_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "cudart_stub.cc",
    "cpu_feature_guard.cc",
    "To enable the following instructions",
    "oneDNN custom operations are on",
)


def _has_cuda_driver() -> bool:
    return os.path.exists("/proc/driver/nvidia/version")


def quiet_tensorflow() -> None:
    """Import TensorFlow without its start-up chatter, keeping every line that is not known noise.

    ``TF_CPP_MIN_LOG_LEVEL`` (unless the user set it) is 2, hiding C++ info and warning lines; on a machine without an
    NVIDIA driver it is 3, because the one error line TensorFlow then prints, "failed call to cuInit", only says that
    there is no GPU. The lines printed during the import itself ignore that level, so the import's stderr goes through
    a temporary file and only lines other than ``_IMPORT_NOISE`` are passed on.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if _has_cuda_driver() else "3")
    if "tensorflow" in sys.modules:
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401 - imported for its side effect, with stderr captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines():
                if line.strip() and not any(noise in line for noise in _IMPORT_NOISE):
                    print(line, file=sys.stderr)


def add_override_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value by dotted key, e.g. --set train.epochs=5 (repeatable; values parsed as YAML)",
    )


def run(main: Callable[[], int | None]) -> None:
    """Run ``main`` under the error contract and exit with its status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # TensorFlow's own Python INFO lines (checkpoint sharding timings, asset paths) are for its developers.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    # gensim logs every dictionary save and model pass at INFO (the text featurizers): progress lines say enough.
    logging.getLogger("gensim").setLevel(logging.WARNING)
    from tf_xmr.errors import XmrError

    try:
        status = main()
    except XmrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)


def main(argv=None) -> None:
    """``tf-xmr <command> [args]``: the console entry point installed by ``pip install -e .``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: tf-xmr {" + ",".join(COMMANDS) + "} ...\n\ncommands:\n" + "\n".join(
        f"  {name:<10}{help_}" for name, (_, help_) in COMMANDS.items())
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        sys.exit(0 if argv else 2)
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(COMMANDS[argv[0]][0])
    run(lambda: module.main(argv[1:], prog=f"tf-xmr {argv[0]}"))


if __name__ == "__main__":
    main()

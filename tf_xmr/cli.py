"""Shared command-line plumbing: quiet TensorFlow, ``--set`` parsing, and the error contract.

Errors caused by user input (``XmrError``) print one line ``error: ...`` to stderr and exit with status 2, without a
traceback; a Python traceback always means a bug in tf_xmr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable


def quiet_tensorflow() -> None:
    """Hide TensorFlow's C++ info lines (oneDNN, CPU features) unless the user asked for them."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def add_override_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value by dotted key, e.g. --set train.epochs=5 (repeatable; values parsed as YAML)",
    )


def run(main: Callable[[], int | None]) -> None:
    """Run ``main`` under the error contract and exit with its status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
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

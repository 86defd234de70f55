"""Test-only fault injection: act at a marked point of a training run, with no hook in production code.

A fault is a callback that runs an action at the start of batch ``step`` (0-based) of epoch ``epoch`` (1-based):
the weights have then been updated by ``step`` batches of that epoch and nothing of the epoch is saved. It reaches the
run by patching ``keras.Model.fit`` (every fit gets the callback first in its list), never through configuration or
the environment that a production run reads.

In this process::

    with at_step(2, 2, take_snapshot, network="text"):
        train(config)

In a subprocess, ``python -m tests.faults`` runs a CLI script with a fault installed; ``pause`` writes a marker file and
sleeps until the test kills the process::

    python -m tests.faults pause --epoch 2 --step 2 --marker /tmp/paused -- train.py --config configs/acmr.yaml ...
"""

from __future__ import annotations

import argparse
import contextlib
import os
import runpy
import sys
import time
from collections.abc import Callable

import keras


class SimulatedFault(RuntimeError):
    """The ``raise`` action: a bug-like crash (not a user error, so the CLI keeps the traceback)."""


class AtStep(keras.callbacks.Callback):
    """Calls ``action()`` at the start of batch ``step`` (0-based) of epoch ``epoch`` (1-based)."""

    def __init__(self, epoch: int, step: int, action: Callable[[], None]):
        super().__init__()
        self.epoch, self.step, self.action = int(epoch), int(step), action
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self._epoch + 1 == self.epoch and batch == self.step:
            self.action()


def raise_fault(epoch: int, step: int) -> Callable[[], None]:
    def action():
        raise SimulatedFault(f"simulated fault at epoch {epoch}, step {step}")

    return action


def pause(marker: str) -> Callable[[], None]:
    """Write ``marker`` (with the pid), then sleep until killed."""

    def action():
        with open(marker + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(f"pid={os.getpid()}\n")
        os.replace(marker + ".tmp", marker)  # the test polls for it: never half a file
        while True:
            time.sleep(1.0)

    return action


@contextlib.contextmanager
def at_step(epoch: int, step: int, action: Callable[[], None], network: str | None = None):
    """Every ``keras.Model.fit`` inside the block gets an ``AtStep`` fault as its first callback; with ``network``,
    only the fit of the model whose ``modality`` is ``network`` (one network of independent training, SDML)."""
    owned = "fit" in vars(keras.Model)
    original = keras.Model.fit

    def fit(self, *args, callbacks=None, **kwargs):
        callbacks = list(callbacks or [])
        if network is None or getattr(self, "modality", None) == network:
            callbacks.insert(0, AtStep(epoch, step, action))
        return original(self, *args, callbacks=callbacks, **kwargs)

    keras.Model.fit = fit
    try:
        yield
    finally:
        if owned:
            keras.Model.fit = original
        else:
            del keras.Model.fit


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: python -m tests.faults {pause,raise} --epoch E --step S [--marker PATH] "
                         "[--network NAME] -- SCRIPT [ARGS ...]")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m tests.faults")
    parser.add_argument("action", choices=["pause", "raise"])
    parser.add_argument("--epoch", type=int, required=True)
    parser.add_argument("--step", type=int, required=True)
    parser.add_argument("--marker")
    parser.add_argument("--network")
    args = parser.parse_args(argv[:split])
    script, *script_args = argv[split + 1:]
    if args.action == "pause":
        if not args.marker:
            parser.error("pause needs --marker")
        action = pause(args.marker)
    else:
        action = raise_fault(args.epoch, args.step)
    with at_step(args.epoch, args.step, action, network=args.network):
        sys.argv = [script, *script_args]
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()

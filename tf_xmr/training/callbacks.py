"""Training callbacks: validation retrieval with best-checkpoint selection, GRL schedule, logging, NaN guard,
TensorBoard epoch scalars."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable

import keras
import numpy as np

from tf_xmr.errors import XmrError
from tf_xmr.files import atomic_write_text

log = logging.getLogger("tf_xmr.training")


def atomic_save_weights(model: keras.Model, path: str) -> None:
    """``model.save_weights`` into a new file at a temporary name, then renamed onto ``path`` (Keras insists on the
    ``.weights.h5`` suffix).

    Always a NEW file: a training backup may hold a hard link to the current ``path`` (``tf_xmr.training.resume``),
    and a leftover at the temporary name (a killed process with the same pid) may be one too; h5py would truncate and
    rewrite such an inode in place, changing the backup after the fact. A failed write (disk full) leaves nothing.
    """
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{name}")
    if os.path.lexists(tmp):
        os.remove(tmp)
    # HDF5 does not survive running out of space mid-write (measured: an h5py traceback at garbage collection, then
    # a segfault at exit), so a write that cannot fit is refused before it starts. The file is the weights' bytes
    # plus HDF5 metadata, which stays well under the margin for these models.
    weights = getattr(model, "weights", ())  # (a stand-in model in a test may have none)
    needed = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in weights) * 1.05 + (256 << 10)
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise CheckpointWriteError(f"cannot write the checkpoint {path}: about {needed / 2**20:.1f} MiB needed, "
                                   f"{free / 2**20:.1f} MiB free; free some space and rerun the same command to resume")
    try:
        model.save_weights(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        reason = _write_failure(exc)
        if reason is not None:
            # The failed write's h5py objects live on in the traceback; freed here, their close fails the same way
            # and h5py would print that as an "Exception ignored" traceback after our one line.
            exc.__traceback__ = None
            _collect_quietly()
        if os.path.lexists(tmp):
            os.remove(tmp)
        if reason is not None:  # disk full, quota, a read-only file system: the operator's to fix, one line
            raise CheckpointWriteError(f"cannot write the checkpoint {path}: {reason}; free some space and rerun "
                                       "the same command to resume") from None
        raise


def _collect_quietly() -> None:
    import gc
    import sys

    hook = sys.unraisablehook
    sys.unraisablehook = lambda _: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


def _write_failure(exc: BaseException) -> str | None:
    """The reason of a failed file write, or None for any other error (a bug keeps its traceback)."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    # h5py reports a failed write at flush time as a RuntimeError quoting the C library's message.
    if isinstance(exc, RuntimeError) and "write failed" in str(exc):
        found = re.search(r"error message = '([^']*)'", str(exc))
        return found.group(1) if found else "write failed"
    return None


class CheckpointWriteError(XmrError):
    """A checkpoint could not be written (disk full); training stops, the previous checkpoint and backup stay."""

    exit_code = 1


class RetrievalValidation(keras.callbacks.Callback):
    """Scores the whole validation split every ``every`` epochs; keeps the best checkpoint; stops early.

    Adds ``val_map_<direction>`` and ``val_map_avg`` to the epoch logs (so TensorBoard and the progress bar show them)
    and must therefore come before the TensorBoard callback in the list. Model selection uses only this validation
    score; the test split is never touched during training.

    Args:
        evaluate: callable returning ``{"map_i2t": ..., "map_avg": ...}`` for the current weights on validation.
        checkpoint_dir: where ``best.weights.h5`` and ``best.json`` go.
        every: evaluate every this many epochs (and always after the last epoch).
        patience: stop after this many evaluations without improvement of ``map_avg`` (0 disables early stopping).
        min_delta: an improvement must exceed this.
        total_epochs: ``fit``'s epoch count, to know the last epoch.
        monitor: the key of ``evaluate``'s result that selects the checkpoint (``map_avg``; SDML: ``loss``).
        mode: ``"max"`` (a retrieval score) or ``"min"`` (a validation loss).
    """

    def __init__(self, evaluate: Callable[[], dict], checkpoint_dir: str, *, every: int, patience: int,
                 min_delta: float, total_epochs: int, monitor: str = "map_avg", mode: str = "max"):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.evaluate = evaluate
        self.checkpoint_dir = checkpoint_dir
        self.every = every
        self.patience = patience
        self.min_delta = min_delta
        self.total_epochs = total_epochs
        self.best_path = os.path.join(checkpoint_dir, "best.weights.h5")
        self.state_path = os.path.join(checkpoint_dir, "best.json")
        self.best = {"epoch": None, "val": None, "evaluations_since_best": 0}
        #: Set by the fit to a callable that is true once training failed (the NaN guard stopped it): Keras still
        #: ends the epoch, and scoring weights that are NaN would only bury the guard's message under a data error.
        self.skip: Callable[[], bool] | None = None

    def restore(self, best: dict) -> None:
        """Continue with the state saved in a training backup (``tf_xmr.training.resume``), never with best.json:
        best.json is written at the epoch end BEFORE the backup, so after a kill in between it already counts the
        epoch that the resumed run trains again (a double-counted patience step, a "best" that is not better)."""
        self.best = {"epoch": best["epoch"], "val": best["val"],
                     "evaluations_since_best": int(best["evaluations_since_best"])}

    def on_epoch_end(self, epoch, logs=None):
        if self.skip is not None and self.skip():
            return
        logs = logs if logs is not None else {}
        last = epoch + 1 == self.total_epochs
        if (epoch + 1) % self.every and not last:
            return
        scores = self.evaluate()
        for key, value in scores.items():
            logs[f"val_{key}"] = value
        current = scores[self.monitor]
        previous = None if self.best["val"] is None else self.best["val"][self.monitor]
        label = "validation mAP" if self.monitor == "map_avg" else f"validation {self.monitor}"
        improved = previous is None or (
            current > previous + self.min_delta if self.mode == "max" else current < previous - self.min_delta
        )
        if improved:
            atomic_save_weights(self.model, self.best_path)
            self.best = {"epoch": epoch + 1, "val": scores, "evaluations_since_best": 0}
            log.info("epoch %d: %s %.4f (best so far, checkpoint saved)", epoch + 1, label, current)
        else:
            self.best["evaluations_since_best"] += 1
            log.info("epoch %d: %s %.4f (best %.4f at epoch %d)", epoch + 1, label, current, previous,
                     self.best["epoch"])
            if self.patience and self.best["evaluations_since_best"] >= self.patience:
                log.info("early stopping: no improvement in %d evaluations", self.patience)
                self.model.stop_training = True
        atomic_write_text(self.state_path, json.dumps(self.best, indent=2))


class TensorBoard(keras.callbacks.Callback):
    """Epoch summaries for TensorBoard: every entry of the epoch logs under its own name, at step = the epoch number.

    ``<log_dir>/train`` gets the training entries (``embedding_imi``, ``discriminator_loss``,
    ``learning_rate_<player>``, ``grl_strength``, ...), ``<log_dir>/validation`` the ``val_`` entries without the
    prefix (``map_i2t``, ``map_avg``; SDML: ``loss``): the layout of ``keras.callbacks.TensorBoard``, but without its
    ``epoch_`` tag prefix and with 1-based steps: epoch 3 is step 3, as in the progress bar, the log lines and
    ``best_epoch`` of metrics.json.
    Each epoch is flushed at once, so a killed run keeps the curves of the epochs its backup holds; a resumed run
    writes a new event file next to the old ones, from the epoch it continues with.

    Args:
        log_dir: the run's ``logs`` folder.
        write_graph, update_freq: accepted for the ``keras.callbacks.TensorBoard`` call signature; only epoch
            scalars are written (``write_graph=False``, ``update_freq="epoch"``).
    """

    TRAIN, VALIDATION = "train", "validation"

    def __init__(self, log_dir: str, write_graph: bool = False, update_freq: str = "epoch"):
        super().__init__()
        if write_graph or update_freq != "epoch":
            raise ValueError("tf_xmr's TensorBoard callback writes epoch scalars only (write_graph=False, "
                             "update_freq='epoch')")
        self.log_dir = log_dir
        self._writers = {}

    def _writer(self, name: str):
        import tensorflow as tf

        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.log_dir, name))
        return self._writers[name]

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        groups = {self.TRAIN: {}, self.VALIDATION: {}}
        for key, value in (logs or {}).items():
            if key.startswith("val_"):
                groups[self.VALIDATION][key[len("val_"):]] = value
            else:
                groups[self.TRAIN][key] = value
        for name, values in groups.items():
            if not values:
                continue
            writer = self._writer(name)
            with writer.as_default():
                for tag, value in values.items():
                    tf.summary.scalar(tag, value, step=epoch + 1)
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


class GradientReversalSchedule(keras.callbacks.Callback):
    """Drives the strength of gradient reversal layers.

    ``constant``: ``max_strength`` throughout. ``dann``: ``max_strength * (2 / (1 + exp(-gamma * p)) - 1)`` with ``p``
    the fraction of training steps done (Ganin & Lempitsky 2015, gamma = 10), updated every batch.
    """

    def __init__(self, layers, *, schedule: str, max_strength: float, total_epochs: int, steps_per_epoch: int,
                 gamma: float = 10.0):
        super().__init__()
        self.layers = list(layers)
        self.schedule = schedule
        self.max_strength = float(max_strength)
        self.total_steps = max(1, total_epochs * steps_per_epoch)
        self.steps_per_epoch = steps_per_epoch
        self.gamma = gamma
        self._epoch = 0

    def strength(self, step: int) -> float:
        if self.schedule == "constant":
            return self.max_strength
        progress = min(1.0, step / self.total_steps)
        return self.max_strength * (2.0 / (1.0 + math.exp(-self.gamma * progress)) - 1.0)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        value = self.strength(self._epoch * self.steps_per_epoch + batch)
        for layer in self.layers:
            layer.strength.assign(value)


class ProgressLine(keras.callbacks.Callback):
    """Training progress in one terminal-wide line, instead of Keras' bar with every logged value (330-430
    characters per line with the adversarial methods' loss terms; TensorBoard has them all).

    ``verbose`` 1: a live line per epoch (on a terminal) ending in the epoch's summary; 2: the summary line only;
    0: nothing. The summary names the total losses (log keys ending in ``loss``) and the epoch's seconds, and ends
    with a newline before any other callback logs (it must come first in the list), so the validation line that
    follows stands on its own line.
    """

    def __init__(self, verbose: int, total_epochs: int, steps_per_epoch: int, stream=None):
        super().__init__()
        self.verbose = verbose
        self.total_epochs = total_epochs
        self.steps = steps_per_epoch
        self.stream = stream
        self._epoch = 0
        self._start = self._last_draw = 0.0

    def _out(self):
        import sys

        return self.stream or sys.stdout

    def _text(self, logs, done: int | None = None) -> str:
        losses = "  ".join(f"{key} {float(np.mean(value)):.4g}" for key, value in (logs or {}).items()
                           if key.endswith("loss") and not key.startswith("val_"))
        where = f"epoch {self._epoch + 1}/{self.total_epochs}"
        if done is not None:
            width = 20
            filled = int(width * done / max(self.steps, 1))
            where += f" [{'=' * filled}{'.' * (width - filled)}] {done}/{self.steps}"
        return f"{where}  {losses}".rstrip()

    def on_epoch_begin(self, epoch, logs=None):
        import time

        self._epoch = epoch
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        import time

        if self.verbose != 1 or not self._out().isatty():
            return
        now = time.perf_counter()
        if now - self._last_draw < 0.2 and batch + 1 < self.steps:
            return
        self._last_draw = now
        columns = shutil.get_terminal_size((120, 24)).columns
        self._out().write("\r" + self._text(logs, batch + 1)[: columns - 1].ljust(columns - 1))
        self._out().flush()

    def on_epoch_end(self, epoch, logs=None):
        import time

        if self.verbose == 0:
            return
        line = f"{self._text(logs)}  ({time.perf_counter() - self._start:.1f} s)"
        prefix = "\r" if self.verbose == 1 and self._out().isatty() else ""
        columns = shutil.get_terminal_size((120, 24)).columns
        self._out().write(prefix + line.ljust(columns - 1 if prefix else 0) + "\n")
        self._out().flush()


class TrainingStateLogger(keras.callbacks.Callback):
    """Adds each player's learning rate and the GRL strength to the epoch logs (TensorBoard picks them up)."""

    def __init__(self, optimizers: dict, grl_layers):
        super().__init__()
        self.optimizers = optimizers
        self.grl_layers = list(grl_layers)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for name, optimizer in self.optimizers.items():
            logs[f"learning_rate_{name}"] = float(optimizer.learning_rate.numpy())
        if self.grl_layers:
            logs["grl_strength"] = float(self.grl_layers[0].strength.numpy())


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training at the first batch whose logged losses are NaN or infinite and remembers where."""

    def __init__(self):
        super().__init__()
        self.failure = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        for key, value in (logs or {}).items():
            # A scalar, or under multi_worker one value per worker (the step outputs get a batch axis there).
            values = np.asarray(value, dtype=np.float64).reshape(-1)
            bad = values[~np.isfinite(values)]
            if bad.size:
                self.failure = f"{key} became {float(bad[0])} at epoch {self._epoch + 1}, batch {batch + 1}"
                self.model.stop_training = True
                return

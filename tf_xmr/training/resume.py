"""Kill-and-resume: the whole training state saved atomically at every epoch end, and the checks that run before a
run directory is written.

Why not ``keras.callbacks.BackupAndRestore`` (Keras 3.15)? Measured and read in its source:

- it saves ``model.save_weights``, which does hold every player's optimiser (slots and ``iterations``) but NOT the
  ``keras.random.SeedGenerator`` states (JFSE's noise, Dropout masks): a resumed run draws other noise;
- it writes the weights, then the epoch number, in place: a kill between the two (or during the h5 write) leaves
  weights of one epoch labelled with another, or a corrupt file that cannot be loaded at all;
- it knows nothing of the validation state (best score, best epoch, patience counter, best checkpoint), which
  ``RetrievalValidation`` wrote to disk at the epoch end *before* the backup: a kill in between counted the
  re-run epoch twice;
- ``fit`` makes a fresh ``tf.data`` iterator, so a resumed run restarts the epoch-0 shuffle order (fixed by
  ``tf_xmr.data.make_training_stream``, whose order is keyed to the epoch).

Granularity: one backup per epoch end (after validation). A run killed mid-epoch resumes from the start of that epoch
and redoes at most one epoch; in exchange the saved state is exactly defined (no half-consumed iterator, no partial
loss means) and resuming is exact. Epochs of these benchmarks take seconds to a minute.

Layout: ``<checkpoints>/backup/epoch-<NNNNNN>/`` holding ``state.npz`` (every variable of the model, including
non-trainable ones and SeedGenerator states, then every optimiser's variables, in a fixed order), ``best.weights.h5``
(a hard link to the best checkpoint as it was at that epoch, when there is one) and ``state.json`` (epoch, global
step, validation state, resume history, the variable manifest). A backup is written into a temporary folder and
renamed into place, so a folder named ``epoch-*`` is always complete; older ones are removed after the rename.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil

import numpy as np

from tf_xmr.errors import ConfigError, XmrError

log = logging.getLogger("tf_xmr.training")

STATE_ARRAYS = "state.npz"
STATE_JSON = "state.json"
BEST_WEIGHTS = "best.weights.h5"
FORMAT = 1


class ResumeError(XmrError):
    """A backup does not fit the model built from the config (it was written by other code)."""


class BackupError(XmrError):
    """A backup could not be written during training (disk full); training stops, the previous backup stays."""

    exit_code = 1


def state_variables(model, optimizers: dict) -> list:
    """Every variable whose value a resumed run needs, in a fixed order: the model's (weights, non-trainable state,
    SeedGenerator states) then each optimiser's (``iterations``, learning rate, slots), optimisers by name."""
    seen, out = set(), []
    groups = [model.variables] + [optimizers[name].variables for name in sorted(optimizers)]
    for group in groups:
        for variable in group:
            if id(variable) not in seen:
                seen.add(id(variable))
                out.append(variable)
    return out


def _backups(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if n.startswith("epoch-"))
    return [os.path.join(directory, n) for n in names if os.path.exists(os.path.join(directory, n, STATE_JSON))]


def latest_backup(directory: str) -> dict | None:
    """The newest complete backup's ``state.json`` (with its folder under ``"path"``), or None."""
    found = _backups(directory)
    if not found:
        return None
    with open(os.path.join(found[-1], STATE_JSON), encoding="utf-8") as handle:
        state = json.load(handle)
    state["path"] = found[-1]
    return state


def restore(state: dict, model, optimizers: dict) -> None:
    """Assign every saved variable; the manifest (paths and shapes) must match the model built now."""
    for optimizer in optimizers.values():
        if not optimizer.built:
            # A single-optimiser model's optimiser creates its slots at the first step; they must exist to be set.
            optimizer.build(model.trainable_variables)
    variables = state_variables(model, optimizers)
    manifest = state["variables"]
    source = os.path.join(state["path"], STATE_ARRAYS)
    if len(manifest) != len(variables):
        raise ResumeError(f"backup {source} holds {len(manifest)} variables, the model built from the config has "
                          f"{len(variables)}; remove {os.path.dirname(state['path'])} to start over")
    with np.load(source) as arrays:
        for i, (variable, entry) in enumerate(zip(variables, manifest)):
            value = arrays[f"v{i:05d}"]
            if tuple(entry["shape"]) != tuple(variable.shape) or _role(entry["path"]) != _role(variable.path):
                raise ResumeError(
                    f"backup {source} variable {i} is {entry['path']} {tuple(entry['shape'])}, the model has "
                    f"{variable.path} {tuple(variable.shape)}; remove {os.path.dirname(state['path'])} to start over")
            variable.assign(value)


def _role(path: str) -> str:
    # Keras numbers auto-named layers per process ("dense_6"), so a model rebuilt in the same process has other
    # numbers (also inside optimiser slot names such as "..._dense_6_kernel_momentum"): compare without them.
    return re.sub(r"_\d+(?=/|_|$)", "", path)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)  # the best checkpoint is replaced by rename, so the linked inode stays as it is
    except OSError:
        shutil.copy2(source, target)


def restore_best_checkpoint(state: dict, checkpoint_dir: str) -> None:
    """Put back the best checkpoint and best.json as they were when the backup was written (a killed attempt may
    have overwritten them after it)."""
    from tf_xmr.training.callbacks import atomic_write_text

    best_path = os.path.join(checkpoint_dir, BEST_WEIGHTS)
    saved = os.path.join(state["path"], BEST_WEIGHTS)
    if os.path.exists(saved):
        tmp = os.path.join(checkpoint_dir, f".tmp-{os.getpid()}-{BEST_WEIGHTS}")
        _link_or_copy(saved, tmp)
        os.replace(tmp, best_path)
        atomic_write_text(os.path.join(checkpoint_dir, "best.json"), json.dumps(state["validation"], indent=2))
    else:
        for name in (BEST_WEIGHTS, "best.json"):
            if os.path.exists(os.path.join(checkpoint_dir, name)):
                os.remove(os.path.join(checkpoint_dir, name))


def describe(state: dict) -> dict:
    """The resume point recorded in metrics.json: completed epochs and global training steps."""
    return {"epoch": int(state["epoch"]), "step": int(state["step"])}


def _make_callback():
    import keras

    class TrainingCheckpoint(keras.callbacks.Callback):
        """Saves the training state (see the module docstring) at every epoch end; must be the LAST callback, so
        that the validation of the epoch and its best checkpoint are already written.

        Args:
            directory: the backup folder (``<checkpoints>/backup``).
            optimizers: name -> optimiser (every player's, or the one of a single-optimiser model).
            validation: the ``RetrievalValidation`` whose state is saved with the backup.
            resumed_from: resume history so far (kept in every later backup).
            skip: callable; when it returns True the epoch is not backed up (a non-finite loss: resuming from that
                state would fail again at once).
        """

        def __init__(self, directory: str, *, optimizers: dict, validation, resumed_from=(), step: int = 0,
                     skip=lambda: False):
            super().__init__()
            self.directory = directory
            self.optimizers = optimizers
            self.validation = validation
            self.resumed_from = list(resumed_from)
            self.step = int(step)
            self.skip = skip

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1

        def on_epoch_end(self, epoch, logs=None):
            if self.skip():
                return
            try:
                self.save(epoch + 1)
            except OSError as exc:
                # Disk full (or gone) mid-run: the half-written folder goes, the previous backup is intact.
                clear_stale_temporaries(self.directory)
                raise BackupError(
                    f"could not write the epoch {epoch + 1} backup in {self.directory}: {exc.strerror or exc}; the "
                    f"previous backup is intact: free space and rerun the same command to resume") from None

        def save(self, epochs_done: int) -> str:
            os.makedirs(self.directory, exist_ok=True)
            final = os.path.join(self.directory, f"epoch-{epochs_done:06d}")
            tmp = os.path.join(self.directory, f".tmp-epoch-{epochs_done:06d}-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            variables = state_variables(self.model, self.optimizers)
            with open(os.path.join(tmp, STATE_ARRAYS), "wb") as handle:
                np.savez(handle, **{f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(variables)})
            best = self.validation.best
            if best["epoch"] is not None and os.path.exists(self.validation.best_path):
                _link_or_copy(self.validation.best_path, os.path.join(tmp, BEST_WEIGHTS))
            state = {
                "format": FORMAT,
                "epoch": epochs_done,
                "step": self.step,
                "stop_training": bool(getattr(self.model, "stop_training", False)),
                "validation": best,
                "resumed_from": self.resumed_from,
                "saved_at": datetime.datetime.now().isoformat(timespec="seconds"),
                "variables": [{"path": v.path, "shape": list(v.shape)} for v in variables],
            }
            with open(os.path.join(tmp, STATE_JSON), "w", encoding="utf-8") as handle:
                json.dump(state, handle)
            if os.path.exists(final):  # a re-run of an epoch whose backup survived (cannot happen after restore)
                shutil.rmtree(final)
            os.rename(tmp, final)
            # Only now is the previous backup redundant.
            for old in _backups(self.directory):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
            return final

    return TrainingCheckpoint


def training_checkpoint(directory: str, **kwargs):
    """A ``TrainingCheckpoint`` callback (built lazily so that importing this module does not import Keras)."""
    return _make_callback()(directory, **kwargs)


def clear_stale_temporaries(directory: str) -> None:
    """Remove half-written backup folders of a killed process (never a complete ``epoch-*`` folder)."""
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.startswith(".tmp-"):
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# Before anything is written: is the run directory writable, and is there room for what the run will write?

#: TensorBoard events, JSON records, SavedModel graphs (not their variables): a fixed allowance.
FIXED_ALLOWANCE_BYTES = 16 * 2**20


def variable_bytes(variables) -> int:
    return int(sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables))


def estimate_run_bytes(model_bytes: int, optimizer_bytes: int, export_bytes: int, backup: bool = True) -> int:
    """What a run writes at most, at its peak (formula stated in train.disk_margin's comment)::

        best.weights.h5 (model + optimiser state) and its temporary during the atomic rewrite   2 (M + O)
        backup: the new epoch folder before the previous one is removed                           2 (M + O)
        the backup's copy of the best checkpoint where hard links are not possible                  (M + O)
        exported encoders (their variables)                                                         E
        TensorBoard, JSON, SavedModel graphs                                                        16 MiB

    with M, O, E the bytes of the model's variables, the optimisers' variables and the exported encoders' variables.
    """
    state = model_bytes + optimizer_bytes
    return (5 if backup else 2) * state + export_bytes + FIXED_ALLOWANCE_BYTES


def joint_run_bytes(model, optimizers: dict, *, export: bool, backup: bool) -> int:
    """``estimate_run_bytes`` for a jointly trained model with its player optimisers."""
    optimizer_variables = [v for name in sorted(optimizers) for v in optimizers[name].variables]
    exported = sum(variable_bytes(model.encoder(m).variables) for m in model.modalities) if export else 0
    return estimate_run_bytes(variable_bytes(model.variables), variable_bytes(optimizer_variables), exported, backup)


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_run_dir(run_dir: str, needed_bytes: int, margin: float) -> None:
    """Raise ``ConfigError`` (one line, CLI exit 2) unless ``run_dir`` can be written and its file system has
    ``margin * needed_bytes`` free. Writes nothing that stays: a folder created for the probe is removed again.

    Writability is tested by creating and removing a file, not with permission bits (root passes those on a
    read-only mount, and a path under a regular file fails only when created).
    """
    import tempfile

    created = []
    probe_dir = os.path.abspath(run_dir)
    try:
        missing = []
        path = probe_dir
        while not os.path.exists(path):
            missing.append(path)
            path = os.path.dirname(path)
        for folder in reversed(missing):
            os.mkdir(folder)
            created.append(folder)
        if not os.path.isdir(probe_dir):
            raise NotADirectoryError(20, "Not a directory")
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=probe_dir)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(f"run_dir {run_dir} is not writable: {exc.strerror or exc}") from None
    finally:
        for folder in reversed(created):
            try:
                os.rmdir(folder)
            except OSError:
                pass
    if margin <= 0:
        return
    free = shutil.disk_usage(_existing_ancestor(probe_dir)).free
    required = needed_bytes * margin
    if free < required:
        raise ConfigError(
            f"not enough free disk space for run_dir {run_dir}: the run writes up to about {_gb(needed_bytes)} "
            f"(x train.disk_margin {margin:g} = {_gb(required)}), {_gb(free)} free; free some space, choose another "
            f"run_dir or lower train.disk_margin"
        )


def resume_state(resuming: bool, backup_dir: str, checkpoint_dir: str, model, optimizers: dict, validation,
                 epochs: int, where: str):
    """Restore the newest complete backup of an interrupted run into ``model``, its optimisers and ``validation``.

    Returns:
        ``(state, resumed_from)``: the backup's state (None when starting from scratch) and the resume history
        (one ``{"epoch", "step"}`` per resume, oldest first; empty for an uninterrupted run) for metrics.json.
    """
    state = None
    if resuming:
        clear_stale_temporaries(backup_dir)
        state = latest_backup(backup_dir)
    if state is None:
        if resuming:
            log.info("resuming %s: no epoch was completed before the interruption, starting from epoch 1", where)
        # A best checkpoint without a backup belongs to an attempt that is now redone from scratch.
        for name in ("best.weights.h5", "best.json"):
            if os.path.exists(os.path.join(checkpoint_dir, name)):
                os.remove(os.path.join(checkpoint_dir, name))
        return None, []
    restore(state, model, optimizers)
    restore_best_checkpoint(state, checkpoint_dir)
    validation.restore(state["validation"])
    point = describe(state)
    log.info("resuming %s from the end of epoch %d of %d (global step %d; backup of %s)",
             where, point["epoch"], epochs, point["step"], state["saved_at"])
    return state, [*state["resumed_from"], point]

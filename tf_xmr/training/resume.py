"""Kill-and-resume: the whole training state saved atomically at every epoch end, restored by name, and the checks
that run before a run directory is written.

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

Layout: ``<checkpoints>/backup/epoch-<NNNNNN>/`` holding ``state.index`` + ``state.data-*`` (a ``tf.train.Checkpoint``
of every variable the resumed run needs, see below), ``best.weights.h5`` (a hard link to the best checkpoint as it was
at that epoch, when there is one) and ``state.json`` (epoch, global step, validation state, resume history, the
variable manifest: name, shape and dtype of each). A backup is written into a temporary folder and renamed into place,
so a folder named ``epoch-*`` is always complete; older ones are removed after the rename. (``tf.train.
CheckpointManager`` is not used: it writes a checkpoint's files under their final names and keeps its own index file,
so the variables, state.json and the best checkpoint of one epoch would not appear together in one rename.)

Variables by name. Each variable is saved and restored under its object path: the chain of attribute names (list
positions, dict keys) from the model to it, e.g. ``model/encoders/image/hidden/0/_kernel`` or ``model/noise/state``
for a ``SeedGenerator``; an optimiser slot under its slot list and the path of the variable it belongs to, e.g.
``optimizers/embedding/_momentums/model/encoders/image/hidden/0/_kernel``. A model whose layers or variables are created
in another order, or an optimiser built over its variables in another order, restores the same values into the same
places (restoring by position in ``model.variables`` would silently swap two same-shaped towers). Attaching the model
itself to a ``tf.train.Checkpoint`` is not enough with Keras 3: it tracks layers held directly in attributes but not
those in lists or dicts (every encoder's standardisation statistics, whole sub-networks), nor ``SeedGenerator`` states,
and it keys optimiser slots by position (``_variables/7``). So ``named_state`` walks the object graph itself and hands
``tf.train.Checkpoint`` every variable under its path; the manifest check and ``assert_consumed`` make a restore
all-or-nothing (every saved variable used, every variable of the model set).

The best checkpoint stays ``best.weights.h5``, Keras' own format (``model.save_weights``), because its readers are
``model.load_weights`` calls in evaluation, export, tuning and users' code, which must not import training; it is
keyed by attribute path too (lists by class name and order), and it is only for inference: the optimiser part of it is
never read back. A ``tf.train.Checkpoint(model=model)`` in its place would silently drop what Keras does not track (the
standardisation statistics: tests/training/test_checkpoints.py shows the wrong embeddings it restores). It is always
written to a fresh temporary file and renamed (``callbacks.atomic_save_weights``), never rewritten in place, so a
backup may share its inode through a hard link.
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

#: ``tf.train.Checkpoint`` prefix inside a backup folder (``state.index``, ``state.data-00000-of-00001``).
STATE_PREFIX = "state"
STATE_JSON = "state.json"
BEST_WEIGHTS = "best.weights.h5"
#: 1: ``state.npz``, variables by position (before object paths); 2: ``tf.train.Checkpoint`` by object path.
FORMAT = 2


class ResumeError(XmrError):
    """A backup does not fit the model built from the config (it was written by other code)."""


class BackupError(XmrError):
    """A backup could not be written during training (disk full); training stops, the previous backup stays."""

    exit_code = 1


# ----------------------------------------------------------------------------------------------------------------
# Naming every variable by its object path

# Keras' and TensorFlow's own bookkeeping: every layer, variable and seed generator of an object again, by position
# (``_layers``, ``_trainable_variables``, ...). Followed only for what no attribute reaches (a Sequential's layers).
_BOOKKEEPING = frozenset({
    "_layers", "_trainable_variables", "_non_trainable_variables", "_seed_generators", "_variables", "_functional",
    "_operations", "_input_layers", "_output_layers", "_inbound_nodes", "_outbound_nodes",
})


def _child_edges(obj, keras):
    """(name, child, is_bookkeeping) for the children of one object that can lead to variables."""
    if isinstance(obj, (list, tuple)):
        return [(str(i), child, False) for i, child in enumerate(obj)]
    if isinstance(obj, dict):
        return [(str(key).replace("/", "%2F"), child, False) for key, child in obj.items()]
    if isinstance(obj, (keras.layers.Layer, keras.random.SeedGenerator)):
        # ``_self_*``: TensorFlow's tracking records, which repeat the attributes.
        return [(name, child, name in _BOOKKEEPING) for name, child in vars(obj).items()
                if not name.startswith(("_self_", "__"))]
    return []


def _walk(model) -> dict[int, str]:
    """id(variable) -> object path (from ``model``) of every variable reachable from it.

    The path with the fewest bookkeeping steps wins, then the shortest, then the first in sorting order, so a name
    depends on the structure of the model only, never on the order of creation. Optimisers and metrics are not
    followed (optimisers are named on their own, metrics are not training state).
    """
    import heapq

    import keras

    paths: dict[int, str] = {}
    visited: set[int] = set()
    heap = [(0, 0, "model", 0, model)]
    tiebreak = 1
    while heap:
        hops, depth, path, _, obj = heapq.heappop(heap)
        if id(obj) in visited:
            continue
        visited.add(id(obj))
        if isinstance(obj, keras.Variable):
            paths[id(obj)] = path
            continue
        for name, child, bookkeeping in _child_edges(obj, keras):
            if id(child) in visited or not isinstance(
                    child, (keras.Variable, keras.layers.Layer, keras.random.SeedGenerator, list, tuple, dict)):
                continue
            heapq.heappush(heap, (hops + bookkeeping, depth + 1, f"{path}/{name}", tiebreak, child))
            tiebreak += 1
    return paths


def _optimizer_names(optimizer, prefix: str, model_paths: dict[int, str]) -> dict[int, str]:
    """id(variable) -> name of every variable of a Keras optimiser: its own scalars (``_iterations``,
    ``_learning_rate``) by attribute, each slot by its slot list and the model path of the variable it belongs to
    (Keras keeps slot lists parallel to ``_trainable_variables``, the variables the optimiser was built over)."""
    import keras

    targets = list(getattr(optimizer, "_trainable_variables", []))
    names = {}
    for attr, value in sorted(vars(optimizer).items()):
        if attr.startswith(("_self_", "__")) or attr in ("_variables", "_trainable_variables"):
            continue
        if isinstance(value, keras.Variable):
            names[id(value)] = f"{prefix}/{attr}"
        elif isinstance(value, (list, tuple)) and any(isinstance(v, keras.Variable) for v in value):
            if len(value) != len(targets):
                raise RuntimeError(f"optimiser {optimizer.name}: slot list {attr} has {len(value)} entries for "
                                   f"{len(targets)} variables; cannot name its variables for a backup")
            for slot, target in zip(value, targets, strict=True):
                if slot is None:
                    continue
                if id(target) not in model_paths:
                    raise RuntimeError(f"optimiser {optimizer.name} updates {target.path}, which is not a variable "
                                       "of the model; cannot name its slots for a backup")
                names[id(slot)] = f"{prefix}/{attr}/{model_paths[id(target)]}"
    return names


def named_state(model, optimizers: dict) -> dict:
    """Every variable whose value a resumed run needs, by name (sorted): the model's (weights, non-trainable state,
    ``SeedGenerator`` states) under ``model/...`` and each optimiser's (``iterations``, learning rate, slots) under
    ``optimizers/<player>/...``. See the module docstring for the names.

    Raises:
        RuntimeError: a variable that no name reaches (a model keeping state where no attribute leads: a bug to fix
            in the model, since such state could not be restored either).
    """
    model_paths = _walk(model)
    groups = [("model", model.variables, model_paths)]
    for player in sorted(optimizers):
        optimizer = optimizers[player]
        groups.append((player, optimizer.variables,
                       _optimizer_names(optimizer, f"optimizers/{player}", model_paths)))
    named, seen = {}, set()
    for owner, variables, paths in groups:
        for variable in variables:
            if id(variable) in seen:
                continue
            seen.add(id(variable))
            if id(variable) not in paths:
                raise RuntimeError(f"variable {variable.path} of {owner} is reachable from no attribute; cannot "
                                   "name it for a backup")
            name = paths[id(variable)]
            if name in named:
                raise RuntimeError(f"two variables named {name} ({named[name].path}, {variable.path})")
            named[name] = variable
    return dict(sorted(named.items()))


def _checkpoint(named: dict):
    import tensorflow as tf

    # One dependency per variable, under its name ('/' is escaped by tf.train in the checkpoint keys).
    return tf.train.Checkpoint(**named)


def _manifest(named: dict) -> list[dict]:
    return [{"name": name, "shape": [int(d) for d in v.shape], "dtype": str(v.dtype)} for name, v in named.items()]


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
    path = os.path.join(found[-1], STATE_JSON)
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ResumeError(f"backup {path} cannot be read ({exc}); remove {directory} to start over") from None
    state["path"] = found[-1]
    return state


def restore(state: dict, model, optimizers: dict) -> None:
    """Set every variable of ``model`` and ``optimizers`` from the backup ``state`` (a ``latest_backup`` result), by
    name; all or nothing: the manifest (names and shapes) must match the model built now exactly."""
    directory = os.path.dirname(state["path"])
    if state.get("format") != FORMAT:
        raise ResumeError(f"backup {state['path']} has format {state.get('format')} (by position, written by an "
                          f"older tf_xmr), this version reads format {FORMAT}; remove {directory} to start over")
    for optimizer in optimizers.values():
        if not optimizer.built:
            # A single-optimiser model's optimiser creates its slots at the first step; they must exist to be set.
            optimizer.build(model.trainable_variables)
    named = named_state(model, optimizers)
    saved = {entry["name"]: entry for entry in state["variables"]}
    prefix = os.path.join(state["path"], STATE_PREFIX)
    missing = [name for name in named if name not in saved]
    extra = [name for name in saved if name not in named]
    if missing or extra:
        what = (f"has no {missing[0]}" if missing else f"holds {extra[0]}, which the model does not have")
        raise ResumeError(f"backup {prefix} {what} ({len(missing)} missing, {len(extra)} unknown of {len(named)} "
                          f"variables); remove {directory} to start over")
    for name, variable in named.items():
        if tuple(saved[name]["shape"]) != tuple(variable.shape):
            raise ResumeError(f"backup {prefix} holds {name} of shape {tuple(saved[name]['shape'])}, the model's is "
                              f"{tuple(variable.shape)}; remove {directory} to start over")
    try:
        _checkpoint(named).read(prefix).assert_consumed()
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in TensorFlow's reader in many ways (DataLossError,
        # IndexError on a truncated shard, ...): each is one line naming the backup, not a traceback.
        text = str(getattr(exc, "message", exc)).strip()
        reason = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
        raise ResumeError(f"backup {prefix} cannot be restored ({reason}); remove {directory} to start over") from None


def _link_or_copy(source: str, target: str) -> None:
    try:
        # Safe to share the inode: the best checkpoint is only ever replaced by a rename of a fresh file
        # (callbacks.atomic_save_weights), never rewritten in place.
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _remove_if_present(path: str) -> None:
    if os.path.lexists(path):
        os.remove(path)


def restore_best_checkpoint(state: dict, checkpoint_dir: str) -> None:
    """Put back the best checkpoint and best.json as they were when the backup was written (a killed attempt may
    have overwritten them after it)."""
    from tf_xmr.files import atomic_write_text

    best_path = os.path.join(checkpoint_dir, BEST_WEIGHTS)
    saved = os.path.join(state["path"], BEST_WEIGHTS)
    if os.path.exists(saved):
        # Already the backup's file (nothing was saved after the backup): renaming a second link of the same inode
        # onto it would do nothing and leave the temporary name behind (rename(2) on two links of one file).
        if not (os.path.exists(best_path) and os.path.samefile(saved, best_path)):
            tmp = os.path.join(checkpoint_dir, f".tmp-{os.getpid()}-{BEST_WEIGHTS}")
            _remove_if_present(tmp)
            _link_or_copy(saved, tmp)
            os.replace(tmp, best_path)
        atomic_write_text(os.path.join(checkpoint_dir, "best.json"), json.dumps(state["validation"], indent=2))
    else:
        for name in (BEST_WEIGHTS, "best.json"):
            _remove_if_present(os.path.join(checkpoint_dir, name))


_STALE_FILE = re.compile(r"^\.tmp-|\.tmp-\d+$")


def clear_stale_files(checkpoint_dir: str) -> None:
    """Remove the temporary files a killed process left beside the best checkpoint (``.tmp-<pid>-best.weights.h5``,
    ``best.json.tmp-<pid>``); only called when resuming, when no other process writes there."""
    if os.path.isdir(checkpoint_dir):
        for name in os.listdir(checkpoint_dir):
            path = os.path.join(checkpoint_dir, name)
            if _STALE_FILE.search(name) and os.path.isfile(path):
                os.remove(path)


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
            import tensorflow as tf

            try:
                self.save(epoch + 1)
            except (OSError, tf.errors.OpError) as exc:
                # Disk full (or gone) mid-run: the half-written folder goes, the previous backup is intact.
                clear_stale_temporaries(self.directory)
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
                raise BackupError(
                    f"could not write the epoch {epoch + 1} backup in {self.directory}: {reason}; the "
                    f"previous backup is intact: free space and rerun the same command to resume") from None

        def save(self, epochs_done: int) -> str:
            os.makedirs(self.directory, exist_ok=True)
            final = os.path.join(self.directory, f"epoch-{epochs_done:06d}")
            tmp = os.path.join(self.directory, f".tmp-epoch-{epochs_done:06d}-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            named = named_state(self.model, self.optimizers)
            _checkpoint(named).write(os.path.join(tmp, STATE_PREFIX))
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
                "variables": _manifest(named),
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
        clear_stale_files(checkpoint_dir)
        state = latest_backup(backup_dir)
    if state is None:
        if resuming:
            log.info("resuming %s: no epoch was completed before the interruption, starting from epoch 1", where)
        # A best checkpoint without a backup belongs to an attempt that is now redone from scratch.
        for name in (BEST_WEIGHTS, "best.json"):
            _remove_if_present(os.path.join(checkpoint_dir, name))
        return None, []
    restore(state, model, optimizers)
    restore_best_checkpoint(state, checkpoint_dir)
    validation.restore(state["validation"])
    point = describe(state)
    log.info("resuming %s from the end of epoch %d of %d (global step %d; backup of %s)",
             where, point["epoch"], epochs, point["step"], state["saved_at"])
    return state, [*state["resumed_from"], point]

"""The run directory: its name, its claim, the check before anything is written, and the files that describe it.

Layout (design.md section 4)::

    config.yaml          the resolved config (data root included), written when the run starts
    data.json            what the data loader read (sizes, dims, classes)
    checkpoints/         best.weights.h5 + best.json (backup/ while training)
    logs/                TensorBoard
    metrics.json         written last: its presence marks a finished run
    export/              SavedModels for TF Serving

Runs of methods whose modality networks train independently (SDML) add::

    shared_state.npz                 the method's fixed shared arrays (SDML: P), written once, never rewritten
    independent.json                 per modality: best epoch, validation loss, training time, file hashes
    modalities/<m>/checkpoints/      best.weights.h5 + best.json of modality m (backup/ while training)
    modalities/<m>/logs/             TensorBoard of modality m
    history/                         config.yaml / metrics.json as they were before each extension

This module reads and names those files; it builds no model and runs no training, so evaluation, export and
training all use it.
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import numpy as np

from tf_xmr.config import to_dict
from tf_xmr.errors import ConfigError
from tf_xmr.files import atomic_write_text, read_json_if_present

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
BEST_CHECKPOINT = "best.weights.h5"
RUN_FILE = "independent.json"
SHARED_FILE = "shared_state.npz"
MODALITY_DIR = "modalities"
#: The pid of the process writing the run directory, while it holds the run-directory lock (RunDirLock).
WRITER_FILE = ".writer"


def resolve_run_dir(config, config_path: str | None) -> str:
    """``config.run_dir``, or ``saved_models/<config name>-<timestamp>`` when it is unset."""
    if config.run_dir:
        return config.run_dir
    stem = "run"
    if config_path:
        from tf_xmr.config.schema import config_name

        stem = config_name(config_path)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("saved_models", f"{stem}-{stamp}")


def claim_run_dir(run_dir: str) -> str:
    """Create an automatically named run directory (``run_dir: null``) exclusively and return its path.

    The first free name of ``<name>``, ``<name>-2``, ``<name>-3``... is taken: two runs of one config started in the
    same second (a script, parallel jobs) would otherwise share a folder, and the second would look like the resume
    of an interrupted first one. A run_dir given in the config is not claimed: it may hold a run to resume.
    """
    parent = os.path.dirname(run_dir)
    if parent:
        os.makedirs(parent, exist_ok=True)
    candidate, n = run_dir, 1
    while True:
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{run_dir}-{n}"


def prepare_run_dir(run_dir: str, config) -> bool:
    """Check the run directory before anything is written; returns True when resuming an interrupted run.

    A folder holding a finished run, another run's config or unknown files is refused; one holding an interrupted run
    with the same resolved config is resumed from its last epoch backup (tf_xmr.training.resume).
    """
    resolved = to_dict(dataclasses.replace(config, run_dir=run_dir))
    if os.path.exists(run_dir):
        if not os.path.isdir(run_dir):
            raise ConfigError(f"run_dir {run_dir} exists and is not a directory")
        entries = set(os.listdir(run_dir)) - {WRITER_FILE}
        if METRICS_FILE in entries:
            # A kill between metrics.json and the removal of the epoch backups leaves them behind; they are junk now.
            import shutil

            shutil.rmtree(os.path.join(run_dir, "checkpoints", "backup"), ignore_errors=True)
            raise ConfigError(f"run_dir {run_dir} already holds a finished run (metrics.json); choose another run_dir")
        if entries and CONFIG_FILE not in entries:
            raise ConfigError(f"run_dir {run_dir} is not empty and is not a tf_xmr run; choose another run_dir")
        if entries:
            import yaml

            path = os.path.join(run_dir, CONFIG_FILE)
            try:
                with open(path, encoding="utf-8") as handle:
                    previous = yaml.safe_load(handle)
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
                raise ConfigError(f"cannot read {path} of the interrupted run in run_dir {run_dir} "
                                  f"({type(exc).__name__}); choose another run_dir") from None
            if not isinstance(previous, dict):
                raise ConfigError(f"{path} of the interrupted run in run_dir {run_dir} is not a config mapping; "
                                  "choose another run_dir")
            if previous != resolved:
                changed = sorted(diff_keys(previous, resolved))
                raise ConfigError(
                    f"run_dir {run_dir} holds an interrupted run with a different config (differs at: "
                    f"{', '.join(changed[:5])}); resume with the same config or choose another run_dir"
                )
            return True
    # Whether it can be created and written is checked by resume.check_run_dir, by trying (and undoing it).
    return False


class RunDirLock:
    """One writer per run directory: an exclusive ``flock`` on the directory itself, held while a run writes it.

    The operating system releases the lock when the process ends however it ends, so a killed run never leaves a
    stale lock behind. The holder's pid is written to ``.writer`` (removed on release) so that a second writer can
    name it in its one-line refusal.
    """

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        import fcntl

        fd = os.open(self.run_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                with open(os.path.join(self.run_dir, WRITER_FILE), encoding="utf-8") as handle:
                    holder = f"pid {handle.read().strip() or '?'}"
            except OSError:
                holder = "another process"
            raise ConfigError(
                f"run_dir {self.run_dir} is being written by another tf_xmr run ({holder}); wait for it to finish "
                "or choose another run_dir"
            ) from None
        self._fd = fd
        atomic_write_text(os.path.join(self.run_dir, WRITER_FILE), f"{os.getpid()}\n")
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.remove(os.path.join(self.run_dir, WRITER_FILE))
        except FileNotFoundError:
            pass
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def diff_keys(a, b, prefix=""):
    """Dotted keys at which two nested config dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in set(a) | set(b):
            yield from diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip(".")


def load_run_config(run_dir: str, overrides=()):
    """The resolved config a run directory was trained with, plus ``overrides`` (``--set``)."""
    from tf_xmr.experiment import load_experiment

    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isdir(run_dir):
        raise ConfigError(f"run directory {run_dir} does not exist")
    if not os.path.exists(path):
        raise ConfigError(f"{run_dir} is not a tf_xmr run directory (no config.yaml)")
    return load_experiment(path, overrides)


def best_checkpoint(run_dir: str) -> str:
    """The best checkpoint of a jointly trained run."""
    return os.path.join(run_dir, "checkpoints", BEST_CHECKPOINT)


# ----------------------------------------------------------------------------------------------------------------
# Runs with independent modality networks


def modality_dir(run_dir: str, modality: str) -> str:
    return os.path.join(run_dir, MODALITY_DIR, modality)


def checkpoint_path(run_dir: str, modality: str) -> str:
    """The best checkpoint of one modality network of an independent run."""
    return os.path.join(modality_dir(run_dir, modality), "checkpoints", BEST_CHECKPOINT)


def read_run_record(run_dir: str) -> dict | None:
    """``independent.json`` of an independent run, or None for other runs."""
    return read_json_if_present(os.path.join(run_dir, RUN_FILE))


def run_modalities(run_dir: str) -> tuple[str, ...] | None:
    """The modalities a finished independent run scores (from independent.json), or None for other runs."""
    record = read_run_record(run_dir)
    return None if record is None else tuple(record["order"])


def load_shared_state(run_dir: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(run_dir, SHARED_FILE)) as data:
        return {key: np.asarray(data[key]) for key in data.files}


def save_shared_state(run_dir: str, state: dict) -> None:
    final = os.path.join(run_dir, SHARED_FILE)
    tmp = os.path.join(run_dir, f".tmp-{os.getpid()}-{SHARED_FILE}")
    with open(tmp, "wb") as handle:
        np.savez(handle, **state)
    os.replace(tmp, final)

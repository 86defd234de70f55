"""The epoch trace: validation and test mAP after every epoch, for the results report only (``eval.epoch_trace``).

Papers in this field often report the best test mAP seen during training; the authors' code of some (JFSE, DSCMR)
keeps the checkpoint that scores best on the test split. ``benchmarks/report.py`` shows what that would claim next
to the honest number (checkpoint chosen on validation, test scored once). To do so it needs the test mAP of every
epoch, which this module records into ``<run_dir>/epoch_trace.json``:

    {"note": ..., "protocol": {...}, "selection": ..., "epochs": [{"epoch": 1, "val": {map_*}, "test": {map_*}}, ...]}

Nothing reads the trace during training: the checkpoint is chosen by ``RetrievalValidation`` (or each network's
validation loss) exactly as without it, and the scores go only to this file (not to the epoch logs, TensorBoard or
the progress line). The trace scores under the run's own protocol (``eval.*``).

- Jointly trained methods: ``EpochTrace`` scores val and test after each epoch with the live encoders.
- Independent modality networks (SDML) train one after the other, so no moment has every network at epoch e.
  ``EmbeddingStash`` saves each network's val and test embeddings after every epoch into its own folder
  (``modalities/<m>/trace/``); once all have finished, ``combine_stashes`` scores epoch e of every network together
  (lockstep epochs) and removes the stashes. A modality whose network stopped earlier than the others (early
  stopping) ends the trace at its last epoch.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable

import keras
import numpy as np

from tf_xmr.files import read_json_if_present, write_json

log = logging.getLogger("tf_xmr.training")

TRACE_FILE = "epoch_trace.json"
STASH_DIR = "trace"
NOTE = ("report only (eval.epoch_trace): the test split scored after every epoch to show what selecting on it would "
        "claim; model selection never reads this file")


def _map_scores(scores: dict) -> dict:
    return {k: float(v) for k, v in scores.items() if k.startswith("map_")}


def write_trace(path: str, protocol: dict, selection: str, entries: dict[int, dict]) -> None:
    """Write the trace file (atomically) from ``{epoch: {"val": ..., "test": ...}}``."""
    write_json(path, {
        "note": NOTE,
        "protocol": protocol,
        "selection": selection,
        "epochs": [{"epoch": e, **entries[e]} for e in sorted(entries)],
    })


def read_trace(run_dir: str) -> dict | None:
    """The run's epoch trace, or None when it was not recorded."""
    return read_json_if_present(os.path.join(run_dir, TRACE_FILE))


class EpochTrace(keras.callbacks.Callback):
    """Scores val and test after every epoch into ``epoch_trace.json`` (jointly trained methods).

    Args:
        score: ``split -> {"map_<dir>": ..., "map_avg": ...}`` for the current weights.
        path: the trace file.
        protocol: the protocol's description (``RetrievalProtocol.describe()``).
        first_epoch: the epoch training starts from; entries of later epochs left by an interrupted attempt are
            dropped (that attempt's weights are gone, the resumed run trains those epochs again).

    The validation score is taken from the epoch logs when ``RetrievalValidation`` (earlier in the callback list)
    put it there this epoch, so validation is not embedded twice; otherwise it is scored here.
    """

    def __init__(self, score: Callable[[str], dict], path: str, protocol: dict, *, first_epoch: int = 0):
        super().__init__()
        self.score = score
        self.path = path
        self.protocol = protocol
        stored = read_json_if_present(path) or {"epochs": []}
        self.entries = {e["epoch"]: {"val": e["val"], "test": e["test"]}
                        for e in stored["epochs"] if e["epoch"] <= first_epoch}
        #: Set by the fit: true once training failed (NaN weights are not worth scoring).
        self.skip: Callable[[], bool] | None = None

    def on_epoch_end(self, epoch, logs=None):
        if self.skip is not None and self.skip():
            return
        logs = logs or {}
        val = {k[len("val_"):]: v for k, v in logs.items() if k.startswith("val_map_")}
        if "map_avg" not in val:
            val = self.score("val")
        self.entries[epoch + 1] = {"val": _map_scores(val), "test": _map_scores(self.score("test"))}
        write_trace(self.path, self.protocol, "checkpoint with the best validation map_avg", self.entries)


class EmbeddingStash(keras.callbacks.Callback):
    """Saves one modality network's val and test embeddings after every epoch (``<out_dir>/trace/``).

    Args:
        embed: ``split -> (embeddings (n, d), multi-hot labels (n, c))`` of this modality with the current weights.
        folder: where ``epoch_<e>.npz`` files go (labels once, in ``labels.npz``).
    """

    def __init__(self, embed: Callable[[str], tuple[np.ndarray, np.ndarray]], folder: str):
        super().__init__()
        self.embed = embed
        self.folder = folder
        self.skip: Callable[[], bool] | None = None

    def on_epoch_end(self, epoch, logs=None):
        if self.skip is not None and self.skip():
            return
        os.makedirs(self.folder, exist_ok=True)
        arrays, labels = {}, {}
        for split in ("val", "test"):
            arrays[split], labels[split] = self.embed(split)
        labels_path = os.path.join(self.folder, "labels.npz")
        if not os.path.exists(labels_path):
            _save_npz(labels_path, labels)
        _save_npz(os.path.join(self.folder, f"epoch_{epoch + 1:05d}.npz"), arrays)


def _save_npz(path: str, arrays: dict) -> None:
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _stashed_epochs(folder: str) -> list[int]:
    return sorted(int(name[len("epoch_"):-len(".npz")]) for name in os.listdir(folder)
                  if name.startswith("epoch_") and name.endswith(".npz") and ".tmp" not in name)


def combine_stashes(folders: dict[str, str], modalities, protocol, path: str) -> bool:
    """Score the lockstep epochs of every modality's stash into the trace file, then remove the stashes.

    Args:
        folders: modality -> its stash folder.
        modalities: the scored modalities, in order (fixes the direction names).
        protocol: the run's ``RetrievalProtocol``.
        path: the trace file.

    Returns:
        False (and nothing written) when a modality has no stash, e.g. a network trained before ``eval.epoch_trace``
        was set or by an earlier run that this one extends.
    """
    from tf_xmr.metrics.evaluator import score_embeddings

    missing = [m for m in modalities if not os.path.isdir(folders[m])]
    if missing:
        log.info("no new epoch trace: the %s network(s) left no per-epoch embeddings (trained without "
                 "eval.epoch_trace, by a run this one extends, or before an interruption)", ", ".join(missing))
        _remove(folders.values())
        return False
    labels = {m: dict(np.load(os.path.join(folders[m], "labels.npz"))) for m in modalities}
    epochs = sorted(set.intersection(*(set(_stashed_epochs(folders[m])) for m in modalities)))
    entries = {}
    for epoch in epochs:
        stash = {m: np.load(os.path.join(folders[m], f"epoch_{epoch:05d}.npz")) for m in modalities}
        entries[epoch] = {
            split: score_embeddings({m: stash[m][split] for m in modalities},
                                    {m: labels[m][split] for m in modalities}, protocol, modalities)
            for split in ("val", "test")
        }
    write_trace(path, protocol.describe(),
                "each network's checkpoint with its own lowest validation loss (epochs may differ per modality); "
                "the trace pairs epoch e of every network", entries)
    _remove(folders.values())
    return True


def _remove(folders) -> None:
    # The stashes are scratch: they must not stay in the networks' folders (independent.json hashes those).
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def best_epochs(trace: dict) -> dict:
    """The epoch with the best test ``map_avg`` (what test-set selection keeps) and with the best val ``map_avg``.

    Ties go to the earlier epoch, as ``RetrievalValidation`` breaks them.
    """
    entries = trace["epochs"]

    def best(split):
        scored = [e for e in entries if e.get(split) and "map_avg" in e[split]]
        return max(scored, key=lambda e: (e[split]["map_avg"], -e["epoch"])) if scored else None

    return {"test": best("test"), "val": best("val")}

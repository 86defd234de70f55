"""Test-split embeddings for TensorBoard's Embedding Projector: one point cloud of every modality, with class metadata.

Layout written under a run's ``logs`` folder (``<run_dir>/logs``, next to the ``train/`` and ``validation/`` runs of
``tf_xmr.training.callbacks.TensorBoard``)::

    test/
      events.out.tfevents.*                                  an empty event file (only its version header)
      plugins/org_tensorflow_tensorboard_projector/
        projector_config.pbtxt                               ProjectorConfig, one EmbeddingInfo
        embeddings.tsv                                       one row per point, d tab-separated values ("%.6g")
        metadata.tsv                                         header "modality<TAB>class<TAB>key", then one row a point

Why this layout (read from ``tensorboard/plugins/projector/projector_plugin.py`` of tensorboard 2.21, the pinned
version; ``tests/training/test_projector.py`` runs that plugin on the files, and a running ``tensorboard`` 2.21
served them under ``--logdir <run_dir>/logs`` and ``--logdir saved_models``, with the default Rust data server and
with ``--load_fast=false``):

- Where the plugin looks for ``projector_config.pbtxt`` (``_update_configs``): in every RUN directory, i.e. every
  folder the data provider lists as a run (a folder holding event files, as ``EventMultiplexer.AddRunsFromDirectory``
  finds them), in its plugin-asset folder ``<run>/plugins/org_tensorflow_tensorboard_projector/``
  (``_append_plugin_asset_directories``), and in the logdir root itself (run ``"."``). The root only works for
  ``tensorboard --logdir <run_dir>/logs``; under the README's ``tensorboard --logdir saved_models`` a config in
  ``<run_dir>/logs/`` would be neither a run nor the root and would never be read. A run's asset folder is found
  under any logdir above it, so the files go into a run of their own, ``test`` (the split they show; the projector's
  run menu names it ``test`` or ``<run>/logs/test``). A folder becomes a run only through an event file, so one
  with just the version header is written there, unless the folder already has one (a test-metrics writer may share
  it). Putting the files into ``train/`` or ``validation/`` would work too but would name the wrong split, and would
  depend on training having written those runs.
- Tensors without a checkpoint: an ``EmbeddingInfo`` with ``tensor_path`` is served from that file
  (``_read_latest_config_files`` keeps a config with a tensor file even when no TF checkpoint is found;
  ``_serve_tensor`` reads it with ``_read_tensor_tsv_file``: one row a line, values split on tabs, parsed as float32;
  a file that is not UTF-8 is read as raw float32 of ``tensor_shape`` instead, which is why this module writes text).
- Relative paths (``_rel_to_abs_asset_path``) are resolved against the folder of ``projector_config.pbtxt`` and
  refused if they resolve outside it, so the TSVs sit next to the config and are named relative to it; the run
  folder can then be moved or copied with the run directory. Metadata is served by ``_serve_metadata``, which counts
  its first line as a header when it holds a tab (always here: three columns).

The metadata columns are ``modality``, ``class`` (the names of the item's classes, in class order, joined with ``|``;
empty for an item without a class) and ``key`` (the item id, or ``<modality>/<row>`` with the row in the split's
arrays when no ids are given). TSV cannot quote, so in every field ``\\``, TAB, LF and CR are written as ``\\\\``,
``\\t``, ``\\n`` and ``\\r``, and a ``|`` inside a class name as ``\\|`` (the join stays unambiguous).

Size: the tensor file takes about 10 bytes a value (measured on L2-normalised rows), ``rows x d x 10``, hence
``max_items``: a larger split is represented by a seeded random sample (see :func:`write_projector`), named in the
EmbeddingInfo's ``tensor_name`` (a TSV has no room for a comment line: the plugin would parse it as a row).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tf_xmr.files import atomic_write_text

#: The run folder under the logs folder (the split the embeddings come from).
RUN = "test"
#: ``tensorboard.plugins.projector.metadata``: PLUGINS_DIR / PLUGIN_ASSETS_NAME and PROJECTOR_FILENAME (the plugin
#: module calls itself internal, so the names are spelled here; the tests compare them with the installed plugin).
ASSETS_DIR = os.path.join("plugins", "org_tensorflow_tensorboard_projector")
CONFIG_FILE = "projector_config.pbtxt"
TENSOR_FILE = "embeddings.tsv"
METADATA_FILE = "metadata.tsv"
METADATA_COLUMNS = ("modality", "class", "key")
#: The same floor as the cosine scorer in ``tf_xmr.metrics.retrieval``: ``x / max(||x||, eps)``.
NORM_EPS = 1e-12

_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_ESCAPE_CLASS = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "|": "\\|"})


def write_projector(log_dir, embeddings: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], *,
                    class_names: Sequence[str], keys: Mapping[str, Sequence[str]] | None = None,
                    max_items: int = 10000, seed: int = 0, normalize: bool = False) -> Path | None:
    """Write the embeddings of every modality as ONE projector tensor (modalities stacked in ``embeddings`` order)
    plus class metadata, where ``tensorboard --logdir <run_dir>/logs`` (or any folder above it) shows them.

    Sampling: when the modalities hold ``N > max_items`` rows in all, modality ``m`` with ``n_m`` rows keeps
    ``k_m`` of them, ``k_m = floor(max_items * n_m / N)`` plus one for the modalities with the largest remainders
    until ``sum k_m = max_items`` (largest-remainder rounding; ties in modality order); a modality with rows that got
    none then takes one from the largest share, when ``max_items`` has a point for every such modality, so no
    modality drops out of the picture. The rows are drawn without replacement by ``numpy.random.default_rng(seed)``
    (one generator, modalities in order) and kept in their original order; the same inputs and seed give the same
    files. ``tensor_name`` is then ``"test embeddings (<kept> of <N>, seeded sample, seed <seed>)"``, else
    ``"test embeddings"``.

    Args:
        log_dir: the run's ``logs`` folder; created if missing.
        embeddings: modality -> (n_m, d) finite float array; every modality has the same d (the common space).
        labels: modality -> (n_m, c) multi-hot 0/1 array (single- or multi-label), c = ``len(class_names)``.
        class_names: the name of each class, in label-column order.
        keys: optional modality -> n_m item ids (made strings); given, it must cover every modality. Without it an
            item's key is ``<modality>/<row>``, its row in ``embeddings[modality]`` (before any sampling).
        max_items: the most points written (>= 1).
        seed: the sampling seed.
        normalize: divide every row by ``max(||row||_2, 1e-12)`` first (cosine runs: the projector's distances then
            follow the ranking's; an all-zero row stays zero).

    Returns:
        The folder written (``<log_dir>/test/plugins/org_tensorflow_tensorboard_projector``), or None when the
        modalities hold no rows (nothing is written).

    Raises:
        ValueError: naming the modality, for row counts that differ between ``embeddings``, ``labels`` and ``keys``,
            a d that differs between modalities, non-finite embeddings, labels that are not (n_m, c) 0/1 arrays, a
            modality missing from ``labels``/``keys`` or absent from ``embeddings``, or ``max_items < 1``.
    """
    if isinstance(max_items, bool) or not isinstance(max_items, int | np.integer) or max_items < 1:
        raise ValueError(f"max_items must be a positive integer, got {max_items!r}")
    arrays, label_sets, key_lists = _checked(embeddings, labels, keys, [str(name) for name in class_names])
    counts = {m: x.shape[0] for m, x in arrays.items()}
    total = sum(counts.values())
    if total == 0:
        return None

    rng = np.random.default_rng(seed)
    sizes = _sample_sizes(counts, int(max_items))
    chosen = {m: (np.arange(n) if sizes[m] == n else np.sort(rng.choice(n, size=sizes[m], replace=False)))
              for m, n in counts.items()}
    kept = sum(sizes.values())

    tensor = np.concatenate([arrays[m][rows] for m, rows in chosen.items()], axis=0).astype(np.float64)
    if normalize:
        tensor = tensor / np.maximum(np.linalg.norm(tensor, axis=1, keepdims=True), NORM_EPS)
    escaped_classes = [name.translate(_ESCAPE_CLASS) for name in class_names]
    lines = ["\t".join(METADATA_COLUMNS)]
    for m, rows in chosen.items():
        modality = m.translate(_ESCAPE)
        for row in rows:
            names = "|".join(escaped_classes[j] for j in np.flatnonzero(label_sets[m][row]))
            key = key_lists[m][row].translate(_ESCAPE) if key_lists is not None else f"{modality}/{row}"
            lines.append(f"{modality}\t{names}\t{key}")

    from tensorboard.plugins.projector import ProjectorConfig

    run_dir = Path(log_dir) / RUN
    folder = run_dir / ASSETS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    # The tensor and the metadata first, the config that points at them last: a TensorBoard reading meanwhile sees
    # either no config or a complete one.
    _atomic_write_tensor(folder / TENSOR_FILE, tensor)
    atomic_write_text(str(folder / METADATA_FILE), "\n".join(lines) + "\n")
    config = ProjectorConfig()
    info = config.embeddings.add()
    info.tensor_name = "test embeddings" if kept == total else \
        f"test embeddings ({kept} of {total}, seeded sample, seed {seed})"
    info.tensor_path = TENSOR_FILE  # relative to the config's folder (the only place the plugin accepts)
    info.metadata_path = METADATA_FILE
    info.tensor_shape.extend(tensor.shape)
    from google.protobuf import text_format

    atomic_write_text(str(folder / CONFIG_FILE), text_format.MessageToString(config))
    _ensure_event_file(run_dir)
    return folder


def _checked(embeddings, labels, keys, class_names):
    """The inputs as (n_m, d) arrays, boolean (n_m, c) label arrays and key lists, or a ValueError."""
    if not isinstance(embeddings, Mapping) or not embeddings:
        raise ValueError("embeddings must map at least one modality to an (n, d) array")
    arrays, dims = {}, {}
    for m, x in embeddings.items():
        x = np.asarray(x)
        if x.ndim != 2 or x.dtype.kind not in "fiu":
            raise ValueError(f"embeddings[{m!r}] must be a 2-D (n, d) float array, got shape {x.shape} of {x.dtype}")
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise ValueError(f"embeddings[{m!r}] holds NaN or infinite values (row {int(np.argmax(bad))})")
        arrays[m] = x  # converted after sampling: a 1M-row split is not copied
        dims[m] = x.shape[1]
    first = next(iter(dims))
    for m, d in dims.items():
        if d != dims[first]:
            raise ValueError(f"embeddings[{m!r}] has d = {d}, embeddings[{first!r}] d = {dims[first]}: every "
                             "modality must be in the same common space")

    for name, mapping in (("labels", labels), ("keys", keys)):
        if mapping is None:
            continue
        for m in arrays:
            if m not in mapping:
                raise ValueError(f"{name} has no entry for modality {m!r}")
        for m in mapping:
            if m not in arrays:
                raise ValueError(f"{name}[{m!r}] is given but embeddings has no modality {m!r}")

    label_sets = {}
    for m, x in arrays.items():
        y = np.asarray(labels[m])
        if y.ndim != 2 or y.shape[1] != len(class_names):
            raise ValueError(f"labels[{m!r}] must be multi-hot (n, {len(class_names)}) (one column per class name), "
                             f"got shape {y.shape}")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"labels[{m!r}] has {y.shape[0]} rows, embeddings[{m!r}] {x.shape[0]}")
        if y.dtype.kind not in "biuf" or not np.isin(y, (0, 1)).all():
            raise ValueError(f"labels[{m!r}] must hold only 0 and 1 (multi-hot)")
        label_sets[m] = y.astype(bool)

    key_lists = None
    if keys is not None:
        key_lists = {}
        for m, x in arrays.items():
            items = [str(k) for k in keys[m]]
            if len(items) != x.shape[0]:
                raise ValueError(f"keys[{m!r}] has {len(items)} items, embeddings[{m!r}] {x.shape[0]} rows")
            key_lists[m] = items
    return arrays, label_sets, key_lists


def _sample_sizes(counts: dict[str, int], budget: int) -> dict[str, int]:
    """Rows kept per modality: all of them within ``budget``, else the largest-remainder split described in
    :func:`write_projector` (exact integer arithmetic)."""
    total = sum(counts.values())
    if total <= budget:
        return dict(counts)
    sizes = {m: budget * n // total for m, n in counts.items()}  # < n_m, since budget < total
    remainders = {m: budget * n % total for m, n in counts.items()}
    left = budget - sum(sizes.values())
    for m in sorted(counts, key=lambda m: -remainders[m])[:left]:  # stable sort: ties in modality order
        sizes[m] += 1
    present = [m for m, n in counts.items() if n]
    if budget >= len(present):
        for m in present:
            if sizes[m] == 0:
                # The budget covers every present modality and m has none, so the largest share is at least 2 and
                # keeps a point after giving one.
                donor = max(sizes, key=lambda k: sizes[k])
                sizes[donor] -= 1
                sizes[m] = 1
    return sizes


def _atomic_write_tensor(path: Path, tensor: np.ndarray) -> None:
    """``tensor`` as tab-separated ``%.6g`` rows (6 significant digits: relative error <= 5e-6, below float32's
    display in the projector), streamed to a temporary name and renamed, like ``tf_xmr.files.atomic_write_text``
    (which would need the whole text in memory)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            np.savetxt(handle, tensor, fmt="%.6g", delimiter="\t")
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def _ensure_event_file(run_dir: Path) -> None:
    """Make ``run_dir`` a TensorBoard run: an event file holding only the version header, unless it has one."""
    if glob.glob(os.path.join(glob.escape(str(run_dir)), "*tfevents*")):
        return
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(run_dir))
    writer.flush()
    writer.close()

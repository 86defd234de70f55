"""tf.data input pipelines over in-memory splits and TFRecord splits, with one element structure for both.

Every element is a dict ``{modality: float32 (b, d_m) for each requested modality, "labels": float32 (b, c)}``
(multi-hot labels, whatever the storage). With ``shuffle=False`` and ``drop_remainder=False`` a pass yields every item
exactly once, in the split's order, the last batch possibly partial: evaluation relies on it (design.md rule 6).
"""

from __future__ import annotations

from collections.abc import Sequence

from tf_xmr.data.feature_set import LABELS_KEY, RecordSplit, Split, to_multi_hot
from tf_xmr.errors import DataError

#: Default shuffle buffer for streamed records: large enough to mix shards well, small enough to stay streamed.
RECORD_SHUFFLE_BUFFER = 10_000


def _finish(ds):
    """``ds`` prefetched, with tf.data autotuning off.

    Why off: an autotuned iterator runs a model thread that re-tunes the pipeline at periods that double from 10 ms
    up to 60 s, and destroying the iterator joins that thread, which now and then sleeps out the rest of its period
    instead of waking at the cancellation (TF 2.21). Measured: 2 of 25 teardowns of the training stream after 2.5 s
    of iteration took 2.4-2.5 s (the rest of a 2.56 s period), 0 of 25 with autotuning off; Keras ``fit``, whose
    frame owns the iterator, took 7-31 s to return after SDML's last epoch in 6 of 14 runs (issue 20). These
    pipelines only slice in-memory arrays or parse whole record batches: without the tuner, AUTOTUNE parallelism is
    the core count and the prefetch buffer adapts on its own (the legacy tuner, no thread), and element order is
    unchanged. ``benchmarks/train_step_speed.py`` reports the fit teardown time and the epoch times.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def _resolve_modalities(split: Split | RecordSplit, modalities: Sequence[str] | str | None) -> tuple[str, ...]:
    available = tuple(split.modalities)
    if isinstance(modalities, str):
        modalities = (modalities,)
    if modalities is None:
        if not split.paired and len(available) > 1:
            raise DataError(
                f"unpaired split with modalities {list(available)}: request exactly one modality per dataset"
            )
        return available
    modalities = tuple(modalities)
    if not modalities:
        raise DataError("make_dataset: modalities is empty")
    for m in modalities:
        if m not in available:
            raise DataError(f"make_dataset: split has no modality {m!r} (has: {', '.join(available)})")
    if len(set(modalities)) != len(modalities):
        raise DataError(f"make_dataset: modality requested twice in {list(modalities)}")
    if not split.paired and len(modalities) != 1:
        raise DataError(
            f"unpaired split: items of {list(modalities)} are not aligned, request exactly one modality per dataset"
        )
    return modalities


def make_dataset(
    split: Split | RecordSplit,
    *,
    batch_size: int,
    num_classes: int,
    modalities: Sequence[str] | str | None = None,
    shuffle: bool = False,
    seed: int | None = None,
    repeat: bool = False,
    drop_remainder: bool = False,
    shuffle_buffer: int | None = None,
):
    """Batched ``tf.data.Dataset`` over one split.

    In memory: ``from_tensor_slices -> shuffle -> repeat -> batch -> prefetch``. Records: shard list ->
    ``interleave(TFRecordDataset)`` (parallel; deterministic unless shuffling without a seed) -> shuffle -> repeat ->
    batch -> ``parse_example`` on the whole batch -> ``decode_raw`` + reshape -> prefetch. Both give identical element
    specs, and with ``shuffle=False`` identical elements.

    Args:
        split: a :class:`Split` or :class:`RecordSplit`.
        batch_size: items per batch (> 0).
        num_classes: c, the width of the multi-hot labels.
        modalities: modalities to include; default all of a paired split. An unpaired split needs exactly one.
        shuffle: shuffle items (and, for records, the shard order) every epoch.
        seed: shuffle seed; with a seed the order is reproducible (a different permutation each epoch).
        repeat: repeat indefinitely (epochs run into each other; no partial batch at epoch ends).
        drop_remainder: drop the last partial batch (training only; never for evaluation).
        shuffle_buffer: shuffle buffer size; default the whole split in memory, ``min(n, 10000)`` for records.

    Returns:
        A dataset of dicts ``{modality: float32 (b, d_m), "labels": float32 (b, c)}``; b is static (batch_size) only
        with ``drop_remainder=True``.

    Raises:
        DataError: unknown/duplicate modality, several modalities of an unpaired split, bad batch size, labels that
            do not fit ``num_classes``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"make_dataset: batch_size must be a positive integer, got {batch_size!r}")
    if shuffle_buffer is not None and (not isinstance(shuffle_buffer, int) or shuffle_buffer < 1):
        raise DataError(f"make_dataset: shuffle_buffer must be a positive integer, got {shuffle_buffer!r}")
    mods = _resolve_modalities(split, modalities)
    if isinstance(split, RecordSplit):
        return _records_dataset(split, mods, batch_size, num_classes, shuffle, seed, repeat, drop_remainder,
                                shuffle_buffer)
    if isinstance(split, Split):
        return _memory_dataset(split, mods, batch_size, num_classes, shuffle, seed, repeat, drop_remainder,
                               shuffle_buffer)
    raise DataError(f"make_dataset: expected a Split or RecordSplit, got {type(split).__name__}")


def _memory_dataset(split, mods, batch_size, num_classes, shuffle, seed, repeat, drop_remainder, shuffle_buffer):
    import tensorflow as tf

    n = split.num_examples(mods[0])
    tensors = {m: split.features[m] for m in mods}
    # Any requested modality carries the item's labels (identical across a paired split).
    tensors[LABELS_KEY] = to_multi_hot(split.labels[mods[0]], num_classes)
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer or n, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return _finish(ds)


def _records_dataset(split, mods, batch_size, num_classes, shuffle, seed, repeat, drop_remainder, shuffle_buffer):
    import tensorflow as tf

    if split.num_classes != num_classes:
        raise DataError(
            f"make_dataset: records in {split.root} store labels of width {split.num_classes}, "
            f"num_classes={num_classes}"
        )
    files = split.files(None if split.paired else mods[0])
    n = split.num_examples(mods[0])
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    # Items were written round-robin over the shards, so a deterministic interleave that cycles over all shards one
    # record at a time restores the original order. Determinism is only given up when shuffling without a seed.
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=len(files),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=(not shuffle) or seed is not None,
    )
    if shuffle:
        ds = ds.shuffle(shuffle_buffer or min(n, RECORD_SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    # Batch first, then parse the whole batch in one parse_example call: 2-5x faster than per-record parsing.
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    spec = {key: tf.io.FixedLenFeature([], tf.string) for key in (*mods, LABELS_KEY)}
    widths = {**{m: split.dims[m] for m in mods}, LABELS_KEY: num_classes}
    static_batch = batch_size if drop_remainder else None

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        out = {}
        for key in (*mods, LABELS_KEY):
            values = tf.io.decode_raw(parsed[key], tf.float32)  # (b, width): every record has the same length
            values = tf.reshape(values, [-1, widths[key]])
            out[key] = tf.ensure_shape(values, [static_batch, widths[key]])
        return out

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=(not shuffle) or seed is not None)
    return _finish(ds)


def make_training_stream(
    split: Split | RecordSplit,
    *,
    batch_size: int,
    num_classes: int,
    seed: int,
    first_epoch: int,
    epochs: int,
    modalities: Sequence[str] | str | None = None,
    drop_remainder: bool = False,
    shuffle_buffer: int | None = None,
):
    """The shuffled training batches of epochs ``first_epoch .. epochs - 1``, back to back, for ONE ``fit`` iterator.

    Unlike ``make_dataset(shuffle=True)``, whose order depends on how many iterators the dataset object has made (a
    reshuffle per iterator, so a fresh process restarts with the epoch-0 order), the order of epoch ``e`` here is a
    function of ``(seed, e)`` alone: a run resumed at epoch ``e`` sees exactly the batches an uninterrupted run sees
    from epoch ``e`` on. Every epoch is batched on its own (a partial last batch per epoch unless ``drop_remainder``),
    so ``fit`` must be given ``steps_per_epoch`` (it then keeps one iterator across epochs).

    In memory, the item indices go through the seeded ``shuffle(reshuffle_each_iteration=True)`` of
    ``make_dataset`` repeated over the epochs, and the epochs before ``first_epoch`` are skipped (cheap: only indices
    are shuffled). Epoch ``e`` gets pass ``2e`` of that shuffle: ``fit`` over a finite ``make_dataset`` pipeline (how
    every run trained before resumes were exact) makes two iterators per epoch in Keras 3.15, so its epoch ``e`` saw
    the shuffle's pass ``2e`` (measured: passes 0, 2, 4). Keeping that order keeps every earlier result reproducible;
    a test checks both. Records shuffle their shard list and a ``shuffle_buffer`` window with integer seeds derived
    from ``(seed, e)``.

    Args:
        split, batch_size, num_classes, modalities, drop_remainder, shuffle_buffer: as for ``make_dataset``.
        seed: the run seed.
        first_epoch: the first epoch (0-based) the stream starts with.
        epochs: one past the last epoch.

    Returns:
        A dataset of the same elements as ``make_dataset``.
    """
    import tensorflow as tf

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"make_training_stream: batch_size must be a positive integer, got {batch_size!r}")
    if not 0 <= first_epoch < epochs:
        raise DataError(f"make_training_stream: need 0 <= first_epoch < epochs, got {first_epoch} and {epochs}")
    mods = _resolve_modalities(split, modalities)
    if isinstance(split, RecordSplit):
        # A record stream cannot be indexed, so each epoch is its own pipeline with integer seeds (tf.data's
        # shuffle takes no tensor seed); concatenation is lazy, each epoch opens its shards when it starts.
        stream = None
        for epoch in range(first_epoch, epochs):
            ds = _records_dataset(split, mods, batch_size, num_classes, True, _epoch_seed(seed, epoch), False,
                                  drop_remainder, shuffle_buffer)
            stream = ds if stream is None else stream.concatenate(ds)
        return _finish(stream)
    if not isinstance(split, Split):
        raise DataError(f"make_training_stream: expected a Split or RecordSplit, got {type(split).__name__}")

    n = split.num_examples(mods[0])
    # Eager tensors are captured by reference by the map below (no copy per epoch, no constant in a graph).
    tensors = {m: tf.convert_to_tensor(split.features[m], tf.float32) for m in mods}
    tensors[LABELS_KEY] = tf.convert_to_tensor(to_multi_hot(split.labels[mods[0]], num_classes), tf.float32)

    steps = n // batch_size if drop_remainder else -(-n // batch_size)
    ds = (tf.data.Dataset.range(n)
          .shuffle(shuffle_buffer or n, seed=int(seed), reshuffle_each_iteration=True)
          .batch(batch_size, drop_remainder=drop_remainder)
          .repeat(2 * epochs)
          .enumerate()
          # Passes 0, 2, 4, ... (see above): the odd passes are drawn and dropped.
          .filter(lambda i, _: (i // steps) % 2 == 0)
          .map(lambda _, idx: idx)
          .skip(first_epoch * steps))
    ds = ds.map(lambda idx: {key: tf.gather(value, idx) for key, value in tensors.items()},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return _finish(ds)


def _epoch_seed(seed: int, epoch: int) -> int:
    # Distinct, reproducible per (seed, epoch); kept below 2**31 for tf.data's int seeds.
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 1) % (2**31 - 1)


__all__ = ["make_dataset", "make_training_stream"]

"""Issue 17 item 1: a damaged TFRecord shard fails when the records are loaded, before any training, in one line.

tf.data ends a shard cut at a record boundary as if the file had ended, so such a shard used to train (or score) on
fewer items with exit 0; a shard cut inside a record or with a flipped byte raised DataLossError only when the
pipeline reached it, after the whole training for a test shard. Every damaged file here is made by the test from a
freshly written records folder.
"""

import os
import shutil
import struct

import pytest

from tests.conftest import run_in_process, tiny_overrides
from tf_xmr.data import load_records, make_synthetic, write_records
from tf_xmr.errors import DataError

NUM_SHARDS = 4


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    # 72 train / 8 val / 24 test items over 4 shards: 18 / 2 / 6 records per shard, so every shard can be halved.
    paired = make_synthetic(dims={"image": 12, "text": 5}, num_train=80, num_test=24, num_classes=4,
                            val_fraction=0.1, seed=3)
    unpaired = make_synthetic(dims={"image": 12, "text": 5}, num_train=80, num_test=24, num_classes=4,
                              modality_fractions={"image": 1.0, "text": 0.5}, seed=3)
    root = tmp_path_factory.mktemp("records")
    return {
        "paired": write_records(paired, str(root / "paired"), num_shards=NUM_SHARDS),
        "unpaired": write_records(unpaired, str(root / "unpaired"), num_shards=NUM_SHARDS),
    }


def _copy(pristine, kind, tmp_path) -> str:
    return shutil.copytree(pristine[kind], str(tmp_path / kind))


def _record_offsets(path: str) -> list[int]:
    """Byte offset where each record starts (TFRecord framing: u64 length, u32 CRC, data, u32 CRC)."""
    offsets, position, size = [], 0, os.path.getsize(path)
    with open(path, "rb") as f:
        while position < size:
            offsets.append(position)
            (length,) = struct.unpack("<Q", f.read(8))
            position += 8 + 4 + length + 4
            f.seek(position)
    return offsets


def _load_error(root: str) -> str:
    with pytest.raises(DataError) as info:
        load_records(root)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_intact_records_load_including_empty_shards(pristine, tmp_path):
    fs = make_synthetic(dims={"image": 3, "text": 2}, num_train=20, num_test=3, num_classes=2, seed=0)
    root = write_records(fs, str(tmp_path / "five"), num_shards=5)  # test: 3 items, so 2 of its 5 shards are empty
    assert os.path.getsize(os.path.join(root, "test-00004-of-00005.tfrecord")) == 0
    assert load_records(root).splits["test"].num_examples() == 3
    for kind in ("paired", "unpaired"):
        load_records(pristine[kind])


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_shard_cut_at_a_record_boundary_is_refused(pristine, tmp_path, split):
    root = _copy(pristine, "paired", tmp_path)
    shard = os.path.join(root, f"{split}-00001-of-{NUM_SHARDS:05d}.tfrecord")
    offsets = _record_offsets(shard)
    kept = len(offsets) // 2
    os.truncate(shard, offsets[kept])  # the silent case: the file ends cleanly after `kept` records
    message = _load_error(root)
    assert message.startswith(f"records: shard {shard} (split {split!r}) holds {kept} records")
    assert f"dataset.json says {len(offsets)}" in message and "truncated" in message


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_shard_cut_inside_a_record_is_refused(pristine, tmp_path, split):
    root = _copy(pristine, "paired", tmp_path)
    shard = os.path.join(root, f"{split}-00000-of-{NUM_SHARDS:05d}.tfrecord")
    offsets = _record_offsets(shard)
    os.truncate(shard, offsets[1] + 20)  # inside the second record
    message = _load_error(root)
    assert message.startswith(f"records: shard {shard} (split {split!r}) is corrupt: truncated record")
    assert f"after 1 readable of {len(offsets)} records" in message


def test_flipped_byte_fails_the_crc(pristine, tmp_path):
    root = _copy(pristine, "paired", tmp_path)
    shard = os.path.join(root, f"train-00002-of-{NUM_SHARDS:05d}.tfrecord")
    offsets = _record_offsets(shard)
    with open(shard, "r+b") as f:  # a byte of the third record's data, same file size
        f.seek(offsets[2] + 12 + 5)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    message = _load_error(root)
    assert message.startswith(f"records: shard {shard} (split 'train') is corrupt: corrupted record")
    assert "after 2 readable" in message


def test_shard_with_an_extra_record_is_refused(pristine, tmp_path):
    root = _copy(pristine, "paired", tmp_path)
    shard = os.path.join(root, f"test-00003-of-{NUM_SHARDS:05d}.tfrecord")
    offsets = _record_offsets(shard)
    with open(shard, "rb") as f:
        first = f.read(offsets[1])
    with open(shard, "ab") as f:
        f.write(first)
    message = _load_error(root)
    assert f"holds {len(offsets) + 1} records but dataset.json says {len(offsets)}" in message
    assert "longer than written" in message


def test_unpaired_shard_names_its_modality(pristine, tmp_path):
    root = _copy(pristine, "unpaired", tmp_path)
    shard = os.path.join(root, f"test.text-00000-of-{NUM_SHARDS:05d}.tfrecord")
    os.truncate(shard, _record_offsets(shard)[-1])
    assert _load_error(root).startswith(f"records: shard {shard} (split 'test' modality 'text') holds")


def test_unreadable_shard_is_one_line(pristine, tmp_path):
    root = _copy(pristine, "paired", tmp_path)
    shard = os.path.join(root, f"val-00000-of-{NUM_SHARDS:05d}.tfrecord")
    os.remove(shard)
    os.mkdir(shard)  # a directory where the shard should be
    message = _load_error(root)
    assert shard in message


def test_verify_false_skips_the_pass(pristine, tmp_path):
    root = _copy(pristine, "paired", tmp_path)
    shard = os.path.join(root, f"train-00000-of-{NUM_SHARDS:05d}.tfrecord")
    os.truncate(shard, _record_offsets(shard)[3])
    assert load_records(root, verify=False).splits["train"].num_examples() == 72


@pytest.mark.parametrize("split", ["train", "test"])
def test_train_cli_refuses_truncated_records_before_writing(pristine, tmp_path, capsys, monkeypatch, split):
    # train.py's main() in this process (its one-line errors in a fresh process: tests/training/test_train_cli.py).
    root = _copy(pristine, "paired", tmp_path)
    shard = os.path.join(root, f"{split}-00000-of-{NUM_SHARDS:05d}.tfrecord")
    os.truncate(shard, _record_offsets(shard)[9 if split == "train" else 3])
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(run_dir, epochs=1, extra=["data.source=records", f"data.root={root}"])
    result = run_in_process(capsys, monkeypatch, "train.py", "--config", "configs/acmr.yaml",
                            *[a for o in overrides for a in ("--set", o)])
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: records: shard {shard} (split {split!r}) holds")
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()

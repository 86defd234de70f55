"""Issue 17 item 7: messages that named the wrong cause or no culprit, each on an input the test makes.

A text file named .npz used to be reported as pickled data with a hint about allow_pickle (nudging toward an unsafe
load); an empty training split named neither file nor split; ExportedEncoder raised ValueError/TypeError for string
input instead of the project's ModelInputError.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import run_in_process
from tf_xmr.data import load_arrays
from tf_xmr.errors import DataError, ModelInputError
from tf_xmr.export.saved_model import ExportedEncoder, export_encoder

KEYS = {"train": {"image": "img", "text": "txt", "labels": "y"}}


def _arrays_error(path, keys=KEYS, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_arrays({split: str(path) for split in keys}, keys, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("content, says", [
    (b"image,text,label\n0.1,0.2,3\n", "is not an .npz archive"),
    (b"", "is empty (0 bytes)"),
])
def test_npz_that_is_not_an_archive_is_never_called_pickled(tmp_path, content, says):
    path = tmp_path / "features.npz"
    path.write_bytes(content)
    message = _arrays_error(path)
    assert message.startswith(f"arrays: {path} {says}")
    assert "pickle" not in message.lower()


def test_npy_named_npz_says_what_it_is(tmp_path):
    path = tmp_path / "features.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros((3, 4)))
    message = _arrays_error(path)
    assert "is a single .npy array" in message and "np.savez" in message and "pickle" not in message.lower()


def test_object_member_of_a_real_npz_is_named_without_an_unsafe_hint(tmp_path):
    path = tmp_path / "features.npz"
    objects = np.empty(6, dtype=object)
    objects[:] = [{"caption": "a"}] * 6
    np.savez(path, img=np.ones((6, 3)), txt=np.ones((6, 2)), y=np.arange(6) % 2, meta=objects)
    # An unused object member does not stop the load ...
    fs = load_arrays({"train": str(path)}, KEYS, val_fraction=0)
    assert fs.splits["train"].num_examples() == 6
    # ... a used one is named.
    message = _arrays_error(path, {"train": {"image": "img", "text": "meta", "labels": "y"}})
    assert "key 'meta' holds Python objects" in message and "pickle" not in message.lower()


@pytest.mark.parametrize("val_fraction", [0.1, 0])
def test_empty_training_split_names_file_key_and_split(tmp_path, val_fraction):
    path = tmp_path / "features.npz"
    np.savez(path, img=np.zeros((0, 3)), txt=np.zeros((0, 2)), y=np.zeros(0, np.int64),
             img_te=np.ones((4, 3)), txt_te=np.ones((4, 2)), y_te=np.arange(4) % 2)
    keys = {**KEYS, "test": {"image": "img_te", "text": "txt_te", "labels": "y_te"}}
    message = _arrays_error(path, keys, val_fraction=val_fraction)
    assert message == f"arrays: split 'train' is empty: labels key 'y' in {path} has 0 items"


def test_empty_index_vector_names_the_split(tmp_path):
    path = tmp_path / "features.npz"
    np.savez(path, img=np.ones((4, 3)), txt=np.ones((4, 2)), y=np.arange(4) % 2, tr=np.zeros(0, np.int64))
    message = _arrays_error(path, indices={"train": "tr"})
    assert f"{path} key 'tr' (split 'train') are empty" in message


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    encoder = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    path = export_encoder(encoder, str(tmp_path_factory.mktemp("export") / "text_encoder"), input_dim=5)
    return ExportedEncoder(path)


@pytest.mark.parametrize("bad, says", [
    ("a caption", "got the str 'a caption'"),
    (["a caption", "another"], "got dtype <U"),
    (np.array([["w"] * 5]), "got dtype <U1 of shape (1, 5)"),
    (tf.constant([["w"] * 5]), "got a string tensor of shape (1, 5)"),
    (b"bytes", "got the bytes"),
    (None, "got Python objects"),
    ([[1.0] * 5, [1.0] * 4], "got a ragged sequence"),
])
def test_exported_encoder_refuses_non_numeric_input_with_its_input_error(exported, bad, says):
    with pytest.raises(ModelInputError) as info:
        exported(bad)
    message = str(info.value)
    assert message.startswith(f"exported model {exported.path} takes numeric features of shape (batch, 5)")
    assert says in message


def test_exported_encoder_still_embeds_numbers(exported):
    for good in (np.zeros((2, 5)), [[1, 2, 3, 4, 5]], tf.ones((3, 5), tf.float64)):
        assert tuple(exported(good).shape) == (len(good), 3)
    with pytest.raises(ModelInputError, match=r"got \(2, 4\)"):
        exported(np.zeros((2, 4)))


def test_train_cli_on_a_text_npz_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    # train.py's main() in this process (its one-line errors in a fresh process: tests/training/test_train_cli.py).
    path = tmp_path / "features.npz"
    path.write_text("not an archive\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    result = run_in_process(capsys, monkeypatch, "train.py", "--config", "configs/acmr.yaml",
                            "--set", f"run_dir={run_dir}", "--set", "data.source=arrays",
                            "--set", f"data.arrays.paths={{train: {path}}}",
                            "--set", "data.arrays.keys={train: {image: img, text: txt, labels: y}}")
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: arrays: {path} is not an .npz archive (a zip of named .npy arrays, as np.savez "
                      f"writes): it starts with b'not an a'"]
    assert "Traceback" not in result.stderr and not os.path.exists(run_dir)

"""Embedding Projector files (tf_xmr.training.projector): the config, tensor and metadata read back independently,
sampling, normalisation, input errors, and the installed TensorBoard projector plugin finding and serving them.

The plugin test drives the plugin's own HTTP handlers (``get_plugin_apps()`` routes, called through
``werkzeug.test.Client``) rather than its private helpers: those routes are what the TensorBoard frontend requests, so
they are the contract, and they survive refactorings of the plugin's internals. The plugin gets the data provider
TensorBoard itself builds from an ``EventMultiplexer`` (``MultiplexerDataProvider``), since it lists runs through it.
"""

import json
import os
import time

import numpy as np
import pytest
from google.protobuf import text_format

from tf_xmr.training import projector
from tf_xmr.training.projector import write_projector

CLASSES = ["art", "biology", "geography"]


def as_multi_hot(rows):
    """Lists of class ids -> (n, 3) float32 multi-hot."""
    out = np.zeros((len(rows), len(CLASSES)), dtype=np.float32)
    for i, ids in enumerate(rows):
        out[i, ids] = 1.0
    return out


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    embeddings = {"image": rng.normal(size=(5, 4)).astype(np.float32),
                  "text": (rng.normal(size=(3, 4)) * 1e-3).astype(np.float32)}
    labels = {"image": as_multi_hot([[0], [1], [2], [0], [1]]),
              "text": as_multi_hot([[0, 2], [], [1]])}  # multi-label, and an item without a class
    return embeddings, labels


def read_config(folder):
    from tensorboard.plugins.projector import ProjectorConfig

    config = ProjectorConfig()
    text_format.Parse((folder / projector.CONFIG_FILE).read_text(), config)
    return config


def read_metadata(folder):
    lines = (folder / projector.METADATA_FILE).read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""  # ends with a newline, no blank row in between
    return [line.split("\t") for line in lines[:-1]]


def read_tensor(folder):
    return np.loadtxt(folder / projector.TENSOR_FILE, delimiter="\t", ndmin=2)


def test_layout_config_tensor_and_metadata_round_trip(tmp_path, data):
    from tensorboard.plugins.projector import metadata as plugin_metadata

    embeddings, labels = data
    logs = tmp_path / "logs"
    folder = write_projector(logs, embeddings, labels, class_names=CLASSES)

    # The folder the plugin reads a run's assets from, named with the plugin's own constants.
    assert folder == logs / "test" / plugin_metadata.PLUGINS_DIR / plugin_metadata.PLUGIN_ASSETS_NAME
    assert projector.CONFIG_FILE == plugin_metadata.PROJECTOR_FILENAME
    assert [f for f in os.listdir(logs / "test") if "tfevents" in f]  # what makes test/ a run
    assert sorted(os.listdir(folder)) == sorted([projector.CONFIG_FILE, projector.TENSOR_FILE,
                                                 projector.METADATA_FILE])  # no temporary file left

    config = read_config(folder)
    assert len(config.embeddings) == 1
    info = config.embeddings[0]
    assert info.tensor_name == "test embeddings"
    assert (info.tensor_path, info.metadata_path) == (projector.TENSOR_FILE, projector.METADATA_FILE)
    assert list(info.tensor_shape) == [8, 4]
    assert not config.model_checkpoint_path

    # %.6g keeps 6 significant digits: relative error <= 5e-6 (the text rows are 1e-3 smaller than the images).
    expected = np.concatenate([embeddings["image"], embeddings["text"]]).astype(np.float64)
    np.testing.assert_allclose(read_tensor(folder), expected, rtol=5e-6, atol=0)

    rows = read_metadata(folder)
    assert rows[0] == ["modality", "class", "key"]
    assert len(rows) == 8 + 1
    assert [r[0] for r in rows[1:]] == ["image"] * 5 + ["text"] * 3
    assert [r[1] for r in rows[1:]] == ["art", "biology", "geography", "art", "biology",
                                        "art|geography", "", "biology"]
    assert [r[2] for r in rows[1:]] == [f"image/{i}" for i in range(5)] + [f"text/{i}" for i in range(3)]


def test_keys_and_names_with_tabs_newlines_and_pipes_are_escaped(tmp_path, data):
    embeddings, labels = data
    keys = {"image": [f"img\t{i}" for i in range(5)], "text": ["a\nb", "c\\d", "e\rf"]}
    names = ["art\tdesign", "bio|logy", "geo\ngraphy"]
    folder = write_projector(tmp_path, embeddings, labels, class_names=names, keys=keys)

    rows = read_metadata(folder)
    assert all(len(row) == 3 for row in rows)  # no stray tab or line break split a field or a row
    assert [r[2] for r in rows[1:]] == [f"img\\t{i}" for i in range(5)] + ["a\\nb", "c\\\\d", "e\\rf"]
    assert rows[1][1] == "art\\tdesign"
    assert rows[6][1] == "art\\tdesign|geo\\ngraphy"  # text/0: classes 0 and 2
    assert rows[8][1] == "bio\\|logy"  # a pipe inside a name is not a separator


def test_a_large_split_is_sampled_proportionally_and_reproducibly(tmp_path):
    rng = np.random.default_rng(0)
    embeddings = {"image": rng.normal(size=(300, 2)), "text": rng.normal(size=(100, 2))}
    labels = {m: as_multi_hot([[i % 3] for i in range(len(x))]) for m, x in embeddings.items()}

    first = write_projector(tmp_path / "a", embeddings, labels, class_names=CLASSES, max_items=40, seed=3)
    rows = read_metadata(first)[1:]
    modalities = [r[0] for r in rows]
    assert (modalities.count("image"), modalities.count("text")) == (30, 10)  # 300:100 = 30:10
    assert read_config(first).embeddings[0].tensor_name == "test embeddings (40 of 400, seeded sample, seed 3)"
    assert list(read_config(first).embeddings[0].tensor_shape) == [40, 2]

    # Tensor and metadata rows stay aligned: the key names the source row, which is the tensor row written.
    tensor = read_tensor(first)
    for (modality, cls, key), values in zip(rows, tensor, strict=True):
        name, row = key.split("/")
        assert name == modality
        np.testing.assert_allclose(values, embeddings[modality][int(row)], rtol=5e-6)
        assert cls == CLASSES[int(row) % 3]
    for modality in embeddings:  # distinct rows, in their original order
        picked = [int(r[2].split("/")[1]) for r in rows if r[0] == modality]
        assert picked == sorted(set(picked))

    again = write_projector(tmp_path / "b", embeddings, labels, class_names=CLASSES, max_items=40, seed=3)
    other = write_projector(tmp_path / "c", embeddings, labels, class_names=CLASSES, max_items=40, seed=4)
    for name in (projector.TENSOR_FILE, projector.METADATA_FILE):
        assert (again / name).read_bytes() == (first / name).read_bytes()
    assert (other / projector.METADATA_FILE).read_bytes() != (first / projector.METADATA_FILE).read_bytes()


def test_a_small_modality_keeps_a_point_in_the_sample(tmp_path):
    # 10 * 2 / 1002 rounds to 0 text rows; the sample still shows the text modality.
    embeddings = {"image": np.ones((1000, 2)), "text": np.ones((2, 2))}
    labels = {"image": as_multi_hot([[0]] * 1000), "text": as_multi_hot([[1]] * 2)}
    folder = write_projector(tmp_path, embeddings, labels, class_names=CLASSES, max_items=10)
    modalities = [r[0] for r in read_metadata(folder)[1:]]
    assert (modalities.count("image"), modalities.count("text")) == (9, 1)


def test_normalize_writes_unit_rows_in_the_same_directions(tmp_path, data):
    embeddings, labels = data
    folder = write_projector(tmp_path, embeddings, labels, class_names=CLASSES, normalize=True)
    tensor = read_tensor(folder)
    np.testing.assert_allclose(np.linalg.norm(tensor, axis=1), 1.0, atol=2e-5)
    stacked = np.concatenate([embeddings["image"], embeddings["text"]]).astype(np.float64)
    cosines = np.sum(tensor * stacked, axis=1) / np.linalg.norm(stacked, axis=1)
    np.testing.assert_allclose(cosines, 1.0, atol=2e-5)


def test_no_rows_writes_nothing(tmp_path):
    empty = {"image": np.zeros((0, 4)), "text": np.zeros((0, 4))}
    labels = {m: np.zeros((0, 3)) for m in empty}
    assert write_projector(tmp_path / "logs", empty, labels, class_names=CLASSES) is None
    assert not (tmp_path / "logs").exists()


def test_writing_again_replaces_the_files_and_keeps_one_event_file(tmp_path, data):
    embeddings, labels = data
    write_projector(tmp_path, embeddings, labels, class_names=CLASSES)
    smaller = {m: x[:2] for m, x in embeddings.items()}
    folder = write_projector(tmp_path, smaller, {m: y[:2] for m, y in labels.items()}, class_names=CLASSES)
    assert read_tensor(folder).shape == (4, 4)
    assert len(read_metadata(folder)) == 4 + 1
    assert len([f for f in os.listdir(tmp_path / "test") if "tfevents" in f]) == 1


def _bad(data, what):
    embeddings, labels = data
    embeddings, labels, keys = dict(embeddings), dict(labels), None
    if what == "label rows":
        labels["text"] = labels["text"][:2]
    elif what == "d":
        embeddings["text"] = np.zeros((3, 5))
    elif what == "nan":
        embeddings["text"] = embeddings["text"].copy()
        embeddings["text"][1, 2] = np.nan
    elif what == "key rows":
        keys = {"image": [str(i) for i in range(5)], "text": ["a", "b"]}
    elif what == "missing keys":
        keys = {"image": [str(i) for i in range(5)]}
    elif what == "label width":
        labels["text"] = labels["text"][:, :2]
    elif what == "not multi-hot":
        labels["text"] = labels["text"] * 0.5
    elif what == "missing labels":
        del labels["text"]
    return embeddings, labels, keys


@pytest.mark.parametrize("what", ["label rows", "d", "nan", "key rows", "missing keys", "label width",
                                  "not multi-hot", "missing labels"])
def test_bad_input_raises_value_error_naming_the_modality_and_writes_nothing(tmp_path, data, what):
    embeddings, labels, keys = _bad(data, what)
    with pytest.raises(ValueError, match="'text'"):
        write_projector(tmp_path / "logs", embeddings, labels, class_names=CLASSES, keys=keys)
    assert not (tmp_path / "logs").exists()


def test_labels_for_a_modality_without_embeddings_and_a_bad_max_items_are_refused(tmp_path, data):
    embeddings, labels = data
    with pytest.raises(ValueError, match="'audio'"):
        write_projector(tmp_path, embeddings, {**labels, "audio": labels["text"]}, class_names=CLASSES)
    with pytest.raises(ValueError, match="max_items"):
        write_projector(tmp_path, embeddings, labels, class_names=CLASSES, max_items=0)


def _plugin(logdir):
    """The installed projector plugin over ``logdir``, with the data provider ``tensorboard --load_fast=false``
    builds (the default Rust data server lists the same runs: a folder holding an event file)."""
    from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector.projector_plugin import ProjectorPlugin

    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    context = base_plugin.TBContext(logdir=str(logdir), multiplexer=multiplexer,
                                    data_provider=MultiplexerDataProvider(multiplexer, str(logdir)))
    return ProjectorPlugin(context)


def _is_active(plugin) -> bool:
    """``is_active()`` answers False while a background thread looks for configs, True once one was found; wait
    for that thread (a bounded wait, not a timing assertion)."""
    if plugin.is_active():
        return True
    for _ in range(600):
        time.sleep(0.05)
        if plugin.is_active():
            return True
    return False


@pytest.mark.parametrize("root", ["logs", "parent"], ids=["logdir=run_dir/logs", "logdir=saved_models"])
def test_the_tensorboard_projector_plugin_finds_and_serves_the_embeddings(tmp_path, data, root):
    import tensorflow as tf
    from werkzeug.test import Client

    embeddings, labels = data
    logs = tmp_path / "saved_models" / "run1" / "logs"
    writer = tf.summary.create_file_writer(str(logs / "train"))  # a run's epoch scalars, as the callback writes
    with writer.as_default():
        tf.summary.scalar("loss", 1.5, step=1)
    writer.close()
    write_projector(logs, embeddings, labels, class_names=CLASSES, max_items=6, seed=1)

    logdir, run = (logs, "test") if root == "logs" else (tmp_path / "saved_models", "run1/logs/test")
    plugin = _plugin(logdir)
    assert _is_active(plugin)
    routes = plugin.get_plugin_apps()

    def get(route, **args):
        response = Client(routes[route]).get(route, query_string=args)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_data()

    assert json.loads(get("/runs")) == [run]  # train/ has no embeddings: only the test run is listed
    info = json.loads(get("/info", run=run))["embeddings"]
    assert len(info) == 1
    name = info[0]["tensorName"]
    assert name == "test embeddings (6 of 8, seeded sample, seed 1)"
    assert info[0]["tensorShape"] == [6, 4]

    served = np.frombuffer(get("/tensor", run=run, name=name), dtype=np.float32).reshape(6, 4)
    metadata = get("/metadata", run=run, name=name).decode("utf-8").splitlines()
    assert metadata[0] == "modality\tclass\tkey"
    assert len(metadata) == 6 + 1
    for line, values in zip(metadata[1:], served, strict=True):  # each served row is the input row its key names
        modality, row = line.split("\t")[2].split("/")
        np.testing.assert_allclose(values, embeddings[modality][int(row)], rtol=5e-6)

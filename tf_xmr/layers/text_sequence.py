"""The DA-GAN text feature network TxtCNN (Sec. 4.2.2, Eqs. 5-9) for token-id input.

    token ids (b, l) -> Embedding(V + 1, e) (word2vec-initialised; id 0 = padding)       Eq. 5
                     -> BiLSTM (lambda_B = 2 * units, every time step)                   h(t)
                     -> Conv1D(kappa filters, width m, activation sigma)                 Eqs. 6-7
                     -> max over time                                                    Eq. 8
                     -> Dropout -> Dense(output_dim), linear                             Eq. 9
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


class TokenIds(keras.layers.Layer):
    """Float feature rows holding token ids (how they travel in the feature pipeline) -> int32 ids."""

    def call(self, inputs):
        return tf.cast(tf.round(inputs), tf.int32)

    def compute_output_shape(self, input_shape):
        return input_shape


def text_sequence_network(*, vocabulary_size: int, embedding_dim: int, lstm_units: int, filters: int,
                          kernel_size: int, output_dim: int, dropout: float, activation: str = "relu",
                          embedding_matrix: np.ndarray | None = None, trainable_embeddings: bool = True,
                          name: str = "text_sequence_network") -> keras.Sequential:
    """Token ids (b, l) -> (b, output_dim) text representation zeta_T.

    Args:
        vocabulary_size: V, words in the vocabulary (ids 1..V; 0 pads).
        embedding_dim: e (300 for the paper's word2vec).
        lstm_units: units per direction (lambda_B = 2 * lstm_units).
        filters: kappa, number of convolution kernels.
        kernel_size: m, kernel width in words (the paper's "3 x 300").
        output_dim: width of the final FC layer (4096 in the paper).
        dropout: dropout rate before the FC layer (Eq. 9's mask Omega).
        activation: sigma of Eq. 6 (not named by the paper).
        embedding_matrix: optional (V + 1, e) initial word vectors (row 0 = padding).
        trainable_embeddings: fine-tune the word vectors.
    """
    if embedding_matrix is not None:
        embedding_matrix = np.asarray(embedding_matrix, np.float32)
        if embedding_matrix.shape != (vocabulary_size + 1, embedding_dim):
            raise ValueError(f"embedding matrix has shape {embedding_matrix.shape}, expected "
                             f"({vocabulary_size + 1}, {embedding_dim})")
        initializer = keras.initializers.Constant(embedding_matrix)
    else:
        initializer = "uniform"
    return keras.Sequential(
        [
            TokenIds(),
            keras.layers.Embedding(vocabulary_size + 1, embedding_dim, embeddings_initializer=initializer,
                                   trainable=trainable_embeddings, name="word_embedding"),
            keras.layers.Bidirectional(keras.layers.LSTM(lstm_units, return_sequences=True), name="bilstm"),
            keras.layers.Conv1D(filters, kernel_size, activation=activation, name="text_cnn"),
            keras.layers.GlobalMaxPooling1D(name="max_over_time"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(output_dim, name="text_fc"),
        ],
        name=name,
    )

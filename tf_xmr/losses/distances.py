"""Pairwise distances between embedding sets."""

import tensorflow as tf


def pairwise_squared_euclidean(a, b):
    """Squared Euclidean distances between every row of ``a`` and every row of ``b``.

    ``||a_i - b_j||^2 = ||a_i||^2 + ||b_j||^2 - 2 a_i.b_j``, clipped at 0 (rounding can make it slightly negative).

    Args:
        a: (n_a, d) float tensor.
        b: (n_b, d) float tensor.

    Returns:
        (n_a, n_b) tensor.
    """
    a_sq = tf.reduce_sum(tf.square(a), axis=1, keepdims=True)
    b_sq = tf.reduce_sum(tf.square(b), axis=1, keepdims=True)
    return tf.maximum(a_sq + tf.transpose(b_sq) - 2.0 * tf.matmul(a, b, transpose_b=True), 0.0)


def pairwise_euclidean(a, b, epsilon: float = 1e-12):
    """Euclidean distances ``sqrt(max(||a_i - b_j||^2, epsilon))``.

    The floor keeps the gradient finite: d sqrt(x)/dx is unbounded at 0, which a pair of identical embeddings hits.

    Args:
        a: (n_a, d) float tensor.
        b: (n_b, d) float tensor.
        epsilon: floor under the squared distance.

    Returns:
        (n_a, n_b) tensor.
    """
    return tf.sqrt(tf.maximum(pairwise_squared_euclidean(a, b), epsilon))

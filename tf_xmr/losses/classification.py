"""Classification losses used as parts of the cross-modal objectives."""

import tensorflow as tf


def label_cross_entropy(labels, logits):
    """Softmax cross-entropy against (possibly multi-hot) labels, averaged over the batch.

    ``L = -(1/n) sum_i (y_i / sum_j y_ij) . log softmax(z_i)``. For single-label data this is the usual categorical
    cross-entropy (ACMR Eq. 2 per modality); for multi-label data the target is the label vector normalised to sum to
    1, which keeps the softmax of the paper instead of summing log-probabilities of all positive labels.

    Args:
        labels: (n, c) multi-hot labels.
        logits: (n, c) unnormalised class scores.

    Returns:
        Scalar loss.
    """
    labels = tf.cast(labels, logits.dtype)
    target = labels / tf.maximum(tf.reduce_sum(labels, axis=1, keepdims=True), 1.0)
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=target, logits=logits))


def binary_cross_entropy_with_logits(target: float, logits):
    """Mean binary cross-entropy of ``logits`` (any shape) against a constant target in {0, 1}."""
    return tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.fill(tf.shape(logits), tf.cast(target, logits.dtype)),
                                                logits=logits)
    )


def frobenius_norm_sum(kernels):
    """Sum of the (unsquared) Frobenius norms of weight matrices: ``sum_l ||W_l||_F`` (ACMR Eq. 7).

    Unlike Keras' L2 regulariser this is not squared, as the paper writes it.

    Args:
        kernels: iterable of weight tensors.

    Returns:
        Scalar tensor.
    """
    return tf.add_n([tf.norm(kernel) for kernel in kernels])

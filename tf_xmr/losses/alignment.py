"""Distribution-alignment losses between image and text embeddings (JFSE Sec. 3.2.2, Eqs. 4-13; Xu et al., TPAMI 2022).

Each is a pure function of two embedding batches (and, for CMPM, their labels). JFSE applies the chosen one to the
true pairs and, with the same formula, to the synthetic pairs, and sums the two.
"""

from __future__ import annotations

import tensorflow as tf

from tf_xmr.losses.distances import pairwise_squared_euclidean

#: The 19 RBF "variances" of the TF domain-separation ``mmd_loss`` that JFSE uses for Eq. 4 (spec 4.2a).
MMD_SIGMAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 100.0, 1e3, 1e4, 1e5,
              1e6)


def multi_rbf_kernel(x, y, sigmas=MMD_SIGMAS):
    """``k(x_i, y_j) = sum_n exp(-||x_i - y_j||^2 / (2 sigma_n))`` (JFSE Eq. 4 with eta_n = 1).

    Args:
        x: (n, e); y: (m, e).
        sigmas: the sigma_n, used as variances exactly as Eq. 4 writes them.

    Returns:
        (n, m) kernel matrix.
    """
    distances = pairwise_squared_euclidean(x, y)
    betas = 1.0 / (2.0 * tf.constant(sigmas, dtype=distances.dtype))
    return tf.reduce_sum(tf.exp(-betas[:, None, None] * distances[None]), axis=0)


def mmd_loss(x, y, sigmas=MMD_SIGMAS):
    """CMMD (JFSE Eq. 4): the biased (V-statistic) squared maximum mean discrepancy of two batches.

    ``MMD^2 = 1/n^2 sum_ij k(x_i, x_j) - 2/(n m) sum_ij k(x_i, y_j) + 1/m^2 sum_ij k(y_i, y_j)``, clamped at 0 (it
    can be slightly negative in floating point), with the multi-kernel ``k`` of ``multi_rbf_kernel``. The paper's
    "maximize" is a typo: it is minimised.

    Args:
        x: (n, e) image embeddings; y: (m, e) text embeddings.
        sigmas: RBF variances sigma_n (default: the 19 of the TF reference implementation).

    Returns:
        Scalar loss.
    """
    value = (
        tf.reduce_mean(multi_rbf_kernel(x, x, sigmas))
        - 2.0 * tf.reduce_mean(multi_rbf_kernel(x, y, sigmas))
        + tf.reduce_mean(multi_rbf_kernel(y, y, sigmas))
    )
    return tf.maximum(value, 0.0)


def covariance(x):
    """Unbiased covariance of the rows of ``x``: ``C = 1/(n-1) (X^T X - 1/n (1^T X)^T (1^T X))`` (JFSE Eqs. 6-7).

    Args:
        x: (n, e) with n >= 2.

    Returns:
        (e, e) covariance matrix.
    """
    n = tf.cast(tf.shape(x)[0], x.dtype)
    column_sums = tf.reduce_sum(x, axis=0, keepdims=True)
    return (tf.matmul(x, x, transpose_a=True) - tf.matmul(column_sums, column_sums, transpose_a=True) / n) / (n - 1.0)


def coral_loss(x, y):
    """CMCA (JFSE Eq. 10, one of its two terms; CORAL, Sun & Saenko 2016): ``||C^x - C^y||_F^2 / (4 e^2)``.

    ``e`` is the embedding dimension (the paper's ``m`` in Eq. 10 clashes with the noise dimension; CORAL's
    normaliser is ``1/(4 d^2)``, spec ambiguity 12).

    Args:
        x: (n, e) image embeddings; y: (m, e) text embeddings (n, m >= 2).

    Returns:
        Scalar loss.
    """
    e = tf.cast(tf.shape(x)[1], x.dtype)
    difference = covariance(x) - covariance(y)
    return tf.reduce_sum(tf.square(difference)) / (4.0 * e * e)


def _projection_kl(anchors, targets, matches, epsilon):
    # p_ij = softmax_j(a_i . t_j / ||t_j||); q_ij = y_ij / sum_k y_ik; KL(p_i || q_i) averaged over anchors.
    normalized = targets / tf.maximum(tf.norm(targets, axis=1, keepdims=True), 1e-12)
    logits = tf.matmul(anchors, normalized, transpose_b=True)
    log_p = tf.nn.log_softmax(logits, axis=1)
    q = matches / tf.maximum(tf.reduce_sum(matches, axis=1, keepdims=True), 1.0)
    return tf.reduce_mean(tf.reduce_sum(tf.exp(log_p) * (log_p - tf.math.log(q + epsilon)), axis=1))


def cmpm_loss(image, text, image_labels, text_labels=None, epsilon: float = 1e-8):
    """CMPM, cross-modal projection matching (JFSE Eqs. 11-13; Zhang & Lu, ECCV 2018), both directions summed.

    ``p_ij = exp(v_i^T t^_j) / sum_k exp(v_i^T t^_k)`` with ``t^ = t / ||t||`` (only the projected-onto side is
    normalised); ``q_ij = y_ij / sum_k y_ik`` with ``y_ij = 1`` when image i and text j share a label;
    ``L_i2t = (1/n) sum_i sum_j p_ij (log p_ij - log(q_ij + eps))`` (the KL divergence, i.e. Eq. 12 with the printed
    leading minus removed, spec 4.2c); ``L_t2i`` the same with the modalities swapped; ``L = L_i2t + L_t2i``.

    Args:
        image: (n, e) image embeddings.
        text: (m, e) text embeddings.
        image_labels: (n, c) multi-hot labels of the images.
        text_labels: (m, c) labels of the texts; default ``image_labels`` (paired batches).
        epsilon: the eps of Eq. 12 (the authors' code: 1e-8).

    Returns:
        Scalar loss (0 exactly when every row of p equals its q).
    """
    image_labels = tf.cast(image_labels, image.dtype)
    text_labels = image_labels if text_labels is None else tf.cast(text_labels, image.dtype)
    matches = tf.cast(tf.matmul(image_labels, text_labels, transpose_b=True) > 0, image.dtype)
    return (_projection_kl(image, text, matches, epsilon)
            + _projection_kl(text, image, tf.transpose(matches), epsilon))


#: Scheme name -> loss of (image, text, labels); JFSE's ``alignment`` config value.
ALIGNMENT_SCHEMES = ("cmpm", "cmmd", "cmca")


def alignment_loss(scheme: str, image, text, labels):
    """The alignment scheme ``scheme`` (``cmpm`` | ``cmmd`` | ``cmca``) of a paired batch with (n, c) labels."""
    if scheme == "cmpm":
        return cmpm_loss(image, text, labels)
    if scheme == "cmmd":
        return mmd_loss(image, text)
    if scheme == "cmca":
        return coral_loss(image, text)
    raise ValueError(f"unknown alignment scheme {scheme!r}; valid: {', '.join(ALIGNMENT_SCHEMES)}")

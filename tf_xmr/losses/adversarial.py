"""Two-way (softmax) GAN losses and the pair-wise consistency loss of X-GACMN.

The discriminators here end in a 2-way softmax (X-GACMN: "V(T) -> 2000 -> 2", "100 -> 50 -> 2"). Class 1 is what the
paper's ``D(x)`` denotes: ``D_I(x) = P(real | x)``, ``D_T(x) = P(real | x)``, ``D_C(x) = P(image | x)`` (Eq. 3 labels
image features "1"). Every cross-entropy below is averaged over the batch.
"""

from __future__ import annotations

import tensorflow as tf

#: Generator adversarial forms (see ``generator_adversarial_loss``).
ADVERSARIAL_FORMS = ("nonsaturating", "minimax", "literal")
#: Reductions of the pair-wise consistency loss (see ``pair_consistency_loss``).
PAIR_CONSISTENCY_FORMS = ("frobenius", "mean_norm", "mean_squared", "normalized_mean_squared")


def constant_class_cross_entropy(logits, target: int):
    """``CE(z, t) = -(1/n) sum_i log softmax(z_i)_t``: mean softmax cross-entropy against one class for all rows.

    Args:
        logits: (n, K) unnormalised scores.
        target: the class index t (Python int) every row is scored against.

    Returns:
        Scalar tensor.
    """
    labels = tf.fill(tf.shape(logits)[:1], tf.constant(target, tf.int32))
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def discriminator_loss(positive_logits, negative_logits):
    """Two-way discriminator loss and accuracy (X-GACMN Eqs. 1-3).

    ``L_D = -(1/n) sum_i [log D(x+_i) + log(1 - D(x-_i))] = CE(z+, 1) + CE(z-, 0)`` with ``D(x) = softmax(z)_1``.
    For D_I / D_T the positives are real features and the negatives generated ones (pass them through
    ``tf.stop_gradient`` for the discriminator step); for D_C the positives are image and the negatives text common
    vectors.

    Args:
        positive_logits: (n, 2) logits of the class-1 inputs.
        negative_logits: (m, 2) logits of the class-0 inputs.

    Returns:
        ``(loss, accuracy)``: scalar L_D, and the fraction of the n + m inputs whose argmax is their class.
    """
    loss = constant_class_cross_entropy(positive_logits, 1) + constant_class_cross_entropy(negative_logits, 0)
    correct = tf.concat([tf.argmax(positive_logits, axis=-1) == 1, tf.argmax(negative_logits, axis=-1) == 0], axis=0)
    return loss, tf.reduce_mean(tf.cast(correct, tf.float32))


def generator_adversarial_loss(logits, true_class: int, form: str = "nonsaturating"):
    """What a generator minimises for one discriminator judging its outputs.

    With ``p = D(x) = softmax(z)_1`` and ``t`` the class an ideal discriminator gives ``x`` (``true_class``):

    - ``"nonsaturating"`` (default; fools the discriminator): ``CE(z, 1 - t)``, e.g. ``-log D(x)`` for a generated
      feature (t = 0) -- the standard GAN generator loss and the direction X-GACMN's Eq. 12 intends.
    - ``"minimax"``: ``-CE(z, t)``, the ``-L_D`` terms of Eq. 12 that depend on the generator, e.g. ``log(1 - D(x))``.
    - ``"literal"``: ``log D(x) = -CE(z, 1)``, Eqs. 4-5 minimised exactly as printed. For a generated feature and for a
      text common vector (t = 0) this HELPS the discriminator (it is the negation of "nonsaturating"); only for an
      image common vector (t = 1) does it fool D_C. Kept to reproduce the paper's text, not for use.

    Args:
        logits: (n, 2) discriminator logits of the generator's outputs (gradient must flow to the generator).
        true_class: 0 or 1, see above.
        form: one of ``ADVERSARIAL_FORMS``.

    Returns:
        Scalar tensor.
    """
    if true_class not in (0, 1):
        raise ValueError(f"true_class must be 0 or 1, got {true_class!r}")
    if form == "nonsaturating":
        return constant_class_cross_entropy(logits, 1 - true_class)
    if form == "minimax":
        return -constant_class_cross_entropy(logits, true_class)
    if form == "literal":
        return -constant_class_cross_entropy(logits, 1)
    raise ValueError(f"form must be one of {ADVERSARIAL_FORMS}, got {form!r}")


def pair_consistency_loss(a, b, form: str = "frobenius", epsilon: float = 1e-12):
    """Pair-wise l2 consistency of paired embeddings (X-GACMN Sec. 3.3, L_l2; written in words only in the paper).

    - ``"frobenius"`` (default): ``||A - B||_F = sqrt(sum_i ||a_i - b_i||^2)`` over the batch, not averaged (the
      ACMR demo code's ``sqrt(2 * l2_loss(emb_v - emb_w))``).
    - ``"mean_norm"``: ``(1/n) sum_i ||a_i - b_i||``.
    - ``"mean_squared"``: ``(1/n) sum_i ||a_i - b_i||^2``.
    - ``"normalized_mean_squared"``:
      ``(1/n) sum_i ||a_i/||a_i|| - b_i/||b_i||||^2 = (1/n) sum_i (2 - 2 cos(a_i, b_i))``: the pair distance that a
      cosine ranking reads. The raw forms above can also be lowered by shrinking both vectors, which a cosine ranking
      does not see.

    Args:
        a: (n, d) embeddings, row i paired with row i of ``b``.
        b: (n, d) embeddings.
        form: one of ``PAIR_CONSISTENCY_FORMS``.
        epsilon: floor under squared norms before a square root (finite gradient when a_i = b_i, or a_i = 0 for the
            normalised form).

    Returns:
        Scalar tensor.
    """
    if form == "normalized_mean_squared":
        a = tf.math.l2_normalize(a, axis=-1, epsilon=epsilon)
        b = tf.math.l2_normalize(b, axis=-1, epsilon=epsilon)
        return tf.reduce_mean(tf.reduce_sum(tf.square(a - b), axis=-1))
    squared = tf.reduce_sum(tf.square(a - b), axis=-1)
    if form == "frobenius":
        return tf.sqrt(tf.maximum(tf.reduce_sum(squared), epsilon))
    if form == "mean_norm":
        return tf.reduce_mean(tf.sqrt(tf.maximum(squared, epsilon)))
    if form == "mean_squared":
        return tf.reduce_mean(squared)
    raise ValueError(f"form must be one of {PAIR_CONSISTENCY_FORMS}, got {form!r}")

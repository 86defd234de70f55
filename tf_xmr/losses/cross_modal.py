"""Cross-modal structure-preservation losses."""

import tensorflow as tf

from tf_xmr.losses.distances import pairwise_euclidean

MINING = ("all", "hard")
POSITIVES = ("label", "paired")
REDUCTIONS = ("mean", "sum")


def _one_direction(distances, positive_mask, negative_mask, margin, negative_weight, mining, reduction):
    """Loss with anchors on the rows of ``distances`` (rows: anchor modality, columns: other modality)."""
    hinge = tf.nn.relu(margin - distances)
    if mining == "hard":
        # Farthest positive and closest negative per anchor: the likely use of the paper's "sorted" distances.
        big = tf.reduce_max(distances) + 1.0
        pos_term = tf.reduce_max(distances * positive_mask, axis=1)
        closest_negative = tf.reduce_min(distances + big * (1.0 - negative_mask), axis=1)
        has_negative = tf.cast(tf.reduce_sum(negative_mask, axis=1) > 0, distances.dtype)
        neg_term = tf.nn.relu(margin - closest_negative) * has_negative
        per_anchor = pos_term + negative_weight * neg_term
        return tf.reduce_mean(per_anchor) if reduction == "mean" else tf.reduce_sum(per_anchor)
    if reduction == "sum":
        # The literal triple sum over (anchor i, positive j, negative k) of d(i, j) + lambda * hinge(i, k): each
        # positive distance is counted once per negative of the anchor and each hinge once per positive.
        n_pos = tf.reduce_sum(positive_mask, axis=1)
        n_neg = tf.reduce_sum(negative_mask, axis=1)
        pos_sum = tf.reduce_sum(distances * positive_mask, axis=1)
        neg_sum = tf.reduce_sum(hinge * negative_mask, axis=1)
        return tf.reduce_sum(n_neg * pos_sum + negative_weight * n_pos * neg_sum)
    # "Triplet-mean": mean over each anchor's positives and negatives, then over anchors, so the loss scale does not
    # depend on how many same-class items happen to share the batch.
    n_pos = tf.maximum(tf.reduce_sum(positive_mask, axis=1), 1.0)
    n_neg = tf.maximum(tf.reduce_sum(negative_mask, axis=1), 1.0)
    pos_term = tf.reduce_sum(distances * positive_mask, axis=1) / n_pos
    neg_term = tf.reduce_sum(hinge * negative_mask, axis=1) / n_neg
    return tf.reduce_mean(pos_term + negative_weight * neg_term)


def acmr_structure_loss(
    image_embeddings,
    text_embeddings,
    labels,
    *,
    margin: float,
    negative_weight: float,
    mining: str = "all",
    positives: str = "label",
    reduction: str = "mean",
):
    """ACMR inter-modal invariance loss (Wang et al., MM 2017, Eqs. 3-6), triplets sampled inside the batch.

    With ``l2(v, t) = ||f_V(v) - f_T(t)||_2`` (Eq. 3, not squared)::

        L_imi,V = sum_{i,j,k} l2(v_i, t_j+) + lambda * max(0, mu - l2(v_i, t_k-))      (Eq. 4)
        L_imi,T = sum_{i,j,k} l2(t_i, v_j+) + lambda * max(0, mu - l2(t_i, v_k-))      (Eq. 5)
        L_imi   = L_imi,V + L_imi,T                                                     (Eq. 6)

    Positives of an anchor are the items of the OTHER modality sharing a label with it (``positives="label"``; the
    paired item always qualifies) or only its paired item (``positives="paired"``); negatives are the other-modality
    items sharing no label. This is the paper's contrastive form (pull positives to 0, push negatives past the
    margin), not the ranking form ``max(0, mu + d+ - d-)``.

    Args:
        image_embeddings: (n, d) common-space image vectors; row i is paired with text row i.
        text_embeddings: (n, d) common-space text vectors.
        labels: (n, c) multi-hot labels of the pairs; two items are relevant iff they share a label.
        margin: mu in Eqs. 4-5.
        negative_weight: lambda in Eqs. 4-5.
        mining: ``"all"`` (every valid triplet) or ``"hard"`` (farthest positive, closest negative per anchor).
        positives: ``"label"`` or ``"paired"``.
        reduction: ``"mean"``: per anchor, mean over its positives plus lambda times mean over its negatives, then
            mean over anchors (= the literal triple sum divided by each anchor's triplet count, so the scale does
            not depend on batch composition); ``"sum"``: the literal triple sum of the equations.

    Returns:
        Scalar loss ``L_imi`` (both directions added, as Eq. 6).
    """
    labels = tf.cast(labels, image_embeddings.dtype)
    shares_label = tf.cast(tf.matmul(labels, labels, transpose_b=True) > 0, image_embeddings.dtype)
    if positives == "paired":
        positive_mask = tf.eye(tf.shape(labels)[0], dtype=image_embeddings.dtype)
    else:
        positive_mask = shares_label
    negative_mask = 1.0 - shares_label
    distances = pairwise_euclidean(image_embeddings, text_embeddings)  # rows: images, columns: texts
    args = (margin, negative_weight, mining, reduction)
    image_anchored = _one_direction(distances, positive_mask, negative_mask, *args)
    text_anchored = _one_direction(
        tf.transpose(distances), tf.transpose(positive_mask), tf.transpose(negative_mask), *args
    )
    return image_anchored + text_anchored

import itertools

import numpy as np
import pytest
import tensorflow as tf

from tf_xmr.losses import acmr_structure_loss, frobenius_norm_sum, label_cross_entropy, pairwise_euclidean


def _loop_structure_loss(image, text, labels, margin, lam, positives, reduction):
    """Eqs. 4-6 written as plain loops over anchors, positives and negatives."""
    n = len(image)
    shares = (labels @ labels.T) > 0
    total = 0.0
    for anchors, others in ((image, text), (text, image)):
        per_anchor = []
        for i in range(n):
            pos = [j for j in range(n) if (i == j if positives == "paired" else shares[i, j])]
            neg = [j for j in range(n) if not shares[i, j]]
            pos_d = [np.linalg.norm(anchors[i] - others[j]) for j in pos]
            neg_h = [max(0.0, margin - np.linalg.norm(anchors[i] - others[j])) for j in neg]
            if reduction == "sum":
                # Literal: sum over every (positive j, negative k) triplet of d(i, j) + lam * hinge(i, k).
                per_anchor.append(sum(d + lam * h for d in pos_d for h in neg_h))
            else:
                per_anchor.append(np.mean(pos_d) + lam * (np.mean(neg_h) if neg_h else 0.0))
        total += sum(per_anchor) if reduction == "sum" else np.mean(per_anchor)
    return total


@pytest.mark.parametrize("positives,reduction", list(itertools.product(["label", "paired"], ["mean", "sum"])))
def test_acmr_structure_loss_matches_loop(positives, reduction):
    rng = np.random.default_rng(3)
    image = rng.normal(size=(9, 4)).astype(np.float32)
    text = rng.normal(size=(9, 4)).astype(np.float32)
    labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 9)]
    labels[0, 1] = 1.0  # one multi-label item: relevant to two classes
    got = acmr_structure_loss(image, text, labels, margin=2.0, negative_weight=0.3, positives=positives,
                              reduction=reduction).numpy()
    want = _loop_structure_loss(image, text, labels, 2.0, 0.3, positives, reduction)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_acmr_structure_loss_hand_computed():
    # Two pairs of different classes on a line: image (0), (3); text (1), (3). Margin 2, lambda 0.5, mean reduction.
    image = np.array([[0.0], [3.0]], np.float32)
    text = np.array([[1.0], [3.0]], np.float32)
    labels = np.eye(2, dtype=np.float32)
    # image anchors: positives d=1 and 0, negatives d=3 (hinge 0) and 2 (hinge 0) -> mean(1, 0) = 0.5
    # text anchors: positives d=1 and 0, negatives |1-3|=2 (0) and |3-0|=3 (0) -> 0.5; total 1.0 (sqrt floor 1e-6).
    got = acmr_structure_loss(image, text, labels, margin=2.0, negative_weight=0.5).numpy()
    np.testing.assert_allclose(got, 1.0, atol=1e-5)
    # Margin 2.5: image 0's negative (d=3) still 0; image 1's negative text 0 at d=2 -> hinge 0.5 * 0.5.
    got = acmr_structure_loss(image, text, labels, margin=2.5, negative_weight=0.5).numpy()
    np.testing.assert_allclose(got, 1.0 + 0.5 * 0.5 / 2 * 2, atol=1e-5)


def test_hard_mining_and_finite_gradient_at_zero_distance():
    x = tf.Variable(np.zeros((4, 3), np.float32))
    labels = np.eye(2, dtype=np.float32)[[0, 0, 1, 1]]
    with tf.GradientTape() as tape:
        loss = acmr_structure_loss(x, x * 1.0, labels, margin=1.0, negative_weight=1.0, mining="hard")
    grad = tape.gradient(loss, x)
    assert np.isfinite(loss.numpy()) and np.all(np.isfinite(grad.numpy()))
    # All points coincide: positives at distance ~0, closest negative at ~0 -> hinge 1 per anchor, two directions.
    np.testing.assert_allclose(loss.numpy(), 2.0, atol=1e-4)


def test_pairwise_euclidean():
    a = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
    b = np.array([[3.0, 4.0]], np.float32)
    np.testing.assert_allclose(pairwise_euclidean(a, b).numpy(), [[5.0], [np.sqrt(13.0)]], rtol=1e-6)


def test_label_cross_entropy_single_and_multi_label():
    logits = np.array([[2.0, 0.0, 0.0]], np.float32)
    log_probs = logits - np.log(np.exp(logits).sum())
    np.testing.assert_allclose(label_cross_entropy(np.array([[1.0, 0, 0]]), logits).numpy(), -log_probs[0, 0],
                               rtol=1e-6)
    # Multi-hot target normalised to sum 1.
    want = -(log_probs[0, 0] + log_probs[0, 1]) / 2
    np.testing.assert_allclose(label_cross_entropy(np.array([[1.0, 1.0, 0]]), logits).numpy(), want, rtol=1e-6)


def test_frobenius_norm_sum_is_unsquared():
    kernels = [tf.constant([[3.0, 4.0]]), tf.constant([[1.0], [0.0]])]
    np.testing.assert_allclose(frobenius_norm_sum(kernels).numpy(), 6.0)

"""WGAN-GP pieces against critics with analytically known input gradients; the three JFSE alignment losses against
hand-computed values."""

import numpy as np
import pytest
import tensorflow as tf

from tf_xmr.losses.alignment import (
    MMD_SIGMAS,
    alignment_loss,
    cmpm_loss,
    coral_loss,
    covariance,
    mmd_loss,
    multi_rbf_kernel,
)
from tf_xmr.losses.wgan import critic_loss, generator_loss, gradient_penalty, interpolate


def _penalty_of(critic, real, fake, alpha):
    x_hat = interpolate(tf.constant(real), tf.constant(fake), tf.constant(alpha))
    with tf.GradientTape() as tape:
        tape.watch(x_hat)
        total = tf.reduce_sum(critic(x_hat))
    return gradient_penalty(tape.gradient(total, x_hat)).numpy(), x_hat.numpy()


def test_interpolation_is_per_sample_and_broadcast_over_features():
    real = np.ones((3, 4), np.float32)
    fake = np.zeros((3, 4), np.float32)
    alpha = np.array([0.0, 0.25, 1.0], np.float32)
    out = interpolate(tf.constant(real), tf.constant(fake), tf.constant(alpha)).numpy()
    np.testing.assert_allclose(out, np.repeat(alpha[:, None], 4, axis=1))
    np.testing.assert_allclose(interpolate(real, fake, alpha[:, None]).numpy(), out)
    with pytest.raises(ValueError, match="per SAMPLE|shape"):
        interpolate(real, fake, np.full((3, 4), 0.5, np.float32))


def test_penalty_of_a_linear_critic_is_the_known_constant():
    # D(x) = w.x has gradient w at every point: GP = (||w|| - 1)^2 whatever the interpolates are.
    w = np.array([3.0, 4.0], np.float32)  # ||w|| = 5 -> (5 - 1)^2 = 16
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(6, 2)).astype(np.float32), rng.normal(size=(6, 2)).astype(np.float32)
    eps = rng.uniform(size=6).astype(np.float32)
    gp, _ = _penalty_of(lambda x: tf.linalg.matvec(x, tf.constant(w)), real, fake, eps)
    assert gp == pytest.approx(16.0, rel=1e-5)


def test_penalty_uses_the_norm_of_each_samples_own_gradient():
    # D(x) = ||x||^2 / 2 has gradient x: GP = mean_i (||x_hat_i|| - 1)^2, which differs from a batch-level norm
    # (||all gradients|| - 1)^2 and from an average gradient.
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(5, 3)).astype(np.float32), 3 * rng.normal(size=(5, 3)).astype(np.float32)
    alpha = rng.uniform(size=5).astype(np.float32)
    gp, x_hat = _penalty_of(lambda x: 0.5 * tf.reduce_sum(tf.square(x), axis=1), real, fake, alpha)
    expected = np.mean((np.linalg.norm(x_hat, axis=1) - 1.0) ** 2)
    np.testing.assert_allclose(x_hat, alpha[:, None] * real + (1 - alpha[:, None]) * fake, rtol=1e-6)
    assert gp == pytest.approx(expected, rel=1e-5)
    assert abs(gp - (np.linalg.norm(x_hat) - 1.0) ** 2) > 1e-2


def test_penalty_is_zero_for_a_unit_gradient_critic_and_differentiable():
    w = tf.Variable([0.6, 0.8])
    x = tf.constant(np.random.default_rng(2).normal(size=(4, 2)).astype(np.float32))
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            inner.watch(x)
            total = tf.reduce_sum(tf.linalg.matvec(x, w))
        gp = gradient_penalty(inner.gradient(total, x))
    assert float(gp) == pytest.approx(0.0, abs=1e-10)
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| = 0 at ||w|| = 1; at w = (3, 4) it is 2 * 4 * (0.6, 0.8).
    np.testing.assert_allclose(outer.gradient(gp, w).numpy(), [0.0, 0.0], atol=1e-6)
    w.assign([3.0, 4.0])
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            inner.watch(x)
            total = tf.reduce_sum(tf.linalg.matvec(x, w))
        gp = gradient_penalty(inner.gradient(total, x))
    np.testing.assert_allclose(outer.gradient(gp, w).numpy(), [4.8, 6.4], rtol=1e-5)


def test_wasserstein_critic_and_generator_losses():
    assert float(critic_loss(tf.constant([1.0, 3.0]), tf.constant([[0.5], [-0.5], [3.0]]))) == pytest.approx(1.0 - 2.0)
    assert float(generator_loss(tf.constant([[0.5], [1.5]]))) == pytest.approx(-1.0)


# -- alignment ---------------------------------------------------------------------------------------------------


def test_multi_rbf_kernel_by_hand():
    x = tf.constant([[0.0, 0.0]])
    y = tf.constant([[1.0, 1.0]])  # squared distance 2
    k = multi_rbf_kernel(x, y, sigmas=(1.0, 4.0)).numpy()
    assert k[0, 0] == pytest.approx(np.exp(-2 / 2) + np.exp(-2 / 8), rel=1e-6)
    assert len(MMD_SIGMAS) == 19


def test_mmd_by_hand_and_zero_for_identical_batches():
    x = np.array([[0.0], [1.0]], np.float32)
    y = np.array([[2.0]], np.float32)
    k = lambda a, b: np.exp(-((a - b) ** 2) / 2.0)  # sigma = 1
    expected = (k(0, 0) + k(0, 1) + k(1, 0) + k(1, 1)) / 4 - 2 * (k(0, 2) + k(1, 2)) / 2 + k(2, 2)
    assert float(mmd_loss(tf.constant(x), tf.constant(y), sigmas=(1.0,))) == pytest.approx(expected, rel=1e-5)
    z = tf.constant(np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32))
    assert float(mmd_loss(z, z)) == pytest.approx(0.0, abs=1e-5)


def test_covariance_and_coral_by_hand():
    x = np.array([[1.0, 2.0], [3.0, 0.0], [2.0, 1.0]], np.float32)
    np.testing.assert_allclose(covariance(tf.constant(x)).numpy(), np.cov(x, rowvar=False), rtol=1e-5)
    y = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)  # cov = [[0.5, 0.5], [0.5, 0.5]]
    diff = np.cov(x, rowvar=False) - np.array([[0.5, 0.5], [0.5, 0.5]])
    assert float(coral_loss(tf.constant(x), tf.constant(y))) == pytest.approx(np.sum(diff**2) / (4 * 2**2), rel=1e-5)
    assert float(coral_loss(tf.constant(x), tf.constant(x + 5.0))) == pytest.approx(0.0, abs=1e-6)


def test_cmpm_by_hand():
    image = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    text = np.array([[3.0, 0.0], [0.0, 1.0]], np.float32)  # normalised: e1, e2
    labels = np.eye(2, dtype=np.float32)
    eps = 1e-8

    def kl(anchors, targets):
        t = targets / np.linalg.norm(targets, axis=1, keepdims=True)
        logits = anchors @ t.T
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        q = np.eye(2)
        return np.mean(np.sum(p * (np.log(p) - np.log(q + eps)), axis=1))

    # i2t: rows softmax([1, 0]) and softmax([0, 2]); t2i: anchors are the texts, targets the normalised images.
    expected = kl(image, text) + kl(text, image)
    got = float(cmpm_loss(tf.constant(image), tf.constant(text), tf.constant(labels)))
    assert got == pytest.approx(expected, rel=1e-5)
    # With every pair sharing a label, q is uniform and equal-logit rows give exactly 0.
    same = np.ones((2, 2), np.float32)
    flat = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)
    assert float(cmpm_loss(tf.constant(flat), tf.constant(flat), tf.constant(same[:, :1]))) == pytest.approx(0.0,
                                                                                                              abs=1e-6)


def test_cmpm_matches_on_shared_labels_and_decreases_when_aligned():
    labels = tf.constant(np.eye(3, dtype=np.float32)[[0, 0, 1, 2]])
    aligned = tf.constant(10.0 * np.eye(3, dtype=np.float32)[[0, 0, 1, 2]])
    shuffled = tf.constant(10.0 * np.eye(3, dtype=np.float32)[[1, 2, 0, 0]])
    assert float(cmpm_loss(aligned, aligned, labels)) < 1e-2 < 1.0 < float(cmpm_loss(aligned, shuffled, labels))


@pytest.mark.parametrize("scheme", ["cmpm", "cmmd", "cmca"])
def test_alignment_loss_dispatch_is_differentiable(scheme):
    rng = np.random.default_rng(3)
    image = tf.Variable(rng.normal(size=(6, 4)).astype(np.float32))
    text = tf.constant(rng.normal(size=(6, 4)).astype(np.float32))
    labels = tf.constant(np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]])
    with tf.GradientTape() as tape:
        loss = alignment_loss(scheme, image, text, labels)
    grad = tape.gradient(loss, image)
    assert np.isfinite(float(loss)) and grad is not None and np.all(np.isfinite(grad.numpy()))
    with pytest.raises(ValueError, match="valid: cmpm, cmmd, cmca"):
        alignment_loss("cmd", image, text, labels)

"""A-softmax head: psi against hand-computed values, the lambda blend and schedule, finite gradients at the branches."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_xmr.layers import AngularMarginSoftmax
from tf_xmr.layers.angular_margin import annealed_lambda, chebyshev, margin_cosine

# (m, theta, psi(theta)) worked by hand from psi = (-1)^k cos(m theta) - 2k, k = floor(m theta / pi):
HAND_PSI = [
    (2, math.pi / 3, -0.5),                    # k=0: cos(2pi/3)
    (2, 2 * math.pi / 3, -1.5),                # k=1: -cos(4pi/3) - 2 = 0.5 - 2
    (2, math.pi, -3.0),                        # k=1 (clipped from 2): -cos(2pi) - 2
    (3, math.pi / 4, -math.sqrt(0.5)),         # k=0: cos(3pi/4)
    (3, math.pi / 2, -2.0),                    # k=1: -cos(3pi/2) - 2
    (3, 5 * math.pi / 6, -4.0),                # k=2: cos(5pi/2) - 4
    (4, math.pi / 6, -0.5),                    # k=0: cos(2pi/3)
    (4, math.pi / 3, -1.5),                    # k=1: -cos(4pi/3) - 2
    (4, math.pi / 2, -3.0),                    # k=2: cos(2pi) - 4
    (4, math.pi, -7.0),                        # k=3: -cos(4pi) - 6
    (5, 0.0, 1.0),                             # spec: psi(0) = 1
    (5, math.pi / 5, -1.0),                    # spec: both branches give -1 at pi/5
    (5, math.pi, -9.0),                        # spec: psi(pi) = -9
]


@pytest.mark.parametrize("m, theta, expected", HAND_PSI)
def test_psi_matches_hand_computed_values(m, theta, expected):
    value = margin_cosine(tf.constant([math.cos(theta)], tf.float64), m)
    assert float(value[0]) == pytest.approx(expected, abs=1e-9)


def test_chebyshev_is_cos_of_multiple_angle():
    theta = np.linspace(0.0, np.pi, 37)
    for m in range(6):
        np.testing.assert_allclose(chebyshev(tf.constant(np.cos(theta)), m).numpy(), np.cos(m * theta), atol=1e-12)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
def test_psi_is_continuous_and_decreasing(m):
    theta = np.linspace(0.0, np.pi, 2001)
    psi = margin_cosine(tf.constant(np.cos(theta)), m).numpy()
    assert np.all(np.diff(psi) <= 1e-12)
    assert np.max(np.abs(np.diff(psi))) < 0.05  # no jumps at the branch boundaries
    assert psi[0] == pytest.approx(1.0) and psi[-1] == pytest.approx(1.0 - 2.0 * m)


def _layer(m=2, **kwargs):
    layer = AngularMarginSoftmax(2, m, **kwargs)
    layer.build((None, 2))
    # Unnormalised columns: the layer must normalise them (class 0 along x, class 1 along y).
    layer.kernel.assign([[2.0, 0.0], [0.0, 3.0]])
    return layer


def test_lambda_blended_target_logit_by_hand():
    # x = (3, 4): ||x|| = 5, cos(theta_0) = 0.6, cos(theta_1) = 0.8. m = 2, theta_0 < pi/2, so psi = 2c^2 - 1 = -0.28.
    layer = _layer(m=2, anneal=False, lambda_min=1.0)
    x = tf.constant([[3.0, 4.0]])
    logits = layer(x, labels=tf.constant([[1.0, 0.0]])).numpy()
    # f_0 = ||x|| (lambda c + psi) / (1 + lambda) = 5 (0.6 - 0.28) / 2 = 0.8 ; f_1 = ||x|| cos = 4.
    np.testing.assert_allclose(logits, [[0.8, 4.0]], rtol=1e-6)
    # Integer labels are the same thing; no labels gives the plain angular logits.
    np.testing.assert_allclose(layer(x, labels=tf.constant([0])).numpy(), [[0.8, 4.0]], rtol=1e-6)
    np.testing.assert_allclose(layer(x).numpy(), [[3.0, 4.0]], rtol=1e-6)


def test_pure_a_softmax_and_m1_reduce_to_known_forms():
    x = tf.constant([[3.0, 4.0]])
    # lambda = 0: Eq. 8 exactly, f_0 = ||x|| psi = 5 * -0.28.
    pure = _layer(m=2, anneal=False, lambda_min=0.0)
    np.testing.assert_allclose(pure(x, labels=tf.constant([0])).numpy(), [[-1.4, 4.0]], rtol=1e-6)
    # m = 1, lambda = 0: logits are x . w_hat_j for every class (normalised weights, no bias).
    plain = _layer(m=1, anneal=False, lambda_min=0.0)
    np.testing.assert_allclose(plain(x, labels=tf.constant([0])).numpy(), [[3.0, 4.0]], rtol=1e-6)


def test_feature_scale_replaces_the_norm_by_hand():
    # Same x = (3, 4) as above with s = 10: the norm 5 is replaced by 10, so every logit doubles: (1.6, 8); the
    # plain logits are s cos = (6, 8); and any rescaling of x leaves them unchanged (the head sees only directions).
    layer = _layer(m=2, anneal=False, lambda_min=1.0, feature_scale=10.0)
    x = tf.constant([[3.0, 4.0]])
    np.testing.assert_allclose(layer(x, labels=tf.constant([0])).numpy(), [[1.6, 8.0]], rtol=1e-6)
    np.testing.assert_allclose(layer(x).numpy(), [[6.0, 8.0]], rtol=1e-6)
    np.testing.assert_allclose(layer(0.01 * x, labels=tf.constant([0])).numpy(), [[1.6, 8.0]], rtol=1e-5)
    with pytest.raises(ValueError, match="feature_scale"):
        AngularMarginSoftmax(2, 2, feature_scale=0.0)


def test_lambda_schedule_advances_per_step_and_floors():
    layer = _layer(m=4, lambda_base=1000.0, lambda_gamma=0.12, lambda_power=1.0, lambda_min=5.0)
    assert float(layer.lambda_value()) == pytest.approx(1000.0)
    layer.advance(10)
    assert float(layer.lambda_value()) == pytest.approx(1000.0 / (1.0 + 1.2), rel=1e-6)
    layer.advance(10_000)
    assert float(layer.lambda_value()) == pytest.approx(5.0)
    assert float(annealed_lambda(0, base=10.0, gamma=1.0, power=2.0, minimum=0.0)) == pytest.approx(10.0)
    assert float(annealed_lambda(1, base=10.0, gamma=1.0, power=2.0, minimum=0.0)) == pytest.approx(2.5)
    # Calling the layer never advances the schedule; only advance() does.
    before = int(layer.iterations.numpy())
    layer(tf.ones((2, 2)), labels=tf.constant([0, 1]))
    assert int(layer.iterations.numpy()) == before


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("lam", [0.0, 5.0])
def test_gradients_are_finite_at_branch_boundaries(m, lam):
    """theta = k pi / m for k = 0..m (cos theta = cos(k pi / m)), including theta = 0 and pi where arccos' blows up."""
    layer = _layer(m=m, anneal=False, lambda_min=lam)
    layer.kernel.assign([[1.0, 0.0], [0.0, 1.0]])
    angles = np.array([k * np.pi / m for k in range(m + 1)], np.float32)
    x = tf.Variable(np.stack([2.0 * np.cos(angles), 2.0 * np.sin(angles)], axis=1).astype(np.float32))
    labels = tf.zeros((m + 1,), tf.int32)

    @tf.function(jit_compile=True)
    def grads():
        with tf.GradientTape() as tape:
            logits = layer(x, labels=labels)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        return tape.gradient(loss, [x, layer.kernel])

    for g in grads():
        assert np.all(np.isfinite(g.numpy()))
    # d psi / d cos at the exact boundary cosines.
    c = tf.constant(np.cos(angles).astype(np.float64))
    with tf.GradientTape() as tape:
        tape.watch(c)
        psi = margin_cosine(c, m)
    assert np.all(np.isfinite(tape.gradient(psi, c).numpy()))
    # A feature at the origin has no direction; its logits and gradients must still be finite.
    zero = tf.Variable(tf.zeros((1, 2)))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(zero, labels=tf.constant([0])))
    assert np.all(np.isfinite(tape.gradient(loss, zero).numpy()))


def test_bad_margin_is_rejected():
    with pytest.raises(ValueError, match="integer >= 1"):
        AngularMarginSoftmax(3, 2.5)
    with pytest.raises(ValueError, match="integer >= 1"):
        AngularMarginSoftmax(3, 0)

"""Correlation attention (DA-GAN Eqs. 13-17) and class prototypes against hand-computed values."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_xmr.layers.attention import ClassPrototypes, CorrelationAttention, correlation_matrix

# x: positions (1, 0) and (0, 1); reference: positions (1, 0) and (2, 0) (norms differ: cosine ignores them).
X = np.array([[1.0, 0.0, 0.0, 1.0]], np.float32)
REF = np.array([[1.0, 0.0, 2.0, 0.0]], np.float32)


def _layer(mean_axis="rows", temperature=1.0):
    layer = CorrelationAttention(positions=2, reduction=2, temperature=temperature, mean_axis=mean_axis)
    layer(tf.constant(X), tf.constant(REF))
    # W_1: (p=2 -> 1), picks g_1; W_2: (1 -> 2) = [2, -1]; no biases.
    layer.hidden.set_weights([np.array([[1.0], [0.0]], np.float32), np.zeros(1, np.float32)])
    layer.kernel_out.set_weights([np.array([[2.0, -1.0]], np.float32), np.zeros(2, np.float32)])
    return layer


def test_correlation_matrix_is_the_cosine_between_positions():
    m = correlation_matrix(tf.constant(X), tf.constant(REF), positions=2).numpy()
    # Row j = position j of x against every reference position (Eq. 13).
    np.testing.assert_allclose(m[0], [[1.0, 1.0], [0.0, 0.0]], atol=1e-6)
    with pytest.raises(ValueError, match="not divisible"):
        correlation_matrix(tf.constant(X), tf.constant(REF), positions=3)


def test_attention_rows_mean_by_hand():
    # Row means g = (1, 0) -> relu(W_1 g) = 1 -> K = (2, -1); scores K^T m^(j): (1*2 + 1*(-1), 0) = (1, 0).
    attended, a = _layer("rows")(tf.constant(X), tf.constant(REF))
    s = 1.0 / (1.0 + math.exp(-1.0))  # softmax([1, 0])[0]
    np.testing.assert_allclose(a.numpy(), [[s, 1 - s]], atol=1e-6)
    # Eq. 17: x * (1 + A), A broadcast over each position's depth.
    np.testing.assert_allclose(attended.numpy(), [[1 + s, 0.0, 0.0, 2 - s]], atol=1e-6)


def test_attention_columns_mean_and_temperature_by_hand():
    # Column means g = (0.5, 0.5) -> relu(0.5) = 0.5 -> K = (1, -0.5); scores (0.5, 0); Gamma = 0.5 -> (1, 0).
    _, a = _layer("columns", temperature=0.5)(tf.constant(X), tf.constant(REF))
    s = 1.0 / (1.0 + math.exp(-1.0))
    np.testing.assert_allclose(a.numpy(), [[s, 1 - s]], atol=1e-6)
    _, a1 = _layer("columns", temperature=1.0)(tf.constant(X), tf.constant(REF))
    s1 = 1.0 / (1.0 + math.exp(-0.5))
    np.testing.assert_allclose(a1.numpy(), [[s1, 1 - s1]], atol=1e-6)


def test_attention_map_is_a_distribution_per_row_and_shapes_hold():
    layer = CorrelationAttention(positions=4, reduction=4)
    x = tf.random.stateless_normal((5, 12), seed=(1, 2))
    attended, a = layer(x, tf.random.stateless_normal((5, 12), seed=(3, 4)))
    assert attended.shape == (5, 12) and a.shape == (5, 4)
    np.testing.assert_allclose(a.numpy().sum(axis=1), np.ones(5), atol=1e-5)
    assert np.all(a.numpy() > 0)
    with pytest.raises(ValueError, match="mean_axis"):
        CorrelationAttention(4, mean_axis="diagonal")


def test_prototypes_ema_and_read_outs_by_hand():
    protos = ClassPrototypes(num_classes=3, momentum=0.5, temperature=0.1)
    protos.build((None, 2))
    labels = np.eye(3, dtype=np.float32)[[0, 0, 1]]
    protos.update(tf.constant([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]]), tf.constant(labels))
    # First sight of a class sets its mean; class 2 is unseen.
    np.testing.assert_allclose(protos.prototypes.numpy(), [[2, 0], [0, 2], [0, 0]], atol=1e-6)
    np.testing.assert_allclose(protos.seen.numpy(), [1, 1, 0])
    protos.update(tf.constant([[4.0, 0.0]]), tf.constant(np.eye(3, dtype=np.float32)[[0]]))
    np.testing.assert_allclose(protos.prototypes.numpy(), [[3, 0], [0, 2], [0, 0]], atol=1e-6)  # 0.5*2 + 0.5*4
    # nearest: cosine with (3, 0) beats (0, 2); soft: equal cosines -> half/half (unseen class ~ 0 weight).
    np.testing.assert_allclose(protos(tf.constant([[1.0, 0.1]]), mode="nearest").numpy(), [[3, 0]], atol=1e-6)
    np.testing.assert_allclose(protos(tf.constant([[1.0, 1.0]]), mode="soft").numpy(), [[1.5, 1.0]], atol=1e-5)
    np.testing.assert_allclose(protos(tf.constant([[5.0, 1.0]]), mode="mean").numpy(), [[1.5, 1.0]], atol=1e-6)

import numpy as np
import pytest
import tensorflow as tf

from tf_xmr.layers import FeatureStandardizer, GradientReversal, mlp


def test_gradient_reversal_is_identity_forward_and_negates_gradient():
    layer = GradientReversal(0.5)
    x = tf.constant([[1.0, -2.0], [3.0, 4.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(3.0 * y)
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    # d/dx sum(3 * GRL(x)) = -0.5 * 3 everywhere.
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), np.full((2, 2), -1.5))


@pytest.mark.parametrize("jit", [False, True])
def test_gradient_reversal_strength_changes_without_retracing(jit):
    layer = GradientReversal(0.0)
    traces = []

    @tf.function(jit_compile=jit)
    def grad(x):
        traces.append(1)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x))
        return tape.gradient(loss, x)

    x = tf.ones((3,))
    seen = []
    for strength in (0.0, 0.5, 1.0):
        layer.strength.assign(strength)
        seen.append(float(grad(x)[0]))
    assert seen == [0.0, -0.5, -1.0]
    assert len(traces) == 1


def test_standardizer_modes():
    x = np.array([[1.0, 10.0], [3.0, 10.0]], np.float32)
    z = FeatureStandardizer("zscore", mean=[2.0, 10.0], std=[1.0, 0.0])(x).numpy()
    # The constant second feature has std 0: treated as 1, so it is centred rather than divided by zero.
    np.testing.assert_allclose(z, [[-1.0, 0.0], [1.0, 0.0]])
    l2 = FeatureStandardizer("l2")(np.array([[3.0, 4.0]], np.float32)).numpy()
    np.testing.assert_allclose(l2, [[0.6, 0.8]])
    np.testing.assert_array_equal(FeatureStandardizer("none")(x).numpy(), x)
    with pytest.raises(ValueError, match="mean and std"):
        FeatureStandardizer("zscore")


def test_mlp_shapes_and_activations():
    tower = mlp((5, 3), activation="tanh", dropout=0.5)
    out = tower(np.ones((4, 7), np.float32), training=False).numpy()
    assert out.shape == (4, 3)
    assert np.all(np.abs(out) <= 1.0)
    linear_out = mlp((2,), activation="relu", output_activation=None)
    assert linear_out.layers[-1].activation.__name__ == "linear"

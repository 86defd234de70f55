"""X-GACMN's pair-wise consistency loss L_l2, every form against values worked out by hand."""

import numpy as np
import pytest
import tensorflow as tf

from tf_xmr.losses.adversarial import PAIR_CONSISTENCY_FORMS, pair_consistency_loss

# Two pairs. Pair 0: a = (3, 4), b = (0, 0) -> squared distance 25. Pair 1: a = (1, 0), b = (1, 2) -> 4.
A = np.array([[3.0, 4.0], [1.0, 0.0]], np.float32)
B = np.array([[0.0, 0.0], [1.0, 2.0]], np.float32)


@pytest.mark.parametrize(
    "form, expected",
    [
        ("frobenius", np.sqrt(25.0 + 4.0)),
        ("mean_norm", (5.0 + 2.0) / 2),
        ("mean_squared", (25.0 + 4.0) / 2),
    ],
)
def test_raw_forms_by_hand(form, expected):
    np.testing.assert_allclose(pair_consistency_loss(A, B, form).numpy(), expected, rtol=1e-6)


def test_normalized_form_is_two_minus_two_cosine():
    # Pair 0: (3, 4)/5 against (1, 1)/sqrt 2: cos = 7 / (5 sqrt 2). Pair 1: (1, 0) against (-1, 0): cos = -1.
    a = np.array([[3.0, 4.0], [2.0, 0.0]], np.float32)
    b = np.array([[1.0, 1.0], [-0.5, 0.0]], np.float32)
    cos0 = 7.0 / (5.0 * np.sqrt(2.0))
    expected = ((2 - 2 * cos0) + (2 - 2 * -1.0)) / 2
    np.testing.assert_allclose(pair_consistency_loss(a, b, "normalized_mean_squared").numpy(), expected, rtol=1e-6)


def test_normalized_form_ignores_the_norms():
    # Rescaling any row of either side leaves the loss unchanged; the raw mean_squared form changes.
    scale = np.array([[0.01], [7.0]], np.float32)
    normalized = pair_consistency_loss(A + 1.0, B + 1.0, "normalized_mean_squared").numpy()
    rescaled = pair_consistency_loss((A + 1.0) * scale, B + 1.0, "normalized_mean_squared").numpy()
    np.testing.assert_allclose(rescaled, normalized, rtol=1e-5)
    assert not np.isclose(
        pair_consistency_loss((A + 1.0) * scale, B + 1.0, "mean_squared").numpy(),
        pair_consistency_loss(A + 1.0, B + 1.0, "mean_squared").numpy(),
    )


@pytest.mark.parametrize("form", PAIR_CONSISTENCY_FORMS)
def test_gradient_is_finite_for_equal_pairs_and_zero_vectors(form):
    # Equal pairs put the square roots at 0; a zero row is where normalisation divides by 0.
    a = tf.Variable([[1.0, 2.0], [0.0, 0.0]])
    b = tf.constant([[1.0, 2.0], [0.0, 0.0]])
    with tf.GradientTape() as tape:
        loss = pair_consistency_loss(a, b, form)
    grad = tape.gradient(loss, a)
    assert np.all(np.isfinite(grad.numpy())), (form, grad.numpy())
    np.testing.assert_allclose(loss.numpy(), 0.0, atol=1e-5)


def test_unknown_form_is_refused():
    with pytest.raises(ValueError, match="form must be one of"):
        pair_consistency_loss(A, B, "sum")

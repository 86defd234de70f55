"""Gradient reversal layer (Ganin & Lempitsky, ICML 2015), used by ACMR (Sec. 3.5) and JFSE.

Forward it is the identity; backward it multiplies the incoming gradient by ``-strength``. Sitting between an encoder
and a discriminator, it lets one optimiser step *minimise* the discriminator loss for the discriminator's weights while
*maximising* it for the encoder's weights.
"""

import keras
import tensorflow as tf


@tf.custom_gradient
def reverse_gradient(x, strength):
    """Identity in the forward pass; gradient ``-strength * dy`` in the backward pass.

    Args:
        x: Tensor of any shape.
        strength: scalar tensor, the reversal strength (lambda in the DANN paper).

    Returns:
        ``x`` unchanged (a new tensor).
    """

    def grad(dy):
        # No gradient for the strength itself: it is a schedule, not a parameter.
        return -strength * dy, tf.zeros_like(strength)

    return tf.identity(x), grad


class GradientReversal(keras.layers.Layer):
    """Identity forward, ``-strength``-scaled gradient backward.

    ``strength`` is a non-trainable variable rather than a Python float so that a schedule (see
    ``tf_xmr.training.callbacks.GradientReversalSchedule``) can change it during training without retracing the
    compiled train step; a Python float would be frozen into the traced graph.
    """

    def __init__(self, initial_strength: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_strength = float(initial_strength)
        self.strength = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.initial_strength),
            trainable=False,
            name="strength",
        )

    def call(self, inputs):
        return reverse_gradient(inputs, tf.cast(self.strength, inputs.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "initial_strength": self.initial_strength}

"""Angular-margin softmax head (A-softmax; Liu et al., "SphereFace", CVPR 2017), used by X-GACMN (Sec. 3.3).

The head holds one weight matrix W = [W_1 .. W_C] (d, C) whose columns are normalised to unit length and has no bias,
so the logit of class j is ``||x|| cos(theta_j)`` with ``theta_j`` the angle between the feature ``x`` and ``W_j``.
For the target class the cosine is replaced by SphereFace's monotone extension of ``cos(m theta)`` (SphereFace Eq. 7,
X-GACMN Eq. 9)::

    psi(theta) = (-1)^k cos(m theta) - 2k,   theta in [k pi/m, (k+1) pi/m],  k in {0, ..., m-1}

which demands an angle ``m`` times smaller than the other classes' for the same logit. Training with large ``m`` from
scratch is unstable, so SphereFace blends the plain cosine back in with a weight ``lambda`` annealed over the iterations
(``margin_inner_product_layer`` of the official code)::

    f_y = ||x|| (lambda cos(theta_y) + psi(theta_y)) / (1 + lambda)
    lambda = max(lambda_min, base (1 + gamma iter)^(-power))

``lambda = 0`` is Eq. 9 exactly. The iteration counter is a non-trainable variable of the layer, advanced by the
owning model once per optimiser step (``advance()``), so the schedule survives checkpoint/resume and changes without
retracing the compiled train step.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf


def chebyshev(cosine, degree: int):
    """Chebyshev polynomial of the first kind, ``T_m(c) = cos(m arccos c)``.

    Computed with the recurrence ``T_0 = 1, T_1 = c, T_{n+1} = 2 c T_n - T_{n-1}``, a polynomial in ``c``, so its
    gradient is finite everywhere (``arccos`` itself has an infinite derivative at ``c = +-1``).

    Args:
        cosine: tensor of cosines, any shape.
        degree: m >= 0 (Python int).

    Returns:
        Tensor of the same shape as ``cosine``.
    """
    previous, current = tf.ones_like(cosine), cosine
    if degree == 0:
        return previous
    for _ in range(degree - 1):
        previous, current = current, 2.0 * cosine * current - previous
    return current


def margin_cosine(cosine, margin: int):
    """SphereFace's ``psi`` as a function of ``c = cos(theta)`` (X-GACMN Eq. 9).

    ``psi = (-1)^k T_m(c) - 2k`` with ``k = floor(m arccos(c) / pi)`` clipped to ``{0, ..., m-1}``. ``k`` only selects
    the branch and carries no gradient (``psi`` is continuous, and so is its derivative, at every branch boundary
    ``theta = k pi/m``); the gradient flows through the polynomial ``T_m(c)`` alone and is finite everywhere.
    ``psi`` decreases monotonically from 1 at ``theta = 0`` to ``-(2m - 1)`` at ``theta = pi``.

    Args:
        cosine: tensor of cosines in [-1, 1], any shape.
        margin: integer m >= 1 (m = 1 gives ``psi = cos``).

    Returns:
        Tensor of the same shape as ``cosine``.
    """
    # arccos is only needed for the branch index; clipping keeps it defined when rounding pushes |c| past 1.
    safe = tf.clip_by_value(cosine, -1.0, 1.0)
    k = tf.stop_gradient(tf.minimum(tf.floor(margin * tf.acos(safe) / math.pi), margin - 1.0))
    sign = 1.0 - 2.0 * tf.math.floormod(k, 2.0)
    return sign * chebyshev(cosine, margin) - 2.0 * k


def annealed_lambda(iteration, *, base: float, gamma: float, power: float, minimum: float):
    """SphereFace's blending weight ``lambda = max(minimum, base (1 + gamma iter)^(-power))``.

    Args:
        iteration: scalar, optimiser steps taken so far.
        base, gamma, power, minimum: the schedule constants (SphereFace: 1000, 0.12, 1, 5).

    Returns:
        Scalar float32 tensor.
    """
    iteration = tf.cast(iteration, tf.float32)
    return tf.maximum(tf.constant(minimum, tf.float32), base * tf.pow(1.0 + gamma * iteration, -power))


class AngularMarginSoftmax(keras.layers.Layer):
    """A-softmax logits with a multiplicative angular margin and SphereFace's lambda annealing.

    One instance can be shared by several inputs (X-GACMN applies the same W to image and text common vectors).
    Calling it returns logits to be fed to an ordinary softmax cross-entropy against the same labels.

    Args:
        num_classes: C, the number of columns of W.
        margin: the integer margin m >= 1.
        anneal: if False, ``lambda`` is fixed at ``lambda_min`` (0 = pure A-softmax, Eq. 9).
        lambda_base, lambda_gamma, lambda_power, lambda_min: annealing constants (see ``annealed_lambda``).
        epsilon: floor under ``||x||^2`` so the norm and its gradient stay finite at ``x = 0``.
        feature_scale: None = SphereFace's form, the logits scale with the feature norm ``||x||``; a number s =
            the features are normalised and the logits scale with s instead (``s cos``, ``s psi``: the normalised
            form of NormFace / SphereFace-R, which keeps a network from escaping the margin by shrinking ``||x||``).

    Call args:
        inputs: (batch, d) features (not normalised: their norm scales the logits unless ``feature_scale`` is set).
        labels: (batch, C) one-/multi-hot targets, or (batch,) integer class ids; the margin is applied to every
            positive class. None returns the plain angular logits ``||x|| cos(theta_j)`` of every class (inference).

    Returns:
        (batch, C) logits.
    """

    def __init__(self, num_classes: int, margin: int = 4, *, anneal: bool = True, lambda_base: float = 1000.0,
                 lambda_gamma: float = 0.12, lambda_power: float = 1.0, lambda_min: float = 5.0,
                 epsilon: float = 1e-12, feature_scale: float | None = None, **kwargs):
        super().__init__(**kwargs)
        if int(margin) != margin or margin < 1:
            raise ValueError(f"the angular margin m must be an integer >= 1, got {margin!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.margin = int(margin)
        self.anneal = bool(anneal)
        self.lambda_base = float(lambda_base)
        self.lambda_gamma = float(lambda_gamma)
        self.lambda_power = float(lambda_power)
        self.lambda_min = float(lambda_min)
        self.epsilon = float(epsilon)
        if feature_scale is not None and not feature_scale > 0:
            raise ValueError(f"feature_scale must be > 0 or None, got {feature_scale!r}")
        self.feature_scale = None if feature_scale is None else float(feature_scale)
        # A weight, not a Python counter: it is saved with the checkpoints and read inside the compiled step.
        self.iterations = self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False,
                                          name="iterations")

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(int(input_shape[-1]), self.num_classes),
                                      initializer="glorot_uniform", name="kernel")
        super().build(input_shape)

    def lambda_value(self):
        """The current blending weight lambda (scalar float32)."""
        if not self.anneal:
            return tf.constant(self.lambda_min, tf.float32)
        return annealed_lambda(self.iterations, base=self.lambda_base, gamma=self.lambda_gamma,
                               power=self.lambda_power, minimum=self.lambda_min)

    def advance(self, steps: int = 1):
        """Advance the annealing schedule (call once per optimiser step of the owner, not once per call)."""
        self.iterations.assign_add(tf.constant(steps, tf.int64))

    def cosines(self, inputs):
        """``(||x|| (batch, 1), cos(theta) (batch, C))`` of the features against the normalised class weights."""
        squared = tf.reduce_sum(tf.square(inputs), axis=-1, keepdims=True)
        norm = tf.sqrt(tf.maximum(squared, self.epsilon))
        weights = tf.math.l2_normalize(self.kernel, axis=0, epsilon=self.epsilon)
        return norm, tf.matmul(inputs, weights) / norm

    def call(self, inputs, labels=None):
        norm, cosine = self.cosines(inputs)
        if self.feature_scale is not None:
            norm = tf.fill(tf.shape(norm), tf.constant(self.feature_scale, inputs.dtype))
        if labels is None:
            return norm * cosine
        if labels.shape.rank == 1:
            labels = tf.one_hot(tf.cast(labels, tf.int32), self.num_classes, dtype=inputs.dtype)
        positive = tf.cast(labels, inputs.dtype) > 0
        lam = tf.cast(self.lambda_value(), inputs.dtype)
        target = (lam * cosine + margin_cosine(cosine, self.margin)) / (1.0 + lam)
        return norm * tf.where(positive, target, cosine)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.num_classes)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "margin": self.margin,
            "anneal": self.anneal,
            "lambda_base": self.lambda_base,
            "lambda_gamma": self.lambda_gamma,
            "lambda_power": self.lambda_power,
            "lambda_min": self.lambda_min,
            "epsilon": self.epsilon,
            "feature_scale": self.feature_scale,
        }

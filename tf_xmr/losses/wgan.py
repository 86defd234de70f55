"""Wasserstein GAN with gradient penalty (WGAN-GP; Gulrajani et al., NeurIPS 2017), as used by JFSE Eqs. 1-3.

The critic ``D`` scores features (optionally with a condition concatenated by the caller); the losses here are pure
functions of the scores and of the critic's input gradients, so the model decides what is differentiated and with
respect to which variables (the penalty belongs to the critic's objective only).

    critic (minimised):     L_D = E[D(x_fake)] - E[D(x_real)] + lambda_gp * E[(||grad_x_hat D(x_hat)||_2 - 1)^2]
    generator (minimised):  L_G = -E[D(x_fake)]
    x_hat = a * x_real + (1 - a) * x_fake,  a ~ U(0, 1) drawn once per sample and broadcast over the features.
"""

from __future__ import annotations

import tensorflow as tf


def interpolate(real, fake, coefficients):
    """Random points on the segments between paired real and fake samples: ``x_hat_i = a_i x_i + (1 - a_i) x~_i``.

    Args:
        real: (b, d) real features.
        fake: (b, d) generated features (pair i interpolates real[i] with fake[i]).
        coefficients: (b,) or (b, 1) interpolation coefficients ``a_i``, one per SAMPLE (WGAN-GP draws
            ``a ~ U(0, 1)`` per sample; one scalar for the whole batch or one per feature would be a different
            estimator).

    Returns:
        (b, d) interpolates.
    """
    coefficients = tf.convert_to_tensor(coefficients, dtype=real.dtype)
    if coefficients.shape.rank == 1:
        coefficients = coefficients[:, None]
    if coefficients.shape.rank != 2 or (coefficients.shape[1] is not None and coefficients.shape[1] != 1):
        raise ValueError(f"interpolation coefficients must have shape (b,) or (b, 1), got {coefficients.shape}")
    return coefficients * real + (1.0 - coefficients) * fake


def gradient_penalty(gradients):
    """Two-sided gradient penalty from the critic's input gradients at the interpolates.

    ``GP = (1/b) sum_i (||g_i||_2 - 1)^2`` with ``g_i = d D(x_hat_i) / d x_hat_i`` the gradient of sample i's score
    with respect to sample i's FEATURES (a condition concatenated to the input is not part of ``g_i``; JFSE Eq. 1 takes
    the gradient w.r.t. ``v_hat`` only). The norm is per sample, over every non-batch axis.

    Args:
        gradients: (b, d) (or (b, ...)) gradients of ``sum_i D(x_hat_i)`` w.r.t. ``x_hat``; since the critic scores
            each sample independently, row i is sample i's own input gradient.

    Returns:
        Scalar penalty (unweighted; the caller multiplies by lambda_gp).
    """
    gradients = tf.reshape(gradients, (tf.shape(gradients)[0], -1))
    # The epsilon keeps the norm differentiable at g = 0 (the second-order gradient of sqrt is infinite there).
    norms = tf.sqrt(tf.reduce_sum(tf.square(gradients), axis=1) + 1e-12)
    return tf.reduce_mean(tf.square(norms - 1.0))


def critic_loss(real_scores, fake_scores):
    """Wasserstein critic loss without the penalty: ``E[D(x_fake)] - E[D(x_real)]`` (the negated Eq. 1 estimate).

    Args:
        real_scores: (b,) or (b, 1) critic scores of real samples.
        fake_scores: (b',) or (b', 1) critic scores of generated samples.

    Returns:
        Scalar; minimising it maximises the estimated Wasserstein distance.
    """
    return tf.reduce_mean(fake_scores) - tf.reduce_mean(real_scores)


def generator_loss(fake_scores):
    """WGAN generator loss ``-E[D(x_fake)]`` (JFSE: the generators minimise L_cWGAN, whose only G-dependent term is
    ``-E[D(G(c, z), c)]``).

    Args:
        fake_scores: (b,) or (b, 1) critic scores of generated samples.

    Returns:
        Scalar loss.
    """
    return -tf.reduce_mean(fake_scores)

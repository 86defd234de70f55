"""Correlation attention (DA-GAN Eqs. 13-17 and 19-20; the same mechanism as the Cross Attention Network of Hou et al.,
NeurIPS 2019) and class-prototype memories for retrieval-time references.

A vector ``x`` of width ``D`` is read as ``p`` positions of depth ``d = D / p`` (spec A3: the paper's "x*y*d
convolutional representation" is a flat fc7 / FC vector here). Against a reference vector ``r`` of the same width:

    M[j, k] = <x_j / ||x_j||, r_k / ||r_k||>                         (Eq. 13, (p, p); row j = m^(j))
    g       = row means of M, g_j = (1/p) sum_k M[j, k]              (Eq. 15 as printed; "columns": CAN's direction)
    K       = W_2 relu(W_1 g)                                        (Eq. 15, the meta-learned kernel, (p,))
    A_j     = softmax_j( (1/Gamma) K^T m^(j) )                       (Eq. 16, the attention map over positions)
    x'      = x * (1 + A)   (A broadcast over the depth)             (Eq. 17, residual attention)
"""

from __future__ import annotations

import keras
import tensorflow as tf

#: Which mean of the correlation matrix feeds the meta network (spec A5).
MEAN_AXES = ("rows", "columns")


def correlation_matrix(x, reference, positions: int, epsilon: float = 1e-12):
    """Cosine correlation between the positions of ``x`` and those of ``reference`` (DA-GAN Eq. 13 / Eq. 19).

    Args:
        x: (b, D) vectors, D divisible by ``positions``.
        reference: (b, D) reference vectors (group mean, paired item, prototype ...).
        positions: p, the number of positions each vector is split into (depth D / p each).
        epsilon: floor under the squared norms (an all-zero position gives correlation 0, not NaN).

    Returns:
        (b, p, p) tensor; entry [i, j, k] is the cosine of position j of ``x[i]`` with position k of ``reference[i]``.
    """
    width = x.shape[-1]
    if width is None or width % positions:
        raise ValueError(f"correlation attention: width {width} is not divisible by {positions} positions")
    depth = width // positions
    xs = tf.math.l2_normalize(tf.reshape(x, (-1, positions, depth)), axis=-1, epsilon=epsilon)
    rs = tf.math.l2_normalize(tf.reshape(reference, (-1, positions, depth)), axis=-1, epsilon=epsilon)
    return tf.einsum("bjd,bkd->bjk", xs, rs)


class CorrelationAttention(keras.layers.Layer):
    """Residual correlation attention of ``x`` against a reference (DA-GAN intra-attention Eqs. 13-17, and each
    channel of the inter-attention, Eqs. 19-20).

    Args:
        positions: p, positions per vector (the input width must be a multiple of it).
        reduction: r, the meta network is ``Dense(max(1, p // r), relu) -> Dense(p)`` (spec 3.2 [REC]: r = 4).
        temperature: Gamma of Eq. 16 (sum form).
        mean_axis: ``"rows"`` = Eq. 15 as printed (one mean per position of ``x``); ``"columns"`` = the CAN code's
            direction (one mean per reference position, index-consistent with ``K^T m^(j)``) [spec A5].

    Call:
        ``layer(x, reference)`` with x, reference (b, D) -> ``(x * (1 + A), A)``: (b, D) and the (b, p) attention map.
    """

    def __init__(self, positions: int, reduction: int = 4, temperature: float = 1.0, mean_axis: str = "rows",
                 **kwargs):
        super().__init__(**kwargs)
        if positions < 1:
            raise ValueError(f"positions must be >= 1, got {positions}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if mean_axis not in MEAN_AXES:
            raise ValueError(f"mean_axis must be one of {MEAN_AXES}, got {mean_axis!r}")
        self.positions = int(positions)
        self.reduction = int(reduction)
        self.temperature = float(temperature)
        self.mean_axis = mean_axis
        self.hidden = keras.layers.Dense(max(1, self.positions // self.reduction), activation="relu", name="w1")
        self.kernel_out = keras.layers.Dense(self.positions, name="w2")

    def build(self, input_shape):
        self.hidden.build((None, self.positions))
        self.kernel_out.build((None, self.hidden.units))
        self.built = True

    def attention_map(self, x, reference):
        """The (b, p) softmax attention map A of Eq. 16."""
        m = correlation_matrix(x, reference, self.positions)
        g = tf.reduce_mean(m, axis=2 if self.mean_axis == "rows" else 1)  # (b, p)
        kernel = self.kernel_out(self.hidden(g))  # K, (b, p)
        scores = tf.einsum("bjk,bk->bj", m, kernel) / self.temperature  # K^T m^(j)
        return tf.nn.softmax(scores, axis=-1)

    def call(self, x, reference):
        a = self.attention_map(x, reference)
        depth = x.shape[-1] // self.positions
        attended = tf.reshape(tf.reshape(x, (-1, self.positions, depth)) * (1.0 + a[..., None]), tf.shape(x))
        return attended, a

    def get_config(self):
        return {**super().get_config(), "positions": self.positions, "reduction": self.reduction,
                "temperature": self.temperature, "mean_axis": self.mean_axis}


class ClassPrototypes(keras.layers.Layer):
    """A (num_classes, D) memory of per-class mean vectors, kept as an exponential moving average during training
    and used as the retrieval-time reference when the query's class is unknown (DA-GAN spec A1).

    The memory is a non-trainable weight, so it is saved in checkpoints and baked into exported SavedModels.

    Args:
        num_classes: C.
        momentum: EMA factor m: ``mu_c <- m mu_c + (1 - m) mean_{i in batch, y_i = c} x_i``; the first batch holding
            class c sets ``mu_c`` directly.
        temperature: tau of the soft read-out ``sum_c softmax_c(cos(x, mu_c) / tau) mu_c``.
    """

    def __init__(self, num_classes: int, momentum: float = 0.99, temperature: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.momentum = float(momentum)
        self.temperature = float(temperature)

    def build(self, input_shape):
        width = int(input_shape[-1])
        self.prototypes = self.add_weight(shape=(self.num_classes, width), initializer="zeros", trainable=False,
                                          name="prototypes")
        self.seen = self.add_weight(shape=(self.num_classes,), initializer="zeros", trainable=False, name="seen")
        self.built = True

    def update(self, x, labels):
        """One EMA step with a batch: x (b, D), labels (b, C) multi-hot (an item counts for each of its labels)."""
        labels = tf.cast(labels, x.dtype)
        counts = tf.reduce_sum(labels, axis=0)  # (C,)
        means = tf.matmul(labels, x, transpose_a=True) / tf.maximum(counts, 1.0)[:, None]
        present = counts > 0
        blended = tf.where((self.seen > 0)[:, None], self.momentum * self.prototypes + (1 - self.momentum) * means,
                           means)
        self.prototypes.assign(tf.where(present[:, None], blended, self.prototypes))
        self.seen.assign(tf.where(present, tf.ones_like(self.seen), self.seen))

    def similarities(self, x):
        """(b, C) cosine of each row of x with each prototype (a class never seen gets -1)."""
        cos = tf.matmul(tf.math.l2_normalize(x, -1, epsilon=1e-12),
                        tf.math.l2_normalize(self.prototypes, -1, epsilon=1e-12), transpose_b=True)
        return tf.where((self.seen > 0)[None, :], cos, -tf.ones_like(cos))

    def call(self, x, mode: str = "soft"):
        """Reference vectors for x (b, D): ``"soft"`` mixture, ``"nearest"`` prototype, or the ``"mean"`` of all
        seen prototypes (class-agnostic)."""
        if mode == "mean":
            seen = self.seen[:, None]
            mean = tf.reduce_sum(self.prototypes * seen, 0) / tf.maximum(tf.reduce_sum(seen), 1.0)
            return tf.broadcast_to(mean[None, :], tf.shape(x))
        sims = self.similarities(x)
        if mode == "nearest":
            return tf.gather(self.prototypes, tf.argmax(sims, axis=-1))
        if mode == "soft":
            weights = tf.nn.softmax(sims / self.temperature, axis=-1)
            return tf.matmul(weights, self.prototypes)
        raise ValueError(f"prototype read-out mode must be soft, nearest or mean, got {mode!r}")

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "momentum": self.momentum,
                "temperature": self.temperature}

"""Feature standardisation as a layer, so that exported encoders take raw features.

Putting the statistics inside the encoder (instead of in the input pipeline) means a TF Serving client sends exactly
the features it has; the SavedModel applies the training-set statistics itself.
"""

import keras
import numpy as np
import tensorflow as tf

STANDARDIZE_MODES = ("none", "zscore", "l2")


class FeatureStandardizer(keras.layers.Layer):
    """Applies one of: identity, z-score with training-set statistics, or row-wise L2 normalisation.

    Args:
        mode: ``"none"`` | ``"zscore"`` | ``"l2"``.
        mean: (d,) training-split mean, required for ``"zscore"``.
        std: (d,) training-split standard deviation, required for ``"zscore"``; entries below ``epsilon`` are
            treated as 1 so that constant features pass through centred instead of exploding.
    """

    def __init__(self, mode: str = "none", mean=None, std=None, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        if mode not in STANDARDIZE_MODES:
            raise ValueError(f"mode must be one of {STANDARDIZE_MODES}, got {mode!r}")
        self.mode = mode
        self.epsilon = float(epsilon)
        self._init_mean = None if mean is None else np.asarray(mean, np.float32)
        self._init_std = None if std is None else np.asarray(std, np.float32)
        if mode == "zscore" and (self._init_mean is None or self._init_std is None):
            raise ValueError("zscore standardisation needs the training mean and std")

    def build(self, input_shape):
        dim = int(input_shape[-1])
        if self.mode == "zscore":
            if self._init_mean.shape != (dim,) or self._init_std.shape != (dim,):
                raise ValueError(
                    f"standardisation statistics have shape {self._init_mean.shape}, expected ({dim},)"
                )
            std = np.where(self._init_std < self.epsilon, 1.0, self._init_std).astype(np.float32)
            self.mean = self.add_weight(
                shape=(dim,), initializer=keras.initializers.Constant(self._init_mean), trainable=False, name="mean"
            )
            self.inv_std = self.add_weight(
                shape=(dim,), initializer=keras.initializers.Constant(1.0 / std), trainable=False, name="inv_std"
            )
        super().build(input_shape)

    def call(self, inputs):
        if self.mode == "zscore":
            return (inputs - self.mean) * self.inv_std
        if self.mode == "l2":
            return tf.math.l2_normalize(inputs, axis=-1, epsilon=1e-12)
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        # Statistics live in the weights; the config only needs to rebuild the variables with the right shapes.
        config = {**super().get_config(), "mode": self.mode, "epsilon": self.epsilon}
        if self.mode == "zscore":
            config["mean"] = self._init_mean.tolist()
            config["std"] = self._init_std.tolist()
        return config

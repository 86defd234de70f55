"""Reusable Keras layers: gradient reversal, feature standardisation, MLP towers."""

from tf_xmr.layers.angular_margin import AngularMarginSoftmax
from tf_xmr.layers.gradient_reversal import GradientReversal, reverse_gradient
from tf_xmr.layers.mlp import mlp
from tf_xmr.layers.standardize import STANDARDIZE_MODES, FeatureStandardizer

__all__ = [
    "AngularMarginSoftmax", "GradientReversal", "reverse_gradient", "mlp", "FeatureStandardizer", "STANDARDIZE_MODES",
]

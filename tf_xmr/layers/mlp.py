"""Fully connected towers, the building block of every encoder, decoder and discriminator here."""

from collections.abc import Sequence

import keras


def mlp(
    units: Sequence[int],
    *,
    activation: str | None = "tanh",
    output_activation: str | None = "same",
    dropout: float = 0.0,
    name: str | None = None,
) -> keras.Sequential:
    """A stack of Dense layers.

    Args:
        units: output width of each Dense layer, e.g. ``(2000, 200)``.
        activation: activation of the hidden layers.
        output_activation: activation of the last layer; ``"same"`` reuses ``activation``, ``None`` is linear.
        dropout: dropout rate after each hidden layer (not after the output); 0 disables it.
        name: Keras name of the returned model.

    Returns:
        ``keras.Sequential`` mapping (batch, d_in) -> (batch, units[-1]); built lazily on first call.
    """
    if not units:
        raise ValueError("mlp needs at least one layer width")
    if output_activation == "same":
        output_activation = activation
    layers = []
    for i, width in enumerate(units):
        last = i == len(units) - 1
        layers.append(keras.layers.Dense(int(width), activation=output_activation if last else activation))
        if not last and dropout > 0:
            layers.append(keras.layers.Dropout(dropout))
    return keras.Sequential(layers, name=name)

"""The test-only fault injection (tests/faults.py) that the resume tests rely on: it fires at the marked batch of
the marked epoch, only in the named network's fit, and leaves ``keras.Model.fit`` as it found it."""

import keras
import numpy as np
import pytest

from tests import faults


def fitted(modality=None, epochs=2):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.modality = modality
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            seen.append((self.epoch + 1, batch))

    model.fit(np.zeros((8, 2), "float32"), np.zeros((8, 1), "float32"), batch_size=2, epochs=epochs, verbose=0,
              callbacks=[Record()])
    return seen


def test_the_fault_fires_at_the_marked_batch_of_the_marked_epoch_and_the_patch_is_undone():
    original = keras.Model.fit
    with faults.at_step(2, 1, faults.raise_fault(2, 1)):
        with pytest.raises(faults.SimulatedFault, match="epoch 2, step 1"):
            fitted()
    assert keras.Model.fit is original and "fit" not in vars(keras.Model)
    assert fitted()[-1] == (2, 3)  # and later fits run whole


def test_a_network_restricted_fault_spares_the_other_networks():
    calls = []
    with faults.at_step(1, 2, lambda: calls.append("fault"), network="text"):
        fitted(modality="image", epochs=1)
        assert calls == []
        fitted(modality="text", epochs=1)
    assert calls == ["fault"]

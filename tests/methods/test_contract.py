"""The contract every registered method keeps, checked for each name in ``registered_methods()``.

A new method gets these tests by registering itself; its own test file keeps only what is specific to it. On a tiny
synthetic batch (two modalities, a few dozen items, small dims):

- one training step through ``fit`` gives finite losses (run eagerly: tracing would cost 10-30 s per method on a
  busy 2-core machine; the traced path runs in test_resume.py's runs, XLA in the per-method files);
- each player's optimiser step changes only that player's variables, and the players' variable sets split the
  model's trainable variables between them (jointly trained methods, from ``players()``); independent-modality
  methods (SDML): a step of one modality network changes that network only, never the shared state;
- ``save_weights`` / ``load_weights`` into a freshly built model reproduces every weight and the encoders' outputs;
- the exported SavedModel (``tf_xmr.export.export_encoder``, reloaded with ``tf.saved_model.load``) reproduces the
  Keras encoder to 1e-5.

That a run interrupted mid-epoch and resumed ends with the uninterrupted run's scores and best-checkpoint arrays is
part of the contract too; it is checked for every registered method in tests/training/test_resume.py (one pair of
trainings per method there, not a second pair here).

Model sizes: ``TINY`` shrinks the built-in methods; a method without an entry runs with its config defaults (slower,
still correct), so adding one is optional.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import compile_players, paired_batch, variable_ids
from tf_xmr.config import from_dict
from tf_xmr.export import export_encoder
from tf_xmr.methods import get_method, registered_methods
from tf_xmr.methods.base import DataSpec
from tf_xmr.modeling import is_independent

METHODS = registered_methods()
JOINT = [m for m in METHODS if not is_independent(m)]
INDEPENDENT = [m for m in METHODS if is_independent(m)]

IMAGE_DIM, TEXT_DIM, NUM_CLASSES, CLASS_EMBEDDING_DIM = 16, 8, 3, 5
ITEMS = 24

# Model fields that make each built-in method seconds-cheap (dims must fit IMAGE_DIM / TEXT_DIM / NUM_CLASSES).
TINY = {
    "acmr": {"hidden_units": {"image": [10], "text": [8]}, "common_dim": 4, "k": 2},
    "da_gan": {"feature_dim": 16, "common_dim": 8, "encoder_hidden": 8, "decoder_hidden": 8,
               "inter_discriminator_hidden": 4, "intra_positions": 4, "inter_positions": 2, "group_size": 2},
    "jfse": {"noise_dim": 4, "generator_hidden": 8, "critic_hidden": 8, "regressor_hidden": [8],
             "discriminator_hidden": [6, 4], "n_critic": 2},
    "sdml": {"encoder_units": [10], "decoder_units": [10], "common_dim": 6},
    "x_gacmn": {"encoder_units": [10], "decoder_units": [10], "common_dim": 4, "synthetic_discriminator_hidden": 8,
                "common_discriminator_hidden": 5, "margin": 2},
}

SPEC = DataSpec(
    modalities=("image", "text"), dims={"image": IMAGE_DIM, "text": TEXT_DIM}, num_classes=NUM_CLASSES,
    # Given to every method: the ones that need class embeddings (JFSE) find them, the others ignore them.
    class_embeddings=np.random.default_rng(7).normal(size=(NUM_CLASSES, CLASS_EMBEDDING_DIM)).astype(np.float32),
)


def model_config(method: str):
    return from_dict(get_method(method).config_class, TINY.get(method, {}))


def batch(seed: int = 0) -> dict:
    return paired_batch(ITEMS, seed=seed, image_dim=IMAGE_DIM, text_dim=TEXT_DIM, num_classes=NUM_CLASSES)


def features(modality: str, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(7, SPEC.dims[modality])).astype(np.float32)


def training_batches(model, steps: int = 1):
    """``steps`` batches through the model's own pipeline hook (DA-GAN adds its semantic groups there)."""
    data = tf.data.Dataset.from_tensors(batch())
    return model.prepare_training_stream(data.repeat(steps), one_pass=data, first_step=0)


@functools.cache
def trained_once(method: str):
    """The model (or modality networks) of ``method`` after one step, shared by the read-only checks of a process."""
    return modality_networks(method, trained=True)[0] if method in INDEPENDENT else joint_model(method, trained=True)


def joint_model(method: str, *, trained: bool = False):
    """A compiled model (one Adam per player); with ``trained``, after one step so no weight is at its init."""
    model = compile_players(get_method(method).model_class(model_config(method), SPEC), run_eagerly=True)
    if trained:
        model.train_step(next(iter(training_batches(model))))
    return model


def modality_networks(method: str, *, trained: bool = False) -> tuple[dict, dict]:
    """``(networks, shared_state)`` of an independent-modality method, each network compiled (and stepped once)."""
    model_class, config = get_method(method).model_class, model_config(method)
    state = model_class.create_shared_state(config, SPEC, seed=0)
    nets = {}
    for m in SPEC.modalities:
        net = model_class.modality_model(config, SPEC, m, state)
        net.compile(optimizer=tf.keras.optimizers.Adam(1e-2), run_eagerly=True)
        if trained:
            net.train_on_batch(modality_batch(m))
        nets[m] = net
    return nets, state


def modality_batch(modality: str) -> dict:
    full = batch()
    return {modality: full[modality], "labels": full["labels"]}


def values(variables) -> dict[int, np.ndarray]:
    return {id(v): np.array(v.numpy(), copy=True) for v in variables}


def changed(variables, before: dict[int, np.ndarray]) -> set[int]:
    return {id(v) for v in variables if not np.array_equal(v.numpy(), before[id(v)])}


def assert_same_weights(a, b):
    # Matched by position, as the weights file does (layer names carry a per-process counter: dense_92 / dense_98).
    assert len(a.weights) == len(b.weights)
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy(), err_msg=x.path)


def encoders_of(trained) -> dict:
    """modality -> Keras encoder of a joint model, of a dict of modality networks, or of one modality network."""
    if isinstance(trained, dict):
        return {m: net.encoder for m, net in trained.items()}
    if hasattr(trained, "modalities"):
        return {m: trained.encoder(m) for m in trained.modalities}
    return {trained.modality: trained.encoder}


# -- one training step ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", JOINT)
def test_one_fit_step_gives_finite_losses(method):
    model = joint_model(method)
    history = model.fit(training_batches(model), epochs=1, verbose=0)
    expected = {f"{p.name}_{term}" for p in model.players() for term in p.losses}
    assert set(history.history) == expected
    for name, logged in history.history.items():
        assert np.isfinite(logged[-1]), (name, logged)
    assert int(model.schedule_step.numpy()) == 1


@pytest.mark.parametrize("method", INDEPENDENT)
def test_one_fit_step_of_each_modality_network_gives_finite_losses(method):
    nets, _ = modality_networks(method)
    for m, net in nets.items():
        history = net.fit(tf.data.Dataset.from_tensors(modality_batch(m)), epochs=1, verbose=0)
        assert "loss" in history.history
        for name, logged in history.history.items():
            assert np.isfinite(logged[-1]), (m, name, logged)


# -- who updates what ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", JOINT)
def test_each_player_step_changes_only_its_own_variables(method):
    model = joint_model(method)
    players = list(model.players())
    groups = [variable_ids(p.variables) for p in players]
    # Every trainable variable has exactly one owner: no variable trained by two players, none by nobody.
    assert sum(len(g) for g in groups) == len(set().union(*groups))
    assert set().union(*groups) == variable_ids(model.trainable_variables)
    for p in players:
        assert len(variable_ids(p.variables)) == len(p.variables), f"player {p.name} lists a variable twice"

    data = next(iter(training_batches(model)))
    for player, own in zip(players, groups, strict=True):
        before = values(model.trainable_variables)
        iterations = {name: int(opt.iterations.numpy()) for name, opt in model.player_optimizers.items()}
        # The template's own per-player step (what train_step runs for this player on its schedule).
        model._update(player, data)
        moved = changed(model.trainable_variables, before)
        assert moved, f"a step of player {player.name!r} changed none of its variables"
        assert moved <= own, f"a step of player {player.name!r} changed variables of another player"
        for name, opt in model.player_optimizers.items():
            assert int(opt.iterations.numpy()) == iterations[name] + (name == player.name), name


@pytest.mark.parametrize("method", INDEPENDENT)
def test_each_modality_network_step_changes_only_that_network(method):
    nets, state = modality_networks(method)
    frozen = {k: np.array(v, copy=True) for k, v in state.items()}
    groups = {m: variable_ids(net.trainable_variables) for m, net in nets.items()}
    assert not groups["image"] & groups["text"], "modality networks share a trainable variable"
    everything = [v for net in nets.values() for v in net.variables]
    for m, net in nets.items():
        before = values(everything)
        net.train_on_batch(modality_batch(m))
        moved = changed(everything, before)
        assert moved and moved <= variable_ids(net.variables), m
    for key, value in state.items():
        np.testing.assert_array_equal(np.asarray(value), frozen[key], err_msg=f"shared state {key!r} changed")


# -- save / load -------------------------------------------------------------------------------------------------------


def _check_round_trip(trained, fresh, tmp_path):
    """``fresh`` (a new, differently initialised build) takes ``trained``'s weights through a weights file."""
    path = str(tmp_path / "model.weights.h5")
    trained.save_weights(path)
    for m, encoder in encoders_of(trained).items():
        x = features(m)
        # The check means something only if the fresh build starts elsewhere.
        assert not np.allclose(encoders_of(fresh)[m](x, training=False).numpy(), encoder(x, training=False).numpy())
    fresh.load_weights(path)
    assert_same_weights(trained, fresh)
    for m, encoder in encoders_of(trained).items():
        x = features(m)
        np.testing.assert_allclose(encoders_of(fresh)[m](x, training=False).numpy(),
                                   encoder(x, training=False).numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", JOINT)
def test_save_and_load_weights_reproduce_the_encoders(method, tmp_path):
    _check_round_trip(trained_once(method), joint_model(method), tmp_path)


@pytest.mark.parametrize("method", INDEPENDENT)
def test_save_and_load_weights_reproduce_each_modality_network(method, tmp_path):
    trained, (fresh, _) = trained_once(method), modality_networks(method)
    for net in fresh.values():
        net.optimizer.build(net.trainable_variables)  # the weights file holds the trained optimiser's slots too
    for m in SPEC.modalities:
        (tmp_path / m).mkdir()
        _check_round_trip(trained[m], fresh[m], tmp_path / m)


# -- export ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_exported_encoders_reproduce_the_keras_encoders(method, tmp_path):
    for m, encoder in encoders_of(trained_once(method)).items():
        path = export_encoder(encoder, str(tmp_path / f"{m}_encoder"), input_dim=SPEC.dims[m])
        serve = tf.saved_model.load(path).signatures["serving_default"]
        x = features(m)
        exported = serve(features=tf.constant(x))["embedding"].numpy()
        np.testing.assert_allclose(exported, encoder(x, training=False).numpy(), rtol=0, atol=1e-5, err_msg=m)

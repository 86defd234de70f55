"""ACMR: the model contract, the Algorithm 1 schedule and the gradient-reversal direction."""

import numpy as np
import pytest
import tensorflow as tf

from tf_xmr.config import from_dict
from tf_xmr.config.schema import OptimizerConfig
from tf_xmr.errors import ConfigError
from tf_xmr.methods.acmr import ACMR, ACMRConfig
from tf_xmr.methods.base import DataSpec
from tf_xmr.modeling import build_optimizer

SPEC = DataSpec(modalities=("image", "text"), dims={"image": 12, "text": 6}, num_classes=3)


def _config(**overrides):
    base = {"hidden_units": {"image": [10], "text": [8]}, "common_dim": 4, "k": 3}
    return from_dict(ACMRConfig, {**base, **overrides})


def _batch(n=12, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.eye(3, dtype=np.float32)[np.arange(n) % 3]
    return {
        "image": tf.constant(rng.normal(size=(n, 12)).astype(np.float32)),
        "text": tf.constant(rng.normal(size=(n, 6)).astype(np.float32)),
        "labels": tf.constant(labels),
    }


def _compiled(config, jit=False):
    model = ACMR(config, SPEC)
    model.build_for_training()
    model.compile(
        optimizers={p.name: build_optimizer(OptimizerConfig(learning_rate=1e-2), p.learning_rate_scale)
                    for p in model.players()},
        jit_compile=jit,
    )
    return model


def test_encoders_map_features_to_common_space():
    model = _compiled(_config())
    out = model(_batch())
    assert out["image"].shape == (12, 4) and out["text"].shape == (12, 4)
    assert np.all(np.abs(out["image"].numpy()) <= 1.0)  # tanh output layer


def test_player_variables_come_from_their_own_submodels():
    model = _compiled(_config())
    embedding, discriminator = model.players()
    # Disjoint players that cover the model, each listing a variable once: tests/methods/test_contract.py.
    assert {id(v) for v in discriminator.variables} == {id(v) for v in model.modality_classifier.trainable_variables}
    assert discriminator.every == 3 and discriminator.learning_rate_scale == pytest.approx(0.05)


@pytest.mark.parametrize("jit", [False, True])
def test_discriminator_updates_every_k_steps(jit):
    model = _compiled(_config(k=3), jit=jit)
    batch = _batch()
    dataset = tf.data.Dataset.from_tensors(batch).repeat(7)
    disc_opt = model.player_optimizers["discriminator"]
    emb_opt = model.player_optimizers["embedding"]
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    # Algorithm 1: 7 projector steps; the classifier moves after steps 3 and 6.
    assert int(emb_opt.iterations.numpy()) == 7
    assert int(disc_opt.iterations.numpy()) == 2
    assert int(model.schedule_step.numpy()) == 7


def test_joint_schedule_has_one_player_over_everything():
    model = _compiled(_config(schedule="joint"))
    (player,) = model.players()
    ids = {id(v) for v in player.variables}
    assert {id(v) for v in model.modality_classifier.trainable_variables} <= ids


def test_gradient_reversal_makes_projectors_ascend_the_modality_loss():
    """The embedding player's gradient on the projectors is -grad(L_adv) (Eq. 9) when only L_adv is active."""
    config = _config(use_imi=False, use_imd=False, reg_weight=0.0)
    model = _compiled(config)
    batch = _batch()
    projector_vars = model.projectors["image"].trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        embedding_loss = model.player_losses("embedding", batch, training=True)["loss"]
        image = model.encoders["image"](batch["image"])
        text = model.encoders["text"](batch["text"])
        plain_adv, _ = model._modality_loss(image, text, training=True)
    reversed_grads = tape.gradient(embedding_loss, projector_vars)
    plain_grads = tape.gradient(plain_adv, projector_vars)
    for r, p in zip(reversed_grads, plain_grads, strict=True):
        np.testing.assert_allclose(r.numpy(), -p.numpy(), rtol=1e-5, atol=1e-7)


def test_ablation_switches_remove_terms():
    model = _compiled(_config(use_imi=False, use_imd=False, use_adv=False, reg_weight=0.0))
    losses = model.player_losses("embedding", _batch(), training=False)
    assert float(losses["loss"]) == pytest.approx(0.0)


def test_wrong_modalities_are_config_errors():
    with pytest.raises(ConfigError, match="exactly two modalities"):
        ACMR(_config(), DataSpec(("a", "b", "c"), {"a": 1, "b": 1, "c": 1}, 2))
    with pytest.raises(ConfigError, match="hidden_units.*'audio'"):
        ACMR(_config(), DataSpec(("image", "audio"), {"image": 3, "audio": 2}, 2))

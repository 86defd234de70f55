"""X-GACMN: model contract, player ownership, Algorithm 1 schedule, adversarial sign switch, ablations, config errors,
and one tiny end-to-end run of configs/x_gacmn.yaml through train.py."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import compile_players, paired_batch, run_in_process, tensorboard_tags, variable_ids
from tf_xmr.config import from_dict
from tf_xmr.errors import ConfigError
from tf_xmr.experiment import load_experiment
from tf_xmr.layers import AngularMarginSoftmax
from tf_xmr.methods.base import DataSpec
from tf_xmr.methods.x_gacmn import XGACMN, XGACMNConfig

SPEC = DataSpec(modalities=("image", "text"), dims={"image": 12, "text": 6}, num_classes=3, standardize="l2")


def _config(**overrides):
    tiny = {
        "encoder_units": [10], "decoder_units": [10], "common_dim": 4, "synthetic_discriminator_hidden": 8,
        "common_discriminator_hidden": 5, "margin": 3,
    }
    return from_dict(XGACMNConfig, {**tiny, **overrides})


def _batch(n=12, seed=0):
    return paired_batch(n, seed=seed)


def _compiled(config, jit=False):
    return compile_players(XGACMN(config, SPEC), jit_compile=jit)


def test_encoders_take_raw_features_to_the_common_space():
    model = _compiled(_config())
    batch = _batch()
    out = model(batch)
    assert out["image"].shape == (12, 4) and out["text"].shape == (12, 4)
    assert np.all(np.abs(out["image"].numpy()) <= 1.0)  # tanh common layer
    # The standardiser (l2 here) is inside the exported encoder: a rescaled raw feature embeds identically.
    np.testing.assert_allclose(model.encoders["image"](3.0 * batch["image"]).numpy(), out["image"].numpy(),
                               rtol=1e-5, atol=1e-6)
    # The crossing: the image branch decodes to TEXT features and vice versa (spec A1).
    assert model.decoders["image"](out["image"]).shape == (12, 6)
    assert model.decoders["text"](out["text"]).shape == (12, 12)


def test_player_variables_come_from_their_own_submodels():
    model = _compiled(_config())
    discriminator, generator = model.players()
    assert (discriminator.name, generator.name) == ("discriminator", "generator")
    # Disjoint players that cover every trainable variable, each listed once: tests/methods/test_contract.py.
    disc_ids, gen_ids = variable_ids(discriminator.variables), variable_ids(generator.variables)
    expected_disc = [*model.synthetic_discriminators["image"].trainable_variables,
                     *model.synthetic_discriminators["text"].trainable_variables,
                     *model.common_discriminator.trainable_variables]
    assert disc_ids == variable_ids(expected_disc)
    # The A-softmax weights are shared by both modalities and owned by the generator; its schedule counter is not
    # trainable.
    assert variable_ids(model.classifier.trainable_variables) <= gen_ids
    assert id(model.classifier.iterations) not in gen_ids


def test_logged_terms_name_each_discriminator():
    model = _compiled(_config())
    names = {tracker.name for tracker in model.metrics}
    for disc in ("image", "text", "common"):
        assert f"discriminator_{disc}_loss" in names and f"discriminator_{disc}_accuracy" in names
    assert {"generator_loss", "generator_l2", "generator_adversarial", "generator_softmax_image",
            "generator_softmax_text", "generator_lambda"} <= names
    losses = model.player_losses("discriminator", _batch(), training=False)
    assert float(losses["loss"]) == pytest.approx(
        float(losses["image_loss"] + losses["text_loss"] + losses["common_loss"]), rel=1e-6)


def test_one_discriminator_step_per_k_generator_steps():
    # XLA-compiled, as configs run it (the end-to-end test below covers the plain graph path).
    model = _compiled(_config(generator_steps=3), jit=True)
    dataset = tf.data.Dataset.from_tensors(_batch()).repeat(7)
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    # Algorithm 1: the generator moves on all 7 steps, the discriminators after steps 3 and 6.
    assert int(model.player_optimizers["generator"].iterations.numpy()) == 7
    assert int(model.player_optimizers["discriminator"].iterations.numpy()) == 2
    # The A-softmax lambda schedule counts generator updates (one per step, although the head is called twice).
    assert int(model.classifier.iterations.numpy()) == 7


def test_discriminator_step_treats_generator_outputs_as_constants():
    model = _compiled(_config())
    generator_vars = model.players()[1].variables
    with tf.GradientTape() as tape:
        loss = model.player_losses("discriminator", _batch(), training=True)["loss"]
    assert all(g is None for g in tape.gradient(loss, generator_vars))


def test_literal_form_reverses_the_generator_gradient():
    """Eqs. 4-5 as printed minimise +log D(G(x)): for D_I, D_T and the text side of D_C that is exactly the negative
    of the standard fool-the-discriminator loss, so the generator gradient points the opposite way."""
    standard = _compiled(_config(l2_weight=0.0, softmax_weight=0.0))
    literal = _compiled(_config(l2_weight=0.0, softmax_weight=0.0, adversarial_form="literal"))
    literal.set_weights(standard.get_weights())
    batch = _batch()

    def grads(model):
        # G_T (text encoder + its image decoder) and G_I's text decoder: every term they see flips sign.
        variables = [*model.projectors["text"].trainable_variables, *model.decoders["text"].trainable_variables,
                     *model.decoders["image"].trainable_variables]
        with tf.GradientTape() as tape:
            loss = model.player_losses("generator", batch, training=False)["loss"]
        return tape.gradient(loss, variables)

    for s, lit in zip(grads(standard), grads(literal), strict=True):
        np.testing.assert_allclose(lit.numpy(), -s.numpy(), rtol=1e-4, atol=1e-7)
        assert float(tf.reduce_sum(s * lit)) < 0 or float(tf.reduce_sum(tf.abs(s))) == 0

    # A small gradient step on the standard form makes the (fixed) discriminators more wrong about the generated
    # features and common vectors, i.e. the generator fools them better.
    def fooling(model):
        real, common, synthetic = model._forward(batch, training=False)
        return (float(tf.reduce_mean(tf.nn.softmax(model.synthetic_discriminators["image"](synthetic["image"]))[:, 1]))
                + float(tf.reduce_mean(tf.nn.softmax(model.common_discriminator(common["text"]))[:, 1])))

    generator_vars = standard.players()[1].variables
    before = fooling(standard)
    with tf.GradientTape() as tape:
        loss = standard.player_losses("generator", batch, training=False)["loss"]
    for variable, gradient in zip(generator_vars, tape.gradient(loss, generator_vars), strict=True):
        variable.assign_sub(0.05 * gradient)
    assert fooling(standard) > before


def test_ablations_remove_their_submodels_and_terms():
    no_common = _compiled(_config(use_common_discriminator=False))
    assert no_common.common_discriminator is None
    names = {t.name for t in no_common.metrics}
    assert "discriminator_common_loss" not in names and "generator_adversarial_common" not in names

    no_synthetic = _compiled(_config(use_synthetic_discriminators=False))
    assert not no_synthetic.decoders and not no_synthetic.synthetic_discriminators
    (disc, _) = no_synthetic.players()
    assert variable_ids(disc.variables) == variable_ids(no_synthetic.common_discriminator.trainable_variables)

    # Without any discriminator only the generator player is left (encoders + head + L_l2).
    alone = _compiled(_config(use_synthetic_discriminators=False, use_common_discriminator=False))
    assert [p.name for p in alone.players()] == ["generator"]
    alone.fit(tf.data.Dataset.from_tensors(_batch()).repeat(2), epochs=1, verbose=0, shuffle=False)

    softmax = _compiled(_config(classifier="softmax"))
    assert not isinstance(softmax.classifier, AngularMarginSoftmax)
    assert "generator_lambda" not in {t.name for t in softmax.metrics}

    recon = _compiled(_config(use_synthetic_discriminators=False, reconstruction_weight=1.0))
    assert recon.decoders and float(recon.player_losses("generator", _batch(), False)["reconstruction"]) > 0


def test_config_errors_name_the_key_and_choices():
    with pytest.raises(ConfigError, match="adversarial_form.*literal"):
        _config(adversarial_form="paper")
    with pytest.raises(ConfigError, match="margin"):
        _config(margin=0)
    with pytest.raises(ConfigError, match="margin"):
        _config(margin=2.5)
    with pytest.raises(ConfigError, match="generator_steps"):
        _config(generator_steps=0)
    with pytest.raises(ConfigError, match="softmax_wieght"):
        _config(softmax_wieght=1.0)
    with pytest.raises(ConfigError, match="exactly two modalities"):
        XGACMN(_config(), DataSpec(("a", "b", "c"), {"a": 1, "b": 1, "c": 1}, 2))


def test_shipped_configs_load():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for path in ("configs/x_gacmn.yaml", "configs/wikipedia/x_gacmn.yaml"):
        config = load_experiment(os.path.join(root, path))
        assert config.method == "x_gacmn" and isinstance(config.model, XGACMNConfig)
        assert (config.model.l2_weight, config.model.adversarial_weight, config.model.softmax_weight) == (10, 5, 100)
        assert set(config.train.optimizers) == {"generator", "discriminator"}


def test_feature_scale_makes_the_softmax_terms_blind_to_the_common_norm():
    """model.feature_scale = s reaches the shared head: its logits then depend on the directions of the common vectors
    only (the same for x and x / 2); null keeps SphereFace's ||x|| scaling (the logits halve with x)."""
    batch = _batch()
    for scale in (2.0, None):
        model = _compiled(_config(feature_scale=scale))
        assert model.classifier.feature_scale == scale
        common = model.projectors["image"](model.standardizers["image"](batch["image"]))
        full = model.classifier(common, labels=batch["labels"]).numpy()
        half = model.classifier(0.5 * common, labels=batch["labels"]).numpy()
        np.testing.assert_allclose(half, full if scale else 0.5 * full, rtol=1e-5, atol=1e-7)
        assert np.isfinite(float(model.player_losses("generator", batch, training=False)["softmax_image"]))


@pytest.mark.slow
def test_train_cli_end_to_end(tmp_path, capsys, monkeypatch):
    # train.py's main() in this process (test_train_cli.py runs train.py itself in a fresh process): a new interpreter
    # would add its TensorFlow import and nothing specific to this method.
    run_dir = str(tmp_path / "x_gacmn")
    overrides = [
        f"run_dir={run_dir}", "train.epochs=2", "train.verbose=2", "train.batch_size=32",
        "data.synthetic.dims={image: 48, text: 24}", "data.synthetic.num_train=240", "data.synthetic.num_test=90",
        "data.synthetic.num_classes=4", "model.encoder_units=[16]", "model.decoder_units=[16]", "model.common_dim=8",
        "model.synthetic_discriminator_hidden=16", "model.common_discriminator_hidden=8",
        "train.jit_compile=false",  # XLA compilation would dominate a seconds-long run
    ]
    result = run_in_process(capsys, monkeypatch, "train.py", "--config", "configs/x_gacmn.yaml",
                            *[a for o in overrides for a in ("--set", o)])
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    assert metrics["method"] == "x_gacmn"
    for key in ("map_i2t", "map_t2i", "map_avg"):
        assert 0.0 <= metrics["test"][key] <= 1.0
    for modality in ("image", "text"):
        assert os.path.exists(os.path.join(run_dir, "export", f"{modality}_encoder", "1", "saved_model.pb"))
    # The progress line shows the players' total losses; every discriminator's loss and accuracy and every
    # generator term is in TensorBoard.
    assert "discriminator_loss" in result.stdout and "generator_loss" in result.stdout, result.stdout[-2000:]
    expected = [f"discriminator_{d}_{t}" for d in ("image", "text", "common") for t in ("loss", "accuracy")]
    tags = tensorboard_tags(run_dir)
    for key in expected + ["generator_l2", "generator_adversarial", "generator_lambda"]:
        assert key in tags, (key, sorted(tags))


def test_config_choices_are_the_loss_functions_forms():
    # The config's Literal choices and the loss module's form tuples list the same names twice (the config needs them
    # as a type for its one-line errors); this keeps the two lists from drifting apart.
    import typing

    from tf_xmr.losses.adversarial import ADVERSARIAL_FORMS, PAIR_CONSISTENCY_FORMS

    hints = typing.get_type_hints(XGACMNConfig)
    assert set(typing.get_args(hints["l2_form"])) == set(PAIR_CONSISTENCY_FORMS)
    assert set(typing.get_args(hints["adversarial_form"])) == set(ADVERSARIAL_FORMS)

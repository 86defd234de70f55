"""JFSE: model contract, player ownership, n_critic schedule, the gradient penalty on the critic only (checked on a
critic with an analytically known input gradient), the alignment switch, config errors, and one tiny end-to-end
training run of configs/jfse.yaml with a SavedModel round trip."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import compile_players, paired_batch, variable_ids
from tf_xmr.config import from_dict
from tf_xmr.errors import ConfigError
from tf_xmr.experiment import load_experiment
from tf_xmr.methods.base import DataSpec
from tf_xmr.methods.jfse import JFSE, JFSEConfig, scale_class_embeddings
from tf_xmr.training.pipeline import train

CLASS_EMBEDDINGS = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
SPEC = DataSpec(modalities=("image", "text"), dims={"image": 12, "text": 6}, num_classes=3,
                class_embeddings=CLASS_EMBEDDINGS)


def _config(**overrides):
    tiny = {"noise_dim": 4, "generator_hidden": 8, "critic_hidden": 8, "regressor_hidden": [8],
            "discriminator_hidden": [6, 4]}
    return from_dict(JFSEConfig, {**tiny, **overrides})


def _batch(n=9, seed=0):
    return paired_batch(n, seed=seed)


def _compiled(config, spec=SPEC):
    return compile_players(JFSE(config, spec), learning_rate=1e-3)


def test_encoders_are_the_regressors_into_the_class_embedding_space():
    model = _compiled(_config())
    out = model(_batch())
    assert out["image"].shape == (9, 5) and out["text"].shape == (9, 5)  # s = class-embedding dimension
    assert np.all(out["image"].numpy() >= 0)  # ReLU after every regressor layer [PAPER]
    regressed = model.regressors["image"](model.standardizers["image"](_batch()["image"]))
    np.testing.assert_allclose(out["image"].numpy(), regressed.numpy(), rtol=1e-6)


def test_class_embeddings_are_min_max_scaled_and_averaged_for_multi_label_items():
    scaled = scale_class_embeddings(CLASS_EMBEDDINGS, "minmax")
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    np.testing.assert_allclose(scaled.min(axis=0), 0.0)
    np.testing.assert_allclose(scaled.max(axis=0), 1.0)
    np.testing.assert_allclose(np.linalg.norm(scale_class_embeddings(CLASS_EMBEDDINGS, "l2"), axis=1), 1.0, rtol=1e-6)
    model = JFSE(_config(), SPEC)
    condition = model.class_condition(tf.constant([[1.0, 0, 0], [1.0, 0, 1.0]])).numpy()
    np.testing.assert_allclose(condition[0], scaled[0], rtol=1e-6)
    np.testing.assert_allclose(condition[1], (scaled[0] + scaled[2]) / 2, rtol=1e-6)


def test_players_own_their_submodels_and_the_critic_repeats_n_critic_times():
    model = _compiled(_config(n_critic=5))
    critic, generator, regressor, discriminator = model.players()
    assert [p.name for p in model.players()] == ["critic", "generator", "regressor", "discriminator"]
    assert critic.repeats == 5 and generator.repeats == regressor.repeats == discriminator.repeats == 1
    assert variable_ids(critic.variables) == variable_ids([*model.critics["image"].trainable_variables,
                                           *model.critics["text"].trainable_variables])
    assert variable_ids(generator.variables) == variable_ids([*model.generators["image"].trainable_variables,
                                              *model.generators["text"].trainable_variables])
    assert variable_ids(regressor.variables) == variable_ids([*model.regressors["image"].trainable_variables,
                                              *model.regressors["text"].trainable_variables])
    assert variable_ids(discriminator.variables) == variable_ids(model.modality_discriminator.trainable_variables)
    # That the four cover the model without overlap: tests/methods/test_contract.py.
    model.train_step(_batch())
    iterations = {name: int(opt.iterations) for name, opt in model.player_optimizers.items()}
    assert iterations == {"critic": 5, "generator": 1, "regressor": 1, "discriminator": 1}


def _make_critic_linear(critic, d_features, seed=1):
    """Weights for which every hidden unit stays in its linear region: D(x, c) = g.x + const, so the input gradient
    w.r.t. the features is g = W1[:d] @ w2 for every sample."""
    rng = np.random.default_rng(seed)
    first, last = [layer for layer in critic.layers if hasattr(layer, "kernel")]
    w1 = rng.normal(size=first.kernel.shape).astype(np.float32) * 0.1
    first.kernel.assign(w1)
    first.bias.assign(np.full(first.bias.shape, 100.0, np.float32))  # pre-activations >> 0: LeakyReLU = identity
    w2 = rng.normal(size=last.kernel.shape).astype(np.float32)
    last.kernel.assign(w2)
    return (w1[:d_features] @ w2)[:, 0]


def test_gradient_penalty_matches_a_critic_with_known_gradient_and_is_the_critics_alone():
    model = _compiled(_config(gp_weight=10.0))
    g_image = _make_critic_linear(model.critics["image"], 12)
    g_text = _make_critic_linear(model.critics["text"], 6, seed=2)
    batch = _batch()
    losses = model.player_losses("critic", batch, training=True)
    assert float(losses["image_gradient_penalty"]) == pytest.approx((np.linalg.norm(g_image) - 1) ** 2, rel=1e-4)
    assert float(losses["text_gradient_penalty"]) == pytest.approx((np.linalg.norm(g_text) - 1) ** 2, rel=1e-4)
    expected = sum(-float(losses[f"{m}_wasserstein"]) + 10.0 * float(losses[f"{m}_gradient_penalty"])
                   for m in ("image", "text"))
    assert float(losses["loss"]) == pytest.approx(expected, rel=1e-5)
    # The critic's loss does not reach the generators (synthetic features are constants for the critic) ...
    with tf.GradientTape() as tape:
        critic_total = model.player_losses("critic", batch, training=True)["loss"]
    assert all(g is None for g in tape.gradient(critic_total, model.players()[1].variables))
    # ... and the generator's objective has no penalty term: it is -E D(G) plus the weighted synthetic terms.
    generator = model.player_losses("generator", batch, training=True)
    cfg = model.config
    rebuilt = (generator["wasserstein"] + cfg.generator_cycle_weight * generator["cycle"]
               + cfg.generator_adversarial_weight * generator["adversarial"]
               + cfg.generator_alignment_weight * generator["alignment"])
    assert float(generator["loss"]) == pytest.approx(float(rebuilt), rel=1e-5)


def test_regressor_gets_the_reversed_modality_gradient():
    model = _compiled(_config(adversarial_weight=1.0, cycle_weight=0.0, alignment_weight=0.0,
                              synthetic_cycle_weight=0.0, synthetic_alignment_weight=0.0,
                              synthetic_adversarial_weight=0.0, regressor_output_activation="linear"))
    batch = _batch()
    variables = model.regressors["image"].trainable_variables
    model.gradient_reversal.strength.assign(1.0)
    with tf.GradientTape() as tape:
        reversed_loss = model.player_losses("regressor", batch, training=False)["loss"]
    reversed_grads = tape.gradient(reversed_loss, variables)
    with tf.GradientTape() as tape:
        image = model.regressors["image"](model.standardizers["image"](batch["image"]))
        text = model.regressors["text"](model.standardizers["text"](batch["text"]))
        plain = model._modality_loss(*model._modality_logits(image, text, False, reverse=False))
    plain_grads = tape.gradient(plain, variables)
    assert float(reversed_loss) == pytest.approx(float(plain), rel=1e-6)
    for r, p in zip(reversed_grads, plain_grads, strict=True):
        np.testing.assert_allclose(r.numpy(), -p.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("alignment", ["cmpm", "cmmd", "cmca"])
def test_every_alignment_scheme_trains(alignment):
    model = _compiled(_config(alignment=alignment, n_critic=2, synthetic_ratio=2, generator_alignment_weight=0.1))
    logs = model.train_step(_batch())
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert logs["regressor_alignment"] >= 0.0


def test_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="data.class_embeddings.source"):
        JFSE(_config(), DataSpec(modalities=("image", "text"), dims={"image": 12, "text": 6}, num_classes=3))
    with pytest.raises(ConfigError, match="exactly two modalities"):
        JFSE(_config(), DataSpec(modalities=("image",), dims={"image": 12}, num_classes=3,
                                 class_embeddings=CLASS_EMBEDDINGS))
    with pytest.raises(ConfigError, match="rows but the data has 4 classes"):
        JFSE(_config(), DataSpec(modalities=("image", "text"), dims={"image": 12, "text": 6}, num_classes=4,
                                 class_embeddings=CLASS_EMBEDDINGS))


def test_shipped_configs_load():
    synthetic = load_experiment("configs/jfse.yaml")
    wikipedia = load_experiment("configs/wikipedia/jfse.yaml")
    for config in (synthetic, wikipedia):
        assert config.method == "jfse" and config.model.gp_weight == 10.0 and config.model.n_critic == 5
        assert config.model.alignment == "cmpm"
        assert all(o.beta_1 == 0.5 for o in config.train.optimizers.values())
        assert set(config.train.optimizers) == {"critic", "generator", "regressor", "discriminator"}
    assert synthetic.data.class_embeddings.source == "dataset"
    for path in ("configs/jfse_zero_shot.yaml", "configs/wikipedia/jfse_zero_shot.yaml"):
        zero_shot = load_experiment(path)
        assert zero_shot.data.unseen_classes == 0.5 and zero_shot.model.synthesize_unseen
    assert load_experiment("configs/wikipedia/jfse_zero_shot.yaml").data.class_embeddings.source == "glove_6b_50d"


@pytest.mark.slow
def test_tiny_end_to_end_run_exports_the_regressors(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [
        f"run_dir={run_dir}", "train.epochs=1", "train.verbose=0", "train.batch_size=32", "train.jit_compile=false",
        "train.backup=false", "eval.extra_presets=[]",
        "data.synthetic.dims={image: 24, text: 12}", "data.synthetic.num_train=200", "data.synthetic.num_test=60",
        "data.synthetic.num_classes=4", "data.synthetic.class_embedding_dim=6",
        "model.noise_dim=4", "model.generator_hidden=16", "model.critic_hidden=16", "model.regressor_hidden=[16]",
        "model.discriminator_hidden=[8]", "model.n_critic=2",
    ]
    result = train(load_experiment("configs/jfse.yaml", overrides), config_path="configs/jfse.yaml")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["map_avg"] == pytest.approx(result.metrics["test"]["map_avg"])
    assert 0.0 <= metrics["test"]["map_avg"] <= 1.0 and "map_i2t" in metrics["val"]
    exported = tf.saved_model.load(str(run_dir / "export" / "image_encoder" / "1"))
    features = np.random.default_rng(0).normal(size=(5, 24)).astype(np.float32)
    embedding = exported.signatures["serving_default"](features=tf.constant(features))["embedding"].numpy()
    assert embedding.shape == (5, 6) and os.path.isdir(run_dir / "export" / "text_encoder" / "1")


def test_zero_shot_synthesises_unseen_classes_for_the_regressors_only_by_default():
    spec = DataSpec(modalities=("image", "text"), dims={"image": 12, "text": 6}, num_classes=3,
                    class_embeddings=CLASS_EMBEDDINGS, unseen_classes=(2,))
    model = _compiled(_config(unseen_per_step=4), spec)
    regressor = model.players()[2]
    assert {"unseen_cycle", "unseen_alignment", "unseen_adversarial"} <= set(regressor.losses)
    assert "unseen_cycle" not in model.players()[1].losses
    batch = {**_batch(), "labels": tf.constant(np.eye(3, dtype=np.float32)[np.arange(9) % 2])}  # seen classes only
    with tf.GradientTape() as tape:
        terms, _ = model._unseen_terms(training=True, to_generator=False)
    assert all(g is None for g in tape.gradient(terms["unseen_cycle"], model.players()[1].variables))
    logs = model.train_step(batch)
    assert np.isfinite(float(logs["regressor_unseen_alignment"]))
    assert _compiled(_config(unseen_per_step=4, unseen_gradient_to_generator=True), spec).players()[1].losses[-1] \
        == "unseen_adversarial"
    with pytest.raises(ConfigError, match="outside"):
        JFSE(_config(), DataSpec(modalities=("image", "text"), dims={"image": 12, "text": 6}, num_classes=3,
                                 class_embeddings=CLASS_EMBEDDINGS, unseen_classes=(5,)))
    # The ablation switch: same data spec, no synthesis, so no unseen-class term in any player.
    ablated = _compiled(_config(unseen_per_step=4, synthesize_unseen=False), spec)
    assert not any(loss.startswith("unseen_") for player in ablated.players() for loss in player.losses)

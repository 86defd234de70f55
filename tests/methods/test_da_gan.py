"""DA-GAN: retrieval-time encoders use only the query's features, player ownership, grouping through fit, attention
wiring, generator signs, the sequence text path, config errors, and one tiny run of configs/da_gan.yaml."""

import json
import os

import h5py
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import ROOT, compile_players, paired_batch, run_in_process, tensorboard_tags, variable_ids
from tf_xmr.config import from_dict
from tf_xmr.data.grouping import group_key
from tf_xmr.errors import ConfigError
from tf_xmr.experiment import load_experiment
from tf_xmr.methods.base import DataSpec
from tf_xmr.methods.da_gan import DAGAN, DAGANConfig

SPEC = DataSpec(modalities=("image", "text"), dims={"image": 16, "text": 6}, num_classes=3)
TINY = {"feature_dim": 16, "common_dim": 8, "encoder_hidden": 8, "decoder_hidden": 8, "inter_discriminator_hidden": 4,
        "intra_positions": 4, "inter_positions": 2, "group_size": 2}


def _config(**overrides):
    return from_dict(DAGANConfig, {**TINY, **overrides})


def _batch(n=12, seed=0, groups=True):
    batch = paired_batch(n, seed=seed, image_dim=16)
    if groups:
        rng = np.random.default_rng(seed + 1)
        batch[group_key("image")] = tf.constant(rng.normal(size=(n, 2, 16)).astype(np.float32))
        batch[group_key("text")] = tf.constant(rng.normal(size=(n, 2, 6)).astype(np.float32))
    return batch


def _compiled(config, spec=SPEC, run_eagerly=False):
    # Eager fits keep these seconds-long tests free of graph tracing; the CLI test below runs the compiled step.
    return compile_players(DAGAN(config, spec), run_eagerly=run_eagerly)


def _train_prototypes(model, steps=3):
    for _ in range(steps):
        model.player_losses("generator", _batch(), training=True)


@pytest.mark.parametrize("intra,inter", [("prototype_soft", "none"), ("prototype_nearest", "prototype_soft"),
                                         ("self", "self")])
def test_retrieval_encoders_use_only_the_query_features(intra, inter):
    model = _compiled(_config(retrieval_intra_reference=intra, retrieval_inter_reference=inter))
    _train_prototypes(model)
    batch = _batch()
    for m in ("image", "text"):
        whole = model.encoders[m](batch[m]).numpy()
        assert whole.shape == (12, 8)
        # One query alone embeds exactly as inside a batch: no label, partner or other item is used.
        alone = np.concatenate([model.encoders[m](batch[m][i:i + 1]).numpy() for i in range(12)])
        np.testing.assert_allclose(alone, whole, rtol=1e-5, atol=1e-5)


def test_retrieval_form_differs_from_training_form_only_through_the_references():
    model = _compiled(_config(retrieval_intra_reference="self", use_inter_attention=False))
    batch = _batch(groups=False)
    # Without groups the training form uses the item itself as reference: the same as the "self" retrieval encoder.
    trained = model.training_form(batch)["common"]
    for m in ("image", "text"):
        np.testing.assert_allclose(model.encoders[m](batch[m]).numpy(), trained[m].numpy(), rtol=1e-5, atol=1e-6)
    grouped = model.training_form(_batch())["common"]
    assert not np.allclose(grouped["image"].numpy(), trained["image"].numpy())


def test_attention_switches_and_inter_attention_uses_the_partner():
    both = _compiled(_config())
    batch = _batch()
    out = both.training_form(batch)
    swapped = dict(batch, text=tf.reverse(batch["text"], axis=[0]))
    out2 = both.training_form(swapped)
    # F_I does not see the text; F'_I does (inter-attention with the paired item).
    np.testing.assert_allclose(out["common"]["image"].numpy(), out2["common"]["image"].numpy(), atol=1e-6)
    assert not np.allclose(out["attention_common"]["image"].numpy(), out2["attention_common"]["image"].numpy())

    plain = _compiled(_config(use_intra_attention=False, use_inter_attention=False))
    assert not plain.intra and not plain.inter and not plain.needs_groups()
    out = plain.training_form(batch)
    np.testing.assert_allclose(out["attended"]["image"].numpy(), out["zeta"]["image"].numpy())
    np.testing.assert_allclose(out["attention_common"]["text"].numpy(), out["common"]["text"].numpy())
    # The group changes zeta' only when intra-attention is on.
    other_groups = dict(batch, image_group=batch["image_group"] * -3.0)
    np.testing.assert_allclose(plain.training_form(other_groups)["common"]["image"].numpy(),
                               out["common"]["image"].numpy())
    assert not np.allclose(both.training_form(other_groups)["attended"]["image"].numpy(),
                           both.training_form(batch)["attended"]["image"].numpy())


def test_players_own_their_submodels_and_the_second_encoder_layer_is_shared():
    model = _compiled(_config())
    generator, discriminator = model.players()
    # Disjoint players that cover every trainable variable, each listed once: tests/methods/test_contract.py.
    gen, disc = variable_ids(generator.variables), variable_ids(discriminator.variables)
    expected_disc = [v for m in ("image", "text") for d in (model.intra_discriminators[m],
                                                            model.inter_discriminators[m])
                     for v in d.trainable_variables]
    assert disc == variable_ids(expected_disc)
    assert variable_ids(model.shared_layer.trainable_variables) <= gen
    for m in ("image", "text"):
        for part in (model.feature_nets[m], model.intra[m], model.inter[m], model.first_layers[m], model.decoders[m],
                     model.classifiers[m]):
            assert variable_ids(part.trainable_variables) <= gen
        # The encoders hold the same shared layer object, not a copy.
        assert model.encoders[m].shared_layer is model.shared_layer
    # Class prototypes are weights (checkpointed, exported) but nobody's gradient target.
    assert not variable_ids([model.zeta_prototypes["image"].prototypes]) & (gen | disc)


def test_cosine_classifier_sees_only_the_direction_of_the_common_representation():
    """model.classifier_scale = s: D_S logits are s cos(F', W_j) (no bias), the generator player trains W, and the
    semantic loss is the same for F' and any positive multiple of it; null keeps the Dense layer with bias."""
    model = _compiled(_config(classifier_scale=10.0, shared_classifier=True))
    head = model.classifiers["image"]
    assert head is model.classifiers["text"]
    common = tf.constant(np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32))
    logits = head(common).numpy()
    weights = head.kernel.numpy() / np.linalg.norm(head.kernel.numpy(), axis=0)
    expected = 10.0 * (common.numpy() / np.linalg.norm(common.numpy(), axis=1, keepdims=True)) @ weights
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head(3.0 * common).numpy(), logits, rtol=1e-5, atol=1e-6)
    generator, _ = model.players()
    assert variable_ids(head.trainable_variables) <= variable_ids(generator.variables)
    assert len(head.trainable_variables) == 1   # the class weights; no bias
    plain = _compiled(_config())
    assert {v.name for v in plain.classifiers["image"].trainable_variables} == {"kernel", "bias"}


def test_generator_signs_and_discriminator_pairings():
    batch = _batch()
    fixed = _compiled(_config())
    literal = _compiled(_config(generator_loss="literal"))
    literal.set_weights(fixed.get_weights())
    a = fixed.player_losses("generator", batch, training=False)
    b = literal.player_losses("generator", batch, training=False)
    # Eqs. 30-31 as printed descend on log D(fake) = -BCE(D(fake), 1): exactly the negated non-saturating terms.
    for key in ("gan1_image", "gan1_text", "gan2_image", "gan2_text"):
        assert float(a[key]) > 0
        np.testing.assert_allclose(float(b[key]), -float(a[key]), rtol=1e-5)
    # The image embedding is scored by the TEXT inter discriminator (D^_T), whose "real" is text.
    forward = fixed.training_form(batch)
    logits = fixed.inter_discriminators["text"](forward["attention_common"]["image"])
    expected = float(tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(tf.ones_like(logits), logits)))
    np.testing.assert_allclose(float(a["gan2_image"]), expected, rtol=1e-5)
    d = fixed.player_losses("discriminator", batch, training=False)
    for key in ("intra_image_accuracy", "inter_text_accuracy"):
        assert 0.0 <= float(d[key]) <= 1.0


def test_fit_draws_groups_in_the_pipeline_and_learns_prototypes():
    model = _compiled(_config(adversarial_warmup_steps=1), run_eagerly=True)
    batch = _batch(n=24, groups=False)
    ds = tf.data.Dataset.from_tensor_slices(batch).shuffle(24, seed=0).batch(8)
    grouped = model.grouped_dataset(ds, seed=1)
    element = next(iter(grouped))
    assert element[group_key("image")].shape == (8, 2, 16)
    history = model.fit(ds, epochs=2, verbose=0)
    assert np.isfinite(history.history["generator_loss"][-1])
    assert "discriminator_inter_image_accuracy" in history.history
    np.testing.assert_allclose(model.zeta_prototypes["image"].seen.numpy(), 1.0)
    assert int(model.schedule_step.numpy()) == 6

    # The upper bound embeds a split in the training-time form: true-class groups from the pool split, F' with the
    # true partner; it is what training_form gives for those groups.
    from tf_xmr.data import Split
    from tf_xmr.methods.da_gan import upper_bound_embeddings

    split = Split({m: batch[m].numpy() for m in ("image", "text")},
                  {m: batch["labels"].numpy().argmax(1) for m in ("image", "text")})
    embeddings, labels = upper_bound_embeddings(model, split, split, 3, seed=0, batch_size=10)
    assert embeddings["image"].shape == (24, 8) and labels["text"].shape == (24, 3)
    again, _ = upper_bound_embeddings(model, split, split, 3, seed=0, batch_size=7)
    np.testing.assert_allclose(again["text"], embeddings["text"], rtol=1e-5, atol=1e-6)


def test_sequence_text_path_from_gensim_word_vectors(tmp_path):
    from gensim.models import Word2Vec

    from tf_xmr.data.word_vectors import embedding_matrix, load_keyed_vectors, texts_to_ids

    rng = np.random.default_rng(0)
    vocab = [["sun", "sky", "light"], ["sea", "wave", "salt"], ["rock", "stone", "hill"]]
    labels = rng.integers(0, 3, size=18)
    texts = [list(rng.choice(vocab[c], size=6)) for c in labels]
    w2v = Word2Vec(texts, vector_size=8, window=2, min_count=1, sg=1, seed=0, workers=1, epochs=5)
    path = str(tmp_path / "words.kv")
    w2v.wv.save(path)
    ids = texts_to_ids(texts + [["unknown", "sun"]], w2v.wv, length=7)
    assert ids.shape == (19, 7) and ids[-1, 0] == w2v.wv.key_to_index["sun"] + 1 and ids[-1, 1] == 0

    # The data layer reads the word vectors (tf_xmr.modeling.data_spec does this for a run); the model only gets the
    # matrix.
    spec = DataSpec(("image", "text"), {"image": 16, "text": 7}, 3,
                    word_embeddings=embedding_matrix(load_keyed_vectors(path)))
    model = _compiled(_config(text_encoder="sequence", word_vectors=path, lstm_units=3, text_filters=5), spec,
                      run_eagerly=True)
    embedding = model.feature_nets["text"].get_layer("word_embedding").embeddings.numpy()
    np.testing.assert_allclose(embedding[1 + w2v.wv.key_to_index["sea"]], w2v.wv["sea"], rtol=1e-6)
    np.testing.assert_allclose(embedding[0], 0.0)
    data = {"image": rng.normal(size=(18, 16)).astype(np.float32), "text": ids[:18],
            "labels": np.eye(3, dtype=np.float32)[labels]}
    model.fit(tf.data.Dataset.from_tensor_slices(data).batch(6), epochs=1, verbose=0)
    assert model.encoders["text"](ids[:4]).shape == (4, 8)
    assert model.training_form({**data, "text": ids[:18]})["zeta"]["text"].shape == (18, 16)

    with pytest.raises(ConfigError, match="word_vectors"):
        DAGAN(_config(text_encoder="sequence"), spec)
    with pytest.raises(ConfigError, match="carries no word embeddings"):
        DAGAN(_config(text_encoder="sequence", word_vectors=path, lstm_units=3, text_filters=5),
              DataSpec(("image", "text"), {"image": 16, "text": 7}, 3))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="intra_positions"):
        DAGAN(_config(intra_positions=5), SPEC)
    with pytest.raises(ConfigError, match="feature_adapter"):
        DAGAN(_config(feature_adapter="identity"), SPEC)  # text has 6 columns, feature_dim 16
    with pytest.raises(ConfigError, match="retrieval_intra_reference.*prototype_soft"):
        _config(retrieval_intra_reference="label")
    with pytest.raises(ConfigError, match="group_size"):
        _config(group_size=0)
    with pytest.raises(ConfigError, match="exactly two modalities"):
        DAGAN(_config(), DataSpec(("a", "b", "c"), {"a": 16, "b": 16, "c": 16}, 2))


def test_shipped_configs_load():
    for path in ("configs/da_gan.yaml", "configs/wikipedia/da_gan.yaml"):
        config = load_experiment(os.path.join(ROOT, path))
        assert config.method == "da_gan" and isinstance(config.model, DAGANConfig)
        assert set(config.train.optimizers) == {"generator", "discriminator"}
        assert config.model.retrieval_intra_reference.startswith("prototype")


@pytest.mark.slow
def test_train_cli_end_to_end(tmp_path, capsys, monkeypatch):
    # train.py's main() in this process (test_train_cli.py runs train.py itself in a fresh process): a new interpreter
    # would add its TensorFlow import and nothing specific to this method.
    run_dir = str(tmp_path / "da_gan")
    overrides = [
        f"run_dir={run_dir}", "train.epochs=2", "train.backup=false", "train.verbose=2", "train.batch_size=32",
        "train.jit_compile=false",
        "data.synthetic.dims={image: 32, text: 12}", "data.synthetic.num_train=200", "data.synthetic.num_test=60",
        "data.synthetic.num_classes=4", *[f"model.{k}={v}" for k, v in {**TINY, "feature_dim": 32}.items()],
    ]
    result = run_in_process(capsys, monkeypatch, "train.py", "--config", "configs/da_gan.yaml",
                            *[a for o in overrides for a in ("--set", o)])
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    assert metrics["method"] == "da_gan" and 0.0 <= metrics["test"]["map_avg"] <= 1.0
    tags = tensorboard_tags(run_dir)  # every loss term (the progress line shows the players' totals)
    for key in ("generator_semantic_image", "generator_gan2_text", "discriminator_intra_image_accuracy"):
        assert key in tags, (key, sorted(tags))
    # The trained class prototypes are in the selected checkpoint (they are weights, not fit-time state).
    with h5py.File(os.path.join(run_dir, "checkpoints", "best.weights.h5"), "r") as handle:
        arrays = []
        handle.visititems(lambda name, item: arrays.append((name, item[()])) if isinstance(item, h5py.Dataset)
                          else None)
    prototypes = [array for name, array in arrays if "prototype" in name]
    assert prototypes and all(np.isfinite(p).all() for p in prototypes)
    assert any(np.abs(p).sum() > 0 for p in prototypes)
    # Export round trips of the encoders (prototypes baked in): tests/methods/test_contract.py.

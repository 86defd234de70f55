"""SDML: the fixed projection P, the DSAE and Eq. 1, independent per-modality training, adding a modality."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import run_in_process, tiny_overrides
from tf_xmr import modeling
from tf_xmr import run_dir as layout
from tf_xmr.config import from_dict
from tf_xmr.errors import ConfigError
from tf_xmr.experiment import load_experiment
from tf_xmr.files import file_sha256, tree_hashes
from tf_xmr.methods.base import DataSpec
from tf_xmr.methods.sdml import DSAE, SDML, SDMLConfig, generate_projection, mean_row_distance
from tf_xmr.training import independent
from tf_xmr.training.pipeline import train

FIVE = "{image: 24, text: 20, audio: 8, 3d: 24, video: 12}"
SIX = "{image: 24, text: 20, audio: 8, 3d: 24, video: 12, sketch: 10}"


def tiny(run_dir, dims=FIVE, extra=()):
    """configs/sdml_5modal.yaml shrunk to a seconds-long run (unpaired: audio, 3d and video keep fewer items)."""
    return [
        f"run_dir={run_dir}",
        "train.epochs=2",
        "train.verbose=0",
        "train.batch_size=20",
        "train.jit_compile=false",
        f"data.synthetic.dims={dims}",
        "data.synthetic.num_train=300",
        "data.synthetic.num_test=100",
        "data.synthetic.num_classes=4",
        "model.encoder_units=[16, 16]",
        "model.decoder_units=[16, 16]",
        "model.common_dim=8",
        *extra,
    ]


def _cfg(**overrides):
    base = {"encoder_units": [10], "decoder_units": [10], "common_dim": 6}
    return from_dict(SDMLConfig, {**base, **overrides})


SPEC = DataSpec(modalities=("image", "text"), dims={"image": 12, "text": 5}, num_classes=3)


def test_projection_has_orthonormal_columns_and_comes_from_the_seed():
    p = generate_projection(512, 20, seed=3)
    assert p.shape == (512, 20) and p.dtype == np.float32
    np.testing.assert_allclose(p.T @ p, np.eye(20), atol=1e-5)
    np.testing.assert_array_equal(p, generate_projection(512, 20, seed=3))
    assert not np.allclose(p, generate_projection(512, 20, seed=4))
    with pytest.raises(ConfigError, match="num_classes <= model.common_dim"):
        generate_projection(4, 5, seed=0)


def test_dsae_architecture_matches_the_papers_tables():
    config = SDMLConfig()  # paper / code defaults: d_i -> 1024 -> 1024 -> 512 -> 1024 -> 1024 -> d_i
    spec = DataSpec(("text",), {"text": 300}, 10)
    net = DSAE(config, spec, "text", generate_projection(512, 10, 0))
    net.build_for_training()
    encoder_params = sum(int(np.prod(v.shape)) for v in net.encoder_tower.trainable_variables)
    decoder_params = sum(int(np.prod(v.shape)) for v in net.decoder.trainable_variables)
    # specs/sdml.md section 5, 300-d doc2vec text: 1,882,624 + 1,882,412 = 3,765,036.
    assert (encoder_params, decoder_params) == (1_882_624, 1_882_412)
    assert [layer.activation.__name__ for layer in net.encoder_tower.layers] == ["relu", "relu", "linear"]
    assert [layer.activation.__name__ for layer in net.decoder.layers] == ["relu", "relu", "linear"]
    out = net({"text": tf.random.normal((4, 300))})
    np.testing.assert_allclose(np.linalg.norm(out["code"], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["reconstruction"], axis=1), 1.0, rtol=1e-5)
    # P is a constant, never a variable.
    assert all("projection" not in v.path for v in net.variables)


def test_eq1_loss_matches_a_hand_computation():
    p = generate_projection(6, 3, seed=1)
    net = DSAE(_cfg(lambda_rec=0.3), SPEC, "image", p)
    net.build_for_training()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 12)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]]
    y[4] = 0.0  # an unlabelled row: excluded from J_s [CODE]
    batch = {"image": tf.constant(x), "labels": tf.constant(y)}
    outputs = net(batch)
    terms = net.loss_terms(batch, outputs)
    h, xr = outputs["code"].numpy(), outputs["reconstruction"].numpy()
    j_r = np.mean(np.linalg.norm(xr - x, axis=1))
    j_s = np.mean(np.linalg.norm(h[:4] @ p - y[:4], axis=1))
    np.testing.assert_allclose(float(terms["reconstruction"]), j_r, rtol=1e-5)
    np.testing.assert_allclose(float(terms["supervised"]), j_s, rtol=1e-5)
    np.testing.assert_allclose(float(terms["loss"]), 0.3 * j_r + 0.7 * j_s, rtol=1e-5)
    # The checkpoint criterion: unweighted supervised distance over every row.
    val = net.validation_loss(tf.data.Dataset.from_tensor_slices(batch).batch(2))
    np.testing.assert_allclose(val, np.mean(np.linalg.norm(h @ p - y, axis=1)), rtol=1e-5)
    np.testing.assert_allclose(float(mean_row_distance(tf.zeros((2, 3)), tf.ones((2, 3)))), np.sqrt(3), rtol=1e-6)


def test_fit_lowers_the_supervised_term():
    p = generate_projection(6, 3, seed=1)
    net = SDML.modality_model(_cfg(), SPEC, "text", {"projection": p})
    net.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
    rng = np.random.default_rng(0)
    data = {"text": rng.normal(size=(40, 5)).astype(np.float32),
            "labels": np.eye(3, dtype=np.float32)[np.arange(40) % 3]}
    history = net.fit(tf.data.Dataset.from_tensor_slices(data).batch(10), epochs=3, verbose=0)
    assert {"loss", "reconstruction", "supervised"} <= set(history.history)
    assert history.history["supervised"][-1] < history.history["supervised"][0]
    # That a step moves this network only and never P (the shared state): tests/methods/test_contract.py.


@pytest.mark.slow
def test_five_modalities_then_a_sixth_leaves_the_others_untouched(tmp_path):
    run_dir = str(tmp_path / "run")
    # The data already holds six modalities; this first run trains five of them (in 2 worker processes).
    first = train(load_experiment("configs/sdml_5modal.yaml", tiny(run_dir, SIX, [
        "model.train_modalities=[image, text, audio, 3d, video]", "train.parallel_modalities=true",
        "train.max_workers=2",
    ])))
    five = ("image", "text", "audio", "3d", "video")
    pairs = [f"map_{q}2{t}" for q in five for t in five if q != t]
    assert len(pairs) == 20
    assert set(pairs) | {"map_avg"} == {k for k in first.metrics["test"] if k.startswith("map_")}
    assert first.metrics["test"]["map_avg"] == pytest.approx(np.mean([first.metrics["test"][k] for k in pairs]))
    assert first.metrics["training"]["mode"] == "parallel"
    counts = first.metrics["data"]["splits"]["train"]["counts"]
    assert counts["audio"] < counts["image"]  # unpaired, XMedia-like
    assert set(first.metrics["val"]["best_epoch"]) == set(five)

    # A worker's network equals the same modality trained in this process (seeded per network, not per run).
    config = load_experiment("configs/sdml_5modal.yaml", tiny(run_dir, SIX))
    feature_set = modeling.load_data(config)
    spec = modeling.data_spec(config, feature_set)
    state = layout.load_shared_state(run_dir)
    independent.train_modality(config, feature_set, spec, state, "audio", str(tmp_path / "audio_here"))
    here = SDML.modality_model(config.model, spec, "audio", state)
    here.load_weights(str(tmp_path / "audio_here" / "checkpoints" / "best.weights.h5"))
    worker = modeling.load_networks(config, spec, state, run_dir, ["audio"])["audio"]
    for a, b in zip(here.weights, worker.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)

    def hashes():
        return {m: (tree_hashes(layout.modality_dir(run_dir, m)),
                    tree_hashes(os.path.join(run_dir, "export", f"{m}_encoder"))) for m in five}

    before = hashes()
    p_before = file_sha256(os.path.join(run_dir, layout.SHARED_FILE))
    # The documented command (`train.py --config ... --set resume_from=RUN --set model.train_modalities=[NEW]`),
    # in-process to keep the suite fast; test_cli_bad_input_is_one_line_and_exit_2 covers the CLI itself.
    sets = tiny(run_dir, SIX, ["resume_from=" + run_dir, "model.train_modalities=[sketch]"])
    sets.remove(f"run_dir={run_dir}")
    train(load_experiment("configs/sdml_5modal.yaml", sets))
    assert hashes() == before
    assert file_sha256(os.path.join(run_dir, layout.SHARED_FILE)) == p_before
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        second = json.load(handle)
    six = (*five, "sketch")
    assert len([k for k in second["test"] if k.startswith("map_") and k != "map_avg"]) == 30
    for key in pairs:
        assert second["test"][key] == pytest.approx(first.metrics["test"][key], abs=1e-6), key
        assert second["val"][key] == pytest.approx(first.metrics["val"][key], abs=1e-6), key
    assert second["training"]["trained_now"] == ["sketch"] and second["modalities"] == list(six)
    assert os.path.exists(os.path.join(run_dir, "export", "sketch_encoder", "1", "saved_model.pb"))
    assert len(os.listdir(os.path.join(run_dir, "history"))) == 3

    # Re-scoring from the exports (evaluate.py's path) gives the numbers training wrote.
    from tf_xmr.evaluation import evaluate_run

    rescored = evaluate_run(run_dir)["test"]
    assert rescored["map_sketch2image"] == pytest.approx(second["test"]["map_sketch2image"], abs=1e-5)

    # Bad extensions: one-line errors, and nothing in the run changes.
    everything = tree_hashes(run_dir)
    bad = {
        "already trained": tiny("", SIX, ["resume_from=" + run_dir, "model.train_modalities=[audio]", "run_dir=null"]),
        "lacks": tiny("", SIX, ["resume_from=" + run_dir, "model.train_modalities=[smell]", "run_dir=null"]),
        "classes but the stored": tiny("", SIX[:-1] + ", touch: 6}", [
            "resume_from=" + run_dir, "model.train_modalities=[touch]", "data.synthetic.num_classes=5",
            "run_dir=null"]),
        "is not a finished 'sdml' run": tiny("", SIX, [f"resume_from={tmp_path / 'audio_here'}", "run_dir=null"]),
    }
    for message, overrides in bad.items():
        with pytest.raises(ConfigError, match=message):
            train(load_experiment("configs/sdml_5modal.yaml", overrides))
    assert tree_hashes(run_dir) == everything


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    # train.py's main() in this process; train.py's one-line errors in a fresh process: test_train_cli.py.
    run_dir = tmp_path / "run"
    sets = tiny(str(run_dir), extra=["model.train_modalities=[image, smell]"])
    result = run_in_process(capsys, monkeypatch, "train.py", "--config", "configs/sdml_5modal.yaml",
                            *[a for s in sets for a in ("--set", s)])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: config key 'model.train_modalities' names modality 'smell'")
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()


def test_resume_from_is_refused_for_jointly_trained_methods(tmp_path):
    config = load_experiment("configs/acmr.yaml", [*tiny_overrides(str(tmp_path / "run")), f"resume_from={tmp_path}"])
    with pytest.raises(ConfigError, match="resume_from is for methods whose modality networks train independently"):
        train(config)


def test_joint_baseline_updates_every_network_in_one_step():
    p = generate_projection(6, 3, seed=1)
    model = SDML(_cfg(), SPEC, shared={"projection": p})
    model.build_for_training()
    model.compile({m: tf.keras.optimizers.Adam(1e-2) for m in SPEC.modalities})
    rng = np.random.default_rng(0)
    data = {"image": rng.normal(size=(20, 12)).astype(np.float32), "text": rng.normal(size=(20, 5)).astype(np.float32),
            "labels": np.eye(3, dtype=np.float32)[np.arange(20) % 3]}
    history = model.fit(tf.data.Dataset.from_tensor_slices(data).batch(10), epochs=1, verbose=0)
    assert set(history.history) == {"image_loss", "text_loss"}
    assert all(int(opt.iterations.numpy()) == 2 for opt in model.modality_optimizers.values())

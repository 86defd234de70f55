"""Retriever SavedModels: the evaluator's ranking in one graph, galleries that grow, the CLI, the Python API and the TF
Serving contract, on one tiny trained run (module fixture, trained in this process).

The ranking checks compare with ``tf_xmr.metrics.similarity`` and a stable argsort of it, the code path the
evaluator's orderings are tested against (tests/retrieval/ranking.py says what may differ: nothing here, where the
embeddings are a few dimensions wide), and recompute the run's test mAP from the retriever's own whole ranking.
"""

import json
import os
import shutil

import numpy as np
import pytest

from tests.conftest import run_in_process, tiny_overrides
from tests.retrieval.ranking import map_tolerance, ranking_differences
from tf_xmr.errors import ConfigError, DataError, ModelInputError
from tf_xmr.export import load_exported, versions
from tf_xmr.metrics.retrieval import mean_average_precision, similarity
from tf_xmr.retrieval import Retriever, build_retriever, retriever_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from tf_xmr.commands.train import main

    path = str(tmp_path_factory.mktemp("retrieval") / "acmr")
    overrides = tiny_overrides(path, epochs=2, extra=["train.jit_compile=false"])
    assert main(["--config", "configs/acmr.yaml", *[a for o in overrides for a in ("--set", o)]]) in (0, None)
    return path


@pytest.fixture(scope="module")
def test_split(run_dir):
    from tf_xmr.modeling import prepare_data
    from tf_xmr.run_dir import load_run_config

    config, feature_set = prepare_data(load_run_config(run_dir))
    return feature_set.splits["test"], feature_set


@pytest.fixture(scope="module")
def whole_rankings(run_dir, test_split):
    """Both directions built with k = the whole test gallery (one version each)."""
    split, _ = test_split
    n = split.num_examples()
    return {(q, t): build_retriever(run_dir, target=t, k=n) for q, t in (("text", "image"), ("image", "text"))}


def _multi_hot(labels, c):
    return np.eye(c, dtype=np.float32)[labels]


def test_top_k_is_the_evaluators_ranking_and_reproduces_the_test_map(run_dir, test_split, whole_rankings):
    split, feature_set = test_split
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        reported = json.load(handle)["test"]
    embedded = {m: np.asarray(load_exported(run_dir, m)(split.features[m])) for m in ("image", "text")}
    for (query, target), path in whole_rankings.items():
        retriever = Retriever.load(path)
        assert retriever.size == split.num_examples() and retriever.k == retriever.size
        indices, scores = retriever.search_indices(split.features[query])
        expected_scores = similarity(embedded[query], embedded[target], "cosine")
        differences = ranking_differences(indices, expected_scores)  # rounding swaps only (0 measured here)
        assert differences < 0.01 * indices.size, differences
        np.testing.assert_allclose(scores, np.take_along_axis(expected_scores, indices, 1), atol=1e-5)
        # The mAP of the retriever's own ranking (its scores turned back into a full ranking) is metrics.json's.
        ranked_scores = np.zeros_like(scores)
        np.put_along_axis(ranked_scores, indices, -np.arange(indices.shape[1], dtype=np.float32)[None, :], 1)
        labels = _multi_hot(split.labels[query], feature_set.num_classes)
        recomputed = mean_average_precision(np.eye(len(labels), dtype=np.float32), ranked_scores.T, labels, labels,
                                            distance="inner")
        direction = "i2t" if query == "image" else "t2i"
        assert float(recomputed) == pytest.approx(reported[f"map_{direction}"],
                                                  abs=map_tolerance(differences, len(indices)))


def test_keys_classes_and_metadata(run_dir, whole_rankings, test_split):
    split, feature_set = test_split
    retriever = Retriever.load(retriever_dir(run_dir, "text", "image"))
    np.testing.assert_array_equal(retriever.keys, split.keys("image", "test"))
    assert retriever.keys[0] == "test/0"  # the synthetic benchmark has no item ids: <split>/<row>
    np.testing.assert_array_equal(retriever.classes, np.asarray(feature_set.class_names)[split.labels["image"]])
    meta = retriever.metadata
    assert meta["kind"] == "retriever" and meta["distance"] == "cosine" and meta["backend"] == "exact"
    assert meta["gallery"]["size"] == split.num_examples()
    assert meta["outputs"]["keys"] == {"dtype": "string", "shape": [None, retriever.k]}
    keys, scores = retriever.search(split.features["text"][:3], k=4)
    assert keys.shape == (3, 4) and keys.dtype.kind == "U" and scores.dtype == np.float32
    assert (np.diff(scores, axis=1) <= 0).all()


@pytest.mark.parametrize("distance", ["cosine", "inner", "euclidean"])
def test_every_distance_ranks_as_the_evaluator_with_ties_to_the_lower_index(distance):
    import keras

    from tf_xmr.retrieval.index import Gallery, GalleryItems, _retriever_module, embed_items

    rng = np.random.default_rng(3)
    keras.utils.set_random_seed(0)
    query_encoder = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    target_encoder = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])
    gallery_features = rng.normal(size=(40, 5)).astype(np.float32)
    gallery_features[[7, 21, 33]] = gallery_features[2]  # exact ties: identical rows score identically
    module, embed_target = _retriever_module(query_encoder, target_encoder, 6, 5, distance)
    items = GalleryItems(gallery_features, np.asarray([f"g{i}" for i in range(40)]), np.full(40, ""), "test")
    module.set_gallery(Gallery(embed_items(embed_target, items), items.keys, items.classes), k=40)
    queries = rng.normal(size=(9, 6)).astype(np.float32)
    out = module.serve(features=queries)
    expected_scores = similarity(np.asarray(query_encoder(queries)), np.asarray(target_encoder(gallery_features)),
                                 distance)
    expected = np.argsort(-expected_scores, axis=1, kind="stable")
    assert ranking_differences(out["indices"].numpy(), expected_scores) < 0.01 * expected_scores.size
    np.testing.assert_allclose(out["scores"].numpy(), np.take_along_axis(expected_scores, expected, 1), atol=1e-4)
    tied = [list(row).index(2) for row in out["indices"].numpy()]
    for row, at in zip(out["indices"].numpy(), tied, strict=True):
        assert list(row[at:at + 4]) == [2, 7, 21, 33]
    assert out["keys"].numpy()[0, 0].decode() == f"g{expected[0, 0]}"


def test_append_extends_the_gallery_without_moving_old_items(run_dir, test_split, tmp_path):
    split, _ = test_split
    base = build_retriever(run_dir, target="image", k=5)
    version = int(os.path.basename(base))
    new = np.random.default_rng(0).normal(size=(3, split.features["image"].shape[1])).astype(np.float32)
    np.savez(tmp_path / "new.npz", image=new)
    (tmp_path / "new.txt").write_text("new-a\nnew-b\nnew-c\n")
    grown = build_retriever(run_dir, target="image", append=str(tmp_path / "new.npz"), keys=str(tmp_path / "new.txt"))
    assert int(os.path.basename(grown)) == version + 1
    before, after = Retriever.load(base), Retriever.load(grown)
    assert after.size == before.size + 3 and after.k == 5
    np.testing.assert_array_equal(after.keys[: before.size], before.keys)
    assert list(after.keys[-3:]) == ["new-a", "new-b", "new-c"] and list(after.classes[-3:]) == ["", "", ""]
    # The same gallery built in one go ranks identically.
    everything = np.concatenate([split.features["image"], new])
    np.savez(tmp_path / "all.npz", image=everything)
    (tmp_path / "all.txt").write_text("\n".join(list(before.keys) + ["new-a", "new-b", "new-c"]) + "\n")
    fresh = Retriever.load(build_retriever(run_dir, target="image", gallery_features=str(tmp_path / "all.npz"),
                                           keys=str(tmp_path / "all.txt"), k=5))
    queries = split.features["text"][:20]
    np.testing.assert_array_equal(after.search(queries)[0], fresh.search(queries)[0])
    # Keys already in the gallery are refused, and nothing is written.
    count = len(versions(retriever_dir(run_dir, "text", "image")))
    with pytest.raises(DataError, match="already in the gallery: new-a"):
        build_retriever(run_dir, target="image", append=str(tmp_path / "new.npz"), keys=str(tmp_path / "new.txt"))
    assert len(versions(retriever_dir(run_dir, "text", "image"))) == count


def test_append_refuses_a_gallery_embedded_by_other_encoders(run_dir, tmp_path):
    """A retriever folder copied from another run (or left from before a retraining) carries other encoders'
    fingerprints: extending it would mix two embedding spaces in one index."""
    from tf_xmr.export.saved_model import metadata_path

    latest = build_retriever(run_dir, target="text")
    with open(metadata_path(latest)) as handle:
        meta = json.load(handle)
    meta["encoder_fingerprints"]["target"] = "0" * 64
    with open(metadata_path(latest), "w") as handle:
        json.dump(meta, handle)
    np.savez(tmp_path / "t.npz", text=np.zeros((1, 24), np.float32))
    (tmp_path / "t.txt").write_text("x\n")
    try:
        with pytest.raises(ModelInputError, match="embedded by other encoders"):
            build_retriever(run_dir, target="text", append=str(tmp_path / "t.npz"), keys=str(tmp_path / "t.txt"))
    finally:
        shutil.rmtree(latest)


@pytest.mark.parametrize("case, message", [
    ("dims", "are 7-d but the run's image encoder takes 48-d"),
    ("keys_count", "has 2 keys but"),
    ("missing", "gallery features file not found"),
    ("nan", "row 1 contains NaN or Inf"),
    ("no_keys", "--keys K.txt is required"),
    ("target", "--target 'audio' is not a modality of this run"),
    ("k", "--k must be at least 1"),
])
def test_bad_gallery_input_is_one_line_exit_2_and_nothing_written(run_dir, tmp_path, capsys, monkeypatch, case,
                                                                   message):
    model_dir = retriever_dir(run_dir, "text", "image")
    before = sorted(os.listdir(model_dir)) if os.path.isdir(model_dir) else []
    features = np.zeros((3, 7 if case == "dims" else 48), np.float32)
    if case == "nan":
        features[1, 0] = np.nan
    np.savez(tmp_path / "g.npz", image=features)
    (tmp_path / "g.txt").write_text("a\nb\n" if case == "keys_count" else "a\nb\nc\n")
    args = ["build", "--run-dir", run_dir, "--target", "audio" if case == "target" else "image"]
    if case != "k":
        args += ["--gallery-features", str(tmp_path / ("nope.npz" if case == "missing" else "g.npz"))]
    if case not in ("no_keys", "k"):
        args += ["--keys", str(tmp_path / "g.txt")]
    if case == "k":
        args += ["--k", "0"]
    result = run_in_process(capsys, monkeypatch, "retrieval", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    after = sorted(os.listdir(model_dir)) if os.path.isdir(model_dir) else []
    assert after == before  # no new version, no temporary folder


def test_the_api_refuses_bad_queries(run_dir, whole_rankings, test_split):
    retriever = Retriever.load(retriever_dir(run_dir, "image", "text"), version=1)
    split, _ = test_split
    with pytest.raises(ModelInputError, match=r"takes features of shape \(batch, 48\), got \(2, 5\)"):
        retriever.search(np.zeros((2, 5), np.float32))
    bad = split.features["image"][:2].copy()
    bad[1, 3] = np.inf
    with pytest.raises(ModelInputError, match="features contain NaN or Inf"):
        retriever.search(bad)
    with pytest.raises(ModelInputError, match="empty batch"):
        retriever.search(np.zeros((0, 48), np.float32))
    with pytest.raises(ModelInputError, match="built with k=90; rebuild it with --k 91"):
        retriever.search(split.features["image"][:1], k=91)
    with pytest.raises(ModelInputError, match="is not a tf_xmr retriever"):
        Retriever.load(os.path.join(run_dir, "export", "image_encoder", "1"))
    one_row = retriever.search(split.features["image"][0], k=3)[0]
    assert one_row.shape == (1, 3)


def test_from_tf_xmr_import_retriever():
    import tf_xmr

    assert tf_xmr.Retriever is Retriever


def test_retrieve_cli_table_json_and_query_key(run_dir, whole_rankings, test_split, tmp_path, capsys, monkeypatch):
    split, _ = test_split
    np.save(tmp_path / "q.npy", split.features["text"][:2])
    latest = Retriever.load(retriever_dir(run_dir, "text", "image"))
    table = run_in_process(capsys, monkeypatch, "retrieve", "--run-dir", run_dir, "--query", "text",
                           "--features", str(tmp_path / "q.npy"), "--k", "3")
    assert table.returncode == 0, table.stderr
    keys, scores = latest.search(split.features["text"][:2], k=3)
    rows = [line.split() for line in table.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[1] for r in rows] == list(keys.ravel())
    assert [float(r[3]) for r in rows] == pytest.approx(list(scores.ravel()), abs=1e-4)
    answer = run_in_process(capsys, monkeypatch, "retrieve", "--run-dir", run_dir, "--query", "text",
                            "--query-key", "test/5", "--json")
    assert answer.returncode == 0, answer.stderr
    parsed = json.loads(answer.stdout)
    assert parsed["target"] == "image" and parsed["queries"][0]["query"] == "test/5"
    expected = latest.search(split.features["text"][5:6])[0][0]
    assert [r["key"] for r in parsed["queries"][0]["results"]] == list(expected)
    missing = run_in_process(capsys, monkeypatch, "retrieve", "--run-dir", run_dir, "--query", "text",
                             "--query-key", "nope")
    assert missing.returncode == 2 and "no text item with key 'nope'" in missing.stderr


def test_retrieve_without_a_retriever_says_how_to_build_one(tmp_path, capsys, monkeypatch, run_dir):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("*_retriever"))
    np.save(tmp_path / "q.npy", np.zeros((1, 48), np.float32))
    result = run_in_process(capsys, monkeypatch, "retrieve", "--run-dir", str(copy), "--query", "image",
                            "--features", str(tmp_path / "q.npy"))
    assert result.returncode == 2
    assert "has no image2text_retriever; build one with python -m tf_xmr.retrieval build" in result.stderr


def test_models_config_names_every_encoder_and_retriever(run_dir, whole_rankings):
    from tf_xmr.export.serving import read_models_config

    config = read_models_config(os.path.join(run_dir, "export", "models.config"))
    names = [c.name for c in config.model_config_list.config]
    assert names == sorted(["image_encoder", "text_encoder", "image2text_retriever", "text2image_retriever"])
    for entry in config.model_config_list.config:
        assert versions(entry.base_path) and entry.model_platform == "tensorflow"


def test_tf_serving_grpc_rest_and_warmup_for_the_retriever(run_dir, whole_rankings, test_split):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from tf_xmr.export.serving import WARMUP_FILE, ServingError, predict, rest_predict

    split, _ = test_split
    path = whole_rankings["text", "image"]
    signature = tf.saved_model.load(path).signatures["serving_default"]
    queries = split.features["text"][:2]
    expected_keys, expected_scores = Retriever.load(path).search(queries)

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "text2image_retriever"
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(queries))
    response = predict_pb2.PredictResponse.FromString(predict(signature, request).SerializeToString())
    keys = np.char.decode(tf.make_ndarray(response.outputs["keys"]).astype(bytes), "utf-8")
    np.testing.assert_array_equal(keys, expected_keys)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]), expected_scores, atol=1e-6)

    rows = rest_predict(signature, json.dumps({"instances": queries.tolist()}))
    assert [row["keys"] for row in rows["predictions"]] == expected_keys.tolist()
    columns = rest_predict(signature, json.dumps({"inputs": {"features": queries.tolist()}}))
    assert columns["outputs"]["keys"] == expected_keys.tolist()
    for body, problem in [({"instances": [[0.0] * 5]}, "features"), ({"instances": []}, ""),
                          ({"inputs": {"features": [[float("nan")] * 24]}}, "NaN")]:
        answer = rest_predict(signature, json.dumps(body))
        assert set(answer) == {"error"} and problem in answer["error"], answer
    bad = predict_pb2.PredictRequest()
    bad.inputs["features"].CopyFrom(tf.make_tensor_proto(np.full((1, 24), np.inf, np.float32)))
    with pytest.raises(ServingError, match="NaN or Inf"):
        predict(signature, bad)

    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(os.path.join(path, "assets.extra", WARMUP_FILE))]
    assert len(logs) >= 1
    for log in logs:
        assert log.predict_log.request.model_spec.name == "text2image_retriever"
        predict(signature, log.predict_log.request)  # the server replays it at load: it must succeed


@pytest.mark.slow
def test_every_direction_of_an_sdml_run_with_three_unpaired_modalities(tmp_path):
    """SDML trains one network per modality (the run's independent encoders, unpaired splits): each of the 3 x 2
    directions gets a retriever whose whole ranking is the evaluator's and gives that direction's test mAP."""
    from tf_xmr.experiment import load_experiment
    from tf_xmr.modeling import prepare_data
    from tf_xmr.run_dir import load_run_config
    from tf_xmr.training.pipeline import train

    run_dir = str(tmp_path / "sdml")
    sets = [f"run_dir={run_dir}", "train.epochs=1", "train.verbose=0", "train.batch_size=20",
            "train.jit_compile=false", "data.synthetic.dims={image: 24, text: 20, audio: 8}",
            "data.synthetic.modality_fractions={audio: 0.3}", "data.synthetic.num_train=300",
            "data.synthetic.num_test=100", "data.synthetic.num_classes=4", "model.encoder_units=[16, 16]",
            "model.decoder_units=[16, 16]", "model.common_dim=8"]
    metrics = train(load_experiment("configs/sdml_5modal.yaml", sets)).metrics
    _, feature_set = prepare_data(load_run_config(run_dir))
    test = feature_set.splits["test"]
    assert not test.paired
    embedded = {m: np.asarray(load_exported(run_dir, m)(test.features[m])) for m in feature_set.modalities}
    for query in feature_set.modalities:
        for target in (m for m in feature_set.modalities if m != query):
            retriever = Retriever.load(build_retriever(run_dir, query=query, target=target,
                                                       k=test.num_examples(target)))
            assert retriever.query == query and retriever.size == test.num_examples(target)
            indices, scores = retriever.search_indices(test.features[query])
            differences = ranking_differences(indices, similarity(embedded[query], embedded[target], "cosine"))
            assert differences < 0.01 * indices.size, differences
            ranked = np.zeros_like(scores)
            np.put_along_axis(ranked, indices, -np.arange(indices.shape[1], dtype=np.float32)[None, :], 1)
            c = feature_set.num_classes
            recomputed = mean_average_precision(np.eye(len(indices), dtype=np.float32), ranked.T,
                                                _multi_hot(test.labels[query], c), _multi_hot(test.labels[target], c),
                                                distance="inner")
            assert float(recomputed) == pytest.approx(metrics["test"][f"map_{query}2{target}"],
                                                      abs=map_tolerance(differences, len(indices)))
    with pytest.raises(ConfigError, match="say which one queries with --query"):
        build_retriever(run_dir, target="audio")


def test_an_approximate_backend_behind_the_same_api(run_dir, test_split, tmp_path):
    """build --backend faiss-hnsw stores the index beside the exact graph; Retriever.load uses it (exact=True does
    not), answers in the same score convention, and --append adds the new rows to it."""
    pytest.importorskip("faiss")
    split, _ = test_split
    path = build_retriever(run_dir, target="image", k=10, backend="faiss-hnsw")
    approximate, exact = Retriever.load(path), Retriever.load(path, exact=True)
    assert approximate.backend == "faiss-hnsw" and exact.backend == "exact"
    assert os.path.isdir(os.path.join(path, "assets.extra", "ann"))
    queries = split.features["text"]
    (a_keys, a_scores), (e_keys, e_scores) = approximate.search(queries), exact.search(queries)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(a_keys, e_keys, strict=True)])
    assert recall >= 0.95, recall  # 90 items: HNSW at efSearch 96 visits them all (measured 1.0)
    np.testing.assert_allclose(a_scores, e_scores, atol=1e-5)
    assert approximate.search(queries[:2], k=20)[0].shape == (2, 20)  # the index answers any k
    new = np.random.default_rng(1).normal(size=(2, split.features["image"].shape[1])).astype(np.float32)
    np.savez(tmp_path / "new.npz", image=new)
    (tmp_path / "new.txt").write_text("ann-a\nann-b\n")
    grown = Retriever.load(build_retriever(run_dir, target="image", append=str(tmp_path / "new.npz"),
                                           keys=str(tmp_path / "new.txt"), backend="faiss-hnsw"))
    assert grown.backend == "faiss-hnsw" and grown.size == approximate.size + 2
    np.testing.assert_array_equal(grown.search(queries)[0], Retriever.load(grown.path, exact=True).search(queries)[0])

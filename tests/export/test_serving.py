"""The TF Serving contract, emulated with the tensorflow-serving-api protos (no model server installs here).

gRPC PredictRequest/PredictResponse, the REST row and columnar JSON forms, refused requests, the warmup file and the
run's models.config, on a small exported encoder and a tiny retriever-shaped module (string outputs).
"""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from tf_xmr.errors import ModelInputError
from tf_xmr.export import export_encoder
from tf_xmr.export.serving import (
    MODELS_CONFIG,
    WARMUP_FILE,
    ServingError,
    predict,
    read_models_config,
    rest_predict,
    warmup_requests,
    write_models_config,
    write_warmup_requests,
)

D_IN, D_OUT, K = 12, 5, 2
KEYS = [f"bild-{i}-ä" for i in range(5)]  # non-ASCII keys: string outputs must come back as UTF-8 text


class _Retriever(tf.Module):
    """The retriever contract (features -> keys, scores, indices), refusing empty batches and non-finite values."""

    def __init__(self):
        super().__init__()
        self.gallery = tf.Variable(np.random.default_rng(2).normal(size=(len(KEYS), 3)).astype(np.float32))
        self.keys = tf.constant(KEYS)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="features")])
    def serve(self, features):
        tf.debugging.assert_greater(tf.shape(features)[0], 0, message="empty batch of queries")
        features = tf.debugging.check_numerics(features, "non-finite query value")
        scores, indices = tf.math.top_k(tf.matmul(features, self.gallery, transpose_b=True), k=K)
        return {"keys": tf.gather(self.keys, indices), "scores": scores, "indices": tf.cast(indices, tf.int64)}


def _encoder():
    # Built here rather than imported from another test module, so the two files can change independently.
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((D_IN,)), keras.layers.Dense(7, activation="relu"), keras.layers.Dense(D_OUT)])


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory):
    return export_encoder(_encoder(), str(tmp_path_factory.mktemp("run") / "image_encoder"), input_dim=D_IN)


@pytest.fixture(scope="module")
def encoder(encoder_path):
    return tf.saved_model.load(encoder_path).signatures


@pytest.fixture(scope="module")
def retriever_path(tmp_path_factory):
    module = _Retriever()
    path = str(tmp_path_factory.mktemp("run") / "text2image_retriever" / "1")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


@pytest.fixture(scope="module")
def retriever(retriever_path):
    return tf.saved_model.load(retriever_path).signatures


def _version_copy(source, version_dir):
    """A copy of an exported version without the warmup file the export may already have written."""
    shutil.copytree(source, version_dir)
    warmup = os.path.join(version_dir, "assets.extra", WARMUP_FILE)
    if os.path.exists(warmup):
        os.remove(warmup)
    return version_dir


def _features(rows, dim, seed=1):
    return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


def _request(model_name, arrays, signature_name="serving_default"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for name, array in arrays.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
    return request


def _rest(signature, body):
    """Send ``body`` as JSON text; the answer must itself survive a JSON round trip."""
    answer = rest_predict(signature, json.dumps(body))
    assert json.loads(json.dumps(answer)) == answer
    return answer


# --- gRPC -------------------------------------------------------------------------------------------------------


def test_grpc_predict_matches_the_signature(encoder):
    x = _features(5, D_IN)
    request = _request("image_encoder", {"features": x})
    # Through the wire format, as a client sends it and the server answers.
    request = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    response = predict_pb2.PredictResponse.FromString(predict(encoder, request).SerializeToString())
    assert response.model_spec.name == "image_encoder" and response.model_spec.signature_name == "serving_default"
    assert list(response.outputs) == ["embedding"]
    expected = encoder["serving_default"](features=tf.constant(x))["embedding"].numpy()
    served = tf.make_ndarray(response.outputs["embedding"])
    assert served.dtype == np.float32 and served.shape == (5, D_OUT)
    np.testing.assert_allclose(served, expected, atol=1e-6)
    # One signature given directly answers the same; an empty signature name means serving_default.
    request.model_spec.signature_name = ""
    direct = predict(encoder["serving_default"], request)
    assert direct.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose(tf.make_ndarray(direct.outputs["embedding"]), expected, atol=1e-6)


def test_grpc_string_outputs_and_output_filter(retriever):
    x = _features(4, 3)
    response = predict(retriever, _request("text2image_retriever", {"features": x}))
    expected = retriever["serving_default"](features=tf.constant(x))
    assert sorted(response.outputs) == ["indices", "keys", "scores"]
    assert response.outputs["keys"].dtype == tf.string.as_datatype_enum
    assert response.outputs["indices"].dtype == tf.int64.as_datatype_enum
    for name in ("keys", "scores", "indices"):
        got = tf.make_ndarray(response.outputs[name])
        assert got.shape == (4, K)
        if name == "scores":
            np.testing.assert_allclose(got, expected[name].numpy(), atol=1e-6)
        else:
            np.testing.assert_array_equal(got, expected[name].numpy())
    request = _request("text2image_retriever", {"features": x})
    request.output_filter.append("keys")
    assert list(predict(retriever, request).outputs) == ["keys"]


# --- REST -------------------------------------------------------------------------------------------------------


def test_rest_row_and_columnar_forms_on_an_encoder(encoder):
    x = _features(3, D_IN)
    expected = encoder["serving_default"](features=tf.constant(x))["embedding"].numpy()
    rows = _rest(encoder, {"signature_name": "serving_default", "instances": x.tolist()})
    assert list(rows) == ["predictions"] and len(rows["predictions"]) == 3  # single output: plain per-row values
    np.testing.assert_allclose(np.array(rows["predictions"], np.float32), expected, atol=1e-6)
    # Row format with named objects is also accepted for a single input.
    named = _rest(encoder, {"instances": [{"features": row} for row in x.tolist()]})
    assert named == rows
    # Columnar: the single input's value, or an object naming it; single output: the value itself.
    for inputs in (x.tolist(), {"features": x.tolist()}):
        columns = _rest(encoder, {"inputs": inputs})
        assert list(columns) == ["outputs"]
        np.testing.assert_allclose(np.array(columns["outputs"], np.float32), expected, atol=1e-6)
    # Bytes and an already parsed dict are bodies too.
    assert rest_predict(encoder, json.dumps({"instances": x.tolist()}).encode()) == rows
    assert rest_predict(encoder["serving_default"], {"instances": x.tolist()}) == rows


def test_rest_multi_output_with_strings(retriever):
    x = _features(2, 3)
    expected = {k: v.numpy() for k, v in retriever["serving_default"](features=tf.constant(x)).items()}
    rows = _rest(retriever, {"instances": x.tolist()})["predictions"]
    assert len(rows) == 2 and all(sorted(row) == ["indices", "keys", "scores"] for row in rows)
    for i, row in enumerate(rows):
        assert row["keys"] == [key.decode("utf-8") for key in expected["keys"][i]]
        assert all(isinstance(key, str) for key in row["keys"])
        assert row["indices"] == expected["indices"][i].tolist()
        np.testing.assert_allclose(row["scores"], expected["scores"][i], atol=1e-6)
    columns = _rest(retriever, {"inputs": {"features": x.tolist()}})["outputs"]
    assert sorted(columns) == ["indices", "keys", "scores"]
    assert columns["keys"] == [[key.decode("utf-8") for key in keys] for keys in expected["keys"]]
    assert columns["indices"] == expected["indices"].tolist()
    np.testing.assert_allclose(columns["scores"], expected["scores"], atol=1e-6)


# --- refused requests -------------------------------------------------------------------------------------------


def _grpc_error(signature, arrays, model_name="m"):
    with pytest.raises(ServingError) as info:
        predict(signature, _request(model_name, arrays))
    assert "\n" not in info.value.message
    return info.value


def _rest_error(signature, body):
    answer = rest_predict(signature, body if isinstance(body, (str, bytes)) else json.dumps(body))
    assert list(answer) == ["error"], answer  # an error and nothing else, never a partial answer
    assert isinstance(answer["error"], str) and "\n" not in answer["error"]
    return answer["error"]


def test_wrong_feature_dimension_is_refused(encoder):
    error = _grpc_error(encoder, {"features": _features(3, D_IN - 1)})
    assert error.code == "INVALID_ARGUMENT"
    assert "'features'" in error.message and f"[3, {D_IN - 1}]" in error.message and f"[-1, {D_IN}]" in error.message
    assert "[-1, 12]" in _rest_error(encoder, {"instances": _features(3, D_IN - 1).tolist()})
    assert "[-1, 12]" in _rest_error(encoder, {"inputs": {"features": _features(2, D_IN + 1).tolist()}})
    # Wrong dtype and wrong rank are shape/type errors too.
    error = _grpc_error(encoder, {"features": _features(2, D_IN).astype(np.float64)})
    assert "expects float32 but float64" in error.message
    assert "[12]" in _rest_error(encoder, {"inputs": _features(1, D_IN)[0].tolist()})


def test_unknown_or_missing_input_names_are_refused(encoder):
    error = _grpc_error(encoder, {"feature": _features(2, D_IN)})
    assert error.code == "INVALID_ARGUMENT" and "sent extra: ['feature']" in error.message
    assert "missing but required: ['features']" in error.message
    error = _grpc_error(encoder, {"features": _features(2, D_IN), "other": _features(2, 1)})
    assert "extra: ['other']" in error.message
    assert "['feature']" in _rest_error(encoder, {"instances": [{"feature": [0.0] * D_IN}]})
    assert "unknown: ['feature']" in _rest_error(encoder, {"inputs": {"feature": [[0.0] * D_IN]}})
    assert "'nope' not found" in _rest_error(encoder, {"signature_name": "nope", "instances": [[0.0] * D_IN]}).replace(
        '"', "'")


def test_empty_batch_is_refused(retriever, encoder):
    error = _grpc_error(retriever, {"features": np.zeros((0, 3), np.float32)})
    assert error.code == "INVALID_ARGUMENT" and "empty batch of queries" in error.message
    assert "empty batch" in _rest_error(retriever, {"instances": []})
    assert "empty batch" in _rest_error(encoder, {"instances": []})
    # An empty JSON list is rank 1, so the columnar form cannot even express a (0, d) batch.
    assert "[0]" in _rest_error(retriever, {"inputs": {"features": []}})


def test_non_finite_query_is_refused(retriever):
    x = _features(2, 3)
    x[1, 2] = np.nan
    error = _grpc_error(retriever, {"features": x})
    assert error.code == "INVALID_ARGUMENT" and "non-finite query value" in error.message and "NaN" in error.message
    assert "Graph execution error" not in error.message  # the reason, without the runtime's noise
    # json.dumps writes NaN/Infinity tokens, which the REST API accepts as numbers and passes on to the graph.
    body = json.dumps({"instances": [[0.5, float("inf"), 1.0]]})
    assert "Infinity" in body
    assert "non-finite query value" in _rest_error(retriever, body)


@pytest.mark.parametrize("body, message", [
    ('{"instances": [[1.0, 2.0, 3.0]', "JSON Parse error"),
    ("", "empty"),
    (b"\xff\xfe", "not UTF-8"),
    ("[1, 2, 3]", "must be a JSON object"),
    ('{"signature_name": 3, "instances": [[1.0, 2.0, 3.0]]}', "'signature_name' must be a string"),
    ('{"instances": [[1.0, 2.0, 3.0]], "inputs": [[1.0, 2.0, 3.0]]}', "only one of"),
    ('{"rows": [[1.0, 2.0, 3.0]]}', "missing 'inputs' or 'instances'"),
    ('{"instances": [[1.0, 2.0, 3.0], [1.0, 2.0]]}', "shape"),
    ('{"inputs": [[1.0, 2.0, 3.0], [1.0, 2.0]]}', "ragged"),
    ('{"instances": [[1.0, "2", 3.0]]}', "not of expected type float32"),
    ('{"instances": [[1.0, true, 3.0]]}', "not of expected type float32"),
    ('{"instances": [[1.0, null, 3.0]]}', "not of expected type float32"),
    ('{"instances": [[1.0, 1e300, 3.0]]}', "without loss of precision"),
    ('{"instances": [[1.0, 2.0, 3.0], {"features": [1.0, 2.0, 3.0]}]}', "item 1"),
])
def test_malformed_rest_bodies_are_refused(retriever, body, message):
    assert message in _rest_error(retriever, body)


# --- warmup file ------------------------------------------------------------------------------------------------


def test_warmup_requests_replay(encoder_path, tmp_path):
    version_dir = _version_copy(encoder_path, str(tmp_path / "image_encoder" / "1"))
    x = _features(4, D_IN)
    path = write_warmup_requests(version_dir, "image_encoder", {"features": x})
    assert path == os.path.join(version_dir, "assets.extra", WARMUP_FILE)
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    assert len(records) == 1 and records[0].WhichOneof("log_type") == "predict_log"
    request = records[0].predict_log.request
    assert request.model_spec.name == "image_encoder" and request.model_spec.signature_name == "serving_default"
    np.testing.assert_array_equal(tf.make_ndarray(request.inputs["features"]), x)
    # The server replays each record at load; here every one must be answered.
    signatures = tf.saved_model.load(version_dir).signatures
    for record in records:
        response = predict(signatures, record.predict_log.request)
        assert tf.make_ndarray(response.outputs["embedding"]).shape == (4, D_OUT)
    # A temporary folder without saved_model.pb yet: written without the signature check.
    assert os.path.exists(write_warmup_requests(str(tmp_path / ".tmp-7-1"), "image_encoder", {"features": x}))
    assert len(warmup_requests("image_encoder", {"features": x})) == 1


def test_a_warmup_request_the_model_would_refuse_is_not_written(encoder_path, tmp_path):
    version_dir = _version_copy(encoder_path, str(tmp_path / "1"))
    for inputs, message in [({"features": _features(2, D_IN).astype(np.float64)}, "float64"),
                            ({"features": _features(2, D_IN + 1)}, "[-1, 12]"),
                            ({"feature": _features(2, D_IN)}, "sent extra"),
                            ({"features": np.zeros((0, D_IN), np.float32)}, "at least one row")]:
        with pytest.raises(ModelInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
            write_warmup_requests(version_dir, "image_encoder", inputs)
    assert not os.path.exists(os.path.join(version_dir, "assets.extra", WARMUP_FILE))


# --- models.config ----------------------------------------------------------------------------------------------


def test_models_config_names_every_exported_model(encoder_path, retriever_path, tmp_path, monkeypatch):
    export = tmp_path / "run" / "export"
    for name, source, version in [("text_encoder", encoder_path, "1"), ("image_encoder", encoder_path, "1"),
                                  ("image_encoder", encoder_path, "2"), ("text2image_retriever", retriever_path, "1")]:
        shutil.copytree(source, export / name / version)
    shutil.copytree(encoder_path, export / "image_encoder" / ".tmp-3-123")  # an export killed mid-way
    (export / "plots").mkdir()  # a folder without versions
    (export / "plots" / "a.txt").write_text("not a model")
    (export / "half_written" / "1").mkdir(parents=True)  # a version folder without saved_model.pb
    (export / "notes.txt").write_text("a file")
    monkeypatch.chdir(tmp_path)
    path = write_models_config("run")  # a relative run dir still gives absolute base paths
    assert path == os.path.join("run", "export", MODELS_CONFIG)
    config = read_models_config(path)
    models = config.model_config_list.config
    assert [m.name for m in models] == ["image_encoder", "text2image_retriever", "text_encoder"]
    for model in models:
        assert os.path.isabs(model.base_path) and os.path.isdir(model.base_path)
        assert os.path.basename(model.base_path) == model.name and model.model_platform == "tensorflow"
    first = open(path, encoding="utf-8").read()
    assert write_models_config(str(tmp_path / "run")) == str(export / MODELS_CONFIG)
    assert open(path, encoding="utf-8").read() == first  # idempotent
    assert not [n for n in os.listdir(export) if ".tmp" in n]


def test_models_config_errors(tmp_path):
    with pytest.raises(ModelInputError, match="no export folder"):
        write_models_config(str(tmp_path))
    (tmp_path / "export" / "image_encoder").mkdir(parents=True)
    with pytest.raises(ModelInputError, match="no exported model"):
        write_models_config(str(tmp_path))
    bad = tmp_path / "bad.config"
    bad.write_text("model_config_list { config { nam: 'x' } }\n")
    with pytest.raises(ModelInputError, match="not a readable TF Serving models.config") as info:
        read_models_config(str(bad))
    assert "\n" not in str(info.value)
    with pytest.raises(ModelInputError, match="not a readable"):
        read_models_config(str(tmp_path / "missing.config"))

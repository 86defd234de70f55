"""SavedModel export: the TF Serving contract, checked in a process that cannot import tf_xmr."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tf_xmr.export import export_encoder, load_exported, versions
from tf_xmr.layers import mlp
from tf_xmr.methods.base import DataSpec

# Runs with only TensorFlow importable (cwd and PYTHONPATH away from the repository): what a serving host has.
_FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf
assert "tf_xmr" not in sys.modules
path, features_file, out_file = sys.argv[1:4]
loaded = tf.saved_model.load(path)
fn = loaded.signatures["serving_default"]
spec = fn.structured_input_signature[1]["features"]
outputs = fn.structured_outputs
graph_ops = {op.type for op in fn.graph.get_operations()}
result = fn(features=tf.constant(np.load(features_file)))["embedding"].numpy()
np.save(out_file, result)
print(json.dumps({
    "input_dtype": spec.dtype.name, "input_shape": spec.shape.as_list(),
    "output_keys": sorted(outputs), "output_shape": outputs["embedding"].shape.as_list(),
    "ops": sorted(graph_ops),
}))
"""


def _encoder(dim_in=12, dim_out=5, standardize="zscore"):
    import keras

    rng = np.random.default_rng(0)
    spec = DataSpec(("image", "text"), {"image": dim_in, "text": 3}, 4, standardize=standardize,
                    stats={"image": (rng.normal(size=dim_in), rng.uniform(0.5, 2, size=dim_in))})
    encoder = keras.Sequential([keras.Input((dim_in,)), spec.standardizer("image"), mlp((7, dim_out))])
    return encoder


@pytest.mark.slow
def test_round_trip_in_a_fresh_process(tmp_path):
    encoder = _encoder()
    path = export_encoder(encoder, str(tmp_path / "image_encoder"), input_dim=12)
    assert path.endswith(os.sep + "1") and versions(str(tmp_path / "image_encoder")) == [1]
    features = np.random.default_rng(1).normal(size=(33, 12)).astype(np.float32)
    np.save(tmp_path / "features.npy", features)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, path, str(tmp_path / "features.npy"), str(tmp_path / "out.npy")],
        cwd=str(tmp_path), env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["input_dtype"] == "float32" and info["input_shape"] == [None, 12]
    assert info["output_keys"] == ["embedding"] and info["output_shape"] == [None, 5]
    # Nothing that needs Python at serving time.
    assert not {"PyFunc", "EagerPyFunc", "PyFuncStateless"} & set(info["ops"])
    served = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(served, encoder(features, training=False).numpy(), atol=1e-5)


@pytest.mark.slow
@pytest.mark.e2e
def test_saved_model_cli_lists_the_signature(tmp_path):
    path = export_encoder(_encoder(), str(tmp_path / "image_encoder"), input_dim=12)
    cli = shutil.which("saved_model_cli", path=os.path.dirname(sys.executable)) or shutil.which("saved_model_cli")
    if cli is None:
        pytest.fail("saved_model_cli is not installed next to this Python (it ships with tensorflow)")
    result = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "signature_def['serving_default']" in out
    assert "inputs['features']" in out and "dtype: DT_FLOAT" in out and "shape: (-1, 12)" in out
    assert "outputs['embedding']" in out and "shape: (-1, 5)" in out
    assert "tensorflow/serving/predict" in out


def test_versions_increase_and_dimension_is_checked(tmp_path):
    from tf_xmr.errors import ModelInputError

    encoder = _encoder(standardize="l2")
    model_dir = str(tmp_path / "export" / "text_encoder")
    export_encoder(encoder, model_dir, input_dim=12)
    export_encoder(encoder, model_dir, input_dim=12, l2_normalize=True)
    assert versions(model_dir) == [1, 2]
    assert not [n for n in os.listdir(model_dir) if n.startswith(".tmp")]
    exported = load_exported(str(tmp_path), "text")  # latest version
    out = np.asarray(exported(np.ones((4, 12), np.float32)))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ModelInputError, match=r"\(batch, 12\).*\(4, 9\)"):
        exported(np.ones((4, 9), np.float32))


def _variable_bytes(version_dir: str) -> int:
    folder = os.path.join(version_dir, "variables")
    return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder) if n.startswith("variables.data"))


def test_each_variable_is_stored_once(tmp_path):
    """keras.export.ExportArchive stored every variable twice (variables/N and _all_variables/N: 68.8 MB for a 34 MB
    encoder); the export is now one tf.Module holding the Keras model."""
    import tensorflow as tf

    encoder = _encoder(dim_in=300, dim_out=64)  # ~ 2.5k parameters of layers + the standardiser's statistics
    path = export_encoder(encoder, str(tmp_path / "image_encoder"), input_dim=300)
    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in encoder.weights)
    stored = _variable_bytes(path)
    assert weight_bytes <= stored < weight_bytes + 4096, (stored, weight_bytes)
    names = tf.train.list_variables(os.path.join(path, "variables", "variables"))
    assert not [name for name, _ in names if "_all_variables" in name]


def test_metadata_unit_vectors_and_the_graph_refuses_garbage(tmp_path):
    from tf_xmr.errors import ModelInputError
    from tf_xmr.export import read_metadata

    encoder = _encoder()
    unit = load_exported_path(export_encoder(encoder, str(tmp_path / "a" / "image_encoder"), input_dim=12,
                                             l2_normalize=True, distance="cosine"))
    raw = load_exported_path(export_encoder(encoder, str(tmp_path / "b" / "image_encoder"), input_dim=12,
                                            distance="euclidean"))
    features = np.random.default_rng(2).normal(size=(6, 12)).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(unit(features)), axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(raw(features)), encoder(features, training=False).numpy(), atol=1e-5)
    meta = read_metadata(unit.path)
    assert meta["kind"] == "encoder" and meta["modality"] == "image"
    assert meta["distance"] == "cosine" and meta["normalized"] is True and raw.metadata["normalized"] is False
    assert meta["outputs"] == {"embedding": {"dtype": "float32", "shape": [None, 5]}}
    assert os.path.exists(os.path.join(unit.path, "assets.extra", "tf_serving_warmup_requests"))
    features[2, 4] = np.nan
    with pytest.raises(ModelInputError, match="features contain NaN or Inf"):
        unit(features)
    with pytest.raises(ModelInputError, match="empty batch"):
        unit(np.zeros((0, 12), np.float32))


def load_exported_path(path):
    from tf_xmr.export.saved_model import ExportedEncoder

    return ExportedEncoder(path)


def test_export_follows_the_run_distance():
    from types import SimpleNamespace

    from tf_xmr.export import normalizes

    def config(distance, setting):
        return SimpleNamespace(eval=SimpleNamespace(distance=distance), export=SimpleNamespace(l2_normalize=setting))

    assert normalizes(config("cosine", "auto")) and not normalizes(config("euclidean", "auto"))
    assert not normalizes(config("inner", "auto")) and not normalizes(config("cosine", False))
    assert normalizes(config("euclidean", True))

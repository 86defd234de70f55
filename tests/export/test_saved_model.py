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

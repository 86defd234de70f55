"""SavedModel export of the per-modality encoders for TF Serving.

Layout (design.md section 5)::

    <run_dir>/export/<modality>_encoder/<version>/saved_model.pb
        serving_default: features float32[None, d_modality] -> embedding float32[None, d_common]

``version`` is an integer, as TF Serving expects; a new export takes the next free version so an older model keeps
serving until the new one is complete. Each version is written to a temporary directory and renamed when complete.
"""

from __future__ import annotations

import logging
import os
import re
import shutil

import keras
import numpy as np
import tensorflow as tf

from tf_xmr.errors import ModelInputError

log = logging.getLogger("tf_xmr.export")

SIGNATURE = "serving_default"
INPUT_NAME = "features"
OUTPUT_NAME = "embedding"


def encoder_dir(run_dir: str, modality: str) -> str:
    return os.path.join(run_dir, "export", f"{modality}_encoder")


def versions(model_dir: str) -> list[int]:
    """Integer version folders present under ``model_dir`` (temporary folders excluded), ascending."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(name) for name in os.listdir(model_dir) if re.fullmatch(r"\d+", name))


def _remove_stale_temporaries(model_dir: str) -> None:
    """Remove ``.tmp-<version>-<pid>`` folders of exports whose process is gone (killed mid-export)."""
    for name in os.listdir(model_dir):
        match = re.fullmatch(r"\.tmp-\d+-(\d+)", name)
        if match and not _alive(int(match.group(1))):
            shutil.rmtree(os.path.join(model_dir, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def export_encoder(encoder: keras.Model, model_dir: str, *, input_dim: int, l2_normalize: bool = False,
                   version: int | None = None) -> str:
    """Write one encoder as a versioned SavedModel with a ``serving_default`` signature.

    Args:
        encoder: Keras model (batch, input_dim) -> (batch, d_common).
        model_dir: the model's folder (``.../<modality>_encoder``); the version folder goes inside it.
        input_dim: feature dimension of the modality.
        l2_normalize: L2-normalise the embedding inside the graph (cosine retrieval becomes an inner product).
        version: integer version; default one past the highest existing version.

    Returns:
        Path of the written version folder.
    """
    version = version if version is not None else (max(versions(model_dir), default=0) + 1)
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final):
        raise ModelInputError(f"export version folder {final} already exists")
    os.makedirs(model_dir, exist_ok=True)
    _remove_stale_temporaries(model_dir)
    tmp = os.path.join(model_dir, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)

    def serve(features):
        embedding = encoder(features, training=False)
        if l2_normalize:
            embedding = tf.math.l2_normalize(embedding, axis=-1, epsilon=1e-12)
        return {OUTPUT_NAME: embedding}

    archive = keras.export.ExportArchive()
    archive.track(encoder)
    archive.add_endpoint(
        name=SIGNATURE,
        fn=serve,
        input_signature=[tf.TensorSpec([None, input_dim], tf.float32, name=INPUT_NAME)],
    )
    # TensorFlow logs "Assets written to: <the temporary folder>", a path that is gone a moment later; say the
    # final one instead.
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(logging.WARNING)
    try:
        archive.write_out(tmp, verbose=False)
        os.replace(tmp, final)
    finally:
        tf_logger.setLevel(level)
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s", final)
    return final


class ExportedEncoder:
    """A loaded encoder SavedModel, callable on (b, d) arrays; checks the feature dimension first."""

    def __init__(self, path: str):
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise ModelInputError(f"{path} is not a SavedModel folder (no saved_model.pb)")
        self.path = path
        try:
            self._loaded = tf.saved_model.load(path)
            self._fn = self._loaded.signatures[SIGNATURE]
            spec = self._fn.structured_input_signature[1][INPUT_NAME]
        except (OSError, ValueError, KeyError, tf.errors.OpError) as exc:
            # A corrupt saved_model.pb, a missing variables/ folder, or a SavedModel of another kind.
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelInputError(f"{path} is not a readable tf_xmr encoder SavedModel ({reason})") from None
        self.input_dim = int(spec.shape[-1])

    def __call__(self, features):
        """Embed ``features``: (batch, input_dim) numbers (array, nested lists or tensor) -> (batch, d_common).

        Raises:
            ModelInputError: input that is not numbers (strings, None, objects, ragged lists) or of the wrong shape.
        """
        features = self._as_float_tensor(features)
        if features.shape.rank != 2 or int(features.shape[-1]) != self.input_dim:
            raise ModelInputError(
                f"exported model {self.path} takes features of shape (batch, {self.input_dim}), "
                f"got {tuple(features.shape)}"
            )
        return self._fn(**{INPUT_NAME: features})[OUTPUT_NAME]

    def _as_float_tensor(self, features) -> tf.Tensor:
        # tf.convert_to_tensor raises TypeError or ValueError for non-numbers, depending on the input's type; both
        # are a caller's mistake, reported as the project's input error with what was given.
        expected = f"exported model {self.path} takes numeric features of shape (batch, {self.input_dim})"
        if isinstance(features, (tf.Tensor, tf.Variable)):
            dtype = features.dtype
            if not (dtype.is_floating or dtype.is_integer or dtype.is_bool):
                raise ModelInputError(f"{expected}, got a {dtype.name} tensor of shape {tuple(features.shape)}")
            return tf.cast(features, tf.float32)
        if isinstance(features, (str, bytes)):
            raise ModelInputError(f"{expected}, got the {type(features).__name__} {features[:40]!r}")
        try:
            array = np.asarray(features)
        except ValueError:  # numpy 2 refuses ragged nested sequences
            raise ModelInputError(f"{expected}, got a ragged sequence (rows of different lengths)") from None
        if array.dtype.kind not in "fiub":
            what = "Python objects (None, dicts or mixed rows)" if array.dtype.kind == "O" else f"dtype {array.dtype}"
            raise ModelInputError(f"{expected}, got {what} of shape {array.shape}")
        return tf.convert_to_tensor(array, tf.float32)


def load_exported(run_dir: str, modality: str, version: int | None = None) -> ExportedEncoder:
    """Load ``<run_dir>/export/<modality>_encoder/<version>`` (latest version by default)."""
    model_dir = encoder_dir(run_dir, modality)
    found = versions(model_dir)
    if not found:
        raise ModelInputError(f"no exported {modality} encoder under {model_dir}")
    chosen = version if version is not None else found[-1]
    if chosen not in found:
        raise ModelInputError(f"export version {chosen} not found under {model_dir}; available: {found}")
    return ExportedEncoder(os.path.join(model_dir, str(chosen)))


def check_equal(encoder: keras.Model, exported: ExportedEncoder, features: np.ndarray, atol: float = 1e-5) -> float:
    """Max absolute difference between a Keras encoder and its export on ``features`` (raises if above ``atol``)."""
    reference = np.asarray(encoder(features, training=False))
    served = np.asarray(exported(features))
    diff = float(np.max(np.abs(reference - served)))
    if diff > atol:
        raise AssertionError(f"export differs from the Keras encoder by {diff} > {atol}")
    return diff

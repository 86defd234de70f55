"""SavedModel export of the per-modality encoders for TF Serving.

Layout (design.md section 5)::

    <run_dir>/export/<modality>_encoder/<version>/saved_model.pb
        serving_default: features float32[None, d_modality] -> embedding float32[None, d_common]
    <run_dir>/export/<modality>_encoder/<version>/assets.extra/tf_xmr.json          what the model is (see below)
    <run_dir>/export/<modality>_encoder/<version>/assets.extra/tf_serving_warmup_requests

``version`` is an integer, as TF Serving expects; a new export takes the next free version so an older model keeps
serving until the new one is complete. Each version is written to a temporary directory and renamed when complete.

The embedding follows the run's ranking: a cosine run (``eval.distance: cosine``, the default) exports unit vectors,
so an inner-product vector store ranks exactly as ``metrics.json`` was scored; ``tf_xmr.json`` says which distance
the model was trained and scored with and whether the output is normalised. Each variable is stored once: the
model is saved as a plain ``tf.Module`` holding the Keras encoder (``keras.export.ExportArchive`` stored every
variable twice, under ``variables/`` and ``_all_variables/``).

Every exported graph refuses what would otherwise answer with garbage: an empty batch and a non-finite feature
value fail with an error naming the problem (``tf.debugging`` ops, which TF Serving reports as INVALID_ARGUMENT),
and a wrong feature dimension fails the signature's shape check.
"""

from __future__ import annotations

import hashlib
import json
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


METADATA_FILE = "tf_xmr.json"  # in <version>/assets.extra/, beside TF Serving's warmup file
METADATA_FORMAT = 1


def metadata_path(version_dir: str) -> str:
    return os.path.join(version_dir, "assets.extra", METADATA_FILE)


def read_metadata(version_dir: str) -> dict:
    """The ``assets.extra/tf_xmr.json`` of an exported version ({} for an export older than the file)."""
    path = metadata_path(version_dir)
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise ModelInputError(f"{path} is not readable JSON ({exc})") from None


def weights_fingerprint(model: keras.Model) -> str:
    """sha256 over the model's weights (shapes and bytes, in order): equal for the same trained encoder, so a
    retriever can tell whether a gallery was embedded by the encoder it is about to extend."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(str(value.shape).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def checked_features(features: tf.Tensor, what: str = "features") -> tf.Tensor:
    """``features`` (b, d) after in-graph checks that a served model must not answer past: an empty batch and a
    non-finite value raise (InvalidArgumentError; TF Serving answers INVALID_ARGUMENT with the message)."""
    assert_nonempty = tf.debugging.assert_greater(
        tf.shape(features)[0], 0, message=f"empty batch: {what} must have at least one row")
    with tf.control_dependencies([assert_nonempty]):
        return tf.debugging.check_numerics(features, f"{what} contain NaN or Inf")


def checked_raw(raw: tf.Tensor, what: str) -> tf.Tensor:
    """A raw-input batch (b,) strings after the in-graph empty-batch check."""
    assert_nonempty = tf.debugging.assert_greater(
        tf.shape(raw)[0], 0, message=f"empty batch: {what} must have at least one item")
    with tf.control_dependencies([assert_nonempty]):
        return tf.identity(raw)


class EncoderModule(tf.Module):
    """What an encoder SavedModel holds: the Keras encoder (its variables, once), the serving function, and, for a
    run on featurized data, the featurizer graph of a raw-input signature (``tf_xmr.featurize.raw``)."""

    def __init__(self, encoder: keras.Model, input_dim: int, l2_normalize: bool, raw_input=None):
        super().__init__(name="encoder_export")
        self.encoder = encoder
        self._l2_normalize = bool(l2_normalize)
        self.serve = tf.function(
            self._serve, input_signature=[tf.TensorSpec([None, input_dim], tf.float32, name=INPUT_NAME)])
        if raw_input is not None:
            self.raw_featurizer = raw_input.trackable  # its weights or vocabulary tables go into the SavedModel
            self._raw = raw_input
            self.serve_raw = tf.function(
                self._serve_raw, input_signature=[tf.TensorSpec([None], tf.string, name=raw_input.signature)])

    def _serve_raw(self, raw):
        features = self._raw.fn(checked_raw(raw, self._raw.signature))
        return {OUTPUT_NAME: self.embed(features)}

    def embed(self, features: tf.Tensor) -> tf.Tensor:
        embedding = self.encoder(features, training=False)
        if self._l2_normalize:
            embedding = tf.math.l2_normalize(embedding, axis=-1, epsilon=1e-12)
        return embedding

    def _serve(self, features):
        return {OUTPUT_NAME: self.embed(checked_features(features))}


def write_version(model_dir: str, write, version: int | None = None) -> str:
    """Write one integer version of a served model atomically: ``write(folder)`` fills a temporary folder, which is
    renamed to ``<model_dir>/<version>`` when complete (default version: one past the highest present).

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
    # TensorFlow logs "Assets written to: <the temporary folder>", a path that is gone a moment later (we say the
    # final one instead), and warns that captured variables get graph-safe input names ("contains input name(s)
    # resource with unsupported characters"), which is how every SavedModel of a Keras model is written.
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    try:
        write(tmp)
        os.replace(tmp, final)
    finally:
        tf_logger.setLevel(level)
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s", final)
    return final


def save_module(module: tf.Module, folder: str, signatures: dict, metadata: dict, warmup, model_name: str) -> None:
    """``tf.saved_model.save`` plus the two ``assets.extra`` files: ``tf_xmr.json`` and TF Serving's warmup log.

    ``warmup`` is ``[(signature name, {input name: array}), ...]``: one request per signature worth warming.
    """
    from tf_xmr.export.serving import write_warmup_file

    tf.saved_model.save(module, folder, signatures=signatures)
    os.makedirs(os.path.join(folder, "assets.extra"), exist_ok=True)
    with open(metadata_path(folder), "w", encoding="utf-8") as handle:
        json.dump({"format": METADATA_FORMAT, "tf_xmr_version": _version(), **metadata}, handle, indent=2)
        handle.write("\n")
    if warmup:
        write_warmup_file(folder, model_name, warmup)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tf_xmr")
    except PackageNotFoundError:  # run from a source tree that was not pip-installed
        return "unknown"


def export_encoder(encoder: keras.Model, model_dir: str, *, input_dim: int, l2_normalize: bool = False,
                   version: int | None = None, distance: str | None = None, modality: str | None = None,
                   example: np.ndarray | None = None, raw_input=None) -> str:
    """Write one encoder as a versioned SavedModel with a ``serving_default`` signature.

    Args:
        encoder: Keras model (batch, input_dim) -> (batch, d_common).
        model_dir: the model's folder (``.../<modality>_encoder``); the version folder goes inside it.
        input_dim: feature dimension of the modality.
        l2_normalize: L2-normalise the embedding inside the graph (cosine retrieval becomes an inner product).
        version: integer version; default one past the highest existing version.
        distance: the run's ``eval.distance``, recorded in ``assets.extra/tf_xmr.json``.
        modality: the modality name, recorded there too (default: from the folder name).
        example: (b, input_dim) feature rows for TF Serving's warmup request (default: one row of zeros).
        raw_input: a ``tf_xmr.featurize.raw.RawInput``: adds the raw-input signature (``image_bytes`` or ``text``).

    Returns:
        Path of the written version folder.
    """
    model_name = os.path.basename(os.path.normpath(model_dir))
    module = EncoderModule(encoder, input_dim, l2_normalize, raw_input)
    # From one call, not encoder.output_shape: subclassed encoders (DA-GAN's) have no static output shape.
    d_common = int(encoder(np.zeros((1, input_dim), np.float32), training=False).shape[-1])
    metadata = {
        "kind": "encoder",
        "modality": modality or model_name.removesuffix("_encoder"),
        "distance": distance,
        "normalized": bool(l2_normalize),
        "inputs": {INPUT_NAME: {"dtype": "float32", "shape": [None, int(input_dim)]}},
        "outputs": {OUTPUT_NAME: {"dtype": "float32", "shape": [None, d_common]}},
        "encoder_fingerprint": weights_fingerprint(encoder),
    }
    example = np.zeros((1, input_dim), np.float32) if example is None else np.asarray(example, np.float32)
    signatures, warmup = {SIGNATURE: module.serve}, [(SIGNATURE, {INPUT_NAME: example})]
    if raw_input is not None:
        signatures[raw_input.signature] = module.serve_raw
        warmup.append((raw_input.signature, {raw_input.signature: raw_input.example}))
        metadata["raw_input"] = {"signature": raw_input.signature, "input": raw_input.signature, "dtype": "string",
                                 "shape": [None]}
    return write_version(model_dir, lambda folder: save_module(module, folder, signatures, metadata, warmup,
                                                               model_name), version)


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
        self.metadata = read_metadata(path)

    def __call__(self, features):
        """Embed ``features``: (batch, input_dim) numbers (array, nested lists or tensor) -> (batch, d_common).

        Raises:
            ModelInputError: input that is not numbers (strings, None, objects, ragged lists), of the wrong shape,
                empty or not finite.
        """
        features = as_features(features, self.path, self.input_dim)
        return run_signature(self._fn, self.path, **{INPUT_NAME: features})[OUTPUT_NAME]


def run_signature(fn, path: str, **inputs) -> dict:
    """Call a loaded signature; the graph's own refusals (empty batch, NaN/Inf) become one-line input errors."""
    from tf_xmr.export.serving import op_error_message

    try:
        return fn(**inputs)
    except tf.errors.InvalidArgumentError as exc:
        raise ModelInputError(f"exported model {path} refused the input: {op_error_message(exc)}") from None


def as_features(features, path: str, input_dim: int) -> tf.Tensor:
    """``features`` as a float32 (batch, input_dim) tensor for the SavedModel at ``path``.

    Raises:
        ModelInputError: input that is not numbers (strings, None, objects, ragged lists) or of the wrong shape.
    """
    # tf.convert_to_tensor raises TypeError or ValueError for non-numbers, depending on the input's type; both are a
    # caller's mistake, reported as the project's input error with what was given.
    expected = f"exported model {path} takes numeric features of shape (batch, {input_dim})"
    if isinstance(features, (tf.Tensor, tf.Variable)):
        dtype = features.dtype
        if not (dtype.is_floating or dtype.is_integer or dtype.is_bool):
            raise ModelInputError(f"{expected}, got a {dtype.name} tensor of shape {tuple(features.shape)}")
        tensor = tf.cast(features, tf.float32)
    elif isinstance(features, (str, bytes)):
        raise ModelInputError(f"{expected}, got the {type(features).__name__} {features[:40]!r}")
    else:
        try:
            array = np.asarray(features)
        except ValueError:  # numpy 2 refuses ragged nested sequences
            raise ModelInputError(f"{expected}, got a ragged sequence (rows of different lengths)") from None
        if array.dtype.kind not in "fiub":
            what = "Python objects (None, dicts or mixed rows)" if array.dtype.kind == "O" else f"dtype {array.dtype}"
            raise ModelInputError(f"{expected}, got {what} of shape {array.shape}")
        tensor = tf.convert_to_tensor(array, tf.float32)
    if tensor.shape.rank != 2 or int(tensor.shape[-1]) != input_dim:
        raise ModelInputError(
            f"exported model {path} takes features of shape (batch, {input_dim}), got {tuple(tensor.shape)}"
        )
    return tensor


def normalizes(config) -> bool:
    """Whether a run's exports output unit vectors: ``export.l2_normalize``, where ``auto`` follows the run's
    ``eval.distance`` (cosine ranks unit vectors by inner product; euclidean and inner rank the raw embedding)."""
    setting = config.export.l2_normalize
    return config.eval.distance == "cosine" if setting == "auto" else bool(setting)


def export_run_encoders(run_dir: str, config, dims, encoders: dict, *, replace: bool = False) -> dict:
    """Export every encoder of a run as the next version of ``<run_dir>/export/<modality>_encoder`` and rewrite the
    run's ``models.config``.

    Args:
        dims: modality -> feature dimension.
        encoders: modality -> trained Keras encoder.
        replace: drop the model folders first (versions left by an interrupted attempt of the same unfinished run).

    Returns:
        modality -> path of the written version folder.
    """
    from tf_xmr.export.serving import write_models_config
    from tf_xmr.featurize.raw import raw_inputs

    raw = raw_inputs(config.data)  # raw-input signatures when the run trained on featurized data
    exports = {}
    for modality, encoder in encoders.items():
        model_dir = encoder_dir(run_dir, modality)
        if replace:
            shutil.rmtree(model_dir, ignore_errors=True)
        exports[modality] = export_encoder(encoder, model_dir, input_dim=int(dims[modality]),
                                           l2_normalize=normalizes(config), distance=config.eval.distance,
                                           modality=modality, raw_input=raw.get(modality))
    write_models_config(run_dir)
    return exports


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

"""Image featurizers: a keras.applications backbone run on encoded images (JPEG, PNG, BMP, GIF, WebP).

One code path turns an encoded image into features, in pure TensorFlow ops, so the offline features (``tf.data``
over files) and the exported ``image_bytes`` serving signature compute the same numbers:

1. ``tf.io.decode_image(channels=3, expand_animations=False)``: the first frame of an animated GIF; grayscale is
   repeated into R, G and B; an alpha channel is dropped, not composited (the same as Pillow's ``convert("RGB")``
   that ``keras.utils.load_img`` uses); 16-bit PNGs are scaled to 8 bits.
2. ``tf.image.resize`` to ``image_size`` x ``image_size``, bilinear with antialiasing, aspect ratio NOT kept (the
   image is stretched). The papers' pipelines and the keras.applications docs (``load_img(target_size=(224, 224))``)
   feed the whole image squashed to the input size, without a crop; bilinear with antialias rather than
   ``load_img``'s default nearest-neighbour, which aliases when a photograph is shrunk several times.
3. The backbone's own ``keras.applications.<module>.preprocess_input`` (caffe BGR mean subtraction for VGG and
   ResNet50, [-1, 1] for MobileNetV2, a pass-through for EfficientNet/ConvNeXt/MobileNetV3, whose models rescale
   inside).

Backbones: ``vgg19_fc7`` (and ``vgg16_fc7``) is the 4096-d output of the Keras layer ``fc2``, the second
fully-connected layer, which the Caffe model the papers used calls ``fc7``. Keras' ``fc2`` is
``Dense(4096, activation="relu")``, so the features are taken after the ReLU; that is also what the papers' Caffe
features are, because Caffe's ``relu7`` runs in place on the ``fc7`` blob. ``<model>_<avg|max>`` is any
keras.applications model without its classifier and with global average / max pooling (``resnet50_avg`` is the
2048-d ResNet50 feature).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import warnings
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_xmr.config.base import cfg_field
from tf_xmr.errors import ConfigError, DataError
from tf_xmr.files import file_sha256

__all__ = ["BACKBONES", "ImageFeaturizer", "ImageFeaturizerConfig"]

#: Backbone model name -> (keras.applications module holding its preprocess_input, model function, native input
#: size). The native sizes are the ``default_size`` each function passes to Keras' input-shape check (the size its
#: ImageNet weights were trained at). tests/featurize/test_image.py checks that every model keras.applications
#: exports is listed here.
BACKBONES: dict[str, tuple[str, str, int]] = {
    "convnext_tiny": ("convnext", "ConvNeXtTiny", 224),
    "convnext_small": ("convnext", "ConvNeXtSmall", 224),
    "convnext_base": ("convnext", "ConvNeXtBase", 224),
    "convnext_large": ("convnext", "ConvNeXtLarge", 224),
    "convnext_xlarge": ("convnext", "ConvNeXtXLarge", 224),
    "densenet121": ("densenet", "DenseNet121", 224),
    "densenet169": ("densenet", "DenseNet169", 224),
    "densenet201": ("densenet", "DenseNet201", 224),
    "efficientnet_b0": ("efficientnet", "EfficientNetB0", 224),
    "efficientnet_b1": ("efficientnet", "EfficientNetB1", 240),
    "efficientnet_b2": ("efficientnet", "EfficientNetB2", 260),
    "efficientnet_b3": ("efficientnet", "EfficientNetB3", 300),
    "efficientnet_b4": ("efficientnet", "EfficientNetB4", 380),
    "efficientnet_b5": ("efficientnet", "EfficientNetB5", 456),
    "efficientnet_b6": ("efficientnet", "EfficientNetB6", 528),
    "efficientnet_b7": ("efficientnet", "EfficientNetB7", 600),
    "efficientnet_v2_b0": ("efficientnet_v2", "EfficientNetV2B0", 224),
    "efficientnet_v2_b1": ("efficientnet_v2", "EfficientNetV2B1", 240),
    "efficientnet_v2_b2": ("efficientnet_v2", "EfficientNetV2B2", 260),
    "efficientnet_v2_b3": ("efficientnet_v2", "EfficientNetV2B3", 300),
    "efficientnet_v2_s": ("efficientnet_v2", "EfficientNetV2S", 384),
    "efficientnet_v2_m": ("efficientnet_v2", "EfficientNetV2M", 480),
    "efficientnet_v2_l": ("efficientnet_v2", "EfficientNetV2L", 480),
    "inception_resnet_v2": ("inception_resnet_v2", "InceptionResNetV2", 299),
    "inception_v3": ("inception_v3", "InceptionV3", 299),
    "mobilenet": ("mobilenet", "MobileNet", 224),
    "mobilenet_v2": ("mobilenet_v2", "MobileNetV2", 224),
    "mobilenet_v3_small": ("mobilenet_v3", "MobileNetV3Small", 224),
    "mobilenet_v3_large": ("mobilenet_v3", "MobileNetV3Large", 224),
    "nasnet_mobile": ("nasnet", "NASNetMobile", 224),
    "nasnet_large": ("nasnet", "NASNetLarge", 331),
    "resnet50": ("resnet50", "ResNet50", 224),
    "resnet101": ("resnet", "ResNet101", 224),
    "resnet152": ("resnet", "ResNet152", 224),
    "resnet50_v2": ("resnet_v2", "ResNet50V2", 224),
    "resnet101_v2": ("resnet_v2", "ResNet101V2", 224),
    "resnet152_v2": ("resnet_v2", "ResNet152V2", 224),
    "vgg16": ("vgg16", "VGG16", 224),
    "vgg19": ("vgg19", "VGG19", 224),
    "xception": ("xception", "Xception", 299),
}
#: The papers' VGG features: the model with its classifier, cut at this layer (fc7 in Caffe's naming).
_FC7 = {"vgg19_fc7": "vgg19", "vgg16_fc7": "vgg16"}
_FC7_LAYER = "fc2"
_POOLINGS = ("avg", "max")
#: Seed of the random initialisation used for weights "none" (set before every build, so two featurizers from the
#: same config hold the same weights).
NONE_WEIGHTS_SEED = 0
#: The resize step, recorded in describe() and applied by preprocess().
_RESIZE = {"method": "bilinear", "antialias": True, "keep_aspect_ratio": False}


def _parse_backbone(name: str) -> tuple[str, str]:
    """(model key in BACKBONES, pooling "avg" | "max" | "fc7"), or ValueError naming the valid choices."""
    if name in _FC7:
        return _FC7[name], "fc7"
    model, _, pooling = name.rpartition("_")
    if model in BACKBONES and pooling in _POOLINGS:
        return model, pooling
    raise ValueError(f"backbone {name!r} is not known: use vgg19_fc7, vgg16_fc7 or <model>_avg / <model>_max "
                     f"(e.g. resnet50_avg, mobilenet_v2_avg, efficientnet_b0_max) with <model> one of "
                     f"{', '.join(BACKBONES)}")


@dataclasses.dataclass(frozen=True)
class ImageFeaturizerConfig:
    """Section ``image:`` of ``configs/featurize/<preset>.yaml``: which backbone turns images into features."""

    # vgg19_fc7: the 4096-d VGG19 fc7 features of the cross-modal papers (Wikipedia, Pascal Sentence, ...);
    # resnet50_avg: 2048-d globally averaged ResNet50; or any keras.applications model as <model>_<avg|max>.
    backbone: str = "resnet50_avg"
    # imagenet: Keras' ImageNet weights (downloaded once into ~/.keras/models, so the first use needs internet);
    # none: seeded random initialisation (tests, pipeline checks); or the path of a .weights.h5 / .h5 file, e.g.
    # the ImageNet file copied from a machine that could download it.
    weights: str = "imagenet"
    # Side of the square the image is resized to; null = the backbone's native size (224 for VGG and ResNet, 299
    # for Inception/Xception, ...). vgg19_fc7 / vgg16_fc7 take 224 only: their fc6 expects a 7x7x512 map.
    image_size: int | None = cfg_field(None, ge=32)
    # Images per forward pass; 32 keeps a VGG19 batch under ~1 GB of activations on CPU.
    batch_size: int = cfg_field(32, ge=1)

    def __post_init__(self):
        # ValueError, which tf_xmr.config.from_dict reports as a ConfigError naming the section and its file.
        _parse_backbone(self.backbone)
        if self.backbone in _FC7 and self.image_size not in (None, 224):
            raise ValueError(f"backbone {self.backbone} needs image_size 224 (its fully-connected fc6 takes the "
                             f"7x7x512 map of a 224x224 image), got {self.image_size}; use a <model>_avg backbone "
                             f"for other sizes")
        if not self.weights:
            raise ValueError("weights must be imagenet, none or the path of a weights file, got an empty string")


@contextlib.contextmanager
def _seeded(seed: int):
    """keras.utils.set_random_seed for a model build, then the caller's Python and NumPy random streams put back.

    Keras initialisers without an explicit seed draw one when they are created; seeding just before the build makes
    weights "none" reproducible. TensorFlow's global seed and Keras' global seed stay set to ``seed`` afterwards
    (neither can be read back to restore it); the project seeds them itself wherever it needs randomness.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _first_line(error: BaseException) -> str:
    """A TensorFlow or Keras error as one short line: the op wrapper ({{function_node ...}}, [Op:...]) removed."""
    text = error.message if isinstance(error, tf.errors.OpError) else str(error)
    text = re.sub(r"\{\{[^}]*\}\}", "", text)
    text = re.sub(r"\[\[.*", "", text, flags=re.S)
    text = re.sub(r"\s*\[Op:[^\]]*\].*", "", text, flags=re.S)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class ImageFeaturizer:
    """Encoded images -> backbone features, offline (``features_from_paths``) and in a serving graph (``serving_fn``).

    Attributes:
        config: The :class:`ImageFeaturizerConfig` it was built from.
        dim: Feature dimension (4096 for vgg19_fc7, 2048 for resnet50_avg).
        image_size: Side of the square the images are resized to.
        model: The backbone as a Keras model, float32 (b, image_size, image_size, 3) preprocessed -> (b, dim).
    """

    def __init__(self, config: ImageFeaturizerConfig):
        self.config = config
        try:
            model_key, pooling = _parse_backbone(config.backbone)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        module_name, function_name, native_size = BACKBONES[model_key]
        self.image_size = int(config.image_size or native_size)
        self._pooling = pooling
        self._preprocess_name = f"keras.applications.{module_name}.preprocess_input"
        self._preprocess_input = getattr(keras.applications, module_name).preprocess_input
        if keras.config.image_data_format() != "channels_last":
            raise ConfigError("image featurizers need keras.config.image_data_format() == 'channels_last' (images "
                              "are decoded as height x width x 3)")
        self._weights_sha256 = None
        if config.weights not in ("imagenet", "none"):
            if not os.path.isfile(config.weights):
                raise DataError(f"image weights file {config.weights} does not exist (weights must be imagenet, "
                                f"none or the path of a .weights.h5 / .h5 file)")
            self._weights_sha256 = file_sha256(config.weights)
        full = self._build_application(getattr(keras.applications, function_name))
        if pooling == "fc7":
            self.model = keras.Model(full.input, full.get_layer(_FC7_LAYER).output, name=config.backbone)
        else:
            self.model = full
        if self._weights_sha256 is not None:
            self._load_weights(full)
        self.dim = int(self.model.output_shape[-1])
        # Graph mode for the offline batches too: the serving graph runs the same grappler-optimised kernels.
        self._forward = tf.function(
            lambda images: tf.cast(self.model(images, training=False), tf.float32),
            input_signature=[tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.float32)],
            jit_compile=False)

    # ---------------------------------------------------------------------------------------------------------------
    # Building
    # ---------------------------------------------------------------------------------------------------------------

    def _build_application(self, function: Callable) -> keras.Model:
        """The keras.applications model (with its classifier for fc7), ImageNet weights only for "imagenet"."""
        config = self.config
        shape = (self.image_size, self.image_size, 3)
        if self._pooling == "fc7":
            kwargs = {"include_top": True, "input_shape": shape}
        else:
            kwargs = {"include_top": False, "pooling": self._pooling, "input_shape": shape}
        weights = "imagenet" if config.weights == "imagenet" else None
        try:
            with _seeded(NONE_WEIGHTS_SEED):
                return function(weights=weights, **kwargs)
        except ValueError as e:
            # Keras' own checks: input size below the model's minimum, ImageNet weights at an unsupported size.
            raise ConfigError(f"image backbone {config.backbone} cannot be built with image_size {self.image_size} "
                              f"and weights {config.weights}: {_first_line(e)}") from None
        except Exception as e:
            # keras.utils.get_file turns every download failure into a bare Exception("URL fetch failure on ...");
            # timeouts and h5py failing on a half-downloaded cache file are OSErrors.
            if weights == "imagenet" and (type(e) is Exception or isinstance(e, OSError)):
                raise self._fetch_error(e) from None
            raise

    def _fetch_error(self, error: BaseException) -> DataError:
        return DataError(f"ImageNet weights for image backbone {self.config.backbone} could not be fetched "
                         f"({_first_line(error)}); on a machine without internet access set weights to a local "
                         f".weights.h5 / .h5 file (copied from ~/.keras/models of a machine that downloaded them) "
                         f"or to none")

    def _load_weights(self, full: keras.Model) -> None:
        """Loads the weights file into the feature model or, failing that, the whole application model.

        A file saved from ``featurizer.model`` fits the feature model; Keras' own ImageNet file for vgg19_fc7 holds
        the classifier too and fits only the whole VGG19 (whose layers the feature model shares).
        """
        path = self.config.weights
        errors = []
        for model in (self.model, full) if full is not self.model else (self.model,):
            # Keras warns about every layer it skips on the way to a failure; only a successful load's warnings
            # are passed on.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    model.load_weights(path)
                except Exception as e:  # noqa: BLE001 - ValueError, OSError, KeyError...: the file does not fit
                    errors.append(e)
                    continue
            for warning in caught:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
            return
        # The feature model's error is the one that names the mismatch.
        raise DataError(f"image weights file {path} does not fit backbone {self.config.backbone} at image_size "
                        f"{self.image_size}: {_first_line(errors[0])}") from None

    # ---------------------------------------------------------------------------------------------------------------
    # The graph path
    # ---------------------------------------------------------------------------------------------------------------

    def preprocess(self, encoded: tf.Tensor) -> tf.Tensor:
        """One encoded image (scalar tf.string) -> float32 (image_size, image_size, 3), ready for ``model``.

        Pure TensorFlow ops, used both inside ``tf.data`` and inside the serving graph.
        """
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
        image.set_shape([None, None, 3])
        image = tf.image.resize(tf.cast(image, tf.float32), (self.image_size, self.image_size),
                                method=_RESIZE["method"], antialias=_RESIZE["antialias"])
        return tf.cast(self._preprocess_input(image), tf.float32)

    def serving_fn(self) -> Callable[[tf.Tensor], tf.Tensor]:
        """A function for a tf.function / SavedModel signature: tf.string (b,) encoded images -> float32 (b, dim).

        Each image is decoded and resized on its own (``tf.map_fn``: the images of a request differ in size), then
        the batch goes through ``model``. The function holds ``self.model``; a tf.Module that exports it must track
        the model (e.g. ``module.model = featurizer.model``) so its variables are saved.
        """
        preprocess, model, size, dim = self.preprocess, self.model, self.image_size, self.dim

        def image_bytes(encoded: tf.Tensor) -> tf.Tensor:
            images = tf.map_fn(preprocess, encoded,
                               fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
            # An empty batch never reaches the backbone: on some CPUs (seen with AVX-512/AMX) oneDNN's convolution
            # rejects a batch of 0 ("input depth must be evenly divisible by filter depth").
            return tf.cond(tf.shape(images)[0] > 0,
                           lambda: tf.cast(model(images, training=False), tf.float32),
                           lambda: tf.zeros([0, dim], tf.float32))

        return image_bytes

    # ---------------------------------------------------------------------------------------------------------------
    # Offline features
    # ---------------------------------------------------------------------------------------------------------------

    def features_from_paths(self, paths: Sequence[str], *,
                            on_error: str = "raise") -> tuple[np.ndarray, list[tuple[int, str]]]:
        """Features of the image files, in input order.

        Args:
            paths: Image files (anything ``tf.io.read_file`` opens).
            on_error: "raise": the first unreadable or undecodable file raises a DataError naming it (the error's
                ``index`` attribute is its position in ``paths``); "skip": such files are left out and reported.

        Returns:
            float32 (n_ok, dim) features of the good files in input order, and (index, reason) of every bad one.

        Bad files cost nothing extra for the good ones: the pipeline drops failing elements
        (``Dataset.ignore_errors``) and carries each element's index, so a gap in the indices names the bad file,
        which alone is then read and decoded again, eagerly, to get the reason.
        """
        paths = [os.fspath(p) for p in paths]
        return self._run(paths, tf.io.read_file, lambda i: f"image {paths[i]}", on_error)

    def features_from_bytes(self, encoded: Sequence[bytes]) -> np.ndarray:
        """float32 (n, dim) features of in-memory encoded images (queries); a bad one raises a DataError."""
        features, _ = self._run([bytes(e) for e in encoded], tf.identity, lambda i: f"encoded image {i}", "raise")
        return features

    def _run(self, sources: list, load: Callable[[tf.Tensor], tf.Tensor], name: Callable[[int], str],
             on_error: str) -> tuple[np.ndarray, list[tuple[int, str]]]:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        n = len(sources)
        bad: list[tuple[int, str]] = []
        if n == 0:
            return np.zeros((0, self.dim), np.float32), bad

        def load_one(index, source):
            return index, self.preprocess(load(source))

        dataset = (tf.data.Dataset.from_tensor_slices((np.arange(n, dtype=np.int64), tf.constant(sources, tf.string)))
                   .map(load_one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                   .ignore_errors()
                   .batch(self.config.batch_size)
                   .prefetch(tf.data.AUTOTUNE))

        def failed(index: int) -> None:
            reason = self._diagnose(sources[index], load)
            if on_error == "raise":
                error = DataError(f"{name(index)} {reason}")
                error.index = index
                raise error
            bad.append((index, reason))

        chunks, expected = [], 0
        for indices, images in dataset:
            indices = indices.numpy()
            present = set(indices.tolist())
            for index in range(expected, int(indices[-1])):
                if index not in present:
                    failed(index)
            chunks.append(self._forward(images).numpy())
            expected = int(indices[-1]) + 1
        for index in range(expected, n):
            failed(index)
        if not chunks:
            return np.zeros((0, self.dim), np.float32), bad
        return np.concatenate(chunks, axis=0), bad

    def _diagnose(self, source, load: Callable[[tf.Tensor], tf.Tensor]) -> str:
        """Why one element failed in the pipeline: it is read and decoded again on its own."""
        try:
            encoded = load(tf.constant(source, tf.string))
        except tf.errors.OpError as e:
            reason = _first_line(e)
            # read_file's message starts with the path the caller already names.
            if isinstance(source, str) and reason.startswith(f"{source}; "):
                reason = reason[len(source) + 2:]
            return f"cannot be read: {reason}"
        try:
            self.preprocess(encoded)
        except tf.errors.OpError as e:
            return f"cannot be decoded: {_first_line(e)}"
        return "failed in the input pipeline (it decodes when retried alone)"

    # ---------------------------------------------------------------------------------------------------------------
    # Provenance
    # ---------------------------------------------------------------------------------------------------------------

    def describe(self) -> dict:
        """What produced the features, as JSON-able data (recorded next to them)."""
        weights = self.config.weights
        out = {
            "backbone": self.config.backbone,
            "dim": self.dim,
            # "imagenet", "none" or the sha256 of the weights file.
            "weights": weights if self._weights_sha256 is None else self._weights_sha256,
        }
        if self._weights_sha256 is not None:
            out["weights_file"] = weights
        if weights == "none":
            out["weights_seed"] = NONE_WEIGHTS_SEED
        out.update({
            "layer": _FC7_LAYER if self._pooling == "fc7" else f"global {self._pooling} pooling",
            "image_size": self.image_size,
            "decode": "tf.io.decode_image channels=3, first frame, alpha dropped",
            "resize": dict(_RESIZE),
            "preprocess_input": self._preprocess_name,
            "keras_version": keras.__version__,
            "tensorflow_version": tf.__version__,
        })
        return out

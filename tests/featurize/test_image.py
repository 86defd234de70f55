"""Image featurizers (tf_xmr.featurize.image): every decode path, bad files, weights, serving graph = offline features.

These machines cannot download ImageNet weights, so backbones run with weights none (seeded random initialisation)
or with a weights file the test saves itself. Most tests use vgg16_avg at 32x32: it builds in under a second, runs
fast on two cores and, unlike the MobileNets (whose random-init features are ~1e-10), gives features of order 0.1-1
that differ between images. vgg19_fc7 and resnet50_avg are built at their native 224x224 for their architecture and
one image each.

Images: matplotlib's sample photograph (JPEG) and two RGBA PNGs, plus files generated here with Pillow (grayscale,
RGBA, palette PNG, BMP, lossless WebP, a two-frame GIF) and broken ones (a truncated JPEG, a text file named .jpg, an
empty file, a missing file). Where two files hold the same pixels (a grayscale PNG and the same gray replicated into
RGB, an RGBA PNG and its RGB part, a GIF and its first frame saved as PNG) their features must agree.

"Agree" for float features computed in different batches or graphs: |a - b| <= 1e-5 * max(1, max |b|). oneDNN's
kernels add in a batch-size dependent order, so rows of batches of different size differ by ~5e-7 of their scale.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random

import keras
import matplotlib
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tf_xmr.config.base import from_dict
from tf_xmr.errors import ConfigError, DataError
from tf_xmr.featurize.image import BACKBONES, ImageFeaturizer, ImageFeaturizerConfig
from tf_xmr.files import file_sha256

SAMPLE_DATA = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data")
SMALL = ImageFeaturizerConfig(backbone="vgg16_avg", weights="none", image_size=32, batch_size=3)
GOOD = ("photo", "logo", "present", "rgb_png", "gray_png", "gray_as_rgb_png", "rgba_png", "palette_png",
        "palette_as_rgb_png", "bmp", "webp", "gif", "gif_frame0_png", "gif_frame1_png", "logo_rgb_png")
BAD = ("truncated_jpg", "text_jpg", "empty_png", "missing_png")


def assert_close(actual, expected, tol=1e-5):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(actual - expected).max()) <= tol * scale


def assert_differ(a, b):
    """Two images' features are far apart compared with the tolerance (so the 'agree' checks mean something)."""
    assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) > 1e-3 * max(1.0, float(np.abs(b).max()))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    """Name -> path of every test image (GOOD and BAD)."""
    folder = tmp_path_factory.mktemp("images")
    out = {
        "photo": os.path.join(SAMPLE_DATA, "grace_hopper.jpg"),
        "logo": os.path.join(SAMPLE_DATA, "logo2.png"),
        "present": os.path.join(SAMPLE_DATA, "Minduka_Present_Blue_Pack.png"),
    }

    def save(name, image, **kwargs):
        out[name] = str(folder / f"{name}.{name.rsplit('_', 1)[-1]}")  # gray_png.png, bmp.bmp
        image.save(out[name], **kwargs)

    rng = np.random.default_rng(0)
    # Smooth random pictures (blown-up noise) so that a 32x32 resize still sees structure.
    rgb = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((80, 60), Image.BICUBIC)
    save("rgb_png", rgb)
    gray = rgb.convert("L")
    save("gray_png", gray)
    save("gray_as_rgb_png", gray.convert("RGB"))
    alpha = Image.fromarray(rng.integers(0, 256, (60, 80), dtype=np.uint8))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    save("rgba_png", rgba)
    save("palette_png", rgb.convert("P"))
    save("palette_as_rgb_png", rgb.convert("P").convert("RGB"))
    save("bmp", rgb)
    save("webp", rgb, lossless=True)
    other = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((80, 60), Image.BICUBIC)
    save("gif", rgb, save_all=True, append_images=[other], duration=100, loop=0)
    with Image.open(out["gif"]) as gif:
        assert gif.n_frames == 2
        save("gif_frame0_png", gif.convert("RGB"))
        gif.seek(1)
        save("gif_frame1_png", gif.convert("RGB"))
    with Image.open(out["logo"]) as logo:
        save("logo_rgb_png", logo.convert("RGB"))

    with open(out["photo"], "rb") as handle:
        photo = handle.read()
    out["truncated_jpg"] = str(folder / "truncated.jpg")
    with open(out["truncated_jpg"], "wb") as handle:
        handle.write(photo[: len(photo) // 3])
    out["text_jpg"] = str(folder / "notes.jpg")
    with open(out["text_jpg"], "w", encoding="utf-8") as handle:
        handle.write("this is a text file, not a picture\n")
    out["empty_png"] = str(folder / "empty.png")
    open(out["empty_png"], "wb").close()
    out["missing_png"] = str(folder / "missing.png")
    return out


@pytest.fixture(scope="module")
def featurizer() -> ImageFeaturizer:
    return ImageFeaturizer(SMALL)


@pytest.fixture(scope="module")
def good_features(featurizer, images) -> np.ndarray:
    features, bad = featurizer.features_from_paths([images[name] for name in GOOD])
    assert bad == []
    return features


def test_sample_images_are_what_the_tests_assume(images):
    modes = {name: Image.open(images[name]).mode for name in ("photo", "logo", "present", "gray_png", "rgba_png",
                                                              "palette_png", "gif")}
    assert modes == {"photo": "RGB", "logo": "RGBA", "present": "RGBA", "gray_png": "L", "rgba_png": "RGBA",
                     "palette_png": "P", "gif": "P"}


def test_backbone_table_covers_every_keras_application():
    functions = {name for name in dir(keras.applications) if name[0].isupper()}
    listed = {function for _, function, _ in BACKBONES.values()}
    assert functions - listed == set(), "keras.applications models missing from BACKBONES"
    for module, function, size in BACKBONES.values():
        assert function in functions
        assert callable(getattr(keras.applications, module).preprocess_input)
        assert size >= 224


def test_config_is_validated_with_one_line_errors():
    assert ImageFeaturizerConfig().backbone == "resnet50_avg"
    assert ImageFeaturizerConfig().weights == "imagenet"
    assert from_dict(ImageFeaturizerConfig, {"backbone": "efficientnet_b0_max", "image_size": None}) == \
        ImageFeaturizerConfig(backbone="efficientnet_b0_max")
    for data, words in [({"backbone": "resnet_avg"}, ["resnet_avg", "resnet50_avg", "mobilenet_v2_avg", "image"]),
                        ({"backbone": "resnet50_mean"}, ["resnet50_mean", "<model>_avg"]),
                        ({"backbone": "vgg19_fc7", "image_size": 64}, ["vgg19_fc7", "224"]),
                        ({"image_size": 16}, ["image.image_size", ">= 32"]),
                        ({"batch_size": 0}, ["image.batch_size"]),
                        ({"weights": ""}, ["weights"])]:
        with pytest.raises(ConfigError) as caught:
            from_dict(ImageFeaturizerConfig, data, prefix="image")
        message = str(caught.value)
        assert "\n" not in message
        for word in words:
            assert word in message, (word, message)


def test_every_decode_path_gives_the_features_of_its_pixels(featurizer, good_features):
    row = {name: good_features[i] for i, name in enumerate(GOOD)}
    assert good_features.shape == (len(GOOD), 512) and good_features.dtype == np.float32
    assert np.isfinite(good_features).all()
    # Grayscale is replicated into RGB; alpha is dropped (as Pillow's convert("RGB")); a palette is looked up; BMP
    # and lossless WebP decode to the same pixels; a GIF is its first frame.
    assert_close(row["gray_png"], row["gray_as_rgb_png"])
    assert_close(row["palette_png"], row["palette_as_rgb_png"])
    for name in ("rgba_png", "bmp", "webp"):
        assert_close(row[name], row["rgb_png"])
    assert_close(row["logo"], row["logo_rgb_png"])
    assert_close(row["gif"], row["gif_frame0_png"])
    assert_differ(row["gif"], row["gif_frame1_png"])
    assert_differ(row["photo"], row["logo"])
    assert_differ(row["rgb_png"], row["gray_png"])


def test_order_is_kept_and_batching_does_not_change_features(featurizer, images, good_features):
    order = list(reversed(GOOD))
    features, _ = featurizer.features_from_paths([images[name] for name in order])
    assert_close(features, good_features[::-1])
    one = ImageFeaturizer(dataclasses.replace(SMALL, batch_size=len(GOOD)))
    assert_close(one.features_from_paths([images[name] for name in GOOD])[0], good_features)


def test_features_from_bytes_equal_features_from_paths(featurizer, images, good_features):
    encoded = []
    for name in GOOD:
        with open(images[name], "rb") as handle:
            encoded.append(handle.read())
    assert_close(featurizer.features_from_bytes(encoded), good_features)
    assert featurizer.features_from_bytes([]).shape == (0, 512)
    assert featurizer.features_from_paths([])[0].shape == (0, 512)


@pytest.mark.parametrize("bad, reason", [("truncated_jpg", "cannot be decoded"), ("text_jpg", "cannot be decoded"),
                                         ("empty_png", "cannot be decoded"), ("missing_png", "cannot be read")])
def test_a_bad_image_raises_one_line_naming_the_file(featurizer, images, bad, reason):
    paths = [images["photo"], images["logo"], images["rgb_png"], images["bmp"], images[bad], images["gif"]]
    with pytest.raises(DataError) as caught:
        featurizer.features_from_paths(paths)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"image {images[bad]} {reason}: "), message
    assert "{{" not in message and "[Op:" not in message
    assert caught.value.index == 4


def test_skip_leaves_bad_images_out_and_reports_them(featurizer, images, good_features):
    # Bad files at the start, inside and across batches (batch_size 3), twice in a row and at the end.
    names = ["missing_png", "photo", "logo", "text_jpg", "present", "truncated_jpg", "empty_png", "rgb_png",
             "gray_png", "gif", "text_jpg"]
    features, bad = featurizer.features_from_paths([images[n] for n in names], on_error="skip")
    assert [i for i, _ in bad] == [0, 3, 5, 6, 10]
    assert bad[0][1].startswith("cannot be read: No such file or directory")
    assert bad[1][1].startswith("cannot be decoded: Unknown image file format")
    good = [n for n in names if n not in BAD]
    assert_close(features, good_features[[GOOD.index(n) for n in good]])
    only_bad, reported = featurizer.features_from_paths([images[n] for n in BAD], on_error="skip")
    assert only_bad.shape == (0, 512) and len(reported) == len(BAD)
    with pytest.raises(ValueError, match="on_error"):
        featurizer.features_from_paths([images["photo"]], on_error="ignore")


def test_bad_bytes_raise_naming_the_position(featurizer, images):
    with open(images["photo"], "rb") as handle:
        photo = handle.read()
    with pytest.raises(DataError, match=r"^encoded image 1 cannot be decoded: "):
        featurizer.features_from_bytes([photo, b"not an image", photo])


def test_serving_fn_equals_features_from_paths_in_a_graph_and_after_saved_model(featurizer, images, good_features,
                                                                                tmp_path):
    encoded = []
    for name in GOOD:
        with open(images[name], "rb") as handle:
            encoded.append(handle.read())
    serve = tf.function(featurizer.serving_fn(), input_signature=[tf.TensorSpec([None], tf.string)])
    out = serve(tf.constant(encoded))
    assert out.dtype == tf.float32
    assert_close(out.numpy(), good_features)
    assert serve(tf.constant([], tf.string)).shape == (0, 512)

    module = tf.Module()
    module.model = featurizer.model
    module.image_bytes = serve
    tf.saved_model.save(module, str(tmp_path / "served"), signatures={"image_bytes": serve})
    loaded = tf.saved_model.load(str(tmp_path / "served"))
    (served,) = loaded.signatures["image_bytes"](tf.constant(encoded)).values()
    assert_close(served.numpy(), good_features)
    assert_close(loaded.image_bytes(tf.constant(encoded[:2])).numpy(), good_features[:2])


def test_weights_none_is_reproducible_and_leaves_callers_random_streams(featurizer, images, good_features):
    random.seed(123)
    np.random.seed(123)
    expected_python, expected_numpy = random.random(), np.random.rand()
    random.seed(123)
    np.random.seed(123)
    again = ImageFeaturizer(SMALL)
    assert (random.random(), np.random.rand()) == (expected_python, expected_numpy)
    for mine, theirs in zip(again.model.weights, featurizer.model.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    assert_close(again.features_from_paths([images[name] for name in GOOD])[0], good_features)


def test_weights_file_gives_identical_features(images, good_features, tmp_path):
    trained = ImageFeaturizer(SMALL)
    last_conv = trained.model.get_layer("block5_conv3")
    last_conv.kernel.assign(last_conv.kernel * 1.5 + 0.01)
    path = str(tmp_path / "w.weights.h5")
    trained.model.save_weights(path)
    paths = [images[name] for name in GOOD]
    expected = trained.features_from_paths(paths)[0]
    assert_differ(expected, good_features)

    loaded = ImageFeaturizer(dataclasses.replace(SMALL, weights=path))
    np.testing.assert_array_equal(loaded.features_from_paths(paths)[0], expected)
    description = loaded.describe()
    assert description["weights"] == file_sha256(path) and description["weights_file"] == path


def test_missing_or_incompatible_weights_file_is_one_line_data_error(tmp_path):
    missing = str(tmp_path / "nowhere.weights.h5")
    with pytest.raises(DataError, match=f"^image weights file {missing} does not exist"):
        ImageFeaturizer(dataclasses.replace(SMALL, weights=missing))

    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    other_path = str(tmp_path / "other.weights.h5")
    other.save_weights(other_path)
    junk_path = str(tmp_path / "junk.weights.h5")
    with open(junk_path, "w", encoding="utf-8") as handle:
        handle.write("not hdf5")
    for path in (other_path, junk_path):
        with pytest.raises(DataError) as caught:
            ImageFeaturizer(dataclasses.replace(SMALL, weights=path))
        message = str(caught.value)
        assert message.startswith(f"image weights file {path} does not fit backbone vgg16_avg at image_size 32: ")
        assert "\n" not in message


def test_imagenet_download_failure_says_what_to_do(monkeypatch):
    # keras.utils.get_file wraps every URLError / HTTPError in a bare Exception with this text.
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5: None -- [Errno -3] Temporary failure in "
                        "name resolution")

    from keras.src.utils import file_utils

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(DataError) as caught:
        ImageFeaturizer(dataclasses.replace(SMALL, weights="imagenet"))
    message = str(caught.value)
    assert message.startswith("ImageNet weights for image backbone vgg16_avg could not be fetched (URL fetch failure")
    assert "none" in message and ".weights.h5" in message and "\n" not in message


def test_image_size_below_the_models_minimum_is_a_config_error():
    with pytest.raises(ConfigError, match="inception_v3_avg cannot be built with image_size 64.*at least 75"):
        ImageFeaturizer(ImageFeaturizerConfig(backbone="inception_v3_avg", weights="none", image_size=64))


def test_generic_backbone_with_built_in_preprocessing(images):
    # MobileNetV3 rescales inside the model, so its preprocess_input is a pass-through: pixels stay 0..255.
    small = ImageFeaturizer(ImageFeaturizerConfig(backbone="mobilenet_v3_small_max", weights="none", image_size=32))
    assert small.dim == 576 and small.model.output_shape == (None, 576)
    with open(images["photo"], "rb") as handle:
        pixels = small.preprocess(tf.constant(handle.read())).numpy()
    assert pixels.shape == (32, 32, 3) and pixels.min() >= 0.0 and pixels.max() > 128.0
    assert small.describe()["preprocess_input"] == "keras.applications.mobilenet_v3.preprocess_input"


def test_vgg19_fc7_is_the_4096_d_fc2_output_after_relu(images):
    vgg = ImageFeaturizer(ImageFeaturizerConfig(backbone="vgg19_fc7", weights="none", batch_size=1))
    assert vgg.dim == 4096 and vgg.image_size == 224
    assert vgg.model.input_shape == (None, 224, 224, 3) and vgg.model.output_shape == (None, 4096)
    fc7 = vgg.model.layers[-1]
    assert fc7.name == "fc2" and fc7.activation is keras.activations.relu
    assert [layer.name for layer in vgg.model.layers if isinstance(layer, keras.layers.Dense)] == ["fc1", "fc2"]
    features = vgg.features_from_paths([images["photo"]])[0]
    assert features.shape == (1, 4096) and np.isfinite(features).all() and (features >= 0).all()
    description = vgg.describe()
    assert description["layer"] == "fc2" and description["dim"] == 4096
    assert description["preprocess_input"] == "keras.applications.vgg19.preprocess_input"


def test_resnet50_avg_is_2048_d_at_224():
    # Build only: tracing ResNet50's 175 layers for a forward pass would cost seconds; the path through the model is
    # the same code as vgg16_avg's.
    resnet = ImageFeaturizer(ImageFeaturizerConfig(backbone="resnet50_avg", weights="none"))
    assert resnet.dim == 2048 and resnet.image_size == 224
    assert resnet.model.input_shape == (None, 224, 224, 3) and resnet.model.output_shape == (None, 2048)
    assert resnet.model.layers[-1].name == "avg_pool"
    assert resnet.describe()["preprocess_input"] == "keras.applications.resnet50.preprocess_input"


def test_describe_is_json(featurizer):
    description = json.loads(json.dumps(featurizer.describe()))
    assert description["backbone"] == "vgg16_avg" and description["dim"] == 512 and description["weights"] == "none"
    assert description["image_size"] == 32 and description["resize"]["method"] == "bilinear"
    assert description["resize"]["keep_aspect_ratio"] is False
    assert description["keras_version"] == keras.__version__
